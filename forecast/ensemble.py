"""The ensemble API: emulator objects and an analysis Dataset in, the ensemble as xarray out.

`run_ensemble` runs any objects that satisfy `wxens.models.emulator.Emulator` (the committed
checkpoints through `load_members`, or a user's own torch model) from any analyses Dataset, with
any `Perturbation`, through the same runner as `wxens forecast`: member k of init t draws its
noise only from generators seeded by `(seed, t, k)`, so it is bitwise the same whatever batch,
worker or order computes it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from wxens.data_pipeline.config import ExperimentConfig
from wxens.data_pipeline.provenance import default_device, provenance
from wxens.forecast.archive import open_archive
from wxens.forecast.ensemble_store import FINGERPRINT
from wxens.forecast.perturbations import (
    BredVectorPerturbation,
    GaussianRandomFieldPerturbation,
    Perturbation,
    assign_checkpoints,
    unperturbed,
)
from wxens.forecast.runner import (
    EnsembleRun,
    ForecastError,
    MemberForecaster,
    RunOptions,
    lead_steps_of,
    run_identity,
    sha256_json,
    write_ensemble,
)
from wxens.models.checkpoint import checkpoint_labels, find_checkpoints, load_checkpoint
from wxens.models.emulator import Emulator, FixedBatchEmulator

MICRO_BATCH = 8
"""Members per CPU forward pass (`ensemble.micro_batch` of the configs)."""


def load_members(
    paths: str | Path | Sequence[str | Path],
    config: ExperimentConfig | None = None,
    device: torch.device | str | None = None,
) -> list[Emulator]:
    """The emulators saved in `paths` (checkpoints, or folders of them), in eval mode.

    With `config`, each checkpoint's grid and variables must be the config's. Each emulator's
    `name` is its checkpoint folder's name. Raises `CheckpointError` with one line naming a
    checkpoint that cannot be used.

    Example:
        >>> import wxens
        >>> members = wxens.load_members("checkpoints/default")
        >>> [m.name for m in members], members[0].input_variables
        (['sfno-seed1', 'sfno-seed2', 'sfno-seed3', 'sfno-seed4'], ('psi_upper', 'psi_lower'))
    """
    listed = [paths] if isinstance(paths, str | Path) else list(paths)
    emulators = []
    for label, path in checkpoint_labels(find_checkpoints([Path(p) for p in listed])).items():
        emulator = load_checkpoint(path, config, device or default_device())
        emulator.name = label
        emulators.append(emulator)
    return emulators


def random_field_perturbation(
    member: Emulator, fraction: float = 0.1, length_scale_km: float = 1000.0
) -> GaussianRandomFieldPerturbation:
    """Analysis plus correlated Gaussian random fields of rms `fraction` x each variable's
    anomaly std (`member.stats`, in the variable's units), correlation length
    `length_scale_km` (`perturbation.initial: random_field`).

    Example:
        >>> import wxens
        >>> member = wxens.load_members("checkpoints/default/sfno-seed1")[0]
        >>> perturbation = wxens.random_field_perturbation(member, fraction=0.1)
        >>> perturbation.amplitude.flatten().tolist() != [0.0, 0.0]
        True
    """
    return GaussianRandomFieldPerturbation.from_stats(
        member.grid,
        member.truncation,
        member.stats,
        member.input_variables,
        fraction,
        length_scale_km * 1e3,
    )


def bred_vector_perturbation(
    member: Emulator,
    rmse_48h: Mapping[str, float],
    fraction: float = 0.35,
    cycles: int = 4,
    seed_fraction: float = 0.1,
) -> BredVectorPerturbation:
    """Centred pairs `analysis +/- dx` of vectors bred with `member` over `cycles` 6 h cycles
    from a `random_field_perturbation` of rms `seed_fraction`, each hemisphere rescaled to
    `fraction` x `rmse_48h` (the member's 48 h RMSE per variable, in its units).

    Example:
        >>> import wxens
        >>> member = wxens.load_members("checkpoints/default/sfno-seed1")[0]
        >>> bred = wxens.bred_vector_perturbation(member, {"psi_upper": 4e6, "psi_lower": 3e6})
        >>> bred.target.tolist()
        [1400000.0, 1050000.0]
    """
    return BredVectorPerturbation(
        FixedBatchEmulator(member, MICRO_BATCH),
        random_field_perturbation(member, seed_fraction),
        rmse_48h,
        fraction,
        cycles,
    )


def _weights_digest(model: Emulator) -> str:
    """sha256 of a model's tensors (its `state_dict`), or of its type for one without."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _device_of(model: Emulator) -> torch.device:
    parameters = model.parameters() if hasattr(model, "parameters") else iter(())
    first = next(iter(parameters), None)
    return first.device if first is not None else torch.device("cpu")


def _check_members(models: list[Emulator]) -> None:
    if not models:
        raise ForecastError("no members: pass emulators or checkpoint paths")
    for model in models:
        if not isinstance(model, Emulator):
            raise ForecastError(
                f"{type(model).__name__} is not an Emulator (it needs input_variables, grid,"
                " timestep and step(state, *, generator))"
            )
    first = models[0]
    for model in models[1:]:
        for attribute in ("input_variables", "grid", "timestep"):
            if getattr(model, attribute) != getattr(first, attribute):
                raise ForecastError(
                    f"members differ in {attribute}: {getattr(first, attribute)} and"
                    f" {getattr(model, attribute)}"
                )


def _perturbations(perturbation: object, count: int) -> list[Perturbation]:
    if perturbation is None:
        return [unperturbed] * count
    if callable(perturbation):
        return [perturbation] * count
    listed = list(perturbation)
    if len(listed) != count or not all(callable(p) for p in listed):
        raise ForecastError(
            f"perturbation: one Perturbation, or one per member model ({count}), got {listed!r}"
        )
    return listed


def ensemble_run(
    members: Emulator | Sequence[Emulator] | str | Path | Sequence[str | Path],
    analyses: xr.Dataset,
    perturbation: Perturbation | Sequence[Perturbation] | None,
    seed: int,
    checkpoint_group: int,
    recorded: Mapping[str, object],
    command: str = "wxens.run_ensemble",
) -> EnsembleRun:
    """The `EnsembleRun` of `run_ensemble`'s arguments (there), checked; `recorded` goes
    into the provenance of what it writes."""
    if isinstance(members, str | Path) or (
        isinstance(members, Sequence) and members and isinstance(members[0], str | Path)
    ):
        members = load_members(members)
    models = [members] if isinstance(members, Emulator) else list(members)
    _check_members(models)
    if not isinstance(analyses, xr.Dataset):
        raise ForecastError(f"analyses must be an xarray Dataset, got {type(analyses).__name__}")
    first = models[0]
    if checkpoint_group < 1:
        raise ForecastError(f"checkpoint_group must be >= 1, got {checkpoint_group}")

    def checkpoint_of(ids: range) -> np.ndarray:
        return assign_checkpoints(ids, len(models), checkpoint_group)

    forecaster = MemberForecaster(
        models,
        _perturbations(perturbation, len(models)),
        analyses,
        seed=seed,
        checkpoint_of=checkpoint_of,
        micro_batch=MICRO_BATCH,
        device=_device_of(first),
    )
    names = [getattr(m, "name", f"{type(m).__name__}-{i}") for i, m in enumerate(models)]
    kinds = [getattr(m, "kind", type(m).__name__.lower()) for m in models]
    weights = [_weights_digest(m) for m in models]
    variables = tuple(first.input_variables)

    def identity(inits: np.ndarray, lead_times: np.ndarray, count: int) -> str:
        start = analyses[list(variables)].sel(time=inits).to_array().values
        return sha256_json(
            {
                "weights": weights,
                "perturbations": [type(p).__qualname__ for p in forecaster.perturbations],
                "seed": seed,
                "checkpoint_group": checkpoint_group,
                "analyses_sha256": hashlib.sha256(start.tobytes()).hexdigest(),
                **run_identity(inits, lead_times, count),
            }
        )

    def attrs(fingerprint: str) -> dict[str, object]:
        return {
            **provenance({}, command, **recorded),
            "wxens_checkpoints_sha256": json.dumps(dict(zip(names, weights, strict=True))),
            "wxens_seed": seed,
            "wxens_variables": json.dumps(list(variables)),
            FINGERPRINT: fingerprint,
        }

    return EnsembleRun(
        source=forecaster,
        dataset=analyses,
        variables=variables,
        grid=first.grid,
        timestep=np.timedelta64(first.timestep, "ns"),
        device=forecaster.device,
        micro_batch=MICRO_BATCH,
        names=names,
        kinds=kinds,
        checkpoint_of=checkpoint_of,
        identity=identity,
        attrs=attrs,
    )


def _planned(
    members: Emulator | Sequence[Emulator] | str | Path | Sequence[str | Path],
    analyses: xr.Dataset,
    init_times: object,
    n_members: int,
    lead_time: object,
    perturbation: Perturbation | Sequence[Perturbation] | None,
    seed: int,
    checkpoint_group: int,
) -> tuple[EnsembleRun, np.ndarray, int]:
    """`run_ensemble`'s arguments as the run, its init times and its number of lead steps."""
    recorded = {"members": n_members, "lead_time": str(lead_time), "seed": seed}
    run = ensemble_run(members, analyses, perturbation, seed, checkpoint_group, recorded)
    times = np.atleast_1d(np.asarray(init_times, dtype="datetime64[ns]"))
    return run, times, lead_steps_of(lead_time, run.timestep)


def run_ensemble(
    members: Emulator | Sequence[Emulator] | str | Path | Sequence[str | Path],
    analyses: xr.Dataset,
    init_times: object,
    n_members: int,
    lead_time: object,
    *,
    perturbation: Perturbation | Sequence[Perturbation] | None = None,
    store: str | Path | None = None,
    archive: str | Path | None = None,
    scheduler: str = "threads",
    seed: int = 0,
    checkpoint_group: int = 1,
    batch_size: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = True,
) -> xr.Dataset:
    """An ensemble forecast of `n_members` members from each of `init_times`.

    `members` are emulators (objects satisfying `Emulator`) or checkpoint paths
    (`load_members`); consecutive groups of `checkpoint_group` members go to them in turn
    (member k runs on model (k // g) mod N). `analyses` holds each member's
    `input_variables` by `time` on its grid; `lead_time` (a timedelta, "10D", or hours) is a
    whole number of the members' time steps. `perturbation` makes the initial states (one for
    all models, or one per model; None: every member starts from the analysis). Member k of
    init t draws its noise only from generators seeded by `(seed, t, k)`.

    With `store=None` the ensemble comes back in memory; with a path it is written there as a
    resumable Zarr store (`resume` continues an interrupted run of the same ensemble,
    `overwrite` replaces another) and returned opened. With `archive` a path, the inits the
    archive there does not hold yet are appended to it (`forecast.archive`: idempotent,
    atomic per init, one writer) and the whole archive is returned (`open_archive`).
    `scheduler` is `threads[:N]`,
    `local-cluster:N` or a dask scheduler address. The result has dimensions
    `(init_time, lead_time, member, latitude, longitude)`, one float32 variable per field, and
    `valid_time`, `checkpoint` and `kind` coordinates.

    Raises `ForecastError` (a ValueError) with one line for unusable input: no or mismatched
    members, analyses without a variable or on another grid, a NaN at an init time, a lead
    time off the step.

    Example:
        >>> import wxens
        >>> members = wxens.load_members("checkpoints/default/sfno-seed1")
        >>> truth = wxens.simulate_truth(days=1, spinup_days=1)
        >>> ensemble = wxens.run_ensemble(members, truth, truth.time[0], 2, "12h")
        >>> dict(ensemble.sizes)
        {'init_time': 1, 'lead_time': 3, 'member': 2, 'latitude': 33, 'longitude': 64}
    """
    run, times, steps = _planned(
        members, analyses, init_times, n_members, lead_time, perturbation, seed, checkpoint_group
    )
    if store is not None and archive is not None:
        raise ForecastError("pass a store or an archive, not both")
    if archive is not None:
        options = RunOptions(Path(archive), batch_size, scheduler, quiet=quiet, archive=True)
        write_ensemble(run, times, n_members, steps, options)
        return open_archive(archive)
    if store is not None:
        options = RunOptions(Path(store), batch_size, scheduler, overwrite, resume, quiet=quiet)
        write_ensemble(run, times, n_members, steps, options)
        return xr.open_zarr(store)
    with tempfile.TemporaryDirectory(prefix="wxens-ensemble-") as folder:
        options = RunOptions(Path(folder) / "ensemble.zarr", batch_size, scheduler, quiet=quiet)
        write_ensemble(run, times, n_members, steps, options)
        return xr.open_zarr(options.out).load()


def score_ensemble_online(
    members: Emulator | Sequence[Emulator] | str | Path | Sequence[str | Path],
    analyses: xr.Dataset,
    init_times: object,
    n_members: int,
    lead_time: object,
    *,
    truth: xr.Dataset | str | Path,
    stats: str | Path,
    keep: int | str | None = None,
    archive: str | Path | None = None,
    references: Mapping[str, object] | None = None,
    perturbation: Perturbation | Sequence[Perturbation] | None = None,
    seed: int = 0,
    checkpoint_group: int = 1,
    scheduler: str = "threads",
    scores: Sequence[str] | None = None,
    regions: Sequence[str] | None = None,
) -> xr.Dataset:
    """The ensemble of `run_ensemble` (same arguments), scored against `truth` as its members
    are made, storing none of them (`forecast.online`): its statistics (and the
    `references`') go to the statistics store `stats`, and the scores of every init there
    come back (`finalize`). `keep` N members or `"mean"` into `archive` (None: nothing).

    Example:
        >>> import tempfile, wxens
        >>> members = wxens.load_members("checkpoints/default/sfno-seed1")
        >>> truth = wxens.simulate_truth(days=2, spinup_days=1)
        >>> stats = Path(tempfile.mkdtemp()) / "stats.zarr"
        >>> scores = wxens.score_ensemble_online(
        ...     members, truth, truth.time[0], 4, "12h", truth=truth, stats=stats,
        ...     scores=["crps"], regions=["global"])
        >>> scores.crps.sizes["lead_time"]
        3
    """
    from wxens.forecast.online import score_online
    from wxens.verification.stats_store import finalize

    if (keep is None) != (archive is None):
        raise ForecastError("keep N members or the mean into an archive: pass both, or neither")
    run, times, steps = _planned(
        members, analyses, init_times, n_members, lead_time, perturbation, seed, checkpoint_group
    )
    options = RunOptions(Path(archive) if archive is not None else None, scheduler=scheduler)
    score_online(
        run,
        times,
        n_members,
        steps,
        options,
        truth,
        stats,
        keep=keep,
        references=references,
        scores=scores,
        regions=regions,
    )
    return finalize(stats)
