"""Figures drawn from a scores dataset (see `verification`), and global maps.

Each function returns a `matplotlib.figure.Figure` built without pyplot (so nothing needs
closing and no display is touched; PNGs are written with Agg) and saves it when given `path`.
Systems keep one colour (`C0`, `C1`, ... in the dataset's `system` order) across figures.
Lead times are selected by a timedelta or a number of days, and drawn in days.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from wxens.verification.errors import ScoreError
from wxens.verification.natural_earth import cartopy_data_dir, coastline_data_available

SYSTEM = "system"
LEAD_TIME = "lead_time"
DAY = np.timedelta64(1, "D")
ENSEMBLE_SPECTRA = {"power_members": ("-", "members"), "power_ensemble_mean": ("--", "mean")}
SPECTRA = (*ENSEMBLE_SPECTRA, "power_truth")

LeadTime = np.timedelta64 | timedelta | float


def as_lead_time(lead: LeadTime) -> np.timedelta64:
    """A lead time as `timedelta64`; a plain number counts days."""
    if isinstance(lead, np.timedelta64 | timedelta):
        return pd.to_timedelta(lead).to_timedelta64()
    return pd.to_timedelta(float(lead), unit="D").to_timedelta64()


def lead_days(lead_time: xr.DataArray | np.ndarray) -> np.ndarray:
    """Lead times (timedelta64) in days, as floats."""
    return np.asarray(lead_time) / DAY


def lead_label(lead: LeadTime) -> str:
    """A lead time for a title or a column heading, e.g. `"1.5 d"`."""
    return f"{as_lead_time(lead) / DAY:g} d"


def select_score(scores: xr.Dataset, score: str, **labels: object) -> xr.DataArray:
    """`scores[score].sel(**labels)`, or a ValueError naming the unknown score or label.

    A `lead_time` label may be a timedelta or a number of days.
    """
    if score not in scores.data_vars:
        raise ScoreError(f"unknown score {score!r}: the dataset holds {sorted(scores.data_vars)}")
    values = scores[score]
    for dim, label in labels.items():
        if dim not in values.dims:
            raise ScoreError(f"score {score!r} has no dimension {dim!r}: {values.dims}")
        key = as_lead_time(label) if dim == LEAD_TIME else label
        if key not in values.indexes[dim]:
            raise ScoreError(
                f"unknown {dim} {label!r} for {score!r}: the dataset has {_labels(values, dim)}"
            )
        values = values.sel({dim: key})
    return values


def save_figure(figure: Figure, path: str | Path | None, dpi: int = 100) -> Figure:
    """Write `figure` to `path` (format from its suffix) when a path is given; return it."""
    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure


def plot_score_by_lead(
    scores: xr.Dataset,
    score: str = "crps",
    *,
    variable: str,
    region: str = "global",
    path: str | Path | None = None,
) -> Figure:
    """One line per system of `score` (area- and init-mean) against lead time in days."""
    values = select_score(scores, score, variable=variable, region=region)
    figure, ax = _single_axes()
    _plot_by_system(ax, values, LEAD_TIME)
    _decorate(ax, f"{score}: {variable}, {region}", "lead time (days)", _with_units(score, values))
    return save_figure(figure, path)


def plot_spread_skill(
    scores: xr.Dataset, variable: str, region: str = "global", path: str | Path | None = None
) -> Figure:
    """Ensemble-mean RMSE (solid) and ensemble spread (dashed) of each system by lead time.

    A calibrated ensemble has spread = RMSE (up to the sqrt((M+1)/M) finite-ensemble factor).
    """
    labels = {"variable": variable, "region": region}
    rmse = select_score(scores, "rmse", **labels)
    spread = select_score(scores, "spread", **labels)
    figure, ax = _single_axes()
    _plot_by_system(ax, rmse, LEAD_TIME, label_suffix=" RMSE")
    _plot_by_system(ax, spread, LEAD_TIME, linestyle="--", label_suffix=" spread")
    title = f"spread and skill: {variable}, {region}"
    _decorate(ax, title, "lead time (days)", _with_units("RMSE, spread", rmse))
    return save_figure(figure, path)


def plot_gap_closed(
    gap: xr.DataArray, variable: str, region: str = "global", path: str | Path | None = None
) -> Figure:
    """The fraction of the gap between a baseline and the predictability limit that each
    system closes (`report.gap_closed`), by lead time: 1 at the limit, 0 at the baseline."""
    values = gap.sel(variable=variable, region=region)
    values = values.where(values[LEAD_TIME] > np.timedelta64(0), drop=True)  # all start equal
    figure, ax = _single_axes()
    _plot_by_system(ax, values, LEAD_TIME)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    lowest = float(values.min()) if np.isfinite(values).any() else 0.0
    ax.set_ylim(max(-1.0, min(0.0, lowest) - 0.05), 1.1)  # far below the baseline: off the chart
    baseline, score = gap.attrs.get("baseline", "baseline"), gap.attrs.get("score", "score")
    title = f"{score} gap closed from {baseline} to the limit: {variable}, {region}"
    _decorate(ax, title, "lead time (days)", "fraction of the gap closed")
    return save_figure(figure, path)


def plot_rank_histogram(
    scores: xr.Dataset,
    variable: str,
    region: str,
    lead_time: LeadTime,
    path: str | Path | None = None,
) -> Figure:
    """Rank histogram of each system (one panel each), with the flat line 1/(M+1) of a
    calibrated M-member ensemble. Ranks beyond a smaller ensemble's M are NaN and left out."""
    frequencies = select_score(
        scores, "rank_histogram", variable=variable, region=region, lead_time=lead_time
    )
    figure, axes = _panels(frequencies.sizes[SYSTEM], width=4.0)
    for index, (ax, system) in enumerate(zip(axes, frequencies[SYSTEM].values, strict=True)):
        histogram = frequencies.sel({SYSTEM: system}).dropna("rank")
        ax.bar(histogram["rank"], histogram, width=1.0, color=f"C{index}", edgecolor="white")
        ax.axhline(1.0 / histogram.size, color="black", linestyle="--", linewidth=1)
        members = histogram.size - 1
        title = f"{system} ({members} members): {variable}, {region}, {lead_label(lead_time)}"
        _decorate(ax, title, "rank of the truth", "frequency", legend=False)
    return save_figure(figure, path)


