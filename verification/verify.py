"""`score` and `verify`: open any ensemble, map its names, score it against a truth.

1. `standardise` maps a dataset's names onto ours (cfgrib's `number`/`time`/`step`,
   WeatherBench2's `prediction_timedelta`, explicit renames), adds `lead_time = 0` to an
   ensemble of analyses, and splits extra dimensions such as pressure levels into variables
   (`z` at 500 hPa becomes `z500`).
2. `truth_at_valid_times` picks the truth at `init_time + lead_time` on the same grid.
3. `score` builds the chosen scores of `scores.SCORES` for every system and variable (dask
   graphs, a few lead times per compute call) and returns the scores dataset described in
   `verification/__init__.py`; `verify` is `score` plus writing it (Zarr).

Missing member values are refused: a forecast (or reference) with a NaN member value raises
`ScoreError` naming the system, the variable and the first (init, lead) where it happens,
rather than giving NaN scores. Leave out or fill those members first (for example
`forecast.dropna("member", how="any")`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from threadpoolctl import threadpool_limits
from wxens.verification.aggregation import (
    LATITUDE,
    LONGITUDE,
    Region,
    RegionsLike,
    resolve_regions,
)
from wxens.verification.errors import ScoreError
from wxens.verification.extremes import calendar_distance, efi, model_climate
from wxens.verification.geometry import (
    GEOMETRY_NAMES,
    GRID,
    STATION,
    WEIGHT,
    as_points,
    at_stations,
    geometry,
    geometry_name,
    point_weights,
    spatial_dims,
)
from wxens.verification.metrics import ensemble_summary
from wxens.verification.probability import COST_LOSS_RATIOS, checked_cost_loss_ratios
from wxens.verification.scores import (
    Score,
    ScoringContext,
    finalize_statistics,
    resolve_scores,
    variable_statistics,
)

__all__ = [
    "REFERENCE_BUILDERS",
    "ScoreError",
    "VerifyOptions",
    "open_store",
    "score",
    "verify",
]

INIT, LEAD, MEMBER, TIME = "init_time", "lead_time", "member", "time"
FORECAST_ALIASES = {
    "number": MEMBER,
    "realization": MEMBER,
    "ensemble": MEMBER,
    "step": LEAD,
    "prediction_timedelta": LEAD,
    "lat": LATITUDE,
    "lon": LONGITUDE,
    TIME: INIT,
}
"""Names other tools give our dimensions (cfgrib, WeatherBench2, CMIP); applied when ours are
absent. A forecast's `time` is its init time, as in cfgrib and WeatherBench2."""
TRUTH_ALIASES = {"valid_time": TIME, "lat": LATITUDE, "lon": LONGITUDE}
GRIB_SUFFIXES = {".grib", ".grib2", ".grb", ".grb2"}

Source = xr.Dataset | xr.DataArray | str | Path
"""A forecast, truth or reference: a Dataset (in memory or dask-backed), a named DataArray,
or a path (Zarr store, netCDF or GRIB file)."""


@dataclass(frozen=True)
class VerifyOptions:
    """How `score` computes; every field is recorded in the scores' attributes.

    Example:
        >>> VerifyOptions(quantiles=(0.9,)).probability_bins
        10
    """

    quantiles: Sequence[float] = (0.5, 0.9, 0.95, 0.99)
    """Events "truth above the climate's q-quantile" for reliability, Brier, ROC and EFI ROC."""
    climate_window_days: int = 15
    probability_bins: int = 10
    pit_bins: int = 10
    """Bins of the PIT histogram on [0, 1]."""
    cost_loss_ratios: Sequence[float] = COST_LOSS_RATIOS
    """The users' cost-loss ratios of the relative economic value."""
    corp_resamples: int = 100
    """Outcome sets drawn for the CORP consistency bands (0: no bands)."""
    seed: int = 0
    """Seed of the rank histogram's random tie-breaking."""
    truncation: int | None = None
    """Spectral truncation of the spectra; None: the largest the grid resolves exactly."""
    valid_time_tolerance: str | None = None
    """Match each valid time to the nearest truth time within this (e.g. "12h"); None: exactly."""
    forecast_renames: Mapping[str, str] = field(default_factory=dict)
    truth_renames: Mapping[str, str] = field(default_factory=dict)
    stations: xr.Dataset | None = field(default=None, repr=False, compare=False)
    """Sample gridded forecasts and truth at these stations before scoring
    (`geometry.read_stations`: ids on dim `station`, latitude and longitude coordinates)."""
    maps: bool = True
    """Also the report's maps of the forecast's first init (`map_*` variables)."""
    climate_period: tuple[str, str] | None = None
    """The truth times (first, last, included) the climates draw on; None: all the truth's.
    A statistics store fixes it, so that an init's climate stays put while the truth grows."""

    @classmethod
    def from_record(cls, recorded: Mapping[str, object]) -> VerifyOptions:
        """The options as a scores dataset or statistics store records them (the `options`
        attribute, parsed); entries that are not options are left out."""
        fields = {f.name for f in dataclasses.fields(cls)}
        picked = {key: value for key, value in recorded.items() if key in fields}
        for name in ("quantiles", "cost_loss_ratios", "climate_period"):
            if picked.get(name) is not None:
                picked[name] = tuple(picked[name])
        return cls(**picked)

    def climate_sample(self, truth: xr.DataArray, inits: xr.DataArray) -> xr.DataArray:
        """Each init's climate sample (`truth_climate`): the truth of its calendar window
        (`climate_window_days`) within `climate_period`."""
        if self.climate_period is not None:
            first, last = (np.datetime64(t, "ns") for t in self.climate_period)
            truth = truth.sel({TIME: slice(first, last)})
        return truth_climate(truth, inits, self.climate_window_days)

    def __post_init__(self) -> None:
        quantiles = np.asarray(self.quantiles, dtype=float)
        if quantiles.size == 0 or ((quantiles <= 0) | (quantiles >= 1)).any():
            raise ScoreError(f"quantiles must lie strictly between 0 and 1, got {self.quantiles}")
        if min(self.probability_bins, self.pit_bins) < 1 or self.climate_window_days < 0:
            raise ScoreError("probability_bins and pit_bins must be >= 1, climate_window_days >= 0")
        if self.corp_resamples < 0:
            raise ScoreError(f"corp_resamples must be >= 0, got {self.corp_resamples}")
        checked_cost_loss_ratios(self.cost_loss_ratios)
        if self.valid_time_tolerance is not None:
            try:
                pd.Timedelta(self.valid_time_tolerance)
            except ValueError:
                raise ScoreError(
                    f"valid_time_tolerance {self.valid_time_tolerance!r} is not a time span"
                    " such as '12h'"
                ) from None


