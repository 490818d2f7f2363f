"""Deterministic skill of emulators against the analyses (`wxens skill`).

From `init_dates` test-period analyses, spaced evenly, each emulator rolls out to `lead_days`;
the score is the area-weighted RMSE per variable and lead,

    RMSE(lead) = sqrt( mean_inits sum_ij w_ij (x^_ij - x_ij)^2 ),  sum_ij w_ij = 1,

(square root taken last) against the verifying analyses, with `w` the project's one area
weighting (`data_pipeline.training_data.area_weights`, the cell areas of
`verification.aggregation.cell_area_weights`), so it is the ensemble-mean RMSE `wxens verify`
gives a one-member forecast; persistence (the initial state) and climatology (the
training-years time mean at each grid point) are the references.

`rollout_checks` adds the long-rollout acceptance checks: a rollout of `days` stays finite and
its domain-mean kinetic energy stays inside the range the truth spans in the test year, and at
`spectrum_day` the emulator's power at wavenumbers 10-20 is within a factor 2 of the truth's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import ExperimentConfig
from wxens.data_pipeline.progress import progress_bar
from wxens.data_pipeline.sphere import kinetic_energy_spectrum, power_spectrum
from wxens.data_pipeline.training_data import (
    analysis_states,
    area_weights,
    check_variables,
    year_window,
)
from wxens.data_pipeline.truth import model_grid
from wxens.models.emulator import Emulator, rollout

SPECTRUM_BAND = (10, 20)  # total wavenumbers of the no-blurring check


class Analyses:
    """The analyses of one experiment held in memory for scoring: the test period as
    `(time, channel, lat, lon)` float32, the training-years climatology and the area weights."""

    def __init__(self, path: Path, config: ExperimentConfig):
        dataset = open_analyses(path)
        check_variables(dataset, config.variables)
        times = dataset["time"].values
        periods = config.periods
        test = year_window(times, (periods.test.first, periods.test.last))
        train = year_window(times, (periods.train.first, periods.train.last))
        self.times = times[test]
        self.test = analysis_states(dataset, config.variables, test)
        fields = dataset[list(config.variables)].to_array("channel")
        climate = fields.isel(time=train).astype(np.float64)
        self.climatology = torch.from_numpy(climate.mean("time").values.astype(np.float32))
        self.weights = torch.from_numpy(
            area_weights(dataset["latitude"].values, dataset["longitude"].values)
        )
        weights = xr.DataArray(self.weights.numpy(), dims=("latitude", "longitude"))
        variance = (climate.var("time") * weights).sum(("latitude", "longitude")).values
        self.climatological_std = dict(zip(config.variables, np.sqrt(variance), strict=True))
        dataset.close()

    def init_indices(self, count: int, lead_steps: int) -> np.ndarray:
        """`count` evenly spaced test-period inits whose whole forecast lies in the period."""
        last = len(self.times) - 1 - lead_steps
        if last < 0 or count < 1:
            raise ValueError(
                f"the test period ({len(self.times)} analyses) is shorter than the lead"
                f" ({lead_steps} steps)"
            )
        return np.unique(np.linspace(0, last, count).round().astype(int))


def area_rmse(forecast: torch.Tensor, truth: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """RMSE per channel over a batch `(batch, channel, lat, lon)`: sqrt(mean_b sum_ij w e^2)."""
    squared = (forecast.double() - truth.double()) ** 2
    return (squared * weights).sum(dim=(-2, -1)).mean(dim=0).sqrt().numpy()


def as_dict(variables: tuple[str, ...] | list[str], rows: np.ndarray) -> dict[str, list[float]]:
    """`(lead, channel)` scores as `{variable: [score per lead]}`."""
    return {name: [float(v) for v in rows[:, c]] for c, name in enumerate(variables)}


def deterministic_skill(
    analyses: Analyses,
    emulators: Mapping[str, Emulator],
    variables: list[str],
    init_dates: int,
    lead_steps: int,
    device: torch.device,
    quiet: bool = False,
) -> dict[str, Any]:
    """RMSE by variable and lead of each emulator, persistence and climatology."""
    inits = analyses.init_indices(init_dates, lead_steps)
    start = analyses.test[inits]
    truth = [analyses.test[inits + k] for k in range(1, lead_steps + 1)]
    rmse = {
        "persistence": np.stack([area_rmse(start, t, analyses.weights) for t in truth]),
        "climatology": np.stack(
            [area_rmse(analyses.climatology.expand_as(t), t, analyses.weights) for t in truth]
        ),
    }
    with progress_bar(len(emulators) * lead_steps, "skill", quiet) as advance:
        for name, emulator in emulators.items():
            rows = []
            for k, state in enumerate(rollout(emulator, start.to(device), lead_steps)):
                rows.append(area_rmse(state.cpu(), truth[k], analyses.weights))
                advance()
            rmse[name] = np.stack(rows)
    step_hours = (analyses.times[1] - analyses.times[0]) / np.timedelta64(1, "h")
    return {
        "variables": list(variables),
        "lead_hours": [float(step_hours * k) for k in range(1, lead_steps + 1)],
        "init_times": [str(t) for t in analyses.times[inits]],
        "climatological_std": {k: float(v) for k, v in analyses.climatological_std.items()},
        "rmse": {name: as_dict(variables, rows) for name, rows in rmse.items()},
    }


def total_kinetic_energy(fields: torch.Tensor, config: ExperimentConfig) -> torch.Tensor:
    """Domain-mean kinetic energy summed over the streamfunction channels, `(batch,)`, m2 s-2."""
    spectrum = kinetic_energy_spectrum(fields.double(), model_grid(config), config.grid.truncation)
    return spectrum.sum(dim=(-2, -1))


def rollout_checks(
    analyses: Analyses,
    emulator: Emulator,
    config: ExperimentConfig,
    days: int,
    spectrum_day: int,
    inits: int,
    device: torch.device,
) -> dict[str, Any]:
    """Stability over `days` and the no-blurring spectrum check at `spectrum_day`."""
    step_hours = (analyses.times[1] - analyses.times[0]) / np.timedelta64(1, "h")
    steps, spectrum_step = round(days * 24 / step_hours), round(spectrum_day * 24 / step_hours)
    indices = analyses.init_indices(inits, spectrum_step)
    grid, truncation = model_grid(config), config.grid.truncation
    truth_energy = total_kinetic_energy(analyses.test, config)
    energies, finite, spectrum = [], True, None
    for k, state in enumerate(rollout(emulator, analyses.test[indices].to(device), steps), 1):
        state = state.cpu()
        finite = finite and bool(torch.isfinite(state).all())
        if not finite:
            break
        energies.append(total_kinetic_energy(state, config))
        if k == spectrum_step:
            spectrum = power_spectrum(state.double(), grid, truncation).mean(dim=0)
    energy = torch.stack(energies) if energies else torch.zeros(1)
    low, high = SPECTRUM_BAND[0], min(SPECTRUM_BAND[1], truncation)
    truth_spectrum = power_spectrum(
        analyses.test[indices + spectrum_step].double(), grid, truncation
    ).mean(dim=0)
    ratio = None
    if spectrum is not None and low <= high:
        ratio = (spectrum / truth_spectrum)[:, low : high + 1]
    return {
        "days": days,
        "finite": finite,
        "kinetic_energy_range": [float(energy.min()), float(energy.max())],
        "truth_kinetic_energy_range": [float(truth_energy.min()), float(truth_energy.max())],
        "energy_within_truth_range": finite and float(energy.max()) <= float(truth_energy.max()),
        "spectrum_day": spectrum_day,
        "spectrum_ratio": None if ratio is None else as_dict(config.variables, ratio.T.numpy()),
        "spectrum_within_factor_2": ratio is not None
        and bool(((ratio >= 0.5) & (ratio <= 2)).all()),
    }