def plot_reliability(
    scores: xr.Dataset,
    variable: str,
    region: str,
    lead_time: LeadTime,
    quantile: float,
    path: str | Path | None = None,
) -> Figure:
    """Reliability diagram for events above a climatological `quantile`: observed frequency
    against forecast probability per system, marker area proportional to the bin's count,
    beside the diagonal of perfect reliability. Empty bins are left out."""
    labels = {"variable": variable, "region": region, "lead_time": lead_time, "quantile": quantile}
    probability, frequency, count = (
        select_score(scores, f"reliability_{name}", **labels)
        for name in ("forecast_probability", "observed_frequency", "count")
    )
    figure, ax = _single_axes(width=5.0, height=5.0)
    ax.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1)
    largest = max(float(count.max()), 1.0)
    for index, system in enumerate(probability[SYSTEM].values):
        at = {SYSTEM: system}
        filled = (count.sel(at) > 0).values
        x, y, n = (values.sel(at).values[filled] for values in (probability, frequency, count))
        ax.plot(x, y, color=f"C{index}", label=str(system))
        ax.scatter(x, y, s=10 + 150 * n / largest, color=f"C{index}", alpha=0.7)
    ax.set(xlim=(0, 1), ylim=(0, 1), aspect="equal")
    title = f"reliability, > q{quantile:g}: {variable}, {region}, {lead_label(lead_time)}"
    _decorate(ax, title, "forecast probability", "observed frequency")
    return save_figure(figure, path)


def plot_spectra(
    scores: xr.Dataset,
    variable: str,
    lead_times: Sequence[LeadTime],
    path: str | Path | None = None,
) -> Figure:
    """Log-log power against total wavenumber (from 1), one panel per lead time: each system's
    members (solid) and ensemble mean (dashed), and the truth (black). Draws the spectra the
    dataset holds; the truth is taken from the first system when it has a `system` dimension."""
    present = [name for name in SPECTRA if name in scores.data_vars]
    if not present:
        raise ScoreError(f"the scores dataset holds none of the spectra {SPECTRA}")
    figure, axes = _panels(len(lead_times), width=4.5)
    for ax, lead in zip(axes, lead_times, strict=True):
        spectra = {
            name: select_score(scores, name, variable=variable, lead_time=lead).sel(
                wavenumber=slice(1, None)
            )
            for name in present
        }
        for name, (linestyle, label) in ENSEMBLE_SPECTRA.items():
            if name in spectra:
                _plot_by_system(ax, spectra[name], "wavenumber", linestyle, f" {label}", marker="")
        if "power_truth" in spectra:
            truth = spectra["power_truth"]
            truth = truth.isel({SYSTEM: 0}) if SYSTEM in truth.dims else truth
            ax.plot(truth["wavenumber"], truth, color="black", linewidth=1.5, label="truth")
        ax.set(xscale="log", yscale="log")
        units_from = spectra[present[0]]
        title = f"spectra: {variable}, {lead_label(lead)}"
        _decorate(ax, title, "total wavenumber", _with_units("power", units_from))
    return save_figure(figure, path)


