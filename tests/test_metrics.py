"""The functions `wxens verify` runs (the fused `ensemble_summary` kernel, the `SCORES`
entries, the regions and their means) against properscoring, scoringrules, numpy and closed
forms."""

from __future__ import annotations

import numpy as np
import properscoring
import pytest
import scoringrules
import xarray as xr
from wxens.verification import aggregation, metrics
from wxens.verification.aggregation import LatitudeBand, LatLonBox, MaskRegion
from wxens.verification.errors import ScoreError
from wxens.verification.scores import SCORES, ScoringContext


def summary(forecast: xr.DataArray, truth: xr.DataArray, *names: str, **kwargs) -> xr.Dataset:
    return metrics.ensemble_summary(forecast, truth, statistics=names or metrics.SUMMARY, **kwargs)


def context(forecast: xr.DataArray, truth: xr.DataArray, regions=("global",)) -> ScoringContext:
    """The pipeline's per-variable context (the truth itself as the climate sample)."""
    sample = truth.rename(init_time="time")
    return ScoringContext(forecast, truth, sample, list(regions))


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
    np.testing.assert_allclose(
        summary(split, truth, "variance").variance, forecast.var("member", ddof=1)
    )


def test_spread_skill_ratios_are_one_for_a_calibrated_ensemble(calibrated):
    forecast, truth = calibrated
    members = forecast.sizes["member"]
    scores = context(forecast, truth)
    ratio = SCORES["spread_skill_ratio"].compute(scores)["spread_skill_ratio"].squeeze()
    debiased = SCORES["spread_skill_ratio_debiased"].compute(scores)
    debiased = debiased["spread_skill_ratio_debiased"].squeeze()
    assert float(ratio) == pytest.approx(1.0, abs=0.04)
    assert float(debiased) == pytest.approx(1.0, abs=0.04)
    # By hand (area means by latitude cell areas, then init times), with numpy's mean and var:
    weights = aggregation.cell_area_weights(truth.latitude)
    variance = forecast.var("member", ddof=1).weighted(weights).mean(["latitude", "longitude"])
    error = (
        ((forecast.mean("member") - truth) ** 2).weighted(weights).mean(["latitude", "longitude"])
    )
    expected = np.sqrt((members + 1) / members * variance.mean() / error.mean())
    assert float(ratio) == pytest.approx(float(expected), rel=1e-6)
    unbiased = (error - variance / members).mean()
    assert float(debiased) == pytest.approx(float(np.sqrt(variance.mean() / unbiased)), rel=1e-6)
    # Without the sqrt((M+1)/M) factor a 5-member ensemble looks under-dispersive.
    assert float(np.sqrt(variance.mean() / error.mean())) < 0.95
    assert float(SCORES["rmse"].compute(scores)["rmse"].squeeze()) == pytest.approx(
        float(np.sqrt(error.mean())), rel=1e-6
    )
    assert float(SCORES["spread"].compute(scores)["spread"].squeeze()) == pytest.approx(
        float(np.sqrt(variance.mean())), rel=1e-6
    )


