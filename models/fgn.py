"""FGN members: an SFNO whose blocks are modulated by noise, trained on the fair CRPS.

A functional generative network (FGN; Alet et al. 2025, "Skillful joint probabilistic weather
forecasting from marginals", arXiv:2506.10772) samples the next state itself: each step draws a
noise vector `z ~ N(0, I_d)` per member, and every SFNO block's normalisation output `h`
becomes, channel by channel,

    h' = h * (1 + gamma_b(z)) + beta_b(z)

(conditional normalisation), with `gamma_b`, `beta_b` linear in `z` and zero at initialisation:
an untrained FGN is its backbone SFNO, so it can start from an SFNO checkpoint
(`wxens train --model fgn --init-from`). The noise is global (one vector per member and step);
the network turns it into spatially coherent perturbations. Training minimises the fair CRPS of
K samples per step (`models.training`), which rewards calibrated spread as well as skill.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel

from data_pipeline.config import FGNConfig, SFNOConfig
from data_pipeline.sphere import LatLonGrid
from data_pipeline.training_data import NormalisationStats
from models.emulator import Generators
from models.sfno import SFNOEmulator, build_network

_FORWARD = threading.local()
"""The conditioning vector of the forward running in this thread (`conditioning` sets it: an
FGN's noise, a diffusion denoiser's noise-level embedding): one emulator serves the ensemble
runner's worker threads at once, so it cannot live on a module."""


@contextlib.contextmanager
def conditioning(vector: torch.Tensor) -> Iterator[None]:
    """Drive every `ConditionalNorm` called in this thread with `vector` `(batch, dim)`."""
    _FORWARD.noise = vector
    try:
        yield
    finally:
        _FORWARD.noise = None


def add_conditional_norms(network: torch.nn.Module, channels: int, dim: int) -> None:
    """Wrap the normalisation of each of `network.blocks` (a torch-harmonics SFNO) in a
    `ConditionalNorm` driven by `dim`-dimensional conditioning vectors."""
    for block in network.blocks:
        block.norm = ConditionalNorm(block.norm, channels, dim)


class ConditionalNorm(torch.nn.Module):
    """`norm(h) * (1 + gamma(z)) + beta(z)` per channel, `z` this thread's `conditioning`
    vector (zero-initialised `gamma`, `beta`: the plain `norm` at first)."""

    def __init__(self, norm: torch.nn.Module, channels: int, noise_dim: int):
        super().__init__()
        self.norm = norm
        self.modulation = torch.nn.Linear(noise_dim, 2 * channels)
        torch.nn.init.zeros_(self.modulation.weight)
        torch.nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        noise = getattr(_FORWARD, "noise", None)
        if noise is None:
            raise RuntimeError("ConditionalNorm called outside `conditioning` (no noise)")
        scale, shift = self.modulation(noise).chunk(2, dim=-1)
        return self.norm(h) * (1 + scale[..., None, None]) + shift[..., None, None]


def draw_noise(batch: int, noise_dim: int | Sequence[int], generator: Generators) -> torch.Tensor:
    """`(batch, *noise_dim)` standard normal noise on the CPU (the same numbers on any device):
    from one generator for the batch, or row k from `generator[k]` alone; zeros for None."""
    shape = (noise_dim,) if isinstance(noise_dim, int) else tuple(noise_dim)
    if generator is None:
        return torch.zeros(batch, *shape)
    if isinstance(generator, torch.Generator):
        return torch.randn(batch, *shape, generator=generator)
    if len(generator) != batch:
        raise ValueError(f"{len(generator)} generators for a batch of {batch} members")
    return torch.stack([torch.randn(*shape, generator=g) for g in generator])


class SampledEmulator(SFNOEmulator):
    """An SFNO-based member that samples its step from noise drawn per member (FGN, diffusion).

    A subclass names its config section (`section`, e.g. "fgn") and that section's model
    (`settings_type`), kept as the attribute of that name; the size of the conditioning
    vectors its `ConditionalNorm`s take (`conditioning_dim`); whether the network takes as many
    extra input channels as there are variables (`noisy_inputs`: a denoiser's noisy state); the
    `noise_shape` of one member's step; and `forward(state, noise)`, noise `(batch,
    *noise_shape)`, zero for None.
    """

    section: ClassVar[str]
    settings_type: ClassVar[type[BaseModel]]
    noisy_inputs: ClassVar[bool] = False

    def __init__(
        self,
        grid: LatLonGrid,
        truncation: int,
        variables: Sequence[str],
        stats: NormalisationStats,
        sfno: SFNOConfig,
        settings: BaseModel,
    ):
        super().__init__(grid, truncation, variables, stats, sfno)
        setattr(self, self.section, settings)
        if self.noisy_inputs:
            channels = len(variables)
            self.network = build_network(grid, channels, sfno, truncation, channels)
        add_conditional_norms(self.network, sfno.embed_dim, self.conditioning_dim)

    @property
    def settings(self) -> Any:
        """This member's config section (`FGNConfig`, `DiffusionConfig`)."""
        return getattr(self, self.section)

    @property
    def conditioning_dim(self) -> int:
        raise NotImplementedError

    @property
    def noise_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def samples(self) -> int:
        """How many forecasts of each state the CRPS compares (the section's `samples`)."""
        return self.settings.samples

    @torch.no_grad()
    def step(self, state: torch.Tensor, *, generator: Generators = None) -> torch.Tensor:
        """One sampled step, its noise drawn from `generator` only (`Generators`)."""
        noise = draw_noise(len(state), self.noise_shape, generator)
        with self._precision(state.device):
            return self.forward(state, noise)

    def architecture(self) -> dict[str, Any]:
        return {**super().architecture(), self.section: self.settings.model_dump()}

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any]) -> SampledEmulator:
        settings = cls.settings_type(**architecture[cls.section])
        return cls(*cls.arguments(architecture), settings)


class FGNEmulator(SampledEmulator):
    """A stochastic SFNO member (see the module docstring)."""

    kind = "fgn"
    section = "fgn"
    settings_type = FGNConfig

    @property
    def conditioning_dim(self) -> int:
        """The noise vector's size, `fgn.noise_dim`."""
        return self.fgn.noise_dim

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """One member's noise of one step: `(noise_dim,)`."""
        return (self.fgn.noise_dim,)

    def forward(self, state: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The next state for `noise` `(batch, noise_dim)` (zero when None), differentiable."""
        if noise is None:
            noise = draw_noise(len(state), self.fgn.noise_dim, None)
        with conditioning(noise.to(state.device, torch.float32)):
            return super().forward(state)
