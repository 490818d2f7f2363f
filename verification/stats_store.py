"""Mergeable verification statistics: a statistics store that grows with a forecast archive,
night by night, and scores any set of its inits (`update_statistics`, `finalize`,
`wxens verify --stats`, `wxens finalize`).

Every score of `scores.SCORES` comes in two steps (`Score.statistics`, `Score.finalize`): its
sufficient statistics per (init, lead, variable, region) are area means (CRPS, squared error
of the mean, variance, outliers, tails, ACC, energy score, spectra) or area-weighted counts
(rank counts, the contingency tables of the quantile events and of the EFI), and the scores
of a set of inits are the statistics' mean (counts: sum) over those inits, finalized.
`wxens verify` does exactly this over all its inits, so a store's finalized scores equal a
batch verify of the same forecast: to rounding for the means (summed in another order), and
bit for bit for the tables (the same per-init tables, summed in the same order).

What would not merge is fixed per init: each init's climate (the thresholds of the quantile
events and the EFI, the ACC's climatology) is drawn from its own calendar window of the
truth (`verify.truth_climate`) over a climate period the store records when it is created
(`VerifyOptions.climate_period`; default: the truth's span then), so it stays put while the
truth grows; and rank ties are broken by a draw from the point's coordinates
(`metrics.point_keys`), not from its position in an array.

Layout (Zarr v3): a group per system (`forecast`, then the references), holding each
statistic with dims `(init_time, lead_time, variable, region, ...)` in chunks of one init,
and `computed` (init, lead): 1 once that pair's statistics are written. An update computes
only the (init, lead) pairs whose valid time the truth now holds and that are not computed
yet, grouped by init, so its cost follows the new pairs, not the store's length. Values are
written before their flags, and the metadata is consolidated last: a kill leaves a store
that reads as before the update, and the next update redoes the unflagged pairs. One writer
at a time (`STATS.lock`); readers take no lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
import zarr
from wxens.verification.aggregation import RegionsLike
from wxens.verification.errors import ScoreError
from wxens.verification.scores import Score, finalize_statistics, resolve_scores
from wxens.verification.verify import (
    INIT,
    LEAD,
    TIME,
    Inputs,
    Source,
    VerifyOptions,
    prepare_inputs,
    system_statistics,
)

from wxens.stores import StoreLock, hours_since_epoch

COMPUTED = "computed"
STATISTICS_FLAG = "wxens_statistics"


@dataclass(frozen=True)
class StatisticsUpdate:
    """What an update computed: (init, lead) pairs per system, and the store's inits."""

    path: Path
    pairs: dict[str, int]
    inits: int

    def __str__(self) -> str:
        done = ", ".join(f"{name} {count}" for name, count in self.pairs.items())
        return f"{self.path}: computed (init, lead) pairs: {done}; {self.inits} inits in store"


def update_statistics(
    stats: str | Path,
    forecast: Source,
    truth: Source,
    references: Mapping[str, Source] | None = None,
    *,
    scores: Sequence[str | Score] | None = None,
    regions: RegionsLike = None,
    variables: Sequence[str] | None = None,
    options: VerifyOptions | None = None,
) -> StatisticsUpdate:
    """Add to the statistics store at `stats` the (init, lead) pairs of `forecast` (and of each
    reference) whose valid time `truth` holds and that the store lacks. Arguments as in
    `verify.score`; the store is created on first use and records its choices (scores,
    regions, variables, options, the forecast's fingerprint): a later update with other
    choices, or of another forecast, is refused with one line. `options.climate_period`
    defaults to the truth's span at creation, and to the recorded one after.

    Example:
        >>> import tempfile
        >>> grid = {"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]}
        >>> times = np.datetime64("2031-01-01", "ns") + np.arange(6) * np.timedelta64(6, "h")
        >>> truth = xr.Dataset({"t": (("time", *grid), np.zeros((6, 2, 2)))},
        ...                    coords={"time": times, **grid})
        >>> forecast = xr.Dataset(
        ...     {"t": (("init_time", "lead_time", "member", *grid), np.ones((2, 2, 3, 2, 2)))},
        ...     coords={"init_time": times[:2], "lead_time": times[:2] - times[0], **grid})
        >>> path = Path(tempfile.mkdtemp()) / "stats.zarr"
        >>> print(update_statistics(path, forecast, truth.isel(time=slice(0, 2)),
        ...     scores=["rmse"], regions=["global"]).pairs)
        {'forecast': 3}
        >>> print(update_statistics(path, forecast, truth, scores=["rmse"],
        ...     regions=["global"]).pairs)
        {'forecast': 1}
        >>> float(finalize(path).rmse.sel(lead_time="6h").squeeze())
        1.0
    """
    inputs = prepare_inputs(forecast, truth, references, scores, regions, variables, options)
    with StatisticsWriter(stats, inputs) as writer:
        for name, ds in inputs.stores.items():
            writer.add(name, ds)
    return writer.update


