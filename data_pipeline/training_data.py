"""Training data from an analysis store: normalisation statistics and (input, target) pairs.

Both read the 6-hourly CF Zarr store of `data_pipeline.analysis_store` lazily and never load it
whole: the statistics are dask reductions over its chunks, and `AnalysisPairs` reads one store
chunk at a time through a small, bounded cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import torch
import xarray as xr
import zarr
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.verification.aggregation import cell_area_weights

STATISTICS = ("mean", "std", "tendency_mean", "tendency_std", "anomaly_std")


def area_weights(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Cell-area weights `w_ij`, shape `(nlat, nlon)`, summing to 1: the project's one area
    weighting, `wxens.verification.aggregation.cell_area_weights` of each latitude row (the
    area between the mid-points to its neighbours, a pole point getting its polar cap), the
    same in every column.

    Training losses, `wxens skill`, the perturbation norms and `wxens verify` all weight by
    these, so an RMSE means the same everywhere.

    Example:
        >>> area_weights(np.array([90.0, 0.0, -90.0]), np.arange(2) * 180.0).round(4).tolist()
        [[0.0732, 0.0732], [0.3536, 0.3536], [0.0732, 0.0732]]
    """
    rows = cell_area_weights(np.asarray(latitude, dtype=np.float64)).values
    weights = np.broadcast_to(rows[:, None], (len(rows), len(longitude)))
    return weights / weights.sum()


def check_variables(dataset: xr.Dataset, variables: Sequence[str]) -> None:
    """Raise a one-line ValueError naming any requested variable the store lacks."""
    if not variables:
        raise ValueError("no variables requested")
    missing = [name for name in variables if name not in dataset.data_vars]
    if missing:
        raise ValueError(
            f"variable {', '.join(missing)} not in the analysis store"
            f" (it has {', '.join(sorted(map(str, dataset.data_vars)))})"
        )


def analysis_states(
    dataset: xr.Dataset, variables: Sequence[str], time: int | slice | np.ndarray
) -> torch.Tensor:
    """The analyses at the time indices `time` as float32 `(time, channel, latitude,
    longitude)`, channels in `variables` order, in the store's units."""
    selection = [time] if isinstance(time, int | np.integer) else time
    fields = dataset[list(variables)].isel(time=selection)
    stacked = fields.to_dataarray("channel").transpose("time", "channel", ...)
    return torch.from_numpy(stacked.values.astype(np.float32))


def timestep(times: np.ndarray) -> np.timedelta64:
    """The interval between analyses; raise ValueError unless the time axis is regular."""
    steps = np.diff(times)
    if len(steps) == 0 or (steps != steps[0]).any():
        raise ValueError("the analysis store's time axis is not regular (or has one time)")
    return steps[0]


def year_window(times: np.ndarray, years: tuple[int, int]) -> slice:
    """Index range of the analyses in calendar years `first..last` (inclusive).

    Raise a one-line ValueError naming the years unless the store covers them fully: its first
    analysis is less than one step after `first`-01-01 00 UTC and its last one is at most one
    step before (`last` + 1)-01-01 00 UTC.
    """
    first, last = years
    start = np.datetime64(f"{first:04d}-01-01", "ns")
    end = np.datetime64(f"{last + 1:04d}-01-01", "ns")
    step = timestep(times)
    if last < first or times[0] >= start + step or times[-1] + step < end:
        span = " to ".join(np.datetime_as_string(t, unit="h") for t in (times[0], times[-1]))
        raise ValueError(f"years {first}-{last} are not covered by the analysis store ({span})")
    return slice(int(np.searchsorted(times, start)), int(np.searchsorted(times, end)))


@dataclass(frozen=True)
class VariableStats:
    """Statistics of one variable: field mean and std in `units`, and of its tendency over
    one analysis interval, `x(t + dt) - x(t)`, in `units` per interval (not per second).

    `zonal_mean` is the time- and zonal-mean profile by latitude (the climatological jet),
    `anomaly_std` the area-weighted std about it: `sqrt(sum_t sum_ij w_ij (x_tij -
    zonal_mean_i)^2 / T)`, the size of the weather rather than of the jet.
    """

    units: str
    mean: float
    std: float
    tendency_mean: float
    tendency_std: float
    zonal_mean: tuple[float, ...]
    anomaly_std: float


