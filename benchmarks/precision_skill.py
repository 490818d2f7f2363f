"""The demo's SFNO ensemble at `sfno.precision: bf16-cpu` against float32: skill must hold.

    python benchmarks/precision_skill.py      # after `make demo` (its truth)

Runs `make demo`'s SFNO hindcast (configs/demo.yaml: 100 members, 8 inits, 10-day leads) at
each precision into `out/precision/sfno-PRECISION.zarr` (timed), scores the bf16 one with the
float32 one as a reference system (`wxens.verify`), and prints the fair CRPS
and spread-skill ratio (global means over both layers) at days 1, 3, 5 and 10 and the members'
day-10 power spectrum by wavenumber, each as bf16 / float32. Targets: CRPS and ratio within
1 %, the spectrum within 2 % at every wavenumber from 1 to the truncation.
"""

from __future__ import annotations

import time
from pathlib import Path

import xarray as xr
from wxens.data_pipeline.config import write_overlay
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.forecast.demo import CONFIG, OUT, SUMMARY_DAYS, at_day, hindcast

import wxens

FOLDER = Path("out/precision")
TOLERANCE = {"crps": 0.01, "spread_skill_ratio": 0.01, "power": 0.02}


def compare(scores: xr.Dataset) -> list[tuple[str, float, float, float]]:
    """(name, float32 value, bf16 value, tolerance of bf16 / float32 - 1) rows."""
    rows = []
    for score in ("crps", "spread_skill_ratio"):
        for day in SUMMARY_DAYS:
            values = at_day(scores.sel(region="global"), day)[score].mean("variable")
            pair = float(values.sel(system="float32")), float(values.sel(system="forecast"))
            rows.append((f"{score} day {day}", *pair, TOLERANCE[score]))
    power = at_day(scores, 10).power_members.mean("variable")
    for wavenumber in power.wavenumber.values[1:]:
        pair = [float(power.sel(system=s, wavenumber=wavenumber)) for s in ("float32", "forecast")]
        rows.append((f"power day 10, l = {wavenumber}", *pair, TOLERANCE["power"]))
    return rows


def main() -> None:
    keep_freed_memory()
    FOLDER.mkdir(parents=True, exist_ok=True)
    truth = OUT / "truth.zarr"
    if not truth.exists():
        raise SystemExit(f"run make demo first: {truth} is missing")
    stores, minutes = {}, {}
    for precision in ("float32", "bf16-cpu"):
        stores[precision] = FOLDER / f"sfno-{precision}.zarr"
        started = time.perf_counter()
        config = FOLDER / f"demo-{precision}.yaml"
        write_overlay(config, CONFIG, {"sfno": {"precision": precision}})
        hindcast("sfno", stores[precision], truth, config)
        minutes[precision] = (time.perf_counter() - started) / 60
    scores = wxens.verify(
        stores["bf16-cpu"], truth, FOLDER / "scores.zarr", {"float32": stores["float32"]},
        overwrite=True,
    ).load()  # fmt: skip
    print(
        f"\nhindcasts: float32 {minutes['float32']:.1f} min, bf16-cpu {minutes['bf16-cpu']:.1f} min"
    )
    print(f"{'':28}{'float32':>12}{'bf16-cpu':>12}{'ratio':>9}")
    failures = 0
    for name, reference, value, tolerance in compare(scores):
        ratio = value / reference
        verdict = "ok" if abs(ratio - 1) <= tolerance else "OUTSIDE"
        failures += verdict != "ok"
        print(f"{name:28}{reference:>12.4g}{value:>12.4g}{ratio:>9.4f}  {verdict}")
    print(f"{failures} outside the tolerances {TOLERANCE}")


if __name__ == "__main__":
    main()
