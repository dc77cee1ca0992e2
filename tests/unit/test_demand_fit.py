"""The CPU demand model: the prototype's constants as the baseline, and the least-squares fit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quartfaas.control.compensator.cpu_demand import DemandModel, DemandSample, fit_demand_model
from quartfaas.errors import SpecError


@pytest.mark.parametrize(
    ("concentration", "overhead"), [(1, 1.89), (2, 2.66), (4, 4.30), (8, 7.90)]
)
def test_prototype_constants_reproduce_the_prototype_overheads(
    concentration: float, overhead: float
) -> None:
    # The reference notes computed these by running OCD/CPUCompensator.py with T=1, η=1,
    # frag=0.3, gc=0.5.
    model = DemandModel.prototype(tensor_norm=1.0, eta=1.0, frag=0.3, gc=0.5)
    assert model.overhead(concentration) == pytest.approx(overhead, abs=0.005)
    assert model.demand(2.0, concentration) == pytest.approx(2.0 + overhead, abs=0.005)


def test_prototype_static_term_collects_network_and_memory_terms() -> None:
    assert DemandModel.prototype().static_cores == pytest.approx(0.8 + 0.6 * 0.3 + 0.4 * 0.5)
    assert DemandModel().static_cores == pytest.approx(DemandModel.prototype().static_cores)
    # Measured inputs change the static term only.
    assert DemandModel.prototype(frag=0.0, gc=0.0).static_cores == pytest.approx(0.8)


def test_concentration_below_one_is_floored() -> None:
    model = DemandModel.prototype()
    assert model.overhead(0.5) == model.overhead(1.0)


def _synthetic(model: DemandModel, lcs: list[float], base: float = 0.0) -> list[DemandSample]:
    return [DemandSample(lc, base + model.overhead(lc), base) for lc in lcs]


@pytest.mark.parametrize(
    "truth",
    [
        DemandModel.prototype(),
        DemandModel(alpha=0.8, beta=1.5, gamma=0.2, static_cores=0.4),
        DemandModel(alpha=0.3, beta=0.8, gamma=0.9, static_cores=0.0),
    ],
)
def test_fit_recovers_known_constants_from_exact_samples(truth: DemandModel) -> None:
    lcs = [1.0, 1.33, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0]
    fitted = fit_demand_model(_synthetic(truth, lcs, base=1.5))
    assert fitted.alpha == pytest.approx(truth.alpha, abs=1e-3)
    assert fitted.beta == pytest.approx(truth.beta, abs=1e-3)
    assert fitted.gamma == pytest.approx(truth.gamma, abs=1e-3)
    assert fitted.static_cores == pytest.approx(truth.static_cores, abs=1e-3)
    assert fitted.rmse is not None and fitted.rmse < 1e-4
    assert fitted.n_samples == len(lcs)
    assert "fit" in fitted.source


def test_fit_of_noisy_samples_predicts_the_demand() -> None:
    truth = DemandModel(alpha=0.6, beta=1.1, gamma=0.4, static_cores=0.5)
    rng = np.random.default_rng(7)
    lcs = np.repeat([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0], 5)
    samples = [(float(lc), truth.overhead(lc) + float(rng.normal(0, 0.05))) for lc in lcs]
    fitted = fit_demand_model(samples)
    for lc in (1.0, 2.5, 5.0, 8.0):
        assert fitted.overhead(lc) == pytest.approx(truth.overhead(lc), abs=0.12)
    assert fitted.rmse is not None and 0.02 < fitted.rmse < 0.1


def test_fit_keeps_every_term_non_negative() -> None:
    # A replica that needs *less* at higher concentration cannot be described by the model;
    # the fit must still return a valid (non-negative) one rather than negative terms.
    samples = [(1.0, 2.0), (2.0, 1.5), (4.0, 1.2), (8.0, 1.0)]
    fitted = fit_demand_model(samples)
    assert min(fitted.alpha, fitted.gamma, fitted.static_cores) >= 0
    assert all(fitted.overhead(lc) >= 0 for lc in (1, 2, 4, 8))


def test_fit_needs_enough_distinct_concentrations() -> None:
    with pytest.raises(SpecError, match="distinct concentrations"):
        fit_demand_model([(2.0, 3.0), (2.0, 3.1), (4.0, 5.0), (4.0, 5.1)])
    with pytest.raises(SpecError, match="4 samples"):
        fit_demand_model([(1.0, 2.0), (2.0, 3.0), (4.0, 5.0)])


def test_invalid_samples_and_models_are_refused() -> None:
    with pytest.raises(SpecError, match="concentration"):
        DemandSample(0.5, 2.0)
    with pytest.raises(SpecError, match="finite"):
        DemandSample(2.0, math.nan)
    with pytest.raises(SpecError, match="alpha"):
        DemandModel(alpha=-1.0)
    with pytest.raises(SpecError, match="beta"):
        DemandModel(beta=0.0)
