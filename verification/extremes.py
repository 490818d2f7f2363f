"""Extremes: model climate, Extreme Forecast Index, Shift of Tails, extreme events, tails.

A climate is a DataArray of per-point quantiles along a `quantile` dimension whose coordinate
holds the levels in [0, 1]: `model_climate` gives the 101 levels 0, 0.01, ..., 1 (from hindcasts,
per lead time, or from a truth climate, e.g. within a `calendar_window`). Everything is lazy
under dask.

EFI and SOT are written here although earthkit-meteo (1.2) has both, with a dask-parallelised
xarray layer: earthkit-meteo is a test reference only (pyproject's `dev` extra), which keeps the
tests that compare against it independent; its xarray wrappers do not broadcast (a climate
without the forecast's `init_time` fails with a shape error) and they copy the field's units
onto a unitless index. The discretisation and the conventions are earthkit-meteo's (members at
or below a climate quantile count as below it; NaN where any member or climate value is NaN;
SOT from numpy's linear percentiles, NaN where the climate's tail width is zero), checked in
tests/test_extremes.py. Not carried over: earthkit-meteo's `eps` option for variables bounded
at zero (precipitation), and the EFI here takes the quantile levels from the climate's
coordinate instead of assuming them equally spaced.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import numpy.typing as npt
import xarray as xr
from wxens.verification.aggregation import RegionsLike
from wxens.verification.errors import ScoreError
from wxens.verification.geometry import spatial_sums
from wxens.verification.metrics import ensemble_summary
from wxens.verification.probability import (
    VALUE,
    Dims,
    brier_score_fair_from_table,
    brier_score_from_table,
    climatological_thresholds,
    contingency_table,
    exceeds,
    members_above,
    reliability_from_table,
    roc_auc_from_table,
)

QUANTILE = "quantile"
TAIL = "tail"
EXTREME_LEVELS = (0.95, 0.99)
SOT_BOUND = 10.0
EFI_CATEGORIES = 200
"""The EFI's ROC is counted in 200 equal bins on [-1, 1] (ties within a bin count one half)."""


def model_climate(data: xr.DataArray, dim: Dims, quantiles: int = 101) -> xr.DataArray:
    """Per-point climate quantiles at the equally spaced levels k / (quantiles - 1), 0 to 1.

    .. math:: c_k = Q(k / (K - 1)), \\quad k = 0, \\dots, K - 1

    with Q the linearly interpolated sample quantile (Hyndman and Fan type 7) along `dim`
    (e.g. `("init_time", "member")` for hindcasts, kept per lead time, or `"time"` for a truth
    climate). Units of `data`; the default K = 101 gives the percentiles 0..100 used by the
    EFI and SOT. NaNs in the sample are skipped.

    Reference: Lalaurette, F. (2003). Early detection of abnormal weather conditions using a
    probabilistic extreme forecast index. QJRMS, 129(594), 3037-3057.

    Example:
        >>> sample = xr.DataArray(np.arange(11.0), dims="time")
        >>> model_climate(sample, "time", quantiles=5).values.tolist()
        [0.0, 2.5, 5.0, 7.5, 10.0]
    """
    if quantiles < 2:
        raise ScoreError(f"a climate needs at least the levels 0 and 1, got {quantiles=}")
    return climatological_thresholds(data, np.arange(quantiles) / (quantiles - 1), dim)


def calendar_window(
    truth: xr.DataArray,
    dates: npt.ArrayLike,
    half_width_days: int = 15,
    time_dim: str = "time",
) -> xr.DataArray:
    """The truth at the times within ±`half_width_days` calendar days of any of `dates`, any year.

    The distance is between days of the year, counted from 1 January and wrapping the year
    (31 December is one day from 1 January); times of day are ignored, so a window of ±15 days
    holds 31 whole days a year. `dates` is one date or several (datetime64-like, e.g.
    `forecast.init_time`); with several, the union of their windows. Selects coordinates only;
    the data stay lazy. Feeds `model_climate` with a seasonal truth climate.

    Example:
        >>> times = np.arange("2030-12-01", "2031-02-01", dtype="datetime64[D]")
        >>> truth = xr.DataArray(np.zeros(times.size), dims="time", coords={"time": times})
        >>> calendar_window(truth, np.datetime64("2031-01-01"), 2).time.dt.day.values.tolist()
        [30, 31, 1, 2, 3]
    """
    days = truth[time_dim].values.astype("datetime64[D]")
    centres = np.atleast_1d(np.asarray(dates, dtype="datetime64[D]")).ravel()
    return truth.isel({time_dim: calendar_distance(days, centres).min(axis=1) <= half_width_days})


