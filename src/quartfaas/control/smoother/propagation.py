"""How burstiness travels down a pipeline: each stage's arrival CV over the next horizon.

Neighbours: reads a ``PipelineSnapshot`` (``snapshot.py``; the collectors fill each stage's
``arrival_cv`` over time from ``metrics/windows.py``-style time-keyed windows);
``smoother.py`` turns the predictions into replica targets through the G/G/c model of
``queueing.py``; ``gat.py`` is the learned predictor behind the same ``CvPredictor``
protocol and uses ``features`` from here, so training (``sim/smoother_data.py``) and
inference see exactly the same inputs. Pure: no I/O, no clock, no torch.

**Why a prediction at all.** In a pipeline stage ``k``'s arrivals are stage ``k-1``'s
departures, so a burst measured at stage ``k-1`` now is what stage ``k`` receives next. The
corrector sizes every stage from its *own* measured arrival CV, which for a downstream stage
rises only once the burst is already there. A predicted CV lets the smoother add replicas
first.

**QNA (Whitt 1983).** A G/G/c queue with arrival SCV ``ca²``, service SCV ``cs²``,
utilisation ``ρ`` and ``c`` servers has departure SCV approximately::

    cd² = 1 + (1 - ρ²)(ca² - 1) + ρ²(cs² - 1)/√c

Light load passes the arrival variability through (``ρ → 0``: ``cd² → ca²``); heavy load
replaces it by the service variability (``ρ → 1``: ``cd² → 1 + (cs² - 1)/√c``); Poisson in,
exponential service gives Poisson out (M/M/c departures are Poisson: ``cd² = 1``).

``QnaPredictor`` applies it one hop, per stage ``k >= 1``, on stage ``k-1``'s measurements:
``ca²`` its measured arrival SCV, ``ρ = λ·E[S]/c`` with ``c`` its ready service slots
(``ready_replicas × max_concurrency``), ``cs²`` its measured service SCV. Stage 0 has no
upstream: its prediction is its own measured CV (persistence). Missing data, each stated in
the prediction's reason:

* upstream ``ca²`` unknown: the upstream stage's own *prediction* is used (the chain);
  stage 0 without a measurement is assumed Poisson (``ca² = 1``, the M/M/c assumption the
  corrector also makes);
* ``cs²`` unknown: 1 (exponential);
* ``ρ`` unknown (no rate, no service time, or no slots at all): 0, i.e. the upstream
  variability passes through unchanged. For a bursty input (``ca² > 1``) that is the
  largest ``cd²`` the formula can give, so the smoother errs towards more replicas;
* ``ρ >= 1`` (overloaded, a queue is building) is taken as 1: the stage departs at its
  service rate, with the service variability.

The predicted *rate* is flow conservation: what enters stage ``k-1`` now reaches stage ``k``
next, so ``λ̂_k = λ_{k-1}`` (the stage's own rate where upstream is unknown).

**Features** (``FEATURE_NAMES``, one row per stage, fixed transforms so no scaler has to be
shipped; each is about unit scale for a realistic stage, and a missing value maps to the
value of the usual assumption):

=====  ==================  =====================================================  ========
index  name                value                                                  missing
=====  ==================  =====================================================  ========
0      ``log_rate``        ``ln(1 + λ) / 5`` (λ arrivals/s)                       0
1      ``rho``             ``λ·E[S]/c`` clipped to [0, 2]                         0
2      ``log_servers``     ``ln(1 + c) / ln 65`` (c ready service slots)          0
3      ``log_cv``          ``ln CV`` of arrivals, CV clipped to [0.05, 20]        0 (CV 1)
4      ``log_service_scv`` ``ln(1 + cs²)``                                        ln 2
5      ``log_upstream_cv`` ``log_cv`` of stage ``k-1`` (stage 0: its own)         0
6      ``position``        ``k / (n - 1)`` (0 for a one-stage pipeline)           -
7      ``log_qna_cv``      ``ln`` of QNA's predicted CV for the stage             -
=====  ==================  =====================================================  ========

The measured arrival CV enters as node features 3, 5 and (through QNA) 7, so it changes
the GAT's output (the prototype added it to attention logits, where a softmax cancels it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot
from quartfaas.jit import jit

FEATURE_NAMES: tuple[str, ...] = (
    "log_rate",
    "rho",
    "log_servers",
    "log_cv",
    "log_service_scv",
    "log_upstream_cv",
    "position",
    "log_qna_cv",
)
N_FEATURES = len(FEATURE_NAMES)
QNA_FEATURE = FEATURE_NAMES.index("log_qna_cv")
CV_FEATURE = FEATURE_NAMES.index("log_cv")
# CVs outside this range are measurement artefacts of tiny windows, not burstiness.
CV_MIN, CV_MAX = 0.05, 20.0
_LN_65 = math.log(65.0)


class CvPrediction(NamedTuple):
    """One stage's predicted arrival process over the next horizon, and why."""

    stage: str
    cv: float  # coefficient of variation of inter-arrival times
    rate_per_s: float | None  # predicted arrival rate (None: unknown)
    source: str  # "measured", "qna", "gat" or "assumed"
    reason: str

    @property
    def scv(self) -> float:
        """The squared CV, ``ca²`` of the queueing formulas."""
        return self.cv * self.cv


