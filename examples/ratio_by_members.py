"""The spread-skill ratio an ensemble store reads with fewer members: how far a small
calibration ensemble's ratio sits from the full ensemble's.

The ratio's `sqrt((M + 1) / M)` (`verification.metrics.spread_skill_ratio`) assumes members
drawn independently of each other. Centred bred pairs (analysis +/- dx) and members spread
evenly over checkpoints or mean networks are not: the ensemble mean's error then falls with M
more slowly than the factor expects, and a small ensemble reads a higher ratio than a large
one of the same settings. This splits the store's members into disjoint blocks of M
(`0..M-1`, `M..2M-1`, ...: whole pairs and whole checkpoint cycles, as the runner assigns
them), and prints, for each M, the ratio from the blocks' mean variance and mean squared
error of their means, area-weighted over the grid and the init times, by day, mean over the
variables:

    python examples/ratio_by_members.py out/targets/diffusion.zarr out/targets/truth.zarr 8 20 100

A store a hindcast is still writing (`NAME.zarr.partial`) is read over its finished inits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import xarray as xr
from wxens.forecast.ensemble_store import EnsembleStore
from wxens.verification.aggregation import cell_area_weights
from wxens.verification.metrics import ensemble_summary_means, spread_skill_ratio
from wxens.verification.verify import open_store

DAYS = np.arange(2, 11)


def finished(store: str, forecast: xr.Dataset) -> xr.Dataset:
    """The init times a hindcast has finished (all of them for a store without task flags)."""
    tasks = EnsembleStore(Path(store))
    if not tasks.created:
        return forecast
    return forecast.isel(init_time=np.flatnonzero(tasks.done().all(axis=1)))


def ratio_by_day(forecast: xr.Dataset, truth: xr.Dataset, members: int) -> np.ndarray:
    """The ratio at each of `DAYS` from `members`-member blocks, mean over the variables."""
    blocks = forecast.sizes["member"] // members
    weights = cell_area_weights(forecast.latitude)
    ratios = []
    for name in forecast.data_vars:
        observed = truth[name].sel(time=forecast.valid_time).load()
        members_data = forecast[name].load()
        means = [
            ensemble_summary_means(
                members_data.isel(member=slice(b * members, (b + 1) * members)),
                observed,
                ["latitude", "longitude", "init_time"],
                weights,
                statistics=("variance", "squared_error"),
            ).compute()
            for b in range(blocks)
        ]
        variance = sum(block["variance"] for block in means) / blocks
        squared_error = sum(block["squared_error"] for block in means) / blocks
        ratios.append(spread_skill_ratio(variance, squared_error, members).values)
    return np.mean(ratios, axis=0)


def main(store: str, truth_store: str, sizes: list[int]) -> None:
    forecast = finished(store, open_store(store))
    leads = DAYS * np.timedelta64(1, "D")
    forecast = forecast[[v for v in forecast.data_vars if "member" in forecast[v].dims]]
    forecast = forecast.sel(lead_time=leads)
    truth = open_store(truth_store)
    print(f"{store}: {forecast.sizes['init_time']} inits, {forecast.sizes['member']} members")
    print("| M | blocks | " + " | ".join(f"day {d}" for d in DAYS) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in DAYS) + " |")
    for members in sizes:
        if members > forecast.sizes["member"]:
            raise SystemExit(f"M={members}: the store has {forecast.sizes['member']} members")
        row = ratio_by_day(forecast, truth, members)
        blocks = forecast.sizes["member"] // members
        print(f"| {members} | {blocks} | " + " | ".join(f"{r:.3f}" for r in row) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], [int(m) for m in sys.argv[3:]])
