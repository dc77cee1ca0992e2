"""``ParamCacheLauncher``: replicas start through the cache tiers (package docstring).

It owns the stage templates and the ``KeysManager`` that keeps them within
``cache.memory_threshold_frac`` of host memory. Its tmpfs copies live in
``<shm_dir>/<pipeline>-<gateway pid>``: removed at ``close``, and swept at the next start
(``sweep_stale_shm``) when a gateway died without closing (kill -9).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quartfaas.control.backend import PoolStatus, StartTier
from quartfaas.control.placement.keys_manager import KeysManager, gib
from quartfaas.dataplane.forkserver import message_pair, recv_msg, send_msg
from quartfaas.dataplane.launch import EventPipe, Launched, ReplicaFiles, pid_alive, read_tail
from quartfaas.dataplane.param_cache.host import copy_verified, meminfo, set_child_subreaper
from quartfaas.dataplane.param_cache.templates import ForkedReplica, Template
from quartfaas.errors import BackendError, InsufficientMemory, WeightsError

log = logging.getLogger("quartfaas.param_cache")


def sweep_stale_shm(shm_dir: Path) -> list[Path]:
    """Remove ``<shm_dir>/<name>-<pid>`` weight copies whose gateway pid is dead."""
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for d in shm_dir.iterdir():
            _, _, pid = d.name.rpartition("-")
            if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                if d.stat().st_uid != os.getuid():
                    continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if removed:
        log.info("removed weight copies of dead gateways: %s", ", ".join(str(p) for p in removed))
    return removed


class ParamCacheLauncher:
    """Starts replicas through the cache tiers; owns the templates and the KeysManager."""

    def __init__(
        self,
        files: ReplicaFiles,
        *,
        keys: KeysManager | None = None,
        clock: Callable[[], float] = time.monotonic,
        python: str = sys.executable,
    ) -> None:
        self.files = files
        self.spec = files.spec
        cache = self.spec.cache
        host_mem = meminfo().get("MemTotal", 0)
        self.keys = keys if keys is not None else KeysManager(host_mem, cache.memory_threshold_frac)
        self.clock = clock
        self.python = python
        self.shm_dir = Path(cache.shm_dir) / f"{self.spec.name}-{os.getpid()}"
        sweep_stale_shm(self.shm_dir.parent)
        self.templates: dict[str, Template] = {}
        self._starting: dict[str, asyncio.Task[Template]] = {}
        self._closing = False
        self._live: dict[str, int] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self._evicted: set[str] = set()
        self._depth: dict[str, int] = {}  # pool depth per stage, as the controller set it
        set_child_subreaper()

    # -- Launcher protocol ----------------------------------------------------------

    async def launch(self, stage: str, replica_id: str) -> tuple[Launched, StartTier]:
        template, fresh = await self._template(stage)
        pipe = EventPipe()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        template.spawns[replica_id] = fut
        try:
            send_msg(template.sock, {"op": "spawn", "replica_id": replica_id}, [pipe.write_fd])
        except OSError as exc:
            template.spawns.pop(replica_id, None)
            raise BackendError(f"template of stage {stage} is not reachable: {exc}") from None
        finally:
            os.close(pipe.write_fd)
        reply = await asyncio.wait_for(fut, self.spec.gateway.replica_start_timeout_s)
        if reply.get("op") != "spawned":
            raise BackendError(f"template of stage {stage} could not fork: {reply.get('message')}")
        if fresh and not template.first_used:
            tier = template.tier  # this start paid for loading the template
        else:
            tier = StartTier.PREFORK if reply.get("tier") == "prefork" else StartTier.FORK
        template.first_used = True
        self.keys.lookup(stage, self.clock())
        self.keys.pin(stage)
        self._live[replica_id] = 1
        return ForkedReplica(int(reply["pid"]), pipe, template), tier

    def released(self, stage: str, replica_id: str) -> None:
        if self._live.pop(replica_id, None) is not None:
            self.keys.unpin(stage)

    def set_pool(self, stage: str, depth: int) -> None:
        """Keep ``depth`` warmed children of ``stage`` (a template started later gets it)."""
        depth = max(0, min(depth, self.spec.cache.prefork_max))
        if self._depth.get(stage, self.spec.cache.prefork) == depth:
            return
        self._depth[stage] = depth
        t = self.templates.get(stage)
        if t is not None and t.alive:
            with contextlib.suppress(OSError):
                send_msg(t.sock, {"op": "pool", "depth": depth})

    def pool_status(self, stage: str) -> PoolStatus | None:
        t = self.templates.get(stage)
        if t is None or not t.alive:
            return None
        p = t.pool
        priv = p.get("child_private_bytes")
        return PoolStatus(
            stage, int(p.get("depth", self._depth.get(stage, self.spec.cache.prefork))),
            int(p.get("idle", 0)), int(p.get("warm", 0)),
            int(priv) if priv is not None else None, self.keys.free_bytes,
            str(p.get("waiting", "")), self.spec.cache.prefork, self.spec.cache.prefork_max,
        )  # fmt: skip

    async def prewarm(self, stage: str) -> None:
        """Start a stage's template now (stages that may scale from zero)."""
        await self._template(stage)

    async def close(self) -> None:
        self._closing = True
        starting = list(self._starting.values())
        for task in starting:
            task.cancel()  # _start_template kills its process on the way out
        await asyncio.gather(*starting, return_exceptions=True)
        await asyncio.gather(*(self._stop_template(t) for t in list(self.templates.values())))
        self.templates.clear()
        shutil.rmtree(self.shm_dir, ignore_errors=True)

    # -- templates ------------------------------------------------------------------

    async def _template(self, stage: str) -> tuple[Template, bool]:
        t = self.templates.get(stage)
        if t is not None and t.alive:
            return t, False
        task = self._starting.get(stage)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._start_template(stage))
            self._starting[stage] = task
            task.add_done_callback(lambda _: self._starting.pop(stage, None))
        t = await asyncio.shield(task)
        return t, True

    def _shm_path(self, stage: str) -> Path:
        return self.shm_dir / f"{stage}.safetensors"

    def _cache_weights(self, stage: str) -> tuple[Path | None, StartTier]:
        """Make sure the stage's weights are in tmpfs; returns the path and the tier."""
        index = self.spec.stage_index(stage)
        self._evicted.discard(stage)
        if self.spec.model.kind == "synthetic":
            return None, StartTier.COLD
        src = Path(self.spec.stage_weights_path(index))
        dst = self._shm_path(stage)
        from quartfaas.models.weights import find_manifest_entry

        expected = find_manifest_entry(src) if src.is_file() else None
        size = expected.bytes if expected else (src.stat().st_size if src.is_file() else 0)
        if dst.is_file() and dst.stat().st_size == size and stage in self.keys:
            return dst, StartTier.MMAP
        admission = self.keys.admit(stage, size, self.clock())
        if not admission.admitted:
            raise InsufficientMemory(
                f"stage {stage} ({gib(size)}) cannot be cached: {admission.reason}"
            )
        for victim in admission.evicted:
            self._evict(victim)
        avail = meminfo().get("MemAvailable", 0)
        if size > avail:
            self.keys.evict(stage)
            raise InsufficientMemory(
                f"stage {stage} needs {gib(size)} of host memory but only {gib(avail)} is "
                "available now; stop other replicas or lower cache.memory_threshold_frac"
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            copy_verified(src, dst, expected.sha256 if expected else None)
        except WeightsError:
            self.keys.evict(stage)
            raise
        return dst, StartTier.COLD

    def _evict(self, stage: str) -> None:
        log.info("evicting stage %s from the parameter cache", stage)
        self._evicted.add(stage)
        t = self.templates.pop(stage, None)
        if t is not None:
            t.proc.send_signal(signal.SIGTERM)
        self._shm_path(stage).unlink(missing_ok=True)

    async def _start_template(self, stage: str) -> Template:
        if self._closing:
            raise BackendError("the backend is shutting down")
        weights, tier = await asyncio.to_thread(self._cache_weights, stage)
        parent, child = message_pair()
        os.set_inheritable(child.fileno(), True)
        cache = self.spec.cache
        cmd = [
            self.python, "-m", "quartfaas.dataplane.forkserver",
            "--spec-json", str(self.files.spec_json), "--stage", stage,
            "--control-fd", str(child.fileno()), "--lifeline-fd", str(self.files.lifeline_read),
            "--prefork", str(self._depth.get(stage, cache.prefork)),
            "--refill-max-load", str(cache.prefork_refill_max_load_per_core),
            "--refill-max-wait", str(cache.prefork_refill_delay_s),
        ]  # fmt: skip
        if not cache.fork_warmup:
            cmd.append("--no-fork-warmup")
        if weights is not None:
            cmd += ["--weights", str(weights)]
        log_path = self.files.log_path(f"template-{stage}")
        with open(log_path, "ab") as logf:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                pass_fds=(child.fileno(), self.files.lifeline_read),
                start_new_session=True,
                env={**os.environ, **self.files.worker_env},
            )  # fmt: skip
        child.close()
        parent.setblocking(False)
        loop = asyncio.get_running_loop()
        t = Template(stage, proc, parent, weights, tier, loop.create_future(), log_path)
        loop.add_reader(parent.fileno(), self._on_message, t)
        watcher = loop.create_task(self._watch(t))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        timeout = self.spec.gateway.replica_start_timeout_s
        ready = False
        try:
            try:
                msg = await asyncio.wait_for(asyncio.shield(t.ready), timeout)
            except TimeoutError:
                msg = {"op": "failed", "message": f"not ready within {timeout:.0f} s"}
            if msg.get("op") != "ready":
                tail = read_tail(log_path, 6)
                raise BackendError(
                    f"template of stage {stage} failed to start: {msg.get('message')}"
                    + (f"; log tail:\n{tail}" if tail else "")
                )
            ready = True
        finally:
            # Every path that did not reach "ready" kills it: a timeout, a failure, and a
            # cancellation by close() (the backend's own start timeout fires first), which
            # used to leave a hung template alive after the runtime stopped.
            if not ready:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(asyncio.CancelledError):
                    await proc.wait()
        self.templates[stage] = t
        log.info("template of stage %s ready (%s tier, load %.3f s)", stage, tier.value,
                 float(msg.get("load_s", 0.0)))  # fmt: skip
        return t

    def _on_message(self, t: Template) -> None:
        try:
            msg, fds = recv_msg(t.sock)
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, json.JSONDecodeError):
            msg, fds = None, []
        for fd in fds:
            os.close(fd)
        if msg is None:
            asyncio.get_running_loop().remove_reader(t.sock.fileno())
            return
        t.dispatch(msg)

    async def _watch(self, t: Template) -> None:
        code = await t.proc.wait()
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(t.sock.fileno())
        t.sock.close()
        t.fail_pending(f"template exited with code {code}")
        if self.templates.get(t.stage) is t:
            del self.templates[t.stage]
            if not self._closing and t.stage not in self._evicted:
                # Restart from the tmpfs copy (mmap tier); starts meanwhile wait for it.
                log.warning("template of stage %s died (code %s); restarting", t.stage, code)
                with contextlib.suppress(Exception):
                    await self._template(t.stage)

    async def _stop_template(self, t: Template) -> None:
        with contextlib.suppress(OSError):
            send_msg(t.sock, {"op": "exit"})
        try:
            await asyncio.wait_for(t.proc.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                t.proc.kill()
            await t.proc.wait()

    def template_pids(self) -> dict[str, int]:
        return {s: t.proc.pid for s, t in self.templates.items() if t.alive}


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a template that never became ready, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
