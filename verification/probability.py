"""Threshold exceedance for ensembles: events, contingency tables, Brier score, reliability, ROC.

An *event* is "the value exceeds a threshold" (strictly greater); thresholds are usually
climatological quantiles of the truth at each grid point (`climatological_thresholds`). Events
are 1.0 where they happen, 0.0 where not and NaN where the truth or the threshold is missing.

An M-member ensemble forecasts one of the M + 1 probabilities k/M (`members_above` counts k),
so the table n(k, o) of how often each (k, event) pair occurs holds everything the Brier
score, the reliability diagram and the ROC area need: `contingency_table` counts it in one
cheap pass (O(points)), and `brier_score_from_table`, `reliability_from_table` and
`roc_auc_from_table` finish it. Tables of disjoint samples add, and area weights act on
tables counted per latitude (or per grid point): this is how `wxens verify` scores large
stores. A continuous score such as the EFI is binned into categories first.

Written here rather than taken from scikit-learn or `scores`: both are test references only
(pyproject's `dev` extra), which keeps the tests that compare against them independent.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr
from scipy.optimize import isotonic_regression
from wxens.verification.aggregation import ordered_sum
from wxens.verification.errors import ScoreError

Dims = Hashable | Sequence[Hashable]

PROBABILITY_BIN = "probability_bin"
VALUE = "value"
OUTCOME = "outcome"


def exceeds(data: xr.DataArray, threshold: float | xr.DataArray) -> xr.DataArray:
    """Binary event `data > threshold`: 1.0 where it happens, 0.0 where not, NaN where missing.

    .. math:: o = \\mathbb{1}[y > t]

    Unitless. The threshold broadcasts: a threshold with a `quantile` dimension (from
    `climatological_thresholds`) gives one event per quantile.

    Reference: Wilks, D. S. (2019). Statistical Methods in the Atmospheric Sciences, 4th ed.,
    section 9.4 (probability forecasts for discrete predictands).

    Example:
        >>> exceeds(xr.DataArray([0.5, 2.0, np.nan]), 1.0).values
        array([ 0.,  1., nan])
    """
    threshold = xr.DataArray(threshold)
    return (data > threshold).where(data.notnull() & threshold.notnull())


def members_above(
    forecast: xr.DataArray, threshold: float | xr.DataArray, member_dim: str = "member"
) -> xr.DataArray:
    """How many members exceed the threshold (strictly), per point: the forecast category
    k = 0..M of the probability k/M; -1 where any member is NaN.

    .. math:: k = \\sum_{i=1}^{M} \\mathbb{1}[x_i > t]

    Example:
        >>> members = xr.DataArray([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0]], dims=("x", "member"))
        >>> members_above(members, 1.5).values.tolist()
        [2, -1]
    """
    if member_dim not in forecast.dims:
        raise ScoreError(f"forecast has no {member_dim!r} dimension (it has {forecast.dims})")
    complete = forecast.notnull().all(member_dim)
    return (forecast > threshold).sum(member_dim).where(complete, -1)


def climatological_thresholds(
    truth: xr.DataArray, quantiles: float | Sequence[float], dim: Dims = "time"
) -> xr.DataArray:
    """Per-point quantiles of a truth climate along `dim`, the usual exceedance thresholds.

    .. math:: t_q = Q_y(q) \\quad \\text{(linear interpolation, Hyndman and Fan type 7)}

    Units of `truth`; a `quantile` dimension holds the levels `quantiles` (in [0, 1]). NaNs in
    the climate sample are skipped.

    Reference: Hyndman, R. J. and Fan, Y. (1996). Sample quantiles in statistical packages.
    The American Statistician, 50(4), 361-365.
    """
    if not isinstance(dim, str):
        return truth.quantile(quantiles, dim=dim)
    levels = np.atleast_1d(np.asarray(quantiles, dtype=float))
    if len(truth.chunksizes.get(dim, ())) > 1:
        truth = truth.chunk({dim: -1})
    thresholds = xr.apply_ufunc(
        _nan_quantiles,
        truth,
        input_core_dims=[[dim]],
        output_core_dims=[["quantile"]],
        kwargs={"levels": levels},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"quantile": levels.size}},
    )
    thresholds = thresholds.assign_coords(quantile=levels).transpose("quantile", ...)
    return thresholds.squeeze("quantile", drop=False) if np.ndim(quantiles) == 0 else thresholds


def _nan_quantiles(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """numpy's linear (type 7) quantiles over the last axis, NaNs skipped: one sort of all
    rows, then each row's own count. Written here because `np.nanquantile` falls back to a
    Python loop over the rows as soon as one row holds a NaN (per-init climate samples are
    padded with NaN), hundreds of times slower; the interpolation is numpy's `_lerp`."""
    ordered = np.sort(values, axis=-1)  # NaNs last
    count = np.count_nonzero(~np.isnan(values), axis=-1)[..., None]
    position = (count - 1) * levels
    low = np.clip(np.floor(position), 0, None).astype(np.intp)
    high = np.minimum(low + 1, np.maximum(count - 1, 0))
    below = np.take_along_axis(ordered, low, axis=-1)
    above = np.take_along_axis(ordered, high, axis=-1)
    weight = position - low
    step = above - below
    result = np.where(weight >= 0.5, above - step * (1 - weight), below + step * weight)
    return np.where(count > 0, result, np.nan)


