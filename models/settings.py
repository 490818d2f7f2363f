"""Settings of the models (the `sfno:`, `fgn:`, `vae:`, `diffusion:` and `training:` sections of
an experiment config), validated by pydantic.

A leaf module: pydantic only. `data_pipeline.config` assembles them into `ExperimentConfig`
(a member kind's section through the kind registry, `models.kinds`), and re-exports them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveFloat = Annotated[float, Field(gt=0)]

Sampler = Literal["heun", "euler", "dpmpp_2m"]
"""A diffusion member's ODE sampler (`models.diffusion.SAMPLERS`)."""


class Strict(BaseModel):
    """A settings section: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SFNOConfig(Strict):
    """Architecture of the SFNO emulator (torch-harmonics `SphericalFourierNeuralOperator`).

    The network keeps spherical-harmonic degrees below `grid.truncation + 1` inside its spectral
    convolutions (on an internal grid `scale_factor` times coarser than the model grid).

    With `gradient_features`, each field's gradient components enter beside it. The SFNO's
    spectral convolutions are isotropic (one weight per degree l), so they cannot form the
    directional derivatives that advection needs; given the gradient, they can (the Laplacian
    commutes with d/dlambda), and the MLPs can multiply winds by gradients.
    """

    embed_dim: int = Field(64, ge=1)
    num_layers: int = Field(4, ge=1)
    scale_factor: int = Field(1, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    pos_embed: Literal["none", "learnable lat", "learnable latlon", "spectral"] = "learnable lat"
    gradient_features: bool = True  # also feed the fields' exact spectral gradients
    precision: Literal["float32", "tf32", "bf16", "bf16-cpu"] = "bf16-cpu"
    """The forward pass's arithmetic: `tf32` and `bf16` (autocast) apply on CUDA only;
    `bf16-cpu` (the default) runs the blocks' spectral convolutions and MLPs as bfloat16
    matrix products on a CPU with bfloat16 matrix units (`models.cpu_bf16`: 3 x float32's
    member-steps/s, fair CRPS within 0.4 % on the demo's test period); on other CPUs the
    same matrix products in float32 (1.6-2.1 x torch-harmonics' forward, with a one-line
    warning, once); float32 on CUDA.
    A run-time choice: a forecast takes it from its config, whatever its checkpoints were
    trained with; `bf16-cpu` applies to every pass outside autograd (forecasts, validation),
    never to the gradient steps of training."""


class FGNConfig(Strict):
    """The FGN emulator (`models.fgn`): an SFNO (`sfno`) whose blocks `noise_dim`-dimensional
    noise modulates; `wxens train --model fgn` minimises the fair CRPS of `samples` forecasts
    of each training state (the FGN paper uses 2)."""

    noise_dim: int = Field(32, ge=1)
    samples: int = Field(2, ge=2)


class VAEConfig(Strict):
    """The VAE emulator (`models.vae`; FuXi-ENS, Zhong et al. 2024, arXiv:2405.05925): an SFNO
    whose hidden state after the encoder is perturbed, point by point, by a latent field of
    `latent_channels` maps, drawn from a prior p(z | x_t) when it forecasts and from a
    posterior q(z | x_t, x_t+dt) when it trains. `wxens train --model vae` minimises the fair
    CRPS of `samples` forecasts of each training state plus `kl_weight` x KL(q || p) in nats
    per latent value. Both terms are averages per grid point (the CRPS in units of the 6 h
    tendency std: about 0.2 for the default SFNO over 24 h), so their balance does not depend
    on the grid. At 0.01, a posterior with half the prior's std (0.32 nat per value) costs
    0.003, a few percent of the CRPS: it may carry what the target tells about the step where
    that lowers the CRPS by more, and the KL pulls the prior toward it. Near 1 the KL
    would dominate and collapse the posterior onto the prior (an FGN with local noise); at 0
    nothing would tie the prior, which forecasts, to the posterior, which trains."""

    latent_channels: int = Field(8, ge=1)
    samples: int = Field(2, ge=2)
    kl_weight: float = Field(0.01, ge=0)


class DiffusionConfig(Strict):
    """The diffusion emulator (`models.diffusion`, EDM; Karras et al. 2022, arXiv:2206.00364):
    an SFNO (`sfno`) denoiser of the normalised 6 h tendency, its noise level sigma entering
    through a sinusoidal embedding of `noise_embedding` numbers. Sampling: `sampler` (`heun`,
    EDM's 2nd order; `euler`, 1st order, DDIM-like; `dpmpp_2m`, DPM-Solver++(2M), 2nd order
    with one denoiser call a level) on `sampler_steps` levels from `sigma_max`
    to `sigma_min` spaced as `rho`; training draws ln sigma ~ N(`p_mean`, `p_std`^2) and adds
    to each conditioning state white noise of `input_noise` times each channel's 6 h tendency
    std (projected to the truncation; 0: none), its target still the true next state, so the
    denoiser learns to remove such errors rather than carry them forward (the noise injection
    of Sanchez-Gonzalez et al. 2020, arXiv:2002.09405, for stable rollouts); validation scores
    the fair CRPS of `samples` forecasts of each state.

    With `mean_network` (the `sfno` settings of a deterministic SFNO checkpoint), the member's
    tendency is that frozen SFNO's plus a sampled correction, and the denoiser learns only the
    correction (regression plus residual diffusion); `wxens train --init-from` the SFNO
    checkpoint supplies its weights (its `precision` is ignored: the mean network runs at
    the member's `sfno.precision`). `sigma_data` is the std of what is denoised, in units of
    the 6 h tendency std: 1 for the whole tendency, the SFNO's 6 h error for a correction."""

    sampler_steps: int = Field(8, ge=2)
    sampler: Sampler = "heun"
    sigma_min: PositiveFloat = 0.002
    sigma_max: PositiveFloat = 80.0
    rho: PositiveFloat = 7.0
    p_mean: float = -1.2
    p_std: PositiveFloat = 1.2
    noise_embedding: int = Field(32, ge=2, multiple_of=2)
    input_noise: float = Field(0.0, ge=0)
    samples: int = Field(2, ge=2)
    mean_network: SFNOConfig | None = None
    sigma_data: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _levels_ordered(self) -> DiffusionConfig:
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min {self.sigma_min} must be below sigma_max {self.sigma_max}")
        return self


class TrainingConfig(Strict):
    """`wxens train`: AdamW with linear warm-up then cosine decay, area-weighted MSE.

    `rollout_schedule` maps an epoch (counting from 0) to the length of the autoregressive
    rollouts trained on from that epoch on (1 before its first entry), a curriculum such as
    `{0: 1, 40: 2, 50: 4}`; `samples_per_epoch` draws a random subset of the training pairs
    each epoch (all of them when null). Validation is the area-weighted RMSE over
    `validation_lead_steps` steps from `validation_inits` evenly spaced validation-year inits.
    """

    batch_size: int = Field(32, ge=1)
    epochs: int = Field(8, ge=1)
    samples_per_epoch: int | None = Field(None, ge=1)
    learning_rate: PositiveFloat = 2e-3
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    rollout_schedule: dict[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]] = {0: 1}
    loss: Literal["mse", "amse"] = "mse"  # amse: models.training.adjusted_mse (sharper)
    validation_inits: int = Field(64, ge=1)
    validation_lead_steps: int = Field(4, ge=1)
    threads: int | None = Field(None, ge=1)  # torch CPU threads; null: torch's default
