"""The truth world: run the two-layer QG model at the fine resolution and write a 6-hourly
"reanalysis" coarse-grained spectrally to the model grid."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
import zarr
from wxens.data_pipeline.analysis_store import (
    TIME_CHUNK,
    AnalysisStoreWriter,
    StoreError,
    StoreLock,
    analysis_dataset,
    write_rows,
)
from wxens.data_pipeline.config import ExperimentConfig
from wxens.data_pipeline.progress import progress_bar
from wxens.data_pipeline.provenance import default_device, provenance
from wxens.data_pipeline.qg import TwoLayerQG
from wxens.data_pipeline.sphere import LatLonGrid

from wxens.stores import hours_since_epoch, times_from_hours

TRUTH_FIELDS: dict[str, dict[str, str]] = {
    "psi_upper": {
        "long_name": "upper-layer streamfunction",
        "standard_name": "atmosphere_horizontal_streamfunction",
        "units": "m2 s-1",
    },
    "psi_lower": {
        "long_name": "lower-layer streamfunction",
        "standard_name": "atmosphere_horizontal_streamfunction",
        "units": "m2 s-1",
    },
}
LAYER_OF_FIELD = {"psi_upper": 0, "psi_lower": 1}


def model_grid(config: ExperimentConfig) -> LatLonGrid:
    return LatLonGrid(config.grid.nlat, config.grid.nlon, kind="equiangular")


def truth_model(config: ExperimentConfig, device: torch.device | None = None) -> TwoLayerQG:
    dtype = torch.float64 if config.truth.dtype == "float64" else torch.float32
    return TwoLayerQG(config.truth.qg_parameters(), dtype=dtype).to(device or default_device())


def steps_per(config: ExperimentConfig, hours: float) -> int:
    """Model steps in `hours`; refuse an interval that is not a whole number of steps."""
    ratio = hours * 60 / config.truth.timestep_minutes
    if abs(ratio - round(ratio)) > 1e-9:
        raise ValueError(
            f"{hours} h is not a multiple of truth.timestep_minutes"
            f" ({config.truth.timestep_minutes})"
        )
    return round(ratio)


def spun_up_state(
    model: TwoLayerQG, config: ExperimentConfig, batch: int, generator: torch.Generator, quiet: bool
) -> torch.Tensor:
    """Start from the equilibrium jet plus small noise and integrate `truth.spinup_days`."""
    q = model.rest_state(batch, generator)
    per_day = steps_per(config, 24)
    steps = round(config.truth.spinup_days * per_day)
    with progress_bar(steps, "spin-up", quiet) as advance:
        for start in range(0, steps, per_day):
            q = model.integrate(q, min(per_day, steps - start))
            advance(min(per_day, steps - start))
    return q


def analysis_times(config: ExperimentConfig, years: float) -> pd.DatetimeIndex:
    """Analysis times from `periods.start`: whole calendar years, or `years * 365.25` days."""
    start = pd.Timestamp(config.periods.start)
    if float(years).is_integer():
        end = start + pd.DateOffset(years=int(years))
    else:
        end = start + pd.Timedelta(days=round(years * 365.25))
    return pd.date_range(
        start,
        end,
        freq=f"{config.truth.output_interval_hours}h",
        inclusive="left",
    )


def truth_trajectory(
    config: ExperimentConfig, years: float, quiet: bool = False, device: torch.device | None = None
) -> Iterator[tuple[pd.DatetimeIndex, dict[str, np.ndarray]]]:
    """Yield blocks of `(times, {field: (time, lat, lon)})` on the model grid."""
    model = truth_model(config, device)
    generator = torch.Generator().manual_seed(config.seed)
    q = spun_up_state(model, config, 1, generator, quiet)
    for block, fields, _ in trajectory_from(model, q, analysis_times(config, years), config, quiet):
        yield block, fields


def trajectory_from(
    model: TwoLayerQG,
    q: torch.Tensor,
    times: pd.DatetimeIndex,
    config: ExperimentConfig,
    quiet: bool = False,
) -> Iterator[tuple[pd.DatetimeIndex, dict[str, np.ndarray], torch.Tensor]]:
    """From the model state `q` at `times[0]`, yield blocks of `(times, {field: (time, lat,
    lon)}, q)` on the model grid, `q` the state at the time after the block's last."""
    grid, truncation = model_grid(config), config.grid.truncation
    steps = steps_per(config, config.truth.output_interval_hours)
    with progress_bar(len(times), "truth", quiet) as advance:
        for start in range(0, len(times), TIME_CHUNK):
            block = times[start : start + TIME_CHUNK]
            snapshots = []
            for _ in block:
                snapshots.append(model.streamfunction_on(q, grid, truncation)[0].cpu().numpy())
                q = model.integrate(q, steps)
                advance()
            stacked = np.stack(snapshots)
            if not np.isfinite(stacked).all():
                raise FloatingPointError(f"truth model blew up before {block[-1]}")
            fields = {
                name: stacked[:, layer]
                for name, layer in LAYER_OF_FIELD.items()
                if name in config.variables
            }
            yield block, fields, q


def truth_attributes(config: ExperimentConfig) -> dict[str, object]:
    """What the truth's analyses are: title, source model, conventions, seed."""
    return {
        "title": f"wxens truth world '{config.name}': two-layer QG reanalysis",
        "source": (
            f"two-layer quasi-geostrophic model, T{config.truth.truncation} Gauss grid,"
            f" coarse-grained spectrally to T{config.grid.truncation} on"
            f" {config.grid.nlat}x{config.grid.nlon}"
        ),
        "Conventions": "CF-1.10",
        "planet": "idealised",  # Earth's radius and rotation, no land: maps draw no coastlines
        "wxens_seed": config.seed,
    }


