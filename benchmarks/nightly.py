"""The cost of a night of `wxens nightly` as the record grows, against rescanning it.

    python benchmarks/nightly.py [--nights 30] [--members 8] [--lead-days 2]
        [--folder /tmp/wxens-nightly]

1. Writes a two-year truth store of the tiny test world (T10 truth, 9 x 16 grid) and an ops
   config: NWP members, persistence as the reference, all scores, the four bands.
2. Runs `--nights` nights in a row (`forecast.nightly.run_night`), timing each step, and the
   size of the statistics store after each night.
3. The peer: what a night costs without mergeable statistics, a batch `wxens.score` of the
   archive's inits whose every lead has its truth (the rescan `wxens verify` does), on the
   first night that has such an init and on the last night.

It prints one row per night and the ratios night N / night 1 of the nightly update (the
statistics and scores steps) and of the rescan.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import pandas as pd
import yaml
from wxens.data_pipeline.config import parse_config
from wxens.data_pipeline.truth import write_truth
from wxens.forecast.nightly import load_nightly_settings, run_night

import wxens

TINY_WORLD = Path(__file__).parents[1] / "configs" / "tiny.yaml"
"""The truth world of the tests: a run of a night takes seconds."""


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--lead-days", type=float, default=2)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/wxens-nightly"))
    args = parser.parse_args()
    settings = load_nightly_settings(setup(args.folder, args.members, args.lead_days))
    print("| night | truth s | forecast s | statistics s | scores s | update s | stats KB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    updates, rescans = [], {}
    for night, date in enumerate(pd.date_range("2027-01-01", periods=args.nights), start=1):
        steps = list(run_night(settings, date, log=lambda line: None).seconds.values())
        updates.append(steps[2] + steps[3])
        row = [night, *[f"{s:.1f}" for s in steps], f"{updates[-1]:.1f}"]
        print("| " + " | ".join(map(str, [*row, f"{size_kb(settings.stats):.0f}"])) + " |")
        if not rescans or night == args.nights:
            seconds = rescan_seconds(settings)
            if seconds is not None:
                rescans[night] = seconds
    last, first = args.nights, min(rescans)
    print(f"\nnightly update, night {last} / night 1: {updates[-1] / updates[0]:.2f}")
    print(f"mean update of the last 5 nights / first 5: {sum(updates[-5:]) / sum(updates[:5]):.2f}")
    print(
        f"rescan (batch wxens.score of the archive's complete inits), night {last} / night"
        f" {first}: {rescans[last]:.1f} s / {rescans[first]:.1f} s"
        f" = {rescans[last] / rescans[first]:.2f}"
    )
    print(f"statistics store: {size_kb(settings.stats) / last:.0f} KB per night")


if __name__ == "__main__":
    main()
