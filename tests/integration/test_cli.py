"""The command line as users run it: serve, invoke, functions, scale; Ctrl-C; no orphans."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import worker_pids

pytestmark = pytest.mark.timeout(120)
QUARTFAAS = str(Path(sys.executable).parent / "quartfaas")


def _spec_file(tmp_path: Path, name: str) -> Path:
    spec = {
        "name": name,
        "model": {"kind": "synthetic"},
        "gateway": {"port": 0},
        "controller": {"enabled": False},
        "stages": [
            {"name": f"{name}-s{i}", "synthetic": {"work": "sleep", "mean_ms": 2}} for i in range(2)
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _serve(spec: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [QUARTFAAS, "serve", str(spec)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        m = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError("quartfaas serve did not report its URL")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUARTFAAS, *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, "COLUMNS": "200"})  # fmt: skip


def _gone(marker: str, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while worker_pids(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_serve_invoke_scale_and_ctrl_c(tmp_path: Path, kill_leftovers: list[str]) -> None:
    name = "clipipe"
    kill_leftovers.append(f"quartfaas-{name}-")
    proc, url = _serve(_spec_file(tmp_path, name))
    try:
        r = _cli("invoke", name, "--data", '{"inputs": [[1, 2, 3]]}', "--gateway", url)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["pipeline"] == name
        r = _cli("invoke", "nope", "--data", "{}", "--gateway", url)
        assert r.returncode == 2 and "not found" in r.stderr
        r = _cli("functions", "--gateway", url)
        assert r.returncode == 0 and f"{name}-s1" in r.stdout
        r = _cli("scale", f"{name}-s1", "2", "--gateway", url)
        assert r.returncode == 0 and '"replicas": 2' in r.stdout
        r = _cli("scale", f"{name}-s1", "99", "--gateway", url)
        assert r.returncode == 2 and "com.openfaas.scale.max" in r.stderr
        assert worker_pids(f"quartfaas-{name}-")
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        code = proc.wait(timeout=30)
    assert code == 0
    assert _gone(f"quartfaas-{name}-"), "workers outlived the gateway"


def test_workers_exit_when_the_gateway_is_killed(tmp_path: Path, kill_leftovers: list[str]) -> None:
    name = "clikill"
    kill_leftovers.append(f"quartfaas-{name}-")
    proc, _ = _serve(_spec_file(tmp_path, name))
    assert worker_pids(f"quartfaas-{name}-")
    proc.kill()  # no chance to clean up: the lifeline pipe must end the workers
    proc.wait(timeout=10)
    assert _gone(f"quartfaas-{name}-"), "workers outlived a killed gateway"


def test_bad_spec_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: Bad Name\nmodel: {kind: synthetic}\nstages: []\n")
    r = _cli("check-spec", str(bad))
    assert r.returncode == 2
    assert "name = 'Bad Name'" in r.stderr and "stages" in r.stderr
