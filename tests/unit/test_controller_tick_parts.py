"""benchmarks/controller_tick.py --parts: every part of the tick is timed, and undone."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import benchmark_script
from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import corrector as corrector_mod
from quartfaas.control.quart import QuartPolicy


def test_parts_time_each_part_and_restore_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    mod = benchmark_script("controller_tick")
    decide, plan = QuartPolicy.decide, corrector_mod.ReplicaCorrector._plan
    args = ["--stages", "12", "--repeats", "20", "--warmup", "3", "--parts", "--limit-ms", "1e9"]
    args += ["--round-gap-s", "0"]
    assert mod.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("where the full Quart"))
    rows = {line[:28].strip(): float(line[28:]) for line in out[start + 1 :]}
    assert list(rows) == [label.strip() for label, _, _ in mod._PARTS]
    # Every part ran (the down-scale threshold runs on ticks with a stage above its plan,
    # which the drifting load of these snapshots gives), and inclusive times nest.
    assert all(v > 0 for v in rows.values()), rows
    assert rows["decide (the whole tick)"] >= rows["corrector"] >= rows["plan"]
    assert rows["plan"] >= rows["reference check"]
    assert QuartPolicy.decide is decide and corrector_mod.ReplicaCorrector._plan is plan


def test_rows_and_json_give_the_full_tick_alone_with_the_interpreter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mod = benchmark_script("controller_tick")
    args = ["--stages", "6", "--repeats", "5", "--warmup", "1", "--rows", "1", "--json"]
    args += ["--round-gap-s", "0"]
    assert mod.main([*args, "--limit-ms", "1e9"]) == 0
    out = capsys.readouterr().out.splitlines()
    got = json.loads(out[-1])
    assert list(got["rows"]) == [out[3].split("  ")[0].strip()]  # the first row only
    assert got["rows"][next(iter(got["rows"]))]["median_ms"] > 0
    assert got["interpreter"].startswith(sys.executable)
    assert any(line == f"interpreter: {got['interpreter']}" for line in out)


def test_tick_interpreters_interleaves_the_interpreters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # this interpreter against itself: two rounds, the order alternating, a ratio a round
    mod = benchmark_script("tick_interpreters")
    args = ["--python", sys.executable, "--rounds", "2", "--repeats", "3", "--warmup", "1"]
    assert mod.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    rounds = [line for line in out if line.startswith("round ")]
    assert len(rounds) == 2 and all("[1]/[0]" in line for line in rounds)
    assert sum(line.startswith("ratio [1]/[0] per round") for line in out) == 1
    with pytest.raises(SystemExit):
        mod.main(["--python", "/no/such/python"])


def test_rounds_split_the_ticks_and_interleave_the_rows_without_changing_them() -> None:
    mod = benchmark_script("controller_tick")
    snaps = mod.build_snapshots(5, 12)
    cfg = ControllerConfig.model_validate({})

    def row(name: str, closed: bool = False) -> object:
        return mod._Row(name, QuartPolicy(cfg, host_cores=16), snaps, closed=closed)

    rows = [row("a"), row("b", closed=True)]
    mod._rounds(rows, warmup=2, repeats=7, rounds=3, gap_s=0.0)
    for r in rows:
        assert len(r.times_ms) == 7 and len(r.cpu_ms) == 7 and r.i == 9
        assert len(r.round_medians) == 3  # 3, 2 and 2 ticks
    # In rounds or in one go, a row's ticks are the same ticks: the same decisions.
    for closed in (False, True):
        whole = row("w", closed)
        whole.run(2, timed=False)
        whole.run(7)
        split = rows[int(closed)]
        assert whole.counts == split.counts and whole.state == split.state
        assert whole.actions == split.actions


def test_the_verdict_is_on_the_median_of_every_round_s_ticks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mod = benchmark_script("controller_tick")
    args = ["--stages", "4", "--repeats", "6", "--warmup", "1", "--rows", "2", "--json"]
    assert mod.main([*args, "--rounds", "3", "--round-gap-s", "0", "--limit-ms", "1e9"]) == 0
    out = capsys.readouterr().out.splitlines()
    got = json.loads(out[-1])
    for figures in got["rows"].values():
        assert len(figures["round_medians_ms"]) == 3
    assert any(" rounds " in line and "(3 of 3 at most 1e+09 ms)" in line for line in out)
    assert mod.main([*args, "--rounds", "3", "--round-gap-s", "0", "--limit-ms", "1e-9"]) == 1
    with pytest.raises(SystemExit):
        mod.main([*args, "--rounds", "7"])  # more rounds than ticks


def test_rounds_on_a_slow_host_are_left_out_of_the_verdict(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = benchmark_script("controller_tick")
    assert mod.full_speed_rounds([2.0, 2.2, 4.0, 2.31], 0.15) == [0, 1]
    # The host reference after each round: rounds 1 and 2 slow.
    host = iter([2.1, 4.0, 4.1, 2.0, 2.1])
    monkeypatch.setattr(mod, "_host_ms", lambda: next(host))
    args = ["--stages", "4", "--repeats", "10", "--warmup", "1", "--rows", "1", "--json"]
    assert mod.main([*args, "--rounds", "5", "--round-gap-s", "0", "--limit-ms", "1e9"]) == 0
    out = capsys.readouterr().out.splitlines()
    (got,) = json.loads(out[-1])["rows"].values()
    assert got["host_reference_ms"] == [2.1, 4.0, 4.1, 2.0, 2.1]
    assert got["full_speed_rounds"] == [0, 3, 4]
    assert any(line.startswith("PASS: median") for line in out)
    # the figure is the median of those rounds' ticks
    row = mod._Row("r", QuartPolicy(ControllerConfig.model_validate({}), host_cores=16),
                   mod.build_snapshots(2, 2))  # fmt: skip
    row.round_times = [[1.0, 2.0], [10.0, 10.0], [10.0, 11.0], [3.0, 4.0], [5.0, 6.0]]
    assert mod.full_speed_median(row, [0, 3, 4]) == 3.5


def test_the_verdict_leaves_out_the_rounds_on_a_slow_host(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mod = benchmark_script("controller_tick")
    # within the limit over all rounds: a pass, whatever the host did
    assert mod._verdict(4.9, 3.9, 0, 10, 5.0) is False
    assert "PASS: median 4.900 ms <= 5 ms over all rounds" in capsys.readouterr().out
    # over it, but 3 of 10 rounds at full speed and fast there: a pass
    assert mod._verdict(6.3, 3.9, 3, 10, 5.0) is False
    assert "PASS: median 3.900 ms <= 5 ms at the host's full speed" in capsys.readouterr().out
    # 2 of 10: no verdict on the code, a failure
    assert mod._verdict(6.3, 3.9, 2, 10, 5.0) is True
    assert "no verdict on the tick" in capsys.readouterr().err
    # slow at full speed: a failure
    assert mod._verdict(5.6, 5.5, 8, 10, 5.0) is True
    assert "> 5 ms at the host's full speed" in capsys.readouterr().err
    # a run of fewer rounds needs them all
    assert mod._verdict(6.0, 1.0, 2, 2, 5.0) is False
    assert mod._verdict(6.0, 1.0, 1, 2, 5.0) is True


def test_after_idle_times_ticks_made_after_a_sleep(capsys: pytest.CaptureFixture[str]) -> None:
    mod = benchmark_script("controller_tick")
    args = ["--stages", "4", "--repeats", "3", "--warmup", "1", "--rows", "1", "--json"]
    args += ["--round-gap-s", "0", "--limit-ms", "1e9", "--after-idle", "3", "--idle-s", "0.01"]
    assert mod.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    (got,) = json.loads(out[-1])["rows"].values()
    assert got["after_idle_median_ms"] > 0
    assert any(line.startswith("full Quart tick after 0.01 s idle each: median") for line in out)
    with pytest.raises(SystemExit):
        mod.main([*args[:-4], "--after-idle", "-1"])


def test_the_host_is_timed_between_a_round_s_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = benchmark_script("controller_tick")
    calls: list[int] = []
    real = mod.host_reference
    monkeypatch.setattr(mod, "host_reference", lambda: calls.append(1) or real())

    def after(*_: object) -> float:
        raise AssertionError("a round of 25 ticks is timed between its ticks")

    monkeypatch.setattr(mod, "_host_ms", after)
    row = mod._Row("r", QuartPolicy(ControllerConfig.model_validate({}), host_cores=16),
                   mod.build_snapshots(3, 8))  # fmt: skip
    host = mod._rounds([row], warmup=1, repeats=50, rounds=2, gap_s=0.0)
    assert len(host) == 2 and all(h > 0 for h in host)
    assert len(calls) == 1 + 2 * 2  # the FFT plan's first call, then ticks 10 and 20 of each
    assert len(row.times_ms) == 50  # the samples are not ticks