@dataclass
class MapPanel:
    """One panel of `plot_maps`: a `(latitude, longitude)` field, its title, colour map and
    colour range (None: the field's own)."""

    field: xr.DataArray
    title: str | None = None
    cmap: str = "viridis"
    limits: tuple[float, float] | None = None


def plot_map(
    field: xr.DataArray,
    title: str | None = None,
    cmap: str = "viridis",
    path: str | Path | None = None,
    coastlines: bool = True,
) -> Figure:
    """A global map of a `(latitude, longitude)` field: `plot_maps` with one panel."""
    return plot_maps([MapPanel(field, title, cmap)], columns=1, path=path, coastlines=coastlines)


def plot_maps(
    panels: Sequence[MapPanel],
    columns: int = 2,
    path: str | Path | None = None,
    coastlines: bool = True,
) -> Figure:
    """Global maps (PlateCarree), `columns` to a row, each with its own colour bar.

    With `coastlines`, the 110 m Natural Earth coastlines come from a local folder
    (`cartopy_data_dir`); nothing is ever downloaded. Without that data the maps are drawn
    bare, with one warning. Leave `coastlines` off for data not on Earth.
    """
    import cartopy.crs as ccrs

    for panel in panels:
        if set(panel.field.dims) != {"latitude", "longitude"}:
            raise ScoreError(
                f"plot_map needs a 2-D (latitude, longitude) field, not {panel.field.dims}"
            )
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(8.0 * columns, 4.5 * rows), layout="constrained")
    for index, panel in enumerate(panels):
        field = panel.field.transpose("latitude", "longitude")
        ax = figure.add_subplot(rows, columns, index + 1, projection=ccrs.PlateCarree())
        vmin, vmax = panel.limits if panel.limits is not None else (None, None)
        mesh = ax.pcolormesh(
            _cell_edges(field["longitude"].values, wrap=True),
            _cell_edges(field["latitude"].values, wrap=False),
            field.values,
            cmap=panel.cmap,
            vmin=vmin,
            vmax=vmax,
            transform=ccrs.PlateCarree(),
        )
        ax.set_global()
        if coastlines:
            _add_coastlines(ax)
        colorbar = figure.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.7, pad=0.04)
        colorbar.set_label(_with_units(str(field.name or ""), field))
        ax.set_title(panel.title if panel.title is not None else str(field.name or ""))
    return save_figure(figure, path)


def _add_coastlines(ax: Axes) -> None:
    import cartopy

    folder = cartopy_data_dir()
    if not coastline_data_available():
        _warn_no_coastlines(folder)
        return
    cartopy.config["pre_existing_data_dir"] = folder
    ax.coastlines("110m", linewidth=0.6)


@cache
def _warn_no_coastlines(folder: Path) -> None:
    warnings.warn(
        f"no Natural Earth coastlines under {folder} (set WXENS_CARTOPY_DATA to a cartopy data"
        " folder, or WXENS_SAMPLE_DATA to the sample data); maps are drawn without them",
        stacklevel=4,
    )


def _cell_edges(centres: np.ndarray, wrap: bool) -> np.ndarray:
    """Edges between grid centres; longitudes wrap around, latitudes stop at the poles."""
    middles = (centres[:-1] + centres[1:]) / 2
    edges = np.concatenate(
        [[2 * centres[0] - middles[0]], middles, [2 * centres[-1] - middles[-1]]]
    )
    return edges if wrap else np.clip(edges, -90.0, 90.0)


def _single_axes(width: float = 6.0, height: float = 4.0) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _panels(count: int, width: float, height: float = 3.5) -> tuple[Figure, list[Axes]]:
    """`count` panels side by side."""
    figure = Figure(figsize=(width * count, height), layout="constrained")
    return figure, list(figure.subplots(1, count, squeeze=False)[0])


def _plot_by_system(
    ax: Axes,
    values: xr.DataArray,
    x_dim: str,
    linestyle: str = "-",
    label_suffix: str = "",
    marker: str = "o",
) -> None:
    """One line per system of `values` (dims `system`, `x_dim`), lead times in days."""
    for index, system in enumerate(values[SYSTEM].values):
        line = values.sel({SYSTEM: system})
        x = lead_days(line[x_dim]) if x_dim == LEAD_TIME else line[x_dim].values
        style = {"linestyle": linestyle, "marker": marker, "markersize": 3, "color": f"C{index}"}
        ax.plot(x, line.values, label=f"{system}{label_suffix}", **style)


def _decorate(ax: Axes, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small")


def _with_units(label: str, values: xr.DataArray) -> str:
    units = values.attrs.get("units")
    return f"{label} ({units})" if units else label


def _labels(values: xr.DataArray, dim: str) -> list:
    if dim == LEAD_TIME:
        return [lead_label(lead) for lead in values[dim].values]
    return values[dim].values.tolist()