def open_store(path: str | Path) -> xr.Dataset:
    """Open a Zarr store, a netCDF file or a GRIB file (cfgrib) lazily.

    Raises ScoreError naming the file when it does not exist or cannot be read as its kind.

    Example:
        >>> open_store("/nonexistent/forecast.zarr")
        Traceback (most recent call last):
        ...
        wxens.verification.errors.ScoreError: /nonexistent/forecast.zarr does not exist
    """
    path = Path(path)
    if not path.exists():
        raise ScoreError(f"{path} does not exist")
    if path.is_dir():
        kind, opener = "Zarr store", lambda: xr.open_zarr(path, consolidated=_consolidated(path))
    elif path.suffix in GRIB_SUFFIXES:
        # pyproj (cartopy's, for the report's maps) must load before eccodes: the other way
        # round the two wheels' bundled libraries abort the interpreter at exit (double free).
        import pyproj  # noqa: F401

        kind = "GRIB file"

        def opener() -> xr.Dataset:
            return xr.open_dataset(
                path, engine="cfgrib", chunks={}, backend_kwargs={"indexpath": ""}
            )
    else:
        kind, opener = "netCDF file", lambda: xr.open_dataset(path, chunks={})
    try:
        opened = opener()
    except Exception as exc:  # any reader's failure: cfgrib raises EOFError, others OSError...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ScoreError(f"{path} is not a readable {kind}: {reason}") from None
    if INIT in opened.indexes and not opened.indexes[INIT].is_monotonic_increasing:
        opened = opened.sortby(INIT)  # an archive keeps its inits in the order they came
    return opened


def _consolidated(store: Path) -> bool | None:
    """Whether a Zarr v3 store's metadata is consolidated (so xarray does not try and warn);
    None for Zarr v2, where xarray's own try-then-fall-back is quiet."""
    root = store / "zarr.json"
    if not root.is_file():
        return None
    return json.loads(root.read_text()).get("consolidated_metadata") is not None


def _rename(ds: xr.Dataset, renames: Mapping[str, str], aliases: Mapping[str, str], label: str):
    missing = [old for old in renames if old not in ds.variables and old not in ds.dims]
    if missing:
        raise ScoreError(f"{label} has no {missing[0]!r} to rename")
    ds = ds.rename(dict(renames))
    implied = {
        old: new
        for old, new in aliases.items()
        if old in ds.dims and new not in ds.variables and old not in renames.values()
    }
    return ds.rename(implied)


def _split_extra_dims(ds: xr.Dataset, keep: Sequence[str]) -> xr.Dataset:
    """One variable per value of every dimension outside `keep` (`z` by level -> `z500`)."""
    fields = {}
    for name, data in ds.data_vars.items():
        extra = [dim for dim in data.dims if dim not in keep]
        if not extra:
            fields[name] = data
            continue
        stacked = data.stack(_extra=extra)
        for i, labels in enumerate(stacked["_extra"].values):
            suffix = "_".join(f"{value:g}" for value in np.atleast_1d(labels))
            fields[f"{name}{suffix}"] = stacked.isel(_extra=i, drop=True)
    return xr.Dataset(fields)


def _checked_times(ds: xr.Dataset, label: str, *, forecast: bool) -> xr.Dataset:
    """Init and valid times must be datetimes, lead times timedeltas; all in nanoseconds (so
    that a dataset in memory and the same written to disk give the same labels)."""
    wanted = {INIT: "M", LEAD: "m"} if forecast else {TIME: "M"}
    for dim, kind in wanted.items():
        if ds[dim].dtype.kind != kind:
            expected = "datetime64" if kind == "M" else "timedelta64"
            raise ScoreError(f"{label}: {dim!r} must be {expected}, got {ds[dim].dtype}")
    ns = {dim: ds[dim].values.astype(f"{ds[dim].dtype.name.split('[')[0]}[ns]") for dim in wanted}
    return ds.assign_coords(ns)


