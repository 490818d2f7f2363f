"""Threshold exceedance for ensembles: probabilities, Brier score, reliability diagram, ROC.

An *event* is "the value exceeds a threshold" (strictly greater); thresholds are usually
climatological quantiles of the truth at each grid point (`climatological_thresholds`). Events
are 1.0 where they happen, 0.0 where not and NaN where the truth or the threshold is missing.

Per-point scores (`exceeds`, `exceedance_probability`, `brier_score`) keep every dimension; the
region scores (`reliability_diagram`, `roc_curve`, `roc_auc`) reduce over `dims` with optional
weights (cos-latitude area weights), skipping points where the forecast or the event is NaN.
Everything stays lazy under dask; range checks on probabilities and events run as the data
are computed.

Written here rather than taken from scikit-learn or `scores`: both are test references only
(pyproject's `dev` extra), which keeps the tests that compare against them independent.
scikit-learn is numpy-only; `scores` (2.7) has a lazy weighted Mann-Whitney `roc_auc` much like
this one, but unless told not to it checks its arguments eagerly (computing a dask graph early)
and rejects forecasts outside [0, 1], such as the EFI.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np
import xarray as xr
from scipy.stats import rankdata

Dims = Hashable | Sequence[Hashable]

PROBABILITY_BIN = "probability_bin"
THRESHOLD = "threshold"


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


def exceedance_probability(
    forecast: xr.DataArray, threshold: float | xr.DataArray, member_dim: str = "member"
) -> xr.DataArray:
    """Fraction of ensemble members above the threshold, per point.

    .. math:: p = \\frac{1}{M} \\sum_{i=1}^{M} \\mathbb{1}[x_i > t]

    Unitless, one of the M + 1 values k/M; NaN where any member or the threshold is NaN.

    Reference: Wilks (2019), chapter 8 (ensemble relative frequencies as probabilities).

    Example:
        >>> members = xr.DataArray([1.0, 2.0, 3.0, 4.0], dims="member")
        >>> float(exceedance_probability(members, 2.5))
        0.5
    """
    return exceeds(forecast, threshold).mean(member_dim, skipna=False)


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
    return truth.quantile(quantiles, dim=dim)


def brier_score(probability: xr.DataArray, event: xr.DataArray) -> xr.DataArray:
    """Brier score per point, to be averaged over a region and over init times.

    .. math:: \\mathrm{BS} = (p - o)^2

    Unitless, 0 is perfect. Raises ValueError (when computed) for a probability outside
    [0, 1] or an event other than 0 or 1.

    Reference: Brier, G. W. (1950). Verification of forecasts expressed in terms of
    probability. Monthly Weather Review, 78(1), 1-3.

    Example:
        >>> p = xr.DataArray([0.3, 0.5, 0.7, 1.0])
        >>> o = xr.DataArray([0.0, 1.0, 0.0, 1.0])
        >>> round(float(brier_score(p, o).mean()), 6)
        0.2075
    """
    return (_checked_probability(probability) - _checked_event(event)) ** 2


def reliability_diagram(
    probability: xr.DataArray,
    event: xr.DataArray,
    dims: Dims,
    weights: xr.DataArray | None = None,
    bins: int | Sequence[float] = 10,
) -> xr.Dataset:
    """Reliability diagram: mean forecast probability and observed frequency in probability bins.

    With weights w (e.g. cos latitude) summed over the points i of bin k along `dims`:

    .. math::
        n_k = \\sum_{i \\in k} w_i, \\quad
        \\bar p_k = \\frac{1}{n_k} \\sum_{i \\in k} w_i p_i, \\quad
        \\bar o_k = \\frac{1}{n_k} \\sum_{i \\in k} w_i o_i

    Returns a Dataset along `probability_bin` (coordinate: bin centres; `bin_lower`,
    `bin_upper`) with `forecast_probability` (p̄, unitless), `observed_frequency` (ō,
    unitless, NaN in empty bins) and `count` (n, the summed weights, a point count when
    unweighted). Results of disjoint samples merge exactly: sum `count`, and average the other
    two weighted by `count`. `bins` is a number of equal bins on [0, 1] or the edges from 0 to
    1; bins are closed on the left, the last also on the right. Points where the probability or
    the event is NaN are skipped.

    Reference: Wilks (2019), section 9.4 (the reliability diagram); Bröcker, J. and Smith,
    L. A. (2007). Increasing the reliability of reliability diagrams. Weather and Forecasting,
    22(3), 651-661.
    """
    edges = _bin_edges(bins)
    probability, event, weight = _scoring_inputs(
        _checked_probability(probability), event, dims, weights
    )
    bin_index = xr.apply_ufunc(
        np.digitize,
        probability,
        kwargs={"bins": edges[1:-1]},
        dask="parallelized",
        output_dtypes=[np.intp],
    )
    in_bin = [bin_index == k for k in range(edges.size - 1)]
    count = _sum_where(weight, in_bin, dims, PROBABILITY_BIN)
    probability_sum = _sum_where(weight * probability, in_bin, dims, PROBABILITY_BIN)
    event_sum = _sum_where(weight * event, in_bin, dims, PROBABILITY_BIN)
    nonempty = count.where(count > 0)
    diagram = xr.Dataset(
        {
            "forecast_probability": probability_sum / nonempty,
            "observed_frequency": event_sum / nonempty,
            "count": count,
        }
    )
    return diagram.assign_coords(
        {
            PROBABILITY_BIN: (edges[:-1] + edges[1:]) / 2,
            "bin_lower": (PROBABILITY_BIN, edges[:-1]),
            "bin_upper": (PROBABILITY_BIN, edges[1:]),
        }
    )


def roc_curve(
    forecast: xr.DataArray,
    event: xr.DataArray,
    thresholds: Sequence[float],
    dims: Dims,
    weights: xr.DataArray | None = None,
) -> xr.Dataset:
    """Hit rate and false-alarm rate of the warnings `forecast >= threshold`, per threshold.

    .. math::
        H(t) = \\frac{\\sum_i w_i o_i \\mathbb{1}[f_i \\ge t]}{\\sum_i w_i o_i}, \\quad
        F(t) = \\frac{\\sum_i w_i (1 - o_i) \\mathbb{1}[f_i \\ge t]}{\\sum_i w_i (1 - o_i)}

    `forecast` is a probability or any score that grows with the chance of the event (e.g.
    the EFI). Returns a Dataset along `threshold` with `hit_rate` and `false_alarm_rate`
    (unitless; NaN in a sample without events, or without non-events). Points where the forecast
    or the event is NaN are skipped. The thresholds are given rather than found because the
    distinct values of a sample are only known once computed; for an M-member ensemble use
    the M + 1 probabilities k/M.

    Reference: Mason, I. (1982). A model for assessment of weather forecasts. Australian
    Meteorological Magazine, 30, 291-303; Wilks (2019), section 9.4.
    """
    forecast, event, weight = _scoring_inputs(forecast, event, dims, weights)
    warned = [forecast >= threshold for threshold in thresholds]
    hits = _sum_where(weight * event, warned, dims, THRESHOLD)
    false_alarms = _sum_where(weight * (1 - event), warned, dims, THRESHOLD)
    events = (weight * event).sum(dims)
    non_events = (weight * (1 - event)).sum(dims)
    curve = xr.Dataset(
        {
            "hit_rate": hits / events.where(events > 0),
            "false_alarm_rate": false_alarms / non_events.where(non_events > 0),
        }
    )
    return curve.assign_coords({THRESHOLD: np.asarray(thresholds, dtype=float)})


def roc_auc(
    forecast: xr.DataArray,
    event: xr.DataArray,
    dims: Dims,
    weights: xr.DataArray | None = None,
) -> xr.DataArray:
    """Area under the ROC curve through every distinct forecast value, by the trapezoid rule.

    The curve (F(t), H(t)) of `roc_curve` at every distinct value t of the sample, plus (0, 0)
    and (1, 1); its trapezoidal area equals the weighted Mann-Whitney statistic with ties
    counted one half, which is how it is computed (O(n log n) per reduced sample):

    .. math::
        \\mathrm{AUC} = \\frac{\\sum_{i: o_i = 1} \\sum_{j: o_j = 0} w_i w_j
        \\left(\\mathbb{1}[f_i > f_j] + \\tfrac12 \\mathbb{1}[f_i = f_j]\\right)}
        {\\sum_{i: o_i = 1} w_i \\sum_{j: o_j = 0} w_j}

    Unitless: 1 is perfect, 0.5 no skill. NaN where the sample has no events or only events
    (the curve is undefined). `forecast` is a probability or any score that grows with the
    chance of the event (e.g. the EFI). Points where the forecast or the event is NaN are
    skipped.

    Reference: Hanley, J. A. and McNeil, B. J. (1982). The meaning and use of the area under a
    receiver operating characteristic (ROC) curve. Radiology, 143(1), 29-36; Mason, S. J. and
    Graham, N. E. (2002). Areas beneath the relative operating characteristics (ROC) and
    relative operating levels (ROL) curves. QJRMS, 128(584), 2145-2166.

    Example:
        >>> f = xr.DataArray([0.1, 0.4, 0.35, 0.8], dims="point")
        >>> o = xr.DataArray([0.0, 0.0, 1.0, 1.0], dims="point")
        >>> float(roc_auc(f, o, dims="point"))
        0.75
    """
    forecast, event, weight = _scoring_inputs(forecast, event, dims, weights)
    core_dims = _as_list(dims)
    return xr.apply_ufunc(
        _weighted_mann_whitney_auc,
        *xr.broadcast(forecast, event, weight),
        input_core_dims=[core_dims] * 3,
        kwargs={"n_core": len(core_dims)},
        dask="parallelized",
        output_dtypes=[float],
        dask_gufunc_kwargs={"allow_rechunk": True},
    )


def _weighted_mann_whitney_auc(
    forecast: np.ndarray, event: np.ndarray, weight: np.ndarray, n_core: int
) -> np.ndarray:
    """AUC over the `n_core` trailing axes of equally shaped arrays (see `roc_auc`)."""
    shape = forecast.shape[: forecast.ndim - n_core]
    forecast, event, weight = (a.reshape((*shape, -1)) for a in (forecast, event, weight))
    positive = weight * event
    negative = weight * (1 - event)
    sorted_negative = np.take_along_axis(negative, np.argsort(forecast, axis=-1), axis=-1)
    cumulative = np.concatenate(
        [np.zeros((*shape, 1)), np.cumsum(sorted_negative, axis=-1)], axis=-1
    )
    below = np.take_along_axis(cumulative, rankdata(forecast, "min", axis=-1) - 1, axis=-1)
    at_or_below = np.take_along_axis(cumulative, rankdata(forecast, "max", axis=-1), axis=-1)
    pairs = positive.sum(-1) * negative.sum(-1)
    concordant = (positive * (below + at_or_below) / 2).sum(-1)
    return np.divide(concordant, pairs, out=np.full(shape, np.nan), where=pairs > 0)


def _scoring_inputs(
    forecast: xr.DataArray, event: xr.DataArray, dims: Dims, weights: xr.DataArray | None
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray]:
    """Forecast and event with NaNs zeroed, and weights that are 0 wherever either was NaN."""
    event = _checked_event(event)
    for name, data in (("forecast", forecast), ("event", event)):
        missing = [dim for dim in _as_list(dims) if dim not in data.dims]
        if missing:
            raise ValueError(f"{name} lacks the dimensions {missing} to reduce; it has {data.dims}")
    if weights is not None and not set(weights.dims) <= set(forecast.dims) | set(event.dims):
        raise ValueError(f"weights dims {weights.dims} are not among the data's dims")
    forecast, event = xr.align(forecast, event, join="exact")
    valid = forecast.notnull() & event.notnull()
    weight = valid * (1.0 if weights is None else weights)
    return forecast.fillna(0.0), event.fillna(0.0), weight


def _sum_where(
    values: xr.DataArray, masks: Sequence[xr.DataArray], dims: Dims, new_dim: str
) -> xr.DataArray:
    """Sums of `values` over `dims` within each mask, stacked along `new_dim`."""
    return xr.concat([values.where(mask, 0.0).sum(dims) for mask in masks], dim=new_dim)


def _bin_edges(bins: int | Sequence[float]) -> np.ndarray:
    """Probability bin edges from 0 to 1: `bins` equal bins, or the edges given."""
    # k / bins, not linspace: an ensemble probability j / M on an edge must equal it exactly
    edges = np.arange(bins + 1) / bins if isinstance(bins, int) else np.asarray(bins, float)
    if edges.size < 2 or edges[0] != 0 or edges[-1] != 1 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"probability bins must be increasing edges from 0 to 1, got {edges}")
    return edges


def _checked_probability(probability: xr.DataArray) -> xr.DataArray:
    return _checked(
        probability,
        lambda p: np.isnan(p) | ((p >= 0) & (p <= 1)),
        "probabilities must lie in [0, 1]",
    )


def _checked_event(event: xr.DataArray) -> xr.DataArray:
    return _checked(
        event, lambda o: np.isnan(o) | (o == 0) | (o == 1), "events must be 0, 1 or NaN"
    )


def _checked(
    data: xr.DataArray, is_valid: Callable[[np.ndarray], np.ndarray], message: str
) -> xr.DataArray:
    """`data`, raising ValueError(message) where `is_valid` fails: now for numpy-backed data,
    when computed for dask-backed data (so that checking never computes a graph early)."""

    def check(block: np.ndarray) -> np.ndarray:
        if not np.all(is_valid(block)):
            raise ValueError(message)
        return block

    return xr.apply_ufunc(check, data, dask="parallelized", output_dtypes=[data.dtype])


def _as_list(dims: Dims) -> list[Hashable]:
    return [dims] if isinstance(dims, str) else list(dims)


# Scores from a contingency table. An M-member ensemble forecasts one of M + 1 probabilities
# k/M, so the table n(k, o) of how often each (k, event) pair occurs holds everything the Brier
# score, the reliability diagram and the ROC need. Counted once per latitude over the big
# dimensions (one cheap pass, O(points)), the tables of any region are then latitude-weighted
# sums of a small array: this is how `wxens verify` scores large stores.

VALUE = "value"
OUTCOME = "outcome"


def _joint_counts(index: np.ndarray, event: np.ndarray, values: int) -> np.ndarray:
    """n(value, outcome) over the last axis, for every leading index; skips NaN events."""
    rows = int(np.prod(index.shape[:-1]))
    valid = ~np.isnan(event) & (index >= 0) & (index < values)
    row = np.arange(rows).reshape(index.shape[:-1])[..., None]
    code = (row * values + index) * 2 + np.nan_to_num(event).astype(np.int64)
    counts = np.bincount(code[valid], minlength=rows * values * 2)
    return counts.reshape(*index.shape[:-1], values, 2).astype(np.float64)


def contingency_table(
    index: xr.DataArray, event: xr.DataArray, values: int, dims: Sequence[Hashable]
) -> xr.DataArray:
    """`n(v, o) = #{points over dims: index = v, event = o}`, dimensions `value` and `outcome`.

    `index` is an integer forecast category in 0..values-1 (e.g. the number of members above
    the threshold); `event` is 1/0/NaN. The last of `dims` must be one dask chunk; the others
    are summed afterwards.
    """
    *outer, inner = list(dims)
    table = xr.apply_ufunc(
        _joint_counts,
        index,
        event,
        kwargs={"values": values},
        input_core_dims=[[inner], [inner]],
        output_core_dims=[[VALUE, OUTCOME]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {VALUE: values, OUTCOME: 2}},
    )
    return table.sum(outer) if outer else table


def brier_score_from_table(table: xr.DataArray, probabilities: xr.DataArray) -> xr.DataArray:
    """`BS = sum_v,o n(v, o) (p_v - o)^2 / sum_v,o n(v, o)`, unitless.

    `probabilities` gives p_v along `value`.
    """
    outcome = xr.DataArray([0.0, 1.0], dims=[OUTCOME])
    return (table * (probabilities - outcome) ** 2).sum((VALUE, OUTCOME)) / table.sum(
        (VALUE, OUTCOME)
    )


def reliability_from_table(
    table: xr.DataArray, probabilities: xr.DataArray, bins: int = 10
) -> xr.Dataset:
    """The reliability diagram of `reliability_diagram` from a table: bins of equal width on
    [0, 1], closed on the left (the last also on the right)."""
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
    """ROC area from a table whose `value` orders the forecasts (ties count one half).

    `AUC = sum_v n(v, 1) (N0(< v) + n(v, 0) / 2) / (N1 N0)`: the Mann-Whitney form of the
    trapezoidal area under the ROC curve through every threshold. NaN without events or without
    non-events.
    """
    events, non_events = table.sel({OUTCOME: 1}, drop=True), table.sel({OUTCOME: 0}, drop=True)
    below = non_events.cumsum(VALUE) - non_events
    pairs = events.sum(VALUE) * non_events.sum(VALUE)
    return (events * (below + non_events / 2)).sum(VALUE) / pairs.where(pairs > 0)
