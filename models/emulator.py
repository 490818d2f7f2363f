"""The `Emulator` protocol: one model step of 6 h (or `timestep`) on a batch of states.

Every member kind (SFNO, the coarse NWP baseline, diffusion, VAE) satisfies it, so the ensemble
runner and the skill evaluation never need to know which one they drive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from data_pipeline.sphere import LatLonGrid


@runtime_checkable
class Emulator(Protocol):
    """A model that advances physical fields by one `timestep`.

    `state` is `(batch, channel, latitude, longitude)` in physical units, channels in
    `input_variables` order, on `grid`; `step` returns the state one `timestep` later in the same
    layout. A stochastic emulator draws its noise only from `generator`.
    """

    input_variables: tuple[str, ...]
    grid: LatLonGrid
    timestep: np.timedelta64

    def step(
        self, state: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


def rollout(
    emulator: Emulator,
    state: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the states after 1, 2, ..., `steps` steps of `emulator` from `state`."""
    for _ in range(steps):
        state = emulator.step(state, generator=generator)
        yield state


class FixedBatchEmulator:
    """`emulator` stepped in forward passes of exactly `size` members on the CPU.

    CPU kernels (oneDNN convolutions, MKL FFTs) pick their algorithm by shape, and a member's
    numbers then depend on how many others share its batch (a batch of 1 and of 64 differ in
    the last bits). Padding every pass to `size` (with copies of the last member) makes each
    member's result depend on its own state alone. On other devices it steps the whole batch.
    """

    def __init__(self, emulator: Emulator, size: int):
        self.emulator = emulator
        self.size = size
        self.input_variables = emulator.input_variables
        self.grid = emulator.grid
        self.timestep = emulator.timestep

    def step(
        self, state: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if state.device.type != "cpu":
            return self.emulator.step(state, generator=generator)
        parts = []
        for start in range(0, len(state), self.size):
            part = state[start : start + self.size]
            count = len(part)
            padding = part[-1:].expand(self.size - count, *part.shape[1:])
            stepped = self.emulator.step(torch.cat([part, padding]), generator=generator)
            parts.append(stepped[:count])
        return torch.cat(parts)
