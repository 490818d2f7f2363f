"""Threshold exceedance scores from contingency tables (the path `wxens verify` runs), against
independent references.

References: scikit-learn's `roc_auc_score` (with and without sample weights), properscoring's
and scores' Brier scores, numpy quantiles and bincounts, and small cases computed by hand.
"""

from __future__ import annotations

import dask.array
import numpy as np
import properscoring
import pytest
import scores
import xarray as xr
from sklearn.metrics import roc_auc_score
from wxens.verification.errors import ScoreError
from wxens.verification.probability import (
    brier_score_from_table,
    climatological_thresholds,
    contingency_table,
    exceeds,
    members_above,
    reliability_from_table,
    roc_auc_from_table,
)

GRID = ("init_time", "latitude", "longitude")
MEMBERS = 10


@pytest.fixture(scope="module")
def ensemble_sample() -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Members above 0.5 of a 10-member ensemble (many ties), events, and latitude weights."""
    rng = np.random.default_rng(42)
    latitude = np.linspace(80.0, -80.0, 9)
    shape = (2, 6, latitude.size, 12)  # lead_time, init_time, latitude, longitude
    dims = ("lead_time", *GRID)
    signal = rng.normal(size=shape)
    members = signal[..., None] + rng.normal(size=(*shape, MEMBERS))
    truth = signal + rng.normal(size=shape)
    coords = {"latitude": latitude}
    forecast = xr.DataArray(members, dims=(*dims, "member"), coords=coords)
    above = members_above(forecast, 0.5)
    event = exceeds(xr.DataArray(truth, dims=dims, coords=coords), 0.5)
    weights = xr.DataArray(np.cos(np.radians(latitude)), dims="latitude", coords=coords)
    return above, event, weights


def flat(data: xr.DataArray) -> np.ndarray:
    return data.transpose(*GRID).values.ravel()


PROBABILITIES = xr.DataArray(np.arange(MEMBERS + 1) / MEMBERS, dims="value")


def weighted_table(above: xr.DataArray, event: xr.DataArray, weights: xr.DataArray):
    """The table path of `wxens verify`: counted per latitude, then latitude-weighted."""
    by_latitude = contingency_table(above, event, MEMBERS + 1, ("init_time", "longitude"))
    return (by_latitude * weights).sum("latitude")


def test_exceeds_and_members_above_count_strictly_above() -> None:
    np.testing.assert_array_equal(exceeds(xr.DataArray([0.5, 1.0, 2.0]), 1.0), [0, 0, 1])
    members = xr.DataArray([[1.0, 2.0, 3.0, 4.0], [1.0, np.nan, 3.0, 4.0]], dims=("x", "member"))
    np.testing.assert_array_equal(members_above(members, 2.0), [2, -1])
    thresholds = xr.DataArray([0.0, 3.5], dims="quantile")
    above = members_above(members.isel(x=0), thresholds)
    np.testing.assert_array_equal(above, [4, 1])
    assert above.dims == ("quantile",)
    np.testing.assert_array_equal(exceeds(members.isel(x=1), np.nan), [np.nan] * 4)
    with pytest.raises(ScoreError, match="no 'member' dimension"):
        members_above(members.rename(member="number"), 2.0)


def test_climatological_thresholds_are_numpy_quantiles() -> None:
    rng = np.random.default_rng(0)
    truth = xr.DataArray(rng.gamma(2.0, size=(200, 3, 4)), dims=("time", "latitude", "longitude"))
    thresholds = climatological_thresholds(truth, [0.9, 0.99])
    assert thresholds.dims == ("quantile", "latitude", "longitude")
    expected = np.quantile(truth.values, [0.9, 0.99], axis=0)
    np.testing.assert_allclose(thresholds, expected, rtol=1e-12)


def test_contingency_table_is_a_bincount_lazily_with_split_chunks(ensemble_sample) -> None:
    above, event, _ = ensemble_sample
    above = above.copy()
    above[0, 0, 0, 0] = -1  # a missing member: left out
    table = contingency_table(above, event, MEMBERS + 1, ("init_time", "longitude"))
    assert table.dims == ("lead_time", "latitude", "value", "outcome")
    for lead in range(2):
        for lat in (0, 4):
            k = above.isel(lead_time=lead, latitude=lat).values.ravel()
            o = event.isel(lead_time=lead, latitude=lat).values.ravel()
            kept = k >= 0
            expected = np.stack(
                [np.bincount(k[kept & (o == v)], minlength=MEMBERS + 1) for v in (0, 1)], -1
            )
            np.testing.assert_array_equal(table.isel(lead_time=lead, latitude=lat), expected)
    # Split along the counted dimension and along the summed one: the same table, lazily.
    chunks = {"init_time": 2, "longitude": 5, "latitude": 4}
    lazy = contingency_table(
        above.chunk(chunks), event.chunk(chunks), MEMBERS + 1, ("init_time", "longitude")
    )
    assert isinstance(lazy.data, dask.array.Array)
    xr.testing.assert_equal(lazy.compute(), table)
    with pytest.raises(ScoreError, match="no 'lon' dimension"):
        contingency_table(above, event, MEMBERS + 1, ("init_time", "lon"))


def test_brier_score_against_properscoring_and_scores(ensemble_sample) -> None:
    above, event, _ = ensemble_sample
    table = contingency_table(above, event, MEMBERS + 1, ("lead_time", *GRID))
    brier = float(brier_score_from_table(table, PROBABILITIES))
    probability = (above / MEMBERS).values.ravel()
    outcome = event.values.ravel()
    assert brier == pytest.approx(properscoring.brier_score(outcome, probability).mean(), 1e-12)
    reference = scores.probability.brier_score(
        xr.DataArray(probability, dims="x"), xr.DataArray(outcome, dims="x")
    )
    assert brier == pytest.approx(float(reference), rel=1e-12)


def test_reliability_by_hand_weighted_and_in_default_bins() -> None:
    # Cases (p, o, weight): (0, 0, 1), (0.1 x2: o 0 and 1, 1 each), (0.3, 1, 2), (0.9, 1, 1),
    # (1, 1, 3), on bins [0, 0.5) and [0.5, 1].
    probabilities = xr.DataArray([0.0, 0.1, 0.3, 0.9, 1.0], dims="value")
    table = xr.DataArray(
        [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [0.0, 1.0], [0.0, 3.0]], dims=("value", "outcome")
    )
    diagram = reliability_from_table(table, probabilities, bins=[0.0, 0.5, 1.0])
    np.testing.assert_allclose(diagram["count"], [5, 4])
    np.testing.assert_allclose(diagram["forecast_probability"], [0.8 / 5, 3.9 / 4])
    np.testing.assert_allclose(diagram["observed_frequency"], [3 / 5, 1.0])
    np.testing.assert_allclose(diagram["probability_bin"], [0.25, 0.75])
    # Ten-member probabilities k/10 lie on the default edges: bin k holds k/10, the last also 1.
    ones = xr.DataArray(np.tile([1.0, 0.0], (11, 1)), dims=("value", "outcome"))
    tenths = reliability_from_table(ones, PROBABILITIES)
    np.testing.assert_array_equal(tenths["count"], [1] * 9 + [2])
    np.testing.assert_allclose(tenths["forecast_probability"], [*(np.arange(9) / 10), 0.95])
    with pytest.raises(ScoreError, match="bins"):
        reliability_from_table(table, probabilities, bins=[0.0, 0.6, 0.5, 1.0])


def test_tables_of_two_halves_add_up_to_the_whole(ensemble_sample) -> None:
    above, event, weights = ensemble_sample
    whole = weighted_table(above, event, weights)
    halves = [
        weighted_table(above.isel(init_time=part), event.isel(init_time=part), weights)
        for part in (slice(0, 3), slice(3, None))
    ]
    np.testing.assert_allclose(halves[0] + halves[1], whole)
    diagram = reliability_from_table(whole, PROBABILITIES)
    parts = [reliability_from_table(half, PROBABILITIES) for half in halves]
    count = parts[0]["count"] + parts[1]["count"]
    np.testing.assert_allclose(count, diagram["count"])
    merged = sum((part["observed_frequency"] * part["count"]).fillna(0) for part in parts)
    np.testing.assert_allclose(merged / count, diagram["observed_frequency"])


@pytest.mark.parametrize("weighted", [False, True])
def test_roc_auc_matches_scikit_learn_with_ties(ensemble_sample, weighted: bool) -> None:
    above, event, weights = ensemble_sample
    table = weighted_table(above, event, weights if weighted else xr.ones_like(weights))
    auc = roc_auc_from_table(table)
    assert auc.dims == ("lead_time",)
    for lead in range(2):
        sample_weight = flat(xr.broadcast(weights, event)[0].isel(lead_time=lead))
        expected = roc_auc_score(
            flat(event.isel(lead_time=lead)),
            flat(above.isel(lead_time=lead)),
            sample_weight=sample_weight if weighted else None,
        )
        np.testing.assert_allclose(auc.isel(lead_time=lead), expected, rtol=1e-12)
    assert 0.6 < float(auc.min()) < 1.0  # a skilful forecast, not a degenerate sample
    # Weighted Brier score: the weighted mean of (p - o)^2.
    brier = brier_score_from_table(table, PROBABILITIES).isel(lead_time=0)
    weight = xr.broadcast(weights if weighted else xr.ones_like(weights), event)[0]
    squared = ((above / MEMBERS - event) ** 2 * weight).isel(lead_time=0)
    assert float(brier) == pytest.approx(float(squared.sum() / weight.isel(lead_time=0).sum()))


@pytest.mark.parametrize("outcome", [0, 1])
def test_roc_is_nan_without_events_or_without_non_events(ensemble_sample, outcome: int) -> None:
    above, event, weights = ensemble_sample
    table = weighted_table(above, event, weights)
    one_sided = table.where(table.outcome == outcome, 0.0)
    assert np.isnan(roc_auc_from_table(one_sided)).all()