@runtime_checkable
class CvPredictor(Protocol):
    """Predicts every stage's arrival CV over the next horizon from one snapshot."""

    name: str

    def predict(self, snapshot: PipelineSnapshot) -> tuple[CvPrediction, ...]:
        """One prediction per stage, in ``snapshot.stages`` order. Never raises on no data."""
        ...


def qna_departure_scv(scv_a: float, scv_s: float, rho: float, servers: int) -> float:
    """Whitt's QNA departure SCV of a G/G/c queue (``rho`` clipped to [0, 1], ``servers >= 1``).

    ``cd² = 1 + (1 - ρ²)(ca² - 1) + ρ²(cs² - 1)/√c``; never negative for non-negative SCVs.
    """
    if servers < 1:
        raise ValueError(f"servers must be >= 1, got {servers}")
    r = min(max(rho, 0.0), 1.0)
    ca2 = max(scv_a, 0.0)
    cs2 = max(scv_s, 0.0)
    r2 = r * r
    return max(0.0, 1.0 + (1.0 - r2) * (ca2 - 1.0) + r2 * (cs2 - 1.0) / math.sqrt(servers))


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def measured_cv(s: StageSnapshot) -> float | None:
    """The stage's measured arrival CV, clipped to ``[CV_MIN, CV_MAX]`` (None: unknown)."""
    cv = _finite(s.arrival_cv)
    if cv is None or cv < 0:
        return None
    return min(max(cv, CV_MIN), CV_MAX)


def service_slots(s: StageSnapshot) -> int:
    """Slots whose load the measured ρ is over: ready ones, else those starting (0: none)."""
    n = s.ready_replicas if s.ready_replicas > 0 else s.replicas
    return n * max(1, s.max_concurrency)


def utilisation(s: StageSnapshot) -> float | None:
    """Measured ``ρ = λ·E[S]/c`` over ``service_slots``; None when any input is missing."""
    lam = _finite(s.arrival_rate)
    mean = _finite(s.service_mean_s)
    c = service_slots(s)
    if lam is None or mean is None or lam < 0 or mean < 0 or c == 0:
        return None
    return lam * mean / c


class _Measured(NamedTuple):
    """One stage's measurements as the QNA hop and the features read them, each read once
    per stage and tick (the hop of stage ``k + 1`` and the row of stage ``k`` both need
    stage ``k``'s)."""

    rate: float | None  # finite arrival rate (may be negative: then ρ is unknown)
    rho: float | None
    scv_s: float | None
    cv: float | None  # measured_cv
    slots: int  # service_slots


