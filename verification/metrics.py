"""Ensemble metrics: plain functions on xarray objects with an explicit member dimension.

Per-point functions return a value at every grid point (and init, lead) and stay lazy under
dask; `aggregation` averages them over regions and init times, and the few scores that need
the aggregated pieces (spread-skill ratios) take those means. Every dask task sees all members
of its points (a member dimension split across chunks is rechunked to one chunk). Formulas
follow WeatherBench2/WeatherBench-X and properscoring.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import dask.array
import numpy as np
import xarray as xr
from wxens.verification.aggregation import LATITUDE, LONGITUDE, region_weights

MEMBER = "member"


def _members(forecast: xr.DataArray, member_dim: str) -> int:
    if member_dim not in forecast.dims:
        raise ValueError(f"forecast has no member dimension {member_dim!r}: {forecast.dims}")
    return forecast.sizes[member_dim]


def _first_member_block(
    members: list[np.ndarray], *others: np.ndarray, kernel: Callable[..., np.ndarray]
) -> np.ndarray:
    return kernel(members[0], *others)


def _member_blocks(
    kernel: Callable[..., np.ndarray],
    members: np.ndarray | dask.array.Array,
    *others: np.ndarray | dask.array.Array,
    dtype: np.dtype,
    statistics: int = 0,
) -> np.ndarray | dask.array.Array:
    """`kernel(members, *others)`, members on the last axis; under dask, one task per block.

    With `statistics` > 0 the kernel returns that many values per point on a new last axis.

    xarray's `dask="parallelized"` (dask's `apply_gufunc`) copies each block's single member chunk
    into a fresh transposed array before the kernel sees it, which costs as much as a cheap
    kernel. Here blockwise hands over the list of member blocks (one) unconcatenated, so blocks
    reach the kernel uncopied; the members may arrive as a non-contiguous view.
    """
    if not any(isinstance(array, dask.array.Array) for array in (members, *others)):
        return kernel(members, *others)
    members = dask.array.asarray(members)
    # Axis indices aligned on the right, as numpy broadcasts: xarray leaves out leading axes that
    # an input lacks. Index `loop` is the member axis, which the output drops.
    loop = max([members.ndim - 1, *(other.ndim for other in others)])
    pairs = [members, (*range(loop - members.ndim + 1, loop), loop)]
    for other in others:
        pairs += [dask.array.asarray(other), tuple(range(loop - other.ndim, loop))]
    new = (loop + 1,) if statistics else ()
    return dask.array.blockwise(
        _first_member_block,
        (*range(loop), *new),
        *pairs,
        concatenate=False,
        new_axes=dict.fromkeys(new, statistics),
        dtype=dtype,
        meta=np.empty((0,) * (loop + len(new)), dtype),
        kernel=kernel,
    )


def _per_point(
    kernel: Callable[..., np.ndarray],
    forecast: xr.DataArray,
    truth: xr.DataArray | None,
    member_dim: str,
    dtype: np.dtype | type,
    statistics: int = 0,
    **kwargs: object,
) -> xr.DataArray:
    """`kernel(members, [truth,] **kwargs)` at every point, lazily under dask.

    With `statistics` > 0 the kernel returns that many values per point, on a new last
    dimension `statistic`. A member dimension split across dask chunks is first rechunked to
    one chunk.
    """
    if len(forecast.chunksizes.get(member_dim, ())) > 1:
        forecast = forecast.chunk({member_dim: -1})
    inputs = [forecast] if truth is None else [forecast, truth]
    return xr.apply_ufunc(
        _member_blocks,
        functools.partial(kernel, **kwargs),
        *inputs,
        kwargs={"dtype": np.dtype(dtype), "statistics": statistics},
        input_core_dims=[[], [member_dim], *[[]] * (len(inputs) - 1)],
        output_core_dims=[["statistic"] if statistics else []],
        dask="allowed",
    )


def _sorted_deviations(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """`d = x - y` with members on the last axis, each point's row sorted; NaNs sort last.

    The deviations stay in the input's float type (float32 sorts twice as fast as float64;
    x - y of nearby float32 values is exact). C order puts each point's members side by side,
    so the in-place sort runs on contiguous rows.
    """
    dtype = np.result_type(members, truth, np.float32)
    deviations = np.subtract(members, truth[..., None], order="C", dtype=dtype)
    deviations.sort(axis=-1)
    return deviations


def _crps_of_sorted(deviations: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS from sorted deviations `d = x - y` (see `crps_ensemble`), as float64.

    Shifting every member by y leaves S unchanged (the rank weights sum to 0), so
    `M CRPS = sum_i d(i) (sign d(i) - (2i - M - 1) / c)`, with `c = M - 1` (fair) or `M`;
    the terms stay in the deviations' float type and are summed in float64.
    """
    m = deviations.shape[-1]
    rank_weights = (2 * np.arange(1, m + 1) - m - 1) / (m - 1 if fair else m)
    terms = np.sign(deviations)
    terms -= rank_weights.astype(deviations.dtype)
    terms *= deviations
    return terms.sum(axis=-1, dtype=np.float64) / m


