"""Skill scores, scorecards and the HTML verification report, drawn from a scores dataset."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from collections.abc import Callable, Iterator
from functools import partial
from itertools import count
from pathlib import Path

import jinja2
import matplotlib
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from wxens.verification.bootstrap import block_resamples, default_block
from wxens.verification.errors import ScoreError
from wxens.verification.natural_earth import cartopy_data_dir, coastline_data_available
from wxens.verification.plots import (
    LEAD_TIME,
    SPECTRA,
    SYSTEM,
    MapPanel,
    lead_label,
    plot_gap_closed,
    plot_maps,
    plot_rank_histogram,
    plot_reliability,
    plot_score_by_lead,
    plot_spectra,
    plot_spread_skill,
    save_figure,
    select_score,
)
from wxens.verification.scores import BY_INIT, resolve_scores
from wxens.verification.verify import VerifyOptions

# The value of a perfect forecast for each score that has a skill score.
PERFECT_SCORE = {
    "crps": 0.0,
    "crps_ecdf": 0.0,
    "rmse": 0.0,
    "brier_score": 0.0,
    "twcrps": 0.0,
    "energy_score": 0.0,
    "acc": 1.0,
    "roc_auc": 1.0,
}
INIT = "init_time"
MAP_PREFIX = "map_"
HOUR = np.timedelta64(1, "h")
SCORECARD_DIMS = (SYSTEM, "variable", "region", LEAD_TIME)
RELIABILITY = tuple(
    f"reliability_{name}" for name in ("forecast_probability", "observed_frequency", "count")
)
REPORT_LEADS = 3
SCORECARD_LEADS = 12

Facets = dict[str, str]
"""What a figure shows, by facet (`variable`, `region`, `score`): the report's selector shows
the figures whose facets match the chosen values (a figure without a facet always matches)."""
Figures = Iterator[tuple[str, Callable[[], Figure], Facets]]
"""(caption, a function that draws the figure, facets): `report` draws them in parallel."""
FACETS = ("variable", "region", "score")


def skill_score(scores: xr.Dataset, score: str, reference: str) -> xr.DataArray:
    """Skill of every system but `reference` against it: `(S_ref - S) / (S_ref - S_perfect)`.

    For negatively oriented scores (CRPS, RMSE, Brier, energy score; perfect 0) that is
    `1 - S / S_ref` (e.g. CRPSS); for `acc` and `roc_auc` (perfect 1) `(S - S_ref) / (1 - S_ref)`.
    1 is a perfect forecast, 0 no better than the reference, negative worse. Unitless; keeps
    every dimension of `scores[score]`.
    """

    def skill_of(values: xr.DataArray, reference_values: xr.DataArray) -> xr.DataArray:
        return (reference_values - values) / (reference_values - PERFECT_SCORE[score])

    skill = _against_reference(scores, score, reference, skill_of).rename(f"{score}_skill")
    skill.attrs = {"long_name": f"{score} skill score against {reference}", "units": "1"}
    return skill


def percent_difference(scores: xr.Dataset, score: str, reference: str) -> xr.DataArray:
    """`100 (S - S_ref) / |S_ref|` of every system but `reference`: WeatherBench2's scorecard
    number. Negative is better for negatively oriented scores (CRPS, RMSE, ...; perfect 0),
    positive for `acc` and `roc_auc` (perfect 1). Units: %."""

    def difference_of(values: xr.DataArray, reference_values: xr.DataArray) -> xr.DataArray:
        return 100 * (values - reference_values) / abs(reference_values)

    difference = _against_reference(scores, score, reference, difference_of)
    return difference.rename(f"{score}_percent_difference").assign_attrs(units="%")


LIMIT = "limit"
"""The system name of the predictability limit (`--reference limit=STORE`, member kind
`truth`): the report shows how much of the gap to it each ensemble closes."""


def gap_closed(
    scores: xr.Dataset, score: str = "crps", baseline: str = "nwp", limit: str = LIMIT
) -> xr.DataArray:
    """The fraction of the gap between `baseline` and the predictability `limit` that each
    other system closes: `(S_baseline - S) / (S_baseline - S_limit)`.

    1 means the system scores as well as the limit (as well as any forecast from those initial
    states can), 0 as the baseline, negative worse than the baseline. Unitless; NaN where the
    baseline equals the limit. Keeps every dimension of `scores[score]` but `system`'s two.

    Example:
        >>> scores = xr.Dataset(
        ...     {"crps": (("system", "lead_time"), [[3.0, 5.0], [4.0, 6.0], [2.0, 2.0]])},
        ...     coords={"system": ["sfno", "nwp", "limit"], "lead_time": [1, 2]})
        >>> gap_closed(scores).values.round(2).tolist()
        [[0.5, 0.25]]
    """
    _check_system(scores, limit)

    def closed(values: xr.DataArray, baseline_values: xr.DataArray) -> xr.DataArray:
        limit_values = values.sel({SYSTEM: limit})
        return (baseline_values - values) / (baseline_values - limit_values)

    gap = _against_reference(scores, score, baseline, closed).drop_sel({SYSTEM: limit})
    attrs = {"long_name": f"{score} gap closed from {baseline} to {limit}", "units": "1"}
    return gap.rename(f"{score}_gap_closed").assign_attrs(attrs, baseline=baseline, score=score)


def _against_reference(
    scores: xr.Dataset,
    score: str,
    reference: str,
    compare: Callable[[xr.DataArray, xr.DataArray], xr.DataArray],
) -> xr.DataArray:
    """`compare(S, S_ref)` for every system but `reference`, with the dims of `scores[score]`."""
    values = select_score(scores, score)
    if score not in PERFECT_SCORE:
        raise ScoreError(f"no skill score for {score!r}; it is defined for {list(PERFECT_SCORE)}")
    _check_system(scores, reference)
    compared = compare(values, values.sel({SYSTEM: reference}, drop=True))
    return compared.transpose(*values.dims).drop_sel({SYSTEM: reference})


def not_significant(
    by_init: xr.DataArray | xr.Dataset,
    reference: str,
    finalize: Callable[[xr.Dataset], xr.DataArray] | None = None,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    block: int = 1,
) -> xr.DataArray:
    """Where a paired bootstrap over init times cannot tell a system from `reference`.

    `by_init` holds a score per init time (dims `system`, ..., `init_time`; the score is its
    mean over inits), or the statistics per init that `finalize` turns into the score (a
    Dataset: `Score.finalize` of the registry, so nonlinear scores such as the RMSE or the
    spread-skill ratio are finalized from resampled statistics, not averaged). Each of
    `resamples` draws takes the init times in blocks of `block` consecutive ones
    (`bootstrap.block_resample`; 1: Efron's iid bootstrap), the same draw for every system and
    cell (paired), and computes the % difference of the system's score from the reference's.
    True where the central `confidence` interval of those differences contains 0 (or a value is
    missing). References: Efron & Tibshirani (1993), ch. 13; Kuensch (1989) for the moving
    blocks; WeatherBench2 scorecards (Rasp et al. 2024).
    """
    if isinstance(by_init, xr.DataArray):
        by_init = by_init.to_dataset(name="score")

        def finalize(drawn: xr.Dataset) -> xr.DataArray:
            return drawn["score"].mean(INIT)

    inits = by_init.sizes[INIT]
    positions = block_resamples(inits, min(block, inits), resamples, seed)
    drawn = by_init.isel({INIT: xr.DataArray(positions, dims=("resample", INIT))})
    values = finalize(drawn).transpose(SYSTEM, ..., "resample")
    reference_values = values.sel({SYSTEM: reference})
    difference = ((values - reference_values) / abs(reference_values)).values
    tail = (1 - confidence) / 2
    low, high = np.quantile(difference, [tail, 1 - tail], axis=-1)
    separated = (low > 0) | (high < 0)
    template = values.isel(resample=0, drop=True)
    result = xr.DataArray(~separated, dims=template.dims, coords=template.coords)
    return result.drop_sel({SYSTEM: reference})


SIGNIFICANCE_RESAMPLES = 500


def score_not_significant(
    scores: xr.Dataset, score: str, reference: str, confidence: float = 0.95
) -> xr.DataArray | None:
    """`not_significant` of a registry score from the statistics per init that the scores
    dataset keeps (`{statistic}_by_init`), in moving blocks of `bootstrap.default_block`
    inits (the longest lead over the init spacing: forecasts that share valid times are
    resampled together), SIGNIFICANCE_RESAMPLES draws. None when the dataset lacks those
    statistics (a score from tables, such as the ROC area) or the systems' member counts."""
    (entry,) = resolve_scores([score])
    names = [f"{name}{BY_INIT}" for name in entry.statistics_names]
    if not set(names) <= set(scores.data_vars) or "members" not in scores.attrs:
        return None
    by_init = xr.Dataset({name: scores[f"{name}{BY_INIT}"] for name in entry.statistics_names})
    members = json.loads(scores.attrs["members"])
    options = VerifyOptions.from_record(json.loads(scores.attrs.get("options", "{}")))

    def finalize(drawn: xr.Dataset) -> xr.DataArray:
        per_system = [
            entry.finalize(drawn.sel({SYSTEM: system}), members[system], options)[score]
            for system in drawn[SYSTEM].values
        ]
        return xr.concat(per_system, dim=drawn[SYSTEM])

    block = scorecard_block(scores)
    hatched = not_significant(
        by_init, reference, finalize, confidence, SIGNIFICANCE_RESAMPLES, block=block
    )
    return hatched.transpose(*[dim for dim in scores[score].dims if dim in hatched.dims])


def scorecard_block(scores: xr.Dataset) -> int:
    """The scorecards' block: `bootstrap.default_block` (the longest lead over the init
    spacing), at most a third of the inits, so that a resample joins three blocks or more."""
    block = default_block(scores[INIT].values, scores[LEAD_TIME].values)
    return max(1, min(block, scores.sizes[INIT] // 3))


def significance_note(scores: xr.Dataset) -> str:
    """How the scorecards' hatching is tested, for the report."""
    if INIT not in scores.dims:
        return "No statistics per init time: the scorecards are not tested for significance."
    block = scorecard_block(scores)
    return (
        "Hatched cells: not significant. A paired moving-block bootstrap over the "
        f"{scores.sizes[INIT]} init times (blocks of {block} consecutive inits: the longest "
        "lead over the init spacing, at most a third of the inits; "
        f"{SIGNIFICANCE_RESAMPLES} draws) finalizes each score from "
        "the resampled statistics of both systems; a cell is hatched where the central 95 % "
        "interval of the % difference contains 0. Scores drawn from contingency tables (ROC "
        "area) are not tested."
    )


def scorecard(
    scores: xr.Dataset,
    reference: str,
    score: str = "crps",
    path: str | Path | None = None,
) -> Figure:
    """One panel per non-reference system: rows variable x region, columns lead time, cells
    the % difference of the score from `reference` (`percent_difference`), coloured blue where
    better and red where worse, and hatched where `score_not_significant` (when the dataset
    has the score's statistics per init time). A score with an extra dimension (e.g.
    `brier_score` by `quantile`) needs one value of it selected first:
    `scorecard(scores.sel(quantile=0.9), ...)`.
    """
    difference, better, hatched = _scorecard_cells(scores, reference, score)
    rows, leads = difference.sizes["row"], difference.sizes[LEAD_TIME]
    figure = Figure(
        figsize=(2.5 + 0.7 * leads, difference.sizes[SYSTEM] * (1.0 + 0.3 * rows)),
        layout="constrained",
    )
    axes = figure.subplots(difference.sizes[SYSTEM], 1, squeeze=False)[:, 0]
    limit = _colour_limit(better.values)
    for ax, system in zip(axes, difference[SYSTEM].values, strict=True):
        cells = better.sel({SYSTEM: system}).values
        image = ax.imshow(cells, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for (row, column), value in np.ndenumerate(difference.sel({SYSTEM: system}).values):
            text = "–" if np.isnan(value) else f"{value:+.0f}%"
            colour = "white" if abs(cells[row, column]) > 0.6 * limit else "black"
            ax.text(column, row, text, ha="center", va="center", fontsize=7, color=colour)
            if hatched is not None and hatched.sel({SYSTEM: system}).values[row, column]:
                corner = (column - 0.5, row - 0.5)
                ax.add_patch(Rectangle(corner, 1, 1, fill=False, hatch="///", linewidth=0))
        ax.set_xticks(range(leads), [lead_label(lead) for lead in difference[LEAD_TIME].values])
        ax.set_yticks(range(rows), [f"{v} / {r}" for v, r in difference["row"].values])
        ax.set_title(f"{score} of {system}: % difference from {reference}", fontsize="medium")
    label = "improvement on the reference (%)"
    if hatched is not None:
        label += "; hatched: not significant"
    figure.colorbar(image, ax=list(axes), label=label, shrink=0.8)
    return save_figure(figure, path)


def scorecard_table(scores: xr.Dataset, reference: str, score: str = "crps") -> str:
    """The scorecard as Markdown: one table per non-reference system, a row per
    variable x region, a column per lead time, skill scores to 3 decimals."""
    skill = _scorecard_skill(scores, score, reference)
    leads = [lead_label(lead) for lead in skill[LEAD_TIME].values]
    tables = []
    for system in skill[SYSTEM].values:
        lines = [
            f"### {score} skill of {system} against {reference}",
            "",
            "| variable | region | " + " | ".join(leads) + " |",
            "| --- | --- |" + " ---: |" * len(leads),
        ]
        for (variable, region), cells in zip(
            skill["row"].values, skill.sel({SYSTEM: system}).values, strict=True
        ):
            lines.append(
                f"| {variable} | {region} | " + " | ".join(f"{v:.3f}" for v in cells) + " |"
            )
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"


SUMMARY_SCORES = {"crps": ".3g", "rmse": ".3g", "spread_skill_ratio": ".2f"}


def summary_table(scores: xr.Dataset, region: str | None = None, leads: int = 5) -> str:
    """Markdown: per system and variable, CRPS / RMSE / spread-skill ratio (those the dataset
    holds) at up to `leads` evenly spaced lead times in `region` (default: `global`, else the
    first region); what `wxens verify` prints. Empty when the dataset holds none of them.

    Example:
        >>> scores = xr.Dataset(
        ...     {"rmse": (("system", "variable", "region", "lead_time"), [[[[1.5]]]])},
        ...     coords={"system": ["forecast"], "variable": ["t"], "region": ["global"],
        ...             "lead_time": [np.timedelta64(1, "D")]})
        >>> print(summary_table(scores))
        RMSE, global
        <BLANKLINE>
        | system | variable | 1 d |
        | --- | --- | ---: |
        | forecast | t | 1.5 |
        <BLANKLINE>
    """
    present = [name for name in SUMMARY_SCORES if name in scores.data_vars]
    if not present or "region" not in scores.dims:
        return ""
    region = region if region is not None else _main_region(scores)
    picked = scores[present].sel(region=region)
    positions = np.unique(np.linspace(0, picked.sizes[LEAD_TIME] - 1, leads).round().astype(int))
    picked = picked.isel({LEAD_TIME: positions})
    heading = " | ".join(lead_label(lead) for lead in picked[LEAD_TIME].values)
    names = {"crps": "CRPS", "rmse": "RMSE", "spread_skill_ratio": "spread-skill ratio"}
    lines = [
        " / ".join(names[name] for name in present) + f", {region}",
        "",
        f"| system | variable | {heading} |",
        "| --- | --- |" + " ---: |" * picked.sizes[LEAD_TIME],
    ]
    for system in picked[SYSTEM].values:
        for variable in picked["variable"].values:
            row = picked.sel({SYSTEM: system, "variable": variable})
            columns = [row[name].values for name in present]
            cells = [
                " / ".join(
                    f"{value:{SUMMARY_SCORES[name]}}"
                    for name, value in zip(present, values, strict=True)
                )
                for values in zip(*columns, strict=True)
            ]
            lines.append(f"| {system} | {variable} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def open_scores(path: str | Path) -> xr.Dataset:
    """A scores store written by `verify`, loaded into memory.

    Example:
        >>> open_scores("/nonexistent/scores.zarr")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        wxens.verification.errors.ScoreError: /nonexistent/scores.zarr: not a scores store ...
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise ScoreError(f"{path}: not a scores store written by verify")
    try:
        return xr.open_zarr(path).load()
    except Exception as exc:  # a damaged store: name it, in one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScoreError(f"{path}: not a readable scores store: {reason}") from None


def report(
    scores: xr.Dataset | str | Path,
    out: str | Path,
    reference: str | None = None,
    title: str = "wxens verification",
) -> Path:
    """Write an HTML report of a scores dataset (or of a store written by `verify`): the page
    `out/index.html`, the PNG figures it shows and every score as CSV and JSON (`out/data/`);
    return the page's path.

    Sections, each only when the dataset holds its scores: CRPS and RMSE by lead time and
    spread-skill (every variable and region), scorecards against `reference` (default: the
    first reference, i.e. the second system, when there is one), rank histograms and
    reliability diagrams (main region, a few leads), spectra, maps (the truth, ensemble mean,
    spread, EFI and a few members of the first init), the data files and the dataset's
    provenance attributes. Every name is HTML-escaped. Raises ScoreError for an unknown
    reference or a path that is not a scores store.

    Example:
        >>> import tempfile
        >>> scores = xr.Dataset(
        ...     {"rmse": (("system", "variable", "region", "lead_time"), [[[[1.5, 2.0]]]])},
        ...     coords={"system": ["forecast"], "variable": ["t"], "region": ["global"],
        ...             "lead_time": np.array([1, 2], "timedelta64[D]")})
        >>> report(scores, tempfile.mkdtemp()).name
        'index.html'
    """
    if not isinstance(scores, xr.Dataset):
        scores = open_scores(scores)
    systems = _values(scores, SYSTEM) if SYSTEM in scores.coords else []
    if reference is None and len(systems) > 1:
        reference = systems[1]
    if reference is not None:
        _check_system(scores, reference)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = count(1)
    notes_by_heading = {"Maps": _map_notes(scores)}
    sections, drawings = [], []
    for heading, figures in (
        ("Scores by lead time", _by_lead_figures(scores)),
        ("The predictability limit", _gap_figures(scores, reference)),
        ("Rank histograms", _rank_histogram_figures(scores)),
        ("Reliability", _reliability_figures(scores)),
        ("Spectra", _spectra_figures(scores)),
        ("Maps", _map_figures(scores)),
    ):
        named = [
            (caption, draw, facets, f"{next(numbers):03d}-{_slug(caption)}.png")
            for caption, draw, facets in figures
        ]
        if named:
            shown = [(caption, name, facets) for caption, _, facets, name in named]
            notes = notes_by_heading.get(heading, [])
            sections.append({"heading": heading, "figures": shown, "notes": notes})
            drawings += [(draw, out_dir / name) for _, draw, _, name in named]
    draw_figures(drawings)
    (out_dir / SELECTOR_SCRIPT).write_text(_SELECTOR_JS, encoding="utf-8")
    page = _TEMPLATE.render(
        title=title,
        systems=systems,
        reference=reference,
        headline=headline_table(scores, reference),
        scorecards=scorecard_cards(scores, reference),
        significance=significance_note(scores),
        selectors=_selectors(sections, scores),
        script=SELECTOR_SCRIPT,
        sections=sections,
        not_scored=_not_scored(scores),
        data_files=write_score_tables(scores, out_dir / "data"),
        provenance=[(str(key), str(value)) for key, value in scores.attrs.items()],
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


HEADLINE_DAYS = (1, 3, 5, 10)


def _headline_leads(scores: xr.Dataset) -> list[np.timedelta64]:
    """Days 1, 3, 5 and 10 where the scores have them, else up to four leads."""
    leads = scores[LEAD_TIME].values
    wanted = [lead for lead in leads if lead / np.timedelta64(1, "D") in HEADLINE_DAYS]
    if wanted:
        return wanted
    return list(leads[np.unique(np.linspace(0, leads.size - 1, 4).round().astype(int))])


def headline_table(scores: xr.Dataset, reference: str | None) -> dict | None:
    """The report's first table, for the main region: per system and variable, at days 1, 3,
    5 and 10, the fair CRPS skill against `reference` (`1 - CRPS / CRPS_ref`), the
    spread-skill ratio and the outlier fraction, each cell with its raw values as a hover
    title and marked good or poor (skill above 0; ratio within 0.9-1.1; outliers at most
    1.5 x 2/(M + 1)). None without those scores."""
    present = [
        name for name in ("crps", "spread_skill_ratio", "outlier_fraction") if name in scores
    ]
    if not present or SYSTEM not in scores.dims:
        return None
    region, leads = _main_region(scores), _headline_leads(scores)
    at = scores.sel(region=region, lead_time=leads)
    members = json.loads(scores.attrs.get("members") or "{}")
    rows = []
    for system in _values(scores, SYSTEM):
        for variable in _values(scores, "variable"):
            one = at.sel({SYSTEM: system, "variable": variable})
            cells = []
            for k, lead in enumerate(leads):
                when = f"{system}, {variable}, {region}, {lead_label(lead)}"
                cells += [
                    _skill_cell(at, one, variable, reference, system, k, when),
                    _ratio_cell(one, k, when),
                    _outlier_cell(one, members.get(system), k, when),
                ]
            rows.append({"system": system, "variable": variable, "cells": cells})
    return {"region": region, "leads": [lead_label(lead) for lead in leads], "rows": rows}


Cell = tuple[str, str, str]
"""(text, hover title, CSS class) of a headline cell."""


def _skill_cell(at, one, variable, reference, system, k, when) -> Cell:
    if "crps" not in one or reference is None or system == reference:
        return ("–", f"{when}: the reference" if system == reference else when, "")
    crps = float(one.crps.isel(lead_time=k))
    crps_ref = float(at.crps.sel({SYSTEM: reference, "variable": variable}).isel(lead_time=k))
    skill = 1 - crps / crps_ref
    title = f"{when}: CRPS {crps:.4g} against {reference}'s {crps_ref:.4g}"
    return (f"{skill:+.2f}", title, "good" if skill > 0 else "poor")


def _ratio_cell(one, k, when) -> Cell:
    if "spread_skill_ratio" not in one:
        return ("–", when, "")
    ratio = float(one.spread_skill_ratio.isel(lead_time=k))
    title = f"{when}: spread-skill ratio {ratio:.3f} (calibrated: 1)"
    return (f"{ratio:.2f}", title, "good" if 0.9 <= ratio <= 1.1 else "poor")


def _outlier_cell(one, members, k, when) -> Cell:
    if "outlier_fraction" not in one:
        return ("–", when, "")
    fraction = float(one.outlier_fraction.isel(lead_time=k))
    if not members:
        return (f"{fraction:.3f}", f"{when}: outlier fraction {fraction:.4f}", "")
    calibrated = 2 / (members + 1)
    title = f"{when}: outlier fraction {fraction:.4f} (calibrated: {calibrated:.4f})"
    return (f"{fraction:.3f}", title, "good" if fraction <= 1.5 * calibrated else "poor")


def _selectors(sections: list[dict], scores: xr.Dataset) -> list[dict]:
    """A selector per facet with two or more values among the figures: its options (`all`
    first) and the value shown first (the first variable, the main region, every score)."""
    firsts = {"variable": None, "region": _main_region(scores) if "region" in scores.dims else None}
    selectors = []
    for facet in FACETS:
        values = list(
            dict.fromkeys(
                figure[2][facet]
                for section in sections
                for figure in section["figures"]
                if facet in figure[2]
            )
        )
        if len(values) < 2:
            continue
        chosen = firsts.get(facet) or (values[0] if facet == "variable" else "all")
        selectors.append({"facet": facet, "values": values, "chosen": chosen})
    return selectors


SELECTOR_SCRIPT = "report.js"
_SELECTOR_JS = """// The report's selector: show the figures whose facets match every chosen value.
// Written by wxens with the report; no network, no library.
function applySelection() {
  const chosen = {};
  for (const select of document.querySelectorAll("select[data-facet]")) {
    chosen[select.dataset.facet] = select.value;
  }
  for (const figure of document.querySelectorAll("figure[data-facets]")) {
    const facets = JSON.parse(figure.dataset.facets);
    const shown = Object.entries(chosen).every(
      ([facet, value]) => value === "all" || !(facet in facets) || facets[facet] === value
    );
    figure.hidden = !shown;
  }
  for (const section of document.querySelectorAll("section.figures")) {
    const any = section.querySelector("figure[data-facets]:not([hidden])");
    section.querySelector(".empty").hidden = Boolean(any);
  }
}
document.addEventListener("DOMContentLoaded", () => {
  for (const select of document.querySelectorAll("select[data-facet]")) {
    select.addEventListener("change", applySelection);
  }
  applySelection();
});
"""


def write_score_tables(scores: xr.Dataset, folder: Path) -> list[str]:
    """Every score (not the maps) as `folder/NAME.csv` and `folder/NAME.json` (records, one per
    value, lead times in hours, NaN as empty / null); return the paths relative to the report."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(str(name) for name in scores.data_vars):
        if name.startswith(MAP_PREFIX):
            continue
        frame = scores[name].to_dataframe().reset_index()
        for column in frame.columns:
            if pd.api.types.is_timedelta64_dtype(frame[column]):
                frame[column.replace("_time", "") + "_hours"] = frame.pop(column) / HOUR
        frame = frame[[c for c in frame.columns if c != name] + [name]]
        frame.to_csv(folder / f"{name}.csv", index=False)
        frame.to_json(folder / f"{name}.json", orient="records", date_format="iso", indent=1)
        written += [f"{folder.name}/{name}.csv", f"{folder.name}/{name}.json"]
    return written


def _check_system(scores: xr.Dataset, system: str) -> None:
    systems = scores[SYSTEM].values.tolist() if SYSTEM in scores.coords else []
    if system not in systems:
        raise ScoreError(f"unknown reference system {system!r}: the dataset has {systems}")


def _scorecard_skill(scores: xr.Dataset, score: str, reference: str) -> xr.DataArray:
    """Skill `(system, row, lead_time)`, rows the (variable, region) pairs."""
    return _scorecard_rows(skill_score(scores, score, reference), score)


def _scorecard_cells(
    scores: xr.Dataset, reference: str, score: str
) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray | None]:
    """A scorecard's cells as `(system, row, lead_time)`: the % difference from `reference`,
    the improvement (the difference, sign turned for negatively oriented scores) and where it
    is not significant (None when untested)."""
    difference = _scorecard_rows(percent_difference(scores, score, reference), score)
    better = difference if PERFECT_SCORE[score] == 1.0 else -difference
    hatched = score_not_significant(scores, score, reference)
    return difference, better, None if hatched is None else _scorecard_rows(hatched, score)


def _scorecard_rows(values: xr.DataArray, score: str) -> xr.DataArray:
    """`values` as `(system, row, lead_time)`, rows the (variable, region) pairs."""
    extra = [dim for dim in values.dims if dim not in SCORECARD_DIMS]
    if extra:
        raise ScoreError(
            f"{score!r} has extra dimension(s) {extra}: select one value first,"
            f" e.g. scores.sel({extra[0]}=...)"
        )
    if values.sizes[SYSTEM] == 0:
        raise ScoreError("no system besides the reference to score")
    return values.stack(row=("variable", "region")).transpose(SYSTEM, "row", LEAD_TIME)


def _colour_limit(values: np.ndarray) -> float:
    """A symmetric colour range (%): the largest |value|, between 5 and 100."""
    finite = np.abs(values[np.isfinite(values)])
    return float(np.clip(finite.max(initial=0.0), 5.0, 100.0))


def _by_lead_figures(scores: xr.Dataset) -> Figures:
    for variable in _values(scores, "variable"):
        for region in _values(scores, "region"):
            where = f"{variable}, {region}"
            for score in ("crps", "rmse"):
                if score in scores.data_vars:
                    draw = partial(
                        plot_score_by_lead, scores, score, variable=variable, region=region
                    )
                    facets = {"variable": variable, "region": region, "score": score}
                    yield f"{score}: {where}", draw, facets
            if {"rmse", "spread"} <= set(scores.data_vars):
                yield (
                    f"spread and skill: {where}",
                    partial(plot_spread_skill, scores, variable, region),
                    {"variable": variable, "region": region, "score": "spread-skill"},
                )


def scorecard_cards(scores: xr.Dataset, reference: str | None) -> list[dict]:
    """The report's scorecards as HTML tables, one per skill score present (per value of an
    extra dimension, e.g. quantile): a row per system x variable x region, a column per lead
    (`_scorecard_leads`), cells the % difference from `reference` coloured as `scorecard`
    colours them, hatched where `score_not_significant`, with the two scores as hover
    titles."""
    if reference is None or scores.sizes.get(SYSTEM, 0) < 2:
        return []
    scores = scores.sel({LEAD_TIME: _scorecard_leads(scores)})
    cards = []
    for score in PERFECT_SCORE:
        if score not in scores.data_vars:
            continue
        extra = [dim for dim in scores[score].dims if dim not in SCORECARD_DIMS]
        choices = [({}, "")] if not extra else [
            ({extra[0]: value}, f", {extra[0]} {value:g}") for value in scores[extra[0]].values
        ]  # fmt: skip
        for chosen, suffix in choices:
            cards.append(_scorecard_card(scores.sel(chosen), reference, score, suffix))
    return cards


def _scorecard_card(scores: xr.Dataset, reference: str, score: str, suffix: str) -> dict:
    difference, better, hatched = _scorecard_cells(scores, reference, score)
    values = _scorecard_rows(select_score(scores, score).drop_sel({SYSTEM: reference}), score)
    reference_values = _scorecard_rows(
        select_score(scores, score).sel({SYSTEM: [reference]}), score
    ).isel({SYSTEM: 0})
    limit = _colour_limit(better.values)
    leads = [lead_label(lead) for lead in difference[LEAD_TIME].values]
    rows = []
    for system in difference[SYSTEM].values:
        for r, (variable, region) in enumerate(difference["row"].values):
            cells = []
            for k, lead in enumerate(leads):
                value = float(difference.sel({SYSTEM: system}).values[r, k])
                gain = float(better.sel({SYSTEM: system}).values[r, k])
                plain = hatched is not None and bool(hatched.sel({SYSTEM: system}).values[r, k])
                ours = float(values.sel({SYSTEM: system}).values[r, k])
                theirs = float(reference_values.values[r, k])
                title = (
                    f"{system} against {reference}, {variable} / {region}, {lead}: {score} "
                    f"{ours:.4g} against {theirs:.4g} ({value:+.1f} %)"
                    + (", not significant" if plain else "")
                )
                cells.append(_scorecard_cell(value, gain, limit, plain, title))
            rows.append({"label": f"{system}: {variable} / {region}", "cells": cells})
    caption = f"{score} scorecard{suffix}: % difference from {reference}"
    return {"caption": caption, "facets": {"score": score}, "leads": leads, "rows": rows}


def _scorecard_cell(value: float, gain: float, limit: float, plain: bool, title: str) -> dict:
    """A cell's text, hover title, colours (`RdBu` on +-limit, as `scorecard`) and hatching."""
    if not np.isfinite(value):
        return {"text": "–", "title": title, "style": "", "hatched": False}
    colour = matplotlib.colors.to_hex(matplotlib.colormaps["RdBu"]((gain / limit + 1) / 2))
    ink = "#fff" if abs(gain) > 0.6 * limit else "#000"
    style = f"background-color: {colour}; color: {ink}"
    return {"text": f"{value:+.0f}%", "title": title, "style": style, "hatched": plain}


def _gap_figures(scores: xr.Dataset, reference: str | None) -> Figures:
    """With a `limit` system and another reference: the CRPS gap each ensemble closes."""
    systems = _values(scores, SYSTEM) if SYSTEM in scores.coords else []
    if LIMIT not in systems or reference in (None, LIMIT) or "crps" not in scores.data_vars:
        return
    gap = gap_closed(scores, "crps", reference)
    region = _main_region(scores)
    for variable in _values(scores, "variable"):
        yield (
            f"CRPS gap closed from {reference} to the limit: {variable}, {region}",
            partial(plot_gap_closed, gap, variable, region),
            {"variable": variable, "region": region, "score": "crps"},
        )


def _scorecard_leads(scores: xr.Dataset) -> np.ndarray:
    """Every lead time, or past SCORECARD_LEADS of them the whole days after 0 (a readable
    card, as WeatherBench2 draws)."""
    leads = scores[LEAD_TIME].values
    days = leads[(leads > np.timedelta64(0)) & (leads % np.timedelta64(1, "D") == 0)]
    return leads if leads.size <= SCORECARD_LEADS or days.size == 0 else days


def _rank_histogram_figures(scores: xr.Dataset) -> Figures:
    if "rank_histogram" not in scores.data_vars:
        return
    region = _main_region(scores)
    for variable in _values(scores, "variable"):
        for lead in _few_leads(scores):
            draw = partial(plot_rank_histogram, scores, variable, region, lead)
            facets = {"variable": variable, "region": region, "score": "rank histogram"}
            yield f"rank histogram: {variable}, {region}, {lead_label(lead)}", draw, facets


def _reliability_figures(scores: xr.Dataset) -> Figures:
    if not set(RELIABILITY) <= set(scores.data_vars):
        return
    region = _main_region(scores)
    for variable in _values(scores, "variable"):
        for quantile in _values(scores, "quantile"):
            for lead in _few_leads(scores):
                draw = partial(plot_reliability, scores, variable, region, lead, quantile)
                where = f"{variable}, {region}, {lead_label(lead)}"
                facets = {"variable": variable, "region": region, "score": "reliability"}
                yield f"reliability above q{quantile:g}: {where}", draw, facets


def _spectra_figures(scores: xr.Dataset) -> Figures:
    if not set(SPECTRA) & set(scores.data_vars):
        return
    for variable in _values(scores, "variable"):
        draw = partial(plot_spectra, scores, variable, _few_leads(scores))
        yield f"spectra: {variable}", draw, {"variable": variable, "score": "spectra"}


def _map_figures(scores: xr.Dataset) -> Figures:
    """Per variable and map lead: the truth, ensemble mean and members on one colour scale,
    the spread, and the EFI on [-1, 1]."""
    if "map_ensemble_mean" not in scores.data_vars:
        return
    init = scores.attrs.get("map_init_time", "the first init")
    for variable in _values(scores, "variable"):
        maps = scores.sel(variable=variable)
        for lead in maps["map_lead_time"].values:
            at = maps.sel(map_lead_time=lead)
            states = (at.map_truth, at.map_ensemble_mean, at.map_members)
            limits = (min(float(f.min()) for f in states), max(float(f.max()) for f in states))
            panels = [
                MapPanel(at.map_truth, "truth", "RdBu_r", limits),
                MapPanel(at.map_ensemble_mean, "ensemble mean", "RdBu_r", limits),
                MapPanel(at.map_spread, "spread (ensemble std)", "viridis"),
                MapPanel(at.map_efi, "EFI", "PuOr_r", (-1.0, 1.0)),
                *(
                    MapPanel(at.map_members.sel(map_member=m), f"member {m}", "RdBu_r", limits)
                    for m in at["map_member"].values
                ),
            ]
            caption = f"maps: {variable}, init {init[:13]}, {lead_label(lead)}"
            draw = partial(plot_maps, panels, columns=4, coastlines=_on_earth(scores))
            yield caption, draw, {"variable": variable, "score": "maps"}


def _on_earth(scores: xr.Dataset) -> bool:
    return scores.attrs.get("planet", "earth") == "earth"


def _not_scored(scores: xr.Dataset) -> list[str]:
    """The chosen scores the data's geometry leaves out, with why (attribute `not_scored`)."""
    left_out = json.loads(scores.attrs.get("not_scored", "{}"))
    return [f"{name}: {why}" for name, why in left_out.items()]


def _map_notes(scores: xr.Dataset) -> list[str]:
    """What the reader should know about the maps' coastlines."""
    if "map_ensemble_mean" not in scores.data_vars:
        return []
    if not _on_earth(scores):
        return [f"The data is not on Earth (planet: {scores.attrs['planet']}): no coastlines."]
    if not coastline_data_available():
        return [
            f"No Natural Earth coastlines under {cartopy_data_dir()}: the maps are drawn without"
            " them (set WXENS_CARTOPY_DATA to a cartopy data folder)."
        ]
    return []


def _values(scores: xr.Dataset, dim: str) -> list:
    return scores[dim].values.tolist()


def _main_region(scores: xr.Dataset) -> str:
    regions = _values(scores, "region")
    return "global" if "global" in regions else regions[0]


def _few_leads(scores: xr.Dataset) -> list[np.timedelta64]:
    """The first, middle and last lead times (or all of them, when fewer)."""
    leads = scores[LEAD_TIME].values
    picks = np.unique(np.linspace(0, leads.size - 1, REPORT_LEADS).round().astype(int))
    return list(leads[picks])


def _slug(text: str) -> str:
    """A file-name-safe form of a caption."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:80]


Drawing = tuple[Callable[[], Figure], Path]
_PENDING: list[Drawing] = []
"""The drawings of `draw_figures`, which its forked workers inherit and pick by index."""


def draw_figures(drawings: list[Drawing], processes: int | None = None) -> None:
    """Draw every figure and save it as a PNG, in `processes` forked processes (default: one
    per CPU core) where fork exists.

    Each matplotlib figure draws on one core, and a report has dozens: two processes halve
    its time on two cores. Workers inherit the drawing functions and get only their indices,
    so nothing is pickled but the figures' numbers.
    """
    global _PENDING
    processes = min(processes or os.cpu_count() or 1, len(drawings))
    if processes < 2 or "fork" not in multiprocessing.get_all_start_methods():
        for index in range(len(drawings)):
            _draw(drawings, index)
        return
    _PENDING = drawings
    try:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.map(_draw_pending, range(len(drawings)), chunksize=1)
    finally:
        _PENDING = []


def _draw_pending(index: int) -> None:
    _draw(_PENDING, index)


def _draw(drawings: list[Drawing], index: int) -> None:
    draw, path = drawings[index]
    save_figure(draw(), path, dpi=80)


_TEMPLATE = jinja2.Environment(autoescape=True).from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<link rel="icon" href="data:,">
<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 75em; padding: 0 1em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #444; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
pre { margin: 0; white-space: pre-wrap; }
ul.data { columns: 3; font-size: 0.9em; }
.note { color: #8a4b00; }
table.headline td { text-align: right; }
table.headline td:nth-child(-n+2) { text-align: left; }
table.headline td.good { background: #e3f0fa; }
table.headline td.poor { background: #fbe5e1; }
form.selector { position: sticky; top: 0; background: #fff; padding: 0.5em 0; }
form.selector label { margin-right: 1.5em; }
table.scorecard td { text-align: center; min-width: 3.5em; }
table.scorecard td.hatched { background-image: repeating-linear-gradient(
  45deg, transparent 0 4px, rgba(0, 0, 0, 0.3) 4px 5px); }
</style>
<script src="{{ script }}"></script>
</head>
<body>
<h1>{{ title }}</h1>
<p>Systems: {{ systems | join(", ") }}{% if reference %}; reference: {{ reference }}{% endif %}</p>
{% if not_scored %}<p class="note">Not scored: {{ not_scored | join("; ") }}.</p>{% endif %}
{% if headline %}
<h2 id="headline">Headline: {{ headline.region }}</h2>
<p>Fair CRPS skill against {{ reference or "the reference" }} (1 - CRPS / CRPS<sub>ref</sub>),
spread-skill ratio (1 when calibrated) and outlier fraction (2/(M+1) when calibrated); blue:
skill above 0, ratio within 0.9-1.1, outliers at most 1.5 x 2/(M+1); red: not. Hover a cell
for its values.</p>
<table class="headline">
<tr><th rowspan="2">system</th><th rowspan="2">variable</th>
{% for lead in headline.leads %}<th colspan="3">{{ lead }}</th>{% endfor %}</tr>
<tr>{% for lead in headline.leads %}<th>CRPSS</th><th>ratio</th><th>outliers</th>{% endfor %}</tr>
{% for row in headline.rows %}<tr><td>{{ row.system }}</td><td>{{ row.variable }}</td>
{% for text, title, kind in row.cells %}<td class="{{ kind }}" title="{{ title }}">{{ text }}</td>
{% endfor %}
</tr>
{% endfor %}</table>
{% endif %}
<ul>
{% if scorecards %}<li><a href="#scorecards">Scorecards</a></li>{% endif %}
{% for section in sections %}<li><a href="#section-{{ loop.index }}">{{ section.heading }}</a></li>
{% endfor %}{% if data_files %}<li><a href="#data">Data</a></li>{% endif %}
{% if provenance %}<li><a href="#provenance">Provenance</a></li>{% endif %}
</ul>
{% if selectors %}<form class="selector" aria-label="figures shown">
{% for selector in selectors %}<label>{{ selector.facet }}
<select data-facet="{{ selector.facet }}">
<option value="all"{% if selector.chosen == "all" %} selected{% endif %}>all</option>
{% for value in selector["values"] %}<option value="{{ value }}"
{%- if value == selector.chosen %} selected{% endif %}>{{ value }}</option>
{% endfor %}</select></label>
{% endfor %}</form>{% endif %}
{% if scorecards %}<section class="figures">
<h2 id="scorecards">Scorecards</h2>
<p class="note">{{ significance }} Hover a cell for the two scores.</p>
<p class="empty note" hidden>No scorecard matches the selection.</p>
{% for card in scorecards %}<figure data-facets='{{ card.facets | tojson }}'>
<table class="scorecard"><tr><th></th>
{% for lead in card.leads %}<th>{{ lead }}</th>{% endfor %}</tr>
{% for row in card.rows %}<tr><th>{{ row.label }}</th>
{% for cell in row.cells %}<td style="{{ cell.style }}" title="{{ cell.title }}"
{%- if cell.hatched %} class="hatched"{% endif %}>{{ cell.text }}</td>
{% endfor %}</tr>
{% endfor %}</table>
<figcaption>{{ card.caption }}</figcaption>
</figure>
{% endfor %}</section>{% endif %}
{% for section in sections %}
<section class="figures">
<h2 id="section-{{ loop.index }}">{{ section.heading }}</h2>
{% for note in section.notes %}<p class="note">{{ note }}</p>
{% endfor %}<p class="empty note" hidden>No figure of this section matches the selection.</p>
{% for caption, file_name, facets in section.figures %}<figure data-facets='{{ facets | tojson }}'>
<img src="{{ file_name }}" alt="{{ caption }}">
<figcaption>{{ caption }}</figcaption>
</figure>
{% endfor %}</section>{% endfor %}
{% if data_files %}
<h2 id="data">Data</h2>
<p>Every score as CSV and JSON:</p>
<ul class="data">
{% for file_name in data_files %}<li><a href="{{ file_name }}">{{ file_name }}</a></li>
{% endfor %}</ul>
{% endif %}
{% if provenance %}
<h2 id="provenance">Provenance</h2>
<table>
{% for key, value in provenance %}<tr><th>{{ key }}</th><td><pre>{{ value }}</pre></td></tr>
{% endfor %}</table>
{% endif %}
</body>
</html>
"""
)