def standardise(
    ds: xr.Dataset, renames: Mapping[str, str], label: str, *, forecast: bool
) -> xr.Dataset:
    """Our names, our dimensions (see the module docstring); ScoreError for what is missing.

    Example:
        >>> dims = ("number", "time", "lat", "lon")
        >>> members = xr.Dataset({"t": (dims, np.zeros((2, 1, 2, 3)))},
        ...     coords={"time": [np.datetime64("2031-01-01")]})
        >>> standardise(members, {}, "forecast", forecast=True)["t"].dims
        ('lead_time', 'member', 'init_time', 'latitude', 'longitude')
    """
    ds = _rename(ds, renames, FORECAST_ALIASES if forecast else TRUTH_ALIASES, label)
    required = (INIT, MEMBER) if forecast else (TIME,)
    for dim in required:
        if dim not in ds.dims:
            raise ScoreError(
                f"{label} has no {dim!r} dimension (it has {', '.join(map(str, ds.dims))}); "
                "map one with a rename"
            )
    if forecast and LEAD not in ds.dims:
        ds = ds.expand_dims({LEAD: [np.timedelta64(0, "ns")]})
    if not ds.data_vars:
        raise ScoreError(f"{label} has no data variable")
    ds = _checked_times(ds, label, forecast=forecast)
    on_grid = geometry(ds, label) == "grid"
    station_coords = [name for name in (LATITUDE, LONGITUDE, WEIGHT) if name in ds.coords]
    kept = {} if on_grid else {name: ds[name].reset_coords(drop=True) for name in station_coords}
    space = GRID if on_grid else (STATION,)
    keep = (INIT, LEAD, MEMBER, *space) if forecast else (TIME, *space)
    ds = _split_extra_dims(ds.reset_coords(drop=True), keep)
    return ds if on_grid else as_points(ds.assign_coords(kept), label)


def check_same_grid(forecast: xr.Dataset, truth: xr.Dataset, label: str) -> None:
    """Verification does not regrid: the forecast's grid must be the truth's (to rounding).

    Example:
        >>> truth = xr.Dataset(coords={"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]})
        >>> check_same_grid(truth.isel(latitude=[0]), truth, "forecast")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        wxens.verification.errors.ScoreError: forecast is on another grid than the truth: ...
    """
    ours, theirs = geometry_name(forecast), geometry_name(truth)
    if ours != theirs and GEOMETRY_NAMES["grid"] in (ours, theirs):
        raise ScoreError(
            f"{label} is on {ours} but the truth is on {theirs}; sample a grid at stations"
            " first (wxens verify --stations)"
        )
    if STATION in truth.dims:
        missing = ~np.isin(forecast[STATION].values, truth[STATION].values)
        if missing.any():
            first = forecast[STATION].values[missing][0]
            raise ScoreError(f"the truth has no station {first!r} of the {label}")
        return
    for dim in GRID:
        ours, theirs = forecast[dim].values, truth[dim].values
        if ours.shape != theirs.shape or not np.allclose(ours, theirs):
            raise ScoreError(
                f"{label} is on another grid than the truth: {dim} has {ours.size} points "
                f"({ours[0]:g}..{ours[-1]:g}) against {theirs.size} ({theirs[0]:g}..{theirs[-1]:g})"
            )


def truth_at_valid_times(
    truth: xr.DataArray,
    forecast: xr.DataArray | xr.Dataset,
    tolerance: str | None = None,
) -> xr.DataArray:
    """The truth at `valid_time = init_time + lead_time`, dims (init_time, lead_time, ...).

    Each valid time takes the truth's time equal to it, or with `tolerance` (a pandas
    timedelta string such as "3h") the nearest within it, the earlier of two equally near
    (daily values stamped 00 UTC against leads at 12 UTC: "12h" takes that day's).
    ScoreError naming the first valid time without one, or both time ranges when none
    matches at all.

    Example:
        >>> times = np.datetime64("2031-01-01") + np.arange(4) * np.timedelta64(6, "h")
        >>> truth = xr.DataArray(np.arange(4.0), dims="time", coords={"time": times})
        >>> like = xr.Dataset(coords={"init_time": times[:2], "lead_time": times[1:3] - times[0]})
        >>> truth_at_valid_times(truth, like).values.tolist()
        [[1.0, 2.0], [2.0, 3.0]]
    """
    if not truth.indexes[TIME].is_monotonic_increasing:
        truth = truth.sortby(TIME)
    valid = (forecast[INIT] + forecast[LEAD]).transpose(INIT, LEAD)
    index = _nearest_times(truth.indexes[TIME], valid.values.ravel(), tolerance)
    index = index.reshape(valid.shape)
    missing = index < 0
    if missing.all():
        raise ScoreError(
            f"truth and forecast share no valid time: the forecast's run "
            f"{_hours(valid.values.min())}..{_hours(valid.values.max())}, the truth's "
            f"{_hours(truth[TIME].values.min())}..{_hours(truth[TIME].values.max())}"
        )
    if missing.any():
        first = _hours(valid.values[missing][0])
        raise ScoreError(
            f"the truth has no analysis at valid time {first} "
            f"({int(missing.sum())} of {missing.size} valid times missing"
            f"{'' if tolerance else '; match within a tolerance with valid_time_tolerance'})"
        )
    # One 1-D selection per lead: dask indexes those chunk by chunk (a 2-D fancy index would
    # make one task per valid time).
    per_lead = [
        truth.isel({TIME: index[:, k]}).rename({TIME: INIT}).drop_vars(INIT)
        for k in range(index.shape[1])
    ]
    selected = xr.concat(per_lead, dim=forecast[LEAD]).assign_coords({INIT: forecast[INIT]})
    return selected.transpose(INIT, LEAD, ...)


def _nearest_times(times: pd.Index, wanted: np.ndarray, tolerance: str | None) -> np.ndarray:
    """Position of the time nearest each wanted one within `tolerance` (the earlier of two
    equally near: a daily value stamped 00 UTC is that day's), -1 where none is."""
    within = pd.Timedelta(tolerance or 0)
    before = times.get_indexer(wanted, method="ffill", tolerance=within)
    after = times.get_indexer(wanted, method="bfill", tolerance=within)
    gap_before = np.where(before >= 0, wanted - times.values[before], np.timedelta64(2**62, "ns"))
    gap_after = np.where(after >= 0, times.values[after] - wanted, np.timedelta64(2**62, "ns"))
    return np.where(gap_after < gap_before, after, before)


