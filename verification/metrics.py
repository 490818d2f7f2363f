"""Ensemble metrics: plain functions on xarray objects with an explicit member dimension.

Per-point functions return a value at every grid point (and init, lead) and stay lazy under
dask; `aggregation` averages them over regions and init times, and the few scores that need
the aggregated pieces (spread-skill ratios) take those means. The member dimension must be a
single dask chunk. Formulas follow WeatherBench2/WeatherBench-X and properscoring.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from verification.aggregation import LATITUDE, LONGITUDE, region_weights

MEMBER = "member"


def _members(forecast: xr.DataArray, member_dim: str) -> int:
    if member_dim not in forecast.dims:
        raise ValueError(f"forecast has no member dimension {member_dim!r}: {forecast.dims}")
    return forecast.sizes[member_dim]


def _crps_sorted(members: np.ndarray, truth: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS from members on the last axis (see `crps_ensemble`)."""
    m = members.shape[-1]
    sorted_members = np.sort(members, axis=-1)
    skill = np.abs(sorted_members - truth[..., None]).mean(axis=-1)
    rank_weights = 2 * np.arange(1, m + 1) - m - 1
    half_pair_sum = (sorted_members * rank_weights).sum(axis=-1)  # S / 2
    return skill - half_pair_sum / (m * (m - 1) if fair else m * m)


def crps_ensemble(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = MEMBER, fair: bool = True
) -> xr.DataArray:
    """Continuous ranked probability score of an ensemble, per point, in the field's units.

    With members sorted x(1) <= ... <= x(M) and `S = sum_ij |x_i - x_j| =
    2 sum_i (2i - M - 1) x(i)`:

        CRPS_ecdf = mean_i |x_i - y| - S / (2 M^2)
        CRPS_fair = mean_i |x_i - y| - S / (2 M (M - 1))

    O(M log M) time and O(M) memory per point; the M x M matrix is never built. The fair form
    (the default) is unbiased for the CRPS of the ensemble's parent distribution, so ensembles
    of different sizes compare fairly (Ferro 2014; Zamo & Naveau 2018). The ECDF form equals
    `properscoring.crps_ensemble`.

    Example: members [0, 2], truth 1: mean|x-y| = 1, S = 4, CRPS_ecdf = 0.5, CRPS_fair = 0.
    """
    m = _members(forecast, member_dim)
    if fair and m < 2:
        raise ValueError(f"the fair CRPS needs 2 or more members, got {m}")
    return xr.apply_ufunc(
        _crps_sorted,
        forecast,
        truth,
        kwargs={"fair": fair},
        input_core_dims=[[member_dim], []],
        dask="parallelized",
        output_dtypes=[np.float64],
    )


def ensemble_mean(forecast: xr.DataArray, member_dim: str = MEMBER) -> xr.DataArray:
    """Mean over members."""
    _members(forecast, member_dim)
    return forecast.mean(member_dim)


def ensemble_variance(forecast: xr.DataArray, member_dim: str = MEMBER) -> xr.DataArray:
    """Unbiased ensemble variance per point, `sum_i (x_i - xbar)^2 / (M - 1)`, units squared.

    Its area and init-time mean, square-rooted, is the ensemble spread.
    """
    _members(forecast, member_dim)
    return forecast.var(member_dim, ddof=1)


def squared_error_of_mean(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = MEMBER
) -> xr.DataArray:
    """`(xbar - y)^2` per point, units squared; its mean, square-rooted, is the RMSE."""
    return (ensemble_mean(forecast, member_dim) - truth) ** 2


def unbiased_squared_error_of_mean(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = MEMBER
) -> xr.DataArray:
    """`(xbar - y)^2 - s^2 / M`: the ensemble-mean squared error without its finite-ensemble bias.

    Its expectation is the squared error of the infinite ensemble's mean (WeatherBench-X
    `UnbiasedEnsembleMeanSquaredError`).
    """
    m = _members(forecast, member_dim)
    return (
        squared_error_of_mean(forecast, truth, member_dim)
        - ensemble_variance(forecast, member_dim) / m
    )


def spread_skill_ratio(
    mean_variance: xr.DataArray, mean_squared_error: xr.DataArray, members: int
) -> xr.DataArray:
    """`sqrt((M + 1) / M) * sqrt(mean ensemble variance) / sqrt(mean squared error of the mean)`.

    Takes area- and init-time-averaged variance and squared error. 1 for a calibrated ensemble
    (Fortin et al. 2014, the sqrt((M+1)/M) correction for finite ensembles).
    """
    return np.sqrt((members + 1) / members * mean_variance / mean_squared_error)


def spread_skill_ratio_debiased(
    mean_variance: xr.DataArray, mean_unbiased_squared_error: xr.DataArray
) -> xr.DataArray:
    """`sqrt(mean ensemble variance / mean unbiased squared error of the mean)`.

    WeatherBench-X's `UnbiasedSpreadSkillRatio`: both terms are unbiased for their
    infinite-ensemble values, so ensembles of any size compare directly.
    """
    return np.sqrt(mean_variance / mean_unbiased_squared_error)


def anomaly_correlation(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    region: str = "global",
    member_dim: str = MEMBER,
) -> xr.DataArray:
    """Anomaly correlation of the ensemble mean over the grid points of `region`, unitless.

    `ACC = sum_j w_j f'_j o'_j / sqrt(sum_j w_j f'^2_j * sum_j w_j o'^2_j)`, with anomalies
    `f' = xbar - c`, `o' = y - c` from the climatology `c` and cell-area weights `w`
    (WeatherBench2's uncentred ACC). One value per remaining dimension (init, lead); average it
    over init times afterwards.
    """
    forecast_anomaly = ensemble_mean(forecast, member_dim) - climatology
    truth_anomaly = truth - climatology
    weights = region_weights(truth[LATITUDE], region)

    def weighted_sum(field: xr.DataArray) -> xr.DataArray:
        return (field * weights).sum((LATITUDE, LONGITUDE), skipna=False)

    covariance = weighted_sum(forecast_anomaly * truth_anomaly)
    return covariance / np.sqrt(weighted_sum(forecast_anomaly**2) * weighted_sum(truth_anomaly**2))


