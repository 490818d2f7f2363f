"""Member-steps per second of the SFNO forward per CPU core, float32 against `bf16-cpu`.

    python benchmarks/emulator_speed.py [--checkpoint checkpoints/default/sfno-seed1]
        [--batches 1 8 64] [--repeats 7] [--threads 1]

For each batch size it times four calls on the same input with the same weights:
- the raw torch-harmonics network in float32 (`SFNOEmulator.network`), the peer;
- its `bf16-cpu` copy (`models.cpu_bf16.matmul_network`: bfloat16 matrix products, or float32
  ones on a CPU without bfloat16 matrix units);
- `SFNOEmulator.step` at each precision (the raw network plus normalisation, residual and the
  spectral projection onto T21).
Calls alternate so that all four see the same machine load; each figure is the median over
`--repeats` timed calls after one warm-up call, with glibc keeping freed memory as `wxens`
does (`keep_freed_memory`). The last columns compare the `bf16-cpu` forward with the float32
one (target: at least 2 x; 1.3 x for the float32 matrix products of a CPU without bfloat16
matrix units, which the header says) and the bf16 step with its raw forward. CPU only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from wxens.data_pipeline.config import load_config
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.models.checkpoint import load_checkpoint
from wxens.models.cpu_bf16 import cpu_has_bf16_matrix_units

TARGETS = {True: 2.0, False: 1.3}
"""bf16-cpu forward / float32 forward, member-steps/s per core, by whether the CPU has
bfloat16 matrix units (without them `bf16-cpu` is the float32 matrix-product copy)."""


def seconds_per_call(function: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    checkpoint: str,
    batch: int,
    repeats: int,
    device: torch.device,
    precisions: tuple[str, ...] = ("float32", "bf16-cpu"),
) -> dict[str, float]:
    """Member-steps/s at `batch` members of the raw network (`raw PRECISION`) and of the
    step (`step PRECISION`) at each of `precisions` on `device`."""
    config = load_config("configs/default.yaml")
    calls = {}
    generator = torch.Generator().manual_seed(0)
    for precision in precisions:
        emulator = load_checkpoint(checkpoint, config, device)
        emulator.use_precision(precision)
        shape = (batch, len(emulator.input_variables), emulator.grid.nlat, emulator.grid.nlon)
        noise = torch.randn(shape, generator=generator).to(device)
        state = emulator.mean + emulator.std * noise
        with torch.no_grad():  # the raw network's input, made outside the timing
            features = emulator.features(state)
        network = emulator.runtime_network
        calls[f"raw {precision}"] = lambda n=network, f=features: n()(f)
        calls[f"step {precision}"] = lambda e=emulator, s=state: e.step(s)
    seconds = {name: [] for name in calls}
    with torch.no_grad():
        for call in calls.values():
            call()  # warm-up (and the bfloat16 copy of the weights)
        for _ in range(repeats):
            for name, call in calls.items():
                seconds[name].append(seconds_per_call(call, device))
    return {name: batch / statistics.median(times) for name, times in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/default/sfno-seed1")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    has_units = cpu_has_bf16_matrix_units()
    target = TARGETS[has_units]
    units = "bfloat16 matrix units" if has_units else "NO bfloat16 units: bf16-cpu runs float32"
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {units}")
    names = ("raw float32", "raw bf16-cpu", "step float32", "step bf16-cpu")
    header = "".join(f"{n:>15}" for n in names) + f"{'bf16 / fp32':>13}{'step / raw':>12}"
    print(f"{'batch':>5}{header}")
    for batch in args.batches:
        rates = measure(args.checkpoint, batch, args.repeats, torch.device("cpu"))
        speedup = rates["raw bf16-cpu"] / rates["raw float32"]
        overhead = rates["step bf16-cpu"] / rates["raw bf16-cpu"]
        verdict = "  pass" if speedup >= target else "  FAIL"
        print(
            f"{batch:>5}" + "".join(f"{rates[n]:>15.1f}" for n in names)
            + f"{speedup:>13.2f}{overhead:>12.3f}{verdict}"
        )  # fmt: skip
    print(f"member-steps/s per {args.threads} thread(s); target: bf16 / fp32 >= {target}")


if __name__ == "__main__":
    main()
