"""The `Emulator` protocol: one model step of 6 h (or `timestep`) on a batch of states.

Every member kind (SFNO, the coarse NWP baseline, diffusion, VAE) satisfies it, so the ensemble
runner and the skill evaluation never need to know which one they drive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from wxens.data_pipeline.sphere import LatLonGrid

Generators = torch.Generator | Sequence[torch.Generator] | None
"""What a stochastic emulator draws its noise from: one generator for the whole batch, or one
per member (member k's noise from `generator[k]` alone, whatever else shares its batch). With
None it steps deterministically (an FGN with zero noise), as bred-vector breeding and skill
scores need. Deterministic emulators ignore it."""


def member_draws(
    batch: int,
    shape: tuple[int, ...],
    generator: torch.Generator | Sequence[torch.Generator],
    draw: Callable[[tuple[int, ...], torch.Generator], torch.Tensor],
) -> torch.Tensor:
    """`(batch, *shape, ...)` random numbers, `draw(shape, g)` for one member: the whole batch
    from one generator, or row k from `generator[k]` alone (so that a member's draws do not
    depend on the batch it is stepped in)."""
    if isinstance(generator, torch.Generator):
        return draw((batch, *shape), generator)
    if len(generator) != batch:
        raise ValueError(f"{len(generator)} generators for a batch of {batch} members")
    return torch.stack([draw(shape, g) for g in generator])


@runtime_checkable
class Emulator(Protocol):
    """A model that advances physical fields by one `timestep`.

    `state` is `(batch, channel, latitude, longitude)` in physical units, channels in
    `input_variables` order, on `grid`; `step` returns the state one `timestep` later in the same
    layout. A stochastic emulator draws its noise only from `generator` (`Generators`).

    Optional: `hidden_channels: int`, extra channels after the fields in which the emulator
    keeps its own state from one step to the next (the truth model's full-resolution state);
    the runner appends them, zero, to the first state it steps, and stores only the fields.
    """

    input_variables: tuple[str, ...]
    grid: LatLonGrid
    timestep: np.timedelta64

    def step(self, state: torch.Tensor, *, generator: Generators = None) -> torch.Tensor: ...


def rollout(
    emulator: Emulator, state: torch.Tensor, steps: int, generator: Generators = None
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
        self.hidden_channels = getattr(emulator, "hidden_channels", 0)

    def step(self, state: torch.Tensor, *, generator: Generators = None) -> torch.Tensor:
        """Step `state`; with one generator per member, each pass gets its members' generators
        (and fresh ones for its padding, so that no member's stream advances twice)."""
        if state.device.type != "cpu":
            return self.emulator.step(state, generator=generator)
        parts = []
        for start in range(0, len(state), self.size):
            part = state[start : start + self.size]
            count = len(part)
            padding = part[-1:].expand(self.size - count, *part.shape[1:])
            generators = generator
            if generator is not None and not isinstance(generator, torch.Generator):
                padding_generators = [torch.Generator() for _ in range(self.size - count)]
                generators = [*generator[start : start + count], *padding_generators]
            stepped = self.emulator.step(torch.cat([part, padding]), generator=generators)
            parts.append(stepped[:count])
        return torch.cat(parts)
