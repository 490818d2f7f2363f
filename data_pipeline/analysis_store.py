"""The analysis store: a 6-hourly CF Zarr "reanalysis", `(time, latitude, longitude)` per field.

The truth world and the reanalysis readers both write it through `AnalysisStoreWriter`:

- the store is built at `PATH.partial` and renamed to `PATH` only when complete, so an
  interrupted run never leaves a store that looks complete; its root carries
  `wxens_complete = true`;
- an existing `PATH` is refused unless `overwrite=True`, and even then it is replaced only
  after the new store is complete;
- a store that another live process is writing is refused (its pid is in `PATH.lock`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from wxens.data_pipeline.sphere import LatLonGrid

from wxens.stores import StoreBusyError as StoreBusyError  # re-exported for the readers
from wxens.stores import StoreError as StoreError
from wxens.stores import StoreLock as StoreLock
from wxens.stores import hours_since_epoch

COMPLETE_FLAG = "wxens_complete"
TIME_CHUNK = 120  # 30 days of 6-hourly analyses per chunk


def analysis_dataset(
    fields: Mapping[str, np.ndarray],
    times: np.ndarray,
    grid: LatLonGrid,
    field_attrs: Mapping[str, Mapping[str, str]],
) -> xr.Dataset:
    """Wrap `(time, lat, lon)` arrays as a CF dataset on `grid` (float32 fields)."""
    coords = {
        "time": ("time", np.asarray(times, dtype="datetime64[ns]"), {"standard_name": "time"}),
        "latitude": (
            "latitude",
            grid.latitude.astype(np.float64),
            {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"},
        ),
        "longitude": (
            "longitude",
            grid.longitude.astype(np.float64),
            {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
        ),
    }
    data_vars = {
        name: (
            ("time", "latitude", "longitude"),
            np.asarray(values, np.float32),
            dict(field_attrs[name]),
        )
        for name, values in fields.items()
    }
    return xr.Dataset(data_vars, coords=coords)


class AnalysisStoreWriter:
    """Append analyses along `time` into a Zarr v3 store that appears only when complete.

    Use as a context manager: on a clean exit the store is finalised and moved into place; on
    an exception the partial store is left at `PATH.partial` (never at `PATH`).
    """

    def __init__(self, path: str | Path, attrs: Mapping[str, object], overwrite: bool = False):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.lock = StoreLock(self.path)
        self.attrs = {**attrs, COMPLETE_FLAG: False}
        self._started = False
        if self.path.exists() and not overwrite:
            raise StoreError(f"{self.path} already exists; overwrite it to replace it")
        self.lock.check()

    def __enter__(self) -> AnalysisStoreWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        shutil.rmtree(self.partial, ignore_errors=True)  # left by a dead run: never complete
        return self

    def append(self, dataset: xr.Dataset) -> None:
        encoding = None
        # Every append: xarray replaces the group's attributes with the appended dataset's.
        dataset = dataset.assign_attrs(self.attrs)
        if not self._started:
            encoding = {
                name: {
                    "chunks": (TIME_CHUNK, dataset.sizes["latitude"], dataset.sizes["longitude"])
                }
                for name in dataset.data_vars
            }
            encoding["time"] = {"units": "hours since 1970-01-01", "dtype": "int64"}
        dataset.to_zarr(
            self.partial,
            mode="a" if self._started else "w-",
            append_dim="time" if self._started else None,
            encoding=encoding,
            zarr_format=3,
            consolidated=False,
        )
        self._started = True

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finalise()
        finally:
            self.lock.release()

    def _finalise(self) -> None:
        if not self._started:
            raise StoreError(f"{self.path}: nothing was written")
        finalise_store(self.partial, self.path)


def write_rows(
    group: zarr.Group, index: int, times: np.ndarray, fields: Mapping[str, np.ndarray]
) -> None:
    """Write analyses `fields` `{name: (time, lat, lon)}` at `times` into rows `index`, ...
    of an analysis store's open group, growing its arrays first (a store that grows in
    place: `truth.extend_truth`, `reanalysis.extend_analyses`). Rewriting the same rows with
    the same numbers, after a kill, does no harm."""
    end = index + len(times)
    for name in (*fields, "time"):
        if group[name].shape[0] < end:
            group[name].resize((end, *group[name].shape[1:]))
    for name, values in fields.items():
        group[name][index:end] = values
    group["time"][index:end] = hours_since_epoch(times)


def finalise_store(partial: Path, path: Path) -> None:
    """Flag the store at `partial` complete and move it to `path`, replacing any store there
    only now that the new one is whole."""
    set_root_attribute(partial, COMPLETE_FLAG, True)
    backup = path.with_name(path.name + ".replaced")
    if path.exists():
        path.rename(backup)
    partial.rename(path)
    shutil.rmtree(backup, ignore_errors=True)


def set_root_attribute(path: Path, key: str, value: object) -> None:
    """Set one attribute in a Zarr v3 group's `zarr.json` (written atomically)."""
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta.setdefault("attributes", {})[key] = value
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(meta_path)


def open_analyses(path: str | Path) -> xr.Dataset:
    """Open a complete analysis store lazily (dask); refuse a missing or incomplete one with
    a one-line `StoreError`.

    Example:
        >>> import wxens
        >>> wxens.open_analyses("no/such/truth.zarr")
        Traceback (most recent call last):
        ...
        wxens.stores.StoreError: no/such/truth.zarr: no such store
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such store")
    try:
        dataset = xr.open_zarr(path, consolidated=False)
    except Exception as exc:  # zarr raises many types for a corrupt store
        raise StoreError(f"{path}: not a readable Zarr store ({exc})") from None
    if dataset.attrs.get(COMPLETE_FLAG) is not True:
        raise StoreError(f"{path}: store is incomplete (an interrupted or running write)")
    return dataset
