"""The bundled emulated-accelerator spec matches the Quart prototype's profile it cites."""

from __future__ import annotations

import math

from quartfaas.jobs.run import example_spec
from quartfaas.sim.pipelines import from_spec, stage_times
from quartfaas.spec import load_spec

SCALE = 4.0  # stated in the spec's header comment


def test_emulated_bert21b_follows_stage_times() -> None:
    spec = load_spec(example_spec("emulated-bert21b"))
    n = len(spec.stages)
    assert n >= 5
    per_stage_s = dict(stage_times()["bert-21b"])[n]
    for st in spec.stages:
        assert st.synthetic is not None
        assert st.synthetic.work == "sleep"  # accelerator time: no CPU
        assert st.max_concurrency == 1  # one replica = one accelerator
        assert math.isclose(st.synthetic.mean_ms, per_stage_s * SCALE * 1000.0)
        assert st.max_replicas > st.min_replicas  # capacity can grow with replicas
    total_ms = n * per_stage_s * SCALE * 1000.0
    assert math.isclose(spec.slo.p99_ms, 5 * total_ms)  # the simulator presets' SLO rule


def test_emulated_pipeline_maps_to_the_simulator() -> None:
    spec = load_spec(example_spec("emulated-bert21b"))
    pipe = from_spec(spec)
    per_stage_s = dict(stage_times()["bert-21b"])[len(spec.stages)]
    assert len(pipe.stages) == len(spec.stages)
    assert all(math.isclose(s.service_s, per_stage_s * SCALE) for s in pipe.stages)
