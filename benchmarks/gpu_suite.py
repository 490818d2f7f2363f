"""The GPU benchmark suite: five measurements in one run of at most 8 minutes on one H100/H200,
written to one JSON file (`--out`) and printed as Markdown tables of the same numbers.

    python benchmarks/gpu_suite.py [--device cuda] [--out gpu_suite.json]
        [--budget-seconds 450] [--tiny] [--workdir DIR] [--parts forecast,huge_ensemble,...]

Run from the repository root. First it writes an analysis store of the default world: `truth_days`
of the T42 truth (configs/default.yaml) on the 33 x 64 grid after `spinup_days`, repeated to fill
the calendar year 2030, the training, validation and test year alike (the library trains and
validates on whole calendar years; what an epoch or a forecast costs does not depend on the
values). Then each part (or those `--parts` names), with its own share of `--budget-seconds`:

1. `sfno_forward`: the raw SFNO forward of the committed default checkpoint (`sfno-seed1`,
   timed by `benchmarks/emulator_speed.py`'s `measure`, beside the `wxens` step) against the
   card's own floor measured in the same run: a large square matmul in bf16, TF32 (CUDA only)
   and fp32 (TF32 off), in TFLOP/s, and a large batched real FFT in nominal GFLOP/s (2.5 N log2 N
   a transform of length N). The forward's FLOPs are counted, not estimated: its matmuls
   (1x1 convolutions, bmm, mm, addmm) by `torch.utils.flop_counter.FlopCounterMode` (2 a
   multiply-add), its FFTs apart at the same nominal 2.5 N log2 N; elementwise work (GELU,
   adds, the spectral weights' complex products) is not counted. Ratios are achieved / floor.
   A second floor at the forward's own shapes: its matmuls and FFTs replayed one by one on fresh
   tensors of the same shapes, strides and dtypes (`replay_us_per_member_step`), so
   `raw_over_replay` is the forward's time over that of its matmuls and FFTs alone.
2. `forecast`: `wxens forecast`'s library call (`run_configured_ensemble`) with `make demo`'s
   SFNO ensemble (configs/demo.yaml: the four committed checkpoints, bred-vector pairs of fixed
   48 h RMSE, perturbed tendencies, a Zarr store) at the automatic batch size: member-steps/s of
   its tasks and of the whole call, the batch size the runner chose and the peak GPU memory
   (`torch.cuda.max_memory_allocated`).
3. `huge_ensemble`: Huge Ensembles' 7,424 members x 60 steps (15 days) through the same call.
   Parts 2 and 3 first run a probe, then the target whole when the probe's estimate fits what is
   left of the part's budget (`mode: timed`), else the most members at the target's steps that
   fit (or the probe itself), extrapolated linearly in member-steps (`mode: extrapolated`);
   `measured` is the run the figures come from.
4. `reproducibility`: `wxens.run_ensemble` of the four checkpoints with random-field
   perturbations at several batch sizes; every member against the same member computed alone
   (batch 1): bitwise equal, else the largest absolute difference. `member_sha256` is the sha256
   of the last member's float32 trajectory `(variable, lead, lat, lon)` in the largest batch.
5. `training`: one epoch of each trainable member kind through `models.training.Trainer` (what
   `wxens train` runs) with the config of its committed checkpoint (`sfno`:
   configs/default-gpu.yaml; `fgn`, `vae`: their configs, fine-tuned from sfno-seed1 as
   `make fgn-checkpoint` does; `diffusion`: configs/default-diffusion.yaml), its samples per
   epoch (every window of the year when the config says all), batch size and validation lead;
   the sizes are recorded. `epoch_seconds` covers the training steps, the validation on
   `validation_inits` inits and the checkpoint writes; the validation is timed again alone.

A part that fails records its error (and traceback) and the suite goes on. With `--device
cuda` and no CUDA device it prints one line, writes nothing and exits 0. `--tiny` runs every
part at tiny sizes (the CPU test runs `--device cpu --tiny`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

# wxens and the other benchmarks' helpers are imported where they are used, so that the exit
# without a GPU costs only torch's import.

REPOSITORY = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPOSITORY / "checkpoints" / "default"
CHECKPOINT = CHECKPOINTS / "sfno-seed1"
TRUTH = REPOSITORY / "configs" / "default.yaml"
"""The world: the T42 truth on the 33 x 64 grid."""
FORECAST = REPOSITORY / "configs" / "demo.yaml"
"""The ensemble of `wxens forecast` in parts 2 and 3: `make demo`'s SFNO ensemble."""
YEAR = 2030
"""The calendar year of the analysis store (training, validation and test years alike)."""
INIT = np.datetime64(f"{YEAR}-01-01T00", "ns")
"""The forecasts' init time: the first analysis, a state of the simulated truth."""
HUGE = (7424, 60)
"""Huge Ensembles' size: members x 6 h steps (15 days)."""
MARGIN = 1.3
"""How much slower than its estimate a run may turn out and still fit its budget."""
TRAINING = {
    "sfno": ("configs/default-gpu.yaml", None),
    "fgn": ("configs/default-fgn.yaml", CHECKPOINT),
    "vae": ("configs/default-vae.yaml", CHECKPOINT),
    "diffusion": ("configs/default-diffusion.yaml", None),
}
"""Each trainable kind's config and the checkpoint its training starts from (None: new)."""
SHARES = {
    "setup": 0.05,
    "sfno_forward": 0.12,
    "forecast": 0.13,
    "huge_ensemble": 0.30,
    "reproducibility": 0.08,
    "training": 0.32,
}
"""Each part's share of `--budget-seconds`."""
PARTS = tuple(name for name in SHARES if name != "setup")
"""The measuring parts, in the order they run (`--parts` picks a subset)."""

