"""Ensemble metrics and aggregation against properscoring, scoringrules and closed forms."""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import scoringrules
import xarray as xr
from wxens.verification import aggregation, metrics


def field(values: np.ndarray, dims: tuple[str, ...], nlat: int = 0) -> xr.DataArray:
    """A DataArray; with `nlat`, the last two dims are an equiangular latitude-longitude grid."""
    coords = {}
    if nlat:
        coords = {
            "latitude": np.linspace(90, -90, nlat),
            "longitude": np.arange(values.shape[-1]) * 360 / values.shape[-1],
        }
    return xr.DataArray(values, dims=dims, coords=coords)


@pytest.fixture
def calibrated() -> tuple[xr.DataArray, xr.DataArray]:
    """Truth and 5 members drawn from one distribution per point: a calibrated ensemble."""
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.5, 2.0, size=(40, 9, 16))
    members = rng.normal(size=(40, 5, 9, 16)) * scale[:, None]
    truth = rng.normal(size=(40, 9, 16)) * scale
    dims = ("init_time", "member", "latitude", "longitude")
    return field(members, dims, nlat=9), field(truth, dims[:1] + dims[2:], nlat=9)


def test_crps_hand_case_and_references(calibrated):
    members = field(np.array([[0.0, 2.0]]), ("point", "member"))
    truth = field(np.array([1.0]), ("point",))
    assert float(metrics.crps_ensemble(members, truth, fair=False)[0]) == pytest.approx(0.5)
    assert float(metrics.crps_ensemble(members, truth)[0]) == pytest.approx(0.0)

    forecast, observed = calibrated
    axis = forecast.get_axis_num("member")
    ecdf = properscoring.crps_ensemble(observed.values, np.moveaxis(forecast.values, axis, -1))
    fair = scoringrules.crps_ensemble(
        observed.values, forecast.values, m_axis=axis, estimator="fair"
    )
    np.testing.assert_allclose(metrics.crps_ensemble(forecast, observed, fair=False), ecdf)
    np.testing.assert_allclose(metrics.crps_ensemble(forecast, observed), fair, rtol=1e-10)


def test_crps_is_lazy_under_dask(calibrated):
    forecast, truth = calibrated
    lazy = metrics.crps_ensemble(forecast.chunk({"init_time": 8}), truth.chunk({"init_time": 8}))
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.compute(), metrics.crps_ensemble(forecast, truth))
    # Members split across chunks are gathered into one chunk per point.
    split = forecast.chunk({"member": 2})
    np.testing.assert_allclose(metrics.crps_ensemble(split, truth), lazy)
    np.testing.assert_allclose(metrics.ensemble_variance(split), forecast.var("member", ddof=1))


def test_spread_skill_ratios_are_one_for_a_calibrated_ensemble(calibrated):
    forecast, truth = calibrated
    members = forecast.sizes["member"]
    variance = metrics.ensemble_variance(forecast).mean()
    squared_error = metrics.squared_error_of_mean(forecast, truth).mean()
    unbiased = metrics.unbiased_squared_error_of_mean(forecast, truth).mean()
    assert float(metrics.spread_skill_ratio(variance, squared_error, members)) == pytest.approx(
        1.0, abs=0.04
    )
    assert float(metrics.spread_skill_ratio_debiased(variance, unbiased)) == pytest.approx(
        1.0, abs=0.04
    )
    # Without the sqrt((M+1)/M) factor a 5-member ensemble looks under-dispersive.
    assert float(np.sqrt(variance / squared_error)) < 0.95
    # The unbiased squared error is the biased one less s^2/M, point by point.
    np.testing.assert_allclose(
        metrics.unbiased_squared_error_of_mean(forecast, truth),
        (forecast.mean("member") - truth) ** 2 - forecast.var("member", ddof=1) / members,
    )


