"""The SFNO emulator: torch-harmonics' Spherical Fourier Neural Operator behind `Emulator`.

Physical fields go in and come out. Inside, the state is normalised, the network predicts the
normalised 6 h tendency, and the step is

    z = (x(t) - mu(lat)) / sigma_anomaly
    x(t + dt) = x(t) + P_T[ sigma_tend * f(z, grad z / T) + mu_tend ]

with `mu(lat)` the climatological zonal-mean profile (the jet), `sigma_anomaly` the std about
it, `mu_tend`, `sigma_tend` the mean and std of the 6 h tendency (`NormalisationStats`),
`grad z` the exact spectral gradient on the unit sphere (with `sfno.gradient_features`; scaled
by 1/T to order one) and `P_T` the projection onto spherical harmonics of degree <= T (the
model grid's truncation), so that a step never adds scales the analyses cannot hold.

Stochastically perturbed tendencies (`ensemble.kinds.sfno.tendency_sigma`, forecasts only): a
member's step multiplies the tendency by a random pattern of its own,

    x(t + dt) = x(t) + P_T[ (1 + clip(s r(t), -1, 1)) * tendency ],
    r(t + dt) = phi r(t) + sqrt(1 - phi^2) eps(t),   phi = exp(-dt / tau),

`r` a random field of zero mean and unit area-mean variance shared by every channel,
correlated over a Gaussian width `tendency_length_km` in space and over `tau`
(`tendency_hours`) in time, `eps` a fresh such field from the member's noise stream each step
(`next_pattern`); the first step's `r` is itself a fresh draw (stationary from the start), and
the clip keeps `1 + s r` in [0, 2]. At tau = 0 (the default) each step's pattern is a fresh
draw, white in time. This is ECMWF's SPPT (Buizza et al. 1999, QJRMS 125, 2887;
Palmer et al. 2009, ECMWF TM 598) with one pattern: it stands for the error the emulator makes
in each step, which the initial perturbations alone leave out. A pattern that persists
(tau > 0) travels from step to step in one hidden channel of the state (`hidden_channels`; the
runner keeps it and stores only the fields); a caller that keeps none gets a fresh pattern
each step.

With a ramp (`tendency_ramp_hours` R > 0), the amplitude grows with the hours `h` the member
has stepped, `s(h) = s min(1, h / R)` (`h` = 6 h at the first step): the emulator's own error
is smallest just after the analysis and grows as its rollout drifts, so a constant `s` that
is right late makes the early spread too large. The hours travel in a hidden channel of their
own (zero at the start, as the runner pads).

An additive part (`tendency_additive` a > 0) adds the same pattern in units of the 6 h
tendency's std, ramped alike:

    x(t + dt) = x(t) + P_T[ (1 + clip(s(h) r, -1, 1)) * tendency + a(h) r sigma_tend ],

`a(h) = a min(1, h / R)`. The multiplicative part scales with the tendency itself and so
leaves calm regions (the tropics of this world) almost unperturbed, where truths then fall
outside the ensemble; the additive part spreads the members there too (the additive
stochastic forcing of Leutbecher et al. 2017, QJRMS 143, 2315, on the pattern of SPPT).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch_harmonics.examples.models import SphericalFourierNeuralOperator
from wxens.data_pipeline.sphere import (
    LatLonGrid,
    SpectralTransforms,
    shaped_random_field,
    white_coefficients,
)
from wxens.data_pipeline.training_data import NormalisationStats
from wxens.data_pipeline.truth import model_grid
from wxens.models.cpu_bf16 import cpu_has_bf16_matrix_units, matmul_network, training_network
from wxens.models.emulator import Generators, member_draws
from wxens.models.kinds import EmulatorKind, register_kind
from wxens.models.losses import rollout_loss, rollout_validation
from wxens.models.settings import SFNOConfig

if TYPE_CHECKING:
    from wxens.data_pipeline.config import ExperimentConfig, MemberKind


def spectral_fraction(grid: LatLonGrid, sfno: SFNOConfig, truncation: int) -> float:
    """torch-harmonics' `hard_thresholding_fraction` that keeps degrees 0..T in the network.

    The network keeps `int(min(h, w // 2) * fraction)` modes on its internal `h x w` grid; the
    half mode makes `int` land on T + 1 despite round-off.
    """
    internal = min((grid.nlat - 1) // sfno.scale_factor + 1, grid.nlon // sfno.scale_factor // 2)
    return min(1.0, (truncation + 1.5) / internal)


def build_network(
    grid: LatLonGrid, channels: int, sfno: SFNOConfig, truncation: int, extra_inputs: int = 0
) -> SphericalFourierNeuralOperator:
    """The raw torch-harmonics SFNO of this configuration (also what the benchmark times);
    `extra_inputs` channels enter before the features (a diffusion denoiser's noisy state)."""
    inputs = channels * (3 if sfno.gradient_features else 1) + extra_inputs
    return SphericalFourierNeuralOperator(
        img_size=(grid.nlat, grid.nlon),
        grid=grid.kind,
        grid_internal="legendre-gauss",
        scale_factor=sfno.scale_factor,
        in_chans=inputs,
        out_chans=channels,
        embed_dim=sfno.embed_dim,
        num_layers=sfno.num_layers,
        mlp_ratio=sfno.mlp_ratio,
        pos_embed=sfno.pos_embed,
        hard_thresholding_fraction=spectral_fraction(grid, sfno, truncation),
    )


def differing_section(ours: dict[str, Any], theirs: dict[str, Any]) -> str | None:
    """The first section of architecture `ours` (`SFNOEmulator.architecture`'s dict) that
    `theirs` has too, with other settings; None when every section both have is the same, so
    that one's weights fit the other's network (an SFNO's fit an FGN's backbone)."""
    return next((key for key in ours if key in theirs and theirs[key] != ours[key]), None)


@functools.cache  # once per process
def warn_float32_fallback() -> None:
    """The one-line warning of `bf16-cpu` on a CPU without bfloat16 matrix units."""
    warnings.warn(
        "sfno.precision bf16-cpu: this CPU has no bfloat16 matrix units (avx512_bf16 or"
        " amx_bf16); running its matrix products in float32",
        stacklevel=3,
    )


ADDITIVE_TENDENCY_SETTINGS = (
    "tendency_length_km",
    "tendency_hours",
    "tendency_ramp_hours",
    "tendency_additive",
)
"""The `MemberKind` settings of the additive perturbed tendencies, which generative members
(`models.fgn.NoisyEmulator`) read too; SFNO members also read `tendency_sigma`."""


class SFNOEmulator(torch.nn.Module):
    """A deterministic SFNO member (see the module docstring for the step)."""

    kind = "sfno"
    tendency_sigma = 0.0
    """`s` of the perturbed tendencies (`MemberKind.tendency_sigma`; 0: none, as trained)."""
    tendency_length_km = 2000.0
    """The correlation width of their pattern (`MemberKind.tendency_length_km`), in km."""
    tendency_hours = 0.0
    """Its decorrelation time tau (`MemberKind.tendency_hours`), in hours (0: white in time,
    a fresh pattern each step)."""
    tendency_ramp_hours = 0.0
    """R of the amplitude's ramp `s min(1, h / R)` (`MemberKind.tendency_ramp_hours`), in hours
    (0: `s` from the first step)."""
    tendency_additive = 0.0
    """`a` of the additive part, in units of the 6 h tendency's std `sigma_tend`
    (`MemberKind.tendency_additive`; 0: none)."""
    trains_on_tokens = True
    """Train on the CPU through `models.cpu_bf16.training_network` (False: through
    torch-harmonics' own layers, as `benchmarks/training_speed.py` compares)."""

    def __init__(
        self,
        grid: LatLonGrid,
        truncation: int,
        variables: Sequence[str],
        stats: NormalisationStats,
        sfno: SFNOConfig,
    ):
        super().__init__()
        self.grid = grid
        self.truncation = truncation
        self.input_variables = tuple(variables)
        self.stats = stats
        self.sfno = sfno
        self.timestep = np.timedelta64(round(stats.timestep_hours * 3600), "s")
        self.network = build_network(grid, len(variables), sfno, truncation)
        # Legendre tables in float32, the fields' dtype: torch-harmonics would convert its
        # float64 tables on every call (the same numbers, 30 % slower)
        self.transforms = SpectralTransforms(grid, truncation, exact=False).float()
        buffers = {
            "mean": stats.zonal_mean(variables),
            "std": stats.channel("anomaly_std", variables),
            "tendency_mean": stats.channel("tendency_mean", variables),
            "tendency_std": stats.channel("tendency_std", variables),
        }
        for name, value in buffers.items():
            self.register_buffer(name, torch.from_numpy(value), persistent=False)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """The next state, `state` `(batch, channel, lat, lon)`, through `runtime_network`
        (differentiable with gradients on)."""
        return self.advance(state, self.runtime_network()(self.features(state)))

    def runtime_network(self, name: str = "network") -> torch.nn.Module:
        """The SFNO submodule `name` (`network`) to run now. On the CPU: with gradients on
        (training), its float32 matrix-product view, which shares its parameters
        (`models.cpu_bf16.training_network`, unless `trains_on_tokens` is False); outside
        autograd with `sfno.precision: bf16-cpu`, its matrix-product copy
        (`matmul_network`), made again whenever the weights change: bfloat16 where the CPU
        has bfloat16 matrix units, else float32 (the same tokens without torch-harmonics'
        copies: 1.6-2.1 x its member-steps/s, `benchmarks/emulator_speed.py`). Elsewhere
        the submodule itself."""
        network = getattr(self, name)
        parameters = list(network.parameters())
        if parameters[0].device.type != "cpu":
            return network
        identity = tuple(map(id, parameters))
        if torch.is_grad_enabled() and self.trains_on_tokens:
            view = self.cached(f"_training_{name}", identity, lambda: training_network(network))
            return view if view.training == network.training else view.train(network.training)
        if self.sfno.precision != "bf16-cpu" or torch.is_grad_enabled():
            return network
        compute = torch.bfloat16 if cpu_has_bf16_matrix_units() else torch.float32
        version = tuple(p._version for p in parameters)  # a copy: made again on any change
        return self.cached(
            f"_matmul_{name}", version + identity, lambda: matmul_network(network, compute)
        )

    def cached(self, key: str, depends: tuple, make: Callable[[], Any]) -> Any:
        """`make()`, kept under `key` (not a submodule: no state_dict entry) until
        `depends` changes."""
        cached = self.__dict__.get(key)
        if cached is None or cached[0] != depends:
            cached = (depends, make())
            self.__dict__[key] = cached
        return cached[1]

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds: `network`'s state."""
        return self.network.state_dict()

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Set what `weights` returns from `tensors` (strict: every key, no other)."""
        self.network.load_state_dict(tensors)

    def starting_network(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """What a fine-tune's `--init-from` checkpoint starts, and the architecture it must
        agree with wherever both have a section: `network` and `architecture()`."""
        return self.network, self.architecture()

    def use_precision(self, precision: str) -> None:
        """Forecast with `sfno.precision` `precision` (a run-time choice; see `SFNOConfig`),
        warning in one line where `bf16-cpu` falls back to float32 on this CPU."""
        self.sfno = self.sfno.model_copy(update={"precision": precision})
        if precision == "bf16-cpu" and not cpu_has_bf16_matrix_units():
            warn_float32_fallback()

    def advance(
        self,
        state: torch.Tensor,
        residual: torch.Tensor,
        pattern: torch.Tensor | None = None,
        additive: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`x + P_T[sigma_tend * residual + mu_tend]`: the state after the normalised
        tendency `residual` (the network's target), the tendency times `pattern` where given
        (`(batch, 1, lat, lon)`, `1 + clip(s r, -1, 1)`), plus `additive * sigma_tend` where
        given (`(batch, 1, lat, lon)`, `a r`; units of the tendency's std)."""
        tendency = residual * self.tendency_std + self.tendency_mean
        if pattern is not None:
            tendency = tendency * pattern
        if additive is not None:
            tendency = tendency + additive * self.tendency_std
        return state + self.project(tendency).to(state.dtype)

    @property
    def hidden_channels(self) -> int:
        """The hidden state channels of perturbed tendencies: the pattern `r` where it
        persists (tau > 0), then the hours stepped where the amplitude ramps (R > 0)."""
        return self.pattern_channels + int(self.tendency_ramps)

    @property
    def pattern_channels(self) -> int:
        """1 where the perturbed tendencies' pattern persists from step to step (tau > 0) in
        the first hidden channel, else 0."""
        return int(self.perturbs_tendencies and self.tendency_hours > 0)

    @property
    def tendency_ramps(self) -> bool:
        """Whether the perturbed tendencies' amplitude ramps with the hours stepped (R > 0)."""
        return self.perturbs_tendencies and self.tendency_ramp_hours > 0

    @property
    def perturbs_tendencies(self) -> bool:
        """Whether a forecast step perturbs the tendencies (`s` or `a` above 0)."""
        return self.tendency_sigma > 0 or self.tendency_additive > 0

    def next_pattern(self, previous: torch.Tensor, generator: Generators) -> torch.Tensor:
        """`r(t + dt)`, `(batch, 1, lat, lon)` float32 on the CPU, from `previous` `r(t)`
        (zero where a member has none yet; no channel: none at all): `phi r + sqrt(1 - phi^2)
        eps`, or `eps` itself where `r` is unknown, one field `eps` per member from its
        generator (`member_draws`; see the module docstring)."""
        length_m = self.tendency_length_km * 1e3

        def draw(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
            return white_coefficients(shape, self.truncation, g)

        # drawn member by member, shaped and transformed for the whole batch at once
        white = member_draws(len(previous), (1,), generator, draw)
        coeffs = shaped_random_field(white, self.truncation, length_m, torch.float32)
        transforms_device = next(self.transforms.buffers()).device  # the emulator's device
        eps = self.transforms.to_grid(coeffs.to(transforms_device)).cpu()
        if previous.shape[1] == 0 or self.tendency_hours == 0:
            return eps
        previous = previous.float().cpu()
        phi = float(np.exp(-self.timestep / np.timedelta64(1, "h") / self.tendency_hours))
        known = (previous != 0).flatten(1).any(1)[:, None, None, None]
        return torch.where(known, phi * previous + np.sqrt(1 - phi**2) * eps, eps)

    def project(self, field: torch.Tensor) -> torch.Tensor:
        """`P_T[field]`: the grid `field` (float32) without its degrees above the truncation."""
        return self.transforms.to_grid(self.transforms.to_spectral(field.float()))

    def residual(self, state: torch.Tensor, following: torch.Tensor) -> torch.Tensor:
        """The normalised tendency `(x(t + dt) - x(t) - mu_tend) / sigma_tend` from `state` to
        `following` (what `advance` inverts, up to `P_T`)."""
        return ((following - state - self.tendency_mean) / self.tendency_std).float()

    def features(self, state: torch.Tensor) -> torch.Tensor:
        """The network's input: `z = (x - mu(lat)) / sigma_anomaly`, then `grad z / T`."""
        normalised = ((state - self.mean) / self.std).float()
        if not self.sfno.gradient_features:
            return normalised
        gradient = self.transforms.gradient(self.transforms.to_spectral(normalised))
        return torch.cat([normalised, gradient.flatten(1, 2) / self.truncation], dim=1)

    def use_member_settings(self, members: MemberKind) -> None:
        """Forecast with this kind's settings of `ensemble.kinds`: its perturbed tendencies
        (`share` and `initial` are the runner's)."""
        self.tendency_sigma = members.tendency_sigma
        self.tendency_length_km = members.tendency_length_km
        self.tendency_hours = members.tendency_hours
        self.tendency_ramp_hours = members.tendency_ramp_hours
        self.tendency_additive = members.tendency_additive

    @torch.no_grad()
    def step(self, state: torch.Tensor, *, generator: Generators = None) -> torch.Tensor:
        """One step; deterministic unless its tendencies are perturbed, their pattern then
        drawn from `generator` only and carried in the state's hidden channel where it has
        one (see the module docstring)."""
        channels = len(self.input_variables)
        fields, hidden = state[:, :channels], state[:, channels:]
        with self._precision(state.device):
            residual = self.runtime_network()(self.features(fields))
        if not self.perturbs_tendencies or generator is None:
            stepped, hidden_after = self.advance(fields, residual), hidden
        else:
            persists = self.pattern_channels
            pattern = self.next_pattern(hidden[:, :persists], generator).to(state.device)
            hours = hidden[:, persists : persists + 1] + self.timestep / np.timedelta64(1, "h")
            ramp = self.ramp(hours)
            sigma, additive = self.tendency_sigma, self.tendency_additive
            multiplier = 1 + (sigma * ramp * pattern).clamp(-1, 1) if sigma else None
            added = additive * ramp * pattern if additive else None
            stepped = self.advance(fields, residual, multiplier, added)
            hidden_after = torch.cat([pattern[:, :persists].to(hidden), hours], 1)
        if hidden.shape[1] == 0:  # no copy on the plain path
            return stepped
        return torch.cat([stepped, hidden_after], 1)

    def ramp(self, hours: torch.Tensor) -> torch.Tensor | float:
        """`min(1, h / R)` for the hours `h` stepped, `(batch, 1, lat, lon)` (no channel: no
        ramp), or 1 without a ramp (R = 0): the amplitudes are `s` and `a` times it."""
        if self.tendency_ramp_hours == 0 or hours.shape[1] == 0:
            return 1.0
        return (hours / self.tendency_ramp_hours).clamp(max=1)

    @contextlib.contextmanager
    def _precision(self, device: torch.device) -> Iterator[None]:
        """bf16 autocast or TF32 matmuls on CUDA when `sfno.precision` asks; else nothing
        (`bf16-cpu` is `runtime_network`'s)."""
        if device.type != "cuda" or self.sfno.precision in ("float32", "bf16-cpu"):
            yield
        elif self.sfno.precision == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True
            try:
                yield
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous

    def architecture(self) -> dict[str, Any]:
        """What `from_architecture` needs to rebuild this emulator (JSON-serialisable)."""
        return {
            "grid": {"nlat": self.grid.nlat, "nlon": self.grid.nlon, "kind": self.grid.kind},
            "truncation": self.truncation,
            "variables": list(self.input_variables),
            "normalisation": self.stats.to_dict(),
            "sfno": self.sfno.model_dump(),
        }

    @staticmethod
    def arguments(architecture: dict[str, Any]) -> tuple:
        """The constructor's arguments recorded in `architecture`."""
        return (
            LatLonGrid(**architecture["grid"]),
            int(architecture["truncation"]),
            architecture["variables"],
            NormalisationStats.from_dict(architecture["normalisation"]),
            SFNOConfig(**architecture["sfno"]),
        )

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any]) -> SFNOEmulator:
        return cls(*cls.arguments(architecture))

    @classmethod
    def config_settings(cls, config: ExperimentConfig) -> tuple:
        """The constructor's arguments after `stats` that come from the config: `sfno`."""
        return (config.sfno,)

    @classmethod
    def from_config(
        cls,
        config: ExperimentConfig,
        stats: NormalisationStats | None,
        device: torch.device | str = "cpu",
    ) -> SFNOEmulator:
        """A new (untrained) emulator of the config's grid, variables and settings, normalised
        by `stats`, on `device`."""
        if stats is None:
            raise ValueError(f"a new {cls.kind} emulator needs normalisation statistics")
        grid, truncation = model_grid(config), config.grid.truncation
        settings = cls.config_settings(config)
        return cls(grid, truncation, config.variables, stats, *settings).to(device)


SFNO = register_kind(
    EmulatorKind(
        name="sfno",
        title="SFNO",
        emulator=SFNOEmulator,
        settings=SFNOConfig,
        build=SFNOEmulator.from_config,
        load=SFNOEmulator.from_architecture,
        loss=rollout_loss,
        validation=rollout_validation,
        score="rmse",
        member_settings=("tendency_sigma", *ADDITIVE_TENDENCY_SETTINGS),
        use_member_settings=SFNOEmulator.use_member_settings,
    )
)
"""The deterministic SFNO kind: area-weighted MSE (or AMSE) of rollouts (`models.losses`)."""
