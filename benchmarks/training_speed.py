"""Training throughput of the SFNO emulator: samples per second of one AdamW step on K-step
rollouts, by network width and batch size.

    python benchmarks/training_speed.py [--widths 64 96] [--batches 16 64] [--rollouts 1 4]
        [--threads N]

The emulator is rebuilt from a committed checkpoint's architecture (its normalisation
statistics) with the width changed; the inputs are random states of the climate's mean and
std, so the timing is the real training step of `wxens train` (forward, area-weighted loss,
backward, clipping, AdamW) without the data. The peer in the same run is the raw
torch-harmonics SFNO trained on one step with a plain MSE: the wrapper's cost over it is the
normalisation, the gradient features and the spectral projection. CUDA when present, else CPU.

On the CPU `wxens train` runs the network's matrix products on tokens
(`models.cpu_bf16.training_network`); there the table adds the same step through
torch-harmonics' own layers (`SFNOEmulator.trains_on_tokens = False`) and the ratio of the
two (target: at least 1.3 x).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from wxens.data_pipeline.provenance import default_device
from wxens.models.checkpoint import read_metadata
from wxens.models.sfno import SFNOEmulator
from wxens.models.training import rollout_errors

TARGET = 1.3
"""CPU: the step on tokens / the step through torch-harmonics' layers, samples/s."""


def steps_per_second(step, device: torch.device, repeats: int) -> float:
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return repeats / (time.perf_counter() - start)


def training_step(model, optimizer, loss_of):
    def step() -> None:
        loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    return step


def measure(architecture: dict, width: int, batch: int, rollout: int, device, repeats: int):
    architecture = {**architecture, "sfno": {**architecture["sfno"], "embed_dim": width}}
    emulator = SFNOEmulator.from_architecture(architecture).to(device)
    grid = emulator.grid
    shape = (batch, len(emulator.input_variables), grid.nlat, grid.nlon)
    state = emulator.mean + emulator.std * torch.randn(shape, device=device)
    targets = torch.stack([state] * rollout, dim=1)
    weights = torch.full((grid.nlat, grid.nlon), 1.0 / (grid.nlat * grid.nlon), device=device)
    network = emulator.network
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

    def loss(tokens: bool) -> torch.Tensor:
        emulator.trains_on_tokens = tokens
        return rollout_errors(emulator, state, targets, weights).mean()

    features = emulator.features(state).detach()
    target = torch.zeros(batch, shape[1], grid.nlat, grid.nlon, device=device)
    losses = {
        "wxens": lambda: loss(True),
        "raw 1-step": lambda: torch.nn.functional.mse_loss(network(features), target),
    }
    if device.type == "cpu":
        losses["th layers"] = lambda: loss(False)
    rates = {
        name: batch * steps_per_second(training_step(network, optimizer, of), device, repeats)
        for name, of in losses.items()
    }
    return sum(p.numel() for p in network.parameters()), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/default/sfno-seed1")
    parser.add_argument("--widths", type=int, nargs="+", default=[64])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rollouts", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = default_device()
    architecture = read_metadata(Path(args.checkpoint))["architecture"]
    print(f"torch {torch.__version__} on {device}, {args.threads} CPU thread(s)")
    header = f"{'width':>6}{'params':>10}{'batch':>6}{'rollout':>8}{'samples/s':>11}"
    cpu = f"{'th layers':>11}{'tokens / th':>13}" if device.type == "cpu" else ""
    print(f"{header}{'raw 1-step':>12}{cpu}")
    for width in args.widths:
        for batch in args.batches:
            for rollout in args.rollouts:
                count, rates = measure(architecture, width, batch, rollout, device, args.repeats)
                row = f"{width:>6}{count:>10}{batch:>6}{rollout:>8}{rates['wxens']:>11.1f}"
                row += f"{rates['raw 1-step']:>12.1f}"
                if "th layers" in rates:
                    speedup = rates["wxens"] / rates["th layers"]
                    verdict = "  pass" if speedup >= TARGET else "  FAIL"
                    row += f"{rates['th layers']:>11.1f}{speedup:>13.2f}{verdict}"
                print(row)
    print("samples/s: rollout windows per second through one training step (AdamW)")
    if device.type == "cpu":
        print(f"th layers: the same step through torch-harmonics' layers; target >= {TARGET} x")


if __name__ == "__main__":
    main()