def _measured(s: StageSnapshot) -> _Measured:
    v = _finite(s.service_scv)
    scv_s = v if v is not None and v >= 0 else None
    return _Measured(
        _finite(s.arrival_rate), utilisation(s), scv_s, measured_cv(s), service_slots(s)
    )


def _hop(
    up: StageSnapshot, m: _Measured, up_cv: float, up_known: bool, reasons: bool = True
) -> tuple[float, str]:
    """QNA departure CV of ``up`` (measured ``m``) given its arrival CV, with the reason
    text (``""`` without ``reasons``)."""
    rho = m.rho
    scv_s = m.scv_s
    c = max(1, m.slots)
    cd2 = qna_departure_scv(up_cv * up_cv, 1.0 if scv_s is None else scv_s, rho or 0.0, c)
    cv = min(max(math.sqrt(cd2), CV_MIN), CV_MAX)
    if not reasons:
        return cv, ""
    parts = [f"ca² {up_cv * up_cv:.3g}" + ("" if up_known else " (predicted)")]
    parts.append("ρ n/a (pass-through)" if rho is None else f"ρ {min(rho, 1.0):.2f}")
    parts.append("cs² 1 (assumed)" if scv_s is None else f"cs² {scv_s:.2g}")
    parts.append(f"c {c}")
    return cv, f"QNA from {up.name} ({', '.join(parts)})"


class QnaPredictor:
    """The analytical predictor: one QNA hop from the upstream stage (see module docstring)."""

    name = "qna"

    def predict(
        self, snapshot: PipelineSnapshot, *, reasons: bool = True
    ) -> tuple[CvPrediction, ...]:
        """One prediction per stage; ``reasons=False`` leaves the hops' reason texts empty
        (the GAT reads only the CVs and rates of its QNA input)."""
        return self._predict(snapshot, [_measured(s) for s in snapshot.stages], reasons)

    def _predict(
        self, snapshot: PipelineSnapshot, ms: Sequence[_Measured], reasons: bool
    ) -> tuple[CvPrediction, ...]:
        out: list[CvPrediction] = []
        stages = snapshot.stages
        for k, s in enumerate(stages):
            own_rate = ms[k].rate
            if k == 0:
                cv0 = ms[0].cv
                if cv0 is None:
                    out.append(CvPrediction(s.name, 1.0, own_rate, "assumed", "CV n/a: Poisson"))
                else:
                    why = f"first stage: measured CV {cv0:.2f} persists"
                    out.append(CvPrediction(s.name, cv0, own_rate, "measured", why))
                continue
            up = stages[k - 1]
            up_m = ms[k - 1]
            up_meas = up_m.cv
            up_cv = up_meas if up_meas is not None else out[k - 1].cv
            cv, why = _hop(up, up_m, up_cv, up_meas is not None, reasons)
            rate = up_m.rate if up_m.rate is not None else own_rate
            out.append(CvPrediction(s.name, cv, rate, "qna", why))
        return tuple(out)


def _log_cv(cv: float | None) -> float:
    return 0.0 if cv is None else math.log(min(max(cv, CV_MIN), CV_MAX))


def stage_features(
    s: StageSnapshot, k: int, n: int, upstream_cv: float | None, qna_cv: float
) -> list[float]:
    """The ``FEATURE_NAMES`` row of one stage (see the module docstring's table)."""
    return _feature_row(_measured(s), k, n, upstream_cv, qna_cv)


def _feature_row(
    m: _Measured, k: int, n: int, upstream_cv: float | None, qna_cv: float
) -> list[float]:
    lam, rho, scv_s, own = m.rate, m.rho, m.scv_s, m.cv
    return [
        math.log1p(max(lam, 0.0)) / 5.0 if lam is not None else 0.0,
        min(max(rho, 0.0), 2.0) if rho is not None else 0.0,
        math.log1p(m.slots) / _LN_65,
        _log_cv(own),
        math.log1p(scv_s) if scv_s is not None else math.log(2.0),
        _log_cv(upstream_cv if k > 0 else own),
        k / (n - 1) if n > 1 else 0.0,
        _log_cv(qna_cv),
    ]