def _crps_sorted(members: np.ndarray, truth: np.ndarray, fair: bool) -> np.ndarray:
    """CRPS from members on the last axis (see `crps_ensemble`), as float64."""
    return _crps_of_sorted(_sorted_deviations(members, truth), fair)


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
    return _per_point(_crps_sorted, forecast, truth, member_dim, np.float64, fair=fair)


def _mean(members: np.ndarray) -> np.ndarray:
    """Mean over the last axis; NaN-skipping only when a NaN member made a NaN mean."""
    mean = np.mean(members, axis=-1)
    return np.nanmean(members, axis=-1) if np.isnan(mean).any() else mean


def ensemble_mean(forecast: xr.DataArray, member_dim: str = MEMBER) -> xr.DataArray:
    """Mean over members; missing members are left out, as in `xarray.DataArray.mean`."""
    _members(forecast, member_dim)
    # numpy's mean per block: xarray's NaN-skipping mean copies every block to zero its NaNs.
    dtype = np.result_type(forecast.dtype, np.float32)
    return _per_point(_mean, forecast, None, member_dim, dtype)


def _variance(members: np.ndarray) -> np.ndarray:
    """Unbiased variance over the last axis; NaN-skipping only when a NaN member made a NaN."""
    variance = np.var(members, axis=-1, ddof=1)
    return np.nanvar(members, axis=-1, ddof=1) if np.isnan(variance).any() else variance


def ensemble_variance(forecast: xr.DataArray, member_dim: str = MEMBER) -> xr.DataArray:
    """Unbiased ensemble variance per point, `sum_i (x_i - xbar)^2 / (M - 1)`, units squared.

    Its area and init-time mean, square-rooted, is the ensemble spread. Missing members are
    left out (M counts the others), as in `xarray.DataArray.var`.
    """
    _members(forecast, member_dim)
    # numpy's var per block, not xarray's: under dask, xarray's NaN-skipping var of a single-chunk
    # member axis costs several times numpy's two-pass var, with the same float32 result.
    dtype = np.result_type(forecast.dtype, np.float32)
    return _per_point(_variance, forecast, None, member_dim, dtype)


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
    (WeatherBench2's uncentred ACC). A `forecast` without `member_dim` is taken as it is (a
    deterministic forecast, or an ensemble mean already computed). One value per remaining
    dimension (init, lead); average it over init times afterwards.
    """
    if member_dim in forecast.dims:
        forecast = ensemble_mean(forecast, member_dim)
    forecast_anomaly = forecast - climatology
    truth_anomaly = truth - climatology
    weights = region_weights(truth[LATITUDE], region)

    def weighted_sum(field: xr.DataArray) -> xr.DataArray:
        return (field * weights).sum((LATITUDE, LONGITUDE), skipna=False)

    covariance = weighted_sum(forecast_anomaly * truth_anomaly)
    return covariance / np.sqrt(weighted_sum(forecast_anomaly**2) * weighted_sum(truth_anomaly**2))


def _missing(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """True where the truth or any member is NaN."""
    return np.isnan(members).any(axis=-1) | np.isnan(truth)


def _break_ties(below: np.ndarray, ties: np.ndarray | int, seed: int) -> np.ndarray:
    """`below + floor(U (ties + 1))`, U uniform on [0, 1) from `seed`: a rank 0..M per point."""
    share = np.random.default_rng(seed).random(np.shape(below))
    return below + np.floor(share * (ties + 1)).astype(np.int32)


def _rank_with_ties(members: np.ndarray, truth: np.ndarray, seed: int) -> np.ndarray:
    """Rank by counting, O(M) per point (no sort); int32 counts halve the reductions' cost."""
    below = (members < truth[..., None]).sum(axis=-1, dtype=np.int32)
    equal = members == truth[..., None]
    ties = equal.sum(axis=-1, dtype=np.int32) if equal.any() else 0  # ties are rare
    ranks = _break_ties(below, ties, seed)
    return np.where(_missing(members, truth), -1, ranks).astype(np.int64)


