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
- **Signals, sockets, fds.** Children reset signal handlers, close the template's control
  socket and the other children's channels, and keep only their event fd and the
  gateway's lifeline (EOF on it means the gateway died: exit).
- **Reaping.** SIGCHLD wakes the loop (``signal.set_wakeup_fd``); exited children are
  reaped with ``waitpid(WNOHANG)`` and reported to the gateway with their exit codes.

A pool of ``prefork`` children is kept forked in advance and warmed (each ran a forward
pass with its own thread count, so its pages are mapped and its OpenMP pool is up):
activating one takes creation off the request path entirely.

Control protocol: one JSON object per message over a ``SOCK_SEQPACKET`` Unix socketpair
with the gateway (a stream would merge messages); fds ride along with SCM_RIGHTS.
Gateway -> template ``{"op": "spawn", "replica_id": ...}`` + the replica's event fd;
``{"op": "exit"}``. Template -> gateway ``{"op": "ready", ...}``,
``{"op": "spawned", "replica_id", "pid", "tier"}``, ``{"op": "exited", "pid", "code"}``,
``{"op": "error", "replica_id", "message"}``. Gateway side: ``dataplane/param_cache/``.
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

MAX_FDS = 4


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
    """One message (a SOCK_SEQPACKET read returns exactly one); ``None`` on EOF."""
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


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
        self.refill_delay_s = float(spec.cache.prefork_refill_delay_s)
        self.refill_at = 0.0

    # -- forking --------------------------------------------------------------------

    def _fork(self, activate: tuple[str, int] | None) -> tuple[int, socket.socket | None]:
        """Fork a child: a replica now (``activate`` = (replica_id, event_fd)) or idle."""
        parent_end, child_end = message_pair() if activate is None else (None, None)
        pid = os.fork()
        if pid == 0:  # child: never returns into the template's loop
            code = 1
            try:
                if parent_end is not None:
                    parent_end.close()
                code = self._child_main(activate, child_end)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        if child_end is not None:
            child_end.close()
        return pid, parent_end

    def _child_main(self, activate: tuple[str, int] | None, channel: socket.socket | None) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        self.control.close()
        for ch in self.idle.values():
            ch.close()
        if self.spec.model.kind != "synthetic":
            import torch

            torch.set_num_threads(self.stage.torch_threads)
        runner = self.make_runner()
        warm = getattr(runner, "warmup", None)
        if warm is not None:
            # Readiness means warm: map the pages and start this process's OpenMP pool
            # before the first request (a pre-forked child does it before it is needed).
            warm()
        if activate is None:
            assert channel is not None
            send_msg(channel, {"op": "warm", "pid": os.getpid()})
            msg, fds = recv_msg(channel)
            if msg is None or msg.get("op") != "activate" or not fds:
                return 0  # the template retired this idle child
            channel.close()
            activate = (str(msg["replica_id"]), fds[0])
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

    def top_up(self) -> None:
        if time.monotonic() < self.refill_at:
            return
        while len(self.idle) < self.prefork:
            pid, channel = self._fork(None)
            assert channel is not None
            self.idle[pid] = channel

    def spawn(self, replica_id: str, event_fd: int) -> tuple[int, str]:
        """A replica: a warm idle child if there is one (prefork), else a fresh fork."""
        for pid in list(self.warm):
            channel = self.idle.pop(pid)
            self.warm.discard(pid)
            try:
                send_msg(channel, {"op": "activate", "replica_id": replica_id}, [event_fd])
            except OSError:
                continue  # it died meanwhile; the reaper reports it
            channel.close()
            self.replicas.add(pid)
            self.refill_at = time.monotonic() + self.refill_delay_s
            return pid, "prefork"
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
                wait_s = min(wait_s, max(0.0, self.refill_at - time.monotonic()))
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
                        self.warm.add(pid)
            if self.control in readable:
                msg, fds = recv_msg(self.control)
                if msg is None or msg.get("op") == "exit":
                    break
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
        for pid, channel in self.idle.items():
            channel.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="quartfaas stage template (fork server)")
    ap.add_argument("--spec-json", required=True, type=Path)
    ap.add_argument("--stage", required=True)
    ap.add_argument("--control-fd", required=True, type=int)
    ap.add_argument("--lifeline-fd", type=int, default=None)
    ap.add_argument("--weights", type=Path, default=None, help="stage file to map (tmpfs copy)")
    ap.add_argument("--prefork", type=int, default=1)
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
            state = load_stage_state(weights, "mmap", expected=expected)
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
    sys.exit(main())
