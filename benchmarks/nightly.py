"""The cost of a night of `wxens nightly` as the record grows, against rescanning it; and
online scoring against store-then-verify for a thousand-member ensemble.

    python benchmarks/nightly.py [--nights 30] [--members 8] [--lead-days 2]
        [--online-members 1000] [--online-lead-days 10] [--skip-nights] [--skip-online]
        [--folder /tmp/wxens-nightly]

1. Writes a two-year truth store of the tiny test world (`configs/tiny.yaml`: T10 truth,
   9 x 16 grid) and an ops config: NWP members, persistence as the reference, all scores,
   the four bands.
2. Runs `lead_days + 1` spin-up nights, then `--nights` nights in a row
   (`forecast.nightly.run_night`), timing each step and the size of the statistics store.
   After the spin-up every night verifies the same number of new (init, lead) pairs (the
   new day's valid times of every init still running), so night 1 and night N do the same
   work but for the record's length: their ratio shows how a night's cost grows with it.
3. The peer of the nights: what a night costs without mergeable statistics, a batch
   `wxens.score` of the archive's inits whose every lead has its truth (the rescan `wxens
   verify` does), on night 1 and on the last night.
4. Online scoring (`forecast.online.score_online`, `--keep none`) of `--online-members`
   NWP members with `--online-lead-days` leads from one init, against the same ensemble
   written to a store and then verified into a statistics store (`write_ensemble`, then
   `update_statistics`), in the same run: wall time and disk footprint of each, and
   whether their finalized scores agree.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from wxens.data_pipeline.config import load_config, parse_config
from wxens.data_pipeline.truth import write_truth
from wxens.forecast.nightly import load_nightly_settings, run_night
from wxens.forecast.online import score_online
from wxens.forecast.runner import RunOptions, configured_run, lead_steps_of, write_ensemble
from wxens.verification.stats_store import finalize, update_statistics

import wxens

TINY_WORLD = Path(__file__).parents[1] / "configs" / "tiny.yaml"
"""The truth world of the tests: a run of a night takes seconds."""
FIRST_NIGHT = pd.Timestamp("2027-01-01")


def setup(folder: Path, members: int, lead_days: float) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    truth = folder / "truth.zarr"
    data = {**yaml.safe_load(TINY_WORLD.read_text()), "analyses": str(truth)}
    write_truth(parse_config(data), data, 2, truth, quiet=True)
    (folder / "tiny.yaml").write_text(yaml.safe_dump(data))
    ops = {
        "config": str(folder / "tiny.yaml"),
        "truth": str(truth),
        "archive": str(folder / "archive.zarr"),
        "stats": str(folder / "stats.zarr"),
        "scores": str(folder / "scores"),
        "members": members,
        "lead_days": lead_days,
        "model": "nwp",
        "log": str(folder / "nightly.log"),
    }
    path = folder / "ops.yaml"
    path.write_text(yaml.safe_dump(ops))
    return path


def size_kb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1024


def rescan_seconds(settings) -> float | None:
    """A batch score of the archive's inits whose every lead has its truth; None if none."""
    started = time.perf_counter()
    archive, truth = wxens.open_archive(settings.archive), wxens.open_analyses(settings.truth)
    last_valid = archive.init_time + archive.lead_time.max()
    complete = archive.sel(init_time=(last_valid <= truth.time.max()).values)
    if not complete.sizes["init_time"]:
        return None
    wxens.score(complete, truth, {"persistence": "persistence"})
    return time.perf_counter() - started


