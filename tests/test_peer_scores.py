"""The scores that peers have (threshold-weighted CRPS, the PIT, the fair Brier score, the
relative economic value, CORP reliability), each against the `scores` package on the same
numbers to 1e-6 relative: first the functions, then the registry's path through
`wxens.score`, where statistics are area means per init and tables summed over inits."""

from __future__ import annotations

import operator

import numpy as np
import pandas as pd
import pytest
import scores.probability as reference
import xarray as xr
from wxens.verification.aggregation import cell_area_weights
from wxens.verification.errors import ScoreError
from wxens.verification.extremes import climate_at, model_climate
from wxens.verification.metrics import (
    crps_threshold_weighted,
    ensemble_summary,
    pit_from_rank_histogram,
    rank_counts,
)
from wxens.verification.probability import (
    brier_score_fair_from_table,
    brier_score_from_table,
    contingency_table,
    corp_reliability_from_table,
    exceeds,
    members_above,
    relative_economic_value_from_table,
)
from wxens.verification.verify import VerifyOptions, score

MEMBERS = 8
RELATIVE = 1e-6


@pytest.fixture(scope="module")
def skilful() -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """An 8-member ensemble with skill (a shared signal) and a truth 1.3 times as uncertain,
    on 4000 cases with random positive weights."""
    rng = np.random.default_rng(21)
    signal = rng.normal(size=4000)
    members = signal[:, None] + rng.normal(size=(4000, MEMBERS))
    truth = signal + 1.3 * rng.normal(size=4000) + 0.2
    weights = xr.DataArray(rng.uniform(0.2, 2.0, 4000), dims="case")
    return (
        xr.DataArray(members, dims=("case", "member")),
        xr.DataArray(truth, dims="case"),
        weights,
    )


@pytest.mark.parametrize("tail", ["upper", "lower"])
@pytest.mark.parametrize("fair", [True, False])
def test_threshold_weighted_crps_equals_scores(skilful, tail: str, fair: bool) -> None:
    members, truth, weights = skilful
    ours = crps_threshold_weighted(
        members, truth, 0.7, tail=tail, fair=fair, reduce_dims=None, weights=weights
    )
    theirs = reference.tail_tw_crps_for_ensemble(
        members, truth, "member", 0.7, tail=tail, method="fair" if fair else "ecdf",
        weights=weights,
    )  # fmt: skip
    assert float(ours) == pytest.approx(float(theirs), rel=RELATIVE)
    # the threshold below every value: the whole CRPS
    everything = -np.inf if tail == "upper" else np.inf
    whole = crps_threshold_weighted(members, truth, everything, tail=tail, fair=fair)
    plain = ensemble_summary(members, truth)["crps_fair" if fair else "crps_ecdf"]
    np.testing.assert_allclose(whole, plain, rtol=1e-12)
    with pytest.raises(ScoreError, match="tail must be one of"):
        crps_threshold_weighted(members, truth, 0.7, tail="both")


def test_pit_from_the_rank_histogram_equals_scores(skilful) -> None:
    members, truth, weights = skilful
    ranks = ensemble_summary(members, truth)["rank"]
    pit = pit_from_rank_histogram(rank_counts(ranks, MEMBERS, ["case"], weights), bins=5)
    theirs = reference.Pit(members, truth, ensemble_member_dim="member", weights=weights)
    np.testing.assert_allclose(pit["pit_histogram"], theirs.hist_values(5), rtol=RELATIVE)
    for ours, name in (("pit_alpha", "alpha_score"), ("pit_mean", "expected_value")):
        assert float(pit[ours]) == pytest.approx(float(getattr(theirs, name)()), rel=RELATIVE)
    assert float(pit["pit_variance"]) == pytest.approx(float(theirs.variance()), rel=RELATIVE)
    # under-dispersed members (truth 1.3 times as uncertain): PIT variance above 1/12
    assert float(pit["pit_variance"]) > 1 / 12


def test_pit_of_a_calibrated_rank_histogram_by_hand() -> None:
    """Flat ranks of 4 members: mass 1/5 at 0, 1/4, ..., 1, so F = (k + 1) / 5 on the k-th
    quarter [a, a + 1/4) and int |F - u| there is ((F - a)^2 + (a + 1/4 - F)^2) / 2:
    0.02125 + 0.01625 + 0.01625 + 0.02125 = 0.075 (not 0: a finite ensemble's PIT)."""
    flat = xr.DataArray(np.full(5, 0.2), dims="rank")
    pit = pit_from_rank_histogram(flat, bins=4)
    np.testing.assert_allclose(pit["pit_histogram"], [0.4, 0.2, 0.2, 0.2])
    assert float(pit["pit_alpha"]) == pytest.approx(0.075, rel=1e-12)
    assert float(pit["pit_mean"]) == pytest.approx(0.5)
    assert float(pit["pit_variance"]) == pytest.approx(0.2 * (1 + 4 + 9 + 16) / 16 - 0.25)


