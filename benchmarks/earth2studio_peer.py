"""Member-steps per second of wxens's ensemble runner against NVIDIA earth2studio's
`earth2studio.run.ensemble` driving the same SFNO network, and the raw network forward.

    .venv-bench/bin/python benchmarks/earth2studio_peer.py [--members 64] [--steps 8]
        [--batch 64] [--checkpoint checkpoints/default/sfno-seed1] [--init 2031-01-01T00]
        [--threads 2] [--wxens-batch-size N] [--config configs/default-random-field.yaml]

Three rows, all on the CPU, same checkpoint, members, 6 h steps and batch size, and the same
`sfno.precision` (the config's; `bf16-cpu` by default): earth2studio drives the emulator's own
`step`, so it runs the bfloat16 forward where wxens does. `--config configs/demo.yaml --init
2031-01-16T00` runs on the demo's truth after `make demo`.

- earth2studio: the checkpoint wrapped as an earth2studio `PrognosticModel` (`WxensPrognostic`),
  the analysis served by an in-memory `DataSource` over the wxens truth store, a
  `SphericalGaussian` initial perturbation and a `ZarrBackend` in a temporary folder. The wall
  clock of the whole `run.ensemble` call (data fetch, perturbation, rollout, Zarr writes);
  model loading is not counted.
- wxens: `wxens.run_ensemble` with the same loaded checkpoint, the analyses opened lazily, a
  random-field initial perturbation of the same rms and a Zarr store in a temporary folder;
  the wall clock of the whole call (data read, perturbation, rollout, Zarr writes), model
  loading not counted. wxens's `batch_size` means members per task, not per forward pass (each
  task runs on one torch thread, one task per core side by side, in forward passes of 8
  members), so `--batch` is not passed on: wxens picks its own, unless `--wxens-batch-size`
  is given.
- raw forward: `emulator.runtime_network()(emulator.features(x))` (the network at the
  config's `sfno.precision`, as every step runs it) under `torch.no_grad()` for the same
  member-steps at the same batch size (one untimed warm-up call first); no de-normalisation,
  residual or spectral projection, no perturbation, no I/O.

torch runs on 2 threads in this process (`--threads`) for earth2studio and the raw forward;
`wxens.run_ensemble` uses its default thread-pool scheduler. On a machine where another process
keeps a core busy, 2 torch threads on 2 cores can run several times slower than 1 (the threads
wait on each other), which hits the earth2studio and raw rows far more than wxens's one-thread
tasks: check the load first, or compare with `--threads 1`. Importing earth2studio takes about
20 s (`earth2studio.run` imports every model); that is not counted. Paths are relative to the
repository root.

earth2studio lives in its own virtual environment, `.venv-bench` (git-ignored through a
`.gitignore` inside it), so that it never touches the project's `.venv`. torch must stay at
2.14.1, which pip takes from this machine's disk: always pin it on the same command line, or
pip fetches a different torch of several GB.

    python3.11 -m venv .venv-bench
    echo '*' > .venv-bench/.gitignore
    .venv-bench/bin/pip install torch==2.14.1 torch-harmonics==0.9.3 earth2studio==0.19.0
    .venv-bench/bin/pip install torch==2.14.1 torch-harmonics==0.9.3 earth2studio==0.19.0 \\
        "numpy>=1.26" "zarr>=3.0,<4" "xarray>=2025.1" "dask[distributed]>=2025.1" \\
        "netCDF4>=1.7" "cfgrib>=0.9.14" "eccodes>=2.37" "cartopy>=0.24" "matplotlib>=3.8" \\
        "pydantic>=2.6,<3" "pyyaml>=6" "rich>=13" "typer>=0.12" "safetensors>=0.4" "scipy>=1.11"
    .venv-bench/bin/pip install --no-deps -e .

(the second line is wxens's own dependencies from pyproject.toml; earth2studio 0.19.0 pins
netCDF4 < 1.7.3, which wxens's >= 1.7 admits.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from earth2studio.io import ZarrBackend
from earth2studio.models.batch import batch_coords, batch_func
from earth2studio.perturbation import SphericalGaussian
from earth2studio.run import ensemble as e2s_ensemble
from earth2studio.utils import handshake_coords, handshake_dim
from earth2studio.utils.type import CoordSystem
from loguru import logger
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import load_config
from wxens.models.checkpoint import load_checkpoint
from wxens.models.sfno import SFNOEmulator

import wxens

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/default-random-field.yaml"


class WxensPrognostic(torch.nn.Module):
    """A wxens `SFNOEmulator` as an earth2studio `PrognosticModel`: one `step` per 6 h."""

    def __init__(self, emulator: SFNOEmulator):
        super().__init__()
        self.emulator = emulator
        self.variables = np.array(emulator.input_variables)
        self.lat = np.asarray(emulator.grid.latitude, dtype=np.float64)
        self.lon = np.asarray(emulator.grid.longitude, dtype=np.float64)
        self.timestep = emulator.timestep.astype("timedelta64[ns]")

    def input_coords(self) -> CoordSystem:
        return OrderedDict(
            {
                "batch": np.empty(0),
                "time": np.empty(0),
                "lead_time": np.array([np.timedelta64(0, "ns")]),
                "variable": self.variables,
                "lat": self.lat,
                "lon": self.lon,
            }
        )

    @batch_coords()
    def output_coords(self, input_coords: CoordSystem) -> CoordSystem:
        output = self.input_coords()
        output["lead_time"] = np.array([self.timestep])
        if input_coords is None:
            return output
        test = input_coords.copy()
        test["lead_time"] = test["lead_time"] - input_coords["lead_time"][-1]
        target = self.input_coords()
        for i, key in enumerate(target):
            if key not in ("batch", "time"):
                handshake_dim(test, key, i)
                handshake_coords(test, target, key)
        output["batch"] = input_coords["batch"]
        output["time"] = input_coords["time"]
        output["lead_time"] = output["lead_time"] + input_coords["lead_time"]
        return output

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor, coords: CoordSystem) -> tuple[torch.Tensor, CoordSystem]:
        output = self.output_coords(coords)
        shape = x.shape  # (batch, time, lead_time, variable, lat, lon)
        x = self.emulator.step(x.reshape(-1, *shape[-3:])).reshape(shape)
        return x, output

    @batch_func()
    def __call__(self, x: torch.Tensor, coords: CoordSystem) -> tuple[torch.Tensor, CoordSystem]:
        return self._forward(x, coords)

    @batch_func()
    def _default_generator(
        self, x: torch.Tensor, coords: CoordSystem
    ) -> Generator[tuple[torch.Tensor, CoordSystem], None, None]:
        coords = coords.copy()
        self.output_coords(coords)  # checks the coordinates
        yield x, coords
        while True:
            x, coords = self._forward(x, coords)
            yield x, coords.copy()

    def create_iterator(
        self, x: torch.Tensor, coords: CoordSystem
    ) -> Iterator[tuple[torch.Tensor, CoordSystem]]:
        yield from self._default_generator(x, coords)


class TruthSource:
    """An earth2studio `DataSource` over a wxens analysis store, read into memory on call."""

    def __init__(self, path: str | Path):
        dataset = open_analyses(path)
        self.dataset = dataset.rename(latitude="lat", longitude="lon")

    def __call__(self, time, variable) -> xr.DataArray:
        times = np.atleast_1d(np.asarray(time, dtype="datetime64[ns]"))
        names = [variable] if isinstance(variable, str) else [str(v) for v in variable]
        selected = self.dataset[names].sel(time=times).load()
        return selected.to_dataarray("variable").transpose("time", "variable", "lat", "lon")


def run_earth2studio(
    emulator: SFNOEmulator,
    analyses: Path,
    init: np.datetime64,
    members: int,
    steps: int,
    batch: int,
    fraction: float,
    out: Path,
    verbose: bool = False,
) -> float:
    """Seconds of one `earth2studio.run.ensemble` call."""
    model = WxensPrognostic(emulator)
    source = TruthSource(analyses)
    # earth2studio's field has an rms of order one; scale it per variable like wxens's
    # `random_field_fraction` x anomaly std (broadcast over lat, lon).
    amplitude = fraction * emulator.std.detach().reshape(-1, 1, 1).float().cpu()
    perturbation = SphericalGaussian(noise_amplitude=amplitude)
    io = ZarrBackend(str(out), backend_kwargs={"overwrite": True})
    start = time.perf_counter()
    e2s_ensemble(
        [init],
        steps,
        members,
        model,
        source,
        io,
        perturbation,
        batch_size=batch,
        device=torch.device("cpu"),
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    written = xr.open_zarr(out, consolidated=False)
    expected = (members, 1, steps + 1, emulator.grid.nlat, emulator.grid.nlon)
    for name in emulator.input_variables:
        if written[name].shape != expected:
            raise RuntimeError(f"earth2studio wrote {name} {written[name].shape}, not {expected}")
        if not np.isfinite(written[name].isel(lead_time=-1).values).all():
            raise RuntimeError(f"earth2studio wrote non-finite {name}")
    return seconds


def run_wxens(
    emulator: SFNOEmulator,
    analyses: Path,
    init: np.datetime64,
    members: int,
    steps: int,
    fraction: float,
    batch: int | None,
    out: Path,
) -> float:
    """Wall seconds of `wxens.run_ensemble` (random-field perturbation of rms `fraction` x
    anomaly std, Zarr store at `out`; the analyses opened, the model loaded beforehand)."""
    start = time.perf_counter()
    wxens.run_ensemble(
        emulator,
        open_analyses(analyses),
        init,
        members,
        emulator.timestep * steps,
        perturbation=wxens.random_field_perturbation(emulator, fraction),
        store=out,
        batch_size=batch,
    )
    return time.perf_counter() - start


@torch.no_grad()
def run_raw(
    emulator: SFNOEmulator, state: torch.Tensor, members: int, steps: int, batch: int
) -> float:
    """Seconds of `network(features(x))` for `members` x `steps` member-steps in batches."""
    sizes = [min(batch, members - first) for first in range(0, members, batch)]
    inputs = {size: state.expand(size, *state.shape[1:]).contiguous() for size in set(sizes)}
    network = emulator.runtime_network()  # at the config's sfno.precision, as the step runs
    network(emulator.features(inputs[sizes[0]]))  # warm-up
    start = time.perf_counter()
    for size in sizes:
        for _ in range(steps):
            network(emulator.features(inputs[size]))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/default/sfno-seed1")
    parser.add_argument("--init", default="2031-01-01T00")
    parser.add_argument("--config", default=CONFIG, help="its analyses and sfno.precision")
    parser.add_argument("--members", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="6 h steps")
    parser.add_argument("--batch", type=int, default=64, help="members per batch")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (here)")
    parser.add_argument(
        "--wxens-batch-size",
        type=int,
        default=None,
        help="wxens --batch-size, members per task (default: wxens's automatic choice)",
    )
    parser.add_argument(
        "--fraction", type=float, default=0.1, help="earth2studio noise x anomaly std"
    )
    parser.add_argument("--verbose", action="store_true", help="earth2studio's log and bars")
    args = parser.parse_args()
    if min(args.members, args.steps, args.batch, args.threads, args.wxens_batch_size or 1) < 1:
        parser.error("--members, --steps, --batch, --threads, --wxens-batch-size must be >= 1")
    torch.set_num_threads(args.threads)
    if not args.verbose:
        logger.remove()
        logger.add(sys.stderr, level="WARNING")

    config = load_config(ROOT / args.config)
    emulator = load_checkpoint(ROOT / args.checkpoint, config)
    hours = emulator.timestep / np.timedelta64(1, "h")
    lead_days = f"{args.steps * hours / 24:g}"
    init = np.datetime64(args.init, "ns")
    analyses = ROOT / config.analyses
    analysis = TruthSource(analyses)(init, list(emulator.input_variables))
    state = torch.from_numpy(analysis.values).float()  # (1, variable, lat, lon)
    member_steps = args.members * args.steps

    with tempfile.TemporaryDirectory(prefix="e2s-peer-") as tmp:
        e2s = run_earth2studio(
            emulator,
            analyses,
            init,
            args.members,
            args.steps,
            args.batch,
            args.fraction,
            Path(tmp) / "earth2studio.zarr",
            args.verbose,
        )
        wx = run_wxens(
            emulator,
            analyses,
            init,
            args.members,
            args.steps,
            args.fraction,
            args.wxens_batch_size,
            Path(tmp) / "wxens.zarr",
        )
    raw = run_raw(emulator, state, args.members, args.steps, args.batch)

    rate = member_steps / raw
    print(
        f"{args.members} members x {args.steps} steps ({lead_days} d) = {member_steps}"
        f" member-steps, batch {args.batch}, init {args.init}, {args.checkpoint},"
        f" torch {torch.__version__}, {args.threads} threads here"
    )
    print(f"{'':<26}{'seconds':>9}{'member-steps/s':>16}{'ratio to raw':>14}")
    rows = [("earth2studio run.ensemble", e2s), ("wxens.run_ensemble", wx), ("raw forward", raw)]
    for name, seconds in rows:
        throughput = member_steps / seconds
        print(f"{name:<26}{seconds:>9.2f}{throughput:>16.1f}{throughput / rate:>14.3f}")
    print(f"wxens / earth2studio member-steps/s: {e2s / wx:.3f}")


if __name__ == "__main__":
    main()
