"""Skill scores, scorecards and the HTML verification report, drawn from a scores dataset."""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import count
from pathlib import Path

import jinja2
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from verification.plots import (
    LEAD_TIME,
    SPECTRA,
    SYSTEM,
    lead_label,
    plot_rank_histogram,
    plot_reliability,
    plot_score_by_lead,
    plot_spectra,
    plot_spread_skill,
    save_figure,
    select_score,
)

# The value of a perfect forecast for each score that has a skill score.
PERFECT_SCORE = {
    "crps": 0.0,
    "crps_ecdf": 0.0,
    "rmse": 0.0,
    "brier_score": 0.0,
    "energy_score": 0.0,
    "acc": 1.0,
    "roc_auc": 1.0,
}
SCORECARD_DIMS = (SYSTEM, "variable", "region", LEAD_TIME)
RELIABILITY = tuple(
    f"reliability_{name}" for name in ("forecast_probability", "observed_frequency", "count")
)
REPORT_LEADS = 3

Figures = Iterator[tuple[str, Figure]]


def skill_score(scores: xr.Dataset, score: str, reference: str) -> xr.DataArray:
    """Skill of every system but `reference` against it: `(S_ref - S) / (S_ref - S_perfect)`.

    For negatively oriented scores (CRPS, RMSE, Brier, energy score; perfect 0) that is
    `1 - S / S_ref` (e.g. CRPSS); for `acc` and `roc_auc` (perfect 1) `(S - S_ref) / (1 - S_ref)`.
    1 is a perfect forecast, 0 no better than the reference, negative worse. Unitless; keeps
    every dimension of `scores[score]`.
    """
    values = select_score(scores, score)
    if score not in PERFECT_SCORE:
        raise ValueError(f"no skill score for {score!r}; it is defined for {list(PERFECT_SCORE)}")
    _check_system(scores, reference)
    reference_values = values.sel({SYSTEM: reference}, drop=True)
    skill = (reference_values - values) / (reference_values - PERFECT_SCORE[score])
    skill = skill.transpose(*values.dims).drop_sel({SYSTEM: reference}).rename(f"{score}_skill")
    skill.attrs = {"long_name": f"{score} skill score against {reference}", "units": "1"}
    return skill


