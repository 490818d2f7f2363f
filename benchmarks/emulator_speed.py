"""Member-steps per second of `SFNOEmulator.step` against the raw torch-harmonics SFNO forward.

    python benchmarks/emulator_speed.py [--checkpoint checkpoints/default/sfno-seed1]
        [--batches 1 16 64] [--repeats 7]

Both run the same network with the same weights on the same input; the wrapper adds the
normalisation, the residual and the spectral projection onto T21. Calls alternate (wrapper, raw,
wrapper, ...) so that both see the same machine load; each figure is the median over
`--repeats` timed calls after one warm-up call. CPU always; CUDA too when present.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from wxens.data_pipeline.config import load_config
from wxens.models.checkpoint import load_checkpoint

ACCEPTANCE = 0.95  # wrapper / raw at batch 64


def seconds_per_call(function: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(checkpoint: str, batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    config = load_config("configs/default.yaml")
    emulator = load_checkpoint(checkpoint, config, device)
    state = emulator.mean + emulator.std * torch.randn(
        batch, len(emulator.input_variables), emulator.grid.nlat, emulator.grid.nlon, device=device
    )
    wrapper, raw = [], []
    with torch.no_grad():
        features = emulator.features(state)  # the raw network's input, made outside the timing
        emulator.step(state), emulator.network(features)  # warm-up
        for _ in range(repeats):
            wrapper.append(seconds_per_call(lambda: emulator.step(state), device))
            raw.append(seconds_per_call(lambda: emulator.network(features), device))
    return {
        "wrapper": batch / statistics.median(wrapper),
        "raw": batch / statistics.median(raw),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/default/sfno-seed1")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':8}{'batch':>6}{'wxens step':>14}{'raw SFNO':>12}{'ratio':>8}")
    for device in devices:
        for batch in args.batches:
            rates = measure(args.checkpoint, batch, args.repeats, device)
            ratio = rates["wrapper"] / rates["raw"]
            verdict = "" if batch != 64 else ("  pass" if ratio >= ACCEPTANCE else "  FAIL")
            print(
                f"{device.type:8}{batch:>6}{rates['wrapper']:>14.1f}{rates['raw']:>12.1f}"
                f"{ratio:>8.3f}{verdict}"
            )
    print(f"member-steps/s; acceptance: ratio >= {ACCEPTANCE} at batch 64")


if __name__ == "__main__":
    main()