@pytest.fixture(scope="module")
def event_table(skilful):
    """Members above 0.9 and events `truth > 0.9`, the weighted table, the probabilities."""
    members, truth, weights = skilful
    above, event = members_above(members, 0.9), exceeds(truth, 0.9)
    table = contingency_table(above, event, MEMBERS + 1, ["case"], weights)
    return above, event, weights, table


def test_fair_brier_score_equals_scores(event_table) -> None:
    above, event, weights, table = event_table
    # members of 1 or 0, as many ones as members above the threshold: the same k per case
    binary = (xr.DataArray(np.arange(MEMBERS), dims="member") < above).astype(float)
    fair = reference.brier_score_for_ensemble(
        binary, event, "member", 0.5, event_threshold_operator=operator.gt, weights=weights
    )
    assert float(brier_score_fair_from_table(table, MEMBERS)) == pytest.approx(
        float(fair.squeeze()), rel=RELATIVE
    )
    plain = brier_score_from_table(table, xr.DataArray(np.arange(9) / 8, dims="value"))
    one_member = brier_score_fair_from_table(table.isel(value=[0, -1]), 1)
    assert float(one_member) == pytest.approx(float(brier_score_from_table(
        table.isel(value=[0, -1]), xr.DataArray([0.0, 1.0], dims="value"))), rel=1e-12)  # fmt: skip
    assert float(brier_score_fair_from_table(table, MEMBERS)) < float(plain)


def test_relative_economic_value_equals_scores(event_table) -> None:
    above, event, weights, table = event_table
    ratios = [0.02, 0.1, 0.25, 0.5, 0.75, 0.9]
    ours = relative_economic_value_from_table(table, ratios)
    theirs = reference.relative_economic_value(
        above / MEMBERS, event, cost_loss_ratios=ratios,
        probability_thresholds=list(np.arange(1, MEMBERS + 1) / MEMBERS), weights=weights,
        generate_maximum_rev=True,
    )["maximum"]  # fmt: skip
    np.testing.assert_allclose(ours, theirs, rtol=RELATIVE)
    assert float(ours.max()) > 0.1  # value for the users near the base rate
    with pytest.raises(ScoreError, match="strictly between 0 and 1"):
        relative_economic_value_from_table(table, [0.0, 0.5])


def test_corp_reliability_equals_scores_isotonic_fit(event_table) -> None:
    above, event, weights, table = event_table
    probabilities = xr.DataArray(np.arange(MEMBERS + 1) / MEMBERS, dims="value")
    corp = corp_reliability_from_table(table, probabilities, resamples=200, seed=3)
    fit = reference.isotonic_fit((above / MEMBERS).values, event.values, weight=weights.values)
    fitted = {p: v for p, v in zip(fit["fcst_sorted"], fit["regression_values"], strict=True)}
    ours = corp["corp_observed_frequency"].values
    np.testing.assert_allclose(ours, [fitted[p] for p in probabilities.values], rtol=RELATIVE)
    assert np.all(np.diff(ours) >= 0)
    brier = brier_score_from_table(table, probabilities)
    decomposed = (
        corp["corp_miscalibration"] - corp["corp_discrimination"] + corp["corp_uncertainty"]
    )
    assert float(decomposed) == pytest.approx(float(brier), rel=1e-12)
    # The band holds the diagonal's neighbourhood, not the forecast's under-dispersion: the
    # recalibrated curve is flatter than the diagonal and leaves the band at the ends.
    low, high = corp["corp_band_low"].values, corp["corp_band_high"].values
    assert np.all(low <= probabilities.values + 1e-12) and np.all(high >= probabilities - 1e-12)
    assert ours[-1] < low[-1]
    no_band = corp_reliability_from_table(table, probabilities, resamples=0)
    assert no_band["corp_band_low"].isnull().all()