def _bin_edges(bins: int | Sequence[float]) -> np.ndarray:
    """Probability bin edges from 0 to 1: `bins` equal bins, or the edges given."""
    # k / bins, not linspace: an ensemble probability j / M on an edge must equal it exactly
    edges = np.arange(bins + 1) / bins if isinstance(bins, int) else np.asarray(bins, float)
    if edges.size < 2 or edges[0] != 0 or edges[-1] != 1 or np.any(np.diff(edges) <= 0):
        raise ScoreError(f"probability bins must be increasing edges from 0 to 1, got {edges}")
    return edges


def _joint_counts(
    index: np.ndarray, event: np.ndarray, weights: np.ndarray, values: int
) -> np.ndarray:
    """Weighted n(value, outcome) over the last axis, for every leading index; skips NaN
    events."""
    index, event, weights = np.broadcast_arrays(index, event, weights)
    rows = int(np.prod(index.shape[:-1]))
    valid = ~np.isnan(event) & (index >= 0) & (index < values)
    row = np.arange(rows).reshape(index.shape[:-1])[..., None]
    code = (row * values + index) * 2 + np.nan_to_num(event).astype(np.int64)
    counts = np.bincount(code[valid], weights=weights[valid], minlength=rows * values * 2)
    return counts.reshape(*index.shape[:-1], values, 2).astype(np.float64)


