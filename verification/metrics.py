"""Ensemble metrics: plain functions on xarray objects with an explicit member dimension.

Each formula exists once. `ensemble_summary` is the per-point kernel of `wxens verify`: one
sort of each point's members gives the CRPS (fair and ECDF), the ensemble mean and variance,
the truth's rank, the outlier flag, the tail flags and reaches; `crps_ensemble` is a view on
it. `aggregation` averages its per-point values over regions and init times; the scores that
need the aggregated pieces (spread-skill ratios) take those means; `rank_counts`, the anomaly
correlation and the energy score reduce over the grid themselves. Everything stays lazy under
dask, and every dask task sees all members of its points (a member dimension split across
chunks is rechunked to one chunk). Formulas follow WeatherBench2/WeatherBench-X and
properscoring; tests/test_metrics.py checks them against properscoring, scoringrules and
closed forms.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Hashable, Sequence

import dask.array
import numpy as np
import xarray as xr
from wxens.verification.aggregation import LATITUDE, LONGITUDE, Region, region_weights
from wxens.verification.errors import ScoreError

MEMBER = "member"


def _members(forecast: xr.DataArray, member_dim: str) -> int:
    if member_dim not in forecast.dims:
        dims = ", ".join(map(str, forecast.dims))
        raise ScoreError(f"forecast has no {member_dim!r} dimension (it has {dims})")
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
    extra: Sequence[xr.DataArray] = (),
    **kwargs: object,
) -> xr.DataArray:
    """`kernel(members, [truth,] **kwargs)` at every point, lazily under dask.

    With `statistics` > 0 the kernel returns that many values per point, on a new last
    dimension `statistic`. `extra` inputs follow the truth (dims among the forecast's, less
    the member one). A member dimension split across dask chunks is first rechunked to one
    chunk.
    """
    if len(forecast.chunksizes.get(member_dim, ())) > 1:
        forecast = forecast.chunk({member_dim: -1})
    inputs = [forecast] if truth is None else [forecast, truth]
    inputs += list(extra)
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


def _break_ties(
    below: np.ndarray, ties: np.ndarray | int, keys: np.ndarray | None, seed: int
) -> np.ndarray:
    """`below + floor(U (ties + 1))`, a rank 0..M per point, U uniform on [0, 1) drawn from
    the point's key (`point_keys`) and `seed`, so that a point's rank is the same however the
    data are chunked, selected or split into inits."""
    if np.ndim(ties) == 0 and ties == 0:
        return below
    keys = np.zeros(np.shape(below), np.uint64) if keys is None else keys
    share = _uniform(_mix(keys ^ _mix(np.uint64(seed))))
    return below + np.floor(share * (ties + 1)).astype(np.int32)


def _mix(z: np.ndarray | np.uint64) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea and Flood 2014): a bijection of uint64 that
    spreads every input bit over the output. Written here: numpy's generators draw by position
    in an array, and a point's draw must follow the point, not its position."""
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the point
        z = np.asarray(z, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(z: np.ndarray) -> np.ndarray:
    """The top 53 bits of uint64 `z` as a float on [0, 1)."""
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def point_keys(field: xr.DataArray) -> xr.DataArray:
    """A uint64 per point of `field` from its coordinate values (positions where a dimension
    has no coordinate), mixed dimension by dimension (`_mix`): equal for the same point in any
    selection or chunking of the data. Lazy, chunked as `field`, when it is dask-backed.

    Example:
        >>> field = xr.DataArray(np.zeros((2, 3)), dims=("x", "y"), coords={"x": [5.0, 7.0]})
        >>> keys = point_keys(field)
        >>> bool(keys[1, 2] == point_keys(field.isel(x=[1]))[0, 2])
        True
    """
    key = xr.DataArray(np.uint64(0))
    for dim in field.dims:
        values = field[dim].values if dim in field.coords else np.arange(field.sizes[dim])
        if values.dtype.kind in "mM":
            values = values.astype("datetime64[ns]" if values.dtype.kind == "M" else "m8[ns]")
        if values.dtype.kind in "OUS":  # station ids: 8 bytes of each one's BLAKE2 digest
            digests = [hashlib.blake2b(str(v).encode(), digest_size=8).digest() for v in values]
            bits = np.frombuffer(b"".join(digests), dtype=np.uint64)
        else:
            bits = np.ascontiguousarray(values).astype(
                np.float64 if values.dtype.kind == "f" else values.dtype
            )
        coordinate = xr.DataArray(_mix(bits.view(np.uint64)), dims=dim)
        if dim in field.chunksizes:
            coordinate = coordinate.chunk({dim: field.chunksizes[dim]})
        key = xr.apply_ufunc(_mix, key ^ coordinate, dask="allowed")
    return key.transpose(*field.dims)


SUMMARY = (
    "crps_fair",
    "crps_ecdf",
    "mean",
    "variance",
    "squared_error",
    "rank",
    "outside",
    "tail_low",
    "tail_high",
    "reach_low",
    "reach_high",
    "missing",
)
"""The per-point statistics of `ensemble_summary`."""

_MOMENTS = {
    "crps_fair",
    "crps_ecdf",
    "mean",
    "variance",
    "squared_error",
    "reach_low",
    "reach_high",
}


def _summary_block(
    members: np.ndarray,
    truth: np.ndarray,
    keys: np.ndarray | None = None,
    seed: int = 0,
    tail_level: float = 0.01,
    names: Sequence[str] = SUMMARY,
) -> np.ndarray:
    """The statistics `names` of `ensemble_summary` from one sort of `d = x - y` (members on
    the last axis), stacked on a new last axis, as float64.

    With the sorted d(i), their median `d_h` and `c = d - d_h` (in float64, so that the sums
    below lose nothing to a bias much larger than the spread): `A = sum_i |d_i|`,
    `B = sum_i (2i - M - 1) c(i)` (which equals the same sum of d, the weights summing to 0),
    `S = sum_i c_i` and `Q = sum_i c_i^2` give

        CRPS = (A - B / k) / M          k = M - 1 (fair) or M (ECDF)
        mean = y + d_h + S / M          variance s^2 = (Q - S^2 / M) / (M - 1)

    The rank is `#{d < 0}` plus the random share of ties; outside is `d(1) > 0 or d(M) < 0`;
    the tails are `Q_d(p) > 0` and `Q_d(1 - p) < 0` (y beyond the members' p and 1 - p
    quantiles, interpolated linearly as numpy does), the reaches `(mean - x(1)) / s` and
    `(x(M) - mean) / s`. Only the statistics asked for are computed.
    """
    deviations = _sorted_deviations(members, truth)
    m = deviations.shape[-1]
    wanted = set(names)
    lowest, highest = deviations[..., 0].astype(np.float64), deviations[..., -1].astype(np.float64)
    scores: dict[str, np.ndarray] = {}
    if "rank" in wanted:
        below = (deviations < 0).sum(axis=-1, dtype=np.int32)
        zero = deviations == 0
        ties = zero.sum(axis=-1, dtype=np.int32) if zero.any() else 0  # ties are rare
        scores["rank"] = _break_ties(below, ties, keys, seed)
    if "outside" in wanted:
        scores["outside"] = (lowest > 0) | (highest < 0)
    if "tail_low" in wanted:
        scores["tail_low"] = _sorted_quantile(deviations, tail_level) > 0
    if "tail_high" in wanted:
        scores["tail_high"] = _sorted_quantile(deviations, 1 - tail_level) < 0
    if wanted & _MOMENTS:
        median = deviations[..., m // 2].astype(np.float64)
        centred = np.subtract(deviations, median[..., None], dtype=np.float64)
        ranked, total = np.moveaxis(centred @ _summary_weights(m), -1, 0)
        deviation_mean = median + total / m
        scores["mean"] = truth + deviation_mean
        scores["squared_error"] = deviation_mean**2
        with np.errstate(divide="ignore", invalid="ignore"):  # one member: no fair CRPS, variance
            if wanted & {"variance", "reach_low", "reach_high"}:
                squares = np.einsum("...i,...i->...", centred, centred)
                scores["variance"] = np.maximum(squares - total**2 / m, 0.0) / (m - 1)
                spread = np.sqrt(np.where(scores["variance"] > 0, scores["variance"], np.nan))
                scores["reach_low"] = (deviation_mean - lowest) / spread
                scores["reach_high"] = (highest - deviation_mean) / spread
            if wanted & {"crps_fair", "crps_ecdf"}:
                # |d| in place: the deviations' last use.
                absolute = np.add.reduce(np.abs(deviations, out=deviations), -1, dtype=np.float64)
                scores["crps_fair"] = (absolute - ranked / (m - 1)) / m
                scores["crps_ecdf"] = (absolute - ranked / m) / m
    missing = np.isnan(highest)  # NaNs sort last; a missing truth makes all NaN
    if "missing" in wanted:
        scores["missing"] = np.zeros(missing.shape)
        if missing.any():
            every = np.broadcast_to(members, (*missing.shape, m))[missing]
            scores["missing"][missing] = np.isnan(every).sum(axis=-1)
    out = np.stack(
        np.broadcast_arrays(*(scores[name] for name in names)), axis=-1, dtype=np.float64
    )
    if missing.any():
        for i, name in enumerate(names):
            if name == "rank":
                out[missing, i] = -1
            elif name != "missing":
                out[missing, i] = np.nan
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
    statistics: Sequence[str] = SUMMARY,
) -> xr.Dataset:
    """The per-point statistics of an ensemble against the truth, from one sort of its members.

    This is the kernel `wxens verify` runs; the other per-point scores are views on it. With
    members x_1..x_M, sorted x(1) <= ... <= x(M), truth y, and
    `S = sum_ij |x_i - x_j| = 2 sum_i (2i - M - 1) x(i)`, per point (field units unless said):

    - `crps_fair = mean_i |x_i - y| - S / (2 M (M - 1))` (NaN for one member) and
      `crps_ecdf = mean_i |x_i - y| - S / (2 M^2)`: the continuous ranked probability score,
      fair (Ferro 2014; unbiased for the ensemble's parent distribution, so ensembles of
      different sizes compare fairly) and of the members' ECDF (= `properscoring`'s). O(M log M)
      time, O(M) memory; the M x M matrix is never built;
    - `mean` (`xbar`) and `variance` (`s^2 = sum_i (x_i - xbar)^2 / (M - 1)`, units squared);
    - `squared_error`: `(xbar - y)^2` (units squared), the ensemble mean's;
    - `rank`: `#{x_i < y} + U`, with U uniform on `0..#{x_i = y}` drawn from `seed` and the
      point's coordinates (`point_keys`; Hamill 2001), 0..M; -1 where data are missing;
    - `outside`: 1 where y lies outside [x(1), x(M)], else 0; its mean is the outlier fraction,
      2/(M+1) for a calibrated ensemble;
    - `tail_low`, `tail_high`: 1 where y < Q_x(tail_level), y > Q_x(1 - tail_level) (linearly
      interpolated member quantiles, numpy's default);
    - `reach_low = (xbar - x(1)) / s`, `reach_high = (x(M) - xbar) / s` (unitless; NaN where
      s = 0);
    - `missing`: the number of NaN members.

    Where y or any member is NaN every statistic is NaN (`rank` -1) but `missing`. Each dask
    task sorts its members once; `statistics` picks the variables to compute (default all).
    A member dimension split across dask chunks is rechunked to one chunk.

    Example:
        >>> members = xr.DataArray([[0.0, 2.0]], dims=("point", "member"))
        >>> truth = xr.DataArray([1.0], dims="point")
        >>> summary = ensemble_summary(members, truth)
        >>> [float(summary[name][0]) for name in ("crps_ecdf", "crps_fair", "mean", "variance")]
        [0.5, 0.0, 1.0, 2.0]
        >>> int(summary["rank"][0]), float(summary["outside"][0])
        (1, 0.0)
    """
    m = _members(forecast, member_dim)
    statistics = tuple(statistics)
    unknown = [name for name in statistics if name not in SUMMARY]
    if unknown or not statistics:
        raise ScoreError(f"unknown statistic(s) {unknown}; choose from {', '.join(SUMMARY)}")
    stacked = _per_point(
        _summary_block,
        forecast,
        truth,
        member_dim,
        np.float64,
        len(statistics),
        extra=[point_keys(truth)] if "rank" in statistics else [],
        seed=seed,
        tail_level=tail_level,
        names=statistics,
    )
    summary = xr.Dataset({name: stacked[..., i] for i, name in enumerate(statistics)})
    if "rank" in summary:
        summary["rank"] = summary["rank"].astype(np.int64)
    summary.attrs["members"] = m
    return summary


MEAN_SUMMARY = ("crps_fair", "crps_ecdf", "mean", "variance", "squared_error", "outside")
"""The statistics `ensemble_summary_means` averages (besides the rank counts)."""


def ensemble_summary_means(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    reduce_dims: Sequence[str],
    weights: xr.DataArray | None = None,
    member_dim: str = MEMBER,
    seed: int = 0,
    statistics: Sequence[str] = ("crps_fair", "mean", "variance", "rank"),
) -> xr.Dataset:
    """`ensemble_summary` reduced over `reduce_dims` inside each dask block: one fused pass per
    block sorts each point's members once and returns only the block's weighted sums, so no
    per-point array enters the graph.

    For each statistic s of MEAN_SUMMARY asked for, the weighted mean `sum_j w_j s_j /
    sum_j w_j` over `reduce_dims` (NaN where a point is NaN, as `aggregation.regional_means`);
    for `rank`, `rank_counts`: the weighted count of cases of each rank 0..M (dimension
    `rank`, missing points left out), as `rank_counts` of the per-point ranks counts them.
    `weights` (default 1) broadcast against the truth, e.g. `aggregation.cell_area_weights`;
    units as in `ensemble_summary`. The spatial reduce dims are taken whole in each block
    (rechunked when split); the others (init times) are summed across blocks.

    Example:
        >>> members = xr.DataArray([[0.0, 2.0], [1.0, 5.0]], dims=("point", "member"))
        >>> truth = xr.DataArray([1.0, 3.0], dims="point")
        >>> means = ensemble_summary_means(members, truth, ["point"], statistics=("mean", "rank"))
        >>> float(means["mean"]), means["rank_counts"].values.tolist()
        (2.0, [0.0, 2.0, 0.0])
    """
    m = _members(forecast, member_dim)
    unknown = [name for name in statistics if name not in (*MEAN_SUMMARY, "rank")]
    if unknown or not statistics:
        raise ScoreError(f"unknown statistic(s) {unknown}; choose from {MEAN_SUMMARY} and rank")
    moments = [name for name in statistics if name != "rank"]
    ranks = "rank" in statistics
    weight = xr.ones_like(truth, dtype=np.float64) if weights is None else weights
    weight = weight.broadcast_like(truth).astype(np.float64)
    split = {
        dim
        for dim in reduce_dims
        if max(len(data.chunksizes.get(dim, ())) for data in (forecast, truth)) > 1
    }
    core = [dim for dim in truth.dims if dim in reduce_dims and dim not in split]
    if len(forecast.chunksizes.get(member_dim, ())) > 1:
        forecast = forecast.chunk({member_dim: -1})
    inputs = [forecast, truth, weight] + ([point_keys(truth)] if ranks else [])
    sums = xr.apply_ufunc(
        _summary_sums_block,
        *inputs,
        input_core_dims=[[*core, member_dim], *[core] * (len(inputs) - 1)],
        output_core_dims=[["summary_sum"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"summary_sum": len(moments) + 1 + (m + 1) * ranks}},
        kwargs={"core_axes": len(core), "names": tuple(moments), "ranks": ranks, "seed": seed},
    )
    sums = sums.sum([dim for dim in reduce_dims if dim in sums.dims], skipna=False)
    total = sums.isel(summary_sum=len(moments))
    means = {name: sums.isel(summary_sum=i) / total for i, name in enumerate(moments)}
    if ranks:
        counts = sums.isel(summary_sum=slice(len(moments) + 1, None)).rename(summary_sum="rank")
        means["rank_counts"] = counts.assign_coords(rank=np.arange(m + 1))
    return xr.Dataset(means)


def _summary_sums_block(
    members: np.ndarray,
    truth: np.ndarray,
    weights: np.ndarray,
    keys: np.ndarray | None = None,
    *,
    core_axes: int,
    names: tuple[str, ...],
    ranks: bool,
    seed: int,
) -> np.ndarray:
    """`ensemble_summary_means`'s kernel on one block, the points on the last `core_axes`
    axes (the members after them): the weighted sums of `names`, the weights' sum and, with
    `ranks`, the weighted rank counts, on a new last axis."""
    m = members.shape[-1]
    wanted = (*names, "rank") if ranks else names
    stats = _summary_block(members, truth, keys, seed, names=wanted)
    shape = stats.shape[:-1]
    leading = shape[: len(shape) - core_axes]
    points = math.prod(shape[len(shape) - core_axes :])
    stats = stats.reshape(*leading, points, len(wanted))
    flat_weights = np.broadcast_to(weights, shape).reshape(*leading, points)
    sums = np.einsum("...pn,...p->...n", stats[..., : len(names)], flat_weights)
    parts = [sums, flat_weights.sum(-1)[..., None]]
    if ranks:
        rank = stats[..., -1].astype(np.int64)
        parts.append(_count_block(rank, flat_weights, 1, m + 1).reshape(*leading, m + 1))
    return np.concatenate(parts, axis=-1)


def crps_ensemble(
    forecast: xr.DataArray, truth: xr.DataArray, member_dim: str = MEMBER, fair: bool = True
) -> xr.DataArray:
    """Continuous ranked probability score of an ensemble, per point, in the field's units:
    `crps_fair` (default) or `crps_ecdf` of `ensemble_summary`, computed alone.

        CRPS_ecdf = mean_i |x_i - y| - S / (2 M^2)
        CRPS_fair = mean_i |x_i - y| - S / (2 M (M - 1)),    S = sum_ij |x_i - x_j|

    Example:
        >>> members = xr.DataArray([[0.0, 2.0]], dims=("point", "member"))
        >>> truth = xr.DataArray([1.0], dims="point")
        >>> float(crps_ensemble(members, truth, fair=False)[0])
        0.5
        >>> float(crps_ensemble(members, truth)[0])
        0.0
    """
    m = _members(forecast, member_dim)
    if fair and m < 2:
        raise ScoreError(f"the fair CRPS needs 2 or more members, got {m}")
    name = "crps_fair" if fair else "crps_ecdf"
    return ensemble_summary(forecast, truth, member_dim, statistics=(name,))[name]


def weighted_mean(
    data: xr.DataArray,
    reduce_dims: Hashable | Sequence[Hashable] | None = None,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """`data` averaged over `reduce_dims` (None: every dimension), `sum_j w_j d_j / sum_j w_j`
    with `weights` (e.g. `aggregation.cell_area_weights`), a plain mean without; NaNs
    skipped. The `reduce_dims`/`weights` arguments of the `scores` package.

    Example:
        >>> data = xr.DataArray([[1.0, 3.0], [5.0, 7.0]], dims=("init_time", "point"))
        >>> weighted_mean(data, "point", xr.DataArray([3.0, 1.0], dims="point")).values.tolist()
        [1.5, 5.5]
    """
    if reduce_dims is None:
        dims = list(data.dims)
    elif isinstance(reduce_dims, str) or not isinstance(reduce_dims, Sequence):
        dims = [reduce_dims]
    else:
        dims = list(reduce_dims)
    return data.mean(dims) if weights is None else data.weighted(weights).mean(dims)


CHAINING = {"upper": np.maximum, "lower": np.minimum}
"""The chaining functions of the tail weights: v(z) = max(z, t) weights the values above t,
v(z) = min(z, t) those below."""


def crps_threshold_weighted(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    threshold: float | xr.DataArray,
    tail: str = "upper",
    member_dim: str = MEMBER,
    fair: bool = True,
    reduce_dims: Hashable | Sequence[Hashable] | None = (),
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Threshold-weighted CRPS of an ensemble: the CRPS of the values beyond a threshold t
    only, in the field's units (0 when the truth and every member lie on the other side).

    .. math::
        \\mathrm{twCRPS}(F, y) = \\int (F(z) - \\mathbb{1}[y \\le z])^2 w(z)\\,dz
        = \\mathrm{CRPS}(v(X), v(y))

    with the weight w(z) = 1[z > t] and its chaining function v(z) = max(z, t) for
    `tail="upper"` (w(z) = 1[z < t], v(z) = min(z, t) for "lower"): the CRPS of the members
    and the truth sent through v, fair (default) or ECDF as in `crps_ensemble`. `threshold`
    broadcasts (a `quantile` dimension of climate thresholds gives one score per level).
    Per point by default (`reduce_dims=()`); `reduce_dims` None averages over every
    dimension, with `weights` as in `weighted_mean`.

    Reference: Allen, S., Ginsbourger, D. and Ziegel, J. (2023). Evaluating forecasts for
    high-impact events using transformed kernel scores. SIAM/ASA Journal on Uncertainty
    Quantification, 11(3), 906-940 (the chaining function); Gneiting, T. and Ranjan, R. (2011),
    Journal of Business and Economic Statistics, 29(3), 411-422 (the weighted CRPS).

    Example:
        >>> members = xr.DataArray([[0.0, 2.0, 4.0]], dims=("point", "member"))
        >>> truth = xr.DataArray([3.0], dims="point")
        >>> # max(x, 1) = 1, 2, 4 against 3: mean |x - y| 4/3, less 12 / (2 * 3 * 2)
        >>> round(float(crps_threshold_weighted(members, truth, 1.0)[0]), 12)
        0.333333333333
    """
    if tail not in CHAINING:
        raise ScoreError(f"tail must be one of {list(CHAINING)}, got {tail!r}")
    chain = CHAINING[tail]
    per_point = crps_ensemble(
        chain(forecast, threshold), chain(truth, threshold), member_dim, fair=fair
    )
    return per_point if reduce_dims == () else weighted_mean(per_point, reduce_dims, weights)


def _crps_sorted(members: np.ndarray, truth: np.ndarray, fair: bool) -> np.ndarray:
    """`crps_ensemble`'s kernel on numpy arrays, members on the last axis, as float64."""
    name = "crps_fair" if fair else "crps_ecdf"
    return _summary_block(members, truth, names=(name,))[..., 0]


def spread_skill_ratio(
    mean_variance: xr.DataArray, mean_squared_error: xr.DataArray, members: int
) -> xr.DataArray:
    """`sqrt((M + 1) / M) * sqrt(mean ensemble variance) / sqrt(mean squared error of the mean)`.

    Takes area- and init-time-averaged `variance` and `(mean - y)^2` of `ensemble_summary`.
    Unitless; 1 for a calibrated ensemble (Fortin et al. 2014, the sqrt((M+1)/M) correction for
    finite ensembles).

    Example:
        >>> float(spread_skill_ratio(xr.DataArray(1.0), xr.DataArray(1.2), members=5))
        1.0
    """
    return np.sqrt((members + 1) / members * mean_variance / mean_squared_error)


def spread_skill_ratio_debiased(
    mean_variance: xr.DataArray, mean_unbiased_squared_error: xr.DataArray
) -> xr.DataArray:
    """`sqrt(mean ensemble variance / mean unbiased squared error of the mean)`, unitless.

    The unbiased squared error is `(xbar - y)^2 - s^2 / M` per point (WeatherBench-X's
    `UnbiasedEnsembleMeanSquaredError`); the ratio is WeatherBench-X's `UnbiasedSpreadSkillRatio`:
    both terms are unbiased for their infinite-ensemble values, so ensembles of any size
    compare directly.

    Example:
        >>> float(spread_skill_ratio_debiased(xr.DataArray(1.0), xr.DataArray(0.25)))
        2.0
    """
    return np.sqrt(mean_variance / mean_unbiased_squared_error)


def anomaly_correlation(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    climatology: xr.DataArray,
    region: str | Region = "global",
    member_dim: str = MEMBER,
) -> xr.DataArray:
    """Anomaly correlation of the ensemble mean over the grid points of `region`, unitless.

    `ACC = sum_j w_j f'_j o'_j / sqrt(sum_j w_j f'^2_j * sum_j w_j o'^2_j)`, with anomalies
    `f' = xbar - c`, `o' = y - c` from the climatology `c` and the region's cell-area weights
    `w` (WeatherBench2's uncentred ACC). A `forecast` without `member_dim` is taken as it is (a
    deterministic forecast, or an ensemble mean already computed); with it, its
    `ensemble_summary` mean. One value per remaining dimension (init, lead); average it over
    init times afterwards.

    Example:
        >>> grid = {"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]}
        >>> truth = xr.DataArray([[1.0, -1.0], [2.0, 0.0]], dims=list(grid), coords=grid)
        >>> float(anomaly_correlation(2 * truth, truth, xr.zeros_like(truth)))
        1.0
    """
    if member_dim in forecast.dims:
        forecast = ensemble_summary(forecast, truth, member_dim, statistics=("mean",))["mean"]
    forecast_anomaly = forecast - climatology
    truth_anomaly = truth - climatology
    weights = region_weights(truth[LATITUDE], region, truth[LONGITUDE])

    def weighted_sum(field: xr.DataArray) -> xr.DataArray:
        return (field * weights).sum((LATITUDE, LONGITUDE), skipna=False)

    covariance = weighted_sum(forecast_anomaly * truth_anomaly)
    return covariance / np.sqrt(weighted_sum(forecast_anomaly**2) * weighted_sum(truth_anomaly**2))


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
    Counted with `np.bincount` per dask block, then summed across blocks. Their ratio to their
    sum is the rank histogram: flat at 1/(M+1) for a calibrated ensemble, U-shaped for an
    under-dispersive one (Hamill 2001).

    Example:
        >>> ranks = xr.DataArray([0, 2, 2, -1], dims="point")
        >>> rank_counts(ranks, members=2, dims=["point"]).values.tolist()
        [1.0, 0.0, 2.0]
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


PIT_BIN = "pit_bin"


def _signed_square(z: xr.DataArray) -> xr.DataArray:
    return z * abs(z)


def pit_from_rank_histogram(
    frequencies: xr.DataArray, bins: int = 10, rank_dim: str = "rank"
) -> xr.Dataset:
    """The probability integral transform (PIT) of an ensemble, from its rank histogram.

    Under the members' ECDF the truth's PIT is k/M, with k its rank (the members below it),
    so the PIT distribution of a set of cases puts the rank frequency f_k (`rank_counts`
    over their sum) at k/M:

    .. math:: F(u) = \\sum_{k \\le u M} f_k

    Returns, unitless:

    - `pit_histogram` along `pit_bin` (coordinate: the bin centres): F's mass in the bins
      [0, 1/B], (1/B, 2/B], ..., (1 - 1/B, 1] (the `scores` package's
      `Pit.hist_values(B, right=True)`);
    - `pit_alpha`: the distance from uniform, `int_0^1 |F(u) - u| du` (Renard et al. 2010's
      alpha score, negative orientation: 0 to 0.5, 0 for a uniform PIT);
    - `pit_mean`, `sum_k f_k k / M`: 0.5 when unbiased, larger when the truth lies above the
      members; `pit_variance`: 1/12 for a uniform PIT, larger when the ensemble is
      under-dispersive.

    A finite ensemble's PIT is never exactly uniform: a calibrated ensemble of M members has
    f_k = 1 / (M + 1) at the M + 1 points k/M. Ties (a truth equal to members) are broken at
    random in the ranks, where `scores` spreads them uniformly: the same in expectation.

    Reference: Gneiting, T., Balabdaoui, F. and Raftery, A. E. (2007). Probabilistic forecasts,
    calibration and sharpness. JRSS B, 69(2), 243-268; Renard, B. et al. (2010), Water Resources
    Research, 46(5), W05521 (the alpha score).

    Example:
        >>> ranks = xr.DataArray([0.5, 0.0, 0.5], dims="rank")  # half the truths below all
        >>> pit = pit_from_rank_histogram(ranks, bins=2)
        >>> pit["pit_histogram"].values.tolist(), float(pit["pit_alpha"])
        ([0.5, 0.5], 0.25)
    """
    members = frequencies.sizes[rank_dim] - 1
    if members < 1 or bins < 1:
        raise ScoreError(f"a PIT needs 1+ members and 1+ bins, got {members=}, {bins=}")
    f = frequencies / frequencies.sum(rank_dim)
    k = xr.DataArray(np.arange(members + 1), dims=[rank_dim])
    # F at the bin edges j / B, in integers: k / M <= j / B when k B <= j M.
    edges = xr.DataArray(np.arange(bins + 1), dims=[PIT_BIN])
    cdf = f.where(k * bins <= edges * members, 0.0).sum(rank_dim)
    first = xr.DataArray(np.arange(bins) == 0, dims=[PIT_BIN])  # [0, 1/B] holds F(0) too
    below = cdf.isel({PIT_BIN: slice(0, -1)}).where(~first, 0.0)
    histogram = (cdf.isel({PIT_BIN: slice(1, None)}) - below).assign_coords(
        {PIT_BIN: (np.arange(bins) + 0.5) / bins}
    )
    # F is the constant C_k = f_0 + ... + f_k on [k/M, (k+1)/M): int_a^b |x - c| dx =
    # (s(b - c) - s(a - c)) / 2 with s(z) = z |z|.
    steps = f.cumsum(rank_dim).isel({rank_dim: slice(0, members)})
    left = k.isel({rank_dim: slice(0, members)}) / members
    alpha = (_signed_square(left + 1 / members - steps) - _signed_square(left - steps)) / 2
    position = k / members
    mean = (f * position).sum(rank_dim)
    return xr.Dataset(
        {
            "pit_histogram": histogram,
            "pit_alpha": alpha.sum(rank_dim),
            "pit_mean": mean,
            "pit_variance": (f * position**2).sum(rank_dim) - mean**2,
        }
    )


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
    region: str | Region = "global",
    member_dim: str = MEMBER,
    fair: bool = True,
) -> xr.DataArray:
    """Energy score of the ensemble over the grid points of `region`, in the field's units.

    `ES = mean_i ||x_i - y|| - sum_ij ||x_i - x_j|| / (2 M (M - 1))` (fair; `2 M^2` for the
    ECDF form), with the area-weighted norm `||v|| = sqrt(sum_j w_j v_j^2 / sum_j w_j)` and
    the region's weights w (`aggregation.region_weights`), so a spatially uniform error e
    scores |e| (Gneiting & Raftery 2007). The pairwise term uses the members' Gram matrix:
    O(M^2 N) time, O(M^2 + M N) memory per (init, lead). With one grid point it is the CRPS.

    Example:
        >>> grid = {"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]}
        >>> truth = xr.DataArray(np.zeros((2, 2)), dims=list(grid), coords=grid)
        >>> members = xr.concat([truth + 1, truth + 3], dim="member")
        >>> float(energy_score(members, truth, fair=False))  # mean |e| 2, less 2 * 2 / 8
        1.5
    """
    m = _members(forecast, member_dim)
    if fair and m < 2:
        raise ScoreError(f"the fair energy score needs 2 or more members, got {m}")
    weights = region_weights(truth[LATITUDE], region, truth[LONGITUDE])
    weights = (weights * xr.ones_like(truth[LONGITUDE], dtype=np.float64)).transpose(
        LATITUDE, LONGITUDE
    )
    # No work on the rows outside the region; zero weights elsewhere add nothing to the norms.
    inside = {LATITUDE: np.flatnonzero((weights.values > 0).any(axis=1))}
    weights = weights.isel(inside)
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