def _hours(time: np.datetime64) -> str:
    return np.datetime_as_string(time, unit="h")


def choose_variables(
    forecast: xr.Dataset, truth: xr.Dataset, wanted: Sequence[str] | str | None
) -> list[str]:
    """The variables to score: `wanted`, else every variable both have.

    Example:
        >>> forecast = xr.Dataset({"t": 0.0, "u": 0.0, "q": 0.0})
        >>> choose_variables(forecast, xr.Dataset({"u": 0.0, "t": 0.0}), None)
        ['t', 'u']
    """
    if isinstance(wanted, str):
        wanted = [wanted]
    if wanted:
        for name in wanted:
            for label, ds in (("forecast", forecast), ("truth", truth)):
                if name not in ds.data_vars:
                    raise ScoreError(
                        f"{label} has no variable {name!r} (it has {', '.join(ds.data_vars)})"
                    )
        return list(wanted)
    shared = [name for name in forecast.data_vars if name in truth.data_vars]
    if not shared:
        raise ScoreError(
            f"forecast ({', '.join(forecast.data_vars)}) and truth "
            f"({', '.join(truth.data_vars)}) share no variable"
        )
    return shared


def truth_climate(truth: xr.DataArray, inits: xr.DataArray, half_width_days: int) -> xr.DataArray:
    """Each init's climate sample: the analyses within +-`half_width_days` of its calendar day,
    any year (all of them when that leaves fewer than 100), dims `(init_time, time)`, padded
    with NaN to the longest, one dask chunk per init.

    A climate of the init's own date, not of the whole set of inits scored together: so an
    init's scores do not depend on which other inits are verified with it, and statistics kept
    night by night (`verification.statistics`) add up to a batch verify's.

    Example:
        >>> times = np.arange("2030-01-01", "2032-01-01", dtype="datetime64[D]")
        >>> truth = xr.DataArray(np.arange(times.size, dtype=float), dims="time",
        ...                      coords={"time": times}, name="t")
        >>> inits = xr.DataArray(np.array(["2031-01-01", "2031-07-01"], dtype="datetime64[ns]"),
        ...                      dims="init_time")
        >>> sample = truth_climate(truth, inits, 60)
        >>> sample.count("time").values.tolist()  # 121 days a year, two years
        [242, 242]
    """
    days = truth[TIME].values.astype("datetime64[D]")
    centres = np.asarray(inits.values, dtype="datetime64[D]")
    inside = calendar_distance(days, centres) <= half_width_days  # (time, init)
    counts = inside.sum(axis=0)
    if (counts < 100).any():
        inside[:, counts < 100] = True
        counts = inside.sum(axis=0)
    if counts.min() < 100:
        warnings.warn(
            f"the climate of {truth.name} rests on only {counts.min()} analyses", stacklevel=2
        )
    order = np.argsort(~inside, axis=0, kind="stable")[: counts.max()].T  # (init, sample)
    valid = np.arange(counts.max()) < counts[:, None]
    picks = xr.DataArray(np.where(valid, order, 0), dims=(INIT, TIME))
    sample = truth.drop_vars(TIME).isel({TIME: picks}).where(xr.DataArray(valid, dims=(INIT, TIME)))
    return sample.assign_coords({INIT: inits.values}).chunk({INIT: 1, TIME: -1})


IN_MEMORY_BYTES = 8 * 2**20
"""Forecasts smaller than this are scored in memory, without dask."""

LEAD_GROUP_BYTES = 512 * 2**20
"""Forecast bytes (all variables of one system) that one compute call of `verify` scores."""

CHUNK_BYTES = 16 * 2**20
"""Target size of one forecast chunk while scoring: all members of whole fields, as many init
times as fit (memory per worker thread is a small multiple of this). Fewer, bigger chunks
spend less on dask's scheduling: the demo's 100-member stores (all 8 inits in a chunk) score
1.4 x as fast as with 8 MB chunks (2 inits)."""


