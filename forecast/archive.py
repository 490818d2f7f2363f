"""The forecast archive: one Zarr store that grows by one init time at a time (`wxens forecast
--archive`, `wxens hindcast --archive`, `run_ensemble(..., archive=...)`).

Layout: the forecast store's (`forecast.ensemble_store`), with every array along `init_time`
in chunks (and shards) of one init, so that adding an init writes new files only and never
rewrites one a reader may be reading. Inits are stored in the order they arrive;
`open_archive` returns them in time order.

Appending one init, under the archive's lock (a second writer is refused; readers take no
lock and are never blocked):

1. the attribute `pending` of the task flags' group (`tasks/zarr.json`, replaced atomically)
   names the init and its index;
2. every array along `init_time` grows to hold it (`resize`), and its coordinates are written;
3. its tasks (one per member batch) write their own chunks and flags, as in a store;
4. the metadata is consolidated: the root `zarr.json`, replaced atomically, lists the new
   shapes;
5. the `pending` record is cleared.

Readers open the consolidated metadata (`xarray.open_zarr` does by default), so they see
exactly the inits whose step 4 is done. A SIGKILL at any moment leaves every earlier init
intact and readable, and the next append finishes the pending init first; its numbers are
bitwise those of an uninterrupted run, since a member depends on its init time, not on the
init's index. The first init is written at `ARCHIVE.partial` and moved into place when done.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xarray as xr
import zarr
from wxens.data_pipeline.analysis_store import COMPLETE_FLAG
from wxens.forecast.ensemble_store import DONE, FINGERPRINT, INIT, EnsembleStore, StoreLayout

from wxens.stores import HOUR, StoreError, hours_since_epoch, times_from_hours

ARCHIVE_FLAG = "wxens_archive"
PENDING = "pending"


def open_archive(path: str | Path) -> xr.Dataset:
    """The complete inits of the archive at `path`, lazily, in time order.

    Example:
        >>> open_archive("/nonexistent/archive.zarr")
        Traceback (most recent call last):
        ...
        wxens.stores.StoreError: /nonexistent/archive.zarr is not an archive
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not an archive")
    dataset = xr.open_zarr(path, consolidated=True)
    if dataset.attrs.get(ARCHIVE_FLAG) is not True:
        raise StoreError(f"{path} is a forecast store, not an archive")
    return dataset.sortby(INIT)


Creator = Callable[[Path, np.ndarray], None]
"""`create(path, init_times)` makes a new forecast store for `init_times` at `path`."""


def _tasks(path: Path) -> zarr.Group:
    """The group of the task flags, which also holds the `pending` record."""
    return zarr.open_group(path / DONE.split("/")[0], mode="r+", use_consolidated=False)


class Pending(NamedTuple):
    """An init being appended: the store it goes into, its index and its time."""

    path: Path
    index: int
    init_time: np.datetime64


class Archive:
    """The archive at `path` as its writer sees it (the caller holds its `StoreLock`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")

    def _existing(self) -> list[Path]:
        return [p for p in (self.path, self.partial) if (p / "zarr.json").is_file()]

    def check(self, fingerprint: str) -> None:
        """Refuse a forecast store at the path, or an archive of another ensemble (other
        model, checkpoints, members, leads, perturbation or seed)."""
        for path in self._existing():
            attrs = EnsembleStore(path).attrs
            if attrs.get(ARCHIVE_FLAG) is not True:
                raise StoreError(f"{path} is a forecast store, not an archive")
            if attrs.get(FINGERPRINT) != fingerprint:
                raise StoreError(
                    f"{path} archives another ensemble (other model, checkpoints, members,"
                    " leads, perturbation or seed)"
                )

    def batch_size(self) -> int | None:
        """Members per task, as the archive was created with; None before it exists."""
        existing = self._existing()
        return int(EnsembleStore(existing[0]).attrs["wxens_batch_size"]) if existing else None

    def complete_inits(self) -> np.ndarray:
        """The inits readers see, in arrival order (none before the archive exists)."""
        if not (self.path / "zarr.json").is_file():
            return np.array([], dtype="datetime64[ns]")
        return xr.open_zarr(self.path, consolidated=True)[INIT].values

    def interrupted(self) -> Pending | None:
        """The init an interrupted append left pending; a half-created new archive (killed
        before its first init was recorded) is removed."""
        for path in (self.path, self.partial):
            record = _tasks(path).attrs.get(PENDING) if (path / DONE).is_dir() else None
            if record:
                return Pending(path, int(record["index"]), np.datetime64(record["init"], "ns"))
        shutil.rmtree(self.partial, ignore_errors=True)
        return None

    def begin(self, init_time: np.datetime64, create: Creator) -> Pending:
        """Record `init_time` as pending: the next index of the archive, or the first of a
        new one that `create(path, init_times)` makes at `ARCHIVE.partial`."""
        if self.path.exists():
            pending = Pending(self.path, self._length(self.path), init_time)
        else:
            create(self.partial, np.array([init_time], dtype="datetime64[ns]"))
            pending = Pending(self.partial, 0, init_time)
        _tasks(pending.path).attrs[PENDING] = {"index": pending.index, "init": str(init_time)}
        return pending

    @staticmethod
    def _length(path: Path) -> int:
        return zarr.open_group(path, mode="r", use_consolidated=False)[DONE].shape[0]

    @staticmethod
    def grow(pending: Pending, lead_times: np.ndarray) -> None:
        """Every array along `init_time` long enough to hold the pending init, and its
        coordinates written (idempotent: repeating it after a kill does no harm)."""
        group = zarr.open_group(pending.path, mode="r+", use_consolidated=False)
        along_init = [a for _, a in group.arrays() if a.metadata.dimension_names[:1] == (INIT,)]
        for array in [*along_init, group[DONE]]:  # the task flags last: they give the length
            if array.shape[0] <= pending.index:
                array.resize((pending.index + 1, *array.shape[1:]))
        hours = hours_since_epoch(pending.init_time)
        group[INIT][pending.index] = hours
        group["valid_time"][pending.index] = hours + lead_times // HOUR

    @staticmethod
    def layout(path: Path, like: StoreLayout) -> StoreLayout:
        """`like` with the init times of the store at `path` (pending ones included)."""
        hours = zarr.open_group(path, mode="r", use_consolidated=False)[INIT][:]
        init_times = times_from_hours(hours)
        return dataclasses.replace(like, init_times=init_times)

    def commit(self, pending: Pending) -> None:
        """Publish the pending init: consolidate (readers now see it), move a new archive into
        place, clear the record (a kill before that makes the next run publish it again)."""
        if pending.path == self.partial:
            group = zarr.open_group(pending.path, mode="r+", use_consolidated=False)
            group.attrs[COMPLETE_FLAG] = True
        with warnings.catch_warnings():  # "not part of the Zarr v3 spec": xarray reads it
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(pending.path)
        if pending.path == self.partial:
            self.partial.rename(self.path)
        _tasks(self.path).attrs[PENDING] = None
