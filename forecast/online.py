"""Online scoring: members scored as they are produced, never stored (`wxens forecast
--score-against TRUTH --stats STATS --keep none|mean|N`, `score_online`).

Exactness. Fair CRPS and ranks need every member at a point, so an init's members are stepped
in lockstep: the members are cut into one slice per worker (whole micro-batches), each worker
steps its slice by one lead, and the states of all members at that lead are joined. Blocks of
consecutive leads (about `BLOCK_BYTES` of fields) are scored together, with the same
`verify.system_statistics` a batch verify runs, into the statistics store; their memory is
then freed. A member's numbers do not depend on the batch that steps it (`runner`), so the
statistics are those of the stored ensemble, and `finalize` of the store equals a batch
`wxens verify` of the same ensemble written out (floating scores to rounding, tables
exactly).

The statistics store has the fingerprint an archive of the same ensemble would have, so
`wxens verify --stats` of such an archive and an online run add to the same store. With
`keep` set, what is kept goes to an archive (`forecast.archive`): the first N members
(bitwise those of an N-member run: the archive of `wxens forecast --members N`), or the
ensemble mean (float64 mean, stored as float32, one member named `ensemble-mean`).

Idempotent and resumable per init: an init is skipped when all its pairs are in the store
(and the kept archive holds it); an init cut off is recomputed from its lead 0, its
statistics written only for the pairs not flagged yet, and its kept fields written whole.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dask.array
import numpy as np
import torch
import xarray as xr
from wxens.forecast.archive import Archive, Pending
from wxens.forecast.ensemble_store import (
    FIELD_DIMS,
    FINGERPRINT,
    INIT,
    LEAD,
    MEMBER,
    EnsembleStore,
    StoreLayout,
    create_store,
)
from wxens.forecast.runner import (
    ARCHIVE_FLAG,
    EnsembleRun,
    ForecastError,
    RunOptions,
    checked_run,
    field_attrs,
    resolved,
    sha256_json,
    single_threaded,
    thread_count,
)

from wxens.stores import StoreLock

BLOCK_BYTES = 256 << 20
"""Fields of all members scored at once: leads are grouped up to this size."""

MEAN = "mean"


@dataclass(frozen=True)
class OnlineSummary:
    """What an online run did: inits scored and skipped, member-steps, wall time, and where
    its statistics and kept fields went."""

    stats: Path
    scored: list[np.datetime64]
    skipped: list[np.datetime64]
    pairs: int
    member_steps: int
    seconds: float
    kept: Path | None

    def __str__(self) -> str:
        lines = [f"{self.stats} holds init {str(t)[:16]} already: skipped" for t in self.skipped]
        if self.scored:
            rate = self.member_steps / self.seconds if self.seconds else math.nan
            inits = ", ".join(str(t)[:16] for t in self.scored)
            kept = f"; kept in {self.kept}" if self.kept is not None else ""
            lines.append(
                f"scored {inits} into {self.stats}: {self.pairs} (init, lead) pairs,"
                f" {self.member_steps} member-steps in {self.seconds:.1f} s"
                f" ({rate:.1f} member-steps/s){kept}"
            )
        return "\n".join(lines) or f"{self.stats}: nothing to score"


def parse_keep(keep: str | int) -> int | str | None:
    """`none` -> None, `mean` -> "mean", `N` -> N members (N >= 1); else a ForecastError."""
    text = str(keep).strip().lower()
    if text == "none":
        return None
    if text == MEAN:
        return MEAN
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ForecastError(f"keep {keep!r}: expected none, mean or a number of members >= 1")


def skeleton(run: EnsembleRun, init_times: np.ndarray, lead_times: np.ndarray, members: int):
    """The ensemble as a lazy Dataset of zeros (never computed): its coordinates and the
    fingerprint an archive of it would have, for the statistics store's choices."""
    shape = (len(init_times), len(lead_times), members, run.grid.nlat, run.grid.nlon)
    chunks = (1, 1, members, run.grid.nlat, run.grid.nlon)
    attrs = field_attrs(run.dataset[list(run.variables)])
    identity = run.identity(np.array([], dtype="datetime64[ns]"), lead_times, members)
    return xr.Dataset(
        {
            name: (
                FIELD_DIMS,
                dask.array.zeros(shape, chunks=chunks, dtype=np.float32),
                attrs[name],
            )
            for name in sorted(run.variables)  # as a store on disk lists them
        },
        coords={
            INIT: init_times,
            LEAD: lead_times,
            MEMBER: np.arange(members),
            "latitude": run.grid.latitude,
            "longitude": run.grid.longitude,
            "valid_time": ((INIT, LEAD), init_times[:, None] + lead_times[None, :]),
        },
        attrs={FINGERPRINT: identity},
    )