def truth_rank(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = MEMBER, seed: int = 0
) -> xr.DataArray:
    """Rank of the truth among the members, 0..M, per point; ties broken at random.

    `rank = #{x_i < y} + U`, with `U` uniform on `0..#{x_i = y}` (Hamill 2001). A missing truth
    or member gives rank -1. `seed` fixes the tie-breaking draws (the same in every dask
    chunk; ties are rare in continuous fields, so their correlation does not matter).
    """
    _members(forecast, member_dim)
    return _per_point(_rank_with_ties, forecast, truth, member_dim, np.int64, seed=seed)


def _count_block(ranks: np.ndarray, weights: np.ndarray, core: int, bins: int) -> np.ndarray:
    """Weighted counts of ranks 0..bins-1 over the last `core` axes, kept with length 1."""
    leading = ranks.shape[: ranks.ndim - core]
    rows = ranks.reshape(math.prod(leading), -1)
    counted = (rows >= 0) & (rows < bins)  # rank -1: missing data
    # One bincount over (row, rank) pairs: no points x bins one-hot array.
    index = (np.arange(len(rows))[:, None] * bins + rows)[counted]
    weight = np.broadcast_to(weights, ranks.shape).reshape(rows.shape)[counted]
    counts = np.bincount(index, weight, minlength=len(rows) * bins)
    return counts.reshape(*leading, *(1,) * core, bins)


def _count_ranks(
    ranks: np.ndarray | dask.array.Array,
    weights: np.ndarray | dask.array.Array,
    core: int,
    bins: int,
) -> np.ndarray | dask.array.Array:
    """`_count_block` summed over the core axes; under dask, per block and then across blocks."""
    axes = tuple(range(ranks.ndim - core, ranks.ndim))
    if not isinstance(ranks, dask.array.Array) and not isinstance(weights, dask.array.Array):
        return _count_block(ranks, weights, core, bins).sum(axis=axes)
    ranks = dask.array.asarray(ranks)
    weights = dask.array.asarray(weights).rechunk(ranks.chunks)
    kept = ranks.chunks[: ranks.ndim - core]
    reduced = tuple((1,) * len(chunks) for chunks in ranks.chunks[ranks.ndim - core :])
    per_block = dask.array.map_blocks(
        _count_block,
        ranks,
        weights,
        core=core,
        bins=bins,
        chunks=(*kept, *reduced, (bins,)),
        new_axis=ranks.ndim,
        dtype=np.float64,
    )
    return per_block.sum(axis=axes)


def rank_counts(
    ranks: xr.DataArray, members: int, dims: Sequence[str], weights: xr.DataArray | None = None
) -> xr.DataArray:
    """Weighted number of cases with each rank 0..M over `dims` (new dimension `rank`).

    `counts_r = sum_j w_j [rank_j = r]`; points with rank -1 (missing data) are left out.
    Counted with `np.bincount` per dask block, then summed across blocks.
    """
    weight = xr.ones_like(ranks, dtype=np.float64) if weights is None else weights
    ranks, weight = xr.broadcast(*xr.align(ranks, weight, join="inner"))  # as `ranks * weight`
    counts = xr.apply_ufunc(
        _count_ranks,
        ranks,
        weight,
        kwargs={"core": len(dims), "bins": members + 1},
        input_core_dims=[list(dims), list(dims)],
        output_core_dims=[["rank"]],
        dask="allowed",
    )
    return counts.assign_coords(rank=np.arange(members + 1))


