"""The stage template ("zygote"): holds one stage's weights and forks replicas.

One template process per stage per host. It imports torch and everything a worker needs,
maps the stage's weights read-only (zero-copy safetensors mmap of a tmpfs copy, so the
pages are host memory that the page-cache reclaimer cannot drop), runs one warm-up
forward pass, and from then on only forks. A forked replica shares the weights
copy-on-write, binds its own port and serves (``dataplane/worker.serve``) without
loading anything.

Fork pitfalls handled here:

- **No threads at fork time.** ``torch.set_num_threads(1)`` before any torch op (a
  template that ever ran a multi-threaded op makes children deadlock in libgomp), no
  event loop, no thread pools in the template: it is a plain ``select`` loop. Each child
  raises its own thread count after the fork.
- **No CUDA in the template.** A child on a GPU stage copies weights from host memory to
  its device after the fork; the template never touches CUDA.
- **Signals, sockets, fds.** Signals are blocked across ``fork`` and children reset
  their handlers before unblocking them (``fork_with_default_signals``: a SIGTERM sent
  to a just-forked child is never swallowed by the template's handler). Children close
  the template's control socket and the other children's channels, and keep only their
  event fd and the gateway's lifeline (EOF on it means the gateway died: exit).
- **Reaping.** SIGCHLD wakes the loop (``signal.set_wakeup_fd``); exited children are
  reaped with ``waitpid(WNOHANG)`` and reported to the gateway with their exit codes.

**The pre-fork pool.** ``depth`` children are kept forked in advance and warmed (each
ran a forward pass with its own thread count, so its pages are mapped and its OpenMP pool
is up): activating one takes creation off the request path entirely. The depth starts
at ``--prefork`` and follows the controller (``{"op": "pool", "depth": k}``, decided by
``control/placement/prefork.py``): missing children are forked together; surplus idle
children are retired. A spawn takes a warm child first, then one still warming (it
activates as soon as its warm-up ends, sooner than a fresh fork), then forks. After a
handover the pool refills at once unless the host is saturated (``forkpool.Saturation``:
then it waits, at most ``prefork_refill_delay_s``, and says so in this log and to the
gateway). Each warmed child's private memory is measured and reported, so the pool
decision can keep the pool within the cache's memory. A fresh fork warms up before it
says ready unless ``cache.fork_warmup`` is off (``benchmarks/scaleup.py`` measures the
first request on a fork without it).

The module is over 400 lines because the fork, the child's start and the pool share one
process's state and loop; the host readings the pool acts on are in ``forkpool.py``.

Control protocol: one JSON object per message over a ``SOCK_SEQPACKET`` Unix socketpair
with the gateway (a stream would merge messages); fds ride along with SCM_RIGHTS.
Gateway -> template ``{"op": "spawn", "replica_id": ...}`` + the replica's event fd;
``{"op": "exit"}``. Template -> gateway ``{"op": "ready", ...}``,
``{"op": "spawned", "replica_id", "pid", "tier"}``, ``{"op": "exited", "pid", "code"}``,
``{"op": "error", "replica_id", "message"}``; ``{"op": "pool", "depth", "idle", "warm",
"child_private_bytes", "waiting"}`` when the pool changes. Gateway side:
``dataplane/param_cache/``.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quartfaas.dataplane.forkpool import Saturation, private_bytes

MAX_FDS = 4
# How long an exiting template waits for its idle and retired children to go after SIGTERM
# before it SIGKILLs them (they hold no request: it is their own start-up or exit work).
CHILD_EXIT_GRACE_S = 2.0


def message_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair that keeps message boundaries (a stream would merge messages)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_msg(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.sendall(data)


def recv_msg(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message (a SOCK_SEQPACKET read returns exactly one); ``None`` on EOF.

    A peer that closes while a message of ours sits unread on its side makes the next
    read here fail once with ECONNRESET, *before* the messages it sent first (Linux
    reports a pending socket error ahead of queued datagrams). A template hands an idle
    child over (``activate``) and closes the channel; if the child's ``warm`` crossed
    that, the child lost its activation and exited 1 (CI, stop 19). So: read on.
    """
    fds = array.array("i")
    size = socket.CMSG_SPACE(MAX_FDS * fds.itemsize)
    try:
        data, ancdata, _, _ = sock.recvmsg(65536, size)
    except ConnectionResetError:
        data, ancdata, _, _ = sock.recvmsg(65536, size)  # the error is reported once
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


