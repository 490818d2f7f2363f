"""Threshold exceedance scores, against independent references.

References: scikit-learn's `roc_auc_score` (with and without sample weights), properscoring's
and scores' Brier scores, numpy quantiles, and small cases computed by hand.
"""

from __future__ import annotations

import dask.array
import numpy as np
import properscoring
import pytest
import scores
import xarray as xr
from sklearn.metrics import roc_auc_score
from wxens.verification.probability import (
    brier_score,
    brier_score_from_table,
    climatological_thresholds,
    contingency_table,
    exceedance_probability,
    exceeds,
    reliability_diagram,
    reliability_from_table,
    roc_auc,
    roc_auc_from_table,
    roc_curve,
)

GRID = ("init_time", "latitude", "longitude")


@pytest.fixture(scope="module")
def ensemble_sample() -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Probabilities of a 10-member ensemble (ties), events, and cos-latitude weights."""
    rng = np.random.default_rng(42)
    latitude = np.linspace(80.0, -80.0, 9)
    shape = (2, 6, latitude.size, 12)  # lead_time, init_time, latitude, longitude
    dims = ("lead_time", *GRID)
    signal = rng.normal(size=shape)
    members = signal[..., None] + rng.normal(size=(*shape, 10))
    truth = signal + rng.normal(size=shape)
    coords = {"latitude": latitude}
    forecast = xr.DataArray(members, dims=(*dims, "member"), coords=coords)
    probability = exceedance_probability(forecast, 0.5)
    event = exceeds(xr.DataArray(truth, dims=dims, coords=coords), 0.5)
    weights = xr.DataArray(np.cos(np.radians(latitude)), dims="latitude", coords=coords)
    return probability, event, weights


def flat(data: xr.DataArray) -> np.ndarray:
    return data.transpose(*GRID).values.ravel()


def test_exceedance_probability_counts_members_strictly_above() -> None:
    members = xr.DataArray([[1.0, 2.0, 3.0, 4.0], [1.0, np.nan, 3.0, 4.0]], dims=("x", "member"))
    np.testing.assert_array_equal(exceedance_probability(members, 2.0), [0.5, np.nan])
    thresholds = xr.DataArray([0.0, 3.5], dims="quantile")
    probability = exceedance_probability(members.isel(x=0), thresholds)
    np.testing.assert_array_equal(probability, [1.0, 0.25])
    assert probability.dims == ("quantile",)
    np.testing.assert_array_equal(exceeds(members.isel(x=1), np.nan), [np.nan] * 4)


def test_climatological_thresholds_are_numpy_quantiles() -> None:
    rng = np.random.default_rng(0)
    truth = xr.DataArray(rng.gamma(2.0, size=(200, 3, 4)), dims=("time", "latitude", "longitude"))
    thresholds = climatological_thresholds(truth, [0.9, 0.99])
    assert thresholds.dims == ("quantile", "latitude", "longitude")
    expected = np.quantile(truth.values, [0.9, 0.99], axis=0)
    np.testing.assert_allclose(thresholds, expected, rtol=1e-12)


def test_brier_score_by_hand_and_against_properscoring_and_scores() -> None:
    probability = xr.DataArray([0.3, 0.5, 0.7, 1.0, 0.0], dims="point")
    event = xr.DataArray([0.0, 1.0, 0.0, 1.0, 1.0], dims="point")
    per_point = brier_score(probability, event)
    np.testing.assert_allclose(per_point, [0.09, 0.25, 0.49, 0.0, 1.0])
    np.testing.assert_allclose(per_point, properscoring.brier_score(event.values, probability))
    expected_mean = scores.probability.brier_score(probability, event)
    np.testing.assert_allclose(per_point.mean(), expected_mean)


@pytest.mark.parametrize(
    ("probability", "event", "message"),
    [
        ([0.2, 1.2], [0.0, 1.0], "probabilities"),
        ([0.2, -0.1], [0.0, 1.0], "probabilities"),
        ([0.2, 0.4], [0.0, 0.5], "events"),
    ],
)
def test_brier_score_rejects_bad_values_now_or_when_computed(
    probability: list[float], event: list[float], message: str
) -> None:
    p, o = xr.DataArray(probability, dims="x"), xr.DataArray(event, dims="x")
    with pytest.raises(ValueError, match=message):
        brier_score(p, o)
    lazy = brier_score(p.chunk(), o.chunk())  # building the graph checks nothing yet
    with pytest.raises(ValueError, match=message):
        lazy.compute()


def test_reliability_diagram_by_hand() -> None:
    probability = xr.DataArray([0.0, 0.1, 0.1, 0.35, 0.9, 1.0, np.nan], dims="point")
    event = xr.DataArray([0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0], dims="point")
    weights = xr.DataArray([1.0, 1.0, 1.0, 2.0, 1.0, 3.0, 5.0], dims="point")
    plain = reliability_diagram(probability, event, dims="point", bins=[0.0, 0.5, 1.0])
    np.testing.assert_allclose(plain["count"], [4, 2])
    np.testing.assert_allclose(plain["forecast_probability"], [0.1375, 0.95])
    np.testing.assert_allclose(plain["observed_frequency"], [0.5, 1.0])
    np.testing.assert_allclose(plain["probability_bin"], [0.25, 0.75])
    weighted = reliability_diagram(probability, event, "point", weights, bins=[0.0, 0.5, 1.0])
    np.testing.assert_allclose(weighted["count"], [5, 4])
    np.testing.assert_allclose(weighted["forecast_probability"], [0.9 / 5, 3.9 / 4])
    np.testing.assert_allclose(weighted["observed_frequency"], [3 / 5, 1.0])


def test_reliability_default_bins_hold_each_ten_member_probability_in_its_own_bin() -> None:
    # Probabilities k/10 lie on the default bin edges: bin k holds k/10, the last also 1.
    members = xr.DataArray(np.tril(np.ones((11, 10)), k=-1), dims=("point", "member"))
    probability = exceedance_probability(members, 0.5)
    np.testing.assert_array_equal(probability, np.arange(11) / 10)
    event = xr.zeros_like(probability)
    diagram = reliability_diagram(probability, event, dims="point")
    np.testing.assert_array_equal(diagram["count"], [1] * 9 + [2])
    np.testing.assert_allclose(diagram["forecast_probability"], [*(np.arange(9) / 10), 0.95])
    np.testing.assert_allclose(diagram["bin_upper"], np.arange(1, 11) / 10)


def test_reliability_diagram_of_two_halves_merges_to_the_whole(ensemble_sample) -> None:
    probability, event, weights = ensemble_sample
    whole = reliability_diagram(probability, event, GRID, weights)
    halves = [
        reliability_diagram(
            probability.isel(init_time=part), event.isel(init_time=part), GRID, weights
        )
        for part in (slice(0, 3), slice(3, None))
    ]
    count = sum(half["count"] for half in halves)
    np.testing.assert_allclose(count, whole["count"])
    for name in ("forecast_probability", "observed_frequency"):
        merged = sum((half[name] * half["count"]).fillna(0) for half in halves) / count
        np.testing.assert_allclose(merged, whole[name])


@pytest.mark.parametrize("weighted", [False, True])
def test_roc_auc_matches_scikit_learn_with_ties(ensemble_sample, weighted: bool) -> None:
    probability, event, weights = ensemble_sample
    auc = roc_auc(probability, event, GRID, weights if weighted else None)
    assert auc.dims == ("lead_time",)
    for lead in range(probability.sizes["lead_time"]):
        sample_weight = flat(xr.broadcast(weights, event)[0].isel(lead_time=lead))
        expected = roc_auc_score(
            flat(event.isel(lead_time=lead)),
            flat(probability.isel(lead_time=lead)),
            sample_weight=sample_weight if weighted else None,
        )
        np.testing.assert_allclose(auc.isel(lead_time=lead), expected, rtol=1e-12)
    assert 0.6 < float(auc.min()) < 1.0  # a skilful forecast, not a degenerate sample


def test_roc_auc_of_a_continuous_score_skips_missing_points() -> None:
    rng = np.random.default_rng(3)
    score = rng.uniform(-1.0, 1.0, 300)
    event = (rng.uniform(-1.0, 1.0, 300) < score).astype(float)
    score[:20], event[20:30] = np.nan, np.nan
    auc = roc_auc(xr.DataArray(score, dims="x"), xr.DataArray(event, dims="x"), dims="x")
    np.testing.assert_allclose(auc, roc_auc_score(event[30:], score[30:]), rtol=1e-12)


def test_roc_auc_is_the_trapezoid_under_roc_curve_at_every_distinct_value(ensemble_sample) -> None:
    probability, event, weights = ensemble_sample
    probability, event = probability.isel(lead_time=0), event.isel(lead_time=0)
    distinct = np.unique(probability.values)
    curve = roc_curve(probability, event, distinct, GRID, weights)
    hit_rate = np.concatenate([[0.0], curve["hit_rate"].values[::-1]])
    false_alarm_rate = np.concatenate([[0.0], curve["false_alarm_rate"].values[::-1]])
    assert hit_rate[-1] == false_alarm_rate[-1] == 1.0  # the lowest threshold warns everywhere
    area = np.trapezoid(hit_rate, false_alarm_rate)
    np.testing.assert_allclose(roc_auc(probability, event, GRID, weights), area, rtol=1e-12)


@pytest.mark.parametrize("outcome", [0.0, 1.0])
def test_roc_is_nan_without_events_or_without_non_events(outcome: float) -> None:
    probability = xr.DataArray([0.1, 0.5, 0.9], dims="x")
    event = xr.full_like(probability, outcome)
    assert np.isnan(roc_auc(probability, event, dims="x"))
    curve = roc_curve(probability, event, [0.5], dims="x")
    rate = "false_alarm_rate" if outcome else "hit_rate"
    assert np.isnan(curve[rate]).all()


def test_scores_stay_lazy_under_dask_and_equal_numpy(ensemble_sample) -> None:
    probability, event, weights = ensemble_sample
    chunks = {"init_time": 2, "latitude": 4}
    lazy_p, lazy_o = probability.chunk(chunks), event.chunk(chunks)
    pairs = [
        (roc_auc(lazy_p, lazy_o, GRID, weights), roc_auc(probability, event, GRID, weights)),
        (brier_score(lazy_p, lazy_o), brier_score(probability, event)),
        (
            reliability_diagram(lazy_p, lazy_o, GRID, weights)["observed_frequency"],
            reliability_diagram(probability, event, GRID, weights)["observed_frequency"],
        ),
        (
            roc_curve(lazy_p, lazy_o, [0.3, 0.6], GRID)["hit_rate"],
            roc_curve(probability, event, [0.3, 0.6], GRID)["hit_rate"],
        ),
    ]
    for lazy, eager in pairs:
        assert isinstance(lazy.data, dask.array.Array)
        xr.testing.assert_allclose(lazy.compute(), eager)


def test_members_in_several_chunks_give_a_lazy_probability() -> None:
    members = xr.DataArray(np.arange(24.0).reshape(2, 12), dims=("x", "member"))
    lazy = exceedance_probability(members.chunk(member=5), 5.5)
    assert isinstance(lazy.data, dask.array.Array)
    np.testing.assert_allclose(lazy.compute(), [0.5, 1.0])


def test_mismatched_inputs_raise_clear_errors(ensemble_sample) -> None:
    probability, event, weights = ensemble_sample
    with pytest.raises(ValueError, match="lacks the dimensions"):
        roc_auc(probability, event.rename(latitude="lat"), GRID)
    with pytest.raises(ValueError, match="weights dims"):
        roc_auc(probability, event, GRID, weights.rename(latitude="lat"))
    shifted = event.assign_coords(latitude=event.latitude + 1.0)
    with pytest.raises(ValueError, match="align"):
        reliability_diagram(probability, shifted, GRID)
    with pytest.raises(ValueError, match="bins"):
        reliability_diagram(probability, event, GRID, bins=[0.0, 0.6, 0.5, 1.0])


def test_scores_from_latitude_tables_equal_the_per_point_scores(ensemble_sample) -> None:
    """The table path of `wxens verify` against scikit-learn and the per-point functions."""
    probability, event, weights = ensemble_sample
    members_above = (probability * 10).round().astype(int)
    by_latitude = contingency_table(members_above, event, 11, ("init_time", "longitude"))
    assert by_latitude.dims == ("lead_time", "latitude", "value", "outcome")
    assert float(by_latitude.sum()) == event.size
    table = (by_latitude * weights).sum("latitude")
    probabilities = xr.DataArray(np.arange(11) / 10, dims="value")

    expected_brier = (brier_score(probability, event) * weights).sum(GRID) / (
        weights.sum() * 6 * 12
    )
    np.testing.assert_allclose(brier_score_from_table(table, probabilities), expected_brier)
    auc = roc_auc_from_table(table)
    for lead in range(2):
        sample_weight = flat(xr.broadcast(weights, event)[0].isel(lead_time=lead))
        expected = roc_auc_score(
            flat(event.isel(lead_time=lead)),
            flat(probability.isel(lead_time=lead)),
            sample_weight=sample_weight,
        )
        np.testing.assert_allclose(auc.isel(lead_time=lead), expected, rtol=1e-12)
    diagram = reliability_diagram(probability, event, GRID, weights)
    from_table = reliability_from_table(table, probabilities)
    for name in ("forecast_probability", "observed_frequency", "count"):
        np.testing.assert_allclose(
            from_table[name].transpose(*diagram[name].dims), diagram[name], rtol=1e-12
        )
    # No events at all: the ROC area is undefined.
    assert np.isnan(roc_auc_from_table(table.where(table.outcome == 0, 0.0))).all()
