"""Model climate, EFI, SOT, extreme-event and tail scores, against independent references.

References: earthkit-meteo's numpy `efi` and `sot`, the EFI integral by scipy quadrature,
closed forms, scikit-learn's `roc_auc_score`, numpy quantiles and small cases by hand.
"""

from __future__ import annotations

from itertools import pairwise

import dask.array
import numpy as np
import pytest
import xarray as xr
from earthkit.meteo.extreme.array import efi as earthkit_efi
from earthkit.meteo.extreme.array import sot as earthkit_sot
from scipy.integrate import quad
from sklearn.metrics import roc_auc_score
from wxens.verification.aggregation import LatLonBox
from wxens.verification.extremes import (
    EFI_CATEGORIES,
    calendar_window,
    climate_at,
    efi,
    extreme_event_scores,
    model_climate,
    sot,
    tail_fractions,
    tail_reach,
)

GRID = ("init_time", "latitude", "longitude")


@pytest.fixture(scope="module")
def world() -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """A truth climate's 101 quantiles (no init_time), a shifted 20-member forecast, its truth."""
    rng = np.random.default_rng(7)
    latitude = np.linspace(60.0, -60.0, 5)
    coords = {"latitude": latitude, "longitude": np.arange(6) * 60.0}
    climate_sample = rng.normal(size=(300, 5, 6))
    dims = ("time", "latitude", "longitude")
    climate = model_climate(xr.DataArray(climate_sample, dims=dims, coords=coords), "time")
    signal = rng.normal(0.0, 1.5, size=(8, 5, 6))
    members = signal[..., None] + rng.normal(0.0, 0.8, size=(8, 5, 6, 20))
    members[0, 0, 0, 3] = np.nan  # a missing member gives NaN at that point
    forecast = xr.DataArray(members, dims=(*GRID, "member"), coords=coords)
    truth = xr.DataArray(signal + rng.normal(0.0, 0.8, size=signal.shape), dims=GRID, coords=coords)
    return climate, forecast, truth


def earthkit_layout(climate: xr.DataArray, forecast: xr.DataArray) -> tuple[np.ndarray, ...]:
    """Climate (quantile first, broadcast to the forecast) and members first, as numpy."""
    members = forecast.transpose("member", *GRID).values
    quantiles = climate.transpose("quantile", ...).values[:, None]
    return np.broadcast_to(quantiles, (101, *members.shape[1:])), members


def test_model_climate_is_101_numpy_quantiles() -> None:
    rng = np.random.default_rng(1)
    hindcasts = xr.DataArray(rng.gamma(2.0, size=(4, 30, 3)), dims=("init_time", "member", "x"))
    climate = model_climate(hindcasts, ("init_time", "member"))
    assert climate.dims == ("quantile", "x")
    assert climate["quantile"].values[95] == 0.95  # levels k/100 exactly, selectable by label
    expected = np.quantile(hindcasts.values.reshape(120, 3), np.arange(101) / 100, axis=0)
    np.testing.assert_allclose(climate, expected, rtol=1e-12)
    lazy = model_climate(hindcasts.chunk(init_time=1, x=1), ("init_time", "member"))
    assert isinstance(lazy.data, dask.array.Array)
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-12)


def test_calendar_window_wraps_the_year() -> None:
    days = np.arange(np.datetime64("2019-01-01"), np.datetime64("2022-01-01"))
    times = np.repeat(days, 4) + np.tile(np.arange(4) * np.timedelta64(6, "h"), days.size)
    truth = xr.DataArray(np.arange(times.size), coords={"time": times}, dims="time")
    window = calendar_window(truth, [np.datetime64("2020-01-03")], half_width_days=5)
    month_days = set(zip(window.time.dt.month.values, window.time.dt.day.values, strict=True))
    assert month_days == {(12, day) for day in range(29, 32)} | {(1, day) for day in range(1, 9)}
    assert window.sizes["time"] == 3 * 11 * 4  # 11 days in each of 3 years, 4 times a day
    two = calendar_window(truth, ["2020-03-01", "2020-07-01"], half_width_days=0)
    assert set(two.time.dt.month.values) == {3, 7}


def test_efi_matches_earthkit_and_broadcasts_the_climate(world) -> None:
    climate, forecast, _ = world
    index = efi(forecast, climate)
    assert index.dims == GRID
    assert index.attrs["units"] == "1"
    expected = earthkit_efi(*earthkit_layout(climate, forecast))
    np.testing.assert_allclose(index, expected, atol=1e-9, rtol=0)
    assert np.isnan(index[0, 0, 0]) and np.isfinite(index).sum() == index.size - 1
    assert float(abs(index).max()) > 0.5  # the forecast is far from the climate somewhere