def test_rank_histogram_is_flat_and_outliers_match_two_over_m_plus_one(calibrated):
    forecast, truth = calibrated
    scores = context(forecast, truth)
    histogram = SCORES["rank_histogram"].compute(scores)["rank_histogram"].squeeze()
    assert histogram.sizes["rank"] == 6
    assert float(histogram.sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(histogram, 1 / 6, atol=0.015)
    outliers = SCORES["outlier_fraction"].compute(scores)["outlier_fraction"].squeeze()
    assert float(outliers) == pytest.approx(2 / 6, abs=0.02)
    # An under-dispersive ensemble: U-shaped, more outliers.
    narrow = context(0.3 * forecast, truth)
    u_shape = SCORES["rank_histogram"].compute(narrow)["rank_histogram"].squeeze()
    assert float(u_shape[0] + u_shape[-1]) > 4 * float(u_shape[1:-1].mean())


def test_rank_hand_cases_and_random_ties():
    members = field(np.array([[1.0, 3.0, 5.0], [1.0, 3.0, 5.0], [1.0, 3.0, 5.0]]), ("p", "member"))
    truth = field(np.array([0.0, 4.0, 9.0]), ("p",))
    assert summary(members, truth, "rank")["rank"].values.tolist() == [0, 2, 3]
    # All members equal to the truth: the rank is uniform on 0..M.
    tied = field(np.zeros((6000, 3)), ("p", "member"))
    ranks = summary(tied, field(np.zeros(6000), ("p",)), "rank")["rank"]
    np.testing.assert_allclose(np.bincount(ranks.values) / 6000, 0.25, atol=0.02)
    # A missing truth gets rank -1 and is left out of the counts.
    missing = summary(members, field(np.array([0.0, np.nan, 9.0]), ("p",)))["rank"]
    assert missing.values.tolist() == [0, -1, 3]
    counts = metrics.rank_counts(missing, 3, dims=["p"])
    assert counts.values.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_rank_counts_match_a_bincount_lazily_and_with_weights(calibrated):
    forecast, truth = calibrated
    ranks = summary(forecast, truth, "rank")["rank"].copy()
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
    forecast[2, 3, 3, 4] = np.nan
    lazy = forecast.chunk({"init_time": 8})
    for data in (forecast, lazy):
        point = summary(data, truth).isel(init_time=2, latitude=3, longitude=4).compute()
        assert int(point["rank"]) == -1 and int(point["missing"]) == 2
        others = [name for name in metrics.SUMMARY if name not in ("rank", "missing")]
        assert all(np.isnan(point[name]) for name in others)
        assert int(summary(data, truth, "missing")["missing"].sum()) == 2
    # A truth or forecast without the init_time dimension broadcasts, lazily or not.
    first, first_forecast = truth.isel(init_time=0, drop=True), forecast.isel(init_time=0)
    for name in ("crps_fair", "rank", "outside"):
        eager = summary(forecast, first, name)[name]
        np.testing.assert_array_equal(summary(lazy, first, name)[name].values, eager.values)
        eager = summary(first_forecast, truth, name)[name].transpose("init_time", ...).values
        lazy_truth = summary(first_forecast, truth.chunk({"init_time": 8}), name)[name]
        np.testing.assert_array_equal(lazy_truth.transpose("init_time", ...).values, eager)


def test_ensemble_summary_from_one_sort_against_references(calibrated):
    forecast, truth = calibrated
    forecast = forecast.astype("float32").copy()
    forecast[2, 1, 3, 4] = np.nan  # a missing member: NaN statistics at that point
    truth = truth.copy()
    truth[5, 0, 0] = np.nan  # a missing truth: the same
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
        assert list(summary.data_vars) == list(metrics.SUMMARY)
        ecdf = properscoring.crps_ensemble(observed, members)
        np.testing.assert_allclose(summary.crps_ecdf.values[~missing], ecdf[~missing], rtol=1e-6)
        np.testing.assert_allclose(summary.crps_fair.values[~missing], fair[~missing], rtol=1e-6)
        mean, variance = members.mean(-1), members.var(-1, ddof=1)
        np.testing.assert_allclose(summary["mean"].values[~missing], mean[~missing], 1e-6)
        np.testing.assert_allclose(summary.variance.values[~missing], variance[~missing], 1e-5)
        assert np.isnan(summary["mean"].values[missing]).all()
        np.testing.assert_array_equal(summary.missing, np.isnan(members).sum(-1))
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
        # Any subset of the statistics is the same numbers (the same seed, the same ties).
        for names in (("rank",), ("crps_fair", "crps_ecdf"), ("variance", "tail_high")):
            alone = metrics.ensemble_summary(data, observations, seed=4, statistics=names)
            for name in names:
                np.testing.assert_array_equal(alone[name].values, summary[name].values)
        fair_view = metrics.crps_ensemble(data, observations).values
        np.testing.assert_array_equal(fair_view, summary.crps_fair.values)
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
    with pytest.raises(ScoreError, match="forecast has no 'member' dimension"):
        metrics.crps_ensemble(members, truth)
    with pytest.raises(ScoreError, match="2 or more members"):
        metrics.crps_ensemble(members.isel(number=[0]), truth, member_dim="number")
    with pytest.raises(ScoreError, match="unknown statistic"):
        metrics.ensemble_summary(members, truth, "number", statistics=("median",))
    latitude = xr.DataArray([0.0, 1.0], dims="latitude")
    with pytest.raises(ScoreError, match="unknown region 'arctic'"):
        aggregation.region_weights(latitude, "arctic")
    with pytest.raises(ScoreError, match="needs a 'longitude'"):
        aggregation.region_weights(latitude, LatLonBox(0, 10, 0, 10))
    with pytest.raises(ScoreError, match="south <= north"):
        LatitudeBand(30, 20)
    with pytest.raises(ScoreError, match="from 0 to 1"):
        MaskRegion(xr.DataArray([[2.0]], dims=("latitude", "longitude")))
    with pytest.raises(ScoreError, match="given twice"):
        aggregation.resolve_regions(["global", "global"])


def test_boxes_wrap_and_masks_weight_every_grid_point(calibrated):
    _, truth = calibrated  # (init_time, latitude 90..-90 by 22.5, longitude 0..337.5 by 22.5)
    latitude, longitude = truth.latitude.values, truth.longitude.values
    area = np.sin(np.deg2rad(np.minimum(latitude + 11.25, 90))) - np.sin(
        np.deg2rad(np.maximum(latitude - 11.25, -90))
    )
    box = LatLonBox(south=0, north=45, west=-30, east=45, name="box")  # wraps: 330..45 E
    columns = np.isin(longitude, [337.5, 0.0, 22.5, 45.0])
    rows = (latitude >= 0) & (latitude <= 45)
    expected = (truth.values * (area * rows)[:, None] * columns).sum((1, 2)) / (
        (area * rows).sum() * columns.sum()
    )
    fraction = np.random.default_rng(1).uniform(size=(9, 16))
    mask = MaskRegion(xr.DataArray(fraction, dims=("latitude", "longitude")), name="mask")
    weights = area[:, None] * fraction
    by_mask = (truth.values * weights).sum((1, 2)) / weights.sum()
    band = LatitudeBand(-45, 0)
    means = aggregation.regional_means(truth, ["tropics", box, mask, band])
    assert means.region.values.tolist() == ["tropics", "box", "mask", "band_45S_0N"]
    np.testing.assert_allclose(means.sel(region="box"), expected.mean())
    np.testing.assert_allclose(means.sel(region="mask"), by_mask.mean())
    per_init = aggregation.regional_means(truth, {"b": box}, time_dim=None)
    np.testing.assert_allclose(per_init.sel(region="b"), expected)
    # A box all the way round is the band of its latitudes.
    full = LatLonBox(-45, 0, 0, 360)
    np.testing.assert_allclose(
        aggregation.regional_means(truth, [full]), aggregation.regional_means(truth, [band])
    )
    # Rank counts by region: a box weights grid points; the band path weights latitudes only.
    ranks = xr.DataArray(
        np.random.default_rng(2).integers(0, 4, truth.shape), dims=truth.dims, coords=truth.coords
    )

    def count(dims, weights):
        return metrics.rank_counts(ranks, 3, dims, weights)

    counts = aggregation.regional_sums(count, truth.latitude, truth.longitude, [box, "global"])
    normalised = area / area.mean()
    for r in range(4):
        hits = (ranks.values == r) * (normalised * rows)[:, None] * columns
        assert float(counts.sel(region="box", rank=r)) == pytest.approx(hits.sum())
    assert float(counts.sel(region="global").sum()) == pytest.approx(ranks.size)
    with pytest.raises(ScoreError, match="on another grid"):
        aggregation.regional_means(
            truth, [MaskRegion(xr.DataArray(np.ones((4, 16)), dims=("latitude", "longitude")))]
        )


def test_scores_of_a_box_region_match_by_hand(calibrated):
    forecast, truth = calibrated
    box = LatLonBox(20, 70, 90, 200, name="box")
    scores = context(forecast, truth, ["global", box])
    weights = aggregation.region_weights(truth.latitude, box, truth.longitude)
    error = (
        ((forecast.mean("member") - truth) ** 2).weighted(weights).mean(["latitude", "longitude"])
    )
    rmse = SCORES["rmse"].compute(scores)["rmse"]
    assert float(rmse.sel(region="box")) == pytest.approx(float(np.sqrt(error.mean())), rel=1e-6)
    energy = SCORES["energy_score"].compute(scores)["energy_score"].sel(region="box")
    inside = weights.values > 0
    points = inside.sum()
    w = weights.values[inside] / weights.values[inside].sum()
    fct = forecast.transpose("init_time", "member", ...).values[:, :, inside] * np.sqrt(w)
    obs = truth.values[:, inside] * np.sqrt(w)
    reference = scoringrules.es_ensemble(obs, fct, estimator="fair")
    assert points > 1 and float(energy) == pytest.approx(reference.mean(), rel=1e-10)


@pytest.mark.parametrize("chunked", [False, True])
def test_fused_summary_means_equal_the_per_point_path(calibrated, chunked):
    """`ensemble_summary_means` (sums inside each block) against `ensemble_summary` then
    area means and `rank_counts`; its ECDF CRPS against properscoring; a missing truth makes
    the means NaN and leaves its points out of the rank counts."""
    forecast, truth = calibrated
    if chunked:
        forecast = forecast.chunk({"init_time": 7, "member": 2})
        truth = truth.chunk({"init_time": 7})
    weights = aggregation.cell_area_weights(forecast.latitude)
    reduce = ["init_time", "latitude", "longitude"]
    names = ("crps_fair", "crps_ecdf", "mean", "variance", "squared_error", "outside", "rank")
    fused = metrics.ensemble_summary_means(forecast, truth, reduce, weights, statistics=names)
    per_point = summary(forecast, truth, *names)
    for name in names[:-1]:
        expected = per_point[name].weighted(weights).mean(reduce)
        np.testing.assert_allclose(fused[name], expected, rtol=1e-12)
    counts = metrics.rank_counts(per_point["rank"], 5, reduce, weights)
    np.testing.assert_allclose(fused["rank_counts"], counts, rtol=1e-12)
    error = ((forecast.mean("member") - truth) ** 2).weighted(weights).mean(reduce)
    np.testing.assert_allclose(fused["squared_error"], error, rtol=1e-10)
    members = forecast.transpose(..., "member").values
    reference = properscoring.crps_ensemble(truth.values, members).mean()
    plain = metrics.ensemble_summary_means(forecast, truth, reduce, statistics=("crps_ecdf",))
    assert float(plain["crps_ecdf"]) == pytest.approx(reference, rel=1e-12)
    gap = metrics.ensemble_summary_means(
        forecast, truth.where(truth.init_time != 3), reduce, weights, statistics=("mean", "rank")
    )
    assert np.isnan(float(gap["mean"]))
    one_init = float(weights.sum()) * 16
    assert float(gap["rank_counts"].sum()) == pytest.approx(float(counts.sum()) - one_init)
    with pytest.raises(ScoreError, match="unknown statistic"):
        metrics.ensemble_summary_means(forecast, truth, reduce, statistics=("tail_low",))
