"""`make targets`: every member kind on 32 inits of the demo's world, scored against the
targets of a trustworthy ensemble (`verification/targets.py`), with bootstrap intervals.

The test period: the demo's truth (configs/demo.yaml's seed, never seen in training), run on
to 182 days (configs/targets.yaml), and 32 inits 5 days apart from 2031-01-16 with 10-day
leads; the demo's 8 inits are its first 8. Each system is a hindcast into `out/targets/`
(`wxens hindcast`, resumed where it stopped: a run can span several sessions) and a
statistics store of its own (`wxens verify --stats`, only the pairs it lacks); the table
(`wxens targets`) is drawn from the stores of the systems done so far, into
`out/targets/targets.md` and `targets.json`.

    python -m wxens.forecast.acceptance [--systems nwp,sfno,limit,...]

Cost on a 2-core machine with bf16 matrix units, 40 steps a member and init (docs/
getting-started.md): the NWP baseline about 4 min, each of the SFNO, FGN and VAE 8-10 min
(128,000 member-steps), the mixed ensemble 13 min, the limit (16 members of the truth's own
model) about 6 min, each with 1-2 min of verification; the residual diffusion members (16
sampler levels) 68 min at 20 members (`--members diffusion=20`; at 100, about 3.5 h on a
2-core CPU without bfloat16 units, where `bf16-cpu` runs float32 matrix products).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from wxens.data_pipeline.config import load_config
from wxens.data_pipeline.memory import keep_freed_memory
from wxens.data_pipeline.truth import write_truth
from wxens.forecast.demo import step
from wxens.forecast.runner import RunOptions, run_configured_ensemble
from wxens.verification.stats_store import StatisticsStore, update_statistics
from wxens.verification.targets import bootstrap_targets, targets_summary, targets_table

TRUTH_CONFIG = Path("configs/targets.yaml")
OUT = Path("out/targets")
INITS = pd.date_range("2031-01-16", periods=32, freq="5D").values
LEAD_DAYS = 10


@dataclass(frozen=True)
class System:
    """One ensemble of the table: its config, the model `wxens hindcast --model` runs, and
    its members."""

    config: Path
    model: str
    members: int


SYSTEMS = {
    "nwp": System(Path("configs/demo.yaml"), "nwp", 100),
    "sfno": System(Path("configs/demo.yaml"), "sfno", 100),
    "sfno-finished": System(Path("configs/demo-finished.yaml"), "sfno", 100),
    "limit": System(Path("configs/targets-limit.yaml"), "truth", 16),  # from sfno's states
    "fgn": System(Path("configs/demo-fgn.yaml"), "fgn", 100),
    "vae": System(Path("configs/demo-vae.yaml"), "vae", 100),
    "mixed": System(Path("configs/demo-mixed.yaml"), "sfno", 100),
    "diffusion": System(Path("configs/demo-diffusion.yaml"), "diffusion", 100),
}
"""The systems, in the order they run (the limit starts from the SFNO members' states)."""


def truth_years() -> float:
    """Years of truth from 2031-01-01 to the last valid time, with a day to spare."""
    last_valid = INITS[-1] + np.timedelta64(LEAD_DAYS, "D")
    days = (last_valid - np.datetime64("2031-01-01")) / np.timedelta64(1, "D") + 2
    return float(days) / 365.25


def run_system(name: str, system: System, members: int, truth: Path) -> Path:
    """The system's hindcast (resumed) and its statistics store (updated); the store's path."""
    out = OUT / f"{name}.zarr"
    stats = OUT / "stats" / f"{name}.zarr"
    dates = f"--start {str(INITS[0])[:10]} --end {str(INITS[-1])[:10]} --every 5D"
    step(
        f"hindcast --config {system.config} --model {system.model} --members {members} {dates}"
        f" --lead-days {LEAD_DAYS} --analyses {truth} --out {out} --resume --quiet",
        lambda: run_configured_ensemble(
            load_config(system.config),
            INITS,
            members,
            f"{LEAD_DAYS}D",
            RunOptions(out, resume=True, quiet=True, command="hindcast"),
            model=system.model,
            analyses=truth,
        ),
    )
    stats.parent.mkdir(parents=True, exist_ok=True)
    step(
        f"verify --forecast {out} --truth {truth} --stats {stats} --quiet",
        lambda: update_statistics(stats, out, truth),
    )
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="which to run, in order")
    parser.add_argument("--members", default="", help="NAME=M,...: other member counts")
    parser.add_argument("--resamples", type=int, default=500, help="bootstrap resamples")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SYSTEMS]
    if unknown:
        raise SystemExit(f"--systems: unknown system {unknown[0]!r}; choose from {list(SYSTEMS)}")
    counts = dict(pair.split("=") for pair in args.members.split(",") if pair)
    started = time.perf_counter()
    keep_freed_memory()
    OUT.mkdir(parents=True, exist_ok=True)
    truth = OUT / "truth.zarr"
    if not truth.exists():
        config = load_config(TRUTH_CONFIG)
        years = truth_years()
        step(
            f"data truth --config {TRUTH_CONFIG} --years {years:.6f} --out {truth}",
            lambda: write_truth(config, config.model_dump(mode="json"), years, truth, False),
        )
    for name in chosen:
        system = SYSTEMS[name]
        run_system(name, system, int(counts.get(name, system.members)), truth)
    done = {
        name: OUT / "stats" / f"{name}.zarr"
        for name in SYSTEMS
        if StatisticsStore(OUT / "stats" / f"{name}.zarr").exists()
    }
    values = bootstrap_targets(done, "nwp", "limit", resamples=args.resamples)
    table = targets_table(values)
    (OUT / "targets.md").write_text(table + "\n")
    (OUT / "targets.json").write_text(json.dumps(targets_summary(values), indent=2))
    print(table)
    print(f"\ndone in {(time.perf_counter() - started) / 60:.1f} min: {OUT / 'targets.md'}")


if __name__ == "__main__":
    main()
