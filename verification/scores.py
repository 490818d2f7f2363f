"""The registry of scores: `SCORES`, one `Score` per name of the scores dataset.

A `Score` turns one variable of one system into its variables of the scores dataset (lazily,
with dims `region`, `lead_time` and any of its own), from a `ScoringContext` that holds the
forecast, the truth and the pieces that several scores share: the fused per-point kernel
(`metrics.ensemble_summary`, one sort of each point's members), the truth's climate, the
event tables. Each shared piece is built once, when a score first asks for it, so a selection
of scores computes only what it needs.

Adding a score touches this module only: write its function (formula and units in the
docstring) and add a `Score` to `SCORES`. `score(..., scores=["crps", "rmse"])` and
`wxens verify --scores crps,rmse` pick entries by name (or by the name of one of their
output variables: `tail_reach` picks `tails`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from wxens.verification import metrics
from wxens.verification.aggregation import (
    Counter,
    Region,
    ordered_sum,
    per_region,
    resolve_regions,
)
from wxens.verification.errors import ScoreError
from wxens.verification.extremes import (
    by_tail,
    climate_at,
    event_scores_from_tables,
    extreme_event_tables,
    model_climate,
)
from wxens.verification.geometry import STATION, spatial_dims, spatial_means, spatial_sums
from wxens.verification.probability import (
    CORP_DECOMPOSITION,
    VALUE,
    corp_reliability_from_table,
    exceeds,
    members_above,
    relative_economic_value_from_table,
)
from wxens.verification.spectra import ensemble_spectra

if TYPE_CHECKING:
    from wxens.verification.verify import VerifyOptions

INIT, LEAD, MEMBER, TIME = "init_time", "lead_time", "member", "time"


class ScoringContext:
    """One variable of one system, ready to score: `forecast` (init_time, lead_time, member,
    latitude, longitude), `truth` at its valid times (the same less `member`), the truth's
    analyses around the init dates (`climate_sample`, dim `time`), the `regions` by name and
    the options. Shared pieces are cached properties, built on first use.

    Example:
        >>> grid = {"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]}
        >>> truth = xr.DataArray(np.zeros((1, 1, 2, 2)),
        ...     dims=["init_time", "lead_time", *grid], coords=grid)
        >>> forecast = xr.concat([truth - 1, truth + 1], dim="member").transpose(
        ...     "init_time", "lead_time", "member", ...)
        >>> context = ScoringContext(forecast, truth, truth.isel(init_time=0).rename(
        ...     lead_time="time"), ["global"])
        >>> float(SCORES["spread"].compute(context)["spread"].squeeze())
        1.4142135623730951
    """

    def __init__(
        self,
        forecast: xr.DataArray,
        truth: xr.DataArray,
        climate_sample: xr.DataArray,
        regions: Sequence[str | Region] | Mapping[str, Region],
        options: VerifyOptions | None = None,
    ):
        from wxens.verification.verify import VerifyOptions  # verify imports this module

        self.forecast = forecast
        self.truth = truth
        self.climate_sample = climate_sample
        self.regions = resolve_regions(regions)
        self.options = options or VerifyOptions()
        self.members = forecast.sizes[MEMBER]
        self.fair = self.members > 1  # one member: a deterministic forecast, CRPS = MAE

    @property
    def on_grid(self) -> bool:
        """Whether the data are on a grid (else on points: stations or an index)."""
        return STATION not in self.truth.dims

    def mean(self, per_point: xr.DataArray) -> xr.DataArray:
        """Area (or station) mean per region, per init time (`geometry.spatial_means`)."""
        return spatial_means(per_point, self.regions, None, self.truth)

    def sums(self, count: Counter) -> xr.DataArray:
        """Area- (or station-) weighted sums per region, per init (`geometry.spatial_sums`)."""
        return spatial_sums(count, self.truth, self.regions, None)

    @cached_property
    def summary(self) -> xr.Dataset:
        """`metrics.ensemble_summary`: every per-point statistic from one sort of the members."""
        return metrics.ensemble_summary(self.forecast, self.truth, seed=self.options.seed)

    @cached_property
    def variance(self) -> xr.DataArray:
        """Mean ensemble variance (ddof 1) per region and init, units squared."""
        return self.mean(self.summary["variance"])

    @cached_property
    def squared_error_of_mean(self) -> xr.DataArray:
        """`(xbar - y)^2` per point, units squared (the kernel's `squared_error`)."""
        return self.summary["squared_error"]

    @cached_property
    def squared_error(self) -> xr.DataArray:
        """Mean squared error of the ensemble mean per region and init, units squared."""
        return self.mean(self.squared_error_of_mean)

    @cached_property
    def climate(self) -> xr.DataArray:
        """The truth's climate as 101 quantiles (`extremes.model_climate`), per init."""
        return model_climate(self.climate_sample, TIME)

    @cached_property
    def thresholds(self) -> xr.DataArray:
        """The events' thresholds: the climate at the options' quantiles (dim `quantile`)."""
        return climate_at(self.climate, list(self.options.quantiles))

    @cached_property
    def events(self) -> tuple[xr.DataArray, xr.DataArray]:
        """Per point and quantile: the members above the threshold (k) and the event (0/1)."""
        return members_above(self.forecast, self.thresholds), exceeds(self.truth, self.thresholds)

    @cached_property
    def tables(self) -> xr.Dataset:
        """`extremes.extreme_event_tables` at the options' quantiles, per init."""
        return extreme_event_tables(
            self.forecast,
            self.truth,
            self.climate,
            self.options.quantiles,
            self.regions,
            above=self.events[0],
        )

    def missing_members(self) -> xr.DataArray:
        """NaN member values per (init_time, lead_time): from the kernel when a score used it,
        else counted from the forecast."""
        space = spatial_dims(self.truth)
        if "summary" in self.__dict__:
            return self.summary["missing"].sum(space)
        return self.forecast.isnull().sum((MEMBER, *space))


Outputs = Mapping[str, xr.DataArray]


@dataclass(frozen=True)
class Score:
    """A named entry of `SCORES`, in two steps:

    - `statistics(context)` gives, for one variable of one system, the score's sufficient
      statistics per init time (dims `init_time`, `region`, `lead_time` and its own): area
      means or area-weighted counts that any set of inits merges exactly (means by the mean
      over inits, counts by the sum), kept night by night in a statistics store
      (`verification.statistics`);
    - `finalize(statistics, members, options)` turns those of a set of inits into the
      variables `outputs` of the scores dataset.

    `compute(context)` is the two in a row: what `wxens verify` does over all its inits.

    Example:
        >>> SCORES["rmse"].outputs, SCORES["rmse"].statistics_names
        (('rmse',), ('squared_error',))
    """

    name: str
    outputs: tuple[str, ...]
    statistics: Callable[[ScoringContext], Outputs]
    finalize: Callable[[xr.Dataset, int, VerifyOptions], Outputs]
    statistics_names: tuple[str, ...]
    needs_grid: bool = False
    """A score of whole fields (ACC, energy score, spectra): left out on stations and indices."""

    def compute(self, context: ScoringContext) -> Outputs:
        stats = xr.Dataset(dict(self.statistics(context)))
        return self.finalize(stats, context.members, context.options)


def _over_inits(stats: xr.Dataset, name: str) -> xr.DataArray:
    """Statistic `name` merged over the init times: the mean of per-init means."""
    return stats[name].mean(INIT)


def _crps_stats(context: ScoringContext) -> Outputs:
    per_point = context.summary["crps_fair" if context.fair else "crps_ecdf"]
    return {"crps": context.mean(per_point)}


def _crps(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """CRPS of the ensemble, field units: fair for M > 1 (`crps_fair` of the kernel), the ECDF
    form for one member (its mean absolute error); area and init-time mean per region."""
    return {"crps": _over_inits(stats, "crps")}


def _crps_ecdf_stats(context: ScoringContext) -> Outputs:
    return {"crps_ecdf": context.mean(context.summary["crps_ecdf"])}


def _crps_ecdf(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """CRPS of the members' ECDF, `mean_i |x_i - y| - S / (2 M^2)`, field units (equals
    properscoring's), area and init-time mean."""
    return {"crps_ecdf": _over_inits(stats, "crps_ecdf")}


def _squared_error_stats(context: ScoringContext) -> Outputs:
    return {"squared_error": context.squared_error}


def _rmse(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """RMSE of the ensemble mean, `sqrt(mean (xbar - y)^2)`, field units (square root last)."""
    return {"rmse": np.sqrt(_over_inits(stats, "squared_error"))}


def _variance_stats(context: ScoringContext) -> Outputs:
    return {"variance": context.variance}


def _spread(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Ensemble spread, `sqrt(mean s^2)` with `s^2` the ensemble variance (ddof 1), field units
    (square root last)."""
    return {"spread": np.sqrt(_over_inits(stats, "variance"))}


def _spread_skill_stats(context: ScoringContext) -> Outputs:
    return {**_variance_stats(context), **_squared_error_stats(context)}


def _spread_skill_ratio(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """`sqrt((M + 1) / M) * spread / RMSE`, unitless; 1 when calibrated
    (`metrics.spread_skill_ratio`)."""
    variance, squared_error = (_over_inits(stats, n) for n in ("variance", "squared_error"))
    return {"spread_skill_ratio": metrics.spread_skill_ratio(variance, squared_error, members)}


def _debiased_stats(context: ScoringContext) -> Outputs:
    unbiased = context.squared_error_of_mean - context.summary["variance"] / context.members
    return {**_variance_stats(context), "unbiased_squared_error": context.mean(unbiased)}


def _spread_skill_ratio_debiased(
    stats: xr.Dataset, members: int, options: VerifyOptions
) -> Outputs:
    """`sqrt(mean s^2 / mean((xbar - y)^2 - s^2 / M))`, unitless; WeatherBench-X's unbiased
    ratio (`metrics.spread_skill_ratio_debiased`)."""
    variance, unbiased = (_over_inits(stats, n) for n in ("variance", "unbiased_squared_error"))
    return {"spread_skill_ratio_debiased": metrics.spread_skill_ratio_debiased(variance, unbiased)}


def _outlier_stats(context: ScoringContext) -> Outputs:
    return {"outside": context.mean(context.summary["outside"])}


def _outlier_fraction(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Fraction of cases with the truth outside the ensemble range, unitless; 2/(M+1) for a
    calibrated ensemble."""
    return {"outlier_fraction": _over_inits(stats, "outside")}


def _acc_stats(context: ScoringContext) -> Outputs:
    climatology = context.climate_sample.mean(TIME)
    mean = context.summary["mean"]

    def by_region(region: Region) -> xr.DataArray:
        return metrics.anomaly_correlation(mean, context.truth, climatology, region)

    return {"acc": per_region(by_region, context.regions)}


def _acc(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Anomaly correlation of the ensemble mean against the truth's climatology (the mean of
    each init's climate sample), per init time over each region, then the mean over init
    times; unitless (`metrics.anomaly_correlation`)."""
    return {"acc": _over_inits(stats, "acc")}


def _energy_stats(context: ScoringContext) -> Outputs:
    def by_region(region: Region) -> xr.DataArray:
        return metrics.energy_score(context.forecast, context.truth, region, fair=context.fair)

    return {"energy_score": per_region(by_region, context.regions)}


def _energy_score(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Energy score over the grid points of each region (area-weighted norm), field units, per
    init time then averaged (`metrics.energy_score`; fair for M > 1)."""
    return {"energy_score": _over_inits(stats, "energy_score")}


def _rank_stats(context: ScoringContext) -> Outputs:
    ranks = context.summary["rank"]

    def count(dims: tuple[str, ...], weights: xr.DataArray | None) -> xr.DataArray:
        return metrics.rank_counts(ranks, context.members, dims, weights)

    return {"rank_counts": context.sums(count)}


def _rank_counts(stats: xr.Dataset, members: int) -> xr.DataArray:
    return ordered_sum(stats["rank_counts"].isel(rank=slice(0, members + 1)), INIT)


def _rank_histogram(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Frequency of each rank 0..M of the truth among the members (ties broken at random),
    area-weighted, summing to 1 (dimension `rank`; `metrics.rank_counts`)."""
    counts = _rank_counts(stats, members)
    return {"rank_histogram": counts / counts.sum("rank")}


PIT = ("pit_histogram", "pit_alpha")


def _pit(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """The PIT of the members' ECDF from the rank counts (`metrics.pit_from_rank_histogram`):
    `pit_histogram` (`options.pit_bins` bins along `pit_bin`, summing to 1) and its distance
    from uniform `pit_alpha` (0 to 0.5), unitless."""
    pit = metrics.pit_from_rank_histogram(_rank_counts(stats, members), options.pit_bins)
    return {name: pit[name] for name in PIT}


def _twcrps_stats(context: ScoringContext) -> Outputs:
    per_point = metrics.crps_threshold_weighted(
        context.forecast, context.truth, context.thresholds, fair=context.fair
    )
    return {"twcrps": context.mean(per_point)}


def _twcrps(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Threshold-weighted CRPS of the values above the climate's q-quantile (the events'
    thresholds, dimension `quantile`; `metrics.crps_threshold_weighted`, upper tail): fair for
    M > 1, field units, area and init-time mean."""
    return {"twcrps": _over_inits(stats, "twcrps")}


def _table_stats(context: ScoringContext) -> Outputs:
    return dict(context.tables.data_vars)


def _brier_stats(context: ScoringContext) -> Outputs:
    above, event = context.events
    return {"brier": context.mean((above / context.members - event) ** 2)}


def _brier_score(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Brier score of the events "truth above the climate's q-quantile" (dimension `quantile`)
    forecast with the members' fraction k/M, `mean (k/M - o)^2`, unitless, area and init-time
    mean (equal to `probability.brier_score_from_table` of the events' table)."""
    return {"brier_score": _over_inits(stats, "brier")}


def _brier_fair_stats(context: ScoringContext) -> Outputs:
    above, event = context.events
    m = context.members
    excess = above * (m - above) / (m**2 * (m - 1)) if m > 1 else 0.0
    return {"brier_fair": context.mean((above / m - event) ** 2 - excess)}


def _brier_score_fair(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Ferro's fair Brier score of those events, `mean (k/M - o)^2 - k (M - k) / (M^2 (M - 1))`,
    unitless (`probability.brier_score_fair_from_table`; the plain one for M = 1)."""
    return {"brier_score_fair": _over_inits(stats, "brier_fair")}


def _event_scores(stats: xr.Dataset, members: int, options: VerifyOptions) -> xr.Dataset:
    tables = xr.Dataset({name: ordered_sum(stats[name], INIT) for name in EVENT_TABLES})
    return event_scores_from_tables(tables, members, options.probability_bins)


EVENT_TABLES = ("event_table", "efi_table")


def _event_score(name: str) -> Callable[[xr.Dataset, int, VerifyOptions], Outputs]:
    def finalize(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
        return {name: _event_scores(stats, members, options)[name]}

    finalize.__doc__ = (
        f"`{name}` of `extremes.event_scores_from_tables`: events 'truth above the climate's "
        "q-quantile' (dimension `quantile`), from the tables summed over the inits, unitless."
    )
    return finalize


def _reliability(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """The reliability diagram of the events (dims `quantile`, `probability_bin`):
    `reliability_forecast_probability`, `reliability_observed_frequency` (unitless) and
    `reliability_count` (area-weighted cases)."""
    events = _event_scores(stats, members, options)
    return {name: events[name] for name in RELIABILITY}


def _event_table(stats: xr.Dataset, members: int) -> xr.DataArray:
    """The events' table n(k, o) summed over the inits, k = 0..M."""
    return ordered_sum(stats["event_table"], INIT).isel({VALUE: slice(0, members + 1)})


def _relative_economic_value(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Relative economic value of the events' probabilities for users of each cost-loss ratio
    (`options.cost_loss_ratios`, dimension `cost_loss_ratio`; `quantile`), the best
    probability threshold for each (`probability.relative_economic_value_from_table`),
    unitless: 1 perfect, 0 no better than the climate."""
    table = _event_table(stats, members)
    value = relative_economic_value_from_table(table, options.cost_loss_ratios)
    return {"relative_economic_value": value}


CORP = tuple(f"corp_{name}" for name in ("observed_frequency", "band_low", "band_high"))
CORP += tuple(f"corp_{name}" for name in CORP_DECOMPOSITION)
FORECAST_PROBABILITY = "forecast_probability"


def _corp(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """CORP reliability diagram of the events (`probability.corp_reliability_from_table`):
    the recalibrated probability `corp_observed_frequency` and its consistency band
    (`corp_band_low`, `corp_band_high`, 90 %, `options.corp_resamples` draws) along
    `forecast_probability` (k/M) and `quantile`, and the Brier score's decomposition
    `corp_miscalibration` - `corp_discrimination` + `corp_uncertainty`, unitless."""
    probabilities = np.arange(members + 1) / members
    corp = corp_reliability_from_table(
        _event_table(stats, members),
        xr.DataArray(probabilities, dims=[VALUE]),
        resamples=options.corp_resamples,
        seed=options.seed,
    )
    corp = corp.rename({VALUE: FORECAST_PROBABILITY})
    return dict(corp.assign_coords({FORECAST_PROBABILITY: probabilities}).data_vars)


RELIABILITY = tuple(
    f"reliability_{name}" for name in ("forecast_probability", "observed_frequency", "count")
)
TAIL_STATISTICS = ("tail_low", "tail_high", "reach_low", "reach_high")


def _tail_stats(context: ScoringContext) -> Outputs:
    return {name: context.mean(context.summary[name]) for name in TAIL_STATISTICS}


def _tails(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """`tail_fraction`: truth under the members' 1st / over their 99th percentile; `tail_reach`:
    `(xbar - min) / s` and `(max - xbar) / s`; both along `tail` (low, high), unitless."""
    low, high, reach_low, reach_high = (_over_inits(stats, n) for n in TAIL_STATISTICS)
    return {"tail_fraction": by_tail(low, high), "tail_reach": by_tail(reach_low, reach_high)}


SPECTRA = ("power_members", "power_ensemble_mean", "power_truth")


def _spectra_stats(context: ScoringContext) -> Outputs:
    try:
        power = ensemble_spectra(
            context.forecast, context.truth, MEMBER, truncation=context.options.truncation
        )
    except ValueError as exc:
        warnings.warn(f"no spectra: {exc}", stacklevel=2)
        return {}
    return {name: power[name] for name in SPECTRA}


def _spectra(stats: xr.Dataset, members: int, options: VerifyOptions) -> Outputs:
    """Total-wavenumber power spectra (field units squared, dimension `wavenumber`, no
    `region`) of the members (mean over members), of the ensemble mean and of the truth,
    averaged over init times (`spectra.ensemble_spectra`); none, with a warning, on a grid
    that is not global."""
    return {name: _over_inits(stats, name) for name in SPECTRA if name in stats}


BY_INIT = "_by_init"
MEAN_STATISTICS = frozenset(
    {
        "crps",
        "crps_ecdf",
        "squared_error",
        "variance",
        "unbiased_squared_error",
        "outside",
        "acc",
        "energy_score",
        "brier",
        "brier_fair",
        "twcrps",
        *TAIL_STATISTICS,
    }
)
"""The statistics that are means per init, merged over inits by their mean. The scores
dataset keeps each one per init as `{name}_by_init` (`crps_by_init`, `squared_error_by_init`,
...): what a paired bootstrap over inits resamples to test any score drawn from them
(`report.not_significant`)."""

SCORES: dict[str, Score] = {
    score.name: score
    for score in (
        Score("crps", ("crps",), _crps_stats, _crps, ("crps",)),
        Score("crps_ecdf", ("crps_ecdf",), _crps_ecdf_stats, _crps_ecdf, ("crps_ecdf",)),
        Score("rmse", ("rmse",), _squared_error_stats, _rmse, ("squared_error",)),
        Score("spread", ("spread",), _variance_stats, _spread, ("variance",)),
        Score(
            "spread_skill_ratio",
            ("spread_skill_ratio",),
            _spread_skill_stats,
            _spread_skill_ratio,
            ("variance", "squared_error"),
        ),
        Score(
            "spread_skill_ratio_debiased",
            ("spread_skill_ratio_debiased",),
            _debiased_stats,
            _spread_skill_ratio_debiased,
            ("variance", "unbiased_squared_error"),
        ),
        Score(
            "outlier_fraction",
            ("outlier_fraction",),
            _outlier_stats,
            _outlier_fraction,
            ("outside",),
        ),
        Score("acc", ("acc",), _acc_stats, _acc, ("acc",), needs_grid=True),
        Score(
            "energy_score",
            ("energy_score",),
            _energy_stats,
            _energy_score,
            ("energy_score",),
            needs_grid=True,
        ),
        Score(
            "rank_histogram", ("rank_histogram",), _rank_stats, _rank_histogram, ("rank_counts",)
        ),
        Score("brier_score", ("brier_score",), _brier_stats, _brier_score, ("brier",)),
        Score(
            "brier_score_fair",
            ("brier_score_fair",),
            _brier_fair_stats,
            _brier_score_fair,
            ("brier_fair",),
        ),
        *(
            Score(name, (name,), _table_stats, _event_score(name), EVENT_TABLES)
            for name in ("roc_auc", "efi_roc_auc")
        ),
        Score("reliability", RELIABILITY, _table_stats, _reliability, EVENT_TABLES),
        Score("corp", CORP, _table_stats, _corp, EVENT_TABLES),
        Score(
            "relative_economic_value",
            ("relative_economic_value",),
            _table_stats,
            _relative_economic_value,
            EVENT_TABLES,
        ),
        Score("twcrps", ("twcrps",), _twcrps_stats, _twcrps, ("twcrps",)),
        Score("pit", PIT, _rank_stats, _pit, ("rank_counts",)),
        Score("tails", ("tail_fraction", "tail_reach"), _tail_stats, _tails, TAIL_STATISTICS),
        Score("spectra", SPECTRA, _spectra_stats, _spectra, SPECTRA, needs_grid=True),
    )
}
"""Every score `wxens verify` computes, by name, in the order of the scores dataset."""


def resolve_scores(scores: Sequence[str | Score] | str | Score | None = None) -> list[Score]:
    """The scores to compute: `SCORES` names (or output variable names, e.g. `tail_reach`),
    `Score` objects, or None (all of `SCORES`). Each score once, in the order given.

    Example:
        >>> [score.name for score in resolve_scores(["rmse", "tail_reach", "crps"])]
        ['rmse', 'tails', 'crps']
    """
    if scores is None:
        return list(SCORES.values())
    if isinstance(scores, str | Score):
        scores = [scores]
    by_output = {output: entry for entry in SCORES.values() for output in entry.outputs}
    chosen: dict[str, Score] = {}
    for entry in scores:
        if isinstance(entry, str):
            if entry not in SCORES and entry not in by_output:
                raise ScoreError(f"unknown score {entry!r}; choose from {', '.join(SCORES)}")
            entry = SCORES.get(entry) or by_output[entry]
        elif not isinstance(entry, Score):
            raise ScoreError(f"a score is a name or a Score, got {type(entry).__name__}")
        chosen.setdefault(entry.name, entry)
    if not chosen:
        raise ScoreError("no score to compute")
    return list(chosen.values())


def variable_statistics(context: ScoringContext, scores: Sequence[Score]) -> xr.Dataset:
    """The sufficient statistics of the chosen scores (`Score.statistics`) for one variable of
    one system, lazily, merged into one Dataset (each statistic once), plus `missing_members`
    (NaN member values per init and lead, for the caller's check)."""
    stats: dict[str, xr.DataArray] = {}
    for entry in scores:
        if entry.needs_grid and not context.on_grid:
            continue
        computed = dict(entry.statistics(context))
        unexpected = set(computed) - set(entry.statistics_names)
        if unexpected:
            raise ScoreError(
                f"score {entry.name!r} gave undeclared statistics {sorted(unexpected)}"
            )
        for name, value in computed.items():
            stats.setdefault(name, value)
    stats["missing_members"] = context.missing_members()
    return xr.Dataset(stats)


def finalize_statistics(
    stats: xr.Dataset, scores: Sequence[Score], members: int, options: VerifyOptions
) -> xr.Dataset:
    """The chosen scores from the statistics of a set of inits (`variable_statistics`, or a
    statistics store's selection), for an ensemble of `members`: one Dataset with dims
    `region`, `lead_time` and each score's own.

    Example:
        >>> stats = xr.Dataset({"squared_error": ("init_time", [1.0, 3.0])})
        >>> from wxens.verification.verify import VerifyOptions
        >>> float(finalize_statistics(stats, resolve_scores(["rmse"]), 2, VerifyOptions()).rmse)
        1.4142135623730951
    """
    outputs = []
    for entry in scores:
        if not set(entry.statistics_names) & set(stats.data_vars):
            continue  # a score with nothing to show here (spectra off a global grid)
        computed = dict(entry.finalize(stats, members, options))
        unexpected = set(computed) - set(entry.outputs)
        if unexpected:
            raise ScoreError(f"score {entry.name!r} gave undeclared outputs {sorted(unexpected)}")
        outputs.append(computed)
    used = {name for entry in scores for name in entry.statistics_names}
    outputs.append(
        {
            f"{name}{BY_INIT}": stats[name]
            for name in sorted(used & MEAN_STATISTICS & set(stats.data_vars))
            if INIT in stats[name].dims
        }
    )
    return xr.merge(outputs, compat="no_conflicts", join="exact")


def score_variable(context: ScoringContext, scores: Sequence[Score]) -> xr.Dataset:
    """The chosen scores of one variable of one system over all its inits: its statistics,
    finalized, plus `missing_members`.

    Example:
        >>> grid = {"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]}
        >>> truth = xr.DataArray(np.zeros((1, 1, 2, 2)),
        ...     dims=["init_time", "lead_time", *grid], coords=grid)
        >>> forecast = xr.concat([truth + 1, truth + 1], dim="member").transpose(
        ...     "init_time", "lead_time", "member", ...)
        >>> context = ScoringContext(forecast, truth, truth.isel(init_time=0).rename(
        ...     lead_time="time"), ["global"])
        >>> float(score_variable(context, resolve_scores(["rmse"]))["rmse"].squeeze())
        1.0
    """
    stats = variable_statistics(context, scores)
    scored = finalize_statistics(stats, scores, context.members, context.options)
    return scored.assign(missing_members=stats["missing_members"])
