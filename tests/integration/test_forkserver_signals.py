"""A real stage template: a SIGTERM sent the moment a replica is forked ends that replica.

Regression test for issue #13 item 1: a forked child kept the template's SIGTERM handler
(which only sets the template loop's ``stop`` flag) until it reset its handlers, so a
SIGTERM that arrived in between was swallowed and the replica never exited. The gateway
sends exactly that SIGTERM when a scale-down meets a fresh fork.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import synthetic_spec
from quartfaas.dataplane.forkserver import message_pair, recv_msg, send_msg

pytestmark = pytest.mark.timeout(180)


def _recv(sock: object, timeout_s: float) -> dict[str, object] | None:
    readable, _, _ = select.select([sock], [], [], timeout_s)
    if not readable:
        raise AssertionError(f"no message from the template within {timeout_s:.0f} s")
    msg, fds = recv_msg(sock)  # type: ignore[arg-type]
    for fd in fds:
        os.close(fd)
    return msg


def test_sigterm_right_after_spawn_ends_every_replica(tmp_path: Path) -> None:
    spec = synthetic_spec(1, name="sigfork")
    spec_json = tmp_path / "spec.json"
    spec_json.write_text(spec.model_dump_json())
    parent, child = message_pair()
    os.set_inheritable(child.fileno(), True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "quartfaas.dataplane.forkserver", "--spec-json", str(spec_json),
         "--stage", "sigfork-s0", "--control-fd", str(child.fileno()), "--prefork", "0"],
        pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    child.close()
    pids: list[int] = []
    try:
        t0 = time.monotonic()
        ready = _recv(parent, 120.0)
        assert ready is not None and ready["op"] == "ready", ready
        # The template's start (imports) measures this machine's speed right now; a
        # replica that takes SIGTERM's default action exits in far less than that.
        deadline_s = max(5.0, 3 * (time.monotonic() - t0))
        codes: dict[int, int] = {}

        def note_exit(msg: dict[str, object] | None) -> None:
            if msg is not None and msg.get("op") == "exited":
                codes[int(str(msg["pid"]))] = int(str(msg["code"]))

        for i in range(12):
            r, w = os.pipe()
            send_msg(parent, {"op": "spawn", "replica_id": f"r{i}"}, [w])
            os.close(w)
            os.close(r)
            msg = _recv(parent, deadline_s)
            while msg is not None and msg.get("op") == "exited":
                note_exit(msg)
                msg = _recv(parent, deadline_s)
            assert msg is not None and msg["op"] == "spawned", msg
            pid = int(str(msg["pid"]))
            os.kill(pid, signal.SIGTERM)  # at once, as the backend does on a quick scale-down
            pids.append(pid)
        end = time.monotonic() + deadline_s
        while len(codes) < len(pids) and time.monotonic() < end:
            with contextlib.suppress(AssertionError):
                note_exit(_recv(parent, max(0.1, end - time.monotonic())))
        alive = [p for p in pids if p not in codes]
        assert not alive, f"replicas {alive} survived a SIGTERM sent right after their fork"
        assert set(codes.values()) == {-signal.SIGTERM}, codes
    finally:
        with contextlib.suppress(OSError):
            send_msg(parent, {"op": "exit"})
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        parent.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_forked_child_has_default_handlers_and_parent_keeps_its_own() -> None:
    """In a helper process with a swallowing SIGTERM handler, as the template has."""
    code = """
import os, signal, sys
from quartfaas.dataplane.forkserver import fork_with_default_signals
signal.signal(signal.SIGTERM, lambda *_: None)
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w)
before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
pid = fork_with_default_signals()
if pid == 0:
    ok = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.set_wakeup_fd(-1) == -1
    os.kill(os.getpid(), signal.SIGTERM)  # default action: this child dies here
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before, "parent mask changed"
assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "parent handler changed"
print(os.waitstatus_to_exitcode(status))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == str(-signal.SIGTERM), out.stdout + out.stderr


def _children(pid: int) -> set[int]:
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return {int(x) for x in text.split()}
    return set()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_an_exiting_template_takes_its_idle_children_with_it(tmp_path: Path) -> None:
    # Issue #13: the template SIGTERMed its pre-forked idle children and exited at once,
    # so under two busy loops a clean stop left two of them running for a while.
    spec = synthetic_spec(1, name="poolexit")
    spec_json = tmp_path / "spec.json"
    spec_json.write_text(spec.model_dump_json())
    parent, child = message_pair()
    os.set_inheritable(child.fileno(), True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "quartfaas.dataplane.forkserver", "--spec-json", str(spec_json),
         "--stage", "poolexit-s0", "--control-fd", str(child.fileno()), "--prefork", "3"],
        pass_fds=(child.fileno(), ), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    child.close()
    try:
        t0 = time.monotonic()
        ready = _recv(parent, 120.0)
        assert ready is not None and ready["op"] == "ready", ready
        deadline_s = max(5.0, 3 * (time.monotonic() - t0))  # this machine's speed now
        end = time.monotonic() + deadline_s
        while len(_children(proc.pid)) < 3:
            assert time.monotonic() < end, _children(proc.pid)
            time.sleep(0.02)
        pool = _children(proc.pid)
        send_msg(parent, {"op": "exit"})
        assert proc.wait(timeout=deadline_s) == 0
        assert [p for p in pool if _alive(p)] == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        parent.close()


def test_an_idle_child_handed_over_as_its_warm_message_crosses_still_serves(
    tmp_path: Path,
) -> None:
    """CI, stop 19: a replica failed to start with "worker exited with code 1 before it
    was ready". The template handed a warming child over (``activate``, then close) while
    the child's ``warm`` was on its way; closing a SEQPACKET socket with a message of the
    child's unread makes the child's next read fail with ECONNRESET ahead of the queued
    ``activate``, so the child died. Here the helper plays the template and forces that
    order: it waits until ``warm`` is queued, does not read it, activates, closes."""
    spec = synthetic_spec(1, name="cross")
    spec_json = tmp_path / "spec.json"
    spec_json.write_text(spec.model_dump_json())
    code = f"""
import os, select, sys, time
from quartfaas.dataplane.forkserver import Template, message_pair, send_msg
from quartfaas.dataplane.runners import SyntheticRunner
from quartfaas.spec import parse_spec
import json
spec = parse_spec(json.loads(open({str(spec_json)!r}).read()), source="test")
control, _ = message_pair()
t = Template(spec, 0, control, lifeline_fd=None, prefork=0,
             make_runner=lambda: SyntheticRunner(spec, 0))
pid, channel = t._fork(None)
r, _, _ = select.select([channel], [], [], 60)  # the child's "warm" is queued, unread
assert r, "the idle child never said warm"
events_r, events_w = os.pipe()
send_msg(channel, {{"op": "activate", "replica_id": "cross-1"}}, [events_w])
channel.close()
os.close(events_w)
buf = b""
end = time.monotonic() + 60
while b'"ready"' not in buf and time.monotonic() < end:
    if not select.select([events_r], [], [], 1.0)[0]:
        continue
    chunk = os.read(events_r, 4096)
    if not chunk:
        break
    buf += chunk
os.kill(pid, 9)
_, status = os.waitpid(pid, 0)
print("READY" if b'"ready"' in buf else "NOT READY " + repr(buf))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=150, check=True
    )
    assert out.stdout.strip() == "READY", out.stdout + out.stderr