def scorecard(
    scores: xr.Dataset,
    reference: str,
    score: str = "crps",
    path: str | Path | None = None,
) -> Figure:
    """One panel per non-reference system: rows variable x region, columns lead time, cells
    coloured by the skill score against `reference` (RdBu centred on 0: blue better, red worse)
    and annotated with its value. A score with an extra dimension (e.g. `brier_score` by
    `quantile`) needs one value of it selected first: `scorecard(scores.sel(quantile=0.9), ...)`.
    """
    skill = _scorecard_skill(scores, score, reference)
    rows, leads = skill.sizes["row"], skill.sizes[LEAD_TIME]
    figure = Figure(
        figsize=(2.5 + 0.7 * leads, skill.sizes[SYSTEM] * (1.0 + 0.3 * rows)), layout="constrained"
    )
    axes = figure.subplots(skill.sizes[SYSTEM], 1, squeeze=False)[:, 0]
    limit = _colour_limit(skill.values)
    for ax, system in zip(axes, skill[SYSTEM].values, strict=True):
        cells = skill.sel({SYSTEM: system}).values
        image = ax.imshow(cells, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for (row, column), value in np.ndenumerate(cells):
            text = "–" if np.isnan(value) else f"{value:.2f}"
            dark = abs(value) > 0.6 * limit
            colour = "white" if dark else "black"
            ax.text(column, row, text, ha="center", va="center", fontsize=7, color=colour)
        ax.set_xticks(range(leads), [lead_label(lead) for lead in skill[LEAD_TIME].values])
        ax.set_yticks(range(rows), [f"{v} / {r}" for v, r in skill["row"].values])
        ax.set_title(f"{score} skill of {system} against {reference}", fontsize="medium")
    figure.colorbar(image, ax=list(axes), label=f"{score} skill score", shrink=0.8)
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


def summary_table(scores: xr.Dataset, region: str = "global", leads: int = 5) -> str:
    """Markdown: per system and variable, CRPS / RMSE / spread-skill ratio at up to `leads`
    evenly spaced lead times in `region` (what `wxens verify` prints)."""
    picked = scores.sel(region=region)
    positions = np.unique(np.linspace(0, picked.sizes[LEAD_TIME] - 1, leads).round().astype(int))
    picked = picked.isel({LEAD_TIME: positions})
    heading = " | ".join(lead_label(lead) for lead in picked[LEAD_TIME].values)
    lines = [
        f"CRPS / RMSE / spread-skill ratio, {region}",
        "",
        f"| system | variable | {heading} |",
        "| --- | --- |" + " ---: |" * picked.sizes[LEAD_TIME],
    ]
    for system in picked[SYSTEM].values:
        for variable in picked["variable"].values:
            row = picked.sel({SYSTEM: system, "variable": variable})
            cells = [
                f"{c:.3g} / {r:.3g} / {q:.2f}"
                for c, r, q in zip(
                    row.crps.values, row.rmse.values, row.spread_skill_ratio.values, strict=True
                )
            ]
            lines.append(f"| {system} | {variable} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(
    scores: xr.Dataset,
    out_dir: str | Path,
    reference: str | None = None,
    title: str = "wxens verification",
) -> Path:
    """Write `out_dir/index.html` and the PNG figures it shows; return the page's path.

    Sections, each only when the dataset holds its scores: CRPS and RMSE by lead time and
    spread-skill (every variable and region), scorecards against `reference` (when given),
    rank histograms and reliability diagrams (main region, a few leads), spectra, and the
    dataset's provenance attributes. Every name is HTML-escaped.
    """
    if reference is not None:
        _check_system(scores, reference)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = count(1)
    sections = []
    for heading, figures in (
        ("Scores by lead time", _by_lead_figures(scores)),
        ("Scorecards", _scorecard_figures(scores, reference)),
        ("Rank histograms", _rank_histogram_figures(scores)),
        ("Reliability", _reliability_figures(scores)),
        ("Spectra", _spectra_figures(scores)),
    ):
        saved = [
            (caption, _save(figure, out_dir, f"{next(numbers):03d}-{_slug(caption)}.png"))
            for caption, figure in figures
        ]
        if saved:
            sections.append({"heading": heading, "figures": saved})
    page = _TEMPLATE.render(
        title=title,
        systems=_values(scores, SYSTEM),
        reference=reference,
        sections=sections,
        provenance=[(str(key), str(value)) for key, value in scores.attrs.items()],
    )
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _check_system(scores: xr.Dataset, system: str) -> None:
    systems = scores[SYSTEM].values.tolist() if SYSTEM in scores.coords else []
    if system not in systems:
        raise ValueError(f"unknown reference system {system!r}: the dataset has {systems}")


def _scorecard_skill(scores: xr.Dataset, score: str, reference: str) -> xr.DataArray:
    """Skill `(system, row, lead_time)`, rows the (variable, region) pairs."""
    skill = skill_score(scores, score, reference)
    extra = [dim for dim in skill.dims if dim not in SCORECARD_DIMS]
    if extra:
        raise ValueError(
            f"{score!r} has extra dimension(s) {extra}: select one value first,"
            f" e.g. scores.sel({extra[0]}=...)"
        )
    if skill.sizes[SYSTEM] == 0:
        raise ValueError(f"no system besides the reference {reference!r} to score")
    return skill.stack(row=("variable", "region")).transpose(SYSTEM, "row", LEAD_TIME)


def _colour_limit(values: np.ndarray) -> float:
    """A symmetric colour range: the largest |skill|, between 0.05 and 1."""
    finite = np.abs(values[np.isfinite(values)])
    return float(np.clip(finite.max(initial=0.0), 0.05, 1.0))


def _by_lead_figures(scores: xr.Dataset) -> Figures:
    for variable in _values(scores, "variable"):
        for region in _values(scores, "region"):
            where = f"{variable}, {region}"
            for score in ("crps", "rmse"):
                if score in scores.data_vars:
                    figure = plot_score_by_lead(scores, score, variable=variable, region=region)
                    yield f"{score}: {where}", figure
            if {"rmse", "spread"} <= set(scores.data_vars):
                yield f"spread and skill: {where}", plot_spread_skill(scores, variable, region)


def _scorecard_figures(scores: xr.Dataset, reference: str | None) -> Figures:
    """A scorecard per skill score present (per value of an extra dimension, e.g. quantile)."""
    if reference is None or scores.sizes.get(SYSTEM, 0) < 2:
        return
    for score in PERFECT_SCORE:
        if score not in scores.data_vars:
            continue
        extra = [dim for dim in scores[score].dims if dim not in SCORECARD_DIMS]
        if not extra:
            yield f"{score} scorecard", scorecard(scores, reference, score)
            continue
        (dim,) = extra
        for value in scores[dim].values:
            chosen = scores.sel({dim: value})
            yield f"{score} scorecard, {dim} {value}", scorecard(chosen, reference, score)


def _rank_histogram_figures(scores: xr.Dataset) -> Figures:
    if "rank_histogram" not in scores.data_vars:
        return
    region = _main_region(scores)
    for variable in _values(scores, "variable"):
        for lead in _few_leads(scores):
            figure = plot_rank_histogram(scores, variable, region, lead)
            yield f"rank histogram: {variable}, {region}, {lead_label(lead)}", figure


def _reliability_figures(scores: xr.Dataset) -> Figures:
    if not set(RELIABILITY) <= set(scores.data_vars):
        return
    region = _main_region(scores)
    for variable in _values(scores, "variable"):
        for quantile in _values(scores, "quantile"):
            for lead in _few_leads(scores):
                figure = plot_reliability(scores, variable, region, lead, quantile)
                where = f"{variable}, {region}, {lead_label(lead)}"
                yield f"reliability above q{quantile:g}: {where}", figure


def _spectra_figures(scores: xr.Dataset) -> Figures:
    if not set(SPECTRA) & set(scores.data_vars):
        return
    for variable in _values(scores, "variable"):
        yield f"spectra: {variable}", plot_spectra(scores, variable, _few_leads(scores))


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


def _save(figure: Figure, out_dir: Path, file_name: str) -> str:
    save_figure(figure, out_dir / file_name, dpi=80)
    return file_name


_TEMPLATE = jinja2.Environment(autoescape=True).from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 75em; padding: 0 1em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #444; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
pre { margin: 0; white-space: pre-wrap; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p>Systems: {{ systems | join(", ") }}{% if reference %}; reference: {{ reference }}{% endif %}</p>
<ul>
{% for section in sections %}<li><a href="#section-{{ loop.index }}">{{ section.heading }}</a></li>
{% endfor %}{% if provenance %}<li><a href="#provenance">Provenance</a></li>{% endif %}
</ul>
{% for section in sections %}
<h2 id="section-{{ loop.index }}">{{ section.heading }}</h2>
{% for caption, file_name in section.figures %}<figure>
<img src="{{ file_name }}" alt="{{ caption }}">
<figcaption>{{ caption }}</figcaption>
</figure>
{% endfor %}{% endfor %}
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
