"""Does the truth world behave like weather? Climate statistics and twin experiments.

All errors and standard deviations are of the upper-layer streamfunction on the model grid
(coarse-grained), area-weighted. The climatological std sigma_clim is the area-weighted RMS
over grid points of each point's standard deviation in time, after spin-up (DESIGN.md).

- doubling_time_days: ln 2 / slope of a least-squares line through ln(error) against time over
  days 1-5, error being the geometric mean over twin pairs started 1e-3 sigma_clim apart.
- saturation_days: first day on which the RMS over pairs of the error, from an analysis-like
  large-scale error of 0.1 sigma_clim, reaches 0.9 sqrt(2) sigma_clim.
- eke_year_spread: max over years of |yearly mean EKE / all-years mean - 1|.
- spectrum_peak_wavenumber: total wavenumber of the maximum of the time-mean eddy (m > 0)
  kinetic energy spectrum.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from wxens.data_pipeline.config import ExperimentConfig
from wxens.data_pipeline.progress import progress_bar
from wxens.data_pipeline.qg import TwoLayerQG
from wxens.data_pipeline.sphere import EARTH_RADIUS_M, gaussian_random_field
from wxens.data_pipeline.truth import (
    model_grid,
    simulated_years_per_minute,
    spun_up_state,
    steps_per,
    truth_model,
)


def area_weighted_rms(field: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`sqrt(sum_ij w_ij field_ij^2)` over the last two axes; `weights` sum to 1."""
    return np.sqrt((field**2 * weights).sum(axis=(-2, -1)))


def doubling_time_days(days: np.ndarray, errors: np.ndarray) -> float:
    """`ln 2 / slope` of `ln(geometric-mean error)` against days, fitted over days 1-5.

    `errors` is `(time, pair)`.
    """
    window = (days >= 1) & (days <= 5)
    log_error = np.log(errors[window]).mean(axis=1)
    slope = np.polyfit(days[window], log_error, 1)[0]
    return float(math.log(2) / slope) if slope > 0 else math.inf


def saturation_day(days: np.ndarray, errors: np.ndarray, clim_std: float) -> float | None:
    """First day on which the RMS over pairs of `errors` `(time, pair)` reaches 0.9 sqrt(2) sigma;
    None if it never does."""
    rms = np.sqrt((errors**2).mean(axis=1))
    reached = np.nonzero(rms >= 0.9 * math.sqrt(2) * clim_std)[0]
    return float(days[reached[0]]) if reached.size else None


def jet_maxima(model: TwoLayerQG, mean_zonal_psi: torch.Tensor) -> dict[str, dict[str, float]]:
    """Latitude and speed of the upper-layer zonal-mean westerly maximum in each hemisphere."""
    u = model.transforms.gradient(mean_zonal_psi)[0].mean(-1).cpu().numpy() / EARTH_RADIUS_M
    lat = model.grid.latitude
    jets = {}
    for name, rows in (("north", lat > 0), ("south", lat < 0)):
        i = np.argmax(np.where(rows, u, -np.inf))
        jets[name] = {"latitude": round(float(lat[i]), 1), "speed_m_s": round(float(u[i]), 1)}
    return jets


class ClimateRun:
    """A batch-1 run after spin-up that records daily climate statistics and saves states."""

    def __init__(self, model: TwoLayerQG, config: ExperimentConfig):
        self.model, self.config = model, config
        self.grid = model_grid(config)
        self.weights = self.grid.area_weights()
        self.daily_eke: list[float] = []
        self.upper_psi: list[np.ndarray] = []
        self.states: list[torch.Tensor] = []

    def run(self, q: torch.Tensor, quiet: bool) -> float:
        """Integrate `diagnose.years` years; return simulated years per minute."""
        model, config = self.model, self.config
        per_day = steps_per(config, 24)
        days = round(config.diagnose.years * 365.25)
        spectrum = torch.zeros(model.params.truncation + 1, dtype=model.real_dtype, device=q.device)
        zonal_psi = torch.zeros_like(q[0, 0])
        seconds = 0.0
        with progress_bar(days, "climate run", quiet) as advance:
            for day in range(days):
                if day % 30 == 0 and len(self.states) < config.diagnose.twin_pairs:
                    self.states.append(q.clone())
                started = time.perf_counter()
                q = model.integrate(q, per_day)
                seconds += time.perf_counter() - started
                daily_spectrum = model.eddy_kinetic_energy_spectrum(q)[0]
                self.daily_eke.append(float(daily_spectrum.sum()))
                spectrum += daily_spectrum
                psi = model.streamfunction(q)[0, 0]
                zonal_psi[:, 0] += psi[:, 0]
                upper = model.streamfunction_on(q, self.grid, config.grid.truncation)[0, 0]
                self.upper_psi.append(upper.cpu().numpy())
                advance()
        if not np.isfinite(self.daily_eke).all():
            raise FloatingPointError("truth model blew up during the climate run")
        self.mean_spectrum = (spectrum / days).cpu().numpy()
        self.mean_zonal_psi = zonal_psi / days
        return simulated_years_per_minute(model, days * per_day, seconds)

    def climatological_std(self) -> float:
        point_std = np.stack(self.upper_psi).std(axis=0)
        return float(area_weighted_rms(point_std, self.weights))

    def eke_year_spread(self) -> float:
        eke = np.asarray(self.daily_eke)
        years = self.config.diagnose.years
        per_year = len(eke) // years
        yearly = eke[: per_year * years].reshape(years, per_year).mean(axis=1)
        return float(np.abs(yearly / yearly.mean() - 1).max())