class StatisticsWriter:
    """One update of the statistics store at `path` with `inputs` (`verify.prepare_inputs`):
    refuses, with one line, a store of another forecast or other choices, or one another run
    is writing; holds its lock while open; publishes what `add` wrote on a clean exit.

    `inputs.options.climate_period` is fixed here: the recorded one, else the truth's span.
    """

    def __init__(self, path: str | Path, inputs: Inputs):
        self.store = StatisticsStore(Path(path))
        if inputs.options.climate_period is None:
            recorded = self.store.recorded_options()
            period = recorded.get("climate_period") if recorded else None
            if period is None:
                times = inputs.truth[TIME].values
                period = [str(times.min()), str(times.max())]
            inputs.options = dataclasses.replace(inputs.options, climate_period=tuple(period))
        self.inputs = inputs
        self.identity = _identity(inputs)
        self.lock = StoreLock(self.store.path)
        self.pairs = dict.fromkeys(inputs.stores, 0)

    def __enter__(self) -> StatisticsWriter:
        self.lock.check()
        self.store.check(self.identity)
        self.lock.acquire()
        try:
            self.store.create(self.identity, self.inputs.provenance())
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None and (any(self.pairs.values()) or self.store.stale()):
                self.store.publish()
        finally:
            self.lock.release()

    def pending(
        self, name: str, ds: xr.Dataset, lead_times: np.ndarray | None = None
    ) -> np.ndarray:
        """(init, lead) booleans of `ds` (some of the system's `lead_times`, default all of
        `ds`'s): valid time in the truth, statistics not yet computed."""
        lead_times = ds[LEAD].values if lead_times is None else lead_times
        return self.store.pending(name, ds, self.inputs.truth[TIME].values, lead_times)

    def add(self, name: str, ds: xr.Dataset, lead_times: np.ndarray | None = None) -> int:
        """Compute and write the pending (init, lead) pairs of system `name` in `ds`, whose
        leads are some of the system's `lead_times` (default: all of `ds`'s); return how many."""
        lead_times = ds[LEAD].values if lead_times is None else lead_times
        ds = ds.sortby(INIT)
        pending = self.pending(name, ds, lead_times)
        inputs = self.inputs
        for inits, leads in _groups(pending):
            part = ds.isel({INIT: inits, LEAD: leads})
            computed = system_statistics(
                part,
                inputs.truth,
                inputs.variables,
                inputs.regions,
                inputs.scores,
                inputs.options,
                name,
            )
            self.store.write(name, computed, lead_times)
        count = int(pending.sum())
        self.pairs[name] += count
        return count

    @property
    def update(self) -> StatisticsUpdate:
        return StatisticsUpdate(self.store.path, dict(self.pairs), len(self.store.inits()))


def finalize(
    stats: str | Path,
    inits: slice | Sequence[object] | int | None = None,
    scores: Sequence[str | Score] | None = None,
) -> xr.Dataset:
    """The scores dataset (as `verify.score` returns, without maps) of a set of the store's
    inits: all (None), a time slice (`slice("2031-01-01", "2031-03-31")`), a list of init
    times, or an int N for the last N inits. Each lead averages the inits that have it
    computed. `scores` picks among the store's scores (default all of them).
    """
    stored = read_statistics(stats, inits)
    return stored.finalized(stored.chosen(scores))


@dataclass
class StoredStatistics:
    """A statistics store's per-init statistics of a set of inits, in memory: one Dataset per
    system (dims `init_time`, `lead_time`, ...; NaN where not computed), and what finalizes
    them."""

    path: Path
    systems: dict[str, xr.Dataset]
    members: dict[str, int]
    options: VerifyOptions
    attrs: dict[str, object]

    def chosen(self, scores: Sequence[str | Score] | None = None) -> list[Score]:
        """`scores` (default all the store keeps), refused if the store keeps no statistics
        of one of them."""
        recorded = json.loads(self.attrs["scores"])
        chosen = resolve_scores(scores if scores is not None else recorded)
        missing = [entry.name for entry in chosen if entry.name not in recorded]
        if missing:
            raise ScoreError(f"{self.path} keeps no statistics of {missing}; it has {recorded}")
        return chosen

    def finalized(self, scores: Sequence[Score], picks: np.ndarray | None = None) -> xr.Dataset:
        """The scores of the inits at positions `picks` (default all; repeats count twice,
        as a bootstrap resample needs), as `verify.score` returns them without maps."""
        scored = []
        for name, data in self.systems.items():
            data = data if picks is None else data.isel({INIT: picks})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # NaN scores: no events
                scored.append(finalize_statistics(data, scores, self.members[name], self.options))
        result = xr.concat(
            scored, dim=xr.DataArray(list(self.systems), dims=["system"]), join="outer"
        )
        result.attrs = {key: value for key, value in self.attrs.items() if key != STATISTICS_FLAG}
        result.attrs["scores"] = json.dumps([entry.name for entry in scores])
        return result


