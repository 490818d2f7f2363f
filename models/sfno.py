"""The SFNO emulator: torch-harmonics' Spherical Fourier Neural Operator behind `Emulator`.

Physical fields go in and come out. Inside, the state is normalised, the network predicts the
normalised 6 h tendency, and the step is

    x(t + dt) = x(t) + P_T[ sigma_tend * f((x(t) - mu) / sigma) + mu_tend ]

with `mu`, `sigma` the field statistics, `mu_tend`, `sigma_tend` those of the 6 h tendency
(`NormalisationStats`) and `P_T` the projection onto spherical harmonics of degree <= T (the
model grid's truncation), so that a step never adds scales the analyses cannot hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch_harmonics as th
from torch_harmonics.examples.models import SphericalFourierNeuralOperator

from data_pipeline.config import SFNOConfig
from data_pipeline.sphere import LatLonGrid
from data_pipeline.training_data import NormalisationStats


def spectral_fraction(grid: LatLonGrid, sfno: SFNOConfig, truncation: int) -> float:
    """torch-harmonics' `hard_thresholding_fraction` that keeps degrees 0..T in the network.

    The network keeps `int(min(h, w // 2) * fraction)` modes on its internal `h x w` grid; the
    half mode makes `int` land on T + 1 despite round-off.
    """
    internal = min((grid.nlat - 1) // sfno.scale_factor + 1, grid.nlon // sfno.scale_factor // 2)
    return min(1.0, (truncation + 1.5) / internal)


def build_network(
    grid: LatLonGrid, channels: int, sfno: SFNOConfig, truncation: int
) -> SphericalFourierNeuralOperator:
    """The raw torch-harmonics SFNO of this configuration (also what the benchmark times)."""
    return SphericalFourierNeuralOperator(
        img_size=(grid.nlat, grid.nlon),
        grid=grid.kind,
        grid_internal="legendre-gauss",
        scale_factor=sfno.scale_factor,
        in_chans=channels,
        out_chans=channels,
        embed_dim=sfno.embed_dim,
        num_layers=sfno.num_layers,
        mlp_ratio=sfno.mlp_ratio,
        pos_embed=sfno.pos_embed,
        hard_thresholding_fraction=spectral_fraction(grid, sfno, truncation),
    )


class SFNOEmulator(torch.nn.Module):
    """A deterministic SFNO member (see the module docstring for the step)."""

    kind = "sfno"

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
        n = truncation + 1
        self.analysis = th.RealSHT(grid.nlat, grid.nlon, lmax=n, mmax=n, grid=grid.kind)
        self.synthesis = th.InverseRealSHT(grid.nlat, grid.nlon, lmax=n, mmax=n, grid=grid.kind)
        for name in ("mean", "std", "tendency_mean", "tendency_std"):
            value = torch.from_numpy(stats.channel(name, variables))
            self.register_buffer(name, value, persistent=False)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """The next state, differentiable (training); `state` is `(batch, channel, lat, lon)`."""
        normalised = (state - self.mean) / self.std
        tendency = self.network(normalised) * self.tendency_std + self.tendency_mean
        return state + self.synthesis(self.analysis(tendency.float())).to(state.dtype)

    @torch.no_grad()
    def step(
        self, state: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One step; deterministic, so `generator` is unused."""
        with self._precision(state.device):
            return self.forward(state)

    @contextlib.contextmanager
    def _precision(self, device: torch.device) -> Iterator[None]:
        """bf16 autocast or TF32 matmuls on CUDA when `sfno.precision` asks; else nothing."""
        if device.type != "cuda" or self.sfno.precision == "float32":
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

    @classmethod
    def from_architecture(cls, architecture: dict[str, Any]) -> SFNOEmulator:
        grid = LatLonGrid(**architecture["grid"])
        return cls(
            grid,
            int(architecture["truncation"]),
            architecture["variables"],
            NormalisationStats.from_dict(architecture["normalisation"]),
            SFNOConfig(**architecture["sfno"]),
        )
