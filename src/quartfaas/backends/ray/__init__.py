"""quartfaas on Ray (the optional extra ``quartfaas[ray]``): the only package that imports ray.

Modules (one job each):

- ``backend.py``: ``RayBackend``, the ``Backend`` protocol over Ray actors (start, drain,
  stop, list; readiness observed; dead actors and nodes replaced);
- ``nodes.py``: Ray nodes as the placer's servers; the node for a new replica;
- ``actor.py``: ``StageReplica``, one replica running the local worker's stage code;
- ``weights.py``: the parameter cache in each node's object store (tiers, KeysManager view);
- ``client.py``: ``RayStageClient``, the data-plane adapter (tensor frames in, activations
  between stages as object references);
- ``activations.py``: frames as ``uint8`` arrays an actor reads in place from the object
  store, and tensor views over them;
- ``serve_policy.py``: Quart as a Ray Serve application-level autoscaling policy;
- ``serve_app.py``: a quartfaas pipeline as a Ray Serve application (one deployment per
  stage), for that policy and for comparisons;
- ``runtime.py``: ``RayRuntime``, the unchanged gateway and control loop over the Ray
  backend (``quartfaas serve/run --backend ray``), and the warm-standby keeper;
- ``standby.py``: where warm standby actors wait (a pure rule, with reasons; how many is
  the control loop's pool decision, ``control/placement/prefork.py``);
- ``cluster.py``: ``RayConnection``, attach to a cluster or start a local one.

Importing this package without ray installed raises an ImportError that says how to get it.
"""

from __future__ import annotations

try:
    import ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the Ray backend needs the optional extra: pip install 'quartfaas[ray]'"
    ) from exc