def read_statistics(
    stats: str | Path, inits: slice | Sequence[object] | int | None = None
) -> StoredStatistics:
    """The statistics of a set of the store's inits (as in `finalize`), read into memory."""
    store = StatisticsStore(Path(stats))
    attrs = store.attributes()
    members = json.loads(attrs["members"])
    systems = {}
    for name in members:
        data = _select(store.system(name).sortby(INIT), inits, store.path).load()  # small
        systems[name] = data.where(data[COMPUTED] == 1).drop_vars(COMPUTED)
    options = VerifyOptions.from_record(json.loads(attrs["options"]))
    return StoredStatistics(store.path, systems, members, options, attrs)


def _select(data: xr.Dataset, inits: object, path: Path) -> xr.Dataset:
    if inits is None:
        return data
    if isinstance(inits, int):
        if inits < 1:
            raise ScoreError(f"the last N inits needs N >= 1, got {inits}")
        return data.isel({INIT: slice(-inits, None)})
    if isinstance(inits, slice):
        selected = data.sel({INIT: inits})
    else:
        wanted = np.asarray(inits, dtype="datetime64[ns]")
        absent = wanted[~np.isin(wanted, data[INIT].values)]
        if absent.size:
            raise ScoreError(f"{path} holds no statistics of init {absent[0]}")
        selected = data.sel({INIT: wanted})
    if not selected.sizes[INIT]:
        raise ScoreError(f"{path} holds no init in {inits}")
    return selected


