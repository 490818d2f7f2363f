"""The predictability limit as a member kind, `truth`: the truth world's own model at the
truth's resolution, started from the (perturbed) analyses on the model grid.

Its members step the truth's equations with the truth's parameters, truncation (T42 by
default), time step and precision, and their output is coarse-grained to the model grid
exactly as the truth's analyses are. Started from the same perturbed analyses as another
ensemble (`ensemble.seeds` with `lead_hours: 0`, for example the SFNO ensemble's store), its
only error is the initial one: no emulator can do better from those initial states.

Bringing an analysis to T42. The analyses hold the truth up to the model's truncation (T21):
the member's first state takes those coefficients and zeros above T21. The smallest scales
(T22-T42) are thus part of the initial error; they hold about 1 % of the eddy energy and
regrow from the larger scales within a day.

The member's state between steps is its full T42 model state, not the coarse fields: it
travels in `hidden_channels` extra channels of the state tensor (the runner keeps them and
writes only the first `len(input_variables)`), as the float64 (or float32) bits of the
spectral PV coefficients, reinterpreted bit for bit as float32. A state without them (the
first step, a bred-vector cycle, a seed) starts from the coarse fields as above.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from wxens.data_pipeline.config import ExperimentConfig
from wxens.data_pipeline.sphere import analysis
from wxens.models.emulator import Generators
from wxens.models.kinds import EmulatorKind, register_kind
from wxens.models.nwp import QGEmulator


class PerfectModelEmulator(QGEmulator):
    """The two-layer QG model of the truth at the truth's truncation (the `truth` kind)."""

    kind = "truth"

    def __init__(self, config: ExperimentConfig, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        self.fine_truncation = config.truth.truncation
        n = self.fine_truncation + 1
        self.words = 2 * 2 * n * n * (2 if self.model.real_dtype == torch.float64 else 1)
        """float32 words of the T42 state: 2 layers x n x n complex coefficients."""
        self.hidden_channels = math.ceil(self.words / (self.grid.nlat * self.grid.nlon))
        """Extra state channels that carry the T42 state between steps."""

    @staticmethod
    def dynamics(config: ExperimentConfig) -> ExperimentConfig:
        """The truth's own model: `config` as it is."""
        return config

    @torch.no_grad()
    def step(self, state: torch.Tensor, *, generator: Generators = None) -> torch.Tensor:
        """Integrate 6 h at the truth's truncation; return the coarse-grained fields, and the
        new full state in the hidden channels when `state` has them."""
        channels = len(self.input_variables)
        q = self.fine_state(state[:, :channels])
        if state.shape[1] > channels:
            carried = self.unpack(state[:, channels:])
            known = (state[:, channels:] != 0).flatten(1).any(1)
            q = torch.where(known[:, None, None, None], carried, q)
        q = self.model.integrate(q, self.steps)
        layers = self.model.streamfunction_on(q, self.grid, self.truncation)
        fields = layers[:, self.layers].to(state.dtype)
        if state.shape[1] == channels:
            return fields
        return torch.cat([fields, self.pack(q, state.shape[0])], dim=1)

    def fine_state(self, fields: torch.Tensor) -> torch.Tensor:
        """The T42 PV coefficients of coarse fields: their T21 coefficients, zero above."""
        by_layer = fields[:, np.argsort(self.layers)].to(self.model.real_dtype)
        coarse = analysis(self.grid, self.truncation).to(fields.device)(by_layer)
        n = self.fine_truncation + 1
        psi = coarse.new_zeros((*coarse.shape[:2], n, n))
        psi[..., : coarse.shape[-2], : coarse.shape[-1]] = coarse
        return self.model.potential_vorticity(psi)

    def pack(self, q: torch.Tensor, batch: int) -> torch.Tensor:
        """`q`'s bits as `(batch, hidden_channels, lat, lon)` float32 words (zero-padded)."""
        words = torch.view_as_real(q).contiguous().view(torch.float32).reshape(batch, -1)
        size = self.hidden_channels * self.grid.nlat * self.grid.nlon
        padded = torch.nn.functional.pad(words, (0, size - words.shape[1]))
        return padded.reshape(batch, self.hidden_channels, self.grid.nlat, self.grid.nlon)

    def unpack(self, hidden: torch.Tensor) -> torch.Tensor:
        """The PV coefficients `pack` stored (the inverse of `pack`, bit for bit)."""
        n = self.fine_truncation + 1
        batch = hidden.shape[0]
        flat = hidden.to(torch.float32).reshape(batch, -1)[:, : self.words].contiguous()
        real = flat.view(self.model.real_dtype).reshape(batch, 2, n, n, 2)
        return torch.view_as_complex(real.contiguous())


TRUTH = register_kind(
    EmulatorKind(
        name="truth",
        title="truth model",
        emulator=PerfectModelEmulator,
        build=PerfectModelEmulator.from_config,
        use_member_settings=PerfectModelEmulator.use_member_settings,
    )
)
"""The predictability limit: the truth's model, built from the config, not trained."""