def scaled_perturbation(
    model: TwoLayerQG,
    config: ExperimentConfig,
    pairs: int,
    target_rms: float,
    length_scale_km: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Streamfunction perturbations of both layers whose upper-layer RMS on the model grid is
    `target_rms` for every pair."""
    T = model.params.truncation
    dpsi = gaussian_random_field((pairs, 2), T, length_scale_km * 1e3, generator)
    dpsi = dpsi.to(device=model.k_sq.device, dtype=model.complex_dtype)
    grid = model_grid(config)
    upper = model.streamfunction_on(model.potential_vorticity(dpsi), grid, config.grid.truncation)
    rms = area_weighted_rms(upper[:, 0].cpu().numpy(), grid.area_weights())
    scale = torch.as_tensor(target_rms / rms, device=dpsi.device)
    return dpsi * scale[:, None, None, None]


def twin_errors(
    model: TwoLayerQG,
    config: ExperimentConfig,
    states: list[torch.Tensor],
    clim_std: float,
    generator: torch.Generator,
    quiet: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run controls, small-error twins and analysis-error twins side by side in one batch.

    Returns `(days, small_errors, analysis_errors)`, errors `(time, pair)` every output step.
    """
    cfg = config.diagnose
    pairs = len(states)
    control = torch.cat(states)
    small = scaled_perturbation(
        model,
        config,
        pairs,
        cfg.small_error * clim_std,
        cfg.perturbation_length_scale_km,
        generator,
    )
    analysis = scaled_perturbation(
        model, config, pairs, cfg.analysis_error * clim_std, cfg.analysis_length_scale_km, generator
    )
    q = torch.cat(
        [
            control,
            control + model.potential_vorticity(small),
            control + model.potential_vorticity(analysis),
        ]
    )
    grid = model_grid(config)
    weights = grid.area_weights()
    steps = steps_per(config, config.truth.output_interval_hours)
    outputs = round(cfg.twin_days * 24 / config.truth.output_interval_hours)
    days, small_err, analysis_err = [], [], []
    with progress_bar(outputs, "twin experiments", quiet) as advance:
        for k in range(outputs + 1):
            upper = model.streamfunction_on(q, grid, config.grid.truncation)[:, 0].cpu().numpy()
            days.append(k * config.truth.output_interval_hours / 24)
            small_err.append(area_weighted_rms(upper[pairs : 2 * pairs] - upper[:pairs], weights))
            analysis_err.append(area_weighted_rms(upper[2 * pairs :] - upper[:pairs], weights))
            if k < outputs:
                q = model.integrate(q, steps)
                advance()
    return np.asarray(days), np.asarray(small_err), np.asarray(analysis_err)


def diagnose(config: ExperimentConfig, quiet: bool = False, device=None) -> dict[str, object]:
    """All the numbers of `wxens data diagnose`, as a JSON-ready dict."""
    model = truth_model(config, device)
    generator = torch.Generator().manual_seed(config.seed)
    q = spun_up_state(model, config, 1, generator, quiet)
    climate = ClimateRun(model, config)
    years_per_minute = climate.run(q, quiet)
    clim_std = climate.climatological_std()
    days, small, analysis = twin_errors(model, config, climate.states, clim_std, generator, quiet)
    spectrum = climate.mean_spectrum
    return {
        "doubling_time_days": round(doubling_time_days(days, small), 3),
        "saturation_days": saturation_day(days, analysis, clim_std),
        "eke_year_spread": round(climate.eke_year_spread(), 4),
        "spectrum_peak_wavenumber": int(np.argmax(spectrum[1:]) + 1),
        "sim_years_per_minute": round(years_per_minute, 3),
        "mean_eddy_kinetic_energy_m2_s2": round(float(np.mean(climate.daily_eke)), 2),
        "climatological_std_psi_upper_m2_s": float(f"{clim_std:.4g}"),
        "jets": jet_maxima(model, climate.mean_zonal_psi),
        "twin_pairs": len(climate.states),
        "years": config.diagnose.years,
        "truncation": model.params.truncation,
        "device": str(model.k_sq.device),
        "torch_threads": torch.get_num_threads(),
    }
