"""Diffusion members (the GenCast family): the next state sampled from a conditional denoiser.

A diffusion member (Price et al. 2024, "GenCast: Diffusion-based ensemble forecasting for
medium-range weather", arXiv:2312.15796) samples the normalised 6 h tendency of the SFNO's
step (`models.sfno`),

    r = (x(t + dt) - x(t) - mu_tend) / sigma_tend,   x(t + dt) = x(t) + P_T[sigma_tend r + mu_tend],

from p(r | x(t)) with the EDM formulation (Karras et al. 2022, "Elucidating the design space
of diffusion-based generative models", arXiv:2206.00364). Its denoiser is preconditioned as

    D(r; sigma) = c_skip r + c_out F(c_in r, features(x(t)); c_noise),
    c_skip = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),    c_noise = ln(sigma) / 4,

with `sd = sigma_data` (`diffusion.sigma_data`: 1 for `r`, which is normalised; the
correction's std for a residual member, below). `F` is the torch-harmonics SFNO
(`models.sfno.build_network`) fed the noisy residual beside the state's features (the
normalised state and its gradients); `c_noise` enters every block's normalisation through a
sinusoidal embedding and `models.fgn.ConditionalNorm` (as an FGN's noise does). Training
draws `ln sigma ~ N(P_mean, P_std^2)` and minimises the area-weighted

    L = E[lambda(sigma) |D(r + sigma n; sigma) - r|^2],  lambda = (sigma^2 + sd^2) / (sigma sd)^2,

its conditioning state `x(t) + P_T[a sigma_tend m]` with white noise `m ~ N(0, I)` on the grid
(`input_noise = a`) and `r` the tendency from that state to the true `x(t + dt)`: the denoiser
learns to remove such errors (noise injection, Sanchez-Gonzalez et al. 2020, arXiv:2002.09405).
Trained without it, the model's rollouts gained small-scale power (2-5 times the truth's at
wavenumbers 10-16 by day 10, 1.6-2.3 times with zero noise: its own states were out of its
training distribution); trained with `a = 0.5`, 1.0-1.5 times (README).

Sampling integrates the probability-flow ODE `dr/dsigma = (r - D(r; sigma)) / sigma` with
EDM's Heun method (Algorithm 1 without churn), Euler (a DDIM-like first-order sampler) or
DPM-Solver++(2M) (second order from the previous level's denoised value) on

    sigma_i = (smax^(1/rho) + i / (N - 1) (smin^(1/rho) - smax^(1/rho)))^rho,  sigma_N = 0,

from `r_0 = sigma_0 n`, `n ~ N(0, I)` on the grid, drawn from the member's own generator only
(`models.fgn.draw_noise`): 2N - 1 denoiser calls a step with Heun, N with Euler or
DPM-Solver++(2M). Without a
generator `n = 0`, and the step is deterministic (close to the denoiser's conditional mean:
for Gaussian data the ODE maps 0 to `mu (1 - sd / sqrt(smax^2 + sd^2))`); bred vectors grow so.

A residual diffusion member (`diffusion.mean_network`, the regression plus residual diffusion
of CorrDiff: Mardani et al. 2025, "Residual corrective diffusion modeling for km-scale
atmospheric downscaling", Commun. Earth Environ. 6, 124, arXiv:2309.15214) steps with a frozen
deterministic SFNO's normalised tendency `m = f(x(t))` plus a sampled correction `c`,

    r = m + c,   c ~ p(c | x(t)),

its denoiser trained on `c = r - m` only: the SFNO, trained long on rollouts, carries the
forecast, and the denoiser learns the SFNO's error distribution, a far smaller and simpler
target (`sigma_data`, its std in units of the tendency std, about 0.2 here) than the whole
tendency. Zero noise then steps with `m` plus the correction's mean.

Units: `r`, `sigma` and `D` are in units of each channel's 6 h tendency std (dimensionless).
The noise is white on the grid points (GenCast's is isotropic on the sphere); the step's `P_T`
removes what the sample keeps of it beyond degree T. Few levels bias the spread: with an exact
denoiser of a Gaussian, Heun's std is 1.3-1.6 times the true one at N = 8 and 1.06-1.12 times
at N = 16; Euler's is 0.6-0.7 and 0.8-0.85 times; DPM-Solver++(2M)'s 1.09-1.19 and
1.07-1.10 times, with half Heun's calls (`tests/test_diffusion.py`).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from wxens.models.checkpoint import CheckpointError, find_checkpoints
from wxens.models.fgn import (
    NOISY_MEMBER_SETTINGS,
    NoisyEmulator,
    add_conditional_norms,
    conditioning,
    draw_noise,
    sampled_validation,
)
from wxens.models.kinds import EmulatorKind, register_kind
from wxens.models.settings import DiffusionConfig
from wxens.models.sfno import build_network, differing_section

if TYPE_CHECKING:
    from pathlib import Path

    from wxens.data_pipeline.config import ExperimentConfig, MemberKind, TrainingConfig
    from wxens.models.emulator import Emulator

SIGMA_DATA = 1.0
"""The std of the whole normalised tendency (1 by construction): `sigma_data` where none is
given (a residual member's is its `diffusion.sigma_data`, the std of its correction)."""

MEAN_PREFIX = "mean_network."
"""Where a checkpoint's weights hold the mean network's tensors (`DiffusionEmulator.weights`)."""

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""`D(x, sigma)`: the denoised `x` `(batch, ...)` at noise levels `sigma` `(batch,)`."""


def edm_coefficients(
    sigma: torch.Tensor, sigma_data: float = SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EDM's preconditioning `(c_skip, c_out, c_in, c_noise)` at `sigma` (Karras et al. 2022,
    Table 1): `sd^2 / (sigma^2 + sd^2)`, `sigma sd / sqrt(sigma^2 + sd^2)`,
    `1 / sqrt(sigma^2 + sd^2)` and `ln(sigma) / 4`."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt(), sigma.log() / 4


def loss_weight(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """EDM's `lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2` (1 / c_out^2): each noise level's
    loss is then 1 for the untrained `F = 0`."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sigma_schedule(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """The `steps + 1` noise levels of the sampler, float64: EDM's (Eq. 5)
    `sigma_i = (smax^(1/rho) + i / (N - 1) (smin^(1/rho) - smax^(1/rho)))^rho` for
    `i < N = steps`, then `sigma_N = 0`."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1, dtype=torch.float64)])


def sample(
    denoiser: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor, sampler: str = "heun"
) -> torch.Tensor:
    """Integrate the probability-flow ODE from `x_0 = sigma_0 noise` over `sigmas`
    (decreasing, last 0) with `sampler`, one of `SAMPLERS`."""
    return SAMPLERS[sampler](denoiser, noise * float(sigmas[0]), sigmas.tolist())


def _slope(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """`d = (x - D(x; sigma)) / sigma`, the ODE's `dx/dsigma`."""
    return (x - _denoised(denoiser, x, sigma)) / sigma


def _denoised(denoiser: Denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """`D(x; sigma)` at one level for the whole batch."""
    return denoiser(x, torch.full((len(x),), sigma, dtype=x.dtype, device=x.device))


def _euler_or_heun(heun: bool) -> Callable[[Denoiser, torch.Tensor, list[float]], torch.Tensor]:
    """Euler steps `x_{i+1} = x_i + (s_{i+1} - s_i) d_i`, `d_i = (x_i - D(x_i; s_i)) / s_i`,
    with `heun` corrected by the slope at `x_{i+1}`, `x_{i+1} = x_i + (s_{i+1} - s_i) (d_i +
    d'_{i+1}) / 2`, except onto `sigma = 0` (EDM's Algorithm 1 without churn): N denoiser
    calls on N levels, 2N - 1 with Heun."""

    def integrate(denoiser: Denoiser, x: torch.Tensor, levels: list[float]) -> torch.Tensor:
        for current, following in itertools.pairwise(levels):
            d = _slope(denoiser, x, current)
            moved = x + (following - current) * d
            if heun and following > 0:
                moved = x + (following - current) * (d + _slope(denoiser, moved, following)) / 2
            x = moved
        return x

    return integrate


def _dpmpp_2m(denoiser: Denoiser, x: torch.Tensor, levels: list[float]) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast solver for guided sampling of
    diffusion probabilistic models", arXiv:2211.01095, Algorithm 2), in EDM's sigma: with
    `h_i = ln(s_i / s_{i+1})`,

        x_{i+1} = (s_{i+1} / s_i) x_i + (1 - e^{-h_i}) D'_i,
        D'_i = (1 + 1 / (2 r_i)) D_i - D_{i-1} / (2 r_i),   r_i = h_{i-1} / h_i,

    with `D'_0 = D_0` and the last step onto `sigma = 0` taking `D` itself: N denoiser calls on
    N levels, second order through the previous level's denoised value (no second call).
    Written here because the sampler is three lines of the ODE's exponential integrator and
    k-diffusion, which has it, is not a dependency. For Gaussian data and an exact denoiser its
    std is 1.09-1.19 times the true one on 8 levels and 1.07-1.10 on 16, Heun's 1.06-1.10 on 16
    levels (31 calls) (`tests/test_diffusion.py`)."""
    previous, previous_h = None, None
    for current, following in itertools.pairwise(levels):
        denoised = _denoised(denoiser, x, current)
        if following == 0:
            return denoised
        h = math.log(current / following)
        blended = denoised
        if previous is not None:
            r = previous_h / h
            blended = (1 + 1 / (2 * r)) * denoised - previous / (2 * r)
        x = (following / current) * x - math.expm1(-h) * blended
        previous, previous_h = denoised, h
    return x


SAMPLERS: dict[str, Callable[[Denoiser, torch.Tensor, list[float]], torch.Tensor]] = {
    "heun": _euler_or_heun(heun=True),
    "euler": _euler_or_heun(heun=False),
    "dpmpp_2m": _dpmpp_2m,
}
"""The ODE samplers, by `DiffusionConfig.sampler` name: `(denoiser, x_0, levels) -> x_N`."""


def denoiser_calls(sampler: str, levels: int) -> int:
    """Denoiser calls a step: `2N - 1` for Heun on N levels, N for Euler and DPM-Solver++(2M)."""
    return 2 * levels - 1 if sampler == "heun" else levels


def noise_embedding(c_noise: torch.Tensor, size: int) -> torch.Tensor:
    """`(batch, size)` sinusoidal embedding `[sin(f_k c), cos(f_k c)]` of `c_noise` `(batch,)`,
    the `size / 2` frequencies `f_k` geometric from 1 to 16 rad per unit of `c_noise` (the
    sampler's `c_noise = ln(sigma) / 4` spans about -1.6 to 1.1)."""
    frequencies = torch.logspace(0, math.log10(16), size // 2, device=c_noise.device)
    angles = c_noise.float()[:, None] * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class DiffusionEmulator(NoisyEmulator):
    """A diffusion member (see the module docstring): `step` samples the next state (its
    `noise_scale` scales the initial noise)."""

    kind = "diffusion"
    Settings = DiffusionConfig
    correction_damping = 0.0
    """E-foldings at the truncation of the del^4 damping of the sampled correction
    (`MemberKind.correction_damping`, `damped`; training uses 0)."""

    @property
    def diffusion(self) -> DiffusionConfig:
        return self.settings

    def use_member_settings(self, members: MemberKind) -> None:
        """Also sample with `members.sampler` on `members.sampler_steps` levels where set (else
        as trained), and damp the correction by `members.correction_damping`."""
        super().use_member_settings(members)
        self.correction_damping = members.correction_damping
        update = {
            name: getattr(members, name)
            for name in ("sampler_steps", "sampler")
            if getattr(members, name) is not None
        }
        self.settings = self.diffusion.model_copy(update=update)

    def add_noise_layers(self) -> None:
        """The denoiser: an SFNO that also takes the noisy residual (one channel a variable),
        its noise level entering every block's `ConditionalNorm` as an embedding; and with
        `mean_network`, the frozen SFNO whose tendency it corrects."""
        channels = len(self.input_variables)
        self.network = build_network(self.grid, channels, self.sfno, self.truncation, channels)
        add_conditional_norms(self.network, self.sfno.embed_dim, self.diffusion.noise_embedding)
        mean = self.diffusion.mean_network
        self.mean_network = (
            None
            if mean is None
            else build_network(self.grid, channels, mean, self.truncation).requires_grad_(False)
        )

    def weights(self) -> dict[str, torch.Tensor]:
        """The denoiser's state, then the mean network's under `mean_network.`."""
        tensors = dict(self.network.state_dict())
        if self.mean_network is not None:
            mean = self.mean_network.state_dict()
            tensors.update({f"{MEAN_PREFIX}{name}": value for name, value in mean.items()})
        return tensors

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set the denoiser and the mean network (strict) from what `weights` returned."""
        mean = {k[len(MEAN_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MEAN_PREFIX)}
        denoiser = {k: v for k, v in tensors.items() if not k.startswith(MEAN_PREFIX)}
        if mean and self.mean_network is None:
            raise RuntimeError("weights of a mean network, but `mean_network` is not set")
        self.network.load_state_dict(denoiser)
        if self.mean_network is not None:
            self.mean_network.load_state_dict(mean)

    def with_mean_network(self, sfno: Emulator, source: str) -> DiffusionEmulator:
        """A copy of this residual member whose frozen mean network is `sfno`'s network (from
        checkpoint `source`): the same sampled corrections under another deterministic SFNO,
        such as another seed of the one it was trained on. `sfno` must have the mean network's
        architecture (`starting_network`'s: its `sfno` settings, the precision aside, and its
        normalisation).

        Raises CheckpointError (one line naming `source`) for a member without a mean network
        or an `sfno` of another kind or architecture."""
        if self.mean_network is None:
            raise CheckpointError(f"{source}: this diffusion member has no mean network to replace")
        _, ours = self.starting_network()
        theirs = sfno.architecture()
        theirs = {**theirs, "sfno": {**theirs.get("sfno", {}), "precision": self.sfno.precision}}
        differing = differing_section(ours, theirs)
        if sfno.kind != "sfno" or differing is not None:
            what = f"kind {sfno.kind}" if sfno.kind != "sfno" else f"its {differing} differs"
            raise CheckpointError(f"{source}: cannot be a diffusion member's mean network ({what})")
        member = copy.deepcopy(self)
        member.mean_network.load_state_dict(sfno.network.state_dict())
        return member

    def starting_network(self) -> tuple[torch.nn.Module, dict]:
        """An SFNO checkpoint starts the mean network where there is one (its architecture's
        `sfno`, the precision aside, must be `mean_network`); else the denoiser."""
        if self.mean_network is None:
            return super().starting_network()
        mean = {**self.diffusion.mean_network.model_dump(), "precision": self.sfno.precision}
        return self.mean_network, {**self.architecture(), "sfno": mean}

    def mean_tendency(self, features: torch.Tensor) -> torch.Tensor | None:
        """The frozen SFNO's normalised tendency `m` `(batch, channel, lat, lon)` for the
        states' `features` (None without a mean network)."""
        if self.mean_network is None:
            return None
        with torch.no_grad():
            return self.runtime_network("mean_network")(features)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        """One member's initial noise: `(channel, latitude, longitude)`."""
        return (len(self.input_variables), self.grid.nlat, self.grid.nlon)

    def sigmas(self) -> torch.Tensor:
        """The sampler's noise levels (`sigma_schedule` of the config)."""
        settings = self.diffusion
        return sigma_schedule(
            settings.sampler_steps, settings.sigma_min, settings.sigma_max, settings.rho
        )

    def denoise(
        self, noisy: torch.Tensor, sigma: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        """`D(r; sigma) = c_skip r + c_out F(c_in r, features; c_noise)` for noisy residuals
        `(batch, channel, lat, lon)` at levels `sigma` `(batch,)`, `features` of their states."""
        coefficients = edm_coefficients(sigma, self.diffusion.sigma_data)
        c_skip, c_out, c_in, c_noise = (
            c.to(noisy.dtype)[:, None, None, None] for c in coefficients
        )
        embedding = noise_embedding(c_noise.flatten(), self.diffusion.noise_embedding)
        with conditioning(embedding):
            output = self.runtime_network()(torch.cat([c_in * noisy, features], dim=1))
        return c_skip * noisy + c_out * output

    def damped(self, correction: torch.Tensor) -> torch.Tensor:
        """`correction` `(batch, channel, lat, lon)` with its spherical-harmonic coefficients
        of total wavenumber `l` times `exp(-d (l (l + 1) / (T (T + 1)))^2)`, `d` the
        `correction_damping` (e-foldings at the truncation T): a del^4 hyperdiffusion of one
        step's sampled correction (unchanged where `d` is 0)."""
        if self.correction_damping == 0:
            return correction
        l = self.transforms.total_wavenumber[:, :1]  # noqa: E741 (the total wavenumber)
        scale = self.truncation * (self.truncation + 1)
        factor = torch.exp(-self.correction_damping * (l * (l + 1) / scale) ** 2)
        coefficients = self.transforms.to_spectral(correction.float())
        return self.transforms.to_grid(coefficients * factor.to(coefficients.real.dtype))

    def forward(self, state: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The next state sampled from initial `noise` `(batch, channel, lat, lon)` (zero when
        None) with the configured sampler and `damped`, added to the mean network's tendency
        where there is one, then un-normalised, projected and added."""
        if noise is None:
            noise = draw_noise(len(state), self.noise_shape, None)
        features = self.features(state)

        def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.denoise(x, sigma, features)

        residual = self.damped(
            sample(
                denoiser,
                noise.to(state.device, torch.float32),
                self.sigmas(),
                self.diffusion.sampler,
            )
        )
        mean = self.mean_tendency(features)
        return self.advance(state, residual if mean is None else mean + residual)


def denoising_loss(
    emulator: DiffusionEmulator,
    state: torch.Tensor,
    following: torch.Tensor,
    weights: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Per-channel EDM loss `(channel,)`: the batch mean of
    `lambda(sigma) sum_ij w_ij (D(r + sigma n; sigma) - r)_ij^2` for the residual `r` from
    the conditioning state to `following` (less the mean network's tendency where there is
    one), `ln sigma ~ N(P_mean, P_std^2)` per sample and
    `n ~ N(0, I)`, all drawn from `generator` on the CPU (a fresh one when None). The
    conditioning state is `state + P_T[a sigma_tend m]`, `m ~ N(0, I)` white on the grid and
    `a = input_noise` (`state` itself when 0): the denoiser learns to remove such errors."""
    settings, batch = emulator.diffusion, len(state)
    generator = generator if generator is not None else torch.Generator()
    if settings.input_noise > 0:
        errors = draw_noise(batch, emulator.noise_shape, generator).to(state.device)
        state = state + emulator.project(settings.input_noise * emulator.tendency_std * errors)
    features = emulator.features(state)
    residual = emulator.residual(state, following)
    mean = emulator.mean_tendency(features)
    residual = residual if mean is None else residual - mean
    log_sigma = settings.p_mean + settings.p_std * torch.randn(batch, generator=generator)
    sigma = log_sigma.exp().to(residual.device)
    noise = draw_noise(batch, emulator.noise_shape, generator).to(residual.device)
    noisy = residual + sigma[:, None, None, None] * noise
    denoised = emulator.denoise(noisy, sigma, features)
    weight = loss_weight(sigma, settings.sigma_data)
    squared = weight[:, None, None, None] * (denoised - residual) ** 2
    return (squared * weights).sum(dim=(-2, -1)).mean(dim=0)


def diffusion_loss(
    emulator: DiffusionEmulator,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    training: TrainingConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The diffusion kind's training loss terms `(channel,)`: the `denoising_loss` of the
    one-step pairs (inputs, first targets); longer rollouts are not trained on."""
    return denoising_loss(emulator, inputs, targets[:, 0], weights, generator)


def check_mean_network(config: ExperimentConfig) -> None:
    """Refuse a `diffusion.mean_network` whose features differ from the denoiser's (both read
    the same features of the state)."""
    mean = config.diffusion.mean_network
    if mean is not None and mean.gradient_features != config.sfno.gradient_features:
        raise ValueError(
            f"diffusion.mean_network.gradient_features: {mean.gradient_features} differs from"
            f" sfno.gradient_features ({config.sfno.gradient_features}); the two networks read"
            " the same features"
        )


def members_with_means(
    emulator: DiffusionEmulator, members: MemberKind, load: Callable[[Path], Emulator]
) -> list[Emulator]:
    """One member model per SFNO checkpoint of `members.mean_checkpoints`, each the residual
    `emulator` with that checkpoint's network as its mean, named `<emulator>+<checkpoint>`
    (`diffusion-seed1+sfno-seed2`; none listed: `emulator` itself)."""
    if not members.mean_checkpoints:
        return [emulator]
    models = []
    for path in find_checkpoints(list(members.mean_checkpoints)):
        model = emulator.with_mean_network(load(path), str(path))
        model.name = f"{emulator.name}+{path.name}"
        models.append(model)
    return models


DIFFUSION = register_kind(
    EmulatorKind(
        name="diffusion",
        title="diffusion",
        emulator=DiffusionEmulator,
        settings=DiffusionConfig,
        build=DiffusionEmulator.from_config,
        load=DiffusionEmulator.from_architecture,
        loss=diffusion_loss,
        validation=sampled_validation,
        score="crps",
        member_settings=(
            *NOISY_MEMBER_SETTINGS,
            "sampler_steps",
            "sampler",
            "mean_checkpoints",
            "correction_damping",
        ),
        use_member_settings=DiffusionEmulator.use_member_settings,
        member_models=members_with_means,
        check=check_mean_network,
    )
)
"""The diffusion kind: EDM's denoising loss; validated on the CRPS of sampled rollouts."""