def calendar_distance(days: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """|day - centre| in days, `(day, centre)`, with the centre moved to the day's year or a
    neighbouring one (the distance between days of the year, wrapping the year)."""
    day_of_year = centres - centres.astype("datetime64[Y]").astype("datetime64[D]")
    year = days.astype("datetime64[Y]")[:, None]
    moved = [(year + shift).astype("datetime64[D]") + day_of_year for shift in (-1, 0, 1)]
    return np.min([np.abs(days[:, None] - centre) for centre in moved], axis=0).astype(int)


def efi(
    forecast: xr.DataArray,
    climate: xr.DataArray,
    member_dim: str = "member",
    quantile_dim: str = QUANTILE,
) -> xr.DataArray:
    """Extreme Forecast Index: how far the forecast distribution lies from the climate.

    .. math::
        \\mathrm{EFI} = \\frac{2}{\\pi} \\int_0^1 \\frac{p - F_f(p)}{\\sqrt{p (1 - p)}} \\, dp

    F_f(p_k) is the fraction of members at or below the climate's p_k-quantile c_k, taken
    linear between the climate's levels p_k, and the integral is exact on each interval:

    .. math::
        \\frac{2}{\\pi} \\sum_k \\left[(2 F_k - 1) \\Delta A_k
        + \\frac{\\Delta F_k}{\\Delta p_k} \\left((1 - 2 p_k) \\Delta A_k + \\Delta B_k\\right)
        - \\Delta B_k\\right]

    with A = arccos(√p) and B = √(p (1 - p)) (earthkit-meteo's discretisation). Unitless in
    [-1, 1]: 0 for a forecast distributed like the climate, +1 (-1) for one entirely above
    (below) it. `climate` (e.g. `model_climate`) must be sorted along `quantile_dim`, with a
    coordinate of levels rising from 0 to 1; its other dimensions must be among the forecast's
    and broadcast against them. NaN where any member or climate value is NaN.

    Reference: Lalaurette (2003); Zsótér, E. (2006). Recent developments in extreme weather
    forecasting. ECMWF Newsletter 107, 8-17.

    Example:
        >>> climate = model_climate(xr.DataArray(np.arange(101.0), dims="time"), "time")
        >>> above = xr.DataArray([200.0, 300.0], dims="member")
        >>> float(efi(above, climate))  # every member above the whole climate
        1.0
    """
    levels = _quantile_levels(climate, quantile_dim)
    forecast, climate = _aligned_with_climate(forecast, climate, member_dim, quantile_dim)
    index = xr.apply_ufunc(
        _efi_kernel,
        forecast,
        climate,
        input_core_dims=[[member_dim], [quantile_dim]],
        kwargs={"levels": levels},
        dask="parallelized",
        output_dtypes=[float],
        dask_gufunc_kwargs={"allow_rechunk": True},
        keep_attrs=False,
    )
    return index.assign_attrs(units="1", long_name="Extreme Forecast Index")


def _efi_kernel(members: np.ndarray, climate: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """EFI over the trailing axes, members (..., M) and sorted climate (..., K) at `levels`."""
    below = _members_at_or_below(members, climate) / members.shape[-1]
    acos_step = np.diff(np.arccos(np.sqrt(levels)))
    root_step = np.diff(np.sqrt(levels * (1 - levels)))
    slope = np.diff(below, axis=-1) / np.diff(levels)
    intervals = (
        (2 * below[..., :-1] - 1) * acos_step
        + slope * ((1 - 2 * levels[:-1]) * acos_step + root_step)
        - root_step
    )
    missing = np.isnan(members).any(axis=-1) | np.isnan(climate).any(axis=-1)
    return np.where(missing, np.nan, 2 / np.pi * intervals.sum(axis=-1))


def _members_at_or_below(members: np.ndarray, climate: np.ndarray) -> np.ndarray:
    """How many of the members (..., M) are <= each value of the sorted climate (..., K).

    The members are sorted (numpy's SIMD sort), then one stable sort of members and climate
    together merges the two sorted runs (numpy's stable sort is a timsort, O(M + K) on two
    runs): in it the k-th climate value sits after exactly the members <= it (members come
    first, so ties count as below) and the k climate values before it. Twice as fast as the
    same sort of unsorted members (M = 100, K = 101: 0.6 s against 1.2 s on 67,584 points),
    which was itself twice as fast as comparing every member with every level.
    """
    members = np.sort(members, axis=-1)
    climate = climate.astype(members.dtype, copy=False)  # float32 data: a faster sort
    points = np.broadcast_shapes(members.shape[:-1], climate.shape[:-1])
    merged = np.concatenate(
        [np.broadcast_to(values, (*points, values.shape[-1])) for values in (members, climate)],
        axis=-1,
    )
    order = np.argsort(merged, axis=-1, kind="stable")
    _, position = np.nonzero(order.reshape(-1, order.shape[-1]) >= members.shape[-1])
    count = climate.shape[-1]
    return position.reshape(*merged.shape[:-1], count) - np.arange(count)


def sot(
    forecast: xr.DataArray,
    climate: xr.DataArray,
    upper: bool = True,
    member_dim: str = "member",
    quantile_dim: str = QUANTILE,
) -> xr.DataArray:
    """Shift of Tails: how far the forecast's tail reaches beyond the climate's, clipped to ±10.

    .. math::
        \\mathrm{SOT}_{upper} = \\frac{Q_f(0.9) - Q_c(0.99)}{Q_c(0.99) - Q_c(0.9)}, \\quad
        \\mathrm{SOT}_{lower} = \\frac{Q_f(0.1) - Q_c(0.01)}{Q_c(0.01) - Q_c(0.1)}

    Q_f: linearly interpolated quantile of the members (numpy's default); Q_c: the climate at
    those levels, which `climate` must hold (as `model_climate` does). Unitless; positive when
    the forecast's 90th (10th) percentile lies beyond the climate's 99th (1st), more extreme
    when larger. NaN where the climate's tail width is zero or an input is NaN.

    Reference: Zsótér (2006), as earthkit-meteo's `extreme.sot`.

    Example:
        >>> climate = model_climate(xr.DataArray(np.arange(101.0), dims="time"), "time")
        >>> members = xr.DataArray(np.full(10, 108.0), dims="member")
        >>> float(sot(members, climate))  # (108 - 99) / (99 - 90)
        1.0
    """
    side, inner, tail = ("upper", 0.9, 0.99) if upper else ("lower", 0.1, 0.01)
    forecast, climate = _aligned_with_climate(forecast, climate, member_dim, quantile_dim)
    forecast_inner = forecast.quantile(inner, dim=member_dim, skipna=False).drop_vars("quantile")
    climate_inner = climate_at(climate, inner, quantile_dim)
    climate_tail = climate_at(climate, tail, quantile_dim)
    width = (climate_tail - climate_inner).where(climate_tail != climate_inner)
    shift = ((forecast_inner - climate_tail) / width).clip(-SOT_BOUND, SOT_BOUND)
    return shift.assign_attrs(units="1", long_name=f"Shift of Tails ({side})")


def climate_at(
    climate: xr.DataArray, levels: float | Sequence[float], quantile_dim: str = QUANTILE
) -> xr.DataArray:
    """The climate at the given quantile levels (a scalar level drops the quantile dimension).

    Example:
        >>> climate = model_climate(xr.DataArray(np.arange(101.0), dims="time"), "time")
        >>> float(climate_at(climate, 0.9)), climate_at(climate, [0.5, 0.9]).values.tolist()
        (90.0, [50.0, 90.0])
    """
    available = _quantile_levels(climate, quantile_dim)
    wanted = np.atleast_1d(levels)
    if not np.all(np.isclose(wanted[:, None], available, rtol=0, atol=1e-9).any(axis=1)):
        raise ScoreError(f"climate lacks the quantile levels {wanted}; it has {available}")
    selected = climate.sel({quantile_dim: levels}, method="nearest")
    return selected.drop_vars(quantile_dim) if np.ndim(levels) == 0 else selected


def extreme_event_scores(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    climate: xr.DataArray,
    levels: Sequence[float] = EXTREME_LEVELS,
    regions: RegionsLike = None,
    bins: int | Sequence[float] = 10,
    efi_climate: xr.DataArray | None = None,
    time_dim: str = "init_time",
    member_dim: str = "member",
    quantile_dim: str = QUANTILE,
) -> xr.Dataset:
    """Scores of the events "truth above the climate's q-quantile" for q in `levels`, by region.

    The event is `y > c_q`, forecast with the probability k/M of the `members_above` c_q.
    Contingency tables of (k, event) are counted per latitude over `time_dim` and longitude
    (per grid point when a box or mask region needs it), weighted by each region's cell areas
    and finished into `brier_score`, `roc_auc` and the reliability diagram
    (`reliability_forecast_probability`, `reliability_observed_frequency`,
    `reliability_count`; `bins` as in `probability.reliability_from_table`). `efi_roc_auc` is
    the ROC area of the EFI against `efi_climate` (default: `climate`) as a predictor of the
    event, counted in EFI_CATEGORIES bins of the EFI. All unitless, along `quantile` = `levels`
    and `region` (`regions` as in `aggregation.resolve_regions`). Points where a member, the
    truth or the threshold is missing are left out.

    This is what `wxens verify` computes (Petroliagis and Pinson 2014 for the ROC of the EFI).

    Example:
        >>> grid = {"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]}
        >>> truth = xr.DataArray(np.arange(8.0).reshape(2, 2, 2), dims=["init_time", *grid],
        ...                      coords=grid)
        >>> forecast = xr.concat([truth - 0.5, truth + 0.5], dim="member")
        >>> climate = model_climate(truth, "init_time")
        >>> scores = extreme_event_scores(forecast, truth, climate, [0.5], ["global"])
        >>> float(scores["roc_auc"].squeeze()), float(scores["brier_score"].squeeze())
        (1.0, 0.0)
    """
    members = forecast.sizes[member_dim] if member_dim in forecast.dims else 0
    tables = extreme_event_tables(
        forecast, truth, climate, levels, regions, efi_climate, time_dim, member_dim, quantile_dim
    )
    return event_scores_from_tables(tables.sum(time_dim), members, bins)


EFI_CATEGORY = "efi_category"


def extreme_event_tables(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    climate: xr.DataArray,
    levels: Sequence[float] = EXTREME_LEVELS,
    regions: RegionsLike = None,
    efi_climate: xr.DataArray | None = None,
    time_dim: str = "init_time",
    member_dim: str = "member",
    quantile_dim: str = QUANTILE,
    above: xr.DataArray | None = None,
) -> xr.Dataset:
    """The area-weighted contingency tables behind `extreme_event_scores`, per `time_dim`:
    `event_table` (`value` k = members above the climate's q-quantile, 0..M; `outcome` 0/1 the
    truth above it) and `efi_table` (`efi_category`, the EFI in EFI_CATEGORIES bins; `outcome`),
    along `region` and `quantile` = `levels`. Counts add up over `time_dim`: the tables of any
    set of init times are the sums of theirs. `above`: `members_above` the thresholds, when
    the caller has it already.

    Example:
        >>> grid = {"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]}
        >>> truth = xr.DataArray(np.arange(8.0).reshape(2, 2, 2), dims=["init_time", *grid],
        ...                      coords=grid)
        >>> forecast = xr.concat([truth - 0.5, truth + 0.5], dim="member")
        >>> climate = model_climate(truth, "init_time")
        >>> tables = extreme_event_tables(forecast, truth, climate, [0.5], ["global"])
        >>> tables.event_table.sum(("value", "outcome")).values.ravel().tolist()  # 4 points each
        [4.0, 4.0]
    """
    members = forecast.sizes[member_dim] if member_dim in forecast.dims else 0
    if members < 1:
        raise ScoreError(f"forecast has no {member_dim!r} dimension (it has {forecast.dims})")
    thresholds = climate_at(climate, list(levels), quantile_dim)
    event = exceeds(truth, thresholds)
    index = efi(forecast, climate if efi_climate is None else efi_climate, member_dim, quantile_dim)
    efi_category = np.floor((index + 1) / 2 * EFI_CATEGORIES).clip(0, EFI_CATEGORIES - 1)

    def regional_table(category: xr.DataArray, values: int) -> xr.DataArray:
        def count(dims: tuple[str, ...], weights: xr.DataArray | None) -> xr.DataArray:
            return contingency_table(category, event, values, dims, weights)

        return spatial_sums(count, truth, regions, None)

    if above is None:
        above = members_above(forecast, thresholds, member_dim)
    table = regional_table(above, members + 1)
    efi_table = regional_table(efi_category.fillna(-1).astype(int), EFI_CATEGORIES)
    return xr.Dataset(
        {
            "event_table": table,
            "efi_table": efi_table.rename({VALUE: EFI_CATEGORY}),
        }
    )


def event_scores_from_tables(
    tables: xr.Dataset, members: int, bins: int | Sequence[float] = 10
) -> xr.Dataset:
    """`brier_score`, `brier_score_fair`, `roc_auc`, `efi_roc_auc` and the reliability diagram
    of an ensemble of `members` from its `extreme_event_tables` (summed over the init times to
    score).

    Example:
        >>> table = xr.DataArray([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]], dims=("value", "outcome"))
        >>> tables = xr.Dataset({"event_table": table,
        ...                      "efi_table": table.rename(value="efi_category")})
        >>> float(event_scores_from_tables(tables, 2)["brier_score"])
        0.0
    """
    table = tables["event_table"].isel({VALUE: slice(0, members + 1)})
    probabilities = xr.DataArray(np.arange(members + 1) / members, dims=[VALUE])
    reliability = reliability_from_table(table, probabilities, bins)
    return xr.Dataset(
        {
            "brier_score": brier_score_from_table(table, probabilities),
            "brier_score_fair": brier_score_fair_from_table(table, members),
            "roc_auc": roc_auc_from_table(table),
            "efi_roc_auc": roc_auc_from_table(tables["efi_table"].rename({EFI_CATEGORY: VALUE})),
            **{f"reliability_{name}": score for name, score in reliability.items()},
        }
    )


def tail_fractions(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    member_dim: str = "member",
    tail_level: float = 0.01,
) -> xr.DataArray:
    """Truth below the ensemble's 1st percentile (`tail="low"`) or above its 99th (`"high"`).

    .. math:: \\mathbb{1}[y < Q_f(0.01)], \\quad \\mathbb{1}[y > Q_f(0.99)]

    Per point 1.0 or 0.0 (NaN where the truth or a member is NaN); their area-weighted mean
    over a region and init times is the fraction. Q_f is the linearly interpolated member
    quantile, so a calibrated M-member ensemble expects somewhat more than 1 % in each tail,
    tending to 1 % as M grows (about 2.7 % for M = 50, 1.2 % for M = 500). A view on
    `metrics.ensemble_summary` (`tail_low`, `tail_high`).

    Reference: Hamill, T. M. (2001). Interpretation of rank histograms for verifying ensemble
    forecasts. Monthly Weather Review, 129(3), 550-560 (tail populations of calibrated
    ensembles).

    Example:
        >>> members = xr.DataArray(np.tile(np.arange(101.0), (2, 1)), dims=("x", "member"))
        >>> tail_fractions(members, xr.DataArray([0.5, 99.5], dims="x")).values.tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    _check_within(truth.dims, forecast, member_dim, "truth")
    summary = ensemble_summary(
        forecast, truth, member_dim, tail_level=tail_level, statistics=("tail_low", "tail_high")
    )
    return by_tail(summary["tail_low"], summary["tail_high"])


def tail_reach(forecast: xr.DataArray, member_dim: str = "member") -> xr.DataArray:
    """How far the ensemble reaches into its tails, in ensemble standard deviations.

    .. math::
        \\text{low} = \\frac{\\bar x - \\min_i x_i}{s}, \\quad
        \\text{high} = \\frac{\\max_i x_i - \\bar x}{s}

    with s the ensemble standard deviation (ddof = 1). Unitless (sigmas), along `tail`; NaN
    where s = 0 or a member is NaN. For M Gaussian members both tend to the expected maximum
    of M standard normals (about 2.25 for M = 50). A view on `metrics.ensemble_summary`
    (`reach_low`, `reach_high`).

    Reference: Wilks, D. S. (2019). Statistical Methods in the Atmospheric Sciences, 4th ed.,
    chapter 8 (ensemble forecasting).

    Example:
        >>> members = xr.DataArray([[0.0, 0.0, 0.0, 4.0]], dims=("x", "member"))
        >>> tail_reach(members).values.tolist()  # mean 1, std 2
        [[0.5], [1.5]]
    """
    if member_dim not in forecast.dims:
        raise ScoreError(f"forecast has no {member_dim!r} dimension; it has {forecast.dims}")
    origin = xr.zeros_like(forecast.isel({member_dim: 0}, drop=True))
    summary = ensemble_summary(forecast, origin, member_dim, statistics=("reach_low", "reach_high"))
    return by_tail(summary["reach_low"], summary["reach_high"])


def by_tail(low: xr.DataArray, high: xr.DataArray) -> xr.DataArray:
    """`low` and `high` stacked on a `tail` dimension (low, high).

    Example:
        >>> by_tail(xr.DataArray(1.0), xr.DataArray(2.0)).sel(tail="high").item()
        2.0
    """
    return xr.concat([low, high], dim=TAIL).assign_coords({TAIL: ["low", "high"]})


def _quantile_levels(climate: xr.DataArray, quantile_dim: str) -> np.ndarray:
    """The climate's quantile levels, checked to rise from 0 to 1."""
    if quantile_dim not in climate.dims or quantile_dim not in climate.coords:
        raise ScoreError(
            f"climate needs a {quantile_dim!r} dimension with a coordinate of quantile levels "
            f"(see model_climate); it has dims {climate.dims}"
        )
    levels = climate[quantile_dim].values.astype(float)
    if levels.size < 2 or levels[0] != 0 or levels[-1] != 1 or np.any(np.diff(levels) <= 0):
        raise ScoreError(f"climate quantile levels must rise from 0 to 1, got {levels}")
    return levels


def _aligned_with_climate(
    forecast: xr.DataArray, climate: xr.DataArray, member_dim: str, quantile_dim: str
) -> tuple[xr.DataArray, xr.DataArray]:
    """Forecast and climate, checked to broadcast and to share exactly equal coordinates."""
    if member_dim not in forecast.dims:
        raise ScoreError(f"forecast has no {member_dim!r} dimension; it has {forecast.dims}")
    other_dims = [dim for dim in climate.dims if dim != quantile_dim]
    _check_within(other_dims, forecast, member_dim, "climate")
    return xr.align(forecast, climate, join="exact")


def _check_within(
    dims: Sequence[Hashable], forecast: xr.DataArray, member_dim: str, name: str
) -> None:
    """Raise unless `dims` are dims of the forecast but the member one (a misnamed dim would
    silently broadcast)."""
    if member_dim in dims or any(dim not in forecast.dims for dim in dims):
        raise ScoreError(
            f"{name} dims {tuple(dims)} must be among the forecast's {forecast.dims} "
            f"without {member_dim!r}"
        )
