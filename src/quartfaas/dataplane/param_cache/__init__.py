"""The hierarchical parameter cache, gateway side: stage templates that fork replicas.

``ParamCacheLauncher`` is the local backend's ``Launcher`` when the cache is enabled.
Starting a replica tries, in order:

1. **fork / prefork** — a live template of the stage holds its weights in host memory;
   it hands over a warmed pre-forked child (``prefork``) or forks one (``fork``);
2. **mmap** — no live template, but the stage's weights are in the tmpfs copy under
   ``cache.shm_dir``: a new template maps them zero-copy (no disk read), then forks;
3. **cold** — the weights are read from disk (and copied to tmpfs, checksum verified in
   the same pass) before the template starts.

Which tier served each start is recorded on the replica (``ReplicaInfo.tier``) and
exported by the gateway (``quartfaas_replica_start_seconds{stage,tier}``, hit/miss
counters). The tmpfs copy, not the on-disk file, is the host-memory cache: idle page
cache is reclaimed on these machines, tmpfs and live process memory are not.

A ``KeysManager`` (``control/placement/keys_manager.py``) keeps the cached stages under
``memory_threshold_frac`` of host memory: admitting a stage evicts least-recently-used
unpinned stages first (their templates stop, their tmpfs copies are removed); a stage
with live replicas is pinned. A start that cannot fit, or that would exceed the memory
the host has available now, is refused with the numbers (``InsufficientMemory``), not
left to the OOM killer. A template that dies is restarted (mmap tier); replicas it had
forked keep serving, and new starts wait for the restarted template.

Modules: ``launcher.py`` (``ParamCacheLauncher``: tiers, admission, template lifecycle),
``templates.py`` (the gateway's handles on a template and on a replica it forked),
``host.py`` (host memory readings, the verified tmpfs copy). Template process:
``dataplane/forkserver.py``.
"""

from quartfaas.dataplane.param_cache.launcher import ParamCacheLauncher

__all__ = ["ParamCacheLauncher"]
