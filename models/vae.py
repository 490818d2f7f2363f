"""VAE members: an SFNO whose hidden state a conditional VAE's latent field perturbs.

After FuXi-ENS (Zhong et al. 2024, "FuXi-ENS: A machine learning model for medium-range
ensemble weather forecasting", arXiv:2405.05925): each step draws a latent field `z` of
`vae.latent_channels` maps on the grid, and the SFNO's hidden state after its encoder becomes,
point by point,

    h' = encoder(f) + W z        (W a 1x1 convolution to `embed_dim` channels, zero at init)

with `f` the emulator's normalised features. When it forecasts, `z` comes from the prior
`p(z | x_t) = N(mu_p, sigma_p^2)`; when it trains, from the posterior
`q(z | x_t, x_t+dt) = N(mu_q, sigma_q^2)`, which also sees the normalised 6 h tendency to the
target. Both are small pointwise networks (1x1 convolutions) whose output layers start at zero
(`N(0, I)`). Training (`models.training`) minimises the fair CRPS of `vae.samples` posterior
samples per state plus `vae.kl_weight` x KL(q || p) (`gaussian_kl`), which pulls the prior
toward what the posterior learns. As `W` starts at zero, an untrained VAE is its backbone SFNO
bitwise, and it can start from an SFNO checkpoint (`wxens train --model vae --init-from`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from wxens.models.fgn import (
    FORWARD,
    NOISY_MEMBER_SETTINGS,
    NoisyEmulator,
    draw_noise,
    sampled_loss,
    sampled_rollout_terms,
)
from wxens.models.kinds import EmulatorKind, register_kind
from wxens.models.settings import VAEConfig


class Gaussian(NamedTuple):
    """A diagonal Gaussian: `mean` and `log_std`, each `(batch, latent, lat, lon)`."""

    mean: torch.Tensor
    log_std: torch.Tensor

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """`mean + std * noise` (the reparameterisation trick: differentiable in both)."""
        return self.mean + self.log_std.exp() * noise


def gaussian_kl(q: Gaussian, p: Gaussian) -> torch.Tensor:
    """KL(q || p) in nats, averaged over every latent value (batch, channel and grid point):

        KL = log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2

    the closed form for two normal distributions, summed over independent dimensions."""
    ratio = (2 * (q.log_std - p.log_std)).exp()
    distance = (q.mean - p.mean) ** 2 / (2 * p.log_std.exp() ** 2)
    return (p.log_std - q.log_std + ratio / 2 + distance - 0.5).mean()


class LatentNetwork(torch.nn.Sequential):
    """A pointwise network, `inputs` channels to a `Gaussian` of `latent` channels: a 1x1
    convolution to `hidden` channels, GELU, a 1x1 convolution (zero at init: N(0, I))."""

    def __init__(self, inputs: int, hidden: int, latent: int):
        output = torch.nn.Conv2d(hidden, 2 * latent, 1)
        torch.nn.init.zeros_(output.weight)
        torch.nn.init.zeros_(output.bias)
        super().__init__(torch.nn.Conv2d(inputs, hidden, 1), torch.nn.GELU(), output)

    def forward(self, inputs: torch.Tensor) -> Gaussian:
        return Gaussian(*super().forward(inputs).chunk(2, dim=1))


@dataclass
class LatentDraw:
    """What the `VAEEmulator` forward running in this thread asks of its `LatentEncoder`
    (through `models.fgn.FORWARD`), and what the encoder reports back (`kl`)."""

    noise: torch.Tensor  # (batch, latent, lat, lon) standard normal; zeros: z is the mean
    tendency: torch.Tensor | None = None  # the normalised tendency to the target: posterior
    posterior: bool = False  # z from the posterior (training) rather than the prior
    kl: torch.Tensor | None = None  # out: KL(q || p) per latent value, when `tendency` is set


class LatentEncoder(torch.nn.Sequential):
    """The backbone's encoder, then `+ projection(z)` (see the module docstring).

    It holds the encoder's layers under their own names, so an SFNO's weights load into it
    unchanged, then the `prior`, `posterior` and zero-initialised `projection` (which are not
    encoder layers: `forward` runs only the first `depth` modules as the encoder).
    """

    def __init__(self, encoder: torch.nn.Sequential, tendencies: int, latent: int):
        super().__init__(*encoder)
        self.depth = len(encoder)
        features, hidden = encoder[0].in_channels, encoder[-1].out_channels
        self.prior = LatentNetwork(features, hidden, latent)
        self.posterior = LatentNetwork(features + tendencies, hidden, latent)
        self.projection = torch.nn.Conv2d(latent, hidden, 1, bias=False)
        torch.nn.init.zeros_(self.projection.weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        draw: LatentDraw | None = getattr(FORWARD, "conditioning", None)
        if draw is None:
            raise RuntimeError("LatentEncoder called without a latent draw (use VAEEmulator)")
        hidden = features
        for layer in list(self)[: self.depth]:
            hidden = layer(hidden)
        prior = self.prior(features)
        chosen = prior
        if draw.tendency is not None:
            posterior = self.posterior(torch.cat([features, draw.tendency], dim=1))
            draw.kl = gaussian_kl(posterior, prior)
            chosen = posterior if draw.posterior else prior
        return hidden + self.projection(chosen.sample(draw.noise))


class VAEEmulator(NoisyEmulator):
    """A stochastic SFNO member perturbed by a conditional VAE (see the module docstring)."""

    kind = "vae"
    Settings = VAEConfig

    @property
    def vae(self) -> VAEConfig:
        return self.settings

    @property
    def divergence_weight(self) -> float:
        """The KL's weight in the training loss, `vae.kl_weight`."""
        return self.vae.kl_weight

    def add_noise_layers(self) -> None:
        tendencies, latent = len(self.input_variables), self.vae.latent_channels
        self.network.encoder = LatentEncoder(self.network.encoder, tendencies, latent)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.vae.latent_channels, self.grid.nlat, self.grid.nlon)

    def forward(self, state: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The next state with `z = mu_p + sigma_p * noise` from the prior (`noise`
        `(batch, *noise_shape)`; None: `z = mu_p`), differentiable."""
        if noise is None:
            noise = draw_noise(len(state), self.noise_shape, None)
        return self._run(state, LatentDraw(noise))

    def sample(
        self, state: torch.Tensor, noise: torch.Tensor, target: torch.Tensor, posterior: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next state with `z` from the posterior given `target` (else the prior) for
        `noise`, and KL(q || p) per latent value (nats), both differentiable (training)."""
        tendency = ((target - state) - self.tendency_mean) / self.tendency_std
        draw = LatentDraw(noise, tendency.float(), posterior)
        return self._run(state, draw), draw.kl

    def sample_step(
        self, state: torch.Tensor, noise: torch.Tensor, target: torch.Tensor, posterior: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`sample`: as training samples a step (`NoisyEmulator.sample_step`)."""
        return self.sample(state, noise, target, posterior)

    def _run(self, state: torch.Tensor, draw: LatentDraw) -> torch.Tensor:
        draw.noise = draw.noise.to(state.device, torch.float32)
        return self.conditioned_forward(state, draw)


def vae_validation(
    emulator: VAEEmulator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The VAE's validation terms: the CRPS of rollouts sampled from its prior, as it
    forecasts, and `kl`, its mean KL(q || p) in nats per latent value."""
    errors, kl = sampled_rollout_terms(emulator, inputs, targets, weights, generator, False)
    return errors, {"kl": float(kl.mean())}


VAE = register_kind(
    EmulatorKind(
        name="vae",
        title="VAE",
        emulator=VAEEmulator,
        settings=VAEConfig,
        build=VAEEmulator.from_config,
        load=VAEEmulator.from_architecture,
        loss=sampled_loss,
        validation=vae_validation,
        score="crps",
        starts_from=("sfno",),
        member_settings=NOISY_MEMBER_SETTINGS,
        use_member_settings=VAEEmulator.use_member_settings,
    )
)
"""The VAE kind: fair CRPS of `vae.samples` posterior rollouts plus `vae.kl_weight` x KL."""
