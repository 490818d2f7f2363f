"""Reanalysis readers: ERA5 as users hold it, mapped to the model variables and regridded.

Three layouts are read, each normalised to one `xr.Dataset` of `(time, latitude, longitude)`
fields named after the model variables (latitude descending, longitude 0 .. 360 - dlon):

- CDS netCDF, old naming (`time`, `level`, `latitude`, `longitude`) and new naming
  (`valid_time`, `pressure_level`, with `number` and `expver` alongside);
- WeatherBench2 / ARCO-ERA5 Zarr (long names such as `geopotential`, a `level` dimension);
- GRIB through cfgrib (`isobaricInhPa` levels; ensemble files have a `number` dimension).

A source field `SourceField(source, level, scale, offset, ...)` gives the model variable
`value = source_value * scale + offset`; `source` may be a short (`z`) or long (`geopotential`)
name. From an ensemble source (a `number` dimension: ENS, or the ERA5 EDA) member `number = 0`
is taken: the control, run from unperturbed observations.

Fields are regridded spectrally (`sphere.regrid`) from any regular global grid to the model
grid. Every problem is an `IngestError` whose one-line message names the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import xarray as xr
import zarr
from wxens.data_pipeline.analysis_store import (
    AnalysisStoreWriter,
    StoreLock,
    analysis_dataset,
    open_analyses,
    write_rows,
)
from wxens.data_pipeline.config import ExperimentConfig, SourceField
from wxens.data_pipeline.progress import progress_bar
from wxens.data_pipeline.provenance import default_device, provenance
from wxens.data_pipeline.sphere import LatLonGrid, max_truncation, regrid
from wxens.data_pipeline.truth import model_grid

# Short (CDS, GRIB) and long (WeatherBench2, ARCO) names of the same field.
ALIASES: tuple[tuple[str, ...], ...] = (
    ("z", "geopotential"),
    ("t", "temperature"),
    ("u", "u_component_of_wind"),
    ("v", "v_component_of_wind"),
    ("w", "vertical_velocity"),
    ("q", "specific_humidity"),
    ("r", "relative_humidity"),
    ("vo", "vorticity"),
    ("d", "divergence"),
    ("t2m", "2t", "2m_temperature"),
    ("u10", "10u", "10m_u_component_of_wind"),
    ("v10", "10v", "10m_v_component_of_wind"),
    ("msl", "mean_sea_level_pressure"),
    ("sp", "surface_pressure"),
    ("tcwv", "total_column_water_vapour"),
    ("tp", "total_precipitation"),
)
LEVEL_NAMES = ("level", "pressure_level", "isobaricInhPa")
COORD_RENAMES = {"lat": "latitude", "lon": "longitude"}
FIELD_DIMS = ("time", "latitude", "longitude")
BLOCK_BYTES = 2**27  # float64 source values loaded at once while regridding
GridKind = Literal["equiangular", "legendre-gauss", "half-offset"]


class IngestError(ValueError):
    """A source that cannot be ingested; the message is one line naming the file and culprit."""


@dataclass(frozen=True)
class SourceGrid:
    """A regular global grid as found in a file (rows north first, columns east from `lon0`).

    `kind`: "equiangular" (poles included), "legendre-gauss", or "half-offset" (evenly spaced
    without poles, rows at 90 - (k + 1/2) 180/nlat). `lon0`: first longitude in degrees, in
    [0, 360/nlon).
    """

    nlat: int
    nlon: int
    kind: GridKind
    lon0: float = 0.0

    @property
    def spectral_grid(self) -> LatLonGrid:
        """The grid the SHT runs on: a half-offset grid gains its two pole rows first."""
        if self.kind == "half-offset":
            return LatLonGrid(self.nlat + 1, self.nlon, "equiangular")
        return LatLonGrid(self.nlat, self.nlon, self.kind)


def aliases(name: str) -> tuple[str, ...]:
    """`name` and the other names of the same field, `name` first."""
    for group in ALIASES:
        if name in group:
            return (name, *(other for other in group if other != name))
    return (name,)


def open_source(path: Path) -> xr.Dataset:
    """Open a netCDF file, a Zarr store or a GRIB file lazily (dask) with normalised names.

    Afterwards the dataset has a datetime64 `time` dimension (from `time` or `valid_time`), a
    `level` dimension where the file has pressure levels, and `latitude`/`longitude`; an
    ensemble is reduced to member `number = 0` and split `expver` data are merged.
    """
    path = Path(path)
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.suffix.lower() in GRIB_SUFFIXES and not _starts_with_grib(path):
        raise IngestError(f"{path}: not a GRIB file (it does not start with 'GRIB')")
    try:
        dataset = _open(path)
    except Exception as exc:  # each backend raises its own types for an unreadable file
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IngestError(f"{path}: cannot read ({first_line})") from None
    try:
        return _normalise(dataset, path)
    except IngestError:
        dataset.close()
        raise


GRIB_SUFFIXES = {".grib", ".grib1", ".grib2", ".grb", ".grb2"}


def _starts_with_grib(path: Path) -> bool:
    """Whether the file begins with a GRIB message's 'GRIB' indicator (a folder does not)."""
    if path.is_dir():
        return False
    with path.open("rb") as file:
        return file.read(4) == b"GRIB"


