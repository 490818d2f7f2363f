"""`make demo`: the main job on the embedded default world, with the committed checkpoints.

Each step calls the library function behind a `wxens` command, into `out/demo/`, and prints
the command a user would type to do the same (one process saves each command's 12 s of
imports: torch, torch-harmonics, xarray, dask):

1. `wxens data truth`: a fresh 62-day test period of the truth world (configs/demo.yaml: a
   trajectory the emulators never saw).
2. `wxens hindcast`: a 100-member SFNO ensemble (bred vectors, the members spread over the four
   checkpoints) from 8 init dates, 5 days apart, with 10-day leads.
3. `wxens hindcast --model nwp`: the NWP baseline's ensemble, with the same perturbations.
4. `wxens verify`: both against the truth, with persistence as a third reference.
5. `wxens report`: the HTML report, scorecards against the NWP baseline.

It then prints the headline numbers (also in `out/demo/summary.json`) and the report's path.
Nothing is trained; every store is rewritten (`--overwrite`).

`make limit` (`--limit`), after the demo: the predictability limit of its SFNO ensemble, the
truth's own model (member kind `truth`) from the SFNO members' own perturbed analyses
(configs/demo-limit.yaml, 16 members), verified with the SFNO, NWP and persistence; its report
shows the CRPS gap between the NWP baseline and the limit that the SFNO ensemble closes
(`out/demo/limit/`, numbers in `out/demo/limit/summary.json`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import yaml
from wxens.data_pipeline.config import load_config
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.data_pipeline.truth import write_truth
from wxens.forecast.runner import RunOptions, run_configured_ensemble
from wxens.verification.report import summary_table

import wxens

CONFIG = Path("configs/demo.yaml")
OUT = Path("out/demo")
INITS = {"start": "2031-01-16", "end": "2031-02-20", "every": "5D"}  # 8 init dates
MEMBERS = 100
LIMIT_CONFIG = Path("configs/demo-limit.yaml")
LIMIT_MEMBERS = 16
"""Two forward passes of 8: fair CRPS lets the limit use fewer members than the SFNO's 100."""
LEAD_DAYS = 10
SUMMARY_DAYS = (1, 3, 5, 10)


def step(command: str, run: Callable[[], object]) -> None:
    """Print the `wxens` command that does what `run` does, run it, print its time."""
    print(f"\n$ wxens {command}", flush=True)
    started = time.perf_counter()
    result = run()
    if result is not None:
        print(f"  {result}")
    print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)


