"""Peak memory and time of `wxens verify` on a large ensemble store, and CRPS against a peer.

    python benchmarks/verify_scale.py [--members 200] [--inits 120] [--leads 20]
        [--folder /tmp/wxens-verify-scale] [--scheduler threads]

1. Writes a truth store and a forecast store of `inits x leads x members` fields of two
   variables on the 33 x 64 model grid, one init at a time, in the layout of DESIGN.md (one
   (init, lead) of all members per chunk). The members are drawn in float32 but the forecast
   store is float64: the defaults make 2.03 billion member values, 8.1 GB at 4 bytes a value
   (the size reported and checked below) and 16.2 GB of float64 before compression.
2. Runs `wxens verify` on it in a subprocess and reports its wall time and peak RSS
   (acceptance: <= 2 GB for a store of >= 8 GB).
3. In the same run, times the CRPS of a slice of the store with wxens's sorted formula against
   the `scores` package's `crps_for_ensemble` (the peer a verification user would otherwise
   reach for), both on the same in-memory numbers.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask.array
import numpy as np
import pandas as pd
import xarray as xr
from wxens.verification.metrics import crps_ensemble

VARIABLES = ("t", "u")
GRID = {"latitude": np.linspace(90, -90, 33), "longitude": np.arange(64) * 5.625}
DIMS = ("init_time", "lead_time", "member", "latitude", "longitude")
MEMORY_LIMIT_GB = 2.0


def write_truth(path: Path, times: pd.DatetimeIndex, rng: np.random.Generator) -> xr.Dataset:
    """Random walks in time at every grid point (so that consecutive analyses correlate)."""
    walks = np.cumsum(rng.normal(size=(len(VARIABLES), len(times), 33, 64)), axis=1) / 10
    dims = ("time", "latitude", "longitude")
    fields = {v: (dims, w.astype("float32")) for v, w in zip(VARIABLES, walks, strict=True)}
    truth = xr.Dataset(fields, coords={"time": times, **GRID})
    truth.to_zarr(path)
    return truth


def write_forecast(path: Path, truth: xr.Dataset, members: int, inits: int, leads: int) -> None:
    """Members = truth at the valid time + N(0, 0.5^2), written one init at a time."""
    rng = np.random.default_rng(1)
    shape = (inits, leads, members, 33, 64)
    coords = {
        "init_time": truth.time.values[:inits],
        "lead_time": pd.to_timedelta(np.arange(leads) * 6, unit="h"),
        **GRID,
    }
    # float64, as the measured stores were: a positional "float32" here was silently ignored.
    lazy_zeros = dask.array.zeros(shape, dtype="float64", chunks=(1, 1, members, 33, 64))
    template = xr.Dataset({v: (DIMS, lazy_zeros) for v in VARIABLES}, coords=coords)
    template.to_zarr(path, compute=False)
    for i in range(inits):
        fields = {}
        for v in VARIABLES:
            valid = truth[v].values[i : i + leads, None]
            noise = rng.normal(scale=0.5, size=(leads, members, 33, 64))
            fields[v] = (DIMS, (valid + noise).astype("float32")[None])
        xr.Dataset(fields).to_zarr(path, region={"init_time": slice(i, i + 1)})


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_verify(forecast: Path, truth: Path, out: Path, scheduler: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of `wxens verify` in a child process."""
    command = [str(Path(sys.executable).parent / "wxens"), "verify", "--forecast", str(forecast)]
    command += ["--truth", str(truth), "--out", str(out), "--quiet", "--overwrite"]
    command += ["--scheduler", scheduler, "--truncation", "21"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def crps_against_peer(forecast: Path, truth: xr.Dataset, inits: int) -> dict[str, float]:
    """Member-values per second of the CRPS: wxens's sorted formula vs `scores`'."""
    from scores.probability import crps_for_ensemble

    ensemble = xr.open_zarr(forecast)["t"].isel(init_time=slice(0, inits), lead_time=0).load()
    observed = truth["t"].isel(time=slice(0, inits)).rename(time="init_time")
    observed = observed.assign_coords(init_time=ensemble.init_time)
    rates = {}
    for name, score in [
        ("wxens crps_ensemble (fair)", lambda: crps_ensemble(ensemble, observed)),
        (
            "scores crps_for_ensemble (fair)",
            lambda: crps_for_ensemble(ensemble, observed, "member", method="fair"),
        ),
    ]:
        start = time.perf_counter()
        result = score()
        rates[name] = ensemble.size / (time.perf_counter() - start)
        rates[name + " value"] = float(result.mean())
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--inits", type=int, default=120)
    parser.add_argument("--leads", type=int, default=20)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/wxens-verify-scale"))
    parser.add_argument("--scheduler", default="threads")
    parser.add_argument("--keep", action="store_true", help="Keep the stores afterwards.")
    parser.add_argument("--reuse", action="store_true", help="Reuse the stores of a --keep run.")
    args = parser.parse_args()

    start = time.perf_counter()
    if args.reuse and (args.folder / "forecast.zarr").exists():
        truth = xr.open_zarr(args.folder / "truth.zarr").load()
    else:
        shutil.rmtree(args.folder, ignore_errors=True)
        args.folder.mkdir(parents=True)
        times = pd.date_range("2031-01-01", periods=args.inits + args.leads, freq="6h")
        truth = write_truth(args.folder / "truth.zarr", times, np.random.default_rng(0))
        write_forecast(args.folder / "forecast.zarr", truth, args.members, args.inits, args.leads)
    written = time.perf_counter() - start
    values = len(VARIABLES) * args.inits * args.leads * args.members * 33 * 64
    logical = values * 4  # bytes at 4 a value; the float64 store holds twice that
    on_disk = folder_bytes(args.folder / "forecast.zarr")
    seconds, peak = run_verify(
        args.folder / "forecast.zarr",
        args.folder / "truth.zarr",
        args.folder / "scores.zarr",
        args.scheduler,
    )
    rates = crps_against_peer(args.folder / "forecast.zarr", truth, min(args.inits, 8))

    print(f"\nforecast store: {logical / 1e9:.2f} GB at 4 bytes a value, stored as float64 "
          f"({on_disk / 1e9:.2f} GB on disk), "
          f"{args.members} members x {args.inits} inits x {args.leads} leads x 2 variables, "
          f"{'reused' if args.reuse else f'written in {written:.0f} s'}")  # fmt: skip
    print("| measure | value |\n| --- | --- |")
    print(f"| wxens verify wall time ({args.scheduler}) | {seconds:.0f} s |")
    print(f"| wxens verify peak RSS | {peak:.2f} GB (limit {MEMORY_LIMIT_GB} GB) |")
    print(f"| verify throughput | {values / seconds / 1e6:.1f} M member-values/s |")
    for name in ("wxens crps_ensemble (fair)", "scores crps_for_ensemble (fair)"):
        print(f"| CRPS, {name} | {rates[name] / 1e6:.1f} M member-values/s "
              f"(mean {rates[name + ' value']:.4f}) |")  # fmt: skip
    verdict = "PASS" if peak <= MEMORY_LIMIT_GB and logical >= 8e9 else "FAIL"
    print(f"\nacceptance (peak RSS <= {MEMORY_LIMIT_GB} GB on a >= 8 GB store): {verdict}")
    if not args.keep:
        shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
