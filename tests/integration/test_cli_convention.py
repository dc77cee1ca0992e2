"""The CLI convention of issue #16, as a user meets it: the README's examples by name, and
every failure as one line on stderr with exit status 2.

``serve``, ``invoke``, ``functions``, ``scale``, ``load``, ``check-spec`` and
``make-weights`` run as subprocesses (the installed ``quartfaas`` script) against the
bundled example ``tiny`` by name, with ``HOME`` in a temporary folder so its weights go
there. Failure cases: port taken, gateway down, unknown function, bad spec (field, strict
integer, layer gap, a directory), ``--data @missing.json``, 401, every request failed.
Deadlines scale with the measured start-up time of the command on this machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import worker_pids

QUARTFAAS = str(Path(sys.executable).parent / "quartfaas")
pytestmark = pytest.mark.timeout(600)


def _measure_start_s() -> float:
    t0 = time.monotonic()
    subprocess.run([QUARTFAAS, "--version"], capture_output=True, check=True, timeout=120)
    return time.monotonic() - t0


#: One CLI start (imports) on this machine now; deadlines are multiples of it.
START_S = _measure_start_s()
CALL_S = max(30.0, 10 * START_S)
SERVE_S = max(120.0, 60 * START_S)


def env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), "COLUMNS": "80", **extra}


def cli(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUARTFAAS, *args], capture_output=True, text=True, timeout=CALL_S * 4,
                          check=False, env=env(home, **extra))  # fmt: skip


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The convention: exit 2, exactly one stderr line, ``error: ...``, naming ``needles``."""
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr, r.stdout)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str, banner: list[str]) -> None:
        self.proc, self.url, self.banner = proc, url, banner


def serve(home: Path, *args: str, **extra: str) -> Served:
    proc = subprocess.Popen([QUARTFAAS, "serve", *args, "--port", "0"], text=True,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            env=env(home, **extra))  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + SERVE_S
    banner: list[str] = []
    url = ""
    for line in proc.stderr:
        banner.append(line)
        m = re.search(r"serving \S+ at (http://127\.0\.0\.1:\d+)", line)
        if m:
            url = m.group(1)
        if url and ("controller on" in line or "controller off" in line):
            # Keep draining stderr so the server never blocks on a full pipe.
            os.set_blocking(proc.stderr.fileno(), False)
            return Served(proc, url, banner)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"serve did not start: {''.join(banner)[-2000:]}")