def test_efi_integrates_exactly_with_uneven_levels() -> None:
    # Independent of earthkit's coefficients: quadrature of the defining integral, with
    # F_f linear between uneven levels, in theta where p = sin^2(theta) removes the poles.
    levels = np.array([0.0, 0.05, 0.2, 0.5, 0.7, 0.9, 0.99, 1.0])
    climate = xr.DataArray(np.linspace(-3.0, 3.0, levels.size), dims="quantile")
    climate = climate.assign_coords(quantile=levels)
    members = xr.DataArray([-2.5, -0.4, 0.3, 0.35, 1.2, 2.0, 2.9], dims="member")
    below = (members.values[:, None] <= climate.values).mean(axis=0)

    def integrand(theta: float) -> float:
        p = np.sin(theta) ** 2
        return 2.0 * (p - np.interp(p, levels, below))

    breaks = np.arcsin(np.sqrt(levels))
    integral = sum(quad(integrand, a, b, epsabs=1e-13)[0] for a, b in pairwise(breaks))
    np.testing.assert_allclose(efi(members, climate), 2 / np.pi * integral, atol=1e-10)


def test_efi_closed_forms() -> None:
    climate = xr.DataArray(np.sort(np.random.default_rng(2).normal(size=101)), dims="quantile")
    climate = climate.assign_coords(quantile=np.arange(101) / 100)
    # One member inside each of the 100 climate intervals: F_f = p at every level.
    like_climate = xr.DataArray((climate.values[:-1] + climate.values[1:]) / 2, dims="member")
    np.testing.assert_allclose(efi(like_climate, climate), 0.0, atol=1e-12)
    above = xr.DataArray(climate.values[-1] + np.arange(1.0, 6.0), dims="member")
    np.testing.assert_allclose(efi(above, climate), 1.0, rtol=1e-12)
    np.testing.assert_allclose(efi(-above + climate.values[0] * 2 - 1, climate), -1.0, rtol=1e-12)
    # Members on the climate quantiles count as below them (earthkit's <=), so EFI < 0.
    on_quantiles = xr.DataArray(climate.values, dims="member")
    expected = earthkit_efi(climate.values, on_quantiles.values)
    np.testing.assert_allclose(efi(on_quantiles, climate), expected, atol=1e-12)
    assert float(efi(on_quantiles, climate)) < -0.005


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # earthkit, at zero width
@pytest.mark.parametrize(("upper", "percentile"), [(True, 90), (False, 10)])
def test_sot_matches_earthkit(world, upper: bool, percentile: int) -> None:
    climate, forecast, _ = world
    # A point with no tail width (NaN) and one far beyond the tail (clipped at 10).
    climate = climate.copy()
    climate[:, 1, 1] = 0.0
    forecast = forecast.copy()
    forecast[1, 2, 2] = 100.0 if upper else -100.0
    shift = sot(forecast, climate, upper=upper)
    assert shift.dims == GRID
    expected = earthkit_sot(*earthkit_layout(climate, forecast), percentile)
    np.testing.assert_allclose(shift, expected, atol=1e-12, rtol=0)
    assert np.isnan(shift[:, 1, 1]).all() and (shift[1, 2, 2] == 10.0)
    assert np.isfinite(shift).any() and float(shift.min()) > -10.0


def test_efi_and_sot_stay_lazy_under_dask(world) -> None:
    climate, forecast, _ = world
    lazy_forecast = forecast.chunk(init_time=3, member=7)
    for score in (efi, sot):
        lazy = score(lazy_forecast, climate.chunk(latitude=2))
        assert isinstance(lazy.data, dask.array.Array)
        xr.testing.assert_allclose(lazy.compute(), score(forecast, climate))


def test_efi_and_sot_reject_bad_climates(world) -> None:
    climate, forecast, _ = world
    with pytest.raises(ValueError, match="'quantile' dimension"):
        efi(forecast, climate.isel(quantile=0))
    with pytest.raises(ValueError, match="rise from 0 to 1"):
        efi(forecast, climate.isel(quantile=slice(1, None)))
    with pytest.raises(ValueError, match="must be among the forecast's"):
        efi(forecast, climate.rename(latitude="lat"))
    with pytest.raises(ValueError, match="no 'member' dimension"):
        sot(forecast.rename(member="number"), climate)
    with pytest.raises(ValueError, match="lacks the quantile levels"):
        sot(forecast, climate.isel(quantile=slice(None, None, 10)))
    with pytest.raises(ValueError, match="align"):
        efi(forecast, climate.assign_coords(latitude=climate.latitude + 1.0))


def cell_areas(latitude: np.ndarray) -> np.ndarray:
    """Cell areas between latitude mid-points, written out independently of `aggregation`."""
    edges = np.deg2rad(np.r_[90, (latitude[1:] + latitude[:-1]) / 2, -90])
    return np.sin(edges[:-1]) - np.sin(edges[1:])


