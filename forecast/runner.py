"""The ensemble runner behind `wxens forecast` and `wxens hindcast`.

A run is a set of tasks, one per (init time, batch of consecutive members), each of which
perturbs the analysis, steps its members `lead_steps` times and writes them into its own region
of the forecast store (`forecast.ensemble_store`) while the next step computes. Tasks run on an
executor: a thread pool (`threads`, `threads:N`), a dask `LocalCluster` (`local-cluster:N`) or
any dask scheduler address, for example one that dask-jobqueue started on SLURM or PBS.

Reproducibility: member k of init t draws its noise only from generators seeded by
(seed, t, k) (`member_generator`), and on the CPU every forward pass has the same shape
(`FixedBatchEmulator`, one torch thread per task), so a member's numbers are bitwise the same
whatever batch, task, worker or order computes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr
from wxens.data_pipeline.analysis_store import (
    COMPLETE_FLAG,
    StoreError,
    StoreLock,
    finalise_store,
    open_analyses,
)
from wxens.data_pipeline.config import ExperimentConfig, PerturbationConfig, parse_config
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.data_pipeline.progress import progress_bar
from wxens.data_pipeline.provenance import default_device, provenance
from wxens.data_pipeline.sphere import LatLonGrid
from wxens.data_pipeline.training_data import (
    NormalisationStats,
    analysis_states,
    area_weights,
    check_variables,
    compute_normalisation,
    year_window,
)
from wxens.data_pipeline.truth import model_grid
from wxens.forecast.archive import ARCHIVE_FLAG, Archive, Pending
from wxens.forecast.ensemble_store import (
    FINGERPRINT,
    EnsembleStore,
    StoreLayout,
    create_store,
)
from wxens.forecast.perturbations import (
    CHECKPOINT_GROUP,
    ParameterPerturbation,
    Perturbation,
    assign_checkpoints,
    initial_condition_perturbation,
    member_generator,
)
from wxens.forecast.seeds import SeedStates
from wxens.forecast.skill import area_rmse
from wxens.models.checkpoint import (
    CheckpointError,
    checkpoint_labels,
    find_checkpoints,
    load_checkpoint,
    read_metadata,
)
from wxens.models.emulator import Emulator, FixedBatchEmulator, rollout
from wxens.models.kinds import KINDS


class ForecastError(ValueError):
    """An ensemble that cannot be run as asked; the message is one line naming the culprit."""


@dataclass(frozen=True)
class EnsembleSpec:
    """Everything a worker needs to rebuild the members (hashable and picklable)."""

    config_json: str
    model: str  # a kind of `KINDS`: "sfno" (any checkpoints) or one built from the config
    checkpoints: tuple[str, ...]
    analyses: str
    device: str
    stats_json: str
    bred_rmse_48h_json: str  # per model, {variable: RMSE}, or null where it does not breed
    model_names: tuple[str, ...] = ()  # per model: its checkpoint's name (`load_models`)
    model_kinds: tuple[str, ...] = ()  # per model: its kind

    @property
    def config(self) -> ExperimentConfig:
        return parse_config(json.loads(self.config_json))


def load_models(
    model: str, checkpoints: Sequence[str], config: ExperimentConfig, device: torch.device
) -> list[Emulator]:
    """The members' models: `model` names a kind of the registry (`models.kinds.KINDS`). One
    built from the config (the NWP baseline, `nwp`) is built; one of checkpoints (`sfno`)
    loads the `checkpoints`, each checked against `config`, its kind against
    `ensemble.kinds`, whose forecast-time settings its kind then applies to it, and makes its
    kind's member models of it (`EmulatorKind.member_models`: itself, or one per mean network
    of a residual diffusion checkpoint)."""
    built = KINDS[model]
    if not built.from_checkpoints:
        return [built.build(config, None, device)]
    kinds = config.ensemble.kinds
    models: list[Emulator] = []
    for path in checkpoints:
        emulator = load_checkpoint(path, config, device)
        emulator.name = Path(path).name
        if emulator.kind not in kinds:
            raise CheckpointError(
                f"{path}: a checkpoint of kind {emulator.kind}, but ensemble.kinds is {list(kinds)}"
            )
        kind, members = KINDS[emulator.kind], kinds[emulator.kind]
        kind.use_member_settings(emulator, members)
        models += kind.member_models(
            emulator, members, lambda other: load_checkpoint(other, config, device)
        )
    missing = [kind for kind in kinds if kind not in {e.kind for e in models}]
    if missing:
        raise CheckpointError(f"ensemble.kinds has {missing[0]}, but no checkpoint of that kind")
    return models


def member_checkpoints(
    members: range, kinds: Sequence[str], config: ExperimentConfig
) -> np.ndarray:
    """Each member's checkpoint index: `assign_checkpoints` with the checkpoints' `kinds`
    and the shares of `ensemble.kinds` (a model built from the config, such as the NWP
    baseline, has no share there: the members go to the models in turn)."""
    group = checkpoint_group_size(config)
    order = list(config.ensemble.kinds)
    if not set(kinds) <= set(order):
        return assign_checkpoints(members, len(kinds), group)
    shares = [config.ensemble.kinds[kind].share for kind in order]
    return assign_checkpoints(members, [order.index(k) for k in kinds], group, shares)


def perturbation_settings(config: ExperimentConfig, kind: str) -> PerturbationConfig:
    """`perturbation`, its `initial` the one of `kind`'s members (`MemberKind.initial`) and
    its `bred_fraction` the kind's own where its config section sets one (`nwp:`)."""
    update: dict[str, object] = {"initial": config.initial_perturbation(kind)}
    own = kind_setting(config, kind, "bred_fraction")
    if own is not None:
        update["bred_fraction"] = own
    return config.perturbation.model_copy(update=update)