def test_rank_histogram_is_flat_and_outliers_match_two_over_m_plus_one(calibrated):
    forecast, truth = calibrated
    ranks = metrics.truth_rank(forecast, truth)
    histogram = metrics.rank_histogram(ranks, 5, dims=ranks.dims)
    assert histogram.sizes["rank"] == 6
    assert float(histogram.sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(histogram, 1 / 6, atol=0.015)
    outliers = metrics.outside_range(forecast, truth).mean()
    assert float(outliers) == pytest.approx(2 / 6, abs=0.02)


def test_rank_hand_cases_and_random_ties():
    members = field(np.array([[1.0, 3.0, 5.0], [1.0, 3.0, 5.0], [1.0, 3.0, 5.0]]), ("p", "member"))
    truth = field(np.array([0.0, 4.0, 9.0]), ("p",))
    assert metrics.truth_rank(members, truth).values.tolist() == [0, 2, 3]
    # All members equal to the truth: the rank is uniform on 0..M.
    tied = field(np.zeros((6000, 3)), ("p", "member"))
    ranks = metrics.truth_rank(tied, field(np.zeros(6000), ("p",)))
    np.testing.assert_allclose(np.bincount(ranks.values) / 6000, 0.25, atol=0.02)
    # A missing truth gets rank -1 and is left out of the histogram.
    missing = metrics.truth_rank(members, field(np.array([0.0, np.nan, 9.0]), ("p",)))
    assert missing.values.tolist() == [0, -1, 3]
    histogram = metrics.rank_histogram(missing, 3, dims=["p"])
    assert histogram.values.tolist() == [0.5, 0.0, 0.0, 0.5]


def test_rank_counts_match_a_bincount_lazily_and_with_weights(calibrated):
    forecast, truth = calibrated
    ranks = metrics.truth_rank(forecast, truth)
    ranks[0, 0, 0] = -1  # missing data: left out
    weights = xr.DataArray(np.linspace(0.5, 1.5, 9), dims="latitude")
    by_region = xr.DataArray([[1.0] * 9, [2.0] * 9], dims=("region", "latitude"))
    for lazy in (ranks, ranks.chunk({"init_time": 7, "latitude": 4})):
        counts = metrics.rank_counts(lazy, 5, ["init_time", "longitude"], weights)
        assert lazy.chunks is None or counts.chunks is not None
        counts = counts.transpose("latitude", "rank").values
        for lat in range(9):
            kept = ranks.values[:, lat].ravel()
            kept = kept[kept >= 0]
            expected = np.bincount(kept, minlength=6) * weights.values[lat]
            np.testing.assert_allclose(counts[lat], expected)
        total = metrics.rank_counts(lazy, 5, ranks.dims).values
        np.testing.assert_array_equal(total, np.histogram(ranks, bins=np.arange(7) - 0.5)[0])
        regional = metrics.rank_counts(lazy, 5, ranks.dims, by_region)
        np.testing.assert_allclose(regional.sel(region=1), 2 * regional.sel(region=0))
        assert regional["rank"].values.tolist() == list(range(6))


def test_missing_members_lazily_and_truth_broadcast(calibrated):
    forecast, truth = calibrated
    forecast = forecast.astype("float32").copy()
    forecast[2, 1, 3, 4] = np.nan
    lazy = forecast.chunk({"init_time": 8})
    skipped = forecast.isel(init_time=2, latitude=3, longitude=4).dropna("member")
    for field in (forecast, lazy):
        variance = metrics.ensemble_variance(field)[2, 3, 4]
        assert float(variance) == pytest.approx(float(skipped.var(ddof=1)), rel=1e-6)
        assert float(metrics.ensemble_mean(field)[2, 3, 4]) == pytest.approx(
            float(skipped.mean()), rel=1e-6
        )
        assert int(metrics.truth_rank(field, truth)[2, 3, 4]) == -1
        assert np.isnan(metrics.outside_range(field, truth)[2, 3, 4])
        assert np.isnan(metrics.crps_ensemble(field, truth)[2, 3, 4])
    # A truth or forecast without the init_time dimension broadcasts, lazily or not.
    first, first_forecast = truth.isel(init_time=0, drop=True), forecast.isel(init_time=0)
    for score in (metrics.crps_ensemble, metrics.truth_rank, metrics.outside_range):
        np.testing.assert_array_equal(score(lazy, first).values, score(forecast, first).values)
        eager = score(first_forecast, truth).transpose("init_time", ...).values
        lazy_truth = score(first_forecast, truth.chunk({"init_time": 8}))
        np.testing.assert_array_equal(lazy_truth.transpose("init_time", ...).values, eager)


def test_ensemble_summary_from_one_sort_against_references(calibrated):
    forecast, truth = calibrated
    forecast = forecast.astype("float32").copy()
    forecast[2, 1, 3, 4] = np.nan  # a missing member: left out of the mean and variance
    truth = truth.copy()
    truth[5, 0, 0] = np.nan  # a missing truth: the mean and variance are still the members'
    truth[6, 1, 1] = forecast[6, 2, 1, 1]  # a tie with a member
    members = np.moveaxis(forecast.values.astype(float), 1, -1)
    observed = truth.values
    fair = scoringrules.crps_ensemble(observed, members, estimator="fair")
    missing = np.isnan(members).any(-1) | np.isnan(observed)
    below = (members < observed[..., None]).sum(-1)
    tied = (members == observed[..., None]).sum(-1)
    outside = (observed < members.min(-1)) | (observed > members.max(-1))
    for data, observations in ((forecast, truth), (forecast.chunk({"init_time": 8}), truth)):
        summary = metrics.ensemble_summary(data, observations, seed=4).compute()
        ecdf = properscoring.crps_ensemble(observed, members)
        np.testing.assert_allclose(summary.crps_ecdf.values[~missing], ecdf[~missing], rtol=1e-6)
        np.testing.assert_allclose(summary.crps_fair.values[~missing], fair[~missing], rtol=1e-6)
        np.testing.assert_allclose(summary["mean"], np.nanmean(members, -1), rtol=1e-6)
        np.testing.assert_allclose(summary.variance, np.nanvar(members, -1, ddof=1), rtol=1e-5)
        rank = summary["rank"].values
        assert rank.dtype == np.int64
        assert ((rank >= below) & (rank <= below + tied))[~missing].all()
        assert tied[6, 1, 1] == 1 and rank[6, 1, 1] - below[6, 1, 1] in (0, 1)
        assert (rank[missing] == -1).all()
        np.testing.assert_array_equal(summary.outside.values[~missing], outside[~missing])
        assert np.isnan(summary.outside.values[missing]).all()
        assert np.isnan(summary.crps_fair.values[missing]).all()
        low, high = np.quantile(members, [0.01, 0.99], axis=-1)
        np.testing.assert_array_equal(summary.tail_low.values[~missing], (observed < low)[~missing])
        np.testing.assert_array_equal(
            summary.tail_high.values[~missing], (observed > high)[~missing]
        )
        spread = members.std(-1, ddof=1)
        reach_high = (members.max(-1) - members.mean(-1)) / spread
        np.testing.assert_allclose(summary.reach_high.values[~missing], reach_high[~missing])
        reach_low = (members.mean(-1) - members.min(-1)) / spread
        np.testing.assert_allclose(summary.reach_low.values[~missing], reach_low[~missing])
        assert np.isnan(summary.reach_low.values[missing]).all()
        # The same draws break ties as in `truth_rank` with the same seed.
        expected_rank = metrics.truth_rank(data, observations, seed=4)
        np.testing.assert_array_equal(rank, expected_rank.values)
    one = metrics.ensemble_summary(forecast.isel(member=[0]), truth)
    np.testing.assert_allclose(one.crps_ecdf, np.abs(forecast.isel(member=0) - truth))
    assert np.isnan(one.crps_fair).all()


def test_crps_of_float32_members_against_properscoring(calibrated):
    forecast, truth = calibrated
    offset = (forecast + 280).astype("float32")  # a temperature-like offset
    observed = (truth + 280).astype("float32")
    axis = offset.get_axis_num("member")
    ecdf = properscoring.crps_ensemble(
        observed.values.astype(float), np.moveaxis(offset.values.astype(float), axis, -1)
    )
    crps = metrics.crps_ensemble(offset.chunk({"init_time": 8}), observed, fair=False)
    assert crps.dtype == np.float64
    np.testing.assert_allclose(crps, ecdf, rtol=1e-6)


def test_energy_score_against_scoringrules(calibrated):
    forecast, truth = calibrated
    # Two latitudes symmetric about the equator have equal weights: our weighted norm is the
    # Euclidean norm / sqrt(N).
    band, truth_band = forecast.isel(latitude=[3, 5]), truth.isel(latitude=[3, 5])
    obs = truth_band.values.reshape(40, -1)
    fct = band.transpose("init_time", "member", ...).values.reshape(40, 5, -1)
    for fair, estimator in [(True, "fair"), (False, "nrg")]:
        reference = scoringrules.es_ensemble(obs, fct, estimator=estimator) / np.sqrt(32)
        np.testing.assert_allclose(metrics.energy_score(band, truth_band, fair=fair), reference)
    lazy = metrics.energy_score(forecast.chunk({"init_time": 10}), truth.chunk({"init_time": 10}))
    assert lazy.chunks is not None and lazy.dims == ("init_time",)
    np.testing.assert_allclose(lazy.compute(), metrics.energy_score(forecast, truth))


def test_energy_score_of_a_uniform_shift_is_the_shift():
    members = field(np.full((2, 5, 8), 3.0), ("member", "latitude", "longitude"), nlat=5)
    truth = field(np.zeros((5, 8)), ("latitude", "longitude"), nlat=5)
    assert float(metrics.energy_score(members, truth)) == pytest.approx(3.0)


def test_anomaly_correlation(calibrated):
    forecast, truth = calibrated
    climatology = xr.zeros_like(truth.isel(init_time=0, drop=True))
    perfect = forecast * 0 + truth
    np.testing.assert_allclose(metrics.anomaly_correlation(perfect, truth, climatology), 1.0)
    np.testing.assert_allclose(metrics.anomaly_correlation(-perfect, truth, climatology), -1.0)
    acc = metrics.anomaly_correlation(forecast, truth, climatology, region="nh_extratropics")
    weights = aggregation.region_weights(truth.latitude, "nh_extratropics").values[:, None]
    mean = forecast.mean("member").values
    expected = (weights * mean * truth.values).sum((1, 2)) / np.sqrt(
        (weights * mean**2).sum((1, 2)) * (weights * truth.values**2).sum((1, 2))
    )
    np.testing.assert_allclose(acc, expected)


def test_area_weights_integrate_the_sphere():
    latitude = xr.DataArray(np.linspace(90, -90, 181), dims="latitude")
    latitude = latitude.assign_coords(latitude=latitude)
    sin2 = np.sin(np.deg2rad(latitude.values))[:, None] ** 2 * np.ones((1, 4))
    sin2 = field(sin2, ("latitude", "longitude"), nlat=181)
    assert float(aggregation.area_mean(sin2)) == pytest.approx(1 / 3, abs=1e-4)
    weights = aggregation.cell_area_weights(latitude)
    band = aggregation.region_weights(latitude, "nh_extratropics").sum() / weights.sum()
    assert float(band) == pytest.approx((1 - np.sin(np.deg2rad(20))) / 2, abs=0.005)
    # Ascending latitude gives the same weights, point by point.
    flipped = aggregation.cell_area_weights(latitude[::-1].assign_coords(latitude=latitude[::-1]))
    np.testing.assert_allclose(flipped.values[::-1], weights.values)


def test_regional_means_average_regions_then_init_times(calibrated):
    _, truth = calibrated
    means = aggregation.regional_means(truth)
    assert list(means.region.values) == list(aggregation.REGIONS)
    expected = np.mean([float(aggregation.area_mean(t, "tropics")) for t in truth])
    assert float(means.sel(region="tropics")) == pytest.approx(expected)


def test_bad_input():
    members = field(np.zeros((3, 2)), ("p", "number"))
    truth = field(np.zeros(3), ("p",))
    with pytest.raises(ValueError, match="no member dimension 'member'"):
        metrics.crps_ensemble(members, truth)
    with pytest.raises(ValueError, match="2 or more members"):
        metrics.crps_ensemble(members.isel(number=[0]), truth, member_dim="number")
    with pytest.raises(ValueError, match="unknown region 'arctic'"):
        aggregation.region_weights(xr.DataArray([0.0, 1.0], dims="latitude"), "arctic")
