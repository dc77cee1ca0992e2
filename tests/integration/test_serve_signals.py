"""``quartfaas serve`` and SIGTERM (issue #13, item 4) as a user meets them: every accepted
request is answered before the gateway stops its workers, and a second signal stops it
at once. Outcome checks only (answers, exit, processes), no timing assertions."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from helpers import worker_pids

pytestmark = pytest.mark.timeout(600)
QUARTFAAS = str(Path(sys.executable).parent / "quartfaas")


def serve(tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    spec = {
        "name": name,
        "model": {"kind": "synthetic"},
        "gateway": {"port": 0, "drain_timeout_s": 300},
        "controller": {"enabled": False},
        "slo": {"timeout_budget_s": 300},
        "stages": [{"name": f"{name}-s0", "max_concurrency": 1,
                    "synthetic": {"work": "sleep", "mean_ms": 50, "scv": 0}}],
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([QUARTFAAS, "serve", str(path)], stdout=f, stderr=f,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        m = re.search(r"ready: serving .* at (http://127\.0\.0\.1:\d+)", log.read_text())
        if m:
            return proc, m.group(1), log
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"serve did not get ready: {log.read_text()[-2000:]}")


async def flood(url: str, name: str, n: int, proc: subprocess.Popen[bytes],
                signals: int) -> list[int | str]:  # fmt: skip
    limits = httpx.Limits(max_connections=n + 10)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:

        async def one() -> int | str:
            try:
                r = await c.post(f"/function/{name}", json={"inputs": [[1, 2]]})
                return r.status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

        calls = [asyncio.ensure_future(one()) for _ in range(n)]

        async def queued() -> float:
            r = await c.get("/metrics")
            m = re.search(rf'quartfaas_stage_queue_length{{stage="{name}-s0"}} (\S+)', r.text)
            return float(m.group(1)) if m else 0.0

        while await queued() < n // 2:
            await asyncio.sleep(0.05)
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
        return list(await asyncio.gather(*calls))


def test_sigterm_answers_every_accepted_request(tmp_path: Path, kill_leftovers: list[str]) -> None:
    name = "sigdrain"
    kill_leftovers.append(f"quartfaas-{name}-")
    proc, url, log = serve(tmp_path, name)
    try:
        results = asyncio.run(flood(url, name, 80, proc, signals=1))
        assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
    finally:
        proc.kill()
    assert results == [200] * 80
    assert worker_pids(f"quartfaas-{name}-") == []


def test_a_second_sigterm_stops_at_once(tmp_path: Path, kill_leftovers: list[str]) -> None:
    name = "sighurry"
    kill_leftovers.append(f"quartfaas-{name}-")
    proc, url, log = serve(tmp_path, name)
    try:
        # 400 x 50 ms = 20 s of queued work; the second signal comes 0.5 s after the first.
        results = asyncio.run(flood(url, name, 400, proc, signals=2))
        proc.wait(timeout=300)
    finally:
        proc.kill()
    assert "second signal: stopping now" in log.read_text()
    assert results.count(200) < 400  # the queue was cut short, not drained
    assert worker_pids(f"quartfaas-{name}-") == []
