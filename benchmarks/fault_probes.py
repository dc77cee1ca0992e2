"""What a fault leaves behind: the processes, files and cgroup folders of one gateway.

Used by ``benchmarks/faults.py``: finds a gateway's worker and template processes (by a
marker in their command line: the runtime folder ``/tmp/quartfaas-<name>-*`` that every
worker's ``--spec-json`` points into), counts its leftovers, removes them after a row,
runs ``quartfaas serve`` as a user does (``Server``), and writes each row's copy of the
tiny spec (its own name, shared weights made once with ``quartfaas make-weights``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "src" / "quartfaas" / "examples" / "tiny.yaml"
SHM = Path("/dev/shm/quartfaas")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def quartfaas_cmd() -> list[str]:
    """The console script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).parent / "quartfaas"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "quartfaas.cli"]


# -- processes and files of one gateway ------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, int]:
    """(state, ppid) of a process; ("", 0) if it is gone."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return "", 0
    rest = text[text.rfind(")") + 2 :].split()
    return rest[0], int(rest[1])


def marked_pids(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``marker``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and marker in _cmdline(int(entry.name)):
            state, _ = _stat(int(entry.name))
            if state and state != "Z":
                out.append(int(entry.name))
    return out


def _listen_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                if cols[3] == "0A":  # TCP_LISTEN
                    inodes.add(cols[9])
    return inodes


def _listens(pid: int, inodes: set[str]) -> bool:
    fd_dir = Path("/proc") / str(pid) / "fd"
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return True
    return False


def replica_pids(marker: str, stage: str | None = None) -> list[int]:
    """Worker processes that serve (listen), optionally of one stage; templates excluded."""
    inodes = _listen_inodes()
    out = []
    for pid in marked_pids(marker):
        cmd = _cmdline(pid)
        if stage is not None and f"--stage {stage} " not in cmd + " ":
            continue
        if _listens(pid, inodes):
            out.append(pid)
    return out


def template_pid(marker: str, stage: str, gateway_pid: int) -> int | None:
    for pid in marked_pids(marker):
        cmd = _cmdline(pid)
        if (
            "forkserver" in cmd
            and f"--stage {stage} " in cmd + " "
            and _stat(pid)[1] == gateway_pid
        ):
            return pid
    return None


def cgroup_dirs(name: str) -> list[Path]:
    found: list[Path] = []
    for parent in [CGROUP_ROOT / "quartfaas", *CGROUP_ROOT.glob("*/quartfaas")]:
        with contextlib.suppress(OSError):
            # g<gateway pid>.<pipeline>.<replica> (and <stage>-<n> before issue #13)
            found += [p for p in parent.glob(f"{name}-*") if p.is_dir()]
            found += [p for p in parent.glob(f"g*.{name}.*") if p.is_dir()]
    return found


def leftovers(name: str) -> dict[str, list[Any]]:
    marker = f"quartfaas-{name}-"
    return {
        "procs": marked_pids(marker),
        "shm": sorted(SHM.glob(f"{name}-*")) if SHM.is_dir() else [],
        "tmp": sorted(Path(tempfile.gettempdir()).glob(f"quartfaas-{name}-*")),
        "cgroup": cgroup_dirs(name),
    }


def clean_up(name: str) -> None:
    """Remove what a row left behind: its processes (by pid), files and cgroup folders."""
    for pid in marked_pids(f"quartfaas-{name}-"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while marked_pids(f"quartfaas-{name}-") and time.monotonic() < deadline:
        time.sleep(0.05)
    left = leftovers(name)
    for p in left["shm"] + left["tmp"]:
        shutil.rmtree(p, ignore_errors=True)
    for d in sorted(left["cgroup"], key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            d.rmdir()


# -- the server ------------------------------------------------------------------------


class Server:
    """``quartfaas serve`` in a subprocess; its URL is read from its log."""

    def __init__(self, spec_path: Path, name: str, log_path: Path) -> None:
        self.spec_path = spec_path
        self.name = name
        self.marker = f"quartfaas-{name}-"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.exit_s: float | None = None

    def start(self, timeout_s: float) -> float:
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*quartfaas_cmd(), "serve", str(self.spec_path), "--port", "0", "--no-controller"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "COLUMNS": "200"}, start_new_session=True,
            )  # fmt: skip
        while time.monotonic() - t0 < timeout_s:
            log_text = self.log_path.read_text(errors="replace")
            m = re.search(r"at (http://127\.0\.0\.1:\d+)", log_text)
            if m:
                self.url = m.group(1)
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.kill()
        raise RuntimeError(f"quartfaas serve did not become ready; log tail:\n{tail}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    async def wait_exit(self, timeout_s: float) -> bool:
        """Wait for the gateway to exit; SIGKILL it after ``timeout_s``. True if it exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        while self.proc.poll() is None:
            if time.monotonic() - t0 > timeout_s:
                self.kill()
                return False
            await asyncio.sleep(0.05)
        self.exit_s = time.monotonic() - t0
        return True


# -- the spec ---------------------------------------------------------------------------


def write_spec(
    work: Path, name: str, weights: Path, stage_ms: float = 0.0
) -> tuple[Path, list[str]]:
    """The tiny spec renamed; with ``stage_ms`` its stages are synthetic ones sleeping that
    long (same names, replicas and concurrency), so requests stay in flight."""
    data = yaml.safe_load(TINY.read_text())
    data["name"] = name
    data["gateway"] = {**data.get("gateway", {}), "port": 0}
    if stage_ms > 0:
        data["model"] = {"kind": "synthetic"}
        # A queue of 150 x stage_ms must fit in the stage timeout: the row tests the
        # shutdown, not the queue's deadline.
        data["slo"] = {**data.get("slo", {}), "timeout_budget_s": 60.0}
    stages = []
    for s in data["stages"]:
        base = s["name"]
        s["name"] = f"{name}-{base.split('-', 1)[1]}"
        if stage_ms > 0:
            s["synthetic"] = {"work": "sleep", "mean_ms": stage_ms, "scv": 0.0}
        else:
            s["weights"] = str(weights / f"{base}.safetensors")
        stages.append(s["name"])
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, stages


def make_weights(work: Path) -> Path:
    data = yaml.safe_load(TINY.read_text())
    weights = work / "weights"
    data["weights_dir"] = str(weights)
    base = work / "tiny-base.yaml"
    base.write_text(yaml.safe_dump(data))
    subprocess.run([*quartfaas_cmd(), "make-weights", str(base)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)  # fmt: skip
    return weights
