"""How a replica process is made: the ``Launcher`` seam and the cold launcher.

The local backend (``backends/local.py``) decides *when* replicas start and stop; a
``Launcher`` decides *how* a replica process comes to be, and hands back a ``Launched``
handle the backend watches (pid, JSON-lines events, exit code, signals):

- ``ColdLauncher`` (here) starts ``python -m quartfaas.dataplane.worker``, which loads
  its stage's weights from disk;
- ``ParamCacheLauncher`` (``dataplane/param_cache/``) forks one from a stage template
  holding the weights (``dataplane/forkserver.py``).

``ReplicaFiles`` holds what every replica of one gateway shares: the spec as JSON, a
log file per process, the environment, and the *lifeline* pipe whose write end only the
gateway process holds: if the gateway dies, workers see EOF and exit (no orphans). Its
folder ``<tmp>/quartfaas-<name>-*`` records the gateway's pid (``gateway.pid``); a clean
shutdown removes it, and ``sweep_stale_dirs`` removes those of gateways that died
(kill -9) when the next one starts.

The data plane never imports a concrete backend; the backend imports this module
(import-linter contract "one way" in ``pyproject.toml``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from quartfaas.control.backend import StartTier
from quartfaas.spec import PipelineSpec

log = logging.getLogger("quartfaas.launch")

PID_FILE = "gateway.pid"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie counts; EPERM means someone else's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_dirs(base_dir: Path | None = None) -> list[Path]:
    """Remove ``quartfaas-*`` runtime folders (ours by uid) whose gateway pid is dead."""
    base = Path(base_dir or tempfile.gettempdir())
    removed: list[Path] = []
    for d in base.glob("quartfaas-*"):
        try:
            if d.stat().st_uid != os.getuid():
                continue
            pid = int((d / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or from a version without a pid file: leave it
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if removed:
        log.info("removed %d runtime folder(s) of dead gateways: %s", len(removed),
                 ", ".join(p.name for p in removed))  # fmt: skip
    return removed


class Launched(Protocol):
    """A replica process, however it was made."""

    @property
    def pid(self) -> int: ...

    @property
    def log_path(self) -> Path:
        """Where its stdout and stderr go (a forked replica shares its template's)."""
        ...

    def events(self) -> AsyncIterator[dict[str, object]]: ...

    async def wait(self) -> int: ...

    def signal(self, sig: int) -> None: ...


class Launcher(Protocol):
    async def launch(self, stage: str, replica_id: str) -> tuple[Launched, StartTier]: ...

    def released(self, stage: str, replica_id: str) -> None:
        """A replica this launcher made is gone (its cache entry may be unpinned)."""
        ...

    async def prewarm(self, stage: str) -> None:
        """Get ready to start ``stage`` fast (e.g. load its template) without a replica."""
        ...

    async def close(self) -> None: ...


class ReplicaFiles:
    """Files and fds shared by all replicas of one gateway (spec JSON, logs, lifeline)."""

    def __init__(self, spec: PipelineSpec, base_dir: Path | None = None) -> None:
        self.spec = spec
        self.dir = Path(tempfile.mkdtemp(prefix=f"quartfaas-{spec.name}-", dir=base_dir))
        self.spec_json = self.dir / "spec.json"
        self.spec_json.write_text(spec.model_dump_json())
        (self.dir / PID_FILE).write_text(f"{os.getpid()}\n")
        self.lifeline_read, self.lifeline_write = os.pipe()
        os.set_inheritable(self.lifeline_read, True)
        self.worker_env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}

    def log_path(self, replica_id: str) -> Path:
        return self.dir / f"{replica_id}.log"

    def close(self) -> None:
        """Close the lifeline (workers still alive see EOF) and remove the folder."""
        for fd in (self.lifeline_read, self.lifeline_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.lifeline_read = self.lifeline_write = -1
        shutil.rmtree(self.dir, ignore_errors=True)


def read_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class EventPipe:
    """JSON-lines events from a child over a pipe (listening / loaded / ready / failed)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_inheritable(self.write_fd, True)

    async def lines(self) -> AsyncIterator[dict[str, object]]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self.read_fd, "rb", 0)
        )
        try:
            while line := await reader.readline():
                with contextlib.suppress(json.JSONDecodeError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        yield event
        finally:
            transport.close()


@dataclass
class _ColdProcess:
    proc: asyncio.subprocess.Process
    pipe: EventPipe
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> AsyncIterator[dict[str, object]]:
        return self.pipe.lines()

    async def wait(self) -> int:
        return await self.proc.wait()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)


class ColdLauncher:
    """Start a fresh worker process that loads its stage's weights from disk."""

    def __init__(self, files: ReplicaFiles) -> None:
        self.files = files

    async def launch(self, stage: str, replica_id: str) -> tuple[Launched, StartTier]:
        pipe = EventPipe()
        cmd = [
            sys.executable, "-m", "quartfaas.dataplane.worker",
            "--spec-json", str(self.files.spec_json), "--stage", stage,
            "--replica-id", replica_id, "--event-fd", str(pipe.write_fd),
            "--lifeline-fd", str(self.files.lifeline_read),
        ]  # fmt: skip
        log_path = self.files.log_path(replica_id)
        with open(log_path, "ab") as logf:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                pass_fds=(pipe.write_fd, self.files.lifeline_read),
                start_new_session=True,  # Ctrl-C reaches the gateway, which stops workers
                env={**os.environ, **self.files.worker_env},
            )
        os.close(pipe.write_fd)
        tier = StartTier.NONE if self.files.spec.model.kind == "synthetic" else StartTier.COLD
        return _ColdProcess(proc, pipe, log_path), tier

    def released(self, stage: str, replica_id: str) -> None:
        return None

    async def prewarm(self, stage: str) -> None:
        return None

    async def close(self) -> None:
        return None