def _open(path: Path) -> xr.Dataset:
    if path.is_dir():
        with warnings.catch_warnings():  # v3 stores are rarely consolidated: no need to warn
            warnings.filterwarnings("ignore", "Failed to open Zarr store with consolidated")
            return xr.open_zarr(path, consolidated=None)
    if _starts_with_grib(path):
        # indexpath="": cfgrib would otherwise write an index file beside the data.
        return xr.open_dataset(
            path,
            engine="cfgrib",
            chunks={},
            backend_kwargs={"indexpath": ""},
            decode_timedelta=True,
        )
    return xr.open_dataset(path, chunks={})


def _normalise(dataset: xr.Dataset, path: Path) -> xr.Dataset:
    renames = {old: new for old, new in COORD_RENAMES.items() if old in dataset.variables}
    renames |= {name: "level" for name in LEVEL_NAMES[1:] if name in dataset.variables}
    dataset = _time_axis(dataset.rename(renames), path)
    dataset = _merge_expver(dataset)
    if "number" in dataset.dims:
        if 0 not in dataset["number"].values:
            members = ", ".join(str(n) for n in dataset["number"].values)
            raise IngestError(f"{path}: ensemble without member 0 (the control); has {members}")
        dataset = dataset.sel(number=0)
    return dataset


def _time_axis(dataset: xr.Dataset, path: Path) -> xr.Dataset:
    """Make `time` the (datetime64) dimension: new CDS files call it `valid_time`."""
    if "valid_time" in dataset.dims:
        dataset = dataset.drop_vars("time", errors="ignore").rename(valid_time="time")
    elif "valid_time" in dataset.coords and dataset["valid_time"].dims == ("time",):
        dataset = dataset.assign_coords(time=dataset["valid_time"].values)  # cfgrib: time + step
    if "time" not in dataset.coords:
        raise IngestError(f"{path}: no time axis (dimensions: {', '.join(map(str, dataset.dims))})")
    if not np.issubdtype(dataset["time"].dtype, np.datetime64):
        raise IngestError(f"{path}: time is not a date (dtype {dataset['time'].dtype})")
    return dataset


def _merge_expver(dataset: xr.Dataset) -> xr.Dataset:
    """Merge an `expver` dimension (ERA5 final and ERA5T, each NaN where the other has data)."""
    if "expver" not in dataset.dims:
        return dataset
    merged = dataset.isel(expver=0, drop=True)
    for index in range(1, dataset.sizes["expver"]):
        merged = merged.combine_first(dataset.isel(expver=index, drop=True))
    return merged


