"""Spread, skill and speed of a diffusion member's one-step samples against its sampler's levels.

    python benchmarks/diffusion_steps.py --checkpoint CHECKPOINT --analyses STORE
        [--inits 4] [--members 8] [--steps 2 4 8 16] [--sampler heun] [--threads 1]

For each N of `--steps`, the diffusion model (`models.diffusion`) samples `--members` one-step
(6 h) forecasts of each of `--inits` analyses evenly spaced through the store, every member
with its own generator (seeded by its index), in padded passes of 8 (`FixedBatchEmulator`, as
the runner steps them), and the table gives, in units of each channel's 6 h tendency std,
averaged over channels and inits (area-weighted, square roots last):

    spread  sqrt(mean member variance, ddof=1)
    rmse    RMSE of the ensemble mean against the next analysis
    ssr     sqrt((M + 1) / M) spread / rmse  (1 for a calibrated ensemble)

and the member-steps/s. Even with an exact denoiser, Heun's discretisation of the ODE inflates
the spread at few levels (of a Gaussian's std: x 1.3-1.6 at N = 8, x 1.06-1.12 at N = 16,
tests/test_diffusion.py); Euler's deflates it; DPM-Solver++(2M) (`--sampler dpmpp_2m`, one
call a level) inflates it about as much on 16 levels as Heun does, at half the calls.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.training_data import analysis_states, area_weights
from wxens.models.checkpoint import load_checkpoint
from wxens.models.diffusion import SAMPLERS, DiffusionEmulator, denoiser_calls
from wxens.models.emulator import FixedBatchEmulator


def step_statistics(
    emulator: DiffusionEmulator,
    states: torch.Tensor,
    following: torch.Tensor,
    weights: torch.Tensor,
    members: int,
) -> dict[str, float]:
    """`spread`, `rmse`, `ssr` and `rate` (member-steps/s) of `members` samples of one step
    from each of `states` `(init, channel, lat, lon)` against `following` (see the module
    docstring)."""
    stepper = FixedBatchEmulator(emulator, 8)
    scale = emulator.tendency_std
    variance, error, seconds = 0.0, 0.0, 0.0
    for state, truth in zip(states, following, strict=True):
        generators = [torch.Generator().manual_seed(k) for k in range(members)]
        start = time.perf_counter()
        samples = stepper.step(state.expand(members, -1, -1, -1), generator=generators)
        seconds += time.perf_counter() - start
        spread = (samples / scale).var(dim=0) * weights
        miss = ((samples.mean(dim=0) - truth) / scale) ** 2 * weights
        variance += float(spread.sum(dim=(-2, -1)).mean())
        error += float(miss.sum(dim=(-2, -1)).mean())
    spread, rmse = np.sqrt(variance / len(states)), np.sqrt(error / len(states))
    return {
        "spread": spread,
        "rmse": rmse,
        "ssr": np.sqrt((members + 1) / members) * spread / rmse,
        "rate": members * len(states) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--analyses", required=True)
    parser.add_argument("--inits", type=int, default=4)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--sampler", choices=list(SAMPLERS), default="heun")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    emulator = load_checkpoint(args.checkpoint)
    if not isinstance(emulator, DiffusionEmulator):
        raise SystemExit(f"{args.checkpoint}: a checkpoint of kind {emulator.kind}, not diffusion")
    dataset = open_analyses(args.analyses)
    times = np.linspace(0, dataset.sizes["time"] - 2, args.inits).round().astype(int)
    variables = emulator.input_variables
    states = analysis_states(dataset, variables, times)
    following = analysis_states(dataset, variables, times + 1)
    lat, lon = dataset["latitude"].values, dataset["longitude"].values
    weights = torch.from_numpy(area_weights(lat, lon)).float()
    print(f"{args.members} members x {args.inits} inits, {args.sampler}, {args.threads} thread(s)")
    print(f"{'N':>4}{'calls':>7}{'spread':>9}{'rmse':>9}{'ssr':>7}{'member-steps/s':>16}")
    for steps in args.steps:
        update = {"sampler_steps": steps, "sampler": args.sampler}
        emulator.settings = emulator.diffusion.model_copy(update=update)
        calls = denoiser_calls(args.sampler, steps)
        row = step_statistics(emulator, states, following, weights, args.members)
        print(
            f"{steps:>4}{calls:>7}{row['spread']:>9.4f}{row['rmse']:>9.4f}{row['ssr']:>7.3f}"
            f"{row['rate']:>16.1f}"
        )


if __name__ == "__main__":
    main()