def features(
    snapshot: PipelineSnapshot, qna: Sequence[CvPrediction] | None = None
) -> list[list[float]]:
    """Feature rows for every stage (``len(stages) × N_FEATURES``), shared by GAT and training.

    ``qna`` is ``QnaPredictor().predict(snapshot)`` when the caller already has it.
    """
    return qna_and_features(snapshot, qna)[1]


def qna_and_features(
    snapshot: PipelineSnapshot, qna: Sequence[CvPrediction] | None = None
) -> tuple[tuple[CvPrediction, ...], list[list[float]]]:
    """``QnaPredictor().predict(snapshot, reasons=False)`` (or ``qna`` when given) and
    ``features(snapshot, qna)``, each stage's measurements read once for both."""
    if qna is None:  # one compiled pass (``_qna_and_features_array``), rows as lists
        preds, x = _qna_and_features_array(snapshot)
        rows: list[list[float]] = x.tolist()
        return preds, rows
    ms = [_measured(s) for s in snapshot.stages]
    preds = tuple(qna)
    n = len(ms)
    rows = [
        _feature_row(m, k, n, ms[k - 1].cv if k > 0 else None, preds[k].cv)
        for k, m in enumerate(ms)
    ]
    return preds, rows


def _qna_and_features_array(
    snapshot: PipelineSnapshot,
) -> tuple[tuple[CvPrediction, ...], npt.NDArray[np.float64]]:
    """``qna_and_features(snapshot)`` with the rows as one array: each stage's fields read
    once into a row of numbers (``None`` as NaN), the QNA hop and the feature rows in one
    compiled pass (``_qna_rows``), then the predictions. Every value is the same
    expression as in ``_measured``, ``_hop`` (without reasons) and ``_feature_row``, in
    the same order, and numba's ``math`` functions are the C library's, as Python's: the
    same numbers bit for bit (``tests/unit/test_tick_fast_paths.py`` compares whole ticks
    with the helpers' path); a GAT tick calls this for every stage."""
    stages = snapshot.stages
    n = len(stages)
    fields = np.array(
        [
            (
                s.arrival_rate,
                s.service_mean_s,
                s.service_scv,
                s.arrival_cv,
                s.ready_replicas,
                s.replicas,
                s.max_concurrency,
            )
            for s in stages
        ],
        dtype=np.float64,
    ).reshape(n, 7)
    cv, rate, rows = _qna_rows(fields, CV_MIN, CV_MAX, _LN_65)
    cvs, rates = cv.tolist(), rate.tolist()
    preds: list[CvPrediction] = []
    for k, s in enumerate(stages):
        r = rates[k]
        known = None if math.isnan(r) else r
        if k > 0:
            preds.append(CvPrediction(s.name, cvs[k], known, "qna", ""))
        elif measured_cv(s) is None:
            preds.append(CvPrediction(s.name, 1.0, known, "assumed", "CV n/a: Poisson"))
        else:  # the first stage's measured CV (clipped) is its prediction
            why = f"first stage: measured CV {cvs[0]:.2f} persists"
            preds.append(CvPrediction(s.name, cvs[0], known, "measured", why))
    return tuple(preds), rows


