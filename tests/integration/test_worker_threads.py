"""``POST /control/threads`` on a real worker process serving a real (tiny BERT) stage.

The CPU compensator's thread lever goes through ``backends.cpu.set_worker_threads``;
until now it was tested only against a mock transport. Here the worker is started as the
cold launcher starts it (``python -m quartfaas.dataplane.worker``), the count is changed
through the same client, and the worker's own metrics and a forward pass after the
change are checked.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from helpers import tiny_bert_spec
from quartfaas.backends.cpu import set_worker_threads
from quartfaas.dataplane import framing
from quartfaas.dataplane.worker import MAX_THREADS

pytestmark = pytest.mark.timeout(240)


def _events(fd: int, deadline: float) -> Iterator[dict[str, Any]]:
    buf = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    from quartfaas.models import make_weights

    spec = tiny_bert_spec(tmp_path / "w", name="thr", stages=2)
    make_weights(spec)
    spec_json = tmp_path / "spec.json"
    spec_json.write_text(spec.model_dump_json())
    r, w = os.pipe()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "quartfaas.dataplane.worker", "--spec-json", str(spec_json),
         "--stage", "thr-s0", "--replica-id", "thr-s0-1", "--event-fd", str(w)],
        pass_fds=(w,), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(w)
    try:
        port = None
        # Generous: failing here means "never ready"; a busy machine is only slow.
        for event in _events(r, t0 + 180.0):
            if event.get("event") == "listening":
                port = int(event["port"])
            if event.get("event") == "ready":
                break
        else:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            raise AssertionError(f"worker not ready; stderr:\n{err.decode()[-2000:]}")
        assert port is not None
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        os.close(r)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _threads_gauge(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith("quartfaas_worker_threads{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no quartfaas_worker_threads in /metrics")


def test_control_threads_changes_a_real_worker_in_place(worker: tuple[str, int]) -> None:
    address, pid = worker
    frame = framing.encode_numpy(
        {"input_ids": np.array([[1, 5, 9, 2]], dtype=np.int64),
         "attention_mask": np.ones((1, 4), dtype=np.int64)}
    )  # fmt: skip
    with httpx.Client(base_url=address, timeout=60.0) as c:
        assert _threads_gauge(c) == 1.0  # the stage's spec: one thread
        assert set_worker_threads(address, 2, 60.0) == 2  # the actuator's own client
        assert _threads_gauge(c) == 2.0
        r = c.post("/control/threads", json={"threads": 3})
        assert r.status_code == 200 and r.json() == {"threads": 3, "previous": 2}
        # A forward pass after the change applies the new count in its pool thread.
        r = c.post("/invoke", content=frame, headers={"Content-Type": framing.CONTENT_TYPE})
        assert r.status_code == 200, r.text
        out = framing.decode_numpy(r.content)
        assert out and all(a.size and np.isfinite(a).all() for a in out.values())
        too_many = MAX_THREADS + 1
        for bad in ({"threads": 0}, {"threads": "many"}, {"nope": 1}, [1], {"threads": 2.5},
                    {"threads": True}, {"threads": too_many}):  # fmt: skip
            r = c.post("/control/threads", json=bad)
            assert r.status_code == 400 and "threads" in r.json()["error"], bad
        for raw in (b"{not json", b'{"threads": 1e999}', b'{"threads": ' + b"9" * 5000 + b"}",
                    b"[" * 100_000 + b"]" * 100_000):  # fmt: skip
            r = c.post("/control/threads", content=raw)
            assert r.status_code == 400 and r.headers["content-type"].startswith(
                "application/json"
            ), (raw[:20], r.text[:200])
        assert c.post("/control/threads", json={"threads": 1}).json()["previous"] == 3
        assert _threads_gauge(c) == 1.0
    assert os.path.exists(f"/proc/{pid}")  # the worker served all of it and still lives