def lockstep(
    run: EnsembleRun, init_time: np.datetime64, members: int, lead_steps: int, workers: int
) -> Iterator[np.ndarray]:
    """All members' states `(member, channel, lat, lon)` at leads 0, 1, ..., `lead_steps`:
    `workers` threads each step a slice of whole micro-batches by one lead at a time."""
    forecaster = resolved(run.source)
    unit = run.micro_batch
    per_worker = math.ceil(math.ceil(members / workers) / unit) * unit
    slices = [range(s, min(s + per_worker, members)) for s in range(0, members, per_worker)]
    with ThreadPoolExecutor(len(slices)) as pool, single_threaded(run.device):
        # Generators that run on pool threads: each thread steps with one torch thread.
        trajectories = [forecaster.trajectories(init_time, ids, lead_steps) for ids in slices]
        for _ in range(lead_steps + 1):
            states = list(pool.map(_next_state, trajectories))
            yield np.concatenate(states)


def _next_state(trajectory: Iterator[torch.Tensor]) -> np.ndarray:
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return next(trajectory).cpu().numpy()


def lead_blocks(lead_steps: int, member_bytes: int, members: int) -> list[range]:
    """Consecutive leads 0..`lead_steps` in blocks of about `BLOCK_BYTES` of all members."""
    per_block = max(1, BLOCK_BYTES // max(1, member_bytes * members))
    return [
        range(s, min(s + per_block, lead_steps + 1)) for s in range(0, lead_steps + 1, per_block)
    ]


class KeptArchive:
    """Where an online run keeps the first N members or the ensemble mean of each init."""

    def __init__(self, run: EnsembleRun, path: Path, keep: int | str, members: int, lead_times):
        self.run, self.keep, self.lead_times = run, keep, lead_times
        self.archive, self.lock = Archive(path), StoreLock(path)
        self.count = 1 if keep == MEAN else min(int(keep), members)
        identity = run.identity(np.array([], dtype="datetime64[ns]"), lead_times, self.count)
        self.identity = sha256_json({"ensemble_mean": identity}) if keep == MEAN else identity

    def open(self) -> None:
        self.lock.check()
        self.archive.check(self.identity)
        self.lock.acquire()

    def close(self) -> None:
        self.lock.release()

    def holds(self, init_time: np.datetime64) -> bool:
        return init_time in set(self.archive.complete_inits())

    def interrupted(self) -> np.datetime64 | None:
        pending = self.archive.interrupted()
        return None if pending is None else pending.init_time

    def select(self, states: np.ndarray) -> np.ndarray:
        """What is kept of `(lead, member, channel, lat, lon)` states."""
        if self.keep == MEAN:
            return states.mean(axis=1, dtype=np.float64, keepdims=True).astype(np.float32)
        return states[:, : self.count]

    def write(self, init_time: np.datetime64, kept: np.ndarray) -> None:
        """Append `kept` `(lead, member, channel, lat, lon)` as init `init_time` (finishing
        the pending init of an interrupted run, which is this one)."""
        run = self.run
        layout = StoreLayout(
            np.array([init_time], dtype="datetime64[ns]"),
            self.lead_times,
            self.count,
            self.count,
            run.variables,
            run.grid,
        )

        def create(path: Path, first: np.ndarray) -> None:
            attrs = {**run.attrs(self.identity), "wxens_batch_size": self.count}
            attrs |= {ARCHIVE_FLAG: True, "wxens_kept": str(self.keep)}
            fields = field_attrs(run.dataset[list(run.variables)])
            if self.keep == MEAN:
                checkpoint, names, kinds = np.zeros(1, int), ["ensemble-mean"], [MEAN]
            else:
                checkpoint, names, kinds = (
                    run.checkpoint_of(range(self.count)),
                    run.names,
                    run.kinds,
                )
            first_layout = dataclasses.replace(layout, init_times=first)
            create_store(path, first_layout, fields, checkpoint, names, kinds, attrs)

        pending = self.archive.interrupted()
        if pending is None or pending.init_time != init_time:
            pending = self.archive.begin(init_time, create)
        self._finish(pending, kept)

    def _finish(self, pending: Pending, kept: np.ndarray) -> None:
        self.archive.grow(pending, self.lead_times)
        store = EnsembleStore(pending.path)
        store.write(pending.index, 0, 0, kept)
        store.mark_done(pending.index, 0)
        self.archive.commit(pending)


def score_online(
    run: EnsembleRun,
    init_times: np.ndarray,
    members: int,
    lead_steps: int,
    options: RunOptions,
    truth: xr.Dataset | str | Path,
    stats: str | Path,
    *,
    keep: int | str | None = None,
    references: Mapping[str, object] | None = None,
    scores: Sequence[str] | None = None,
    regions: Sequence[str] | None = None,
    verify_options=None,
) -> OnlineSummary:
    """Run the ensemble of `run` from each of `init_times` and add its statistics against
    `truth` to the statistics store `stats` (with those of the `references`), storing no
    member; `keep` N members or the `mean` in the archive `options.out` (None: keep nothing).

    Raises ForecastError or ScoreError with one line: a truth that lacks a valid time (online
    scoring scores every lead at once), a store of another ensemble or other choices."""
    from wxens.verification.stats_store import StatisticsWriter
    from wxens.verification.verify import prepare_inputs

    init_times, lead_times = checked_run(run, init_times, members, lead_steps, options)
    init_times = np.unique(init_times)
    keep = parse_keep(keep) if keep is not None else None
    inputs = prepare_inputs(
        skeleton(run, init_times, lead_times, members),
        truth,
        references,
        scores,
        regions,
        None,
        verify_options,
    )
    _check_truth_covers(inputs.truth["time"].values, init_times, lead_times)
    kept = KeptArchive(run, options.out, keep, members, lead_times) if keep is not None else None
    workers = options_workers(options, run.device)
    started, scored, skipped, member_steps = time.perf_counter(), [], [], 0
    with StatisticsWriter(stats, inputs) as writer:
        for name, ds in list(inputs.stores.items())[1:]:
            writer.add(name, ds)  # the references: built from the truth, cheap
        like = inputs.stores["forecast"]
        if kept is not None:
            kept.open()
        try:
            interrupted = kept.interrupted() if kept is not None else None
            order = sorted(init_times, key=lambda t: t != interrupted)  # a pending one first
            for init_time in order:
                one = like.sel({INIT: [init_time]})
                if not writer.pending("forecast", one).any() and (
                    kept is None or kept.holds(init_time)
                ):
                    skipped.append(init_time)
                    continue
                fields = _score_init(run, writer, one, lead_times, members, workers, kept)
                if kept is not None:
                    kept.write(init_time, fields)
                scored.append(init_time)
                member_steps += members * lead_steps
        finally:
            if kept is not None:
                kept.close()
    seconds = time.perf_counter() - started
    pairs = writer.pairs["forecast"]
    return OnlineSummary(
        Path(stats), scored, skipped, pairs, member_steps, seconds, options.out if kept else None
    )


def options_workers(options: RunOptions, device: torch.device) -> int:
    """Threads that step an init's members: `threads` (the CPU count on a CPU, 1 on a GPU)
    or `threads:N`; the dask schedulers are refused (members are joined in this process)."""
    if options.scheduler.partition(":")[0] != "threads":
        raise ForecastError(
            f"scheduler {options.scheduler!r}: online scoring runs on threads or threads:N"
        )
    return thread_count(options.scheduler, device)


def _check_truth_covers(times: np.ndarray, init_times: np.ndarray, lead_times: np.ndarray):
    """Refuse inits whose leads reach past the truth or miss one of its times: online scoring
    scores every lead as it is made (score the rest later from an archive instead)."""
    valid = init_times[:, None] + lead_times[None, :]
    missing = ~np.isin(valid, times)
    if missing.any():
        init, lead = np.argwhere(missing)[0]
        raise ForecastError(
            f"the truth has no analysis at {str(valid[init, lead])[:16]} (init"
            f" {str(init_times[init])[:16]}); online scoring needs every valid time"
        )


def _score_init(
    run: EnsembleRun,
    writer,
    like: xr.Dataset,
    lead_times: np.ndarray,
    members: int,
    workers: int,
    kept: KeptArchive | None,
) -> np.ndarray | None:
    """Step one init's members (`like`: its skeleton) and add the statistics of each block
    of leads; return what `kept` keeps of them, `(lead, member, channel, lat, lon)`."""
    lead_steps = len(lead_times) - 1
    member_bytes = 4 * len(run.variables) * run.grid.nlat * run.grid.nlon
    states = lockstep(run, like[INIT].values[0], members, lead_steps, workers)
    kept_blocks = []
    for block in lead_blocks(lead_steps, member_bytes, members):
        fields = np.stack([next(states) for _ in block])  # (lead, member, channel, lat, lon)
        part = like.isel({LEAD: list(block)})
        data = {
            name: (FIELD_DIMS, fields[None, :, :, c], like[name].attrs)
            for c, name in enumerate(run.variables)
        }
        writer.add("forecast", xr.Dataset(data, part.coords, part.attrs), lead_times)
        if kept is not None:
            kept_blocks.append(kept.select(fields))
    return np.concatenate(kept_blocks) if kept is not None else None
