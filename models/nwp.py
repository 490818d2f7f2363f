"""The NWP baseline as an `Emulator`: the truth world's own QG model at the model resolution.

It starts from the coarse-grained analyses and integrates the same equations with the same
parameters, but at the model grid's truncation (T21 by default, against the truth's T42), so
its only error is truncation, as with operational NWP (DESIGN.md).
"""

from __future__ import annotations

import numpy as np
import torch
from wxens.data_pipeline.config import ExperimentConfig, MemberKind, NWPConfig
from wxens.data_pipeline.sphere import analysis
from wxens.data_pipeline.training_data import NormalisationStats
from wxens.data_pipeline.truth import LAYER_OF_FIELD, model_grid, steps_per, truth_model
from wxens.models.emulator import Generators
from wxens.models.kinds import EmulatorKind, register_kind


class QGEmulator(torch.nn.Module):
    """The two-layer QG model at `grid.truncation`, stepping 6 h of streamfunction."""

    kind = "nwp"

    def __init__(self, config: ExperimentConfig, device: torch.device | str = "cpu"):
        super().__init__()
        if sorted(config.variables) != sorted(LAYER_OF_FIELD):
            raise ValueError(
                f"the NWP baseline needs variables {sorted(LAYER_OF_FIELD)},"
                f" the config has {config.variables}"
            )
        dynamics = self.dynamics(config)
        self.model = truth_model(dynamics, torch.device(device))
        self.grid = model_grid(config)
        self.truncation = config.grid.truncation
        self.input_variables = tuple(config.variables)
        self.layers = [LAYER_OF_FIELD[name] for name in config.variables]
        self.steps = steps_per(dynamics, config.truth.output_interval_hours)
        self.timestep = np.timedelta64(config.truth.output_interval_hours, "h")

    @staticmethod
    def dynamics(config: ExperimentConfig) -> ExperimentConfig:
        """The config whose `truth:` section is the model this emulator integrates: the truth's
        at the model grid's truncation, with `nwp:`'s precision and time step."""
        truth = {"truncation": config.grid.truncation, "dtype": config.nwp.dtype}
        if config.nwp.timestep_minutes is not None:
            truth["timestep_minutes"] = config.nwp.timestep_minutes
        return config.model_copy(update={"truth": config.truth.model_copy(update=truth)})

    @classmethod
    def from_config(
        cls,
        config: ExperimentConfig,
        stats: NormalisationStats | None = None,
        device: torch.device | str = "cpu",
    ) -> QGEmulator:
        """The baseline of `config` on `device` (it needs no normalisation, `stats`)."""
        return cls(config, device)

    @staticmethod
    def check_config(config: ExperimentConfig) -> None:
        """Refuse a `nwp.timestep_minutes` that does not divide the output interval."""
        minutes = config.nwp.timestep_minutes
        steps = config.truth.output_interval_hours * 60 / (minutes or 1)
        if minutes is not None and abs(steps - round(steps)) > 1e-9:
            raise ValueError(
                f"nwp.timestep_minutes: {minutes} does not divide the"
                f" {config.truth.output_interval_hours} h output interval"
            )

    def use_member_settings(self, members: MemberKind) -> None:
        """The baseline reads no forecast-time member settings."""

    @torch.no_grad()
    def step(self, state: torch.Tensor, *, generator: Generators = None) -> torch.Tensor:
        """Analyse the streamfunction, invert to PV, integrate 6 h, synthesise on the grid."""
        by_layer = state[:, np.argsort(self.layers)].to(self.model.real_dtype)
        psi = analysis(self.grid, self.truncation).to(state.device)(by_layer)
        q = self.model.integrate(self.model.potential_vorticity(psi), self.steps)
        layers = self.model.streamfunction_on(q, self.grid, self.truncation)
        return layers[:, self.layers].to(state.dtype)


def nwp_micro_batch(config: ExperimentConfig) -> int:
    """The baseline's members per CPU forward pass, `nwp.micro_batch`."""
    return config.nwp.micro_batch


NWP = register_kind(
    EmulatorKind(
        name="nwp",
        title="NWP",
        emulator=QGEmulator,
        settings=NWPConfig,
        build=QGEmulator.from_config,
        check=QGEmulator.check_config,
        micro_batch=nwp_micro_batch,
        use_member_settings=QGEmulator.use_member_settings,
    )
)
"""The NWP baseline: built from the config (no checkpoints), not trained."""