def stop(s: Served) -> int:
    s.proc.send_signal(signal.SIGINT)
    return s.proc.wait(timeout=SERVE_S)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def tiny(home: Path) -> Iterator[Served]:
    """``make-weights tiny`` then ``serve tiny`` (controller on), by example name."""
    r = cli(home, "make-weights", "tiny", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and all(Path(p).exists() for p in r.stdout.split())
    s = serve(home, "tiny")
    try:
        yield s
    finally:
        code = stop(s)
        deadline = time.monotonic() + SERVE_S
        while worker_pids("quartfaas-tiny-") and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in worker_pids("quartfaas-tiny-"):
            os.kill(pid, signal.SIGKILL)
        assert code == 0


# -- the README's examples by name ------------------------------------------------------


def test_check_spec_by_name(home: Path) -> None:
    r = cli(home, "check-spec", "tiny")
    assert r.returncode == 0, r.stderr
    assert "tiny-embed" in r.stdout and "tiny-head" in r.stdout


def test_serve_says_the_controller_is_on_and_scale_is_a_hint(tiny: Served) -> None:
    text = "".join(tiny.banner)
    assert "controller on" in text and "hint it may undo" in text
    assert "--no-controller" in text


def test_invoke_functions_scale_load_by_name(home: Path, tiny: Served) -> None:
    g = ("--gateway", tiny.url)
    for name in ("tiny", "tiny.openfaas-fn"):
        r = cli(home, "invoke", name, "--data", '{"inputs": [[101, 7592, 102]]}', *g)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["pipeline"] == "tiny"
    r = cli(home, "functions", *g)
    assert r.returncode == 0 and "tiny-mid" in r.stdout, r.stderr
    r = cli(home, "functions", "--json", *g)
    assert {f["name"] for f in json.loads(r.stdout)} >= {"tiny", "tiny-embed", "tiny-mid"}
    r = cli(home, "scale", "tiny-mid", "2", *g)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stages"] == {"tiny-mid": 2}
    assert "may undo" in r.stderr  # serve's controller is on
    # stdout is only the JSON summary (progress, if any, is on stderr): `| jq` works.
    r = cli(home, "load", "tiny", "--workload", "poisson:rate=4", "--duration", "2", *g)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["sent"] >= 1 and summary["ok"] == summary["sent"], summary


# -- failures: one line, exit 2 ------------------------------------------------------------


def test_failures_against_a_live_gateway(home: Path, tiny: Served) -> None:
    g = ("--gateway", tiny.url)
    one_line_error(cli(home, "invoke", "nope", "--data", "{}", *g), "nope", "not found")
    one_line_error(cli(home, "scale", "nope", "1", *g), "nope", "not found")
    one_line_error(cli(home, "scale", "tiny-mid", "99", *g), "com.openfaas.scale.max")
    one_line_error(cli(home, "invoke", "tiny", "--data", "@missing.json", *g),
                   "--data @missing.json")  # fmt: skip
    # Every request failed (404): the summary is still printed, and the exit status says so.
    r = cli(home, "load", "nope", "--workload", "poisson:rate=4", "--duration", "1",
            "--no-progress", *g)  # fmt: skip
    one_line_error(r, "all", "failed")
    assert json.loads(r.stdout)["ok"] == 0


def test_port_taken(home: Path, tiny: Served) -> None:
    port = tiny.url.rsplit(":", 1)[1]
    r = subprocess.run([QUARTFAAS, "serve", "tiny", "--port", port], capture_output=True,
                       text=True, timeout=SERVE_S, env=env(home), check=False)  # fmt: skip
    one_line_error(r, "--port")


def test_gateway_down(home: Path) -> None:
    g = ("--gateway", f"http://127.0.0.1:{free_port()}")
    one_line_error(cli(home, "invoke", "tiny", "--data", "{}", *g), "--gateway", "cannot reach")
    one_line_error(cli(home, "functions", *g), "--gateway")
    one_line_error(cli(home, "scale", "tiny-mid", "1", *g), "--gateway")
    # A trace name alone is a workload (== trace:azure-code); every request fails here.
    r = cli(home, "load", "tiny", "--workload", "azure-code", "--duration", "1",
            "--no-progress", *g)  # fmt: skip
    one_line_error(r, "failed", "--gateway")


def _bad_spec(tmp_path: Path, edit: Any) -> Path:
    from quartfaas.cli.common import spec_path

    data = yaml.safe_load(spec_path("tiny").read_text())
    edit(data)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_bad_specs(home: Path, tmp_path: Path) -> None:
    def stage0(key: str, value: Any) -> Any:
        return lambda d: d["stages"][0].__setitem__(key, value)

    p = _bad_spec(tmp_path, stage0("min_replicas", "1"))
    one_line_error(cli(home, "check-spec", str(p)), "stages[0].min_replicas", "integer")
    one_line_error(cli(home, "serve", str(p)), "stages[0].min_replicas")

    def gap(d: dict[str, Any]) -> None:
        for s, layers in zip(d["stages"], ([0, 1], [1, 2], [3, 4]), strict=True):
            s["layers"] = layers

    p = _bad_spec(tmp_path, gap)
    line = one_line_error(cli(home, "check-spec", str(p)), "stages:", "must start at 2")
    assert "(top level)" not in line
    one_line_error(cli(home, "check-spec", str(tmp_path)), "is a directory")
    one_line_error(cli(home, "check-spec", "no-such-example"), "tiny")  # lists the examples
    one_line_error(cli(home, "load", "tiny", "--workload", "poisson:rate=1", "--duration", "0"),
                   "--duration")  # fmt: skip


def test_basic_auth_401_says_how_to_pass_the_password(home: Path, tmp_path: Path) -> None:
    spec = {
        "name": "cliauth",
        "model": {"kind": "synthetic"},
        "gateway": {"auth": {"enabled": True}},
        "controller": {"enabled": False},
        "stages": [{"name": "cliauth-s0", "synthetic": {"work": "sleep", "mean_ms": 1}}],
    }
    path = tmp_path / "auth.yaml"
    path.write_text(yaml.safe_dump(spec))
    secret = {"QUARTFAAS_GATEWAY_PASSWORD": "pw-cli"}
    s = serve(home, str(path), **secret)
    try:
        assert "controller off" in "".join(s.banner)
        no_pw = {"QUARTFAAS_GATEWAY_PASSWORD": ""}
        one_line_error(cli(home, "functions", "--gateway", s.url, **no_pw),
                       "--password", "QUARTFAAS_GATEWAY_PASSWORD")  # fmt: skip
        one_line_error(cli(home, "scale", "cliauth-s0", "1", "--gateway", s.url, **no_pw),
                       "--password")  # fmt: skip
        r = cli(home, "functions", "--gateway", s.url, **secret)
        assert r.returncode == 0 and "cliauth-s0" in r.stdout, r.stderr
    finally:
        assert stop(s) == 0


def test_version_and_help_on_every_option(home: Path) -> None:
    import click
    import typer.main

    from quartfaas import __version__
    from quartfaas.cli import app

    r = cli(home, "--version")
    assert r.returncode == 0 and __version__ in r.stdout
    missing = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
            return
        for p in cmd.params:
            if not getattr(p, "help", None):
                missing.append(f"{' '.join(path)} {p.name}")

    walk(typer.main.get_command(app), [])
    assert missing == []


def test_piped_errors_are_not_wrapped(home: Path) -> None:
    long = "x" * 150
    r = cli(home, "check-spec", f"/nonexistent/{long}.yaml")
    line = one_line_error(r)
    assert long in line  # 80 columns would have split it


def test_serve_logs_each_scaling_action_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from quartfaas.cli.serving import ScalingLog
    from quartfaas.control.loop import Applied
    from quartfaas.control.policy import Decision, StageDecision

    decision = Decision(
        now=12.0,
        policy="quart",
        stages=(
            StageDecision("p-s0", current=1, replicas=3, reason="p99 model 180 ms > SLO 100 ms"),
            StageDecision("p-s1", current=2, replicas=2, reason="within target"),
        ),
    )
    with caplog.at_level(logging.INFO, logger="quartfaas.controller"):
        ScalingLog().record(None, decision, Applied(errors={"p-s1": "no memory"}))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "scale p-s0 1 -> 3 (up, policy quart): p99 model 180 ms > SLO 100 ms",
        "scaling p-s1 failed: no memory",
    ]
