"""benchmarks/controller_tick.py --parts: every part of the tick is timed, and undone."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from quartfaas.control.corrector import corrector as corrector_mod
from quartfaas.control.quart import QuartPolicy

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "controller_tick.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("controller_tick", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parts_time_each_part_and_restore_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    mod = _module()
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
