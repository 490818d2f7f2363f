"""`make demo`: the main job on the embedded default world, with the committed checkpoints.

Each step is the `wxens` command a user would type (printed before it runs), into `out/demo/`;
they run in this one process, which saves each command's 12 s of imports (torch, torch-harmonics,
xarray, dask):

1. `wxens data truth`: a fresh 62-day test period of the truth world (configs/demo.yaml: a
   trajectory the emulators never saw).
2. `wxens hindcast`: a 100-member SFNO ensemble (bred vectors, the members spread over the four
   checkpoints) from 8 init dates, 5 days apart, with 10-day leads.
3. `wxens hindcast --model nwp`: the NWP baseline's ensemble, with the same perturbations.
4. `wxens verify`: both against the truth, with persistence as a third reference.
5. `wxens report`: the HTML report, scorecards against the NWP baseline.

It then prints the headline numbers (also in `out/demo/summary.json`) and the report's path.
Nothing is trained; every store is rewritten (`--overwrite`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import xarray as xr
import yaml
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.forecast.cli import app

CONFIG = Path("configs/demo.yaml")
OUT = Path("out/demo")
INITS = {"start": "2031-01-16", "end": "2031-02-20", "every": "5D"}  # 8 init dates
MEMBERS = 100
LEAD_DAYS = 10
SUMMARY_DAYS = (1, 3, 5, 10)


def wxens(*arguments: str) -> None:
    """Run one `wxens` command in this process, echoing it first; exit as it did if it failed."""
    print(f"\n$ wxens {' '.join(arguments)}", flush=True)
    started = time.perf_counter()
    try:
        app(list(arguments), prog_name="wxens")
    except SystemExit as done:  # typer ends every command with one, 0 on success
        if done.code not in (0, None):
            raise
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def hindcast(model: str, out: Path) -> None:
    wxens(
        "hindcast",
        *("--config", str(CONFIG), "--model", model, "--members", str(MEMBERS)),
        *("--start", INITS["start"], "--end", INITS["end"], "--every", INITS["every"]),
        *("--lead-days", str(LEAD_DAYS), "--out", str(out), "--overwrite", "--quiet"),
    )


def truth_days() -> int:
    """Days of truth from the config's `periods.start` to the last valid time (the last init
    + LEAD_DAYS), with a day to spare: 62 for the 8 inits."""
    start = np.datetime64(yaml.safe_load(CONFIG.read_text())["periods"]["start"], "D")
    last_valid = np.datetime64(INITS["end"], "D") + np.timedelta64(LEAD_DAYS, "D")
    return int((last_valid - start) / np.timedelta64(1, "D")) + 2


def at_day(scores: xr.Dataset, day: float) -> xr.Dataset:
    return scores.sel(lead_time=np.timedelta64(int(day * 24), "h"))


def summary(scores: xr.Dataset) -> dict:
    """The headline numbers, global means: where the SFNO ensemble's fair CRPS beats the NWP
    baseline's (every variable x 6-hourly lead of days 1-10), spread-skill ratios and outlier
    fractions by lead, and the EFI's ROC area for events above the climate's 95th percentile."""
    scores = scores.sel(region="global")
    days = scores.lead_time / np.timedelta64(1, "D")
    crps = scores.crps.where((days >= 1) & (days <= LEAD_DAYS), drop=True)
    beats = (crps.sel(system="forecast") < crps.sel(system="nwp")).values
    members = json.loads(scores.attrs["members"])
    by_day = {day: at_day(scores, day) for day in SUMMARY_DAYS}

    def per_day(values: dict) -> dict:
        return {f"day {day}": values[day] for day in SUMMARY_DAYS}

    def by_system(score: str, **labels: object) -> dict:
        return {
            system: per_day(
                {
                    d: round(float(s[score].sel(system=system, **labels).mean()), 3)
                    for d, s in by_day.items()
                }
            )
            for system in ("forecast", "nwp")
        }

    return {
        "sfno_crps_beats_nwp_fraction": round(float(beats.mean()), 3),
        "sfno_crps_beats_nwp_cases": f"{int(beats.sum())} of {beats.size} variable x lead",
        "spread_skill_ratio": by_system("spread_skill_ratio"),
        "outlier_fraction": by_system("outlier_fraction"),
        "outlier_fraction_if_calibrated": {
            system: round(2 / (members[system] + 1), 4) for system in ("forecast", "nwp")
        },
        "efi_roc_auc_q95": by_system("efi_roc_auc", quantile=0.95),
    }


def main() -> None:
    started = time.perf_counter()
    keep_freed_memory()  # as the `wxens` entry point does
    OUT.mkdir(parents=True, exist_ok=True)
    truth, sfno, nwp = OUT / "truth.zarr", OUT / "sfno.zarr", OUT / "nwp.zarr"
    scores_path, report = OUT / "scores.zarr", OUT / "report"
    years = f"{truth_days() / 365.25:.6f}"
    wxens(
        *("data", "truth", "--config", str(CONFIG), "--years", years),
        *("--out", str(truth), "--overwrite"),
    )
    hindcast("sfno", sfno)
    hindcast("nwp", nwp)
    wxens(
        "verify",
        *("--forecast", str(sfno), "--truth", str(truth), "--out", str(scores_path)),
        *("--reference", f"nwp={nwp}", "--reference", "persistence", "--overwrite", "--quiet"),
    )
    wxens("report", str(scores_path), "--out", str(report), "--reference", "nwp")
    numbers = summary(xr.open_zarr(scores_path).load())
    (OUT / "summary.json").write_text(json.dumps(numbers, indent=2))
    print("\nwxens demo: SFNO ensemble (forecast) against the NWP baseline ensemble (nwp)")
    print(json.dumps(numbers, indent=2))
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min; the report:")
    print((report / "index.html").resolve())


if __name__ == "__main__":
    main()
