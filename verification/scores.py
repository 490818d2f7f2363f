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
output variables: `crps_by_init` picks `crps`).
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
    LATITUDE,
    LONGITUDE,
    Region,
    per_region,
    regional_means,
    regional_sums,
    resolve_regions,
)
from wxens.verification.errors import ScoreError
from wxens.verification.extremes import by_tail, extreme_event_scores, model_climate
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

    def mean(self, per_point: xr.DataArray) -> xr.DataArray:
        """Area mean per region, then the mean over init times (`aggregation.regional_means`)."""
        return regional_means(per_point, self.regions)

    @cached_property
    def summary(self) -> xr.Dataset:
        """`metrics.ensemble_summary`: every per-point statistic from one sort of the members."""
        return metrics.ensemble_summary(self.forecast, self.truth, seed=self.options.seed)

    @cached_property
    def variance(self) -> xr.DataArray:
        """Mean ensemble variance (ddof 1) per region, units squared."""
        return self.mean(self.summary["variance"])

    @cached_property
    def squared_error_of_mean(self) -> xr.DataArray:
        """`(xbar - y)^2` per point, units squared."""
        return (self.summary["mean"] - self.truth) ** 2

    @cached_property
    def squared_error(self) -> xr.DataArray:
        """Mean squared error of the ensemble mean per region, units squared."""
        return self.mean(self.squared_error_of_mean)

    @cached_property
    def climate(self) -> xr.DataArray:
        """The truth's climate as 101 quantiles (`extremes.model_climate`)."""
        return model_climate(self.climate_sample, TIME)

    @cached_property
    def events(self) -> xr.Dataset:
        """`extremes.extreme_event_scores` at the options' quantiles."""
        return extreme_event_scores(
            self.forecast,
            self.truth,
            self.climate,
            self.options.quantiles,
            self.regions,
            self.options.probability_bins,
        )

    def missing_members(self) -> xr.DataArray:
        """NaN member values per (init_time, lead_time): from the kernel when a score used it,
        else counted from the forecast."""
        if "summary" in self.__dict__:
            return self.summary["missing"].sum((LATITUDE, LONGITUDE))
        return self.forecast.isnull().sum((MEMBER, LATITUDE, LONGITUDE))


Outputs = Mapping[str, xr.DataArray]


@dataclass(frozen=True)
class Score:
    """A named entry of `SCORES`: `compute(context)` gives the variables `outputs` of the
    scores dataset for one variable of one system, lazily.

    Example:
        >>> SCORES["rmse"].outputs
        ('rmse',)
    """

    name: str
    outputs: tuple[str, ...]
    compute: Callable[[ScoringContext], Outputs]


def _crps(context: ScoringContext) -> Outputs:
    """CRPS of the ensemble, field units: fair for M > 1 (`crps_fair` of the kernel), the ECDF
    form for one member (its mean absolute error). `crps` is its area and init-time mean per
    region; `crps_by_init` keeps the init times (for the scorecards' bootstrap)."""
    per_point = context.summary["crps_fair" if context.fair else "crps_ecdf"]
    by_init = regional_means(per_point, context.regions, None)
    return {"crps": by_init.mean(INIT), "crps_by_init": by_init}


def _crps_ecdf(context: ScoringContext) -> Outputs:
    """CRPS of the members' ECDF, `mean_i |x_i - y| - S / (2 M^2)`, field units (equals
    properscoring's), area and init-time mean."""
    return {"crps_ecdf": context.mean(context.summary["crps_ecdf"])}


def _rmse(context: ScoringContext) -> Outputs:
    """RMSE of the ensemble mean, `sqrt(mean (xbar - y)^2)`, field units (square root last)."""
    return {"rmse": np.sqrt(context.squared_error)}


def _spread(context: ScoringContext) -> Outputs:
    """Ensemble spread, `sqrt(mean s^2)` with `s^2` the ensemble variance (ddof 1), field units
    (square root last)."""
    return {"spread": np.sqrt(context.variance)}


def _spread_skill_ratio(context: ScoringContext) -> Outputs:
    """`sqrt((M + 1) / M) * spread / RMSE`, unitless; 1 when calibrated
    (`metrics.spread_skill_ratio`)."""
    ratio = metrics.spread_skill_ratio(context.variance, context.squared_error, context.members)
    return {"spread_skill_ratio": ratio}


def _spread_skill_ratio_debiased(context: ScoringContext) -> Outputs:
    """`sqrt(mean s^2 / mean((xbar - y)^2 - s^2 / M))`, unitless; WeatherBench-X's unbiased
    ratio (`metrics.spread_skill_ratio_debiased`)."""
    summary = context.summary
    unbiased = context.mean(context.squared_error_of_mean - summary["variance"] / context.members)
    ratio = metrics.spread_skill_ratio_debiased(context.variance, unbiased)
    return {"spread_skill_ratio_debiased": ratio}


def _outlier_fraction(context: ScoringContext) -> Outputs:
    """Fraction of cases with the truth outside the ensemble range, unitless; 2/(M+1) for a
    calibrated ensemble."""
    return {"outlier_fraction": context.mean(context.summary["outside"])}


def _acc(context: ScoringContext) -> Outputs:
    """Anomaly correlation of the ensemble mean against the truth's climatology (the mean of
    the climate sample), per init time over each region, then the mean over init times;
    unitless (`metrics.anomaly_correlation`)."""
    climatology = context.climate_sample.mean(TIME)
    mean = context.summary["mean"]

    def by_region(region: Region) -> xr.DataArray:
        return metrics.anomaly_correlation(mean, context.truth, climatology, region)

    return {"acc": per_region(by_region, context.regions).mean(INIT)}


