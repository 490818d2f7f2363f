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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel
from wxens.data_pipeline.sphere import LatLonGrid
from wxens.data_pipeline.training_data import NormalisationStats
from wxens.models.emulator import Generators, member_draws
from wxens.models.kinds import EmulatorKind, register_kind
from wxens.models.losses import fair_crps
from wxens.models.settings import FGNConfig, SFNOConfig
from wxens.models.sfno import ADDITIVE_TENDENCY_SETTINGS, SFNOEmulator

if TYPE_CHECKING:
    from wxens.data_pipeline.config import ExperimentConfig, MemberKind, TrainingConfig

FORWARD = threading.local()
"""`FORWARD.conditioning`: what the noise layers of the `NoisyEmulator` forward running in this
thread read (`conditioning` sets it: the FGN's noise, the VAE's latent draw, a diffusion
denoiser's noise-level embedding): one emulator serves the ensemble runner's worker threads at
once, so it cannot live on a module."""


@contextlib.contextmanager
def conditioning(value: object) -> Iterator[None]:
    """Drive the noise layers called in this thread with `value` (`FORWARD.conditioning`)."""
    FORWARD.conditioning = value
    try:
        yield
    finally:
        FORWARD.conditioning = None


class ConditionalNorm(torch.nn.Module):
    """`norm(h) * (1 + gamma(z)) + beta(z)` per channel, `z` `(batch, dim)` this thread's
    `conditioning` (an FGN's noise, a diffusion denoiser's noise-level embedding)."""

    def __init__(self, norm: torch.nn.Module, channels: int, noise_dim: int):
        super().__init__()
        self.norm = norm
        self.modulation = torch.nn.Linear(noise_dim, 2 * channels)
        torch.nn.init.zeros_(self.modulation.weight)
        torch.nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        noise = getattr(FORWARD, "conditioning", None)
        if noise is None:
            raise RuntimeError("ConditionalNorm called outside `conditioning` (no noise)")
        scale, shift = self.modulation(noise).chunk(2, dim=-1)
        return self.norm(h) * (1 + scale[..., None, None]) + shift[..., None, None]


def add_conditional_norms(network: torch.nn.Module, channels: int, dim: int) -> None:
    """Wrap the normalisation of each of `network.blocks` (a torch-harmonics SFNO) in a
    `ConditionalNorm` driven by `dim`-dimensional conditioning vectors."""
    for block in network.blocks:
        block.norm = ConditionalNorm(block.norm, channels, dim)