def rank_histogram(
    ranks: xr.DataArray, members: int, dims: Sequence[str], weights: xr.DataArray | None = None
) -> xr.DataArray:
    """Frequency of each rank 0..M over `dims` (dimension `rank`), weighted, summing to 1.

    Flat at 1/(M+1) for a calibrated ensemble; U-shaped when it is under-dispersive
    (Hamill 2001). Points with rank -1 (missing data) are left out.
    """
    counts = rank_counts(ranks, members, dims, weights)
    return counts / counts.sum("rank")


def _outside(members: np.ndarray, truth: np.ndarray) -> np.ndarray:
    outside = (truth < members.min(axis=-1)) | (truth > members.max(axis=-1))
    return np.where(_missing(members, truth), np.nan, outside)


def outside_range(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = MEMBER
) -> xr.DataArray:
    """1 where the truth lies outside [min member, max member], else 0 (NaN if missing).

    Its mean is the outlier fraction, 2/(M+1) for a calibrated ensemble.
    """
    _members(forecast, member_dim)
    return _per_point(_outside, forecast, truth, member_dim, np.float64)


SUMMARY = (
    "crps_fair",
    "crps_ecdf",
    "mean",
    "variance",
    "rank",
    "outside",
    "tail_low",
    "tail_high",
    "reach_low",
    "reach_high",
)
"""The per-point scores of `ensemble_summary`, in the order of its kernel's last axis."""


