"""`wxens nightly`: ten nights in a row on the tiny truth world, one of them killed at random
moments twice, end with the archive, statistics and scores of ten uninterrupted nights; a
rerun is a no-op; bad input exits 1 and changes nothing; a held lock exits 4."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
import zarr
from wxens.data_pipeline.analysis_store import StoreLock, open_analyses
from wxens.data_pipeline.config import load_config
from wxens.forecast.archive import open_archive
from wxens.forecast.nightly import load_nightly_settings, run_night, timestamped
from wxens.forecast.runner import RunOptions, run_configured_ensemble
from wxens.verification.stats_store import StatisticsStore, finalize
from wxens.verification.verify import VerifyOptions, score

NIGHTS = pd.date_range("2028-01-01", periods=10, freq="1D")
KILLED = 4  # the night killed twice before it finishes
EXACT = ("rank_histogram", "reliability_count", "reliability_observed_frequency")


def ops_file(folder, config, truth) -> str:
    settings = {
        "config": str(config),
        "truth": str(truth),
        "archive": str(folder / "archive.zarr"),
        "stats": str(folder / "stats.zarr"),
        "scores": str(folder / "scores"),
        "members": 4,
        "lead_days": 1,
        "model": "nwp",
        "score_names": ["crps", "rmse", "rank_histogram", "reliability"],
        "regions": ["global"],
        "references": [],  # persistence's statistics: tests/test_archive.py
        "recent_nights": 3,
        "log": str(folder / "nightly.log"),
    }
    path = folder / "ops.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture(scope="module")
def operations(tiny_world, tmp_path_factory):
    """Ten nights, night KILLED killed twice at random moments and then finished."""
    config, world = tiny_world
    folder = tmp_path_factory.mktemp("nightly")
    truth = folder / "truth.zarr"
    shutil.copytree(world, truth)
    ops = ops_file(folder, config, truth)
    settings = load_nightly_settings(ops)
    durations, lines = [], []
    rng = np.random.default_rng(int(time.time()))
    for night, date in enumerate(NIGHTS):
        if night == KILLED:
            for _ in range(2):
                kill_at_random(ops, date, rng.uniform(0, max(durations)))
        started = time.perf_counter()
        run_night(settings, date, timestamped(settings.log, lines.append))
        durations.append(time.perf_counter() - started)
    return folder, settings, truth, lines


def kill_at_random(ops, date, delay: float) -> None:
    command = "from wxens.forecast.cli import main; main()"
    night = subprocess.Popen(
        [sys.executable, "-c", command, "nightly", "--config", ops, "--date", str(date)[:10]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(3 + delay)  # the imports take about 3 s
    night.send_signal(signal.SIGKILL)
    night.wait()


def test_ten_nights_with_kills_equal_uninterrupted_ones(operations, tmp_path):
    folder, settings, truth, lines = operations
    config = load_config(settings.config)
    inits = NIGHTS.values.astype("datetime64[ns]")
    # The archive: bitwise the ensemble of the ten inits run in one go.
    batch = tmp_path / "batch.zarr"
    run_configured_ensemble(
        config, inits, 4, "24h", RunOptions(batch, quiet=True), model="nwp", analyses=truth
    )
    archive, expected = open_archive(settings.archive), xr.open_zarr(batch)
    np.testing.assert_array_equal(archive.init_time, inits)
    for name in expected.data_vars:
        assert np.array_equal(archive[name].values, expected[name].values), name
    # The truth: the last analysis is the last night's init; no gap, no repeat.
    times = open_analyses(truth).get_index("time")
    assert times[-1] == NIGHTS[-1] and (np.diff(times.values) == np.timedelta64(6, "h")).all()
    # The scores: those of a batch verify of the whole archive (tables bit for bit), once the
    # next night has brought the truth for the last init's leads.
    run_night(settings, NIGHTS[-1] + pd.Timedelta("1D"), lines.append)
    recorded = json.loads(StatisticsStore(settings.stats).attributes()["options"])
    options = VerifyOptions(maps=False, climate_period=tuple(recorded["climate_period"]))
    full = score(
        batch,
        truth,
        scores=settings.score_names,
        regions=settings.regions,
        options=options,
    )
    merged = finalize(settings.stats, slice(None, NIGHTS[-1]))
    for name in full.data_vars:
        a, b = merged[name].transpose(*full[name].dims).values, full[name].values
        if name in EXACT:
            assert np.array_equal(a, b, equal_nan=True), name
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12, err_msg=name)
    written = xr.open_zarr(settings.scores / "recent.zarr")
    assert written.crps_by_init.sizes["init_time"] == 3
    log = (folder / "nightly.log").read_text().splitlines()
    for date in NIGHTS:
        assert any(f"{str(date)[:16]} forecast: done" in line for line in log), date
    stamps = [dt.datetime.fromisoformat(line.split()[0]) for line in log]
    assert all(stamp.utcoffset() == dt.timedelta(0) for stamp in stamps)  # UTC timestamps


def test_a_rerun_is_a_no_op_and_bad_input_changes_nothing(operations, wxens, tmp_path):
    folder, settings, truth, _ = operations
    ops = folder / "ops.yaml"
    kept = [settings.archive, settings.stats, settings.scores]
    stamps = {p: p.stat().st_mtime_ns for d in kept for p in d.rglob("*") if p.is_file()}
    code, output = wxens("nightly", "--config", ops, "--date", "2028-01-03")
    assert code == 0, output
    truth_files = {p: p.stat().st_mtime_ns for p in truth.rglob("*") if p.is_file()}
    for step in ("truth: skipped", "forecast: skipped", "statistics: skipped", "scores: skipped"):
        assert step in output, output
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    # Another member count than the archive's: exit 1, one line, nothing changed.
    other = yaml.safe_load(ops.read_text()) | {"members": 5}
    bad = tmp_path / "ops.yaml"
    bad.write_text(yaml.safe_dump(other))
    code, output = wxens("nightly", "--config", bad, "--date", "2028-01-11")
    assert code == 1 and "archives another ensemble" in output, output
    # A truth with a gap.
    gapped = tmp_path / "truth.zarr"
    shutil.copytree(truth, gapped)
    times = zarr.open_group(gapped, mode="r+", use_consolidated=False)["time"]
    times[-8] = times[-8] + 1  # an analysis an hour late: the 6-hourly series has a gap
    gap_ops = tmp_path / "gap.yaml"
    gap_ops.write_text(yaml.safe_dump(yaml.safe_load(ops.read_text()) | {"truth": str(gapped)}))
    code, output = wxens("nightly", "--config", gap_ops, "--date", "2028-01-03")
    assert code == 1 and "has a gap" in output, output
    # Another run holds the truth's lock: exit 4.
    holder = subprocess.Popen(["sleep", "60"])
    try:
        StoreLock(truth).file.write_text(str(holder.pid))
        code, output = wxens("nightly", "--config", ops, "--date", "2028-01-13")
        assert code == 4 and "being written by another run" in output, output
    finally:
        holder.kill()
        holder.wait()
        StoreLock(truth).release()
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    assert truth_files == {p: p.stat().st_mtime_ns for p in truth_files}