aten = torch.ops.aten
MATMULS = {aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.convolution}
"""The operations whose FLOPs `FlopCounterMode` counts in the SFNO forward."""
FFTS = {aten._fft_r2c, aten._fft_c2r, aten._fft_c2c}


@dataclass(frozen=True)
class Sizes:
    """The sizes of one run of the suite (`FULL` on a GPU, `TINY` for the CPU test)."""

    spinup_days: float
    truth_days: float
    forward_batches: tuple[int, ...]
    repeats: int
    matmul_size: int
    fft_shape: tuple[int, int]
    forecast: tuple[int, int]  # members, steps
    forecast_probe: tuple[int, int]
    huge_probe: tuple[int, int]
    reproducibility: tuple[int, int]
    reproducibility_batches: tuple[int, ...]
    train_samples: int | None  # None: the config's `samples_per_epoch`
    train_batch: int | None  # None: the config's
    validation_inits: int


FULL = Sizes(
    spinup_days=20,
    truth_days=15,
    forward_batches=(1, 64, 1024, 4096),
    repeats=10,
    matmul_size=8192,
    fft_shape=(16384, 4096),
    forecast=(2048, 20),
    forecast_probe=(256, 20),
    huge_probe=(512, 20),
    reproducibility=(16, 8),
    reproducibility_batches=(16, 5, 1),
    train_samples=None,
    train_batch=None,
    validation_inits=16,
)
TINY = Sizes(
    spinup_days=1,
    truth_days=2,
    forward_batches=(1, 2),
    repeats=2,
    matmul_size=256,
    fft_shape=(64, 256),
    forecast=(4, 2),
    forecast_probe=(4, 2),
    huge_probe=(4, 2),
    reproducibility=(6, 2),
    reproducibility_batches=(6, 4, 1),
    train_samples=4,
    train_batch=2,
    validation_inits=2,
)


