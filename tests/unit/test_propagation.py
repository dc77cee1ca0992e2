"""QNA departure approximation, the QnaPredictor's missing-data rules and the shared features."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quartfaas.control.smoother.propagation import (
    CV_FEATURE,
    FEATURE_NAMES,
    N_FEATURES,
    QNA_FEATURE,
    CvPredictor,
    PersistencePredictor,
    QnaPredictor,
    features,
    measured_cv,
    qna_and_features,
    qna_departure_scv,
    service_slots,
    stage_features,
    utilisation,
)
from quartfaas.control.snapshot import make_snapshot, make_stage
from quartfaas.metrics.windows import gap_cv
from quartfaas.sim.engine import Engine
from quartfaas.workload.synthetic import gamma_renewal

# -- the formula ------------------------------------------------------------------------


def test_light_load_passes_arrival_variability_through():
    for ca2 in (0.0, 0.25, 1.0, 16.0):
        assert qna_departure_scv(ca2, 0.3, 0.0, 4) == pytest.approx(ca2)
        assert qna_departure_scv(ca2, 0.3, 1e-4, 4) == pytest.approx(ca2, abs=1e-6)


@pytest.mark.parametrize("c", [1, 2, 4, 16])
@pytest.mark.parametrize("cs2", [0.0, 0.5, 1.0, 3.0])
def test_heavy_load_replaces_it_by_service_variability(c, cs2):
    limit = 1.0 + (cs2 - 1.0) / math.sqrt(c)
    assert qna_departure_scv(9.0, cs2, 1.0, c) == pytest.approx(limit)
    assert qna_departure_scv(9.0, cs2, 0.99999, c) == pytest.approx(limit, abs=1e-3)
    # overload (rho >= 1) is taken as rho = 1: the stage departs at its service rate
    assert qna_departure_scv(9.0, cs2, 3.0, c) == pytest.approx(limit)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("c", [1, 3, 8])
def test_mmc_departures_are_poisson(rho, c):
    assert qna_departure_scv(1.0, 1.0, rho, c) == pytest.approx(1.0)


def test_more_servers_dilute_service_variability():
    # cs2 < 1: more servers give a departure SCV closer to 1 at heavy load
    values = [qna_departure_scv(1.0, 0.0, 0.9, c) for c in (1, 2, 4, 16)]
    assert values == sorted(values)
    assert values[0] == pytest.approx(1.0 - 0.81)


def test_bad_servers_rejected():
    with pytest.raises(ValueError, match="servers"):
        qna_departure_scv(1.0, 1.0, 0.5, 0)


@given(
    ca2=st.floats(0.0, 100.0),
    cs2=st.floats(0.0, 20.0),
    rho=st.floats(0.0, 1.0),
    c=st.integers(1, 256),
)
def test_departure_scv_is_a_mix_of_the_two_limits(ca2, cs2, rho, c):
    """cd² = (1-ρ²)·ca² + ρ²·(1 + (cs²-1)/√c): it lies between the two limits."""
    cd2 = qna_departure_scv(ca2, cs2, rho, c)
    heavy = 1.0 + (cs2 - 1.0) / math.sqrt(c)
    assert cd2 >= 0.0
    assert min(ca2, heavy) - 1e-9 <= cd2 <= max(ca2, heavy) + 1e-9


@given(
    ca2=st.floats(0.0, 50.0),
    extra=st.floats(0.0, 50.0),
    cs2=st.floats(0.0, 5.0),
    rho=st.floats(0.0, 0.999),
    c=st.integers(1, 64),
)
def test_burstier_input_never_gives_smoother_output(ca2, extra, cs2, rho, c):
    assert qna_departure_scv(ca2 + extra, cs2, rho, c) >= qna_departure_scv(ca2, cs2, rho, c) - 1e-9


def _simulated_departure_scv(ca: float, cs2: float, rho: float, c: int) -> float:
    """Departure SCV of a G/G/c FCFS queue run by the simulator's engine."""
    lam = 10.0
    duration = 5000.0
    arrivals = gamma_renewal(lam, ca, duration, seed=11)
    mean = rho * c / lam
    rng = np.random.default_rng(12)  # not the arrivals' stream: work must be independent
    work = (
        np.full(arrivals.size, mean) if cs2 == 0 else rng.gamma(1 / cs2, mean * cs2, arrivals.size)
    )
    engine = Engine(arrivals, work[None, :], [10**9])
    engine.add_replica(0, c, 0.0, 1.0)
    engine.advance(duration + 1e5)
    finish = np.sort(engine.finish[0])
    cv = gap_cv(finish[finish.size // 10 :])  # drop the start-up from empty
    assert cv is not None
    return cv * cv


@pytest.mark.parametrize(
    ("ca", "cs2", "rho", "c", "tol"),
    [
        (1.0, 1.0, 0.7, 3, 0.06),  # M/M/3: Poisson out
        (1.0, 1.0, 0.9, 1, 0.06),  # M/M/1 near saturation: still Poisson out
        (1.0, 0.0, 0.9, 1, 0.05),  # M/D/1: a regular stream out
    ],
)
def test_qna_matches_simulated_departures(ca, cs2, rho, c, tol):
    sim = _simulated_departure_scv(ca, cs2, rho, c)
    assert sim == pytest.approx(qna_departure_scv(ca * ca, cs2, rho, c), abs=tol)


def test_qna_errs_on_the_bursty_side_for_bursty_renewal_input():
    # Gamma arrivals with CV 3: QNA overstates the departure SCV somewhat (it is an
    # interpolation), which makes the smoother provision more, not less.
    sim = _simulated_departure_scv(3.0, 0.2, 0.9, 2)
    qna = qna_departure_scv(9.0, 0.2, 0.9, 2)
    assert sim < qna < 1.4 * sim
    assert sim > 1.2  # the burst is damped, not removed


# -- the predictor ----------------------------------------------------------------------


def _stage(i: int, **kw):
    base = dict(
        arrival_rate=20.0,
        arrival_cv=1.0,
        service_mean_s=0.05,
        service_scv=1.0,
        ready_replicas=1,
        max_concurrency=2,
        max_replicas=8,
    )
    base.update(kw)
    return make_stage(f"s{i}", i, **base)


def test_predictor_protocol():
    assert isinstance(QnaPredictor(), CvPredictor)
    assert isinstance(PersistencePredictor(), CvPredictor)


def test_one_hop_from_the_upstream_stage():
    snap = make_snapshot(
        stages=(
            _stage(0, arrival_cv=4.0, service_scv=0.2),
            _stage(1, arrival_cv=1.0, arrival_rate=18.0),
            _stage(2, arrival_cv=0.7),
        )
    )
    p = QnaPredictor().predict(snap)
    assert [x.stage for x in p] == ["s0", "s1", "s2"]
    assert p[0].cv == 4.0 and p[0].source == "measured"  # stage 0: persistence
    rho0 = 20.0 * 0.05 / 2
    assert p[1].scv == pytest.approx(qna_departure_scv(16.0, 0.2, rho0, 2))
    assert p[1].source == "qna" and "QNA from s0" in p[1].reason
    # stage 2 uses stage 1's *measured* CV, not the prediction for it
    rho1 = 18.0 * 0.05 / 2
    assert p[2].scv == pytest.approx(qna_departure_scv(1.0, 1.0, rho1, 2))
    # flow conservation: what enters stage k-1 now reaches stage k next
    assert p[1].rate_per_s == 20.0 and p[2].rate_per_s == 18.0
    assert all(x.reason for x in p)


def test_missing_upstream_cv_uses_the_chain_and_missing_first_cv_is_poisson():
    snap = make_snapshot(stages=(_stage(0, arrival_cv=None), _stage(1, arrival_cv=None), _stage(2)))
    p = QnaPredictor().predict(snap)
    assert p[0].cv == 1.0 and p[0].source == "assumed"
    assert p[1].scv == pytest.approx(1.0)  # M/M/c of a Poisson assumption
    snap = make_snapshot(stages=(_stage(0, arrival_cv=3.0), _stage(1, arrival_cv=None), _stage(2)))
    p = QnaPredictor().predict(snap)
    assert p[2].scv == pytest.approx(qna_departure_scv(p[1].scv, 1.0, 0.5, 2))
    assert "(predicted)" in p[2].reason


def test_unknown_utilisation_passes_through_and_unknown_service_scv_is_one():
    snap = make_snapshot(stages=(_stage(0, arrival_cv=3.0, service_mean_s=None), _stage(1)))
    p = QnaPredictor().predict(snap)
    assert p[1].cv == pytest.approx(3.0)
    assert "pass-through" in p[1].reason
    snap = make_snapshot(stages=(_stage(0, arrival_cv=3.0, service_scv=None), _stage(1)))
    p = QnaPredictor().predict(snap)
    assert p[1].scv == pytest.approx(qna_departure_scv(9.0, 1.0, 0.5, 2))
    assert "cs² 1 (assumed)" in p[1].reason


def test_starting_replicas_stand_in_for_ready_ones():
    snap = make_snapshot(
        stages=(_stage(0, arrival_cv=3.0, ready_replicas=0, starting_replicas=2), _stage(1))
    )
    p = QnaPredictor().predict(snap)
    assert p[1].scv == pytest.approx(qna_departure_scv(9.0, 1.0, 20 * 0.05 / 4, 4))


def test_persistence_and_empty_snapshot():
    snap = make_snapshot(stages=(_stage(0, arrival_cv=2.5), _stage(1, arrival_cv=None)))
    p = PersistencePredictor().predict(snap)
    assert [x.cv for x in p] == [2.5, 1.0]
    assert QnaPredictor().predict(make_snapshot(stages=())) == ()


# -- features ---------------------------------------------------------------------------


def test_feature_rows_and_missing_values():
    snap = make_snapshot(
        stages=(_stage(0), _stage(1, arrival_rate=None, arrival_cv=None, service_scv=None))
    )
    rows = features(snap)
    assert len(rows) == 2 and all(len(r) == N_FEATURES == len(FEATURE_NAMES) == 8 for r in rows)
    assert rows[0][FEATURE_NAMES.index("position")] == 0.0
    assert rows[1][FEATURE_NAMES.index("position")] == 1.0
    missing = rows[1]
    assert missing[FEATURE_NAMES.index("log_rate")] == 0.0
    assert missing[FEATURE_NAMES.index("rho")] == 0.0
    assert missing[CV_FEATURE] == 0.0  # CV 1
    assert missing[FEATURE_NAMES.index("log_service_scv")] == pytest.approx(math.log(2))
    assert all(abs(v) < 5 for r in rows for v in r)  # normalised


def test_cv_enters_the_features():
    calm = make_snapshot(stages=(_stage(0, arrival_cv=1.0), _stage(1)))
    bursty = make_snapshot(stages=(_stage(0, arrival_cv=4.0), _stage(1)))
    a, b = features(calm), features(bursty)
    assert b[0][CV_FEATURE] == pytest.approx(math.log(4.0))
    assert b[1][FEATURE_NAMES.index("log_upstream_cv")] == pytest.approx(math.log(4.0))
    assert b[1][QNA_FEATURE] > a[1][QNA_FEATURE]


def test_one_pass_reads_the_same_measurements_as_the_public_helpers():
    """``qna_and_features`` reads each stage once; its CVs and rows are those of
    ``QnaPredictor`` and ``stage_features`` built on ``measured_cv``, ``utilisation`` and
    ``service_slots``, with missing, negative and out-of-range inputs among the stages."""
    stages = (
        _stage(0, arrival_cv=30.0),
        _stage(1, arrival_rate=-1.0, arrival_cv=-2.0, service_scv=-0.5),
        _stage(2, arrival_rate=None, arrival_cv=None, service_scv=None),
        _stage(3, service_mean_s=float("nan"), arrival_cv=0.01),
        _stage(4, ready_replicas=0, starting_replicas=2, max_concurrency=3),
        _stage(5, arrival_cv=1.7, service_scv=2.5),
    )
    snap = make_snapshot(stages=stages)
    preds, rows = qna_and_features(snap)
    reference = QnaPredictor().predict(snap)
    assert [(p.cv, p.rate_per_s) for p in preds] == [(p.cv, p.rate_per_s) for p in reference]
    assert rows == features(snap, reference)
    n = len(stages)

    def log_cv(cv):
        return 0.0 if cv is None else math.log(min(max(cv, 0.05), 20.0))

    for k, s in enumerate(stages):  # the row from the public helpers, field by field
        lam = s.arrival_rate if s.arrival_rate is not None else None
        rho = utilisation(s)
        scv = s.service_scv if s.service_scv is not None and s.service_scv >= 0 else None
        up = measured_cv(stages[k - 1]) if k > 0 else measured_cv(s)
        expected = [
            math.log1p(max(lam, 0.0)) / 5.0 if lam is not None else 0.0,
            min(max(rho, 0.0), 2.0) if rho is not None else 0.0,
            math.log1p(service_slots(s)) / math.log(65.0),
            log_cv(measured_cv(s)),
            math.log1p(scv) if scv is not None else math.log(2.0),
            log_cv(up),
            k / (n - 1),
            log_cv(reference[k].cv),
        ]
        assert rows[k] == expected
        assert stage_features(s, k, n, up if k > 0 else None, reference[k].cv) == expected