# The signals the template handles itself; a child must never run those handlers.
CHILD_DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP)


def fork_with_default_signals() -> int:
    """``os.fork()`` whose child has default signal handlers from its first instruction.

    The template's SIGTERM handler only sets its loop's ``stop`` flag: a child that
    inherited it would swallow a SIGTERM sent before it reset its handlers (the gateway
    sends one the moment a scale-down meets a fresh fork), and then never exit. So the
    signals are blocked across the fork; the child resets the handlers and the wakeup
    fd (the template's pipe) while they are blocked, then unblocks them, and a SIGTERM
    that arrived meanwhile takes its default action then. The parent restores its mask.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_DEFAULT_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise
    if pid == 0:
        signal.set_wakeup_fd(-1)
        for sig in CHILD_DEFAULT_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return pid


class Template:
    """The template's state: the loaded stage, its idle warmed children, its live replicas."""

    def __init__(
        self,
        spec: Any,
        index: int,
        control: socket.socket,
        *,
        lifeline_fd: int | None,
        prefork: int,
        make_runner: Callable[[], Any],
        saturation: Saturation | None = None,
        fork_warmup: bool = True,
    ) -> None:
        self.spec = spec
        self.index = index
        self.stage = spec.stages[index]
        self.control = control
        self.lifeline_fd = lifeline_fd
        self.prefork = prefork
        self.make_runner = make_runner
        self.idle: dict[int, socket.socket] = {}  # pid -> channel to an idle child
        self.warm: set[int] = set()
        self.replicas: set[int] = set()
        self.saturation = saturation or Saturation(0.0, 0.0)
        self.fork_warmup = fork_warmup
        self.refill_since: float | None = None  # a handover left the pool short at this time
        self.waiting = ""  # why the refill waits now ("" when it does not)
        self.child_private: dict[int, int] = {}  # warmed idle child -> private bytes
        self.last_private: int | None = None  # the most recent warmed child's private bytes
        self.retired: set[int] = set()  # idle children told to exit (not replicas)
        self._reported: dict[str, Any] = {}

    # -- forking --------------------------------------------------------------------

    def _fork(self, activate: tuple[str, int] | None) -> tuple[int, socket.socket | None]:
        """Fork a child: a replica now (``activate`` = (replica_id, event_fd)) or idle."""
        parent_end, child_end = message_pair() if activate is None else (None, None)
        pid = fork_with_default_signals()
        if pid == 0:  # child: never returns into the template's loop
            code = 1
            try:
                if parent_end is not None:
                    parent_end.close()
                code = self._child_main(activate, child_end)
            except BaseException:
                # The child's stderr is the template's log: say whose traceback it is.
                who = f"replica {activate[0]}" if activate is not None else "idle child"
                print(f"[{who}, pid {os.getpid()}] failed:", file=sys.stderr)
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        if child_end is not None:
            child_end.close()
        return pid, parent_end

    def _child_main(self, activate: tuple[str, int] | None, channel: socket.socket | None) -> int:
        self.control.close()
        for ch in self.idle.values():
            ch.close()
        if self.spec.model.kind != "synthetic":
            import torch

            torch.set_num_threads(self.stage.torch_threads)
        runner = self.make_runner()
        warm = getattr(runner, "warmup", None)
        if warm is not None and (activate is None or self.fork_warmup):
            # Readiness means warm: map the pages and start this process's OpenMP pool
            # before the first request (a pre-forked child does it before it is needed).
            warm()
        if activate is None:
            assert channel is not None
            return self._serve_pooled(runner, channel)
        return self._serve(runner, *activate)

    def _serve(self, runner: Any, replica_id: str, event_fd: int) -> int:
        import asyncio

        from quartfaas.dataplane.worker import WorkerState, bind_loopback, serve

        state = WorkerState(self.stage.name, replica_id, self.stage.max_concurrency)
        state.runner = runner
        sock = bind_loopback()
        try:
            import uvloop

            uvloop.run(serve(state, sock, event_fd=event_fd, lifeline_fd=self.lifeline_fd))
        except ImportError:
            asyncio.run(serve(state, sock, event_fd=event_fd, lifeline_fd=self.lifeline_fd))
        return 0

    def _serve_pooled(self, runner: Any, channel: socket.socket) -> int:
        """An idle child's server is up before it is a replica, so activation only says so.

        Its event fd is a placeholder until the template hands it the replica's event fd
        (``dup2`` onto the same number); its metrics take the replica's id then. Starting
        the HTTP server is ~tens of ms of CPU per child: done here, a burst of ``k``
        handovers does not queue ``k`` server starts on the host's cores.
        """
        import asyncio

        from quartfaas.dataplane.worker import WorkerState, bind_loopback, emit, serve

        event_fd = os.open(os.devnull, os.O_WRONLY)
        state = WorkerState(
            self.stage.name, f"{self.stage.name}-pool-{os.getpid()}", self.stage.max_concurrency
        )
        sock = bind_loopback()

        def activation() -> Any:  # runs in a thread once the server is listening
            with contextlib.suppress(OSError):  # handed over while warming: template closed
                send_msg(channel, {"op": "warm", "pid": os.getpid()})
            msg, fds = recv_msg(channel)
            channel.close()
            if msg is None or msg.get("op") != "activate" or not fds:
                raise _Retired
            os.dup2(fds[0], event_fd)
            os.close(fds[0])
            named = WorkerState(self.stage.name, str(msg["replica_id"]), 1)
            for attr in ("replica_id", "registry", "m_service", "m_requests", "m_inflight",
                         "m_threads", "labels"):  # fmt: skip
                setattr(state, attr, getattr(named, attr))
            emit(event_fd, event="listening", port=sock.getsockname()[1], pid=os.getpid())
            return runner

        main = serve(state, sock, event_fd=event_fd, lifeline_fd=self.lifeline_fd, load=activation)
        try:
            try:
                import uvloop

                uvloop.run(main)
            except ImportError:
                asyncio.run(main)
        except _Retired:
            return 0  # the template retired this idle child
        return 0

    # -- the pool -------------------------------------------------------------------

    def top_up(self) -> None:
        """Fork every missing child at once, unless the host is saturated (then wait)."""
        missing = self.prefork - len(self.idle)
        if missing <= 0:
            self.refill_since = None
            self._set_waiting("")
            return
        if self.refill_since is not None:
            wait, why = self.saturation.check(time.monotonic() - self.refill_since)
            self._set_waiting(why if wait else "")
            if wait:
                return
            if why:
                print(f"[pool] {why}", file=sys.stderr, flush=True)
        for _ in range(missing):
            pid, channel = self._fork(None)
            assert channel is not None
            self.idle[pid] = channel
        self.refill_since = None
        self.report()

    def set_depth(self, depth: int) -> None:
        """The controller's depth: retire surplus idle children (the warming ones first)."""
        old, self.prefork = self.prefork, max(0, depth)
        surplus = len(self.idle) - self.prefork
        for pid in sorted(self.idle, key=lambda p: p in self.warm)[: max(0, surplus)]:
            self.idle.pop(pid).close()  # EOF: the child exits without serving
            self.retired.add(pid)
            self.warm.discard(pid)
            self.child_private.pop(pid, None)
        if self.prefork != old:
            print(f"[pool] depth {old} -> {self.prefork}", file=sys.stderr, flush=True)
        self.report()

    def _set_waiting(self, why: str) -> None:
        if why != self.waiting:
            print(f"[pool] {why or 'refill no longer waits'}", file=sys.stderr, flush=True)
            self.waiting = why
            self.report()

    def on_warm(self, pid: int) -> None:
        self.warm.add(pid)
        priv = private_bytes(pid)
        if priv is not None:
            self.child_private[pid] = priv
            self.last_private = priv
        self.report()

    def report(self) -> None:
        """Tell the gateway the pool's state when it changed."""
        status = {
            "op": "pool", "depth": self.prefork, "idle": len(self.idle), "warm": len(self.warm),
            "child_private_bytes": self.last_private, "waiting": self.waiting,
        }  # fmt: skip
        if status != self._reported:
            self._reported = status
            with contextlib.suppress(OSError):
                send_msg(self.control, status)

    def spawn(self, replica_id: str, event_fd: int) -> tuple[int, str]:
        """A replica: a warm idle child, else one still warming (prefork), else a fork."""
        for pid in sorted(self.idle, key=lambda p: p not in self.warm):
            channel = self.idle.pop(pid)
            was_warm = pid in self.warm
            self.warm.discard(pid)
            self.child_private.pop(pid, None)
            try:
                send_msg(channel, {"op": "activate", "replica_id": replica_id}, [event_fd])
            except OSError:
                continue  # it died meanwhile; the reaper reports it
            channel.close()
            self.replicas.add(pid)
            if self.refill_since is None:
                self.refill_since = time.monotonic()
            # A child handed over while still warming is a fork that started earlier.
            return pid, "prefork" if was_warm else "fork"
        pid, _ = self._fork((replica_id, event_fd))
        self.replicas.add(pid)
        return pid, "fork"

    # -- loop -----------------------------------------------------------------------

    def reply(self, replica_id: str, *, error: str = "", pid: int = 0, tier: str = "") -> None:
        msg: dict[str, Any]
        if error:
            msg = {"op": "error", "replica_id": replica_id, "message": error}
        else:
            msg = {"op": "spawned", "replica_id": replica_id, "pid": pid, "tier": tier}
        send_msg(self.control, msg)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid in self.idle:
                self.idle.pop(pid).close()
                self.warm.discard(pid)
                self.child_private.pop(pid, None)
                continue
            if pid in self.retired:
                self.retired.discard(pid)
                continue
            self.replicas.discard(pid)
            with contextlib.suppress(OSError):
                send_msg(self.control, {"op": "exited", "pid": pid, "code": code})

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        stop = False

        def on_term(*_: Any) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_term)
        self.top_up()
        while not stop:
            watch: list[Any] = [self.control, wake_r, *self.idle.values()]
            if self.lifeline_fd is not None:
                watch.append(self.lifeline_fd)
            wait_s = 1.0
            if len(self.idle) < self.prefork:
                wait_s = 0.1  # the refill waits on a saturated host: look again soon
            readable, _, _ = select.select(watch, [], [], wait_s)
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            self.reap()
            if self.lifeline_fd is not None and self.lifeline_fd in readable:
                break  # the gateway is gone
            for pid, channel in list(self.idle.items()):
                if channel in readable:
                    msg, _ = recv_msg(channel)
                    if msg is not None and msg.get("op") == "warm":
                        self.on_warm(pid)
            if self.control in readable:
                msg, fds = recv_msg(self.control)
                if msg is None or msg.get("op") == "exit":
                    break
                if msg.get("op") == "pool":
                    self.set_depth(int(msg["depth"]))
                if msg.get("op") == "spawn":
                    rid = str(msg["replica_id"])
                    if not fds:
                        self.reply(rid, error="spawn without an event fd")
                        continue
                    try:
                        pid, tier = self.spawn(rid, fds[0])
                    except OSError as exc:
                        self.reply(rid, error=f"fork failed: {exc}")
                    else:
                        self.reply(rid, pid=pid, tier=tier)
                    finally:
                        for fd in fds:
                            os.close(fd)
            self.top_up()
        self.stop_children()
        return 0

    def stop_children(self, grace_s: float = CHILD_EXIT_GRACE_S) -> None:
        """Stop the idle and retired children before the template exits: SIGTERM, up to
        ``grace_s`` for them to exit, then SIGKILL; each is reaped. Replicas are the
        gateway's to stop (a template may go while its replicas serve). Without the wait,
        two idle children outlived a clean stop under two busy loops (issue #13)."""
        for channel in self.idle.values():
            channel.close()
        left = set(self.idle) | set(self.retired)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + grace_s
        while left and time.monotonic() < end:
            for pid in list(left):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # reaped already, or not ours
                    done = pid
                if done:
                    left.discard(pid)
            if left:
                time.sleep(0.02)
        for pid in left:
            print(f"[pool] idle child {pid} ignored SIGTERM for {grace_s:g} s: SIGKILL",
                  file=sys.stderr, flush=True)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.idle.clear()
        self.retired.clear()


