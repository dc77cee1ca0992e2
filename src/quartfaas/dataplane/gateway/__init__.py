"""The gateway: an OpenFaaS-compatible REST API in front of a pipeline's stages.

Routes (the OpenFaaS gateway API as faas-cli and the go-sdk use it; ``COMPAT-16.md``):

- ``/function/{name}[.{namespace}][/sub/path]``, any method: the pipeline by its name
  (JSON ``{"inputs": "<text>" | ["<text>", ...] | [[token ids]]}`` in, JSON summary with
  per-stage timings out), or one stage by its name (a tensor frame in and out,
  ``dataplane/framing.py``). Answers carry upstream's ``X-Call-Id``, ``X-Start-Time``,
  ``X-Served-By`` and ``X-Duration-Seconds``.
- ``POST /async-function/{name}``: 202, then the call runs and its answer goes to
  ``X-Callback-Url``.
- ``GET /system/functions``, ``GET /system/function/{name}``: OpenFaaS function status
  (name, image, replicas, availableReplicas, invocationCount, labels incl.
  ``com.openfaas.scale.min/max``); the pipeline is listed as a function too.
  ``GET /system/info``, ``GET /system/namespaces``.
- ``POST /system/scale-function/{name}``: ``{"serviceName": name, "replicas": N}``.
- deploy, secrets, logs: 501 with a JSON reason (functions come from the spec).
- ``GET /healthz``, ``GET /metrics``.

The gateway orchestrates the pipeline itself: request -> stage 0 -> ... -> last stage ->
response, taking and releasing a slot on one replica of each stage in turn
(``dataplane/dispatch.py``), never holding an early stage while later ones run.
``/system/*`` can require basic auth. Errors map to HTTP codes through
``errors.http_status`` and always answer JSON ``{"error": ..., "function": ...}``.

One job per module:

- ``routes.py``: the route table (which routes need auth), the function names, and how
  errors answer over HTTP;
- ``auth.py``: basic auth for ``/system/*``;
- ``inputs.py``: reading bodies within limits, JSON, tokenising texts, checking token
  ids, encoding the first stage's frame;
- ``pipeline.py``: orchestration, request -> stage 0 -> ... -> response (and one stage
  called alone);
- ``replicas.py``: each stage's pool of replicas, kept in step by the backend's replica
  callbacks (it is the local backend's ``ReplicaListener``);
- ``status.py``: the OpenFaaS status and scale API (``/system/...``);
- ``core.py``: ``Gateway``, which builds the parts and wires them to the routes.
"""

from quartfaas.dataplane.gateway.core import Gateway

__all__ = ["Gateway"]
