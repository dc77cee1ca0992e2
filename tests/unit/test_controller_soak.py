"""benchmarks/controller_soak.py: many ticks in one process, memory before and after."""

from __future__ import annotations

import pytest

from helpers import benchmark_script

_SMALL = ["--ticks", "60", "--stages", "4", "--seeds", "2", "--warmup", "20", "--every", "20"]


def test_it_reports_memory_over_the_ticks_and_its_verdict_can_fail(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mod = benchmark_script("controller_soak")
    assert mod.main(_SMALL) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out if line.startswith("tick")] == [
        "tick      20", "tick      40", "tick      60"
    ]  # fmt: skip
    assert out[-1].startswith("RSS after the warm-up") and out[-1].endswith("PASS")
    # a limit no run can meet (the resident set does not shrink by a gigabyte)
    assert mod.main([*_SMALL, "--max-growth-mb", "-1000"]) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("FAIL")


@pytest.mark.parametrize(
    "bad", [["--ticks", "0"], ["--ticks", "10", "--warmup", "10"], ["--warmup", "0"]]
)
def test_bad_arguments_are_refused(bad: list[str]) -> None:
    with pytest.raises(SystemExit):
        benchmark_script("controller_soak").main(bad)