class _Retired(Exception):
    """An idle child was retired by the template (its channel closed)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="quartfaas stage template (fork server)")
    ap.add_argument("--spec-json", required=True, type=Path)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--control-fd", required=True, type=int)
    ap.add_argument("--lifeline-fd", type=int, default=None)
    ap.add_argument("--weights", type=Path, default=None, help="stage file to map (tmpfs copy)")
    ap.add_argument("--prefork", type=int, default=1)
    ap.add_argument(
        "--refill-max-load",
        type=float,
        default=0.0,
        help="load average per core at which a refill waits (<= 0: never)",
    )
    ap.add_argument("--refill-max-wait", type=float, default=1.0)
    ap.add_argument(
        "--no-fork-warmup",
        action="store_true",
        help="a fresh fork says ready before its warm-up forward",
    )
    args = ap.parse_args(argv)
    control = socket.socket(fileno=args.control_fd)
    t0 = time.perf_counter()
    try:
        spec_data = json.loads(args.spec_json.read_text())
        if spec_data.get("model", {}).get("kind") != "synthetic":
            import torch

            # Before any torch op: a template that ran a multi-threaded op deadlocks
            # children in libgomp. Each child raises its own thread count.
            torch.set_num_threads(1)
        # Import what a replica needs now, so children import nothing.
        import aiohttp  # noqa: F401
        import prometheus_client  # noqa: F401

        from quartfaas.dataplane import worker  # noqa: F401
        from quartfaas.dataplane.runners import SyntheticRunner, TorchRunner
        from quartfaas.spec import parse_spec

        with contextlib.suppress(ImportError):
            import uvloop  # noqa: F401

        spec = parse_spec(spec_data, source=str(args.spec_json))
        index = spec.stage_index(args.stage)
        load_s = 0.0
        if spec.model.kind == "synthetic":

            def make_runner() -> Any:
                return SyntheticRunner(spec, index)
        else:
            from quartfaas.models import build_stage, load_stage_state
            from quartfaas.models.weights import find_manifest_entry

            weights = args.weights or spec.stage_weights_path(index)
            # The tmpfs copy is checked against the original file's manifest entry.
            expected = find_manifest_entry(Path(spec.stage_weights_path(index)))
            t1 = time.perf_counter()
            state = load_stage_state(
                weights, "mmap", expected=expected, allow_unlisted=not spec.verify
            )
            model = build_stage(spec, index, device="cpu", weights=state)
            load_s = time.perf_counter() - t1
            TorchRunner(model, spec, index, 1).warmup()  # in this thread: starts no threads

            def make_runner() -> Any:
                runner = TorchRunner(model, spec, index, spec.stages[index].torch_threads)
                device = spec.stages[index].device
                if device != "cpu":
                    runner.model = model.to(device)  # host memory -> device, after the fork
                return runner

        template = Template(
            spec, index, control, lifeline_fd=args.lifeline_fd, prefork=args.prefork,
            make_runner=make_runner,
            saturation=Saturation(args.refill_max_load, args.refill_max_wait),
            fork_warmup=not args.no_fork_warmup,
        )  # fmt: skip
    except Exception as exc:
        with contextlib.suppress(OSError):
            send_msg(control, {"op": "failed", "message": f"{type(exc).__name__}: {exc}"})
        traceback.print_exc()
        return 2
    send_msg(control, {"op": "ready", "pid": os.getpid(), "load_s": load_s,
                       "startup_s": time.perf_counter() - t0})  # fmt: skip
    return template.run()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # No interpreter teardown: a template owns no files to flush, and tearing down torch
    # and its imports took seconds per template on a loaded machine (Ctrl-C waited).
    os._exit(code)