@dataclass(frozen=True)
class NormalisationStats:
    """Area-weighted statistics of the analyses in `years`, per variable.

    With normalised cell-area weights `w_ij` (`sum_ij w_ij = 1`) and the T analyses of the
    years, `mean = sum_t sum_ij w_ij x_tij / T` and
    `std = sqrt(sum_t sum_ij w_ij (x_tij - mean)^2 / T)`; the tendency statistics are the same
    formulas applied to the T - 1 differences `x(t + dt) - x(t)` of consecutive analyses,
    `dt = timestep_hours` (6 h).
    """

    variables: dict[str, VariableStats]
    years: tuple[int, int]
    timestep_hours: float

    def channel(self, statistic: str, variables: Sequence[str] | None = None) -> np.ndarray:
        """One statistic as a float32 array `(channel, 1, 1)`, channels in `variables` order."""
        if statistic not in STATISTICS:
            raise ValueError(
                f"unknown statistic {statistic!r}; choose from {', '.join(STATISTICS)}"
            )
        names = list(self.variables) if variables is None else variables
        values = [getattr(self.variables[name], statistic) for name in names]
        return np.asarray(values, dtype=np.float32)[:, None, None]

    def zonal_mean(self, variables: Sequence[str] | None = None) -> np.ndarray:
        """The zonal-mean profiles as a float32 array `(channel, latitude, 1)`."""
        names = list(self.variables) if variables is None else variables
        profiles = [self.variables[name].zonal_mean for name in names]
        return np.asarray(profiles, dtype=np.float32)[:, :, None]

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-serialisable dict (numbers, strings, lists, dicts)."""
        return {
            "years": list(self.years),
            "timestep_hours": self.timestep_hours,
            "variables": {name: asdict(stats) for name, stats in self.variables.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormalisationStats:
        """Inverse of `to_dict`; raise a one-line ValueError naming a missing key."""
        try:
            variables = {
                name: VariableStats(
                    units=str(stats["units"]),
                    zonal_mean=tuple(float(v) for v in stats["zonal_mean"]),
                    **{k: float(stats[k]) for k in STATISTICS},
                )
                for name, stats in data["variables"].items()
            }
            first, last = data["years"]
            return cls(variables, (int(first), int(last)), float(data["timestep_hours"]))
        except KeyError as exc:
            raise ValueError(f"normalisation statistics lack the key {exc.args[0]!r}") from None


def _weighted_moments(
    field: xr.DataArray, weights: xr.DataArray, shift: xr.DataArray | float
) -> tuple[xr.DataArray, xr.DataArray]:
    """Lazy `(sum_t sum_ij w (x - shift) / T, sum_t sum_ij w (x - shift)^2 / T)`.

    Shifting by a value near the mean keeps `var = m2 - m1^2` free of cancellation.
    """
    anomaly = field - shift
    space = ("latitude", "longitude")
    first = (anomaly * weights).sum(space).mean("time")
    second = (anomaly**2 * weights).sum(space).mean("time")
    return first, second


def _mean_std(shift: float, first: float, second: float) -> tuple[float, float]:
    return shift + first, float(np.sqrt(max(second - first**2, 0.0)))


def compute_normalisation(
    dataset: xr.Dataset, variables: Sequence[str], years: tuple[int, int]
) -> NormalisationStats:
    """Area-weighted field and tendency statistics (see `NormalisationStats`) of `years`.

    `dataset` is an analysis store opened lazily (`open_analyses`); one dask computation reads
    each chunk of the selected years once, in float64.
    """
    check_variables(dataset, variables)
    times = dataset["time"].values
    step = timestep(times)
    selection = dataset.isel(time=year_window(times, years))
    weights = xr.DataArray(
        area_weights(dataset["latitude"].values, dataset["longitude"].values),
        dims=("latitude", "longitude"),
    )
    row_weights = weights.sum("longitude")
    lazy = {}
    for name in variables:
        field = selection[name].astype(np.float64)
        shift = field.isel(time=0).mean()
        tendency = field.diff("time")
        anomaly = field - shift
        lazy[name] = (
            shift,
            *_weighted_moments(field, weights, shift),
            *_weighted_moments(tendency, weights, 0.0),
            anomaly.mean(("time", "longitude")),
            (anomaly**2).mean(("time", "longitude")),
        )
    (computed,) = dask.compute(lazy)
    stats = {}
    for name, values in computed.items():
        shift, first, second, tendency_first, tendency_second = (float(v) for v in values[:5])
        row_first, row_second = values[5], values[6]
        # E[(x - profile)^2] on each row is E[(x - shift)^2] - (profile - shift)^2
        anomaly_variance = float(((row_second - row_first**2) * row_weights).sum())
        stats[name] = VariableStats(
            str(dataset[name].attrs.get("units", "1")),
            *_mean_std(shift, first, second),
            *_mean_std(0.0, tendency_first, tendency_second),
            tuple(float(v) for v in shift + row_first.values),
            float(np.sqrt(max(anomaly_variance, 0.0))),
        )
    return NormalisationStats(stats, tuple(years), float(step / np.timedelta64(1, "h")))


class AnalysisPairs(torch.utils.data.Dataset):
    """`(x(t), x(t + steps * dt))` pairs of analyses in `years`, read lazily from a store.

    Item i is `(input, target)`, float32 tensors `(channel, latitude, longitude)` in the store's
    units (not normalised), channels in `variables` order; the input time is `times[i]`, and
    both input and target lie inside the years. `area_weights` is the `(latitude, longitude)`
    float32 tensor of normalised cell-area weights.

    Reads go through an LRU cache of whole store chunks, at most `cache_chunks` per variable
    (each `(time chunk, latitude, longitude)` float32), so sequential access reads each chunk
    once. Only the path and small metadata are kept until the first read; a pickled copy drops
    the open store and the cache, so each DataLoader worker opens the store on first use.
    """

    def __init__(
        self,
        path: str | Path,
        variables: Sequence[str],
        years: tuple[int, int],
        steps: int = 1,
        cache_chunks: int = 2,
    ):
        if steps < 1 or cache_chunks < 1:
            raise ValueError(f"steps ({steps}) and cache_chunks ({cache_chunks}) must be >= 1")
        dataset = open_analyses(path)
        check_variables(dataset, variables)
        times = dataset["time"].values
        window = year_window(times, years)
        count = window.stop - window.start - steps
        if count < 1:
            raise ValueError(f"years {years[0]}-{years[1]} hold no pair {steps} steps apart")
        self.path = str(path)
        self.variables = tuple(variables)
        self.steps = steps
        self.timestep = timestep(times)
        self.times = times[window.start : window.start + count]
        self.area_weights = torch.from_numpy(
            area_weights(dataset["latitude"].values, dataset["longitude"].values)
        ).float()
        self._offset = window.start
        self._capacity = cache_chunks * len(self.variables)
        self._arrays: dict[str, zarr.Array] | None = None
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        dataset.close()

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        position = self._offset + range(len(self))[index]
        return self._state(position), self._state(position + self.steps)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None, "_cache": OrderedDict()}

    def _state(self, position: int) -> torch.Tensor:
        """All variables at store time index `position`, `(channel, lat, lon)` (a copy)."""
        arrays = self._open()
        rows = []
        for name in self.variables:
            length = arrays[name].chunks[0]
            rows.append(self._chunk(name, position // length)[position % length])
        return torch.from_numpy(np.stack(rows))

    def _open(self) -> dict[str, zarr.Array]:
        if self._arrays is None:
            group = zarr.open_group(self.path, mode="r")
            self._arrays = {name: group[name] for name in self.variables}
        return self._arrays

    def _chunk(self, name: str, index: int) -> np.ndarray:
        """Time chunk `index` of variable `name`, through the LRU cache."""
        key = (name, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        array = self._open()[name]
        length = array.chunks[0]
        data = np.asarray(array[index * length : (index + 1) * length], dtype=np.float32)
        self._cache[key] = data
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return data
