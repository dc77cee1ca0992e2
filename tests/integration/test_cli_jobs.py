"""The commands no test ran before (issue #13 item 13): ``run``, ``load``, ``train-smoother``.

Each is invoked as a user invokes it: the console script next to this interpreter, in a
subprocess. Deadlines are derived from this machine's measured speed (the time of
``quartfaas --help``, which imports the CLI), not fixed: the machine is shared.
"""

from __future__ import annotations

import csv
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

pytestmark = pytest.mark.timeout(900)
QUARTFAAS = str(Path(sys.executable).parent / "quartfaas")
ENV = {**os.environ, "COLUMNS": "200"}


@pytest.fixture(scope="module")
def unit_s() -> float:
    """Seconds for one CLI start on this machine now (``quartfaas --help``): the time unit."""
    t0 = time.monotonic()
    subprocess.run([QUARTFAAS, "--help"], capture_output=True, check=True, timeout=300, env=ENV)
    return max(0.5, time.monotonic() - t0)


def _cli(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUARTFAAS, *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False, env=ENV)  # fmt: skip


def _spec(tmp_path: Path, name: str) -> Path:
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


def _gone(marker: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while worker_pids(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_run_replays_a_workload_and_writes_the_report(
    tmp_path: Path, unit_s: float, kill_leftovers: list[str]
) -> None:
    name = "clijob"
    kill_leftovers.append(f"quartfaas-{name}-")
    out = tmp_path / "report"
    duration_s = 4.0
    r = _cli("run", str(_spec(tmp_path, name)), "--workload", "poisson:rate=5",
             "--duration", str(duration_s), "--policy", "static", "--out", str(out),
             "--no-progress", timeout_s=duration_s + 60 * unit_s)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("summary.json", "requests.csv", "decisions.jsonl", "timeline.csv",
              "latency.png", "replicas.png", "queues.png"):  # fmt: skip
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    summary = json.loads((out / "summary.json").read_text())
    load = summary["load"]
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert summary["pipeline"] == name and summary["policy"] == "static"
    assert load["sent"] == len(rows) > 0
    assert load["ok"] == load["sent"] and load["errors"] == {}
    assert all(row["status"] == "200" for row in rows)
    assert set(summary["replica_seconds"]) == {f"{name}-s0", f"{name}-s1"}
    assert f"requests sent / ok  │ {load['sent']} / {load['ok']}" in r.stdout
    assert _gone(f"quartfaas-{name}-", 10 * unit_s), "workers outlived `quartfaas run`"


def test_load_drives_a_served_pipeline(
    tmp_path: Path, unit_s: float, kill_leftovers: list[str]
) -> None:
    name = "cliload"
    kill_leftovers.append(f"quartfaas-{name}-")
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([QUARTFAAS, "serve", str(_spec(tmp_path, name))], stdout=f,
                                stderr=f, stdin=subprocess.DEVNULL, env=ENV)  # fmt: skip
    try:
        deadline = time.monotonic() + 60 * unit_s
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"at (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
            url = m.group(1) if m else None
            time.sleep(0.05)
        assert url, f"serve did not report its URL: {log.read_text()[-2000:]}"
        csv_path = tmp_path / "load.csv"
        r = _cli("load", name, "--workload", "poisson:rate=10", "--duration", "3",
                 "--gateway", url, "--slo-ms", "2000", "--csv", str(csv_path),
                 timeout_s=3 + 30 * unit_s)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        # Progress goes to stderr: stdout is the JSON summary alone (`| jq` works).
        summary = json.loads(r.stdout)
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        assert summary["sent"] == len(rows) > 0
        assert summary["ok"] == summary["sent"] and summary["errors"] == {}
        assert summary["slo_s"] == 2.0 and 0.0 <= summary["slo_attainment"] <= 1.0
        # The gateway counted what the load generator sent.
        r = _cli("functions", "--gateway", url, timeout_s=30 * unit_s)
        assert r.returncode == 0 and name in r.stdout
        bad = _cli("load", name, "--workload", "nonsense:rate=1", "--gateway", url,
                   timeout_s=30 * unit_s)  # fmt: skip
        assert bad.returncode == 2 and "error" in bad.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60 * unit_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert _gone(f"quartfaas-{name}-", 10 * unit_s)


def test_train_smoother_writes_a_loadable_predictor(tmp_path: Path, unit_s: float) -> None:
    out = tmp_path / "smoother"
    r = _cli("train-smoother", str(out), "--runs", "8", "--epochs", "2", "--seed", "1",
             timeout_s=120 * unit_s)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"model.safetensors", "config.json", "metrics.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 1 and metrics["winner"] in ("gat", "qna")
    for predictor in ("gat", "qna", "persistence"):
        assert metrics["test"][predictor]["n"] > 0
        assert metrics["test"][predictor]["mae"] >= 0
        assert f"{metrics['test'][predictor]['mae']:.4f}" in r.stdout  # the printed table
    from quartfaas.control.smoother.gat import GatPredictor

    predictor = GatPredictor(out)
    predictor.load()  # the files are the predictor the controller would load
    assert predictor.metrics is not None and predictor.metrics["seed"] == 1