@dataclass(frozen=True)
class World:
    """The suite's truth store and the config (a file) of the default world on it."""

    folder: Path
    store: Path
    config: Path
    periods: dict


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(function: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The median of `repeats` timed calls of `function` after one warm-up call."""
    from emulator_speed import seconds_per_call

    function()
    return statistics.median(seconds_per_call(function, device) for _ in range(repeats))


def write_world(folder: Path, sizes: Sizes) -> World:
    """The suite's analysis store and forecast config (see the module docstring)."""
    import pandas as pd
    from wxens.data_pipeline.analysis_store import AnalysisStoreWriter
    from wxens.data_pipeline.config import write_overlay

    import wxens

    truth = wxens.simulate_truth(
        sizes.truth_days, spinup_days=sizes.spinup_days, config=wxens.load_config(TRUTH)
    )
    times = pd.date_range(f"{YEAR}-01-01", f"{YEAR + 1}-01-01", freq="6h", inclusive="left")
    year = truth.isel(time=np.arange(len(times)) % truth.sizes["time"])
    store = folder / "analyses.zarr"
    with AnalysisStoreWriter(store, truth.attrs, overwrite=True) as writer:
        writer.append(year.assign_coords(time=times.values))
    periods = {name: {"first": YEAR, "last": YEAR} for name in ("train", "validation", "test")}
    periods["start"] = f"{YEAR}-01-01"
    config = write_overlay(
        folder / "forecast.yaml", FORECAST, {"analyses": str(store), "periods": periods}
    )
    return World(folder, store, config, periods)


# --- 1. the raw SFNO forward against the card's floor -------------------------------------


def matmul_tflops(size: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    """TFLOP/s of a `size` x `size` x `size` matmul in `dtype` (2 size^3 FLOPs)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    return 2 * size**3 / median_seconds(lambda: a @ b, device, repeats) / 1e12


def fft_gflops(shape: tuple[int, int], device: torch.device, repeats: int) -> float:
    """Nominal GFLOP/s of a batched real FFT along the last dimension of a float32 `shape`."""
    x = torch.randn(shape, device=device)
    return fft_flops(shape[0], shape[1]) / median_seconds(
        lambda: torch.fft.rfft(x), device, repeats
    )


def fft_flops(transforms: int, length: int) -> float:
    """Nominal FLOPs of `transforms` real FFTs of `length`: 2.5 N log2 N each."""
    return 2.5 * transforms * length * math.log2(length) if length > 1 else 0.0


def card_floor(sizes: Sizes, device: torch.device) -> dict:
    """The card's matmul TFLOP/s (bf16, TF32 on CUDA, fp32 with TF32 off) and FFT GFLOP/s."""
    n, repeats = sizes.matmul_size, sizes.repeats
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        tflops = {
            "bf16": matmul_tflops(n, torch.bfloat16, device, repeats),
            "fp32": matmul_tflops(n, torch.float32, device, repeats),
        }
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            tflops["tf32"] = matmul_tflops(n, torch.float32, device, repeats)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return {
        "matmul_size": n,
        "matmul_tflops": tflops,
        "fft_shape": list(sizes.fft_shape),
        "fft_gflops": fft_gflops(sizes.fft_shape, device, repeats) / 1e9,
    }


@dataclass(frozen=True)
class TensorSpec:
    """Shape, strides, dtype and device of a tensor argument, to make a fresh one."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def make(self) -> torch.Tensor:
        return torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device)


def mapped(function: Callable[[object], object], value: object) -> object:
    """`value` with `function` applied to each item of its (nested) tuples, lists and dicts."""
    if isinstance(value, tuple | list):
        return type(value)(mapped(function, item) for item in value)
    if isinstance(value, dict):
        return {key: mapped(function, item) for key, item in value.items()}
    return function(value)


def spec_of(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return TensorSpec(tuple(value.shape), value.stride(), value.dtype, value.device)
    return value


def made(value: object) -> object:
    return value.make().zero_() if isinstance(value, TensorSpec) else value


class MatmulsAndFFTs(TorchDispatchMode):
    """Records each matmul (`MATMULS`) and FFT (`FFTS`) the code under it runs, with its
    arguments' specs, and the nominal FLOPs of the FFTs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[object, tuple, dict]] = []
        self.fft_flops = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func.overloadpacket
        if packet in MATMULS or packet in FFTS:
            self.calls.append((func, mapped(spec_of, args), mapped(spec_of, kwargs)))
        if packet in FFTS:
            real = out if packet == aten._fft_c2r else args[0]  # the real side (c2c: either)
            length = math.prod(real.shape[d] for d in args[1])
            self.fft_flops += fft_flops(real.numel() // length, length) * (
                2 if packet == aten._fft_c2c else 1
            )
        return out

    def replay(self, device: torch.device, repeats: int) -> float:
        """Seconds of the recorded calls run alone on fresh (zero) tensors: each call's
        median over `repeats` timings of `repeats` back-to-back calls, summed (one call's
        tensors at a time, so that a large batch fits)."""
        total = 0.0
        for func, args, kwargs in self.calls:
            args, kwargs = mapped(made, args), mapped(made, kwargs)

            def calls(func=func, args=args, kwargs=kwargs) -> None:
                for _ in range(repeats):
                    func(*args, **kwargs)

            total += median_seconds(calls, device, repeats) / repeats
        return total


def sfno_forward(sizes: Sizes, device: torch.device) -> dict:
    """Part 1 (see the module docstring)."""
    from emulator_speed import measure
    from wxens.data_pipeline.config import load_config
    from wxens.models.checkpoint import load_checkpoint

    emulator = load_checkpoint(CHECKPOINT, load_config(TRUTH), device)
    emulator.use_precision("float32")  # as `measure` times it (bf16-cpu is float32 on CUDA)
    shape = (len(emulator.input_variables), emulator.grid.nlat, emulator.grid.nlon)

    def features(batch: int) -> torch.Tensor:
        state = emulator.mean + emulator.std * torch.randn(batch, *shape, device=device)
        return emulator.features(state)

    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            emulator.network(features(1))
        with MatmulsAndFFTs() as one:
            emulator.network(features(1))
    matmul_flops = counter.get_total_flops()
    floor = card_floor(sizes, device)
    batches = {}
    for batch in sizes.forward_batches:
        rates = measure(str(CHECKPOINT), batch, sizes.repeats, device, ("float32",))
        inputs = features(batch)
        with torch.no_grad(), MatmulsAndFFTs() as recorded:
            emulator.network(inputs)
        del inputs
        replay = recorded.replay(device, sizes.repeats) / batch
        seconds = 1 / rates["raw float32"]
        achieved = matmul_flops / seconds / 1e12
        batches[str(batch)] = {
            "raw_member_steps_per_s": rates["raw float32"],
            "wxens_step_member_steps_per_s": rates["step float32"],
            "raw_us_per_member_step": 1e6 * seconds,
            "matmul_tflops_achieved": achieved,
            "matmul_fraction_of_floor": {
                k: achieved / v for k, v in floor["matmul_tflops"].items()
            },
            "fft_gflops_achieved": one.fft_flops / seconds / 1e9,
            "fft_fraction_of_floor": one.fft_flops / seconds / 1e9 / floor["fft_gflops"],
            "replay_us_per_member_step": 1e6 * replay,
            "raw_over_replay": seconds / replay,
        }
    return {
        "checkpoint": str(CHECKPOINT.relative_to(REPOSITORY)),
        "precision": emulator.sfno.precision,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "flops_counted": "matmuls (1x1 convolutions, bmm, mm, addmm) by FlopCounterMode, 2 a"
        " multiply-add; FFTs apart at 2.5 N log2 N a real transform of length N; elementwise"
        " work not counted",
        "matmul_flops_per_member_step": matmul_flops,
        "fft_flops_per_member_step": one.fft_flops,
        "matmul_calls_per_forward": sum(f.overloadpacket in MATMULS for f, _, _ in one.calls),
        "fft_calls_per_forward": sum(f.overloadpacket in FFTS for f, _, _ in one.calls),
        "floor": floor,
        "batches": batches,
    }


# --- 2 and 3. the forecast path -------------------------------------------------------------


def forecast_run(world: World, members: int, steps: int, device: torch.device, name: str) -> dict:
    """One `wxens forecast` through its library call, its store (at `name` in the world's
    folder, replaced) removed afterwards."""
    import xarray as xr
    from nightly import size_kb
    from wxens.data_pipeline.config import load_config
    from wxens.forecast.runner import RunOptions, run_configured_ensemble

    out = world.folder / name
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    summary = run_configured_ensemble(
        load_config(world.config),
        [INIT],
        members,
        f"{steps * 6}h",
        RunOptions(out, overwrite=True, quiet=True),
        checkpoints=[CHECKPOINTS],
        device=device,
    )
    wall = time.perf_counter() - started
    result = {
        "members": members,
        "steps": steps,
        "member_steps": summary.member_steps,
        "batch_size": int(xr.open_zarr(out).attrs["wxens_batch_size"]),
        "plan": summary.plan,
        "task_seconds": summary.seconds,
        "member_steps_per_s": summary.member_steps_per_second,
        "wall_seconds": wall,
        "wall_member_steps_per_s": summary.member_steps / wall,
        "peak_gpu_memory_bytes": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
        "process_peak_rss_bytes": 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "store_bytes": round(1024 * size_kb(out)),
    }
    shutil.rmtree(out)
    return result


def fitted_forecast(
    world: World,
    device: torch.device,
    budget: float,
    target: tuple[int, int],
    probe: tuple[int, int],
    name: str,
) -> dict:
    """The `target` forecast (members, steps) timed whole when a `probe` run's estimate of it
    fits what is left of `budget` (`timed`), else the most members at the target's steps that
    fit, or the probe itself, extrapolated linearly in member-steps (`extrapolated`)."""
    started = time.perf_counter()
    members, steps = target
    tried = forecast_run(world, *probe, device, f"{name}-probe.zarr")
    per_member_step = tried["task_seconds"] / tried["member_steps"]
    overhead = tried["wall_seconds"] - tried["task_seconds"]
    left = budget - (time.perf_counter() - started)
    if tuple(probe) == tuple(target):
        measured, mode = tried, "timed"
    elif MARGIN * (overhead + per_member_step * members * steps) <= left:
        measured, mode = forecast_run(world, members, steps, device, f"{name}.zarr"), "timed"
    else:
        fits = 2 * int((left / MARGIN - overhead) / (per_member_step * steps) / 2)
        mode = "extrapolated"
        measured = (
            forecast_run(world, fits, steps, device, f"{name}.zarr")
            if fits * steps > tried["member_steps"]
            else tried
        )
    scale = members * steps / measured["member_steps"]
    return {
        "config": str(FORECAST.relative_to(REPOSITORY)),
        "target_members": members,
        "target_steps": steps,
        "mode": mode,
        "estimated_wall_seconds": measured["wall_seconds"] + (scale - 1) * measured["task_seconds"],
        "estimated_task_seconds": scale * measured["task_seconds"],
        "extrapolation": "linear in member-steps from the measured run's task seconds, plus"
        " its start-up (wall - task seconds); none when timed",
        "measured": measured,
        "probe": tried,
    }


def forecast(world: World, sizes: Sizes, device: torch.device, budget: float) -> dict:
    """Part 2 (see the module docstring)."""
    return fitted_forecast(world, device, budget, sizes.forecast, sizes.forecast_probe, "forecast")


def huge_ensemble(world: World, sizes: Sizes, device: torch.device, budget: float) -> dict:
    """Part 3 (see the module docstring)."""
    return fitted_forecast(world, device, budget, HUGE, sizes.huge_probe, "huge")


# --- 4. reproducibility across batch sizes --------------------------------------------------


def trajectories(ensemble) -> np.ndarray:
    """`(member, variable, lead, lat, lon)` float32 of an ensemble of one init."""
    fields = [ensemble[name].isel(init_time=0).values for name in ensemble.data_vars]
    return np.stack(fields).transpose(2, 0, 1, 3, 4)


def reproducibility(world: World, sizes: Sizes, device: torch.device, budget: float) -> dict:
    """Part 4 (see the module docstring); its sizes are fixed, `budget` unused."""
    import wxens

    members = wxens.load_members(CHECKPOINTS, device=device)
    perturbation = [wxens.random_field_perturbation(m) for m in members]
    truth = wxens.open_analyses(world.store)
    count, steps = sizes.reproducibility
    runs = {
        batch: trajectories(
            wxens.run_ensemble(
                members, truth, INIT, count, f"{6 * steps}h",
                perturbation=perturbation, batch_size=batch,
            )
        )
        for batch in sizes.reproducibility_batches
    }  # fmt: skip
    alone = runs[1]
    scale = float(alone.std())
    batches = {}
    for batch, states in runs.items():
        difference = np.abs(states.astype(np.float64) - alone)
        batches[str(batch)] = {
            "bitwise_equal": bool(np.array_equal(states, alone)),
            "members_bitwise_equal": int((states == alone).reshape(len(alone), -1).all(1).sum()),
            "max_abs_difference": float(difference.max()),
            "max_abs_difference_over_std": float(difference.max()) / scale,
        }
    largest = max(runs)
    return {
        "members": count,
        "steps": steps,
        "init_time": str(INIT),
        "seed": 0,
        "perturbation": "wxens.random_field_perturbation of each checkpoint (defaults)",
        "reference": "batch 1: each member alone",
        "bitwise_equal": all(b["bitwise_equal"] for b in batches.values()),
        "max_abs_difference": max(b["max_abs_difference"] for b in batches.values()),
        "batches": batches,
        "member": count - 1,
        "member_sha256": hashlib.sha256(runs[largest][-1].tobytes()).hexdigest(),
    }


# --- 5. one epoch of training per member kind ----------------------------------------------


def training(world: World, sizes: Sizes, device: torch.device, budget: float) -> dict:
    """Part 5 (see the module docstring)."""
    started, kinds, last = time.perf_counter(), {}, 0.0
    for kind, (path, init_from) in TRAINING.items():
        left = budget - (time.perf_counter() - started)
        if left < last:
            kinds[kind] = {
                "skipped": f"{left:.0f} s left of the budget, the last kind took {last:.0f} s"
            }
            continue
        try:
            kinds[kind] = train_epoch(world, sizes, device, kind, REPOSITORY / path, init_from)
            last = sum(
                kinds[kind][k] for k in ("setup_seconds", "epoch_seconds", "validation_seconds")
            )
        except Exception as exc:  # one kind's failure is recorded; the others still run
            kinds[kind] = failure(exc)
    return {"kinds": kinds}


def train_epoch(
    world: World,
    sizes: Sizes,
    device: torch.device,
    kind: str,
    path: Path,
    init_from: Path | None,
) -> dict:
    """One epoch of `kind` with the config at `path` (its samples per epoch and batch size
    unless `sizes` sets them) on the world's year, as `wxens train` runs it, into a fresh
    folder (a finished run there would be left as it is)."""
    from wxens.data_pipeline.config import load_config, write_overlay
    from wxens.models.training import Trainer, validate

    settings = {"epochs": 1, "validation_inits": sizes.validation_inits}
    if sizes.train_samples is not None:
        settings["samples_per_epoch"] = sizes.train_samples
    if sizes.train_batch is not None:
        settings["batch_size"] = sizes.train_batch
    data = {"analyses": str(world.store), "periods": world.periods, "training": settings}
    config = load_config(write_overlay(world.folder / f"train-{kind}.yaml", path, data))
    out = world.folder / f"train-{kind}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    trainer = Trainer(
        config,
        config.model_dump(mode="json"),
        world.store,
        1,
        out,
        device,
        quiet=True,
        init_from=init_from,
        model=kind,
    )
    synchronize(device)
    built = time.perf_counter()
    trainer.run()
    synchronize(device)
    trained = time.perf_counter()
    schedule = config.training
    validate(
        trainer.emulator,
        trainer.validation,
        schedule.validation_inits,
        schedule.batch_size,
        schedule.validation_lead_steps,
    )
    synchronize(device)
    validation = time.perf_counter() - trained
    samples = len(trainer.epoch_order(0))
    epoch = trained - built
    return {
        "config": str(path.relative_to(REPOSITORY)),
        "init_from": str(init_from.relative_to(REPOSITORY)) if init_from else None,
        "parameters": sum(p.numel() for p in trainer.emulator.network.parameters()),
        "samples": samples,
        "batch_size": schedule.batch_size,
        "optimizer_steps": trainer.step,
        "rollout_steps": trainer.rollout_steps(0),
        "validation_inits": schedule.validation_inits,
        "validation_lead_steps": schedule.validation_lead_steps,
        "setup_seconds": built - started,
        "epoch_seconds": epoch,
        "validation_seconds": validation,
        "train_samples_per_s": samples / (epoch - validation) if epoch > validation else None,
    }


# --- the suite ------------------------------------------------------------------------------


def failure(exc: BaseException) -> dict:
    """What a failed part records: its error in one line and the traceback."""
    message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return {"error": message, "traceback": traceback.format_exc()}


def run_part(function: Callable[[float], dict], budget: float, device: torch.device) -> dict:
    """`function(budget)` with its wall time and budget, or its error."""
    started = time.perf_counter()
    try:
        result = function(budget)
    except Exception as exc:  # a failed part is recorded; the suite goes on
        result = failure(exc)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {**result, "seconds": time.perf_counter() - started, "budget_seconds": budget}


def run_suite(
    device: torch.device,
    sizes: Sizes,
    budget: float,
    workdir: Path,
    only: tuple[str, ...] = PARTS,
) -> dict:
    """The parts in `only` (default all, in turn; see the module docstring) after the setup;
    the results as one JSON-ready dict."""
    started = time.perf_counter()
    shares = {name: share * budget for name, share in SHARES.items()}
    setup = run_part(lambda _: {"world": write_world(workdir, sizes)}, shares["setup"], device)
    world = setup.pop("world", None)
    if world is not None:
        setup |= {"store": str(world.store), "periods": world.periods}
    setup |= {"truth_days": sizes.truth_days, "spinup_days": sizes.spinup_days}
    parts = {"setup": setup}
    if "sfno_forward" in only:
        parts["sfno_forward"] = run_part(
            lambda _: sfno_forward(sizes, device), shares["sfno_forward"], device
        )
    for name, part in (
        ("forecast", forecast),
        ("huge_ensemble", huge_ensemble),
        ("reproducibility", reproducibility),
        ("training", training),
    ):
        if name not in only:
            continue
        if world is None:
            parts[name] = {"error": f"no truth store: {setup['error']}"}
        else:
            parts[name] = run_part(
                lambda b, part=part: part(world, sizes, device, b), shares[name], device
            )
    return {
        "suite": "benchmarks/gpu_suite.py",
        "device": device_name(device),
        "torch": torch.__version__,
        "tiny": sizes is TINY,
        "budget_seconds": budget,
        "total_seconds": time.perf_counter() - started,
        "parts": parts,
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def leaves(value: object, key: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of a JSON-ready value, tracebacks left out."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name != "traceback":
                yield from leaves(item, f"{key}.{name}" if key else name)
    else:
        yield key, value


def markdown(results: dict) -> str:
    """One Markdown table per part of `results`, every number of the JSON in it."""

    def shown(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("|", "/")

    lines = [f"# GPU suite: {results['device']}, torch {results['torch']}"]
    lines.append(
        f"total {results['total_seconds']:.1f} s of a {results['budget_seconds']:g} s budget"
    )
    for part, result in results["parts"].items():
        lines += ["", f"## {part}", "", "| quantity | value |", "| --- | --- |"]
        lines += [f"| {key} | {shown(value)} |" for key, value in leaves(result)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the suite, write its JSON to `--out` and print its tables; 0 (also without CUDA)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--out", type=Path, default=Path("gpu_suite.json"))
    parser.add_argument("--budget-seconds", type=float, default=450.0)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU test)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument(
        "--workdir", type=Path, help="folder for the truth and stores (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    only = tuple(args.parts.split(","))
    if unknown := set(only) - set(PARTS):
        parser.error(f"--parts: unknown part(s) {sorted(unknown)}; the parts are {PARTS}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device (torch.cuda.is_available() is False); nothing measured")
        return 0
    sizes = TINY if args.tiny else FULL
    with tempfile.TemporaryDirectory(prefix="wxens-gpu-suite-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        results = run_suite(device, sizes, args.budget_seconds, workdir, only)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