def score_chunks(forecast: xr.DataArray) -> dict[str, int]:
    """All members and the whole grid (or every station) in each chunk, one lead, init times
    up to CHUNK_BYTES."""
    space = spatial_dims(forecast)
    field_bytes = forecast.sizes[MEMBER] * int(np.prod([forecast.sizes[d] for d in space])) * 8
    inits = int(np.clip(CHUNK_BYTES // field_bytes, 1, forecast.sizes[INIT]))
    return {INIT: inits, LEAD: 1, MEMBER: -1, **dict.fromkeys(space, -1)}


def _system_statistics(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variables: Sequence[str],
    regions: Mapping[str, Region],
    scores: Sequence[Score],
    options: VerifyOptions,
) -> xr.Dataset:
    """The chosen scores' statistics of one system per init, with a `variable` dimension (and
    the `missing_members` count of `scores.variable_statistics`): lazily, or in memory when
    the forecast is smaller than IN_MEMORY_BYTES (a nightly update's few new pairs, which
    dask's graphs would cost more than they compute)."""
    in_memory = sum(forecast[name].nbytes for name in variables) < IN_MEMORY_BYTES
    tolerance = options.valid_time_tolerance
    per_variable = []
    for name in variables:
        if in_memory:
            data = forecast[name].compute()
            observed = truth_at_valid_times(truth[name], data, tolerance).compute()
            climate_sample = options.climate_sample(truth[name], data[INIT]).compute()
        else:
            chunks = score_chunks(forecast[name])
            data = forecast[name].chunk(chunks)
            observed = truth_at_valid_times(truth[name], data, tolerance).chunk(
                {dim: size for dim, size in chunks.items() if dim != MEMBER}
            )
            climate_sample = options.climate_sample(truth[name], data[INIT]).chunk(
                {INIT: chunks[INIT]}
            )  # as the forecast: mismatched chunks split every task
        context = ScoringContext(data, observed, climate_sample, regions, options)
        per_variable.append(variable_statistics(context, scores))
    return xr.concat(per_variable, dim=xr.DataArray(list(variables), dims=["variable"]))


def system_statistics(
    forecast: xr.Dataset,
    truth: xr.Dataset,
    variables: Sequence[str],
    regions: Mapping[str, Region],
    scores: Sequence[Score],
    options: VerifyOptions,
    label: str = "forecast",
) -> xr.Dataset:
    """`_system_statistics`, computed a few lead times at a time: about LEAD_GROUP_BYTES of
    forecasts each, so peak memory stays flat however many leads there are. Refuses missing
    members (ScoreError naming `label`) as soon as a group shows some.

    Each group's graph is built from its own leads: a compute call materialises and culls the
    whole graph it is given, and one graph of every system and lead, sliced per group, cost the
    demo's verify 40 s of that (a third of its time) with the workers idle.
    """
    per_lead = sum(forecast[name].nbytes for name in variables) // forecast.sizes[LEAD]
    group = int(np.clip(LEAD_GROUP_BYTES // max(per_lead, 1), 1, None))
    by_lead = []
    # One BLAS thread per dask thread: OpenBLAS's own threads on top of dask's oversubscribe
    # the cores and spin, making the energy score's Gram matrices several times slower.
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        # NaN scores are expected (no events in a region, a negative unbiased squared error
        # under a square root); numpy's warnings about them would drown the output.
        warnings.simplefilter("ignore", RuntimeWarning)
        for first in range(0, forecast.sizes[LEAD], group):
            leads = forecast.isel({LEAD: slice(first, first + group)})
            part = _system_statistics(leads, truth, variables, regions, scores, options).compute()
            refuse_missing(part["missing_members"], label)
            by_lead.append(part.drop_vars("missing_members"))
    return xr.concat(by_lead, dim=LEAD, data_vars="all", coords="minimal", compat="override")


def refuse_missing(missing: xr.DataArray, label: str) -> None:
    """Raise ScoreError at the first (variable, init, lead) that has NaN member values.

    Example:
        >>> missing = xr.DataArray([[[0, 3]]], dims=("variable", "init_time", "lead_time"),
        ...     coords={"variable": ["t"], "init_time": [np.datetime64("2031-01-01T00")],
        ...             "lead_time": [np.timedelta64(0, "h"), np.timedelta64(6, "h")]})
        >>> refuse_missing(missing, "forecast")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        wxens.verification.errors.ScoreError: forecast: 't' has 3 missing (NaN) member ...
    """
    counts = missing.transpose("variable", INIT, LEAD)
    found = np.argwhere(counts.values > 0)
    if not found.size:
        return
    v, i, k = found[0]
    init = np.datetime_as_string(counts[INIT].values[i], unit="h")
    hours = counts[LEAD].values[k] / np.timedelta64(1, "h")
    raise ScoreError(
        f"{label}: {str(counts['variable'].values[v])!r} has {int(counts.values[v, i, k])} missing "
        f"(NaN) member values at init_time {init}, lead_time {hours:g} h; score complete "
        "members only, e.g. forecast.dropna('member', how='any')"
    )


MAP_LEADS = 3
MAP_MEMBERS = 4


def _map_fields(forecast: xr.DataArray, truth: xr.DataArray, climate: xr.DataArray) -> xr.Dataset:
    """The report's maps of the first init time, at up to MAP_LEADS lead times after lead 0
    (dimension `map_lead_time`): the truth, the ensemble mean, the spread (std, field units),
    the EFI against `climate` (`model_climate`, unitless) and the first MAP_MEMBERS members."""
    leads = forecast.sizes[LEAD]
    picks = np.unique(np.linspace(min(1, leads - 1), leads - 1, MAP_LEADS).round().astype(int))
    first = forecast.isel({INIT: 0, LEAD: picks})
    observed = truth.isel({INIT: 0, LEAD: picks})
    summary = ensemble_summary(first, observed, statistics=("mean", "variance"))
    fields = xr.Dataset(
        {
            "map_truth": observed,
            "map_ensemble_mean": summary["mean"],
            "map_spread": np.sqrt(summary["variance"])
            if first.sizes[MEMBER] > 1
            else xr.zeros_like(summary["mean"]),
            "map_efi": efi(first, climate),
            "map_members": first.isel({MEMBER: slice(0, MAP_MEMBERS)}).rename(
                {MEMBER: "map_member"}
            ),
        }
    )
    fields = fields.reset_coords(drop=True).rename({LEAD: "map_lead_time"})
    return fields.assign_coords(map_lead_time=forecast[LEAD].values[picks])


def _system_maps(
    forecast: xr.Dataset, truth: xr.Dataset, variables: Sequence[str], options: VerifyOptions
) -> xr.Dataset:
    """`_map_fields` of every variable (dimension `variable`), computed."""
    per_variable = []
    for name in variables:
        data = forecast[name].isel({INIT: [0]}).chunk({MEMBER: -1})
        observed = truth_at_valid_times(truth[name], data, options.valid_time_tolerance)
        climate_sample = options.climate_sample(truth[name], data[INIT])
        climate = model_climate(climate_sample, TIME).isel({INIT: 0}, drop=True)
        per_variable.append(_map_fields(data, observed, climate))
    maps = xr.concat(per_variable, dim=xr.DataArray(list(variables), dims=["variable"]))
    return maps.compute().assign_attrs(map_init_time=str(forecast[INIT].values[0]))


def climatological_ensemble(
    truth: xr.Dataset, like: xr.Dataset, half_width_days: int = 15, step_days: int = 5
) -> xr.Dataset:
    """A probabilistic climatology for the inits and leads of `like`, built from the truth.

    Member (k, d) of the forecast valid at time v is the analysis at `v - (365 k + d) days`,
    for every earlier year k the truth holds and d = -15, -10, ..., 15: the same time of day
    around the same calendar date in other years (WeatherBench2's probabilistic climatology;
    the valid year itself is never used).

    Example:
        >>> times = np.arange("2029-01-01", "2031-02-01", dtype="datetime64[D]")
        >>> truth = xr.Dataset({"t": ("time", np.arange(times.size, dtype=float))},
        ...                    coords={"time": times.astype("datetime64[ns]")})
        >>> like = xr.Dataset(coords={"init_time": [np.datetime64("2031-01-20", "ns")],
        ...                           "lead_time": [np.timedelta64(0, "ns")]})
        >>> climatological_ensemble(truth, like).sizes["member"]  # 2 earlier years x 7 days
        14
    """
    valid = (like[INIT] + like[LEAD]).values
    shifts = range(-half_width_days, half_width_days + 1, step_days)
    offsets = [
        np.timedelta64(365 * year + shift, "D")
        for year in range(1, 200)
        for shift in shifts
        if np.isin(valid - np.timedelta64(365 * year + shift, "D"), truth[TIME].values).all()
    ]
    if not offsets:
        raise ScoreError(
            "the truth holds no earlier year of the valid times, so no climatological ensemble"
        )
    members = []
    for offset in offsets:
        earlier = like.assign_coords({INIT: like[INIT].values - offset})
        shifted = {name: truth_at_valid_times(truth[name], earlier) for name in truth}
        members.append(xr.Dataset(shifted).assign_coords({INIT: like[INIT]}))
    return xr.concat(members, dim=MEMBER).transpose(INIT, LEAD, MEMBER, ...)


def persistence_forecast(truth: xr.Dataset, like: xr.Dataset) -> xr.Dataset:
    """One member, the analysis at the init time, at every lead of `like`: a deterministic
    forecast, scored as a one-member ensemble (its CRPS is its mean absolute error).

    Example:
        >>> times = np.datetime64("2031-01-01", "ns") + np.arange(3) * np.timedelta64(6, "h")
        >>> truth = xr.Dataset({"t": ("time", [1.0, 2.0, 3.0])}, coords={"time": times})
        >>> like = xr.Dataset(coords={"init_time": times[1:], "lead_time": times[:2] - times[0]})
        >>> persistence_forecast(truth, like)["t"].squeeze("member").values.tolist()
        [[2.0, 2.0], [3.0, 3.0]]
    """
    inits = like[INIT].values
    missing = ~np.isin(inits, truth[TIME].values)
    if missing.any():
        first = np.datetime_as_string(inits[missing][0], unit="h")
        raise ScoreError(f"the truth has no analysis at init time {first} for persistence")
    at_init = truth.sel({TIME: inits}).rename({TIME: INIT}).assign_coords({INIT: like[INIT]})
    return at_init.expand_dims({LEAD: like[LEAD].values, MEMBER: 1}).transpose(INIT, LEAD, ...)


REFERENCE_BUILDERS = {"climatology": climatological_ensemble, "persistence": persistence_forecast}
"""References given by name instead of a dataset or path are built from the truth."""


def _is_builder(source: object) -> bool:
    return isinstance(source, str) and source in REFERENCE_BUILDERS


def _open(source: Source, label: str) -> xr.Dataset:
    """A Dataset from a Dataset, a named DataArray or a path."""
    if isinstance(source, xr.Dataset):
        return source
    if isinstance(source, xr.DataArray):
        if source.name is None:
            raise ScoreError(f"{label} is an unnamed DataArray; name it or pass a Dataset")
        return source.to_dataset()
    if isinstance(source, str | Path):
        return open_store(source)
    raise ScoreError(f"{label} is a {type(source).__name__}; pass a Dataset or a path")


def _describe(source: object) -> str:
    """How the provenance names an input."""
    if isinstance(source, xr.Dataset | xr.DataArray):
        return "<in-memory dataset>"
    return str(source)


def score(
    forecast: Source,
    truth: Source,
    references: Mapping[str, Source] | None = None,
    *,
    scores: Sequence[str | Score] | None = None,
    regions: RegionsLike = None,
    variables: Sequence[str] | None = None,
    options: VerifyOptions | None = None,
) -> xr.Dataset:
    """Score an ensemble forecast (and any references) against a truth; write nothing.

    `forecast` and each reference have dims `init_time` (datetime64), `lead_time`
    (timedelta64; absent: lead 0), `member`, `latitude`, `longitude` (other tools' names are
    mapped: cfgrib's `number`/`time`/`step`, WeatherBench2's `prediction_timedelta`, and
    `options.forecast_renames`); `truth` has `time`, `latitude`, `longitude`, on the same grid,
    with an analysis at every valid time `init_time + lead_time`. Each may be an in-memory or
    dask-backed Dataset or a path (Zarr, netCDF, GRIB); a reference may also be the name
    `"climatology"` or `"persistence"`, built from the truth (`REFERENCE_BUILDERS`).

    `scores` picks entries of `scores.SCORES` by name or object (default all), `regions` picks
    regions (`aggregation.REGIONS` names, `Region` objects or a mapping name -> Region;
    default the four bands), `variables` the fields (default every variable that forecast and
    truth share). Returns the scores dataset of `verification/__init__.py`: one variable per
    score with dims `system` (`forecast`, then the references), `variable`, `region`,
    `lead_time` and the score's own; means are area-weighted (cell areas) over a region, then
    taken over init times, square roots last. The maps of the forecast's first init are
    included unless `options.maps` is False.

    Missing member values are refused (ScoreError naming the system, variable, init and lead);
    so is misuse: a missing dimension, an unknown score, region or variable, another grid.

    Example:
        >>> grid = {"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]}
        >>> times = np.datetime64("2031-01-01") + np.arange(4) * np.timedelta64(6, "h")
        >>> truth = xr.Dataset({"t": (("time", *grid), np.zeros((4, 2, 2)))},
        ...                    coords={"time": times, **grid})
        >>> members = np.stack([np.full((2, 2), -1.0), np.full((2, 2), 1.0)])
        >>> forecast = xr.Dataset(
        ...     {"t": (("init_time", "member", *grid), members[None])},
        ...     coords={"init_time": times[:1], **grid})
        >>> result = score(forecast, truth, scores=["rmse", "spread"], regions=["global"],
        ...                options=VerifyOptions(maps=False))
        >>> float(result.rmse.squeeze()), float(result.spread.squeeze())
        (0.0, 1.4142135623730951)
    """
    inputs = prepare_inputs(forecast, truth, references, scores, regions, variables, options)
    options = inputs.options
    scored = []
    for name, ds in inputs.stores.items():
        stats = system_statistics(
            ds, inputs.truth, inputs.variables, inputs.regions, inputs.scores, options, name
        )
        with warnings.catch_warnings():  # NaN scores: no events in a region, ...
            warnings.simplefilter("ignore", RuntimeWarning)
            scored.append(finalize_statistics(stats, inputs.scores, ds.sizes[MEMBER], options))
    # Systems of other sizes have other rank axes (M + 1): the outer join pads them with NaN.
    result = xr.concat(scored, dim=xr.DataArray(list(inputs.stores), dims=["system"]), join="outer")
    result.attrs = inputs.provenance()
    if options.maps and STATION not in inputs.truth.dims:
        maps = _system_maps(inputs.stores["forecast"], inputs.truth, inputs.variables, options)
        result = xr.merge([result, maps], combine_attrs="override")
        result.attrs["map_init_time"] = maps.attrs["map_init_time"]
    return result


@dataclass
class Inputs:
    """What `score` and the statistics store score: the systems (the forecast first, then
    the references, each on the truth's grid labels), the truth, and the choices."""

    stores: dict[str, xr.Dataset]
    truth: xr.Dataset
    variables: list[str]
    regions: dict[str, Region]
    scores: list[Score]
    options: VerifyOptions
    sources: dict[str, object]
    truth_source: object
    planet: str

    def provenance(self) -> dict:
        attrs = _provenance(
            self.sources,
            self.truth_source,
            self.variables,
            self.regions,
            self.scores,
            self.options,
            self.stores,
        )
        # "earth" unless the truth says otherwise: the report draws coastlines only on Earth.
        stations = self.options.stations
        ids = None if stations is None else stations[STATION].values.tolist()
        return {
            **attrs,
            "planet": self.planet,
            "not_scored": json.dumps(self.not_scored()),
            "stations": json.dumps(ids),
        }

    def not_scored(self) -> dict[str, str]:
        """The chosen scores left out, with why: those of whole fields, on points."""
        if STATION not in self.truth.dims:
            return {}
        kind = geometry_name(self.truth)
        return {
            entry.name: f"needs a grid; the forecast is on {kind}"
            for entry in self.scores
            if entry.needs_grid
        }


def prepare_inputs(
    forecast: Source,
    truth: Source,
    references: Mapping[str, Source] | None = None,
    scores: Sequence[str | Score] | None = None,
    regions: RegionsLike = None,
    variables: Sequence[str] | None = None,
    options: VerifyOptions | None = None,
) -> Inputs:
    """Open, check and standardise what `score` is given (arguments as there); build the
    named references from the truth. Raises ScoreError with one line on misuse."""
    options = VerifyOptions() if options is None else options
    if not isinstance(options, VerifyOptions):
        raise ScoreError(f"options must be a VerifyOptions, got {type(options).__name__}")
    chosen = resolve_scores(scores)
    if references is not None and not isinstance(references, Mapping):
        raise ScoreError("references must map names to datasets, paths or builder names")
    references = dict(references or {})
    if "forecast" in references:
        raise ScoreError("'forecast' names the forecast; give the reference another name")
    opened_truth = _open(truth, "truth")
    truth_ds = standardise(opened_truth, options.truth_renames, "truth", forecast=False)
    if options.stations is not None:
        truth_ds = _sampled_at_stations(truth_ds, options.stations, "truth")
    on_grid = STATION not in truth_ds.dims
    # whole fields (every station), however written
    truth_ds = truth_ds.chunk(dict.fromkeys(spatial_dims(truth_ds), -1))
    named_regions = resolve_regions(regions if regions is not None or on_grid else ["global"])
    if on_grid:
        for region in named_regions.values():
            region.weights(truth_ds[LATITUDE], truth_ds[LONGITUDE])  # on the grid? (ScoreError)
    systems = {"forecast": forecast, **references}
    stores = {}
    for name, source in systems.items():
        if _is_builder(source):
            continue
        label = f"{name} ({source})" if isinstance(source, str | Path) else name
        opened = _open(source, label)
        ds = standardise(opened, options.forecast_renames, label, forecast=True)
        ds = ds.assign_attrs(opened.attrs)  # a store's provenance and fingerprint
        if options.stations is not None:
            ds = _sampled_at_stations(ds, options.stations, label)
        check_same_grid(ds, truth_ds, label)
        # Equal to rounding: the truth's labels, so that the two align exactly.
        stores[name] = (
            ds.assign_coords({dim: truth_ds[dim].values for dim in GRID}) if on_grid else ds
        )
    if "forecast" not in stores:
        raise ScoreError("the forecast must be a dataset or a path, not a reference name")
    if not on_grid:  # the forecast's stations, in its order, everywhere
        ids = stores["forecast"][STATION].values
        truth_ds = truth_ds.sel({STATION: ids})
        stores = {
            name: ds.sel({STATION: ids}).assign_coords(truth_ds[STATION].coords)
            for name, ds in stores.items()
        }
        point_weights(truth_ds, named_regions)  # the regions hold stations? (ScoreError)
    variables = choose_variables(stores["forecast"], truth_ds, variables)
    for name in stores:
        choose_variables(stores[name], truth_ds, variables)  # every system has them
    for name, source in systems.items():
        if _is_builder(source):
            stores[name] = REFERENCE_BUILDERS[source](truth_ds[variables], stores["forecast"])
    return Inputs(
        stores={name: stores[name] for name in systems},  # in the order given
        truth=truth_ds,
        variables=list(variables),
        regions=named_regions,
        scores=chosen,
        options=options,
        sources=systems,
        truth_source=truth,
        planet=opened_truth.attrs.get("planet", "earth"),
    )


def _sampled_at_stations(ds: xr.Dataset, stations: xr.Dataset, label: str) -> xr.Dataset:
    """A gridded dataset sampled at `stations` (`geometry.at_stations`), as points."""
    if geometry(ds, label) != "grid":
        raise ScoreError(f"{label} is not on a grid, so it cannot be sampled at stations")
    return as_points(at_stations(ds, stations), "stations")


def verify(
    forecast: Source,
    truth: Source,
    out: str | Path,
    references: Mapping[str, Source] | None = None,
    *,
    scores: Sequence[str | Score] | None = None,
    regions: RegionsLike = None,
    variables: Sequence[str] | None = None,
    options: VerifyOptions | None = None,
    overwrite: bool = False,
) -> xr.Dataset:
    """`score`, then write the scores dataset to `out` (Zarr v3, consolidated); return it.

    The store is written to `OUT.partial` and renamed when complete, so a failed run leaves
    neither; an existing `out` is replaced only with `overwrite=True` (after scoring, so a
    failure keeps it). Arguments as in `score`; paths and Datasets may be mixed.

    Example:
        >>> import tempfile
        >>> grid = {"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]}
        >>> times = np.datetime64("2031-01-01") + np.arange(4) * np.timedelta64(6, "h")
        >>> truth = xr.Dataset({"t": (("time", *grid), np.zeros((4, 2, 2)))},
        ...                    coords={"time": times, **grid})
        >>> forecast = xr.Dataset(
        ...     {"t": (("init_time", "member", *grid), np.ones((1, 2, 2, 2)))},
        ...     coords={"init_time": times[:1], **grid})
        >>> out = Path(tempfile.mkdtemp()) / "scores.zarr"
        >>> written = verify(forecast, truth, out, scores=["rmse"], regions=["global"],
        ...                  options=VerifyOptions(maps=False))
        >>> float(xr.open_zarr(out).rmse.squeeze())
        1.0
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ScoreError(f"{out} already exists; pass overwrite=True to replace it")
    result = score(
        forecast,
        truth,
        references,
        scores=scores,
        regions=regions,
        variables=variables,
        options=options,
    )
    write_scores(result, out, overwrite)
    return result


def _provenance(
    systems: Mapping[str, object],
    truth: object,
    variables: Sequence[str],
    regions: Mapping[str, Region],
    scores: Sequence[Score],
    options: VerifyOptions,
    stores: Mapping[str, xr.Dataset],
) -> dict:
    """Attributes of the scores dataset: inputs, scores, regions, options, members, version."""
    return {
        "systems": json.dumps({name: _describe(source) for name, source in systems.items()}),
        "truth": _describe(truth),
        "members": json.dumps({name: ds.sizes[MEMBER] for name, ds in stores.items()}),
        "variables": json.dumps(list(variables)),
        "scores": json.dumps([entry.name for entry in scores]),
        "regions": json.dumps({name: repr(region) for name, region in regions.items()}),
        "options": json.dumps(
            {
                "regions": list(regions),
                "quantiles": list(options.quantiles),
                "probability_bins": options.probability_bins,
                "pit_bins": options.pit_bins,
                "cost_loss_ratios": list(options.cost_loss_ratios),
                "corp_resamples": options.corp_resamples,
                "seed": options.seed,
                "truncation": options.truncation,
                "climate_window_days": options.climate_window_days,
                "valid_time_tolerance": options.valid_time_tolerance,
                "forecast_renames": dict(options.forecast_renames),
                "truth_renames": dict(options.truth_renames),
                "maps": options.maps,
                "climate_period": options.climate_period and list(options.climate_period),
            }
        ),
        "wxens_version": version("wxens"),
    }


def write_scores(scores: xr.Dataset, out: Path, overwrite: bool) -> None:
    """Write to `OUT.partial`, then move it into place (replacing `out` only now); a failed
    write leaves no `OUT.partial`."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    # Variable-length strings: zarr v3 has no stable spec for numpy's fixed-width unicode.
    labels = {name: c.astype(object) for name, c in scores.coords.items() if c.dtype.kind == "U"}
    try:
        with warnings.catch_warnings():
            # Consolidated metadata lets `xr.open_zarr(out)` open quietly; zarr warns it is not
            # (yet) part of the v3 spec.
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            scores.assign_coords(labels).to_zarr(partial, mode="w", consolidated=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists() and overwrite:
        shutil.rmtree(out)
    partial.rename(out)
