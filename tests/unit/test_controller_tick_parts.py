"""benchmarks/controller_tick.py --parts: every part of the tick is timed, and undone."""

from __future__ import annotations

import pytest

from helpers import benchmark_script
from quartfaas.control.corrector import corrector as corrector_mod
from quartfaas.control.quart import QuartPolicy


def test_parts_time_each_part_and_restore_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    mod = benchmark_script("controller_tick")
    decide, plan = QuartPolicy.decide, corrector_mod.ReplicaCorrector._plan
    args = ["--stages", "12", "--repeats", "20", "--warmup", "3", "--parts", "--limit-ms", "1e9"]
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