def draw_noise(batch: int, shape: int | Sequence[int], generator: Generators) -> torch.Tensor:
    """`(batch, *shape)` standard normal noise on the CPU (the same numbers on any device):
    from one generator for the batch, or row k from `generator[k]` alone (`member_draws`);
    zeros for None. `shape` is one member's noise: `noise_dim` for an FGN, latent maps for a
    VAE, the initial noise of the state for a diffusion member."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if generator is None:
        return torch.zeros(batch, *shape)
    return member_draws(batch, shape, generator, _standard_normal)


def _standard_normal(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator)


NOISY_MEMBER_SETTINGS = ("noise_scale", "noise_ramp_hours", "noise_profile")
NOISY_MEMBER_SETTINGS += ADDITIVE_TENDENCY_SETTINGS
"""The `MemberKind` settings that every `NoisyEmulator` reads (`use_member_settings`)."""


class NoisyEmulator(SFNOEmulator):
    """An SFNO member that samples its step, `forward(state, noise)` with standard normal
    `noise` `(batch, *noise_shape)` (zero noise: its deterministic step): FGN, VAE and
    diffusion. Its own `settings` (a `Settings`, its kind's config section) are kept in its
    architecture under its `kind`."""

    Settings: type[BaseModel]
    noise_scale = 1.0
    """Multiplies the noise that `step` draws (`MemberKind.noise_scale`; training uses 1)."""
    noise_ramp_hours = 0.0
    """R of the noise amplitude's ramp `s min(1, h / R)` over the hours `h` a member has
    stepped (`MemberKind.noise_ramp_hours`; 0: none), the hours carried in a hidden channel."""
    noise_profile: tuple[tuple[float, float], ...] = ()
    """Knots `(hours, factor)`, sorted by hours, of a factor `p(h)` on the noise amplitude,
    linear between them and constant beyond (`MemberKind.noise_profile`; none: 1)."""
    divergence_weight = 0.0
    """The weight of `sample_step`'s divergence in the training loss (a VAE's `kl_weight`)."""

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
        self.settings = settings
        self.add_noise_layers()

    def add_noise_layers(self) -> None:
        """Add to `network` the layers through which the noise acts (zero at init)."""
        raise NotImplementedError

    @property
    def noise_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def use_member_settings(self, members: MemberKind) -> None:
        """Forecast with this kind's settings of `ensemble.kinds` (its `noise_scale`,
        `noise_ramp_hours` and `noise_profile`, and the additive perturbed tendencies'
        `tendency_*`)."""
        super().use_member_settings(members)
        self.noise_scale = members.noise_scale
        self.noise_ramp_hours = members.noise_ramp_hours
        self.noise_profile = tuple(sorted(members.noise_profile.items()))

    @property
    def noise_follows_hours(self) -> bool:
        """Whether the noise amplitude depends on the hours stepped (a ramp, R > 0, or a
        profile)."""
        return self.noise_ramp_hours > 0 or bool(self.noise_profile)

    @property
    def hidden_channels(self) -> int:
        """The hidden state channels: the perturbed tendencies' pattern where it persists
        (tau > 0), then the hours stepped where the noise or the tendencies' ramp depend on
        them."""
        return self.pattern_channels + int(self.noise_follows_hours or self.tendency_ramps)

    def noise_amplitude(self, hours: torch.Tensor) -> torch.Tensor | float:
        """`s min(1, h / R) p(h)` per member for the hours `h` stepped after this step
        (`(batch, 1, lat, lon)`, the same everywhere), shaped to scale `(batch, *noise_shape)`
        noise; `s` itself where the noise does not depend on `h` (no ramp, no profile).
        Growing noise suits members whose error starts small: a generative member with no
        initial perturbation spreads too soon under full noise."""
        if hours.shape[1] == 0 or not self.noise_follows_hours:
            return self.noise_scale
        stepped = hours[:, 0, 0, 0].float().cpu()
        amplitude = torch.full_like(stepped, self.noise_scale)
        if self.noise_ramp_hours > 0:
            amplitude = amplitude * (stepped / self.noise_ramp_hours).clamp(max=1)
        if self.noise_profile:
            knots, factors = zip(*self.noise_profile, strict=True)
            profile = np.interp(stepped.double().numpy(), knots, factors)
            amplitude = amplitude * torch.from_numpy(profile).float()
        return amplitude.reshape(-1, *[1] * len(self.noise_shape))

    @property
    def samples(self) -> int:
        """How many forecasts of each state the training CRPS compares (`settings.samples`)."""
        return self.settings.samples

    def sample_step(
        self, state: torch.Tensor, noise: torch.Tensor, target: torch.Tensor, posterior: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next state for `noise` and a divergence term (nats per latent value; zero here),
        both differentiable, as training samples it: a VAE draws its latent from its posterior
        given `target` when `posterior` (else, as here, the step ignores `target`)."""
        return self(state, noise), state.new_zeros(())

    @torch.no_grad()
    def step(self, state: torch.Tensor, *, generator: Generators = None) -> torch.Tensor:
        """One sampled step, its noise drawn from `generator` only (`Generators`) and scaled
        by `noise_amplitude`, then the additive perturbed tendencies' `P_T[a(h) r sigma_tend]`
        with the pattern `r` drawn after the noise (`SFNOEmulator`; no multiplicative part:
        the sampled tendency is not the network's alone). The hidden channels carry the
        pattern where it persists and the hours stepped (`hidden_channels`)."""
        channels = len(self.input_variables)
        persists = self.pattern_channels
        fields, pattern = state[:, :channels], state[:, channels : channels + persists]
        hours = state[:, channels + persists :] + self.timestep / np.timedelta64(1, "h")
        noise = self.noise_amplitude(hours) * draw_noise(len(state), self.noise_shape, generator)
        with self._precision(state.device):
            stepped = self.forward(fields, noise)
        if self.perturbs_tendencies and generator is not None:
            pattern = self.next_pattern(pattern, generator).to(state.device)
            added = self.tendency_additive * self.ramp(hours) * pattern * self.tendency_std
            stepped = stepped + self.project(added).to(stepped.dtype)
        if state.shape[1] == channels:  # no copy on the plain path
            return stepped
        return torch.cat([stepped, pattern[:, :persists].to(stepped), hours.to(stepped)], 1)

    def conditioned_forward(self, state: torch.Tensor, value: object) -> torch.Tensor:
        """`SFNOEmulator.forward` with `value` in `FORWARD` for its noise layers."""
        with conditioning(value):
            return SFNOEmulator.forward(self, state)

    def architecture(self) -> dict[str, Any]:
        return {**super().architecture(), self.kind: self.settings.model_dump()}

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any]) -> NoisyEmulator:
        return cls(*cls.arguments(architecture), cls.Settings(**architecture[cls.kind]))

    @classmethod
    def config_settings(cls, config: ExperimentConfig) -> tuple:
        """`sfno`, then its own section of the config (`config.<kind>`)."""
        return (config.sfno, getattr(config, cls.kind))