def test_the_registry_scores_equal_scores_on_a_grid() -> None:
    """`score(..., scores=[...])`: area means per init, then over inits (tables summed),
    equal the `scores` package's on all points with the cell-area weights, the thresholds
    those of the climate `score` uses."""
    rng = np.random.default_rng(5)
    latitude, longitude = np.linspace(80, -80, 9), np.arange(12) * 30.0
    times = pd.date_range("2031-01-01", periods=40, freq="12h")
    truth = xr.Dataset(
        {"t": (("time", "latitude", "longitude"), rng.normal(size=(40, 9, 12)))},
        coords={"time": times, "latitude": latitude, "longitude": longitude},
    )
    inits, lead = times[[30, 32, 34]], pd.to_timedelta(["24h"])
    valid = truth.t.sel(time=(inits.values[:, None] + lead.values).ravel()).values
    members = valid.reshape(3, 1, 1, 9, 12) + rng.normal(size=(3, 1, 6, 9, 12))
    forecast = xr.Dataset(
        {"t": (("init_time", "lead_time", "member", "latitude", "longitude"), members)},
        coords={"init_time": inits, "lead_time": lead, "latitude": latitude,
                "longitude": longitude},
    )  # fmt: skip
    options = VerifyOptions(quantiles=(0.8,), maps=False, pit_bins=4, corp_resamples=0)
    chosen = ["twcrps", "pit", "brier_score_fair", "relative_economic_value", "corp"]
    scored = score(forecast, truth, scores=chosen, regions=["global"], options=options)
    got = scored.sel(system="forecast", variable="t", region="global", quantile=0.8)
    got = got.isel(lead_time=0)

    sample = options.climate_sample(truth.t, forecast.init_time)
    threshold = climate_at(model_climate(sample, "time"), 0.8)
    fc = forecast.t.isel(lead_time=0)
    obs = xr.DataArray(valid.reshape(3, 9, 12), dims=fc.dims[:1] + fc.dims[2:], coords=fc.coords)
    obs = obs.drop_vars("lead_time", errors="ignore")
    weights = cell_area_weights(latitude) * xr.ones_like(obs)
    tw = reference.tail_tw_crps_for_ensemble(fc, obs, "member", threshold, method="fair",
                                             weights=weights)  # fmt: skip
    assert float(got["twcrps"]) == pytest.approx(float(tw), rel=RELATIVE)
    pit = reference.Pit(fc, obs, ensemble_member_dim="member", weights=weights)
    np.testing.assert_allclose(got["pit_histogram"], pit.hist_values(4), rtol=RELATIVE)
    assert float(got["pit_alpha"]) == pytest.approx(float(pit.alpha_score()), rel=RELATIVE)
    event = exceeds(obs, threshold)
    above = members_above(fc, threshold)
    binary = (xr.DataArray(np.arange(6), dims="member") < above).astype(float)
    brier = reference.brier_score_for_ensemble(
        binary, event, "member", 0.5, event_threshold_operator=operator.gt, weights=weights
    )
    assert float(got["brier_score_fair"]) == pytest.approx(float(brier.squeeze()), rel=RELATIVE)
    ratios = list(options.cost_loss_ratios)
    rev = reference.relative_economic_value(
        above / 6, event, cost_loss_ratios=ratios, weights=weights,
        probability_thresholds=list(np.arange(1, 7) / 6), generate_maximum_rev=True,
    )["maximum"]  # fmt: skip
    np.testing.assert_allclose(got["relative_economic_value"].squeeze(), rev, rtol=RELATIVE)
    ensemble_probability, event, weights = (
        a.transpose(*obs.dims) for a in (above / 6, event, weights)
    )
    fit = reference.isotonic_fit(ensemble_probability.values, event.values, weight=weights.values)
    fitted = dict(zip(fit["fcst_sorted"], fit["regression_values"], strict=True))
    curve = got["corp_observed_frequency"].squeeze()
    for probability, value in zip(curve.forecast_probability.values, curve.values, strict=True):
        if probability in fitted:
            assert value == pytest.approx(fitted[probability], rel=RELATIVE)
        else:
            assert np.isnan(value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cost_loss_ratios": (0.5, 1.0)}, "cost-loss ratios must lie strictly between"),
        ({"pit_bins": 0}, "pit_bins must be >= 1"),
        ({"corp_resamples": -1}, "corp_resamples must be >= 0"),
    ],
)
def test_bad_options_of_the_new_scores_are_refused(options: dict, message: str) -> None:
    with pytest.raises(ScoreError, match=message):
        VerifyOptions(**options)