@jit
def _qna_rows(
    fields: npt.NDArray[np.float64], cv_min: float, cv_max: float, ln_65: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per stage (rows of ``fields``: arrival rate, service mean, service SCV, arrival CV,
    ready replicas, replicas, max concurrency; NaN: unknown) the predicted CV, the
    predicted rate (NaN: unknown) and the feature row: ``_qna_and_features_array``."""
    n = fields.shape[0]
    cv = np.empty(n)
    prate = np.empty(n)
    rows = np.empty((n, 8))
    up_rate = up_rho = up_scv = up_cv = np.nan
    up_slots = 0.0
    for k in range(n):
        x = fields[k, 0]
        rate = x if math.isfinite(x) else np.nan
        x = fields[k, 1]
        mean = x if math.isfinite(x) else np.nan
        x = fields[k, 2]
        scv_s = x if math.isfinite(x) and x >= 0 else np.nan
        ready = fields[k, 4]
        slots = (ready if ready > 0 else fields[k, 5]) * max(1.0, fields[k, 6])
        if math.isnan(rate) or math.isnan(mean) or rate < 0 or mean < 0 or slots == 0:
            rho = np.nan
        else:
            rho = rate * mean / slots
        x = fields[k, 3]
        own = min(max(x, cv_min), cv_max) if math.isfinite(x) and x >= 0 else np.nan
        if k == 0:
            cv[k] = 1.0 if math.isnan(own) else own
            prate[k] = rate
        else:
            ca = cv[k - 1] if math.isnan(up_cv) else up_cv
            # qna_departure_scv(ca², cs² (1 unknown), ρ (0 unknown), servers >= 1)
            r = min(max(0.0 if math.isnan(up_rho) else up_rho, 0.0), 1.0)
            ca2 = max(ca * ca, 0.0)
            cs2 = max(1.0 if math.isnan(up_scv) else up_scv, 0.0)
            r2 = r * r
            c = max(1.0, up_slots)
            cd2 = max(0.0, 1.0 + (1.0 - r2) * (ca2 - 1.0) + r2 * (cs2 - 1.0) / math.sqrt(c))
            cv[k] = min(max(math.sqrt(cd2), cv_min), cv_max)
            prate[k] = rate if math.isnan(up_rate) else up_rate
        upstream = up_cv if k > 0 else own
        rows[k, 0] = 0.0 if math.isnan(rate) else math.log1p(max(rate, 0.0)) / 5.0
        rows[k, 1] = 0.0 if math.isnan(rho) else min(max(rho, 0.0), 2.0)
        rows[k, 2] = math.log1p(slots) / ln_65
        rows[k, 3] = 0.0 if math.isnan(own) else math.log(min(max(own, cv_min), cv_max))
        rows[k, 4] = math.log(2.0) if math.isnan(scv_s) else math.log1p(scv_s)
        up = upstream
        rows[k, 5] = 0.0 if math.isnan(up) else math.log(min(max(up, cv_min), cv_max))
        rows[k, 6] = k / (n - 1) if n > 1 else 0.0
        rows[k, 7] = math.log(min(max(cv[k], cv_min), cv_max))
        up_rate, up_rho, up_scv, up_cv, up_slots = rate, rho, scv_s, own, slots
    return cv, prate, rows


class PersistencePredictor:
    """The naive baseline: each stage's next CV is its current measured CV (Poisson if none).

    Reported beside QNA and the GAT in the training metrics; usable as a predictor too.
    """

    name = "persistence"

    def predict(self, snapshot: PipelineSnapshot) -> tuple[CvPrediction, ...]:
        out = []
        for s in snapshot.stages:
            cv = measured_cv(s)
            rate = _finite(s.arrival_rate)
            if cv is None:
                out.append(CvPrediction(s.name, 1.0, rate, "assumed", "CV n/a: Poisson"))
            else:
                out.append(CvPrediction(s.name, cv, rate, "measured", f"measured CV {cv:.2f}"))
        return tuple(out)


__all__ = [
    "CV_FEATURE",
    "FEATURE_NAMES",
    "N_FEATURES",
    "QNA_FEATURE",
    "CvPrediction",
    "CvPredictor",
    "PersistencePredictor",
    "QnaPredictor",
    "features",
    "measured_cv",
    "qna_and_features",
    "qna_departure_scv",
    "service_slots",
    "stage_features",
    "utilisation",
]