def simulate_truth(
    days: float,
    *,
    spinup_days: float | None = None,
    seed: int | None = None,
    config: ExperimentConfig | None = None,
    quiet: bool = True,
) -> xr.Dataset:
    """`days` of the truth world as a 6-hourly reanalysis on the model grid, in memory.

    The fine-resolution two-layer QG model (`config.truth`; default: `ExperimentConfig()`'s
    T42) starts from the equilibrium jet plus noise drawn from `seed` (default `config.seed`),
    runs `spinup_days` (default `truth.spinup_days`, 200) to reach its chaotic climate, and is
    then coarse-grained spectrally to the model grid (`config.grid`) every
    `truth.output_interval_hours` from `periods.start`. The fields (`config.variables`: upper
    and lower streamfunction, m2 s-1) are float32 on `time`, `latitude` (descending) and
    `longitude`. `wxens data truth` writes the same analyses to a Zarr store.

    Example:
        >>> import wxens
        >>> truth = wxens.simulate_truth(days=1, spinup_days=1)
        >>> dict(truth.sizes), truth.psi_upper.attrs["units"]
        ({'time': 4, 'latitude': 33, 'longitude': 64}, 'm2 s-1')
    """
    config = config or ExperimentConfig()
    if days <= 0:
        raise ValueError(f"the truth needs a positive number of days, got {days}")
    truth = {} if spinup_days is None else {"spinup_days": spinup_days}
    config = config.model_copy(
        update={
            "truth": config.truth.model_copy(update=truth),
            **({"seed": seed} if seed is not None else {}),
        }
    )
    grid = model_grid(config)
    blocks = [
        analysis_dataset(fields, times.values, grid, TRUTH_FIELDS)
        for times, fields in truth_trajectory(config, days / 365.25, quiet)
    ]
    return xr.concat(blocks, "time").assign_attrs(truth_attributes(config))


def write_truth(
    config: ExperimentConfig,
    config_dict: dict,
    years: float,
    out: Path,
    overwrite: bool = False,
    quiet: bool = False,
) -> Path:
    """Run the truth world for `years` years and write the analysis store at `out`, with the
    model's state after its last analysis (`extend_truth` continues from it)."""
    if years <= 0:
        raise ValueError(f"the truth needs a positive number of years, got {years}")
    attrs = {
        **truth_attributes(config),
        **provenance(config_dict, "wxens data truth", years=years, out=out),
    }
    grid = model_grid(config)
    model = truth_model(config)
    start = spun_up_state(model, config, 1, torch.Generator().manual_seed(config.seed), quiet)
    times = analysis_times(config, years)
    with AnalysisStoreWriter(out, attrs, overwrite=overwrite) as writer:
        state = start
        for block, fields, after in trajectory_from(model, start, times, config, quiet):
            writer.append(analysis_dataset(fields, block.values, grid, TRUTH_FIELDS))
            state = after
        _save_state(writer.partial, state, times[-1] + _interval(config))
    return out


MODEL_STATE = "model_state/q"
"""The truth model's state after the last analysis, in a child group that xarray does not
show: one float64 array, `[hours since 1970 of the next analysis, *q as (real, imaginary)
pairs]`, written in one piece (one file)."""


def _interval(config: ExperimentConfig) -> pd.Timedelta:
    return pd.Timedelta(hours=config.truth.output_interval_hours)


def _save_state(store: Path, q: torch.Tensor, next_time: pd.Timestamp) -> None:
    values = np.concatenate(
        [
            [float(hours_since_epoch(next_time.to_datetime64()))],
            torch.view_as_real(q).numpy().ravel(),
        ]
    )
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    if MODEL_STATE not in group:
        group.create_array(MODEL_STATE, shape=values.shape, dtype="float64", chunks=values.shape)
        group[MODEL_STATE].attrs["q_shape"] = list(torch.view_as_real(q).shape)
    group[MODEL_STATE][:] = values


def extend_truth(config: ExperimentConfig, store: Path, until: object, quiet: bool = True) -> int:
    """Extend the truth store at `store` (from `write_truth`) with the analyses up to `until`
    (included), continuing the model from its saved state; return how many were added.

    Resumable: rows are written first and the state after them, so a run killed halfway is
    continued from the last saved state by the next, which writes the same numbers again (a
    continued truth is bitwise the truth run in one go). One writer at a time (`STORE.lock`).
    """
    lock = StoreLock(Path(store))
    lock.check()
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    if MODEL_STATE not in group:
        raise StoreError(f"{store}: no saved model state to continue from; rewrite the truth")
    saved = group[MODEL_STATE][:]
    next_time = pd.Timestamp(times_from_hours(saved[0]))
    times = pd.date_range(next_time, pd.Timestamp(until), freq=_interval(config))
    if not len(times):
        return 0
    first = pd.Timestamp(times_from_hours(group["time"][0]))
    index = int((next_time - first) / _interval(config))
    shape = group[MODEL_STATE].attrs["q_shape"]
    # A copy: q's complex values need their own 16-byte aligned memory, not a view at offset 8.
    start = torch.view_as_complex(torch.from_numpy(saved[1:].reshape(shape).copy()))
    lock.acquire()
    try:
        model = truth_model(config)
        for block, fields, q in trajectory_from(model, start, times, config, quiet):
            write_rows(group, index, block.values, fields)
            _save_state(Path(store), q, block[-1] + _interval(config))
            index += len(block)
    finally:
        lock.release()
    return len(times)


def simulated_years_per_minute(model: TwoLayerQG, steps: int, seconds: float) -> float:
    """Throughput of a batch-1 run: simulated years per wall-clock minute."""
    simulated_days = steps * model.dt / 86400.0
    return simulated_days / 365.25 / (seconds / 60.0) if seconds > 0 else math.inf