class FGNEmulator(NoisyEmulator):
    """A stochastic SFNO member (see the module docstring)."""

    kind = "fgn"
    Settings = FGNConfig

    @property
    def fgn(self) -> FGNConfig:
        return self.settings

    def add_noise_layers(self) -> None:
        add_conditional_norms(self.network, self.sfno.embed_dim, self.fgn.noise_dim)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.fgn.noise_dim,)

    def forward(self, state: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The next state for `noise` `(batch, noise_dim)` (zero when None), differentiable."""
        if noise is None:
            noise = draw_noise(len(state), self.noise_shape, None)
        return self.conditioned_forward(state, noise.to(state.device, torch.float32))


def sampled_rollout_terms(
    emulator: NoisyEmulator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    generator: torch.Generator | None,
    posterior: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fair_crps` `(step, channel)` of `emulator.samples` (`fgn.samples`, `vae.samples`)
    rollouts from each of `inputs` against `targets` `(batch, step, channel, lat, lon)`, the
    noise drawn from `generator`, and the divergence `(step,)` of each step
    (`NoisyEmulator.sample_step`: a VAE's KL(q || p) in nats per latent value, zero for an
    FGN). A VAE's latent comes from its posterior given each step's target when `posterior`
    (training), else from its prior (as it forecasts)."""
    samples = emulator.samples
    state, errors, divergences = inputs.repeat(samples, 1, 1, 1), [], []
    for k in range(targets.shape[1]):
        noise = draw_noise(len(state), emulator.noise_shape, generator)
        target = targets[:, k].repeat(samples, 1, 1, 1)
        state, divergence = emulator.sample_step(state, noise, target, posterior)
        members = state.unflatten(0, (samples, len(inputs)))
        errors.append(fair_crps(members, targets[:, k], weights, emulator.tendency_std))
        divergences.append(divergence)
    return torch.stack(errors), torch.stack(divergences)


def sampled_rollout_errors(
    emulator: NoisyEmulator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The training loss terms `(step, channel)` of an FGN or VAE: `sampled_rollout_terms`'
    CRPS plus `divergence_weight` (a VAE's `vae.kl_weight`) x the step's divergence in every
    channel."""
    errors, divergences = sampled_rollout_terms(emulator, inputs, targets, weights, generator)
    if emulator.divergence_weight:
        errors = errors + emulator.divergence_weight * divergences[:, None]
    return errors


def sampled_loss(
    emulator: NoisyEmulator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    training: TrainingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """A sampling kind's training loss terms (`sampled_rollout_errors`; `training.loss` is
    for deterministic kinds)."""
    return sampled_rollout_errors(emulator, inputs, targets, weights, generator)


def sampled_validation(
    emulator: NoisyEmulator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """A sampling kind's validation terms: the CRPS of `sampled_rollout_terms`, sampled as it
    forecasts (a VAE from its prior)."""
    errors, _ = sampled_rollout_terms(emulator, inputs, targets, weights, generator, False)
    return errors, {}


FGN = register_kind(
    EmulatorKind(
        name="fgn",
        title="FGN",
        emulator=FGNEmulator,
        settings=FGNConfig,
        build=FGNEmulator.from_config,
        load=FGNEmulator.from_architecture,
        loss=sampled_loss,
        validation=sampled_validation,
        score="crps",
        starts_from=("sfno",),
        member_settings=NOISY_MEMBER_SETTINGS,
        use_member_settings=FGNEmulator.use_member_settings,
    )
)
"""The FGN kind: fair CRPS of `fgn.samples` sampled rollouts per state."""