def read_source(path: Path, fields: Mapping[str, SourceField]) -> xr.Dataset:
    """The model variables `fields` from one file, lazily, on the file's own grid.

    Each variable is `(time, latitude, longitude)`, float64, `source * scale + offset`, with
    CF attributes from its `SourceField`; latitude descending, longitude 0 .. 360 - dlon.
    Close the result (`.close()`) to close the file.
    """
    path = Path(path)
    dataset = open_source(path)
    try:
        source_grid(
            _coord(dataset, "latitude", path), _coord(dataset, "longitude", path), str(path)
        )
        out = xr.Dataset(
            {name: _field(dataset, field, name, path) for name, field in fields.items()}
        )
    except IngestError:
        dataset.close()
        raise
    out = _orient(out)
    out.set_close(dataset.close)
    return out


def _coord(dataset: xr.Dataset, name: str, path: Path) -> np.ndarray:
    if name not in dataset.dims:
        dims = ", ".join(map(str, dataset.dims))
        raise IngestError(f"{path}: not on a regular latitude-longitude grid (dimensions: {dims})")
    return dataset[name].values


def _field(dataset: xr.Dataset, field: SourceField, name: str, path: Path) -> xr.DataArray:
    """One model variable: the source variable at its level, converted, `(time, lat, lon)`."""
    found = [candidate for candidate in aliases(field.source) if candidate in dataset.data_vars]
    if not found:
        available = ", ".join(sorted(map(str, dataset.data_vars)))
        raise IngestError(
            f"{path}: no variable {field.source!r} for {name}; available: {available}"
        )
    data = _at_level(dataset[found[0]], field, found[0], path)
    if "time" not in data.dims:
        data = data.expand_dims("time")  # a single analysis: time is a scalar coordinate
    extra = [dim for dim in data.dims if dim not in FIELD_DIMS]
    if any(data.sizes[dim] > 1 for dim in extra):
        shape = ", ".join(f"{dim} ({data.sizes[dim]})" for dim in extra)
        raise IngestError(f"{path}: {found[0]} has unexpected dimensions {shape}")
    data = data.squeeze(extra, drop=True).transpose(*FIELD_DIMS)
    values = (data.astype(np.float64) * field.scale + field.offset).reset_coords(drop=True)
    values.attrs = {"units": field.units, "long_name": field.long_name}
    if field.standard_name is not None:
        values.attrs["standard_name"] = field.standard_name
    return values


def _at_level(data: xr.DataArray, field: SourceField, variable: str, path: Path) -> xr.DataArray:
    levels = np.atleast_1d(data["level"].values) if "level" in data.coords else np.array([])
    listed = ", ".join(f"{level:g}" for level in levels)
    if field.level is None:
        if "level" in data.dims and data.sizes["level"] > 1:
            raise IngestError(f"{path}: {variable} has levels {listed}; choose one with `level`")
        return data.squeeze("level", drop=True) if "level" in data.dims else data
    match = np.flatnonzero(np.isclose(levels, field.level))
    if match.size == 0:
        have = f"levels {listed}" if levels.size else "no pressure levels"
        raise IngestError(f"{path}: {variable} has no level {field.level:g} ({have})")
    return data.isel(level=int(match[0]), drop=True) if "level" in data.dims else data


def _orient(dataset: xr.Dataset) -> xr.Dataset:
    """Latitude descending; longitude wrapped into [0, 360) and ascending."""
    longitude = np.mod(dataset["longitude"].values.astype(np.float64), 360.0)
    dataset = dataset.assign_coords(longitude=longitude).sortby("longitude")
    return dataset.sortby("latitude", ascending=False)


