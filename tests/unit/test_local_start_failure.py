"""A replica that exits before it is ready: the failure names its log's tail.

A forked replica writes to its template's log, not to a log of its own; the CI failure
of stop 19 said only "worker exited with code 1 before it was ready" because the
backend read the (absent) per-replica file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers import synthetic_spec
from quartfaas.backends.local import LocalBackend
from quartfaas.control.backend import ReplicaInfo, StartTier
from quartfaas.dataplane.launch import ColdLauncher, ReplicaFiles


@dataclass
class _Died:
    log_path: Path
    pid: int = 4242

    async def events(self) -> AsyncIterator[dict[str, object]]:
        return
        yield {}  # an async generator that ends at once: the process said nothing

    async def wait(self) -> int:
        return 1

    def signal(self, sig: int) -> None:
        return None


class _Launcher(ColdLauncher):
    """``ColdLauncher``'s bookkeeping; its launches die before they are ready."""

    def __init__(self, files: ReplicaFiles, log_path: Path) -> None:
        super().__init__(files)
        self.log_path = log_path

    async def launch(self, stage: str, replica_id: str) -> tuple[_Died, StartTier]:
        return _Died(self.log_path), StartTier.FORK


@dataclass
class _Listener:
    failed: list[ReplicaInfo] = field(default_factory=list)

    def replica_starting(self, info: ReplicaInfo) -> None:
        return None

    def replica_ready(self, info: ReplicaInfo) -> None:
        return None

    def replica_start_failed(self, info: ReplicaInfo) -> None:
        self.failed.append(info)

    def replica_gone(self, info: ReplicaInfo) -> None:
        return None

    async def drain_replica(self, info: ReplicaInfo, timeout_s: float) -> bool:
        return True


def test_a_replica_that_exits_before_ready_names_the_tail_of_its_own_log(tmp_path: Path) -> None:
    spec = synthetic_spec(1, name="died")
    log = tmp_path / "template-died-s0.log"
    log.write_text("[pool] depth 0 -> 1\n[idle child, pid 4242] failed:\nTraceback ...\n"
                   "ConnectionResetError: [Errno 104] Connection reset by peer\n")  # fmt: skip
    listener = _Listener()

    async def main() -> None:
        files = ReplicaFiles(spec, base_dir=tmp_path)
        backend = LocalBackend(spec, listener, files=files, launcher=_Launcher(files, log))
        backend.start_replica("died-s0")
        rep = backend._replicas["died-s0-1"]  # its start task, which reports the failure
        assert rep.task is not None
        await asyncio.wait_for(rep.task, 60.0)
        await backend.close()

    asyncio.run(main())
    [info] = listener.failed
    assert "exited with code 1 before it was ready" in info.message
    assert "ConnectionResetError" in info.message and "pid 4242" in info.message