def kind_setting(config: ExperimentConfig, kind: str, name: str) -> object | None:
    """The setting `name` of `kind`'s own config section (such as `nwp.bred_fraction`), or
    None where the section lacks it or leaves it unset."""
    section = getattr(config, kind, None) if KINDS[kind].settings is not None else None
    return getattr(section, name, None)


def measured_rmse_48h(
    emulator: Emulator, dataset: xr.Dataset, config: ExperimentConfig, device: torch.device
) -> dict[str, float]:
    """The emulator's area-weighted RMSE at 48 h, per variable (in its units), from
    `perturbation.calibration_inits` inits spread over the validation years."""
    times = dataset["time"].values
    years = config.periods.validation
    window = year_window(times, (years.first, years.last))
    steps = round(np.timedelta64(48, "h") / emulator.timestep)
    last = window.stop - 1 - steps
    if last < window.start:
        raise ValueError(f"validation years {years.first}-{years.last} are shorter than 48 h")
    inits = config.perturbation.calibration_inits
    starts = np.unique(np.linspace(window.start, last, inits).round().astype(int))
    start = analysis_states(dataset, emulator.input_variables, starts)
    truth = analysis_states(dataset, emulator.input_variables, starts + steps)
    *_, forecast = rollout(emulator, start.to(device), steps)
    weights = torch.from_numpy(
        area_weights(dataset["latitude"].values, dataset["longitude"].values)
    )
    rmse = area_rmse(forecast.cpu(), truth, weights)
    return {name: float(v) for name, v in zip(emulator.input_variables, rmse, strict=True)}


def perturbation_stats(
    checkpoints: list[Path], config: ExperimentConfig, dataset: xr.Dataset
) -> NormalisationStats:
    """The statistics that scale the random fields: the first checkpoint's (also for the NWP
    baseline, so that both ensembles get the same fields), or without checkpoints the
    training years' of the analyses."""
    if checkpoints:
        metadata = read_metadata(checkpoints[0])
        return NormalisationStats.from_dict(metadata["architecture"]["normalisation"])
    years = config.periods.train
    return compute_normalisation(dataset, config.variables, (years.first, years.last))


def prepare(
    config: ExperimentConfig,
    model: str,
    checkpoints: list[Path],
    analyses: Path,
    device: torch.device,
) -> EnsembleSpec:
    """Load and check the models, and measure what the members need (the bred-vector target).

    Raises ValueError, StoreError or CheckpointError with one line."""
    if model not in KINDS:
        raise ForecastError(f"model {model!r}: expected one of {', '.join(KINDS)}")
    from_checkpoints = KINDS[model].from_checkpoints
    # A model built from the config still takes the checkpoints' statistics for its random
    # fields (`perturbation_stats`), so that both ensembles start from the same perturbations.
    found = find_checkpoints(checkpoints) if checkpoints else []
    if from_checkpoints and not found:
        raise ForecastError("no checkpoints: name them or set ensemble.checkpoints in the config")
    paths = [str(p) for p in found] if from_checkpoints else []
    dataset = open_analyses(analyses)
    check_analyses(dataset, config.variables, model_grid(config))
    with single_threaded(device):
        models = load_models(model, paths, config, device)
        stats = perturbation_stats(found, config, dataset)
        rmse = [
            fixed_bred_rmse_48h(config, m.kind)
            or measured_rmse_48h(
                FixedBatchEmulator(m, micro_batch(config, model)), dataset, config, device
            )
            if config.initial_perturbation(m.kind) == "bred_vector"
            else None
            for m in models
        ]
    return EnsembleSpec(
        config.model_dump_json(),
        model,
        tuple(paths),
        str(analyses),
        str(device),
        json.dumps(stats.to_dict()),
        json.dumps(rmse),
        tuple(m.name for m in models) if from_checkpoints else (),
        tuple(m.kind for m in models) if from_checkpoints else (),
    )


def fixed_bred_rmse_48h(config: ExperimentConfig, kind: str) -> dict[str, float] | None:
    """The 48 h RMSE per variable that sizes `kind`'s bred vectors, when the config fixes
    it: the kind's own (a `bred_rmse_48h` in its config section, such as `nwp:`'s: the NWP
    baseline bred to its own error), else `perturbation.bred_rmse_48h`; None: measured."""
    return kind_setting(config, kind, "bred_rmse_48h") or config.perturbation.bred_rmse_48h


def micro_batch(config: ExperimentConfig, model: str) -> int:
    """Members per CPU forward pass of `model`'s kind (`ensemble.micro_batch`, or
    `nwp.micro_batch` for the NWP baseline)."""
    return KINDS[model].micro_batch(config)