def nights(settings, count: int, lead_days: float) -> None:
    """The spin-up nights, then `count` timed nights; prints a row per night and the ratios."""
    spinup = int(np.ceil(lead_days)) + 1
    dates = pd.date_range(FIRST_NIGHT, periods=spinup + count)
    print("| night | truth s | forecast s | statistics s | scores s | update s | stats KB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    statistics, updates, rescans = [], [], {}
    for index, date in enumerate(dates):
        night = index - spinup + 1  # the spin-up nights are 1 - spinup ... 0
        steps = list(run_night(settings, date, log=lambda line: None).seconds.values())
        statistics.append(steps[2])
        updates.append(steps[2] + steps[3])
        row = [night, *[f"{s:.1f}" for s in steps], f"{updates[-1]:.1f}"]
        print("| " + " | ".join(map(str, [*row, f"{size_kb(settings.stats):.0f}"])) + " |")
        if night in (1, count):
            rescans[night] = rescan_seconds(settings)
    first = spinup  # night 1
    print(
        f"\nstatistics update (`wxens verify --stats`), night {count} / night 1:"
        f" {statistics[-1]:.1f} s / {statistics[first]:.1f} s"
        f" = {statistics[-1] / statistics[first]:.2f}"
    )
    timed = statistics[first:]
    print(f"mean of the last 5 nights / first 5: {sum(timed[-5:]) / sum(timed[:5]):.2f}")
    print(
        f"statistics + scores of the whole record, night {count} / night 1:"
        f" {updates[-1]:.1f} s / {updates[first]:.1f} s = {updates[-1] / updates[first]:.2f}"
    )
    print(
        f"rescan (batch wxens.score of the archive's complete inits), night {count} / night 1:"
        f" {rescans[count]:.1f} s / {rescans[1]:.1f} s = {rescans[count] / rescans[1]:.2f}"
    )
    print(f"statistics store: {size_kb(settings.stats) / len(dates):.0f} KB per night")


def online_against_store(settings, members: int, lead_days: float, folder: Path) -> None:
    """One init of `members` NWP members: scored online, and stored then verified."""
    config = load_config(settings.config)
    run = configured_run(config, "nwp", analyses=settings.truth, device=torch.device("cpu"))
    steps = lead_steps_of(f"{lead_days * 24}h", run.timestep)
    init = np.array([FIRST_NIGHT - pd.Timedelta(days=60)], dtype="datetime64[ns]")
    online, store, stats = folder / "online.zarr", folder / "store.zarr", folder / "verified.zarr"
    for path in (online, store, stats):
        shutil.rmtree(path, ignore_errors=True)
    reference = {"persistence": "persistence"}
    started = time.perf_counter()
    options = RunOptions(folder / "unused.zarr", quiet=True)
    score_online(run, init, members, steps, options, settings.truth, online, references=reference)
    online_seconds = time.perf_counter() - started
    started = time.perf_counter()
    write_ensemble(run, init, members, steps, RunOptions(store, quiet=True))
    stored_seconds = time.perf_counter() - started
    started = time.perf_counter()
    update_statistics(stats, store, settings.truth, reference)
    verify_seconds = time.perf_counter() - started
    a, b = finalize(online), finalize(stats)
    worst = max(
        float(np.nanmax(np.abs(a[v] - b[v]) / np.maximum(np.abs(b[v]), 1e-30)))
        for v in b.data_vars
        if b[v].dtype.kind == "f" and np.isfinite(b[v]).any()
    )
    exact = all(
        np.array_equal(a[v].values, b[v].values, equal_nan=True)
        for v in ("rank_histogram", "reliability_count")
        if v in b
    )
    print(
        f"\n{members} members x {steps} leads of {lead_days * 24 / steps:g} h, one init,"
        " persistence as the reference, all scores, four bands"
    )
    print("| | wall s | disk MB |")
    print("| --- | --- | --- |")
    online_mb = size_kb(online) / 1024
    print(f"| online (`--score-against --keep none`) | {online_seconds:.1f} | {online_mb:.2f} |")
    print(
        f"| store ({stored_seconds:.1f} s) then verify ({verify_seconds:.1f} s) |"
        f" {stored_seconds + verify_seconds:.1f} | {(size_kb(store) + size_kb(stats)) / 1024:.2f} |"
    )
    print(f"finalized scores: largest relative difference {worst:.1e}; tables equal: {exact}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--lead-days", type=float, default=2)
    parser.add_argument("--online-members", type=int, default=1000)
    parser.add_argument("--online-lead-days", type=float, default=10)
    parser.add_argument("--skip-nights", action="store_true")
    parser.add_argument("--skip-online", action="store_true")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/wxens-nightly"))
    args = parser.parse_args()
    settings = load_nightly_settings(setup(args.folder, args.members, args.lead_days))
    if not args.skip_nights:
        nights(settings, args.nights, args.lead_days)
    if not args.skip_online:
        online_against_store(settings, args.online_members, args.online_lead_days, args.folder)


if __name__ == "__main__":
    main()