def _rank_with_ties(members: np.ndarray, truth: np.ndarray, seed: int) -> np.ndarray:
    below = (members < truth[..., None]).sum(axis=-1)
    ties = (members == truth[..., None]).sum(axis=-1)
    share = np.random.default_rng(seed).random(truth.shape)
    return below + np.floor(share * (ties + 1)).astype(below.dtype)


def truth_rank(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = MEMBER, seed: int = 0
) -> xr.DataArray:
    """Rank of the truth among the members, 0..M, per point; ties broken at random.

    `rank = #{x_i < y} + U`, with `U` uniform on `0..#{x_i = y}` (Hamill 2001). A missing truth
    or member gives rank -1. `seed` fixes the tie-breaking draws (the same in every dask
    chunk; ties are rare in continuous fields, so their correlation does not matter).
    """
    _members(forecast, member_dim)
    valid = forecast.notnull().all(member_dim) & truth.notnull()
    ranks = xr.apply_ufunc(
        _rank_with_ties,
        forecast,
        truth,
        kwargs={"seed": seed},
        input_core_dims=[[member_dim], []],
        dask="parallelized",
        output_dtypes=[np.int64],
    )
    return ranks.where(valid, -1)


def rank_counts(
    ranks: xr.DataArray, members: int, dims: Sequence[str], weights: xr.DataArray | None = None
) -> xr.DataArray:
    """Weighted number of cases with each rank 0..M over `dims` (new dimension `rank`).

    `counts_r = sum_j w_j [rank_j = r]`; points with rank -1 (missing data) are left out.
    """
    weight = xr.ones_like(ranks, dtype=np.float64) if weights is None else weights
    rank_values = xr.DataArray(np.arange(members + 1), dims=["rank"], name="rank")
    rank_values = rank_values.assign_coords(rank=rank_values)
    return ((ranks == rank_values) * weight).sum(dims)


def rank_histogram(
    ranks: xr.DataArray, members: int, dims: Sequence[str], weights: xr.DataArray | None = None
) -> xr.DataArray:
    """Frequency of each rank 0..M over `dims` (dimension `rank`), weighted, summing to 1.

    Flat at 1/(M+1) for a calibrated ensemble; U-shaped when it is under-dispersive
    (Hamill 2001). Points with rank -1 (missing data) are left out.
    """
    counts = rank_counts(ranks, members, dims, weights)
    return counts / counts.sum("rank")


def outside_range(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = MEMBER
) -> xr.DataArray:
    """1 where the truth lies outside [min member, max member], else 0 (NaN if missing).

    Its mean is the outlier fraction, 2/(M+1) for a calibrated ensemble.
    """
    _members(forecast, member_dim)
    outside = (truth < forecast.min(member_dim)) | (truth > forecast.max(member_dim))
    valid = forecast.notnull().all(member_dim) & truth.notnull()
    return outside.astype(np.float64).where(valid)


def _energy_score_gram(members: np.ndarray, truth: np.ndarray, fair: bool) -> np.ndarray:
    """Energy score with members on axis -2 and the (weighted) field on axis -1."""
    m = members.shape[-2]
    skill = np.sqrt(((members - truth[..., None, :]) ** 2).sum(axis=-1)).mean(axis=-1)
    # |x_i - x_j|^2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j: an M x M Gram matrix, no M x M x N array.
    gram = members @ np.swapaxes(members, -1, -2)
    norms = np.diagonal(gram, axis1=-2, axis2=-1)
    squared = np.maximum(norms[..., :, None] + norms[..., None, :] - 2 * gram, 0.0)
    pair_sum = np.sqrt(squared).sum(axis=(-2, -1))
    return skill - pair_sum / (2 * m * (m - 1) if fair else 2 * m * m)


def energy_score(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    region: str = "global",
    member_dim: str = MEMBER,
    fair: bool = True,
) -> xr.DataArray:
    """Energy score of the ensemble over the grid points of `region`, in the field's units.

    `ES = mean_i ||x_i - y|| - sum_ij ||x_i - x_j|| / (2 M (M - 1))` (fair; `2 M^2` for the
    ECDF form), with the area-weighted norm `||v|| = sqrt(sum_j w_j v_j^2 / sum_j w_j)`, so a
    spatially uniform error e scores |e| (Gneiting & Raftery 2007). The pairwise term uses the
    members' Gram matrix: O(M^2 N) time, O(M^2 + M N) memory per (init, lead).
    With one grid point it is the CRPS.
    """
    m = _members(forecast, member_dim)
    if fair and m < 2:
        raise ValueError(f"the fair energy score needs 2 or more members, got {m}")
    weights = region_weights(truth[LATITUDE], region) * xr.ones_like(truth[LONGITUDE])
    root_weights = np.sqrt(weights / weights.sum())

    def flatten(field: xr.DataArray) -> xr.DataArray:
        return (field * root_weights).stack(point=(LATITUDE, LONGITUDE))

    return xr.apply_ufunc(
        _energy_score_gram,
        flatten(forecast),
        flatten(truth),
        kwargs={"fair": fair},
        input_core_dims=[[member_dim, "point"], ["point"]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
