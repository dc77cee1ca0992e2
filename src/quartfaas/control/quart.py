"""Quart as one ``Policy``: Pipeline Smoother forecast -> Replica Corrector -> CPU Compensator.

Neighbours: a ``propagation.CvPredictor`` (QNA, or the GAT of ``gat.py``) predicts each
stage's arrivals; ``smoother.PipelineSmoother.forecast`` turns that into the arrivals to
plan for (a burst upstream reaches stage ``k`` after the upstream sojourn times);
``corrector.ReplicaCorrector.targets`` plans the whole pipeline jointly on the end-to-end
tail model with those inputs (feedback, hysteresis, guards); ``PipelineSmoother.smooth``
applies the optional neighbour smoothing and replica budget; ``compensator.CpuCompensator.
apply`` sets CPU per replica (never counts), capped by the host's cores. ``registry.py``
builds it by name (``"quart"``); ``loop.py`` and the simulator run it. Pure: the predictor
reads only the snapshot, and the state is frozen.

Switches, for ablations: ``smoother`` and ``compensator`` (default: ``ControllerConfig.
smoother`` / ``.compensator``). Without the smoother no predictor is built and the
corrector plans on measured arrivals alone (neither predictor imports torch: ``gat.py``).

CPU cap: ``host_cores`` (argument, else ``ControllerConfig.host_cores``, else
``compensator_config.host_cores``) bounds ``max_cpu``; the live runtime passes the
machine's cores (``quartfaas.hostcores``), the simulator its server's. Unknown, the cap is
``max_cpu`` and every compensator reason says so.

Predictor choice: ``"qna"``; ``"gat"`` (the shipped weights, or ``weights_dir``; a
``WeightsError`` if unusable); ``"auto"`` (default) takes the GAT only when its shipped
``metrics.json`` shows a lower held-out CV error than QNA *and* the weights load, else QNA.
Any object with the ``CvPredictor`` protocol may be passed instead. The choice and why is in
``predictor_reason`` and in every decision's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from quartfaas.control.compensator import CompensatorConfig, CompensatorState, CpuCompensator
from quartfaas.control.compensator.cpu_demand import DemandModel
from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import CorrectorState, ReplicaCorrector
from quartfaas.control.policy import Decision
from quartfaas.control.smoother import PipelineSmoother, SmootherConfig
from quartfaas.control.smoother.gat import GatPredictor, gat_beats_qna, load_metrics, shipped_dir
from quartfaas.control.smoother.propagation import CvPredictor, QnaPredictor
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.errors import SpecError, WeightsError
from quartfaas.frozen import fast_init

PredictorChoice = Literal["auto", "qna", "gat"]


@fast_init
@dataclass(frozen=True, slots=True)
class QuartState:
    """The composite state: the corrector's and the compensator's (None when it is off)."""

    corrector: CorrectorState
    compensator: CompensatorState | None = None


@cache
def _shipped_gat() -> GatPredictor:
    # One loaded copy per process: policies are built per pipeline and per experiment.
    gat = GatPredictor()
    gat.load()
    return gat


def choose_predictor(
    choice: PredictorChoice | CvPredictor, weights_dir: Path | str | None = None
) -> tuple[CvPredictor, str]:
    """The predictor for ``choice`` and a sentence saying why it was chosen."""
    if not isinstance(choice, str):
        return choice, f"predictor {choice.name} (given)"
    if choice == "qna":
        return QnaPredictor(), "predictor qna (asked for)"
    directory = Path(weights_dir) if weights_dir is not None else shipped_dir()
    if choice == "gat":
        gat = _shipped_gat() if weights_dir is None else GatPredictor(directory)
        gat.load()
        return gat, f"predictor gat (asked for, weights {directory})"
    if choice != "auto":
        raise SpecError(f"predictor must be 'auto', 'qna' or 'gat', got {choice!r}")
    metrics = load_metrics(directory)
    if not gat_beats_qna(metrics):
        why = "no GAT metrics" if metrics is None else "GAT does not beat QNA on held-out data"
        return QnaPredictor(), f"predictor qna (auto: {why})"
    assert metrics is not None
    test = metrics["test"]
    score = f"held-out CV MAE gat {test['gat']['mae']:.3f} < qna {test['qna']['mae']:.3f}"
    try:
        gat = _shipped_gat() if weights_dir is None else GatPredictor(directory)
        gat.load()
    except WeightsError as exc:
        return QnaPredictor(), f"predictor qna (auto: GAT weights unusable: {exc})"
    return gat, f"predictor gat (auto: {score})"


class QuartPolicy:
    """Quart's controller (``"quart"``); see the module docstring."""

    name = "quart"

    def __init__(
        self,
        config: ControllerConfig | None = None,
        *,
        predictor: PredictorChoice | CvPredictor = "auto",
        smoother: bool | None = None,
        compensator: bool | None = None,
        smoother_config: SmootherConfig | None = None,
        compensator_config: CompensatorConfig | None = None,
        demand_model: DemandModel | None = None,
        weights_dir: Path | str | None = None,
        host_cores: float | None = None,
    ) -> None:
        self.cfg = config if config is not None else ControllerConfig.model_validate({})
        self.smoother_on = self.cfg.smoother if smoother is None else smoother
        self.compensator_on = self.cfg.compensator if compensator is None else compensator
        self.corrector = ReplicaCorrector(self.cfg)
        self.smoother = PipelineSmoother(self.cfg, smoother_config)
        comp_cfg = compensator_config if compensator_config is not None else CompensatorConfig()
        cores = host_cores if host_cores is not None else self.cfg.host_cores
        if cores is not None and comp_cfg.host_cores is None:
            comp_cfg = comp_cfg.model_copy(update={"host_cores": max(cores, comp_cfg.min_cpu)})
        self.compensator = CpuCompensator(comp_cfg, demand_model)
        self.predictor: CvPredictor | None = None
        self.predictor_reason = "smoother off: no predictor"
        if self.smoother_on:
            self.predictor, self.predictor_reason = choose_predictor(predictor, weights_dir)

    def initial_state(self, snapshot: PipelineSnapshot) -> QuartState:
        comp = self.compensator.initial_state(snapshot) if self.compensator_on else None
        return QuartState(self.corrector.initial_state(snapshot), comp)

    def decide(self, snapshot: PipelineSnapshot, state: QuartState) -> tuple[Decision, QuartState]:
        predictions = None
        forecast = None
        if (
            self.smoother_on
            and self.predictor is not None
            and self.corrector.hold_reason(snapshot) is None
        ):
            predictions = self.predictor.predict(snapshot)
            forecast = self.smoother.forecast(snapshot, predictions)
        tick, corrector_state = self.corrector.targets(snapshot, state.corrector, forecast)
        if tick.hold:
            return tick.decision(self.name), QuartState(corrector_state, state.compensator)
        note = "smoother off"
        if predictions is not None:
            tick = self.smoother.smooth(snapshot, tick, predictions)
            note = self.predictor_reason
        decision = tick.decision(self.name, note)
        comp_state = state.compensator
        if self.compensator_on:
            budgets = {t.stage: t.budget_s for t in tick.stages if t.budget_s is not None}
            if comp_state is None:  # the switch was off when the state was made
                comp_state = self.compensator.initial_state(snapshot)
            decision, comp_state = self.compensator.apply(decision, snapshot, budgets, comp_state)
        return decision, QuartState(corrector_state, comp_state)


__all__ = ["PredictorChoice", "QuartPolicy", "QuartState", "choose_predictor"]
