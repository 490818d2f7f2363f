"""Speed and memory of `wxens forecast` against the raw batched SFNO forward, in one run.

1. Runner efficiency: the ensemble of `wxens forecast` through the library
   (`run_configured_ensemble`: the config with random-field perturbations, as
   `configs/default-random-field.yaml` is default.yaml's; the four committed checkpoints,
   Zarr writes) for `--members` members and `--steps` 6 h steps, its member-steps/s as it
   reports them (the tasks alone, not start-up or the 48 h RMSE calibration), against the
   raw torch-harmonics SFNO forward (`network(features(x))`, no wrapper, no perturbation, no
   store) for the same member-steps, timed two ways on the same CPU cores:
   - `raw, one process`: batches of `--batch` with torch's default threads;
   - `raw forward, per core`: one single-threaded loop per core at the runner's micro-batch,
     side by side (how the runner itself uses the cores);
   - `raw emulator forward, per core`: the same loops over the deterministic emulator forward
     (`SFNOEmulator.forward`: the input features with their spectral gradients, the network,
     the projected tendency), the model's own work without any perturbation;
   - `raw steps, per core`: the same loops over whole emulator steps (features, network,
     perturbed tendencies, projection; the four checkpoints in turn), which tells the cost of
     the step around the network from that of the runner around the steps;
   the runner and the per-core loops alternate for `--rounds` rounds, so that all see the same
   machine load; the table gives medians and the runner's ratio to each loop by round.
2. A large ensemble: `--big-members` members (default 1000) of the default config (bred-vector
   pairs: their breeding cycles cost about a tenth more steps) for `--steps` steps, the wall
   clock of the whole call (checkpoint loading and calibration included) and the peak resident
   memory of this process.

All of it at the config's `sfno.precision` (`bf16-cpu` by default: the raw forward is then the
bfloat16 copy the runner steps). Run from the repository root after `make truth`, or on the
demo's truth after `make demo`:

    python benchmarks/ensemble_speed.py [--members 256] [--steps 20] [--big-members 1000]
    python benchmarks/ensemble_speed.py --config configs/demo.yaml --init 2031-01-16
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from wxens.data_pipeline.config import load_config, write_overlay
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.forecast.runner import RunOptions, load_models, run_configured_ensemble
from wxens.models.checkpoint import find_checkpoints
from wxens.models.emulator import FixedBatchEmulator

CHECKPOINTS = Path("checkpoints/default")


def wxens_forecast(
    config: Path, out: Path, init: np.datetime64, members: int, steps: int
) -> tuple[float, float, float]:
    """Run the config's ensemble through the library (as `wxens forecast` does); return (wall
    seconds, its task member-steps/s, peak RSS of this process so far in GB)."""
    started = time.perf_counter()
    summary = run_configured_ensemble(
        load_config(config),
        [init],
        members,
        f"{steps * 6}h",
        RunOptions(out, quiet=True),
        checkpoints=[CHECKPOINTS],
    )
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return wall, summary.member_steps_per_second, peak / 1e6


def random_fields(emulator, batch: int) -> torch.Tensor:
    """`batch` states of random fields about the streamfunctions' size (m2 s-1)."""
    grid, channels = emulator.grid, len(emulator.input_variables)
    return torch.randn(batch, channels, grid.nlat, grid.nlon) * 1e7