@contextlib.contextmanager
def single_threaded(device: torch.device | str) -> Iterator[None]:
    """One torch thread on the CPU (tasks run side by side instead; see the module)."""
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class MemberForecaster:
    """The members of one ensemble: emulators, their initial perturbations and the analyses.

    `models[c]` steps the members that `checkpoint_of(members)` puts on index c, from the
    states `perturbations[c]` makes of the analysis; `weight_noise` (a `ParameterPerturbation`)
    gives each member its own perturbed copy of its model; `seeds` makes the members start
    from the states of seed members of another store (`ensemble.seeds`).
    """

    def __init__(
        self,
        models: Sequence[Emulator],
        perturbations: Sequence[Perturbation],
        dataset: xr.Dataset,
        *,
        seed: int,
        checkpoint_of: Callable[[range], np.ndarray],
        micro_batch: int,
        device: torch.device | str = "cpu",
        weight_noise: ParameterPerturbation | None = None,
        seeds: SeedStates | None = None,
        reopen: Callable[[], xr.Dataset] | None = None,
    ):
        self.models = list(models)
        self.emulators = [FixedBatchEmulator(m, micro_batch) for m in self.models]
        self.perturbations = list(perturbations)
        self.variables = tuple(self.models[0].input_variables)
        self.dataset = dataset
        self.seed = seed
        self.checkpoint_of = checkpoint_of
        self.device = torch.device(device)
        self.weight_noise = weight_noise
        self.seeds = seeds
        self.reopen = reopen
        """Opens the analyses again, when an init time is newer than those they held (a
        process that keeps its members between runs, on a truth that grows night by night)."""

    @classmethod
    def from_spec(cls, spec: EnsembleSpec) -> MemberForecaster:
        """The members a config describes (`wxens forecast`, `wxens hindcast`)."""
        config = spec.config
        device = torch.device(spec.device)
        models = load_models(spec.model, spec.checkpoints, config, device)
        micro = micro_batch(config, spec.model)
        stats = NormalisationStats.from_dict(json.loads(spec.stats_json))
        rmse = json.loads(spec.bred_rmse_48h_json)
        perturbations = [
            initial_condition_perturbation(
                perturbation_settings(config, m.kind),
                FixedBatchEmulator(m, micro),
                config.grid.truncation,
                stats,
                r,
            )
            for m, r in zip(models, rmse, strict=True)
        ]
        kinds = [m.kind for m in models]
        weight_noise = KINDS[spec.model].from_checkpoints  # a network's weights to perturb
        sigma = config.perturbation.parameter_sigma if weight_noise else 0.0
        return cls(
            models,
            perturbations,
            open_analyses(spec.analyses),
            seed=config.ensemble.seed,
            checkpoint_of=functools.partial(member_checkpoints, kinds=kinds, config=config),
            micro_batch=micro,
            device=device,
            weight_noise=ParameterPerturbation(sigma) if sigma > 0 else None,
            seeds=seed_states(spec),
            reopen=functools.partial(open_analyses, spec.analyses),
        )

    def analysis(self, init_time: np.datetime64) -> torch.Tensor:
        """The analysis at `init_time`, `(channel, lat, lon)` float32 on the device."""
        if init_time not in self.dataset.get_index("time") and self.reopen is not None:
            self.dataset = self.reopen()
        index = self.dataset.get_index("time").get_loc(init_time)
        return analysis_states(self.dataset, self.variables, index)[0].to(self.device)

    def steppers(
        self, c: int, members: list[int], init_time: np.datetime64
    ) -> list[tuple[list[int], Emulator]]:
        """(positions in `members`, emulator) pairs that step checkpoint c's members: all
        together, or one by one with its own noisy weights."""
        if self.weight_noise is None:
            return [(list(range(len(members))), self.emulators[c])]
        noisy = []
        for i, k in enumerate(members):
            generator = member_generator(self.seed, init_time, k, stream="weights")
            noisy.append(([i], self.weight_noise(self.models[c], generator)))
        return noisy

    @torch.no_grad()
    def trajectories(
        self, init_time: np.datetime64, members: range, lead_steps: int
    ) -> Iterator[torch.Tensor]:
        """The members' states `(member, channel, lat, lon)` at leads 0, 1, ..., `lead_steps`:
        the perturbed analysis, or their seeds' states up to the seeds' lead (`ensemble.seeds`),
        then their own steps."""
        analysis = self.analysis(init_time)
        checkpoint = self.checkpoint_of(members)
        state = analysis.expand(len(members), *analysis.shape).clone()
        # A stochastic member's own noise stream (the deterministic ones ignore it).
        noise = [member_generator(self.seed, init_time, k, stream="model") for k in members]

        def generator_for(k: int) -> torch.Generator:
            return member_generator(self.seed, init_time, k)

        groups = []
        channels = len(self.variables)
        for c in np.unique(checkpoint):
            positions = torch.from_numpy(np.flatnonzero(checkpoint == c))
            ids = [members[p] for p in positions]
            state[positions] = self.perturbations[c](analysis, ids, generator_for)
            width = channels + getattr(self.models[c], "hidden_channels", 0)
            for rows, emulator in self.steppers(c, ids, init_time):
                generators = [noise[p] for p in positions[rows].tolist()]
                groups.append((positions[rows], width, emulator, generators))
        start = [state]  # lead 0, or with seeds their states up to their lead
        if self.seeds is not None:
            start = list(self.seeds.states(init_time, members).to(self.device))
        yield from start
        state = self.with_hidden_channels(start[-1])
        for _ in range(lead_steps + 1 - len(start)):
            state = state.clone()
            for positions, width, emulator, generators in groups:
                stepped = emulator.step(state[positions, :width], generator=generators)
                state[positions, :width] = stepped
            yield state[:, :channels]

    def with_hidden_channels(self, state: torch.Tensor) -> torch.Tensor:
        """`state` with the zero channels its models keep their own state in between steps
        (an emulator's optional `hidden_channels`, such as the truth model's full-resolution
        state or a perturbed-tendency SFNO's pattern; as many as the model with most needs,
        each model stepping its own; the runner writes only the fields)."""
        count = max(getattr(model, "hidden_channels", 0) for model in self.models)
        if not count:
            return state
        return torch.cat([state, state.new_zeros((state.shape[0], count, *state.shape[2:]))], 1)