def test_extreme_event_scores_against_scikit_learn_by_region(world) -> None:
    """The tables of `wxens verify`, by band (per latitude) and by box (per grid point)."""
    climate, forecast, truth = world
    box = LatLonBox(0, 60, 300, 60, name="box")  # wraps past 0: longitudes 300, 0, 60
    result = extreme_event_scores(forecast, truth, climate, regions=["global", box])
    np.testing.assert_array_equal(result["quantile"], [0.95, 0.99])
    assert result["region"].values.tolist() == ["global", "box"]
    index = efi(forecast, climate)
    category = np.floor((index + 1) / 2 * EFI_CATEGORIES).clip(0, EFI_CATEGORIES - 1)
    complete = forecast.notnull().all("member").values.ravel()
    area = np.broadcast_to(cell_areas(truth.latitude.values)[:, None], (5, 6))
    inside = {
        "global": np.ones((5, 6), bool),
        "box": (truth.latitude.values >= 0)[:, None] & np.isin(np.arange(6), [0, 1, 5])[None],
    }
    for region, mask in inside.items():
        weight = np.broadcast_to(area * mask, truth.shape).ravel()
        valid = complete & (weight > 0)
        for level in (0.95, 0.99):
            threshold = climate.sel(quantile=level)
            event = (truth > threshold).values.ravel()[valid]
            probability = (forecast > threshold).mean("member").values.ravel()[valid]
            scores = result.sel(quantile=level, region=region)
            w = weight[valid]
            np.testing.assert_allclose(
                scores["brier_score"], np.average((probability - event) ** 2, weights=w)
            )
            ratio = float(scores["reliability_count"].sum()) / w.sum()
            assert ratio == pytest.approx(float(area.size / area.sum()))  # weights of mean 1
            if event.all() or not event.any():
                assert np.isnan(scores["roc_auc"]) and np.isnan(scores["efi_roc_auc"])
                continue
            expected = roc_auc_score(event, probability, sample_weight=w)
            np.testing.assert_allclose(scores["roc_auc"], expected, rtol=1e-12)
            efi_rank = category.values.ravel()[valid]
            expected_efi = roc_auc_score(event, efi_rank, sample_weight=w)
            np.testing.assert_allclose(scores["efi_roc_auc"], expected_efi, rtol=1e-12)
    assert float(result["roc_auc"].sel(region="global").min()) > 0.7
    lazy = extreme_event_scores(
        forecast.chunk(member=7), truth.chunk(init_time=4), climate, regions=["global", box]
    )
    assert all(isinstance(score.data, dask.array.Array) for score in lazy.data_vars.values())
    xr.testing.assert_allclose(lazy.compute(), result)


def test_climate_at_selects_levels_by_label(world) -> None:
    climate, _, _ = world
    np.testing.assert_array_equal(climate_at(climate, 0.9), climate.isel(quantile=90))
    assert "quantile" not in climate_at(climate, 0.9).coords
    assert climate_at(climate, [0.95, 0.99]).sizes["quantile"] == 2


def test_tail_fractions_by_hand() -> None:
    # 1st percentile 1, 99th 99 at each of the 5 points
    members = xr.DataArray(np.tile(np.arange(101.0), (5, 1)), dims=("x", "member"))
    truth = xr.DataArray([0.5, 50.0, 99.5, 1.0, np.nan], dims="x")
    outside = tail_fractions(members, truth)
    assert outside.dims == ("tail", "x")
    np.testing.assert_array_equal(outside.sel(tail="low"), [1, 0, 0, 0, np.nan])
    np.testing.assert_array_equal(outside.sel(tail="high"), [0, 0, 1, 0, np.nan])


def test_tail_fractions_near_one_percent_for_a_calibrated_large_ensemble() -> None:
    rng = np.random.default_rng(11)
    signal = rng.normal(size=8000)
    members = signal[:, None] + rng.normal(size=(8000, 500)).astype(np.float32)
    truth = xr.DataArray(signal + rng.normal(size=8000), dims="x")
    calibrated = tail_fractions(xr.DataArray(members, dims=("x", "member")), truth).mean("x")
    np.testing.assert_allclose(calibrated, 0.012, atol=0.004)  # ~1.2 % expected at M = 500
    narrow = signal[:, None] + 0.5 * (members - signal[:, None])
    underdispersive = tail_fractions(xr.DataArray(narrow, dims=("x", "member")), truth).mean("x")
    assert (underdispersive > 0.1).all()


def test_tail_reach_by_hand_and_lazily() -> None:
    members = xr.DataArray(
        [[0.0, 0.0, 0.0, 4.0], [-1.0, 0.0, 1.0, 0.0], [5.0] * 4], dims=("x", "member")
    )
    reach = tail_reach(members)
    # Mean 1, std (ddof 1) 2; mean 0, std sqrt(2/3); no spread.
    np.testing.assert_allclose(reach.sel(tail="low"), [0.5, np.sqrt(1.5), np.nan])
    np.testing.assert_allclose(reach.sel(tail="high"), [1.5, np.sqrt(1.5), np.nan])
    lazy = tail_reach(members.chunk(member=2))
    assert isinstance(lazy.data, dask.array.Array)
    xr.testing.assert_allclose(lazy.compute(), reach)


def test_tail_fractions_stay_lazy_and_reject_a_misnamed_truth(world) -> None:
    _, forecast, truth = world
    lazy = tail_fractions(forecast.chunk(member=5), truth.chunk(init_time=4))
    assert isinstance(lazy.data, dask.array.Array)
    xr.testing.assert_allclose(lazy.compute(), tail_fractions(forecast, truth))
    with pytest.raises(ValueError, match="must be among the forecast's"):
        tail_fractions(forecast, truth.rename(latitude="lat"))