def _energy_score(context: ScoringContext) -> Outputs:
    """Energy score over the grid points of each region (area-weighted norm), field units, per
    init time then averaged (`metrics.energy_score`; fair for M > 1)."""

    def by_region(region: Region) -> xr.DataArray:
        return metrics.energy_score(context.forecast, context.truth, region, fair=context.fair)

    return {"energy_score": per_region(by_region, context.regions).mean(INIT)}


def _rank_histogram(context: ScoringContext) -> Outputs:
    """Frequency of each rank 0..M of the truth among the members (ties broken at random),
    area-weighted, summing to 1 (dimension `rank`; `metrics.rank_counts`)."""
    ranks = context.summary["rank"]

    def count(dims: tuple[str, ...]) -> xr.DataArray:
        return metrics.rank_counts(ranks, context.members, dims)

    truth = context.truth
    counts = regional_sums(count, truth[LATITUDE], truth[LONGITUDE], context.regions)
    return {"rank_histogram": counts / counts.sum("rank")}


def _event_score(name: str) -> Callable[[ScoringContext], Outputs]:
    def compute(context: ScoringContext) -> Outputs:
        return {name: context.events[name]}

    compute.__doc__ = (
        f"`{name}` of `extremes.extreme_event_scores`: events 'truth above the climate's "
        "q-quantile' (dimension `quantile`), unitless."
    )
    return compute


def _reliability(context: ScoringContext) -> Outputs:
    """The reliability diagram of the events (dims `quantile`, `probability_bin`):
    `reliability_forecast_probability`, `reliability_observed_frequency` (unitless) and
    `reliability_count` (area-weighted cases)."""
    events = context.events
    return {name: events[name] for name in RELIABILITY}


RELIABILITY = tuple(
    f"reliability_{name}" for name in ("forecast_probability", "observed_frequency", "count")
)


def _tails(context: ScoringContext) -> Outputs:
    """`tail_fraction`: truth under the members' 1st / over their 99th percentile; `tail_reach`:
    `(xbar - min) / s` and `(max - xbar) / s`; both along `tail` (low, high), unitless."""
    summary = context.summary
    return {
        "tail_fraction": context.mean(by_tail(summary["tail_low"], summary["tail_high"])),
        "tail_reach": context.mean(by_tail(summary["reach_low"], summary["reach_high"])),
    }


SPECTRA = ("power_members", "power_ensemble_mean", "power_truth")


def _spectra(context: ScoringContext) -> Outputs:
    """Total-wavenumber power spectra (field units squared, dimension `wavenumber`, no
    `region`) of the members (mean over members), of the ensemble mean and of the truth,
    averaged over init times (`spectra.ensemble_spectra`); none, with a warning, on a grid
    that is not global."""
    try:
        power = ensemble_spectra(
            context.forecast, context.truth, MEMBER, truncation=context.options.truncation
        )
    except ValueError as exc:
        warnings.warn(f"no spectra: {exc}", stacklevel=2)
        return {}
    return {name: power[name].mean(INIT) for name in SPECTRA}


SCORES: dict[str, Score] = {
    score.name: score
    for score in (
        Score("crps", ("crps", "crps_by_init"), _crps),
        Score("crps_ecdf", ("crps_ecdf",), _crps_ecdf),
        Score("rmse", ("rmse",), _rmse),
        Score("spread", ("spread",), _spread),
        Score("spread_skill_ratio", ("spread_skill_ratio",), _spread_skill_ratio),
        Score(
            "spread_skill_ratio_debiased",
            ("spread_skill_ratio_debiased",),
            _spread_skill_ratio_debiased,
        ),
        Score("outlier_fraction", ("outlier_fraction",), _outlier_fraction),
        Score("acc", ("acc",), _acc),
        Score("energy_score", ("energy_score",), _energy_score),
        Score("rank_histogram", ("rank_histogram",), _rank_histogram),
        Score("brier_score", ("brier_score",), _event_score("brier_score")),
        Score("roc_auc", ("roc_auc",), _event_score("roc_auc")),
        Score("efi_roc_auc", ("efi_roc_auc",), _event_score("efi_roc_auc")),
        Score("reliability", RELIABILITY, _reliability),
        Score("tails", ("tail_fraction", "tail_reach"), _tails),
        Score("spectra", SPECTRA, _spectra),
    )
}
"""Every score `wxens verify` computes, by name, in the order of the scores dataset."""


def resolve_scores(scores: Sequence[str | Score] | str | Score | None = None) -> list[Score]:
    """The scores to compute: `SCORES` names (or output variable names, e.g. `crps_by_init`),
    `Score` objects, or None (all of `SCORES`). Each score once, in the order given.

    Example:
        >>> [score.name for score in resolve_scores(["rmse", "tail_reach", "crps_by_init"])]
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


def score_variable(context: ScoringContext, scores: Sequence[Score]) -> xr.Dataset:
    """The chosen scores of one variable of one system, lazily, merged into one Dataset
    (dims `region`, `lead_time` and each score's own), plus `missing_members` (NaN member
    values per init and lead, for the caller's check).

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
    outputs = []
    for entry in scores:
        computed = dict(entry.compute(context))
        unexpected = set(computed) - set(entry.outputs)
        if unexpected:
            raise ScoreError(f"score {entry.name!r} gave undeclared outputs {sorted(unexpected)}")
        outputs.append(computed)
    outputs.append({"missing_members": context.missing_members()})
    return xr.merge(outputs, compat="no_conflicts", join="exact")