def _summary_block(
    members: np.ndarray, truth: np.ndarray, seed: int, tail_level: float
) -> np.ndarray:
    """Every score of `SUMMARY` from one sort of `d = x - y` (members on the last axis).

    With the sorted d(i), their median `d_h` and `c = d - d_h` (in float64, so that the sums
    below lose nothing to a bias much larger than the spread): `A = sum_i |d_i|`,
    `B = sum_i (2i - M - 1) c(i)` (which equals the same sum of d, the weights summing to 0),
    `S = sum_i c_i` and `Q = sum_i c_i^2` give

        CRPS = (A - B / k) / M          k = M - 1 (fair) or M (ECDF)
        mean = y + d_h + S / M          variance s^2 = (Q - S^2 / M) / (M - 1)

    The rank is `#{d < 0}` plus the random share of ties; outside is `d(1) > 0 or d(M) < 0`;
    the tails are `Q_d(p) > 0` and `Q_d(1 - p) < 0` (y beyond the members' p and 1 - p
    quantiles, interpolated linearly as numpy does), the reaches `(mean - x(1)) / s` and
    `(x(M) - mean) / s`.
    """
    deviations = _sorted_deviations(members, truth)
    m = deviations.shape[-1]
    below = (deviations < 0).sum(axis=-1, dtype=np.int32)
    zero = deviations == 0
    lowest, highest = deviations[..., 0].astype(np.float64), deviations[..., -1].astype(np.float64)
    scores = {
        "rank": _break_ties(below, zero.sum(axis=-1, dtype=np.int32) if zero.any() else 0, seed),
        "outside": (lowest > 0) | (highest < 0),
        "tail_low": _sorted_quantile(deviations, tail_level) > 0,
        "tail_high": _sorted_quantile(deviations, 1 - tail_level) < 0,
    }
    median = deviations[..., m // 2].astype(np.float64)
    centred = np.subtract(deviations, median[..., None], dtype=np.float64)
    ranked, total = np.moveaxis(centred @ _summary_weights(m), -1, 0)
    squares = np.einsum("...i,...i->...", centred, centred)
    absolute = np.add.reduce(np.abs(deviations, out=deviations), axis=-1, dtype=np.float64)
    deviation_mean = median + total / m
    with np.errstate(divide="ignore", invalid="ignore"):  # one member: no fair CRPS, variance
        scores["crps_fair"] = (absolute - ranked / (m - 1)) / m
        scores["variance"] = np.maximum(squares - total**2 / m, 0.0) / (m - 1)
        spread = np.sqrt(np.where(scores["variance"] > 0, scores["variance"], np.nan))
        scores["reach_low"] = (deviation_mean - lowest) / spread
        scores["reach_high"] = (highest - deviation_mean) / spread
    scores["crps_ecdf"] = (absolute - ranked / m) / m
    scores["mean"] = truth + deviation_mean
    out = np.stack(np.broadcast_arrays(*(scores[name] for name in SUMMARY)), axis=-1, dtype=float)
    missing = np.isnan(highest)  # NaNs sort last; a missing truth makes all NaN
    if missing.any():
        all_members = np.broadcast_to(members, (*missing.shape, m))[missing]
        out[missing] = np.nan
        out[missing, SUMMARY.index("rank")] = -1
        out[missing, SUMMARY.index("mean")] = _mean(all_members)
        out[missing, SUMMARY.index("variance")] = _variance(all_members)
    return out


def _sorted_quantile(rows: np.ndarray, level: float) -> np.ndarray:
    """The `level` quantile of sorted rows, interpolated linearly (numpy's default method)."""
    position = (rows.shape[-1] - 1) * level
    low = math.floor(position)
    high = min(low + 1, rows.shape[-1] - 1)
    fraction = position - low
    return rows[..., low] + fraction * (rows[..., high].astype(np.float64) - rows[..., low])


@functools.cache
def _summary_weights(m: int) -> np.ndarray:
    """Columns `2i - M - 1` (i = 1..M) and ones: `c @ weights` is (B, S) of `_summary_block`."""
    return np.stack([2.0 * np.arange(1, m + 1) - m - 1, np.ones(m)], axis=1)


def ensemble_summary(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    member_dim: str = MEMBER,
    seed: int = 0,
    tail_level: float = 0.01,
) -> xr.Dataset:
    """The per-point scores that need the members sorted or summed, from one pass over them.

    Variables (each per point, as the function named):
    - `crps_fair`, `crps_ecdf`: `crps_ensemble` (NaN `crps_fair` for one member);
    - `mean`, `variance`: `ensemble_mean`, `ensemble_variance`;
    - `rank`: `truth_rank` with this `seed`; `outside`: `outside_range`;
    - `tail_low`, `tail_high`: `extremes.tail_fractions` with this `tail_level`;
    - `reach_low`, `reach_high`: `extremes.tail_reach`.

    Each dask task sorts its members once; the separate functions would read and sort them
    once each. Missing data gives what the separate functions give.
    """
    m = _members(forecast, member_dim)
    stacked = _per_point(
        _summary_block,
        forecast,
        truth,
        member_dim,
        np.float64,
        len(SUMMARY),
        seed=seed,
        tail_level=tail_level,
    )
    summary = xr.Dataset({name: stacked[..., i] for i, name in enumerate(SUMMARY)})
    summary["rank"] = summary["rank"].astype(np.int64)
    summary.attrs["members"] = m
    return summary


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
    weights = region_weights(truth[LATITUDE], region)
    inside = {LATITUDE: np.flatnonzero(weights.values > 0)}  # no work outside the region
    weights = weights.isel(inside) * xr.ones_like(truth[LONGITUDE])
    root_weights = np.sqrt(weights / weights.sum())

    def flatten(field: xr.DataArray) -> xr.DataArray:
        field = field.isel(inside)
        return (
            (field * root_weights)
            .transpose(..., LATITUDE, LONGITUDE)
            .stack(point=(LATITUDE, LONGITUDE))
        )

    return xr.apply_ufunc(
        _energy_score_gram,
        flatten(forecast),
        flatten(truth),
        kwargs={"fair": fair},
        input_core_dims=[[member_dim, "point"], ["point"]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