def contingency_table(
    index: xr.DataArray,
    event: xr.DataArray,
    values: int,
    dims: Sequence[Hashable],
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """`n(v, o) = #{points over dims: index = v, event = o}`, dimensions `value` and `outcome`;
    with `weights` (broadcast against `index`), the sum of the points' weights instead.

    `index` is an integer forecast category in 0..values-1 (e.g. `members_above`; other values,
    such as -1 for missing members, are left out); `event` is 1/0 (NaN: left out). Counted
    with one `np.bincount` per dask block over the last of `dims` (rechunked to one chunk when
    split), then summed over the others. Weight tables by multiplying (area weights per
    latitude, for example) and summing.

    Example:
        >>> index = xr.DataArray([0, 2, 2, 1, -1], dims="point")
        >>> event = xr.DataArray([0.0, 1.0, 0.0, 1.0, 1.0], dims="point")
        >>> contingency_table(index, event, 3, ["point"]).values.tolist()
        [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    """
    *outer, inner = list(dims)
    for name, data in (("index", index), ("event", event)):
        if inner not in data.dims:
            raise ScoreError(f"{name} has no {inner!r} dimension to count over: {data.dims}")
        if len(data.chunksizes.get(inner, ())) > 1:
            data = data.chunk({inner: -1})
        if name == "index":
            index = data
        else:
            event = data
    weights = xr.DataArray(1.0) if weights is None else weights
    if inner not in weights.dims:
        weights = weights.expand_dims({inner: index.sizes[inner]})
    table = xr.apply_ufunc(
        _joint_counts,
        index,
        event,
        weights,
        kwargs={"values": values},
        input_core_dims=[[inner], [inner], [inner]],
        output_core_dims=[[VALUE, OUTCOME]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {VALUE: values, OUTCOME: 2}},
    )
    for dim in outer:
        table = ordered_sum(table, dim)
    return table


def brier_score_from_table(table: xr.DataArray, probabilities: xr.DataArray) -> xr.DataArray:
    """Brier score, `BS = sum_v,o n(v, o) (p_v - o)^2 / sum_v,o n(v, o)`, unitless, 0 perfect.

    The mean of the per-point `(p - o)^2` over the cases of the table (Brier 1950);
    `probabilities` gives p_v along `value` (k/M for `members_above`).

    Example:
        >>> table = xr.DataArray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dims=("value", "outcome"))
        >>> p = xr.DataArray([0.0, 0.5, 1.0], dims="value")
        >>> float(brier_score_from_table(table, p))  # (0 + 0.25 + 1 + 0) / 4
        0.3125
    """
    outcome = xr.DataArray([0.0, 1.0], dims=[OUTCOME])
    return (table * (probabilities - outcome) ** 2).sum((VALUE, OUTCOME)) / table.sum(
        (VALUE, OUTCOME)
    )


def reliability_from_table(
    table: xr.DataArray, probabilities: xr.DataArray, bins: int | Sequence[float] = 10
) -> xr.Dataset:
    """Reliability diagram: mean forecast probability and observed frequency in probability bins.

    With n the (weighted) cases of the table and the values v in bin k:

    .. math::
        n_k = \\sum_{v \\in k} n_v, \\quad
        \\bar p_k = \\frac{1}{n_k} \\sum_{v \\in k} n_v p_v, \\quad
        \\bar o_k = \\frac{1}{n_k} \\sum_{v \\in k} n(v, 1)

    Returns a Dataset along `probability_bin` (coordinate: bin centres) with
    `forecast_probability` (p̄, unitless), `observed_frequency` (ō, unitless, NaN in empty
    bins) and `count` (n). `bins` is a number of equal bins on [0, 1] or the edges from 0 to 1;
    bins are closed on the left, the last also on the right (Wilks 2019, section 9.4; Bröcker
    and Smith 2007).

    Example:
        >>> table = xr.DataArray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dims=("value", "outcome"))
        >>> p = xr.DataArray([0.0, 0.5, 1.0], dims="value")
        >>> diagram = reliability_from_table(table, p, bins=2)
        >>> diagram["observed_frequency"].values.tolist(), diagram["count"].values.tolist()
        ([0.0, 0.6666666666666666], [1.0, 3.0])
    """
    edges = _bin_edges(bins)
    bin_of_value = np.clip(np.digitize(probabilities.values, edges[1:-1]), 0, edges.size - 2)
    # value -> bin as a 0/1 matrix: the sums per bin are one product, lazy and chunk-friendly
    # (a groupby splits dask chunks by group), and empty bins come out 0.
    in_bin = bin_of_value[:, None] == np.arange(edges.size - 1)[None, :]
    in_bin = xr.DataArray(in_bin.astype(float), dims=[VALUE, PROBABILITY_BIN])
    cases = table.sum(OUTCOME)

    def by_bin(per_value: xr.DataArray) -> xr.DataArray:
        return xr.dot(per_value, in_bin, dim=VALUE)

    count = by_bin(cases)
    nonempty = count.where(count > 0)
    diagram = xr.Dataset(
        {
            "forecast_probability": by_bin(cases * probabilities) / nonempty,
            "observed_frequency": by_bin(table.sel({OUTCOME: 1})) / nonempty,
            "count": count,
        }
    )
    return diagram.assign_coords({PROBABILITY_BIN: (edges[:-1] + edges[1:]) / 2})


def roc_auc_from_table(table: xr.DataArray) -> xr.DataArray:
    """Area under the ROC curve from a table whose `value` orders the forecasts, unitless.

    `AUC = sum_v n(v, 1) (N0(< v) + n(v, 0) / 2) / (N1 N0)`, with N1, N0 the (weighted)
    events and non-events and N0(< v) the non-events forecast below v: the Mann-Whitney form
    of the trapezoidal area under the ROC curve through every threshold, ties counted one half
    (Hanley and McNeil 1982; Mason and Graham 2002). 1 is perfect, 0.5 no skill; NaN without
    events or without non-events.

    Example:
        >>> table = xr.DataArray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dims=("value", "outcome"))
        >>> float(roc_auc_from_table(table))  # pairs (event, non-event): 1 + 1 + 0 + 1/2 of 4
        0.625
    """
    events, non_events = table.sel({OUTCOME: 1}, drop=True), table.sel({OUTCOME: 0}, drop=True)
    below = non_events.cumsum(VALUE) - non_events
    pairs = events.sum(VALUE) * non_events.sum(VALUE)
    return (events * (below + non_events / 2)).sum(VALUE) / pairs.where(pairs > 0)


def brier_score_fair_from_table(table: xr.DataArray, members: int) -> xr.DataArray:
    """Fair Brier score of an M-member ensemble from its table n(k, o) (k = `members_above`),
    unitless, 0 perfect:

    .. math::
        \\mathrm{BS_f} = \\frac{1}{N} \\sum_{k, o} n(k, o) \\left[\\left(\\frac{k}{M} - o
        \\right)^2 - \\frac{k (M - k)}{M^2 (M - 1)}\\right]

    The Brier score of the members' fraction less its sampling excess, so its expectation is
    that of the ensemble with infinitely many members drawn like these: ensembles of any size
    compare fairly. With one member, the plain Brier score (the `scores` package's
    `brier_score_for_ensemble(fair_correction=True)` does the same).

    Reference: Ferro, C. A. T. (2014). Fair scores for ensemble forecasts. Quarterly Journal of
    the Royal Meteorological Society, 140(683), 1917-1923.

    Example:
        >>> table = xr.DataArray([[0.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dims=("value", "outcome"))
        >>> float(brier_score_fair_from_table(table, 2))  # (1/2 - 1)^2 - 1 * 1 / (4 * 1)
        0.0
    """
    probabilities = xr.DataArray(np.arange(members + 1) / members, dims=[VALUE])
    plain = brier_score_from_table(table, probabilities)
    if members < 2:
        return plain
    k = np.arange(members + 1)
    excess = xr.DataArray(k * (members - k) / (members**2 * (members - 1)), dims=[VALUE])
    cases = table.sum(OUTCOME)
    return plain - (cases * excess).sum(VALUE) / cases.sum(VALUE)


COST_LOSS_RATIO = "cost_loss_ratio"
COST_LOSS_RATIOS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
"""The default users of the relative economic value: cost-loss ratios from 1 % to 99 %."""


def checked_cost_loss_ratios(cost_loss_ratios: Sequence[float]) -> np.ndarray:
    """The ratios as an array; a ScoreError unless all lie strictly between 0 and 1."""
    ratios = np.asarray(cost_loss_ratios, dtype=float)
    if ratios.ndim != 1 or ratios.size == 0 or ((ratios <= 0) | (ratios >= 1)).any():
        raise ScoreError(f"cost-loss ratios must lie strictly between 0 and 1, got {ratios}")
    return ratios


def relative_economic_value_from_table(
    table: xr.DataArray, cost_loss_ratios: Sequence[float]
) -> xr.DataArray:
    """Relative economic value of the forecast for users of cost-loss ratio α, unitless, from
    its table n(v, o) (forecast categories v ordered, e.g. k = `members_above`):

    .. math::
        \\mathrm{REV}_j(\\alpha) = \\frac{\\min(\\alpha, \\bar o) - F_j \\alpha (1 - \\bar o)
        + H_j \\bar o (1 - \\alpha) - \\bar o}{\\min(\\alpha, \\bar o) - \\bar o \\alpha},
        \\quad \\mathrm{REV}(\\alpha) = \\max_{j \\ge 1} \\mathrm{REV}_j(\\alpha)

    A user protects (cost C) whenever the forecast reaches category j (probability j/M) to
    avoid the loss L of an unprotected event, α = C/L; H_j and F_j are the hit and false-alarm
    rates of that decision and ō the events' base rate. REV is the share of the saving of a
    perfect forecast over the climatological strategy (always or never protect) that the
    forecast achieves: 1 perfect, 0 no better than climate, negative worse; the maximum over
    j is the envelope of the best threshold for each user. Along `cost_loss_ratio`; NaN
    without events or without non-events.

    Reference: Richardson, D. S. (2000). Skill and relative economic value of the ECMWF
    ensemble prediction system. QJRMS, 126(563), 649-667; the `scores` package's
    `relative_economic_value` with probability thresholds j/M (act when p >= j/M).

    Example:
        >>> table = xr.DataArray([[3.0, 0.0], [0.0, 1.0]], dims=("value", "outcome"))
        >>> relative_economic_value_from_table(table, [0.1, 0.5]).values.tolist()  # perfect
        [1.0, 1.0]
    """
    ratios = checked_cost_loss_ratios(cost_loss_ratios)
    alpha = xr.DataArray(ratios, dims=[COST_LOSS_RATIO], coords={COST_LOSS_RATIO: ratios})
    events, non_events = table.sel({OUTCOME: 1}, drop=True), table.sel({OUTCOME: 0}, drop=True)

    def at_or_above(counts: xr.DataArray) -> xr.DataArray:
        """Cases forecast in category j or above, j = 1..V-1 (the user's protective actions)."""
        reverse = {VALUE: slice(None, None, -1)}
        return counts.isel(reverse).cumsum(VALUE).isel(reverse).isel({VALUE: slice(1, None)})

    n_events, n_non_events = events.sum(VALUE), non_events.sum(VALUE)
    hit_rate = at_or_above(events) / n_events.where(n_events > 0)
    false_alarm_rate = at_or_above(non_events) / n_non_events.where(n_non_events > 0)
    base_rate = n_events / (n_events + n_non_events)
    climate = xr.where(alpha < base_rate, alpha, base_rate)
    saved = (
        climate
        - false_alarm_rate * alpha * (1 - base_rate)
        + hit_rate * base_rate * (1 - alpha)
        - base_rate
    )
    return (saved / (climate - base_rate * alpha)).max(VALUE)


CORP_DECOMPOSITION = ("miscalibration", "discrimination", "uncertainty")


def corp_reliability_from_table(
    table: xr.DataArray,
    probabilities: xr.DataArray,
    resamples: int = 100,
    level: float = 0.9,
    seed: int = 0,
) -> xr.Dataset:
    """CORP reliability diagram of the table n(v, o) of forecast probabilities p_v, with
    consistency bands and the Brier score's decomposition, all unitless.

    The recalibrated probability at each p_v is the isotonic (non-decreasing) regression of
    the outcomes on the forecast probabilities, weighted by the cases (pool-adjacent-
    violators, `scipy.optimize.isotonic_regression` of the observed frequencies n(v, 1) / n_v
    with weights n_v): `corp_observed_frequency` along `value` (NaN where no case). Unlike
    binned diagrams it needs no choice of bins, and it is optimal: its Brier score
    decomposes exactly,

    .. math:: \\mathrm{BS} = \\mathrm{MCB} - \\mathrm{DSC} + \\mathrm{UNC}

    with MCB = BS(p) - BS(recalibrated) (`corp_miscalibration`), DSC = BS(ō) -
    BS(recalibrated) (`corp_discrimination`) and UNC = ō (1 - ō) (`corp_uncertainty`), ō the
    base rate. `corp_band_low` and `corp_band_high` bound the central `level` share of the
    recalibrated probabilities of `resamples` outcome sets drawn as calibration would have
    them (n_v Bernoulli(p_v) trials at each value, n_v rounded, at least 1): a curve outside
    the band is evidence of miscalibration. Cases are taken as independent, so on correlated
    grid points the band is too narrow. `resamples=0`: no band (NaN).

    Reference: Dimitriadis, T., Gneiting, T. and Jordan, A. I. (2021). Stable reliability
    diagrams for probabilistic classifiers. PNAS, 118(8), e2016191118.

    Example:
        >>> table = xr.DataArray([[3.0, 1.0], [1.0, 3.0]], dims=("value", "outcome"))
        >>> corp = corp_reliability_from_table(table, xr.DataArray([0.0, 1.0], dims="value"))
        >>> corp["corp_observed_frequency"].values.tolist(), float(corp["corp_miscalibration"])
        ([0.25, 0.75], 0.0625)
    """
    if not 0 < level < 1 or resamples < 0:
        raise ScoreError(f"CORP bands need 0 < level < 1 and resamples >= 0, got {level=}")
    names = ("observed_frequency", "band_low", "band_high", *CORP_DECOMPOSITION)
    results = xr.apply_ufunc(
        _corp_rows,
        table.compute(),
        kwargs={
            "probabilities": np.asarray(probabilities.values, dtype=float),
            "resamples": resamples,
            "level": level,
            "seed": seed,
        },
        input_core_dims=[[VALUE, OUTCOME]],
        output_core_dims=[[VALUE], [VALUE], [VALUE], [], [], []],
    )
    return xr.Dataset({f"corp_{name}": result for name, result in zip(names, results, strict=True)})


def _corp_rows(
    counts: np.ndarray, probabilities: np.ndarray, resamples: int, level: float, seed: int
) -> tuple[np.ndarray, ...]:
    """`corp_reliability_from_table` on numpy: counts (..., value, outcome), row by row."""
    leading, values = counts.shape[:-2], counts.shape[-2]
    rows = counts.reshape(-1, values, 2)
    curves = np.full((3, len(rows), values), np.nan)
    parts = np.full((3, len(rows)), np.nan)
    rng = np.random.default_rng(seed)
    for i, row in enumerate(rows):
        cases = row.sum(-1)
        used = cases > 0
        if not used.any():
            continue
        n, p, o = cases[used], probabilities[used], row[used, 1] / cases[used]
        fitted = isotonic_regression(o, weights=n).x
        base = (n * o).sum() / n.sum()

        def brier(q: np.ndarray | float, n=n, o=o) -> float:
            return float((n * (o * (q - 1) ** 2 + (1 - o) * q**2)).sum() / n.sum())

        curves[0, i, used] = fitted
        parts[:, i] = brier(p) - brier(fitted), brier(base) - brier(fitted), base * (1 - base)
        if resamples:
            trials = np.maximum(np.rint(n), 1).astype(np.int64)
            drawn = rng.binomial(trials, p, size=(resamples, p.size)) / trials
            fits = [isotonic_regression(outcomes, weights=trials).x for outcomes in drawn]
            bounds = np.quantile(fits, [(1 - level) / 2, (1 + level) / 2], axis=0)
            curves[1:, i, used] = bounds
    return (
        *(curve.reshape(*leading, values) for curve in curves),
        *(part.reshape(leading) for part in parts),
    )
