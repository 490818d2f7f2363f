"""Member-steps per second of an SFNO training step on the CPU: torch-harmonics' own layers
against the token-layout view that `wxens train` runs (`models.cpu_bf16.training_network`).

    python benchmarks/training_speed.py [--checkpoint checkpoints/default/sfno-seed1]
        [--batches 8 32] [--steps 4] [--repeats 5] [--threads 2]

A training step as `wxens train` takes it for a deterministic SFNO: a `--steps`-step rollout
of `--batch` members, its AMSE loss (`models.losses.rollout_errors`), the backward pass and
an AdamW update, on states drawn about the checkpoint's climatology. The two layouts
alternate, on the same weights and inputs, so that both see the same machine load; each
figure is the median over `--repeats` timed steps after one warm-up step. The peer is
torch-harmonics' SFNO (`SFNOEmulator.trains_on_tokens = False`); target: the view at least
1.3 x its member-steps/s. The last column is the loss's relative difference between the
two (float32 round-off). CPU only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.models.checkpoint import load_checkpoint
from wxens.models.losses import rollout_errors

TARGET = 1.3
"""Token-layout training view / torch-harmonics' layers, member-steps/s."""

LAYOUTS = {"torch-harmonics": False, "tokens": True}
"""Column name: `SFNOEmulator.trains_on_tokens`."""


def measure(checkpoint: str, batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Member-steps/s (`batch * steps` over a step's seconds) of each of `LAYOUTS`, and the
    loss's relative difference between them (`difference`)."""
    generator = torch.Generator().manual_seed(0)
    emulators, losses, seconds = {}, {}, {name: [] for name in LAYOUTS}
    for name, tokens in LAYOUTS.items():
        emulator = load_checkpoint(checkpoint).train()
        emulator.trains_on_tokens = tokens
        emulators[name] = (emulator, torch.optim.AdamW(emulator.network.parameters(), 1e-6))
    emulator = emulators["tokens"][0]
    shape = (batch, len(emulator.input_variables), emulator.grid.nlat, emulator.grid.nlon)
    inputs = emulator.mean + emulator.std * torch.randn(shape, generator=generator)
    targets = inputs[:, None] + 0.1 * emulator.std * torch.randn(
        (batch, steps, *shape[1:]), generator=generator
    )
    weights = torch.full(shape[2:], 1.0 / (shape[2] * shape[3]))

    def train_step(name: str) -> float:
        model, optimizer = emulators[name]
        start = time.perf_counter()
        loss = rollout_errors(model, inputs, targets, weights, "amse").mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.setdefault(name, float(loss.detach()))  # the first: the same weights
        return time.perf_counter() - start

    for name in LAYOUTS:
        train_step(name)  # warm-up
    for _ in range(repeats):
        for name in LAYOUTS:
            seconds[name].append(train_step(name))
    rates = {name: batch * steps / statistics.median(times) for name, times in seconds.items()}
    reference = losses["torch-harmonics"]
    return {**rates, "difference": abs(losses["tokens"] - reference) / abs(reference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/default/sfno-seed1")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {args.steps}-step rollouts")
    header = "".join(f"{name:>17}" for name in LAYOUTS)
    print(f"{'batch':>5}{header}{'tokens / th':>13}{'loss diff':>11}")
    for batch in args.batches:
        rates = measure(args.checkpoint, batch, args.steps, args.repeats)
        speedup = rates["tokens"] / rates["torch-harmonics"]
        verdict = "  pass" if speedup >= TARGET else "  FAIL"
        print(
            f"{batch:>5}" + "".join(f"{rates[name]:>17.1f}" for name in LAYOUTS)
            + f"{speedup:>13.2f}{rates['difference']:>11.1e}{verdict}"
        )  # fmt: skip
    print(f"member-steps/s of training (forward, backward, AdamW); target: tokens / th >= {TARGET}")


if __name__ == "__main__":
    main()