def hindcast(
    model: str, out: Path, truth: Path, config: Path = CONFIG, members: int = MEMBERS
) -> None:
    inits = pd.date_range(INITS["start"], INITS["end"], freq=INITS["every"]).values
    options = RunOptions(out, overwrite=True, quiet=True, command="hindcast")
    step(
        f"hindcast --config {config} --model {model} --members {members} --start {INITS['start']}"
        f" --end {INITS['end']} --every {INITS['every']} --lead-days {LEAD_DAYS}"
        f" --analyses {truth} --out {out}"
        " --overwrite --quiet",
        lambda: run_configured_ensemble(
            load_config(config),
            inits,
            members,
            f"{LEAD_DAYS}D",
            options,
            model=model,
            analyses=truth,
        ),
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
    fractions by lead, the EFI's ROC area for events above the climate's 95th percentile, and
    the targets table of both (`verification.targets`; 8 inits: no bootstrap intervals)."""
    targets = demo_targets(scores, ["forecast", "nwp"], limit=None)
    scores = scores.sel(region="global")
    days = scores.lead_time / np.timedelta64(1, "D")
    crps = scores.crps.where((days >= 1) & (days <= LEAD_DAYS), drop=True)
    beats = (crps.sel(system="forecast") < crps.sel(system="nwp")).values
    members = json.loads(scores.attrs["members"])

    def by_system(score: str, **labels: object) -> dict:
        return mean_by_day(scores, score, ("forecast", "nwp"), **labels)

    return {
        "sfno_crps_beats_nwp_fraction": round(float(beats.mean()), 3),
        "sfno_crps_beats_nwp_cases": f"{int(beats.sum())} of {beats.size} variable x lead",
        "spread_skill_ratio": by_system("spread_skill_ratio"),
        "outlier_fraction": by_system("outlier_fraction"),
        "outlier_fraction_if_calibrated": {
            system: round(2 / (members[system] + 1), 4) for system in ("forecast", "nwp")
        },
        "efi_roc_auc_q95": by_system("efi_roc_auc", quantile=0.95),
        "targets": targets,
    }


def demo_targets(scores: xr.Dataset, systems: list[str], limit: str | None) -> dict:
    """`verification.targets` of `systems` against the NWP baseline (and `limit`)."""
    from wxens.verification.targets import target_values, targets_summary

    return targets_summary(target_values(scores.sel(system=systems), "nwp", limit))


def mean_by_day(scores: xr.Dataset, score: str, systems: tuple[str, ...], **labels: object) -> dict:
    """`score` of each system at SUMMARY_DAYS, the mean over the other dimensions (variables)."""
    return {
        system: {
            f"day {day}": round(
                float(at_day(scores, day)[score].sel(system=system, **labels).mean()), 3
            )
            for day in SUMMARY_DAYS
        }
        for system in systems
    }


def limit_summary(scores: xr.Dataset) -> dict:
    """The limit's headline numbers, global means over the variables at SUMMARY_DAYS: each
    system's CRPS over the limit's, the share of the NWP-to-limit CRPS gap the SFNO ensemble
    closes (`report.gap_closed`), the spread-skill ratios, and the targets table."""
    from wxens.verification.report import gap_closed

    targets = demo_targets(scores, ["forecast", "nwp", "limit"], limit="limit")
    scores = scores.sel(region="global")
    ratio = (scores.crps / scores.crps.sel(system="limit")).to_dataset(name="ratio")
    gap = gap_closed(scores, "crps", "nwp").to_dataset(name="gap")
    systems = ("forecast", "nwp", "limit")
    return {
        "crps_over_limit": mean_by_day(ratio, "ratio", ("forecast", "nwp")),
        "sfno_share_of_nwp_to_limit_gap_closed": mean_by_day(gap, "gap", ("forecast",)),
        "spread_skill_ratio": mean_by_day(scores, "spread_skill_ratio", systems),
        "members": json.loads(scores.attrs["members"]),
        "targets": targets,
    }


def limit_main() -> None:
    """`make limit`: the limit from the demo's SFNO states, verified, reported, summarised."""
    started = time.perf_counter()
    keep_freed_memory()
    truth, sfno, nwp = OUT / "truth.zarr", OUT / "sfno.zarr", OUT / "nwp.zarr"
    missing = [path for path in (truth, sfno, nwp) if not path.exists()]
    if missing:
        raise SystemExit(f"make limit runs after make demo: {missing[0]} is missing")
    folder = OUT / "limit"
    limit = folder / "limit.zarr"
    folder.mkdir(parents=True, exist_ok=True)
    hindcast("truth", limit, truth, LIMIT_CONFIG, LIMIT_MEMBERS)
    references = {"nwp": nwp, "limit": limit, "persistence": "persistence"}
    headline = "SFNO (forecast) and NWP (nwp) against the predictability limit (limit)"
    verify_and_report(sfno, truth, references, folder, limit_summary, f"wxens limit: {headline}")
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min; the report:")
    print((folder / "report" / "index.html").resolve())


def verify_and_report(
    forecast: Path,
    truth: Path,
    references: dict[str, object],
    folder: Path,
    summarise: Callable[[xr.Dataset], dict],
    headline: str,
) -> None:
    """`wxens verify` into `folder/scores.zarr`, `wxens report` into `folder/report` (against
    the NWP baseline), and the headline numbers `summarise` makes into `folder/summary.json`."""
    scores_path, report = folder / "scores.zarr", folder / "report"
    flags = " ".join(
        f"--reference {name}" if name == source else f"--reference {name}={source}"
        for name, source in references.items()
    )
    step(
        f"verify --forecast {forecast} --truth {truth} --out {scores_path} {flags}"
        " --overwrite --quiet",
        lambda: summary_table(
            wxens.verify(forecast, truth, scores_path, references, overwrite=True)
        ),
    )
    step(
        f"report {scores_path} --out {report} --reference nwp",
        lambda: wxens.report(scores_path, report, reference="nwp"),
    )
    numbers = summarise(xr.open_zarr(scores_path).load())
    (folder / "summary.json").write_text(json.dumps(numbers, indent=2))
    print(f"\n{headline}")
    print(json.dumps(numbers, indent=2))


def main() -> None:
    started = time.perf_counter()
    keep_freed_memory()  # as the `wxens` entry point does
    OUT.mkdir(parents=True, exist_ok=True)
    truth, sfno, nwp = OUT / "truth.zarr", OUT / "sfno.zarr", OUT / "nwp.zarr"
    years = truth_days() / 365.25
    config = load_config(CONFIG)
    step(
        f"data truth --config {CONFIG} --years {years:.6f} --out {truth} --overwrite",
        lambda: write_truth(config, config.model_dump(mode="json"), years, truth, True),
    )
    hindcast("sfno", sfno, truth)
    hindcast("nwp", nwp, truth)
    references = {"nwp": nwp, "persistence": "persistence"}
    headline = "wxens demo: SFNO ensemble (forecast) against the NWP baseline ensemble (nwp)"
    verify_and_report(sfno, truth, references, OUT, summary, headline)
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min; the report:")
    print((OUT / "report" / "index.html").resolve())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="make demo, or with --limit make limit")
    parser.add_argument("--limit", action="store_true", help="the predictability limit")
    limit_main() if parser.parse_args().limit else main()