def source_grid(latitude: np.ndarray, longitude: np.ndarray, name: str) -> SourceGrid:
    """Check that a grid is global and regular, and say which quadrature it matches.

    Global: the rows reach to within one row spacing of both poles and the columns, wrapped
    into [0, 360), have no gap wider than twice their median spacing. Regular: the columns are
    evenly spaced at 360/nlon (to 1 % of a spacing) and the rows match one of the kinds of
    `SourceGrid` (to 1 % of 180/nlat).
    """
    lat = np.sort(np.asarray(latitude, np.float64))[::-1]
    lon = np.sort(np.mod(np.asarray(longitude, np.float64), 360.0))
    if lat.size < 2 or lon.size < 2:
        raise IngestError(f"{name}: grid of {lat.size} x {lon.size} points is not a global grid")
    gaps = np.diff(np.append(lon, lon[0] + 360.0))
    row_spacing = np.max(-np.diff(lat))
    reaches_poles = lat[0] >= 90.0 - 1.01 * row_spacing and lat[-1] <= -90.0 + 1.01 * row_spacing
    if not reaches_poles or gaps.max() > 2.0 * np.median(gaps):
        extent = (
            f"latitude {np.min(latitude):g}..{np.max(latitude):g},"
            f" longitude {np.min(longitude):g}..{np.max(longitude):g}"
        )
        raise IngestError(
            f"{name}: grid is regional ({extent}); spectral regridding needs a global grid"
        )
    step = 360.0 / lon.size
    if np.abs(gaps - step).max() > 0.01 * step:
        raise IngestError(f"{name}: irregular grid: {lon.size} longitudes are not evenly spaced")
    kind = _latitude_kind(lat, name)
    if kind == "half-offset" and lon.size % 2:
        raise IngestError(
            f"{name}: a grid without poles needs an even number of longitudes, has {lon.size}"
        )
    lon0 = float(lon[0]) if lon[0] > 0.01 * step else 0.0
    return SourceGrid(lat.size, lon.size, kind, lon0)


def _latitude_kind(lat: np.ndarray, name: str) -> GridKind:
    n = lat.size
    expected: dict[GridKind, np.ndarray] = {
        "equiangular": np.linspace(90.0, -90.0, n),
        "half-offset": 90.0 - (np.arange(n) + 0.5) * 180.0 / n,
        "legendre-gauss": LatLonGrid(n, 4, "legendre-gauss").latitude,
    }
    for kind, rows in expected.items():
        if np.abs(lat - rows).max() < 0.01 * 180.0 / n:
            return kind
    raise IngestError(
        f"{name}: irregular grid: {n} latitudes {lat[0]:g}..{lat[-1]:g} are neither evenly spaced"
        " (with or without the poles) nor Gaussian"
    )


def check_resolution(grid: SourceGrid, truncation: int, name: str) -> None:
    """Refuse a source grid that cannot give the coefficients up to T`truncation` exactly."""
    resolved = max_truncation(grid.spectral_grid)
    if resolved < truncation:
        raise IngestError(
            f"{name}: the {grid.nlat}x{grid.nlon} grid resolves at most T{resolved}, less than"
            f" the model's T{truncation}; use a finer source or a lower grid.truncation"
        )


def shift_longitude(values: np.ndarray, lon0_deg: float) -> np.ndarray:
    """Values at longitudes `j dlon` from values at `lon0 + j dlon` (last axis).

    A trigonometric interpolation: with `F_m` the DFT of the samples, the values at `j dlon`
    are the inverse DFT of `F_m exp(-i m lon0)`; exact for zonal wavenumbers below nlon/2 (the
    Nyquist wavenumber, ambiguous, is dropped).
    """
    nlon = values.shape[-1]
    spectrum = np.fft.rfft(values, axis=-1)
    spectrum *= np.exp(-1j * np.arange(spectrum.shape[-1]) * np.radians(lon0_deg))
    if nlon % 2 == 0:
        spectrum[..., -1] = 0.0
    return np.fft.irfft(spectrum, n=nlon, axis=-1)


