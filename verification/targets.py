"""The targets of a trustworthy ensemble, measured with block-bootstrap intervals
(`target_values`, `bootstrap_targets`, `targets_table`, `wxens targets`).

For each system of a scores dataset (global means, `region="global"`), its values and targets:

- `spread_skill_ratio` (dim `ratio_day`, days 2-10): at lead = day, mean over the variables;
  in [0.9, 1.1] on every day.
- `outlier_fraction`: the truth outside the members, mean over the variables and the 6-hourly
  leads of days 1-10; at most 1.5 x 2/(M+1) (`outlier_fraction_allowed`).
- `crps_beats_baseline`: the share of variable x 6-hourly lead cases of days 1-10 whose fair
  CRPS is below the baseline's; at least 0.95.
- `crps_over_limit` (dim `limit_day`, days 1, 3, 5, 10): fair CRPS over the limit's, mean over
  the variables; no threshold: how far the ensemble is from what the world allows.
- `power_ratio` (dim `variable`): the members' power summed over wavenumbers 10-16 at day 10,
  over the truth's; within 20 % of 1.
- `rank_p_value` (dim `rank_day`, days 1-10): the chi-square test of the rank histogram
  against uniform; reported.
- `efi_roc_auc`: the ROC area of the EFI for events above the climate's 95th percentile at
  day 3, mean over the variables; at least 0.85.

The rank test (`rank_test`, from a statistics store's per-init rank counts): each field's
histogram of the M + 1 ranks is pooled into `rank_bins` (10) groups of consecutive ranks
(Jolliffe and Primo 2008: few bins keep the test's power where each bin would expect few
cases), and the chi-square statistic of the mean pooled histogram against uniform is taken
with an effective number of independent cases: the grid points are spatially correlated, so
counting the 2,112 points of a field as independent would reject every ensemble. The
effective points per field come from the spread of the fields' own histograms (a design
effect, Kish 1965): with n independent points, a bin of probability p varies across fields
with variance p (1 - p) / n, so n = sum_k p_k (1 - p_k) / sum_k s_k^2 with s_k^2 the
variance of bin k across the (init, variable) fields. Variation of the calibration itself
from init to init adds to s_k^2, which makes the test conservative.

The intervals (`bootstrap_targets`): a moving-block bootstrap over init times (Kuensch 1989)
from a statistics store (`wxens verify --stats`): each resample draws blocks of `block`
consecutive inits, with replacement, until it has as many inits as the store, and finalizes
their statistics as `finalize` does. Forecasts from inits closer than their longest lead share
valid times, so their errors are correlated: the default block spans the longest lead
(`ceil(longest lead / init spacing)`, 2 for 10-day leads from inits 5 days apart).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats as scipy_stats
from wxens.verification.bootstrap import block_resample, default_block
from wxens.verification.errors import ScoreError
from wxens.verification.stats_store import StoredStatistics, read_statistics
from wxens.verification.verify import INIT, LEAD

TARGET_SCORES = (
    "crps",
    "spread_skill_ratio",
    "outlier_fraction",
    "rank_histogram",
    "efi_roc_auc",
    "spectra",
)
"""The scores the targets read: a statistics store or scores dataset must hold them."""

BOUNDS = ("low", "high")


@dataclass(frozen=True)
class Targets:
    """The thresholds and leads of the targets (module table)."""

    ratio_band: tuple[float, float] = (0.9, 1.1)
    ratio_days: tuple[int, ...] = tuple(range(2, 11))
    outlier_factor: float = 1.5
    beats_fraction: float = 0.95
    scored_days: tuple[float, float] = (1.0, 10.0)
    limit_days: tuple[int, ...] = (1, 3, 5, 10)
    power_day: int = 10
    power_wavenumbers: tuple[int, int] = (10, 16)
    power_tolerance: float = 0.2
    rank_days: tuple[int, ...] = tuple(range(1, 11))
    rank_bins: int = 10
    efi_day: int = 3
    efi_quantile: float = 0.95
    efi_auc: float = 0.85


def target_values(
    scores: xr.Dataset,
    baseline: str | None = "nwp",
    limit: str | None = "limit",
    targets: Targets = Targets(),
) -> xr.Dataset:
    """The targets' values (module table) of every system in `scores` (`wxens verify`'s
    dataset, or `finalize` of a statistics store), global means. `baseline` and `limit` name
    systems of `scores` (None, or absent: those values are left out).

    Example:
        >>> values = target_values(finalize(path), baseline="nwp", limit="limit")  # doctest: +SKIP
        >>> values.spread_skill_ratio.sel(system="forecast", ratio_day=5)  # doctest: +SKIP
    """
    missing = [
        name for name in ("crps", "spread_skill_ratio", "outlier_fraction") if name not in scores
    ]
    if missing:
        raise ScoreError(f"the targets need the score {missing[0]!r}; the scores lack it")
    scores = scores.sel(region="global") if "region" in scores.dims else scores
    days = scores[LEAD] / np.timedelta64(1, "D")
    first, last = targets.scored_days
    scored = scores.where((days >= first) & (days <= last), drop=True)
    members = json.loads(scores.attrs["members"])
    allowed = [targets.outlier_factor * 2 / (members[str(s)] + 1) for s in scores.system.values]
    values = {
        "spread_skill_ratio": _by_day(
            scores.spread_skill_ratio.mean("variable"), targets.ratio_days, "ratio_day"
        ),
        "outlier_fraction": scored.outlier_fraction.mean(("variable", LEAD)),
        "outlier_fraction_allowed": ("system", allowed),
    }
    systems = list(scores.system.values)
    if baseline in systems:
        beats = scored.crps < scored.crps.sel(system=baseline)
        values["crps_beats_baseline"] = beats.mean(("variable", LEAD)).where(
            scores.system != baseline
        )
    if limit in systems:
        over = scores.crps / scores.crps.sel(system=limit)
        values["crps_over_limit"] = _by_day(over.mean("variable"), targets.limit_days, "limit_day")
    if "power_members" in scores:
        values["power_ratio"] = _power_ratio(scores, targets)
    if "efi_roc_auc" in scores:
        efi = scores.efi_roc_auc.sel(quantile=targets.efi_quantile)
        values["efi_roc_auc"] = _at_day(efi, targets.efi_day).mean("variable")
    return xr.Dataset(values, coords={"system": systems}, attrs={"members": json.dumps(members)})


def _at_day(data: xr.DataArray, day: float) -> xr.DataArray:
    return data.sel({LEAD: np.timedelta64(round(day * 24), "h")}).drop_vars(LEAD)


def _by_day(data: xr.DataArray | xr.Dataset, days: tuple[int, ...], dim: str):
    """`data` at lead = each of `days`, along a new dimension `dim`."""
    picked = [_at_day(data, day) for day in days]
    return xr.concat(picked, dim=xr.DataArray(list(days), dims=[dim]))


def _power_ratio(scores: xr.Dataset, targets: Targets) -> xr.DataArray:
    """Members' over the truth's power, summed over `power_wavenumbers`, at `power_day`."""
    low, high = targets.power_wavenumbers
    band = {"wavenumber": slice(low, high)}
    members = _at_day(scores.power_members, targets.power_day).sel(band).sum("wavenumber")
    truth = _at_day(scores.power_truth, targets.power_day).sel(band).sum("wavenumber")
    return members / truth


def rank_test(counts: xr.DataArray, members: int, bins: int = 10) -> xr.Dataset:
    """The chi-square test of a rank histogram against uniform (module docstring).

    `counts`: per-init rank counts with dims `init_time`, `variable` and `rank` (0..M, extra
    ranks NaN), and any others (`lead_time`). Returns `rank_p_value` and
    `rank_effective_points` (independent points per field) over the other dims.

    Example: the rank of 8 independent points in each of 200 fields, drawn uniformly
        >>> rng = np.random.default_rng(1)
        >>> ranks = rng.integers(0, 10, size=(200, 8))
        >>> counts = np.stack([np.bincount(r, minlength=10) for r in ranks])
        >>> test = rank_test(xr.DataArray(counts[:, None], dims=("init_time", "variable",
        ...     "rank")), members=9, bins=5)
        >>> bool(test.rank_p_value > 0.05), round(float(test.rank_effective_points))
        (True, 8)
    """
    ranks = np.array_split(np.arange(members + 1), bins)
    pooled = xr.concat(
        [counts.isel(rank=part).sum("rank") for part in ranks],
        dim=xr.DataArray(np.arange(bins), dims=["bin"]),
    )
    frequencies = (pooled / pooled.sum("bin")).stack(field=(INIT, "variable"))
    frequencies = frequencies.dropna("field", how="all")
    expected = xr.DataArray([len(part) / (members + 1) for part in ranks], dims=["bin"])
    spread = frequencies.var("field", ddof=1).sum("bin")
    points = (expected * (1 - expected)).sum("bin") / spread
    points = np.minimum(points, counts.sum("rank").max((INIT, "variable")))
    fields = frequencies.notnull().all("bin").sum("field")
    statistic = (
        fields * points * ((frequencies.mean("field") - expected) ** 2 / expected).sum("bin")
    )
    p_value = xr.apply_ufunc(scipy_stats.chi2.sf, statistic, bins - 1)
    return xr.Dataset({"rank_p_value": p_value, "rank_effective_points": points})


def bootstrap_targets(
    stats: str | Path | Mapping[str, str | Path],
    baseline: str | None = "nwp",
    limit: str | None = "limit",
    *,
    resamples: int = 500,
    block: int | None = None,
    confidence: float = 0.9,
    seed: int = 0,
    targets: Targets = Targets(),
) -> xr.Dataset:
    """`target_values` of all the inits of a statistics store (or of several: a mapping of
    system names to stores, as `read_systems` reads them), and their `confidence` intervals
    from `resamples` moving-block bootstrap resamples of the inits (module docstring): each
    value gets a variable `<name>_interval` with a dimension `bound` (`low`, `high`); and the
    rank test (`rank_test`) of every system with rank counts, per day of `rank_days`.

    Raises ScoreError when the store lacks a score the targets need, or has fewer than two
    blocks of inits.
    """
    stored = read_systems(stats)
    recorded = json.loads(stored.attrs["scores"])
    chosen = stored.chosen([name for name in TARGET_SCORES if name in recorded])
    stored.systems = {name: data.sel(region=["global"]) for name, data in stored.systems.items()}
    first = next(iter(stored.systems.values()))
    inits = first[INIT].values
    block = default_block(inits, first[LEAD].values) if block is None else block
    if len(inits) < 2 * block:
        raise ScoreError(
            f"{len(inits)} inits are fewer than two blocks of {block}; the bootstrap"
            " needs more inits"
        )
    values = target_values(stored.finalized(chosen), baseline, limit, targets)
    rng = np.random.default_rng(seed)
    draws = [
        target_values(
            stored.finalized(chosen, block_resample(len(inits), block, rng)),
            baseline,
            limit,
            targets,
        )
        for _ in range(resamples)
    ]
    tail = (1 - confidence) / 2
    for name in values.data_vars:
        if name == "outlier_fraction_allowed":
            continue
        stacked = xr.concat([draw[name] for draw in draws], dim="resample")
        with warnings.catch_warnings():  # the baseline's own `crps_beats_baseline`: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            bounds = stacked.quantile([tail, 1 - tail], dim="resample").rename(quantile="bound")
        values[f"{name}_interval"] = bounds.assign_coords(bound=list(BOUNDS))
    tests = {
        name: _by_day(
            rank_test(data["rank_counts"], stored.members[name], targets.rank_bins),
            targets.rank_days,
            "rank_day",
        )
        for name, data in stored.systems.items()
        if "rank_counts" in data
    }
    if tests:
        systems = xr.DataArray(list(tests), dims=["system"])
        values = values.merge(
            xr.concat(list(tests.values()), dim=systems).squeeze("region", drop=True)
        )
    values.attrs.update(resamples=resamples, block=block, confidence=confidence, inits=len(inits))
    return values


def read_systems(stats: str | Path | Mapping[str, str | Path]) -> StoredStatistics:
    """A statistics store's systems, or those of several stores: `{name: store}` takes each
    store's forecast as system `name` (its references are left out), so that each ensemble's
    statistics can be computed once, on its own, and scored beside any others. The stores
    must hold the same inits and leads, and the same scores."""
    if not isinstance(stats, Mapping):
        return read_statistics(stats)
    if not stats:
        raise ScoreError("no statistics store to read")
    parts = {name: read_statistics(path) for name, path in stats.items()}
    first_name, first = next(iter(parts.items()))
    for name, part in parts.items():
        data, reference = part.systems["forecast"], first.systems["forecast"]
        for dim in (INIT, LEAD):
            if not np.array_equal(data[dim].values, reference[dim].values):
                raise ScoreError(
                    f"{stats[name]} ({name}) holds other {dim}s than {stats[first_name]}"
                )
        if part.attrs["scores"] != first.attrs["scores"]:
            raise ScoreError(f"{stats[name]} ({name}) keeps other scores than {stats[first_name]}")
    members = {name: part.members["forecast"] for name, part in parts.items()}
    systems = {name: part.systems["forecast"] for name, part in parts.items()}
    attrs = {**first.attrs, "members": json.dumps(members)}
    return StoredStatistics(first.path, systems, members, first.options, attrs)


def passed(values: xr.Dataset, targets: Targets = Targets()) -> xr.Dataset:
    """Per system, whether each target with a threshold is met (by the values of all inits)."""
    low, high = targets.ratio_band
    checks = {
        "spread_skill_in_band": (
            (values.spread_skill_ratio >= low) & (values.spread_skill_ratio <= high)
        ).all("ratio_day"),
        "outliers_within_allowed": values.outlier_fraction <= values.outlier_fraction_allowed,
    }
    if "crps_beats_baseline" in values:
        checks["beats_baseline"] = values.crps_beats_baseline >= targets.beats_fraction
    if "power_ratio" in values:
        off = abs(values.power_ratio - 1)
        checks["power_within_tolerance"] = (off <= targets.power_tolerance).all("variable")
    if "efi_roc_auc" in values:
        checks["efi_roc_auc_reached"] = values.efi_roc_auc >= targets.efi_auc
    return xr.Dataset(checks)


def targets_summary(values: xr.Dataset, targets: Targets = Targets()) -> dict:
    """The values (with their intervals, where bootstrapped) and the pass marks as plain
    JSON-ready dicts, per system."""
    checks = passed(values, targets)
    summary: dict = {}
    for system in values.system.values:
        row: dict = {}
        for name in values.data_vars:
            if name.endswith("_interval"):
                continue
            row[name] = _plain(values[name].sel(system=system))
            if f"{name}_interval" in values:
                row[f"{name}_interval"] = _plain(values[f"{name}_interval"].sel(system=system))
        row["passed"] = {
            name: bool(checks[name].sel(system=system))
            for name in checks
            if not (name == "beats_baseline" and row["crps_beats_baseline"] is None)
        }  # the baseline has no pass mark against itself
        summary[str(system)] = row
    summary["bootstrap"] = {
        key: values.attrs[key] for key in BOOTSTRAP_ATTRS if key in values.attrs
    }
    return summary


BOOTSTRAP_ATTRS = ("inits", "resamples", "block", "confidence")


def _plain(data: xr.DataArray) -> object:
    """A value, or a dict by the remaining dimension's labels, rounded to 4 digits."""
    if data.ndim == 0:
        value = float(data)
        return None if math.isnan(value) else round(value, 4)
    dim = data.dims[0]
    return {str(label): _plain(data.sel({dim: label})) for label in data[dim].values}