def _identity(inputs) -> str:
    """sha256 of what sets the statistics: scores, regions, variables, options, members, and
    each system's fingerprint (a forecast store's `wxens_fingerprint`, else its source)."""
    provenance = inputs.provenance()
    systems = {
        name: ds.attrs.get("wxens_fingerprint", provenance_source)
        for (name, ds), provenance_source in zip(
            inputs.stores.items(), json.loads(provenance["systems"]).values(), strict=True
        )
    }
    identity = {key: provenance[key] for key in ("variables", "scores", "regions", "options")}
    identity |= {"members": provenance["members"], "systems": systems}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _groups(pending: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """The pending (init, lead) pairs as (inits, contiguous leads) blocks: inits with the same
    pending leads go together, in runs of consecutive leads."""
    blocks: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(pending):
        leads = tuple(np.flatnonzero(row).tolist())
        if leads:
            blocks.setdefault(leads, []).append(i)
    groups = []
    for leads, inits in blocks.items():
        runs = np.split(np.array(leads), np.flatnonzero(np.diff(leads) > 1) + 1)
        groups += [(inits, run.tolist()) for run in runs]
    return groups


class StatisticsStore:
    """The statistics store at `path`: read by anyone, written under its lock."""

    def __init__(self, path: Path):
        self.path = path

    def _root(self, mode: str = "r") -> zarr.Group:
        return zarr.open_group(self.path, mode=mode, use_consolidated=False)

    def exists(self) -> bool:
        return (self.path / "zarr.json").is_file()

    def attributes(self) -> dict[str, object]:
        if not self.exists():
            raise ScoreError(f"{self.path} is not a statistics store")
        attrs = dict(zarr.open_group(self.path, mode="r").attrs)
        if attrs.get(STATISTICS_FLAG) is None:
            raise ScoreError(f"{self.path} is not a statistics store")
        return attrs

    def recorded_options(self) -> dict[str, object] | None:
        return json.loads(self.attributes()["options"]) if self.exists() else None

    def check(self, identity: str) -> None:
        """Refuse a store kept for another forecast or with other choices."""
        if self.exists() and self.attributes()[STATISTICS_FLAG] != identity:
            raise ScoreError(
                f"{self.path} holds the statistics of another forecast, or of other scores,"
                " regions, variables or options"
            )

    def create(self, identity: str, attrs: Mapping[str, object]) -> None:
        if not self.exists():
            self._root("w-").attrs.update({**attrs, STATISTICS_FLAG: identity})

    def inits(self) -> np.ndarray:
        root = zarr.open_group(self.path, mode="r")
        names = [name for name, _ in root.groups()]
        return self.system(names[0])[INIT].values if names else np.array([])

    def system(self, name: str) -> xr.Dataset:
        """The statistics of one system, lazily, as last published (no dask: a selection
        of inits reads its rows straight from Zarr, several times faster than a dask graph
        of one task per init's chunk)."""
        return xr.open_zarr(self.path, group=name, consolidated=True, chunks=None)

    def pending(
        self, name: str, forecast: xr.Dataset, truth_times: np.ndarray, lead_times: np.ndarray
    ) -> np.ndarray:
        """(init, lead) booleans over `forecast`'s inits and leads (some of the system's
        `lead_times`): valid time in the truth, not yet computed."""
        valid = forecast[INIT].values[:, None] + forecast[LEAD].values[None, :]
        available = np.isin(valid, truth_times)
        if name not in self._root():
            return available
        flags = xr.open_zarr(self.path, group=name, consolidated=False)[COMPUTED]
        if not np.array_equal(flags[LEAD].values, lead_times):
            raise ScoreError(f"{self.path}: the forecast's lead times are not the store's")
        found = np.isin(forecast[INIT].values, flags[INIT].values)
        done = np.zeros_like(available)
        if found.any():
            rows = flags.sel({INIT: forecast[INIT].values[found]})
            done[found] = rows.sel({LEAD: forecast[LEAD].values}).values.astype(bool)
        return available & ~done

    def write(self, name: str, computed: xr.Dataset, lead_times: np.ndarray) -> None:
        """Write the statistics `computed` (some inits, consecutive leads) of system `name`,
        then flag them computed; new inits get rows first."""
        computed = computed.transpose(INIT, LEAD, ...)
        if name not in self._root():
            self._create_system(name, computed, lead_times)
        group = self._root("r+")[name]
        index = self._init_index(group, computed[INIT].values)
        leads = np.searchsorted(lead_times, computed[LEAD].values)
        span = slice(int(leads[0]), int(leads[-1]) + 1)
        contiguous = index == list(range(index[0], index[0] + len(index)))
        rows = [slice(index[0], index[-1] + 1)] if contiguous else index
        parts = [slice(None)] if contiguous else range(len(index))  # one write per block
        for variable in [*computed.data_vars, COMPUTED]:  # the flags last
            array = group[variable]
            if variable == COMPUTED:
                values = np.ones((len(index), span.stop - span.start), "u1")
            else:
                values = computed[variable].transpose(*array.metadata.dimension_names).values
            for row, part in zip(rows, parts, strict=True):
                array[row, span] = values[part]

    def _create_system(self, name: str, computed: xr.Dataset, lead_times: np.ndarray) -> None:
        """An empty group for system `name`: `computed`'s variables with all `lead_times`, no
        init yet (rows are added by `_init_index`)."""
        template = computed.isel({INIT: [0]}).reindex({LEAD: lead_times})
        # Variable-length strings: zarr v3 has no stable spec for numpy's fixed-width unicode.
        labels = {k: c.astype(object) for k, c in template.coords.items() if c.dtype.kind == "U"}
        template = template.assign_coords(labels)
        template = template.assign({COMPUTED: ((INIT, LEAD), np.zeros((1, len(lead_times)), "u1"))})
        encoding = {
            variable: {"chunks": (1, *template[variable].shape[1:])}
            for variable in template.data_vars
        }
        encoding[INIT] = {"units": "hours since 1970-01-01", "dtype": "int64", "chunks": (1,)}
        template.to_zarr(
            self.path, group=name, mode="w-", encoding=encoding, consolidated=False, zarr_format=3
        )
        group = self._root("r+")[name]
        for array in self._along_init(group):
            array.resize((0, *array.shape[1:]))

    @staticmethod
    def _along_init(group: zarr.Group) -> list[zarr.Array]:
        return [a for _, a in group.arrays() if a.metadata.dimension_names[:1] == (INIT,)]

    def _init_index(self, group: zarr.Group, inits: np.ndarray) -> list[int]:
        """The row of each of `inits`, adding rows (NaN, not computed) for new ones."""
        known = {hours: row for row, hours in enumerate(group[INIT][:].tolist())}
        start = len(known)
        wanted = hours_since_epoch(inits).tolist()
        for value in wanted:
            known.setdefault(value, len(known))
        if len(known) > start:  # all new rows at once: one resize of each array
            for array in self._along_init(group):
                array.resize((len(known), *array.shape[1:]))
            group[INIT][start:] = list(known)[start:]
        return [known[value] for value in wanted]

    def stale(self) -> bool:
        """Whether readers' (consolidated) view lacks rows written since (a killed update)."""
        if not self.exists():
            return False
        try:
            published = zarr.open_group(self.path, mode="r", use_consolidated=True)
        except ValueError:  # never consolidated
            return True
        actual = self._root()
        for name, group in actual.groups():
            if name not in published or published[name][COMPUTED].shape != group[COMPUTED].shape:
                return True
        return False

    def publish(self) -> None:
        """Consolidate: readers now see this update's rows and flags."""
        with warnings.catch_warnings():  # "not part of the Zarr v3 spec": xarray reads it
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(self.path)