def add_poles(values: np.ndarray) -> np.ndarray:
    """Values on nlat + 1 evenly spaced rows from pole to pole, from nlat half-offset rows.

    torch-harmonics has no quadrature for rows at colatitudes (k + 1/2) pi / nlat, and plain
    interpolation in latitude would not be exact, so the rows are moved by half a row exactly
    (the "double Fourier sphere" trick): meridian lambda continued over both poles by meridian
    lambda + 180 deg is a great circle, sampled evenly by 2 nlat points, on which a field of
    total degree <= L is a trigonometric polynomial of degree <= L in colatitude. A DFT phase
    shift of -(pi / (2 nlat)) k then gives it exactly at colatitudes j pi / nlat for L < nlat.
    Needs an even nlon (axes: ..., latitude north first, longitude from 0).
    """
    nlat, nlon = values.shape[-2:]
    other_half = np.roll(values[..., ::-1, :], nlon // 2, axis=-1)
    circle = np.concatenate([values, other_half], axis=-2)
    wavenumber = np.fft.fftfreq(2 * nlat, 1.0 / (2 * nlat))
    spectrum = np.fft.fft(circle, axis=-2)
    spectrum *= np.exp(-0.5j * wavenumber * np.pi / nlat)[:, None]
    spectrum[..., nlat, :] = 0.0  # the Nyquist wavenumber is ambiguous
    return np.fft.ifft(spectrum, axis=-2).real[..., : nlat + 1, :]


def to_model_grid(
    values: np.ndarray, grid: SourceGrid, target: LatLonGrid, truncation: int
) -> np.ndarray:
    """Regrid `(..., nlat, nlon)` values (oriented as `_orient` leaves them) to `target`."""
    if grid.lon0:
        values = shift_longitude(values, grid.lon0)
    if grid.kind == "half-offset":
        values = add_poles(values)
    field = torch.from_numpy(np.ascontiguousarray(values, np.float64)).to(default_device())
    return regrid(field, grid.spectral_grid, target, truncation).cpu().numpy()


def regrid_dataset(
    dataset: xr.Dataset,
    target: LatLonGrid,
    truncation: int,
    name: str = "<dataset>",
    advance: Callable[[int], None] | None = None,
) -> xr.Dataset:
    """Regrid every `(time, latitude, longitude)` variable of `dataset` spectrally to `target`.

    The source grid may be any regular global grid (`source_grid`), in either latitude order
    and either longitude convention. Values are loaded in blocks of time; a NaN or infinite
    value is refused. `advance(k)` is called after each block of k analyses of one variable.
    """
    grid = source_grid(dataset["latitude"].values, dataset["longitude"].values, name)
    check_resolution(grid, truncation, name)
    dataset = _orient(dataset)
    block = max(1, BLOCK_BYTES // (8 * grid.nlat * grid.nlon))
    times = dataset["time"].values
    out = {}
    for variable, data in dataset.data_vars.items():
        parts = []
        for start in range(0, times.size, block):
            values = data.isel(time=slice(start, start + block)).transpose(*FIELD_DIMS).values
            _check_finite(values, times[start:], f"{name}: {variable}")
            parts.append(to_model_grid(values.astype(np.float64), grid, target, truncation))
            if advance is not None:
                advance(len(values))
        out[variable] = (FIELD_DIMS, np.concatenate(parts), data.attrs)
    coords = {"time": times, "latitude": target.latitude, "longitude": target.longitude}
    return xr.Dataset(out, coords=coords)


def _check_finite(values: np.ndarray, times: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        first = np.datetime_as_string(times[np.argmax(bad.any(axis=(1, 2)))], unit="h")
        raise IngestError(f"{what} has {bad.sum()} NaN or infinite value(s), first at {first}")


def ingest_fields(config: ExperimentConfig) -> dict[str, SourceField]:
    """Each of `config.variables` with its `SourceField` (the config's `ingest:` section);
    IngestError without that section."""
    if config.ingest is None:
        raise IngestError(f"config {config.name!r} has no `ingest` section")
    return {name: config.ingest[name] for name in config.variables}


def ingest(
    config: ExperimentConfig,
    config_dict: dict,
    sources: list[Path],
    out: Path,
    overwrite: bool = False,
    quiet: bool = False,
) -> Path:
    """Read `config.variables` from `sources` (via `config.ingest`) into an analysis store.

    Every source is opened and checked (variables, levels, grid, resolution), then loaded and
    regridded to the model grid in memory (NaNs refused), and the analyses of all sources,
    sorted by time (a time found twice is refused), are written only after all of that has
    succeeded: a bad input leaves `out`, existing or not, untouched.
    """
    fields = ingest_fields(config)
    if not sources:
        raise IngestError("no source files given")
    sources = [Path(source) for source in sources]
    target, truncation = model_grid(config), config.grid.truncation
    attrs = {
        "title": f"wxens analyses '{config.name}' ingested from reanalysis",
        "source": ", ".join(source.name for source in sources),
        "Conventions": "CF-1.10",
        **provenance(
            config_dict, "wxens data ingest", sources=", ".join(map(str, sources)), out=out
        ),
    }
    writer = AnalysisStoreWriter(out, attrs, overwrite=overwrite)  # refuses an existing `out` now
    datasets: list[xr.Dataset] = []
    try:
        for source in sources:
            datasets.append(read_source(source, fields))
            lat, lon = datasets[-1]["latitude"].values, datasets[-1]["longitude"].values
            grid = source_grid(lat, lon, str(source))
            check_resolution(grid, truncation, str(source))
        total = sum(ds.sizes["time"] for ds in datasets) * len(fields)
        with progress_bar(total, "ingest", quiet) as advance:
            parts = [
                regrid_dataset(ds, target, truncation, str(source), advance)
                for ds, source in zip(datasets, sources, strict=True)
            ]
    finally:
        for dataset in datasets:
            dataset.close()
    analyses = _concatenate(parts, sources)
    with writer:
        field_attrs = {name: analyses[name].attrs for name in fields}
        arrays = {name: analyses[name].values for name in fields}
        writer.append(analysis_dataset(arrays, analyses["time"].values, target, field_attrs))
    return out


def _concatenate(parts: list[xr.Dataset], sources: list[Path]) -> xr.Dataset:
    """All analyses in time order; refuse a time found twice (naming both files)."""
    combined = xr.concat(parts, dim="time")
    origin = np.concatenate([np.full(part.sizes["time"], i) for i, part in enumerate(parts)])
    order = np.argsort(combined["time"].values, kind="stable")
    times = combined["time"].values[order]
    repeated = np.flatnonzero(times[1:] == times[:-1])
    if repeated.size:
        first, second = (sources[origin[order[i]]] for i in (repeated[0], repeated[0] + 1))
        when = np.datetime_as_string(times[repeated[0]], unit="h")
        raise IngestError(f"analysis time {when} appears twice: in {first} and in {second}")
    return combined.isel(time=order)


def extend_analyses(
    config: ExperimentConfig, store: Path, sources: list[Path], until: object
) -> int:
    """Append to the analysis store `store` (from `ingest`) the analyses of `sources` newer
    than its last and up to `until` (included), read via `config.ingest`; return how many.
    The nightly run's step for real data: a night's new ERA5 files, matched by a pattern.

    Files that hold only analyses the store has are skipped unread beyond their times, so
    a rerun adds nothing. Everything is read, checked and regridded before the first write:
    a bad file, or new analyses that do not continue the store at its own spacing (a gap), is
    refused with one line (`IngestError`) and leaves the store as it was. One writer at a
    time (`STORE.lock`).
    """
    fields = ingest_fields(config)
    lock = StoreLock(Path(store))
    lock.check()
    times = open_analyses(store).get_index("time").values
    spacing = (
        times[1] - times[0]
        if len(times) > 1
        else np.timedelta64(config.truth.output_interval_hours, "h")
    )
    until = np.datetime64(until, "ns")
    parts, used = [], []
    for source in sorted(Path(s) for s in sources):
        dataset = read_source(source, fields)
        try:
            new = np.flatnonzero(
                (dataset["time"].values > times[-1]) & (dataset["time"].values <= until)
            )
            if new.size:
                part = dataset.isel(time=new)
                parts.append(
                    regrid_dataset(part, model_grid(config), config.grid.truncation, str(source))
                )
                used.append(source)
        finally:
            dataset.close()
    if not parts:
        return 0
    added = _concatenate(parts, used)
    new_times = added["time"].values
    expected = times[-1] + spacing * np.arange(1, len(new_times) + 1)
    if not np.array_equal(new_times, expected):
        missing = np.datetime_as_string(expected[np.argmax(new_times != expected)], unit="h")
        raise IngestError(
            f"{used[0]}: the new analyses skip {missing} (a gap after the store's last)"
        )
    lock.acquire()
    try:
        group = zarr.open_group(store, mode="r+", use_consolidated=False)
        values = {name: added[name].values.astype(np.float32) for name in fields}
        write_rows(group, len(times), new_times, values)
    finally:
        lock.release()
    return len(new_times)