def targets_table(values: xr.Dataset, targets: Targets = Targets()) -> str:
    """A Markdown table of the targets, one row per system: each value of all inits, with its
    interval in brackets where bootstrapped, and a check mark where a threshold is met."""
    checks = passed(values, targets)
    heads = ["system", "members", "spread-skill, days 2-10", "outliers (allowed)"]
    heads += ["beats baseline"] * ("crps_beats_baseline" in values)
    heads += [f"CRPS / limit, day {d}" for d in targets.limit_days] * ("crps_over_limit" in values)
    heads += ["day-10 power 10-16 / truth"] * ("power_ratio" in values)
    heads += ["EFI ROC area, day 3"] * ("efi_roc_auc" in values)
    heads += ["rank test p, days 1-10"] * ("rank_p_value" in values)
    members = json.loads(values.attrs["members"])
    rows = []
    for system in values.system.values:
        one = values.sel(system=system)
        mark = {name: " ok" if bool(checks[name].sel(system=system)) else "" for name in checks}
        ratio = one.spread_skill_ratio
        cells = [
            str(system),
            str(members[str(system)]),
            f"{float(ratio.min()):.2f}-{float(ratio.max()):.2f}"
            + _bounds(one, "spread_skill_ratio", "ratio_day")
            + mark["spread_skill_in_band"],
            f"{_cell(one, 'outlier_fraction')} ({float(one.outlier_fraction_allowed):.3f})"
            + mark["outliers_within_allowed"],
        ]
        if "crps_beats_baseline" in values:
            cells.append(_cell(one, "crps_beats_baseline") + mark["beats_baseline"])
        if "crps_over_limit" in values:
            cells += [_cell(one, "crps_over_limit", limit_day=d) for d in targets.limit_days]
        if "power_ratio" in values:
            power = one.power_ratio
            cells.append(
                " / ".join(f"{float(v):.2f}" for v in power.values) + mark["power_within_tolerance"]
            )
        if "efi_roc_auc" in values:
            cells.append(_cell(one, "efi_roc_auc") + mark["efi_roc_auc_reached"])
        if "rank_p_value" in values:
            p = one.rank_p_value
            cells.append(f"{float(p.min()):.2g}-{float(p.max()):.2g}")
        rows.append(cells)
    lines = ["| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _cell(one: xr.Dataset, name: str, **labels: object) -> str:
    """`value [low, high]`, or `value` where not bootstrapped; `-` where not defined."""
    value = float(one[name].sel(labels))
    if math.isnan(value):
        return "-"
    interval = f"{name}_interval"
    if interval not in one:
        return f"{value:.3g}"
    low, high = one[interval].sel(labels).values
    return f"{value:.3g} [{low:.3g}, {high:.3g}]"


def _bounds(one: xr.Dataset, name: str, dim: str) -> str:
    """` [lowest low, highest high]` over `dim` of a bootstrapped value, else nothing."""
    interval = f"{name}_interval"
    if interval not in one:
        return ""
    low, high = one[interval].sel(bound="low").min(), one[interval].sel(bound="high").max()
    return f" [{float(low):.2f}, {float(high):.2f}]"