def seed_states(spec: EnsembleSpec) -> SeedStates | None:
    """The run's `ensemble.seeds`, opened and checked (None without)."""
    config = spec.config
    if config.ensemble.seeds is None:
        return None
    timestep = forecaster_timestep(spec)
    return SeedStates(config.ensemble.seeds, tuple(config.variables), model_grid(config), timestep)


@functools.lru_cache(maxsize=2)
def forecaster_for(spec: EnsembleSpec) -> MemberForecaster:
    """One `MemberForecaster` per spec and process (a dask worker builds it once)."""
    return MemberForecaster.from_spec(spec)


def resolved(source: EnsembleSpec | MemberForecaster) -> MemberForecaster:
    """The members of a run: given as objects, or rebuilt (once per process) from a spec."""
    return source if isinstance(source, MemberForecaster) else forecaster_for(source)


def run_task(
    source: EnsembleSpec | MemberForecaster,
    layout: StoreLayout,
    store_path: Path,
    task: tuple[int, int],
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Compute and write one (init, member batch); flag it done; return its member-steps.

    Writes go to a thread of their own, so the next step computes while a lead is written.
    """
    init, batch = task
    members = layout.member_range(batch)
    steps = len(layout.lead_times) - 1
    store = EnsembleStore(store_path)
    keep_freed_memory()  # as `wxens` does for itself: dask's worker processes start without it
    forecaster = resolved(source)
    if forecaster.device.type == "cpu":
        torch.set_num_threads(1)
    with ThreadPoolExecutor(1) as writer:
        pending: list[Future] = []
        buffer: list[np.ndarray] = []
        init_time = layout.init_times[init]
        for lead, state in enumerate(forecaster.trajectories(init_time, members, steps)):
            buffer.append(state.cpu().numpy())
            if len(buffer) == layout.leads_per_write or lead == steps:
                block = np.stack(buffer)
                start = lead + 1 - len(buffer)
                pending.append(writer.submit(store.write, init, start, members.start, block))
                buffer = []
                if len(pending) > 2:  # bound the memory held by queued writes
                    pending.pop(0).result()
            if lead and on_step is not None:
                on_step(len(members))
        for future in pending:
            future.result()
    store.mark_done(init, batch)
    return len(members) * steps


def thread_count(scheduler: str, device: torch.device) -> int:
    """The threads of a `threads` or `threads:N` scheduler: N, by default the CPU count on a
    CPU and 1 on a GPU; ForecastError for another N than a positive integer."""
    _, _, count = scheduler.partition(":")
    if count and not (count.isdigit() and int(count) > 0):
        raise ForecastError(f"scheduler {scheduler!r}: expected threads:N with N >= 1")
    return int(count) if count else ((os.cpu_count() or 1) if device.type == "cpu" else 1)


@contextlib.contextmanager
def task_executor(scheduler: str, device: torch.device) -> Iterator[tuple[Executor, int]]:
    """The executor named by `--scheduler`, and how many tasks it runs at once:

    - `threads` or `threads:N`: a thread pool in this process (N defaults to the CPU count on
      a CPU, 1 on a GPU; each task uses one torch thread on a CPU);
    - `local-cluster:N`: a dask `LocalCluster` of N single-threaded worker processes;
    - anything with `://`: the dask scheduler at that address, for example
      `dask_jobqueue.SLURMCluster(...).scheduler_address` after `cluster.scale(jobs=J)`.
    """
    keep_freed_memory()  # before the pool's threads or the cluster's processes start
    name, _, count = scheduler.partition(":")
    if name == "threads":
        workers = thread_count(scheduler, device)
        with ThreadPoolExecutor(workers) as pool:
            yield pool, workers
        return
    from distributed import Client, LocalCluster

    if name == "local-cluster":
        if not (count.isdigit() and int(count) > 0):
            raise ValueError(f"scheduler {scheduler!r}: expected local-cluster:N with N >= 1")
        with (
            LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True) as cluster,
            Client(cluster) as client,
        ):
            yield client.get_executor(pure=False), int(count)
        return
    if "://" not in scheduler:
        raise ValueError(
            f"scheduler {scheduler!r}: expected threads, local-cluster:N or a scheduler address"
        )
    with Client(scheduler) as client:
        yield client.get_executor(pure=False), max(1, sum(client.nthreads().values()))


def automatic_batch_size(
    run: EnsembleRun, members: int, inits: int, leads: int, workers: int
) -> int:
    """Members per task: on a GPU the most that fit 80 % of its free memory (measured with a
    trial step of `micro_batch`); on a CPU the most that fit half the free host memory, but
    no more than the whole ensemble when the inits share evenly among the workers (fewest
    padded micro-batches), else an even share of it per worker, in whole micro-batches of
    every checkpoint."""
    member_bytes = 4 * len(run.variables) * run.grid.nlat * run.grid.nlon
    if run.device.type == "cuda":
        forecaster = resolved(run.source)
        state = forecaster.analysis(np.datetime64(forecaster.dataset["time"].values[0]))
        torch.cuda.reset_peak_memory_stats(run.device)
        before = torch.cuda.memory_allocated(run.device)
        micro = run.micro_batch
        forecaster.models[0].step(state.expand(micro, *state.shape).contiguous())
        per_member = (torch.cuda.max_memory_allocated(run.device) - before) / micro
        free, _ = torch.cuda.mem_get_info(run.device)
        fits = int(0.8 * free / (per_member + member_bytes * 4))
        return max(1, min(members, fits))
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    fits = int(0.5 * available / workers / (member_bytes * (leads + 4)))
    unit = run.micro_batch * max(1, len(run.names))
    per_task = members if inits % workers == 0 else math.ceil(members / workers)
    share = math.ceil(per_task / unit) * unit
    return max(1, min(members, share, fits))


def fingerprint(
    spec: EnsembleSpec,
    init_times: np.ndarray,
    lead_times: np.ndarray,
    members: int,
    seeds: SeedStates | None = None,
) -> str:
    """sha256 of everything that sets the numbers (not the batch size: members do not depend
    on it; the seed store's own fingerprint), so a resumed run can check it continues the same
    ensemble.

    The config counts by the settings that differ from their defaults: a setting added in a
    later version, whose default keeps the earlier numbers, leaves the fingerprints of existing
    stores and archives as they were (while changing a default's value is a change of the code,
    which no fingerprint covers)."""
    weights = [read_metadata(path)["weights_sha256"] for path in checkpoint_files(spec)]
    ignored = ("checkpoints", "device", "config_json", "model_names", "model_kinds")
    identity = {
        **{k: v for k, v in asdict(spec).items() if k not in ignored},
        "config": spec.config.model_dump(mode="json", exclude_defaults=True),
        "weights": weights,
        **run_identity(init_times, lead_times, members),
        **({"seeds": seeds.fingerprint} if seeds is not None else {}),
    }
    return sha256_json(identity)


def checkpoint_files(spec: EnsembleSpec) -> list[Path]:
    """The checkpoints whose weights set the members: the spec's, then the mean networks of
    `ensemble.kinds.<kind>.mean_checkpoints`."""
    kinds = spec.config.ensemble.kinds.values()
    means = [path for kind in kinds for path in kind.mean_checkpoints]
    return [Path(p) for p in spec.checkpoints] + (find_checkpoints(means) if means else [])


def run_identity(init_times: np.ndarray, lead_times: np.ndarray, members: int) -> dict:
    """The inits, leads (in seconds) and member count, as a run's fingerprint records them."""
    return {
        "init_times": [str(t) for t in init_times],
        "lead_times": [int(t / np.timedelta64(1, "s")) for t in lead_times],
        "members": members,
    }


def sha256_json(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


@dataclass
class RunOptions:
    """How a run writes: its store, tasks, executor, and what to do with an existing store."""

    out: Path
    batch_size: int | None = None
    scheduler: str = "threads"
    overwrite: bool = False
    resume: bool = False
    dry_run: bool = False
    quiet: bool = False
    command: str = "forecast"
    archive: bool = False
    """`out` is an archive that grows by the run's inits (`append_ensemble`)."""


@dataclass
class EnsembleRun:
    """One ensemble to write, whichever way its members were given: a spec that every worker
    rebuilds them from (`wxens forecast`), or the `MemberForecaster` itself (the Python API)."""

    source: EnsembleSpec | MemberForecaster
    dataset: xr.Dataset
    variables: tuple[str, ...]
    grid: LatLonGrid
    timestep: np.timedelta64
    device: torch.device
    micro_batch: int
    names: list[str]
    """Each model's name (the `checkpoint` coordinate) and kind (`kind`)."""
    kinds: list[str]
    checkpoint_of: Callable[[range], np.ndarray]
    identity: Callable[[np.ndarray, np.ndarray, int], str]
    """`(init_times, lead_times, members) -> sha256` of everything that sets the numbers."""
    attrs: Callable[[str], dict[str, object]]
    """`identity -> ` provenance attributes of the store."""


@dataclass(frozen=True)
class RunSummary:
    """What a run did: its store, the tasks it computed and how fast."""

    out: Path
    plan: str
    member_steps: int = 0
    seconds: float = 0.0
    done_before: bool = False
    dry_run: bool = False

    @property
    def member_steps_per_second(self) -> float:
        return self.member_steps / self.seconds if self.seconds else math.nan

    def __str__(self) -> str:
        if self.done_before:
            return f"{self.out} is complete: nothing to do"
        if self.dry_run:
            return "dry run: would compute " + self.plan
        return (
            f"wrote {self.out}: {self.plan} in {self.seconds:.1f} s"
            f" ({self.member_steps_per_second:.1f} member-steps/s)"
        )


@dataclass(frozen=True)
class ArchiveSummary:
    """What an append to an archive did: the inits it wrote (an interrupted one first) and
    those it found there already, and how fast."""

    out: Path
    written: list[np.datetime64]
    skipped: list[np.datetime64]
    member_steps: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def __str__(self) -> str:
        lines = [f"{self.out} holds init {t} already: skipped" for t in self.skipped]
        inits = ", ".join(str(t)[:16] for t in self.written)
        if self.dry_run and self.written:
            lines.append(f"dry run: would append {inits} to {self.out}")
        elif self.written:
            rate = self.member_steps / self.seconds if self.seconds else math.nan
            lines.append(
                f"appended {inits} to {self.out} in {self.seconds:.1f} s"
                f" ({rate:.1f} member-steps/s)"
            )
        return "\n".join(lines) or f"{self.out}: nothing to append"


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def existing_store(out: Path, options: RunOptions, identity: str) -> tuple[str, dict | None]:
    """What is at `out`: ("new", None), ("complete", attrs) or ("partial", attrs); raise
    StoreError when the options do not allow going on."""
    for state, path in (("complete", out), ("partial", partial_path(out))):
        if not path.exists() or options.overwrite:
            continue
        if not options.resume:
            raise StoreError(f"{path} already exists; resume it or overwrite it")
        store = EnsembleStore(path)
        if state == "partial" and not store.created:
            return "new", None  # killed while creating it: no task was done, start afresh
        attrs = store.attrs
        if attrs.get(FINGERPRINT) != identity:
            raise StoreError(
                f"{path} holds a different ensemble (other config, checkpoints, inits, members"
                " or leads); overwrite it to replace it"
            )
        if state == "complete" and attrs.get(COMPLETE_FLAG) is not True:
            raise StoreError(f"{path}: store is incomplete but not at {partial_path(out).name}")
        return state, attrs
    return "new", None


def check_analyses(
    dataset: xr.Dataset,
    variables: Sequence[str],
    grid: LatLonGrid,
    init_times: np.ndarray | None = None,
) -> None:
    """Refuse, with one line, analyses the members cannot start from: a missing variable,
    another grid than the members', or (given `init_times`) a missing init time or a NaN at
    one."""
    try:
        check_variables(dataset, variables)
    except ValueError as exc:
        raise ForecastError(str(exc)) from None
    for dim, ours in (("latitude", grid.latitude), ("longitude", grid.longitude)):
        theirs = dataset[dim].values if dim in dataset.coords else np.array([])
        if theirs.shape != ours.shape or not np.allclose(theirs, ours, atol=1e-6):
            raise ForecastError(
                f"the analyses are on a {dataset.sizes.get('latitude', 0)} x"
                f" {dataset.sizes.get('longitude', 0)} grid, the members on"
                f" {grid.nlat} x {grid.nlon} (latitude descending, longitude from 0)"
            )
    if init_times is None:
        return
    times = dataset.get_index("time")
    missing = [t for t in init_times if t not in times]
    if missing:
        span = f"{times[0]} to {times[-1]}"
        raise ForecastError(f"init time {missing[0]} is not an analysis ({span})")
    at_inits = dataset[list(variables)].sel(time=init_times)
    for name in variables:
        bad = at_inits[name].isnull().any(("latitude", "longitude")).values
        if bad.any():
            raise ForecastError(
                f"the analysis of {name} at init time {init_times[bad][0]} has NaNs"
            )


def lead_steps_of(lead_time: object, timestep: np.timedelta64) -> int:
    """The number of `timestep`s in `lead_time` (a timedelta64, a pandas offset such as "10D"
    or a number of hours); a ValueError unless it is a positive whole number of steps."""
    lead = pd.Timedelta(lead_time if not isinstance(lead_time, int | float) else f"{lead_time}h")
    steps = lead / pd.Timedelta(timestep)
    if steps <= 0 or not float(steps).is_integer():
        hours = pd.Timedelta(timestep) / pd.Timedelta(1, "h")
        raise ForecastError(
            f"lead time {lead}: not a positive multiple of the {hours:g} h time step"
        )
    return int(steps)


def checked_run(
    run: EnsembleRun,
    init_times: np.ndarray,
    members: int,
    lead_steps: int,
    options: RunOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """The init and lead times of a run, after refusing what cannot run (no member, a batch
    size under 1, analyses the members cannot start from)."""
    if members < 1:
        raise ForecastError(f"the ensemble needs at least one member, got {members}")
    if options.batch_size is not None and options.batch_size < 1:
        raise ForecastError(f"the batch size must be >= 1, got {options.batch_size}")
    init_times = np.asarray(init_times, dtype="datetime64[ns]")
    check_analyses(run.dataset, run.variables, run.grid, init_times)
    return init_times, np.arange(lead_steps + 1) * run.timestep.astype("timedelta64[ns]")


def write_ensemble(
    run: EnsembleRun,
    init_times: np.ndarray,
    members: int,
    lead_steps: int,
    options: RunOptions,
) -> RunSummary | ArchiveSummary:
    """Run (or resume, or plan with `dry_run`) the ensemble into `options.out`: a store of
    its own, or the archive that `options.archive` names it (`append_ensemble`)."""
    if options.archive:
        return append_ensemble(run, init_times, members, lead_steps, options)
    init_times, lead_times = checked_run(run, init_times, members, lead_steps, options)
    out = options.out
    lock = StoreLock(out)
    with task_executor(options.scheduler, run.device) as (executor, workers):
        with single_threaded(run.device):
            identity = run.identity(init_times, lead_times, members)
            lock.check()  # before reading a store that another run may be creating
            state, attrs = existing_store(out, options, identity)
            if state == "complete":
                return RunSummary(out, "", done_before=True)
            batch = options.batch_size or automatic_batch_size(
                run, members, len(init_times), len(lead_times), workers
            )
            if attrs is not None:
                batch = int(attrs["wxens_batch_size"])
            layout = StoreLayout(init_times, lead_times, members, batch, run.variables, run.grid)
            partial = partial_path(out)
            done = EnsembleStore(partial).done() if state == "partial" else None
            pending = [t for t in layout.tasks() if done is None or not done[t]]
            member_steps = sum(len(layout.member_range(b)) for _, b in pending) * lead_steps
            plan = (
                f"{len(pending)} of {len(layout.tasks())} tasks ({len(init_times)} inits x"
                f" {layout.batches} batches of {batch} members), {member_steps}"
                f" member-steps on {workers} {options.scheduler} workers"
            )
            if options.dry_run:
                return RunSummary(out, plan, dry_run=True)
            lock.acquire()
            try:
                if state == "new":
                    shutil.rmtree(partial, ignore_errors=True)
                    attrs = {**run.attrs(identity), "wxens_batch_size": batch}
                    checkpoint = run.checkpoint_of(range(members))
                    fields = field_attrs(run.dataset[list(run.variables)])
                    create_store(partial, layout, fields, checkpoint, run.names, run.kinds, attrs)
                if isinstance(executor, ThreadPoolExecutor):
                    resolved(run.source)  # load the checkpoints once, before the threads start
                started = time.perf_counter()
                run_tasks(executor, run.source, layout, partial, pending, member_steps, options)
                seconds = time.perf_counter() - started
                with warnings.catch_warnings():  # "not part of the Zarr v3 spec": xarray reads it
                    warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
                    zarr.consolidate_metadata(partial)  # so xarray.open_zarr(out) needs no args
                finalise_store(partial, out)
            finally:
                lock.release()
    return RunSummary(out, plan, member_steps, seconds)


def append_ensemble(
    run: EnsembleRun,
    init_times: np.ndarray,
    members: int,
    lead_steps: int,
    options: RunOptions,
) -> ArchiveSummary:
    """Append to the archive at `options.out` each of `init_times` it does not hold yet
    (`forecast.archive`), after finishing an init that an interrupted run left pending.

    The archive's fingerprint is the run's without its init times: another model, member
    count, lead time, perturbation or seed is refused."""
    init_times, lead_times = checked_run(run, init_times, members, lead_steps, options)
    archive, lock = Archive(options.out), StoreLock(options.out)
    with task_executor(options.scheduler, run.device) as (executor, workers):
        with single_threaded(run.device):
            identity = run.identity(np.array([], dtype="datetime64[ns]"), lead_times, members)
            lock.check()
            archive.check(identity)
            done_before = set(archive.complete_inits())
            unique = list(dict.fromkeys(init_times))
            skipped = [t for t in unique if t in done_before]
            todo = [t for t in unique if t not in done_before]
            batch = archive.batch_size() or options.batch_size
            batch = batch or automatic_batch_size(run, members, 1, len(lead_times), workers)
            like = StoreLayout(init_times[:1], lead_times, members, batch, run.variables, run.grid)
            if options.dry_run:
                return ArchiveSummary(options.out, todo, skipped, dry_run=True)

            def create(path: Path, first: np.ndarray) -> None:
                attrs = {**run.attrs(identity), "wxens_batch_size": batch, ARCHIVE_FLAG: True}
                fields = field_attrs(run.dataset[list(run.variables)])
                layout = dataclasses.replace(like, init_times=first)
                checkpoint = run.checkpoint_of(range(members))
                create_store(path, layout, fields, checkpoint, run.names, run.kinds, attrs)

            def finish(pending: Pending) -> int:
                archive.grow(pending, lead_times)
                layout = Archive.layout(pending.path, like)
                done = EnsembleStore(pending.path).done()[pending.index]
                tasks = [(pending.index, b) for b in range(layout.batches) if not done[b]]
                steps = sum(len(layout.member_range(b)) for _, b in tasks) * lead_steps
                run_tasks(executor, run.source, layout, pending.path, tasks, steps, options)
                archive.commit(pending)
                return steps

            lock.acquire()
            try:
                if isinstance(executor, ThreadPoolExecutor):
                    resolved(run.source)  # load the checkpoints once, before the threads start
                started, member_steps, written = time.perf_counter(), 0, []
                interrupted = archive.interrupted()
                if interrupted is not None:
                    member_steps += finish(interrupted)
                    written.append(interrupted.init_time)
                for init_time in todo:
                    if init_time not in written:
                        member_steps += finish(archive.begin(init_time, create))
                        written.append(init_time)
                seconds = time.perf_counter() - started
            finally:
                lock.release()
    return ArchiveSummary(options.out, written, skipped, member_steps, seconds)


def run_tasks(
    executor: Executor,
    source: EnsembleSpec | MemberForecaster,
    layout: StoreLayout,
    partial: Path,
    pending: list[tuple[int, int]],
    member_steps: int,
    options: RunOptions,
) -> None:
    in_process = isinstance(executor, ThreadPoolExecutor)
    with progress_bar(member_steps, "member-steps", options.quiet) as advance:
        futures = [
            executor.submit(
                run_task, source, layout, partial, task, advance if in_process else None
            )
            for task in pending
        ]
        for future in as_completed(futures):
            steps = future.result()
            if not in_process:
                advance(steps)


def run_configured_ensemble(
    config: ExperimentConfig,
    init_times: Sequence[np.datetime64],
    members: int,
    lead_time: object,
    options: RunOptions,
    *,
    model: str = "sfno",
    checkpoints: Sequence[Path] | None = None,
    analyses: Path | None = None,
    device: torch.device | str | None = None,
    recorded: dict[str, object] | None = None,
) -> RunSummary | ArchiveSummary:
    """The ensemble a config describes (`wxens forecast` and `wxens hindcast`), written into
    `options.out`: `model` "sfno" (the checkpoints, default `ensemble.checkpoints`, with the
    config's kinds and perturbations) or a kind built from the config (`nwp`, the NWP
    baseline), from the `analyses` store
    (default: the config's), `lead_time` a whole number of time steps. `recorded` are the
    options kept in the store's attributes beside the config."""
    run = configured_run(config, model, checkpoints, analyses, device, recorded, options.command)
    steps = lead_steps_of(lead_time, run.timestep)
    return write_ensemble(run, init_times, members, steps, options)


def configured_run(
    config: ExperimentConfig,
    model: str = "sfno",
    checkpoints: Sequence[Path] | None = None,
    analyses: Path | None = None,
    device: torch.device | str | None = None,
    recorded: dict[str, object] | None = None,
    command: str = "forecast",
) -> EnsembleRun:
    """The `EnsembleRun` of the ensemble a config describes (arguments as in
    `run_configured_ensemble`)."""
    store = analyses or config.analyses
    if store is None:
        raise ForecastError("no analysis store: name one or set `analyses:` in the config")
    device = torch.device(device) if device is not None else default_device()
    spec = prepare(config, model, list(checkpoints or config.ensemble.checkpoints), store, device)
    return spec_run(spec, recorded or {}, command)


def spec_run(spec: EnsembleSpec, recorded: dict[str, object], command: str) -> EnsembleRun:
    """The `EnsembleRun` of a config's ensemble (`prepare`); `recorded` are the options kept
    in the store's attributes."""
    config = spec.config
    kinds = list(spec.model_kinds) or [spec.model]
    seeds = seed_states(spec)

    def identity(init_times: np.ndarray, lead_times: np.ndarray, members: int) -> str:
        if seeds is not None:
            seeds.check(init_times, len(lead_times) - 1)
        return fingerprint(spec, init_times, lead_times, members, seeds)

    return EnsembleRun(
        source=spec,
        dataset=open_analyses(spec.analyses),
        variables=tuple(config.variables),
        grid=model_grid(config),
        timestep=forecaster_timestep(spec),
        device=torch.device(spec.device),
        micro_batch=micro_batch(config, spec.model),
        names=list(spec.model_names) or [spec.model],
        kinds=kinds,
        checkpoint_of=functools.partial(member_checkpoints, kinds=kinds, config=config),
        identity=identity,
        attrs=lambda identity: store_attrs(spec, identity, recorded, command),
    )


def forecaster_timestep(spec: EnsembleSpec) -> np.timedelta64:
    if not KINDS[spec.model].from_checkpoints:  # a model of the analyses' time step
        return np.timedelta64(spec.config.truth.output_interval_hours, "h")
    return np.timedelta64(round(json.loads(spec.stats_json)["timestep_hours"] * 3600), "s")


def checkpoint_group_size(config: ExperimentConfig) -> int:
    """Consecutive members that share a checkpoint: `ensemble.checkpoint_group`, by default
    `CHECKPOINT_GROUP` (two bred pairs)."""
    if config.ensemble.checkpoint_group is not None:
        return config.ensemble.checkpoint_group
    return CHECKPOINT_GROUP


def field_attrs(dataset: xr.Dataset) -> dict[str, dict[str, str]]:
    return {name: dict(dataset[name].attrs) for name in dataset.data_vars}


def store_attrs(
    spec: EnsembleSpec, identity: str, recorded: dict[str, object], command: str
) -> dict[str, object]:
    """Provenance: config, command options, checkpoints (the mean networks' too) and their
    sha256, seeds, versions."""
    config = spec.config
    labels = checkpoint_labels(checkpoint_files(spec))
    weights = {label: read_metadata(path)["weights_sha256"] for label, path in labels.items()}
    return {
        **provenance(json.loads(spec.config_json), command, **recorded),
        "wxens_model": spec.model,
        "wxens_checkpoints_sha256": json.dumps(weights),
        "wxens_seed": config.ensemble.seed,
        "wxens_bred_rmse_48h": spec.bred_rmse_48h_json,
        "wxens_variables": json.dumps(list(config.variables)),
        "wxens_analyses": spec.analyses,
        FINGERPRINT: identity,
    }
