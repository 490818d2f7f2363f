"""Member-steps per second of each kind of ensemble member, as the ensemble runner steps them.

    python benchmarks/member_kinds_speed.py [--members 32] [--repeats 5]
        [--sfno checkpoints/default/sfno-seed1] [--fgn checkpoints/fgn/fgn-seed1]
        [--vae checkpoints/vae/vae-seed1]
        [--diffusion checkpoints/diffusion/diffusion-seed1]

Each kind steps `--members` members of the default world in fixed passes of
`ensemble.micro_batch` (`nwp.micro_batch` for the NWP baseline), every member with its own
noise generator, on one torch thread (the runner's setting on a CPU: one task per core). Kinds:
the SFNO, the FGN and the VAE (SFNOs with noise layers: the overhead of sampling), the
diffusion model (its sampler's 2N - 1 denoiser calls a step), the NWP baseline of
configs/demo.yaml (the T21 QG model in single precision, 90 min steps) and the predictability
limit (`truth`: the truth's T42 QG model in double precision, 30 min steps, its full state in
hidden channels). The median over
`--repeats` timed calls after one warm-up call; CPU always, CUDA too when present (whole batch
at once there).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from wxens.data_pipeline.config import load_config
from wxens.forecast.runner import micro_batch
from wxens.models.checkpoint import load_checkpoint
from wxens.models.emulator import Emulator, FixedBatchEmulator
from wxens.models.kinds import KINDS


def rate(emulator: Emulator, size: int, members: int, repeats: int, device: torch.device) -> float:
    """Member-steps/s of `emulator` in passes of `size` on `members` random states."""
    grid = emulator.grid
    channels = len(emulator.input_variables) + getattr(emulator, "hidden_channels", 0)
    state = torch.randn(members, channels, grid.nlat, grid.nlon)
    state = (state * 1e7).to(device)  # streamfunction-sized values (m2 s-1)
    state[:, len(emulator.input_variables) :] = 0  # hidden channels: none carried yet
    stepper = FixedBatchEmulator(emulator, size)
    seconds = []
    for repeat in range(repeats + 1):
        generators = [torch.Generator().manual_seed(repeat * members + k) for k in range(members)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        stepper.step(state, generator=generators)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return members / statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sfno", default="checkpoints/default/sfno-seed1")
    parser.add_argument("--fgn", default="checkpoints/fgn/fgn-seed1")
    parser.add_argument("--vae", default="checkpoints/vae/vae-seed1")
    parser.add_argument("--diffusion", default="checkpoints/diffusion/diffusion-seed1")
    args = parser.parse_args()
    config = load_config("configs/demo.yaml")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 CPU thread, {args.members} members")
    print(f"{'kind':10}{'device':>8}{'pass':>6}{'member-steps/s':>16}")
    for device in devices:
        kinds = {"sfno": args.sfno, "fgn": args.fgn, "vae": args.vae}
        kinds |= {"diffusion": args.diffusion, "nwp": None, "truth": None}
        for kind, checkpoint in kinds.items():
            if checkpoint is not None and not Path(checkpoint).exists():
                print(f"{kind:10}{device.type:>8}{'':>6}{'(no ' + checkpoint + ')':>16}")
                continue
            with torch.no_grad():
                emulator = (
                    KINDS[kind].build(config, None, device)
                    if checkpoint is None
                    else load_checkpoint(checkpoint, device=device)
                )
                size = micro_batch(config, kind if checkpoint is None else "sfno")
                speed = rate(emulator, size, args.members, args.repeats, device)
            print(f"{kind:10}{device.type:>8}{size:>6}{speed:>16.1f}")


if __name__ == "__main__":
    main()
