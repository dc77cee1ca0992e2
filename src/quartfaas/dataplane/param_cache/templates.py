"""The gateway's handles on template processes and on the replicas they fork.

A ``Template`` is one stage template (``dataplane/forkserver.py``) seen from the
gateway: its process, its control socket, and the futures its messages resolve
(``ready``, one per pending spawn, exit codes of its children). A ``ForkedReplica`` is a
replica a template forked; it is not the gateway's child, so it is watched through a
pidfd (and reaped by the gateway if the template died first: ``host.set_child_subreaper``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quartfaas.control.backend import StartTier
from quartfaas.dataplane.launch import EventPipe

log = logging.getLogger("quartfaas.param_cache")


@dataclass
class ForkedReplica:
    """A replica forked by a template: watched through a pidfd (it is not our child)."""

    pid: int
    pipe: EventPipe
    template: Template
    pidfd: int = -1
    exited: asyncio.Future[int] | None = None

    def __post_init__(self) -> None:
        self.pidfd = os.pidfd_open(self.pid)

    @property
    def log_path(self) -> Path:
        """The template's log: a forked child writes to the template's stderr."""
        return self.template.log_path

    def events(self) -> AsyncIterator[dict[str, object]]:
        return self.pipe.lines()

    async def wait(self) -> int:
        if self.exited is None:
            loop = asyncio.get_running_loop()
            self.exited = loop.create_future()
            fut = self.exited

            def gone() -> None:
                loop.remove_reader(self.pidfd)
                if not fut.done():
                    fut.set_result(0)

            loop.add_reader(self.pidfd, gone)
        await asyncio.shield(self.exited)
        code = self._reap()
        if code is None:  # the template reaps and reports; give its message a moment
            report = self.template.exit_codes.setdefault(
                self.pid, asyncio.get_running_loop().create_future()
            )
            with contextlib.suppress(TimeoutError):
                code = await asyncio.wait_for(asyncio.shield(report), 1.0)
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
        self.pidfd = -1
        return -1 if code is None else code

    def _reap(self) -> int | None:
        """If the template died we inherited this process (subreaper): reap it ourselves."""
        try:
            res = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
        except (ChildProcessError, OSError):
            return None
        if res is None:
            return None
        return res.si_status if res.si_code == os.CLD_EXITED else -res.si_status

    def signal(self, sig: int) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, sig)


@dataclass
class Template:
    """The gateway's handle on one stage template process."""

    stage: str
    proc: asyncio.subprocess.Process
    sock: socket.socket
    weights: Path | None
    tier: StartTier  # how this template got its weights (mmap or cold)
    ready: asyncio.Future[dict[str, Any]]
    log_path: Path  # its stdout and stderr, and its forked children's
    spawns: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    exit_codes: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    first_used: bool = False
    pool: dict[str, Any] = field(default_factory=dict)  # the template's last pool report

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def dispatch(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op in ("ready", "failed"):
            if not self.ready.done():
                self.ready.set_result(msg)
        elif op in ("spawned", "error"):
            fut = self.spawns.pop(str(msg.get("replica_id")), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif op == "pool":
            if msg.get("waiting") != self.pool.get("waiting"):
                if msg.get("waiting"):
                    log.info("stage %s: %s", self.stage, msg["waiting"])
                elif self.pool:
                    log.info("stage %s: pool refill no longer waits", self.stage)
            self.pool = msg
        elif op == "exited":
            pid, code = int(msg["pid"]), int(msg["code"])
            done = self.exit_codes.setdefault(pid, asyncio.get_running_loop().create_future())
            if not done.done():
                done.set_result(code)

    def fail_pending(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_result({"op": "failed", "message": why})
        for rid, fut in list(self.spawns.items()):
            if not fut.done():
                fut.set_result({"op": "error", "replica_id": rid, "message": why})
        self.spawns.clear()