def timed_passes(one_pass: Callable[[int], object], batch: int, member_steps: int) -> float:
    """Seconds for the passes of `batch` members that make `member_steps`, `one_pass(n)`
    running pass n, after one warm-up pass."""
    one_pass(0)
    started = time.perf_counter()
    for n in range(-(-member_steps // batch)):
        one_pass(n)
    return time.perf_counter() - started


@torch.no_grad()
def raw_forward(emulator, batch: int, member_steps: int) -> float:
    """Seconds for `member_steps` of the bare network forward in batches of `batch`."""
    features = emulator.features(random_fields(emulator, batch))
    network = emulator.runtime_network()  # at the config's precision, as the runner steps
    return timed_passes(lambda n: network(features), batch, member_steps)


@torch.no_grad()
def raw_emulator_forward(emulator, batch: int, member_steps: int) -> float:
    """Seconds for `member_steps` of the deterministic emulator forward (features, network,
    projected tendency) in batches of `batch`."""
    state = random_fields(emulator, batch)
    return timed_passes(lambda n: emulator(state), batch, member_steps)


@torch.no_grad()
def raw_steps(emulators: list, batch: int, member_steps: int) -> float:
    """Seconds for `member_steps` of whole emulator steps (features, network, perturbed
    tendencies, projection) in passes of `batch`, the checkpoints in turn, as a task steps
    them, without the task's loop, perturbations or writes."""
    fields = random_fields(emulators[0], batch)
    hidden = fields.new_zeros(batch, emulators[0].hidden_channels, *fields.shape[2:])
    state = torch.cat([fields, hidden], 1)
    generators = [torch.Generator().manual_seed(k) for k in range(batch)]
    stepper = [FixedBatchEmulator(emulator, batch) for emulator in emulators]

    def one_pass(n: int) -> torch.Tensor:
        return stepper[n % len(stepper)].step(state, generator=generators)

    return timed_passes(one_pass, batch, member_steps)


def raw_per_core(loop_seconds: Callable[[int], float], member_steps: int, cores: int) -> float:
    """Seconds for `member_steps` split over `cores` single-threaded runs of `loop_seconds`
    (a loop over that many member-steps) side by side."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    share = -(-member_steps // cores)

    def loop() -> None:
        torch.set_num_threads(1)  # per thread: OpenMP's thread count is thread-local
        loop_seconds(share)

    workers = [threading.Thread(target=loop) for _ in range(cores)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    torch.set_num_threads(threads)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--big-members", type=int, default=1000)
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--init", default="2031-01-01T00")
    parser.add_argument("--rounds", type=int, default=3, help="runner / raw-per-core pairs")
    args = parser.parse_args()
    keep_freed_memory()  # as `wxens` does
    init = np.datetime64(args.init, "ns")
    config = load_config(args.config)
    emulators = load_models("sfno", find_checkpoints([CHECKPOINTS]), config, torch.device("cpu"))
    cores = torch.get_num_threads()
    member_steps = args.members * args.steps
    micro = config.ensemble.micro_batch
    loops = {
        f"raw forward, per core, batch {micro}": lambda n: raw_forward(emulators[0], micro, n),
        f"raw emulator forward, per core, batch {micro}": lambda n: raw_emulator_forward(
            emulators[0], micro, n
        ),
        f"raw steps, per core, batch {micro}": lambda n: raw_steps(emulators, micro, n),
    }
    rates: dict[str, list[float]] = {"wxens forecast (tasks)": [], **{name: [] for name in loops}}
    with tempfile.TemporaryDirectory() as folder:
        no_breeding = {"perturbation": {"initial": "random_field"}}
        random_field = write_overlay(Path(folder) / "random-field.yaml", args.config, no_breeding)
        for round_ in range(args.rounds):  # alternating: all see the same machine load
            out = Path(folder) / f"ens{round_}.zarr"
            forecast = wxens_forecast(random_field, out, init, args.members, args.steps)
            rates["wxens forecast (tasks)"].append(forecast[1])
            for name, loop in loops.items():
                rates[name].append(member_steps / raw_per_core(loop, member_steps, cores))
        one = member_steps / raw_forward(emulators[0], args.batch, member_steps)
        big = wxens_forecast(
            args.config, Path(folder) / "big.zarr", init, args.big_members, args.steps
        )
    print(
        f"\n{args.members} members x {args.steps} steps, 4 checkpoints, random fields,"
        f" {cores} cores, sfno.precision {config.sfno.precision}"
    )
    print(f"{'':42}{'member-steps/s':>16}{'wxens / this':>14}{'by round (median)':>30}")
    runner = np.array(rates.pop("wxens forecast (tasks)"))
    rows = {"wxens forecast (tasks)": runner, f"raw forward, one process, batch {args.batch}": one}
    for name, rate in {**rows, **rates}.items():
        by_round = runner / np.asarray(rate)
        paired = f"{', '.join(f'{r:.2f}' for r in by_round)} ({np.median(by_round):.2f})"
        paired = paired if name in rates else ""
        median = np.median(rate)
        print(f"{name:42}{median:16.1f}{np.median(runner) / median:14.2f}  {paired}")
    print(f"(medians of {args.rounds} alternating rounds)")
    wall, rate, rss = big
    print(
        f"\n{args.big_members} members x {args.steps} steps, bred vectors: {wall:.0f} s wall"
        " (loading and calibration included),"
        f" {rate:.1f} member-steps/s in the tasks, peak RSS {rss:.2f} GB"
    )


if __name__ == "__main__":
    main()
