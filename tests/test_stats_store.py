"""The statistics store (`verification.stats_store`): updated night by night as the forecast
archive and the truth grow, it computes only the new (init, lead) pairs, and its finalized
scores equal a batch `score` of the same data (to 1e-6 relative; tables and rank counts bit
for bit), for all inits or any subset; other choices or another forecast are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from wxens.verification.aggregation import LatLonBox
from wxens.verification.errors import ScoreError
from wxens.verification.scores import SCORES
from wxens.verification.stats_store import finalize, update_statistics
from wxens.verification.verify import VerifyOptions, score

LAT = np.linspace(90, -90, 9)
LON = np.arange(16) * 22.5
TIMES = pd.date_range("2029-01-01", "2031-01-15", freq="6h")
INITS = pd.date_range("2031-01-01", periods=5, freq="1D")
LEADS = pd.to_timedelta([0, 24, 48], unit="h")
REGIONS = ["global", "tropics", LatLonBox(south=-30, north=60, west=300, east=60, name="box")]
OPTIONS = VerifyOptions(maps=False, climate_period=("2029-01-01", "2030-12-31T18"))
EXACT = ("rank_histogram", "reliability_count", "reliability_observed_frequency")
"""Finished from the summed tables and counts alone: bit for bit."""


def make_truth() -> xr.Dataset:
    rng = np.random.default_rng(8)
    seasonal = np.cos(2 * np.pi * TIMES.dayofyear.values / 365.25)[:, None, None]
    fields = {
        name: (
            ("time", "latitude", "longitude"),
            (seasonal + rng.normal(size=(len(TIMES), 9, 16))).astype("f4"),
        )
        for name in ("u",)
    }
    return xr.Dataset(fields, coords={"time": TIMES, "latitude": LAT, "longitude": LON})


def make_forecast(truth: xr.Dataset, members: int = 5) -> xr.Dataset:
    """Members around the truth at the valid times of every init and lead; a tie with the
    truth at lead 0 for member 0 (ties must break the same way in every run)."""
    rng = np.random.default_rng(1)
    valid = truth.sel(time=(INITS.values[:, None] + LEADS.values).ravel())
    shape = (len(INITS), len(LEADS), members, 9, 16)
    data = {}
    for name in truth.data_vars:
        base = valid[name].values.reshape(len(INITS), len(LEADS), 1, 9, 16)
        values = (base + rng.normal(size=shape)).astype("f4")
        values[:, 0, 0] = base[:, 0, 0]
        data[name] = (("init_time", "lead_time", "member", "latitude", "longitude"), values)
    coords = {"init_time": INITS, "lead_time": LEADS, "latitude": LAT, "longitude": LON}
    return xr.Dataset(data, coords=coords, attrs={"wxens_fingerprint": "archive-a"})


def assert_scores_equal(merged: xr.Dataset, batch: xr.Dataset) -> None:
    assert sorted(merged.data_vars) == sorted(batch.data_vars)
    for name in batch.data_vars:
        a, b = merged[name].transpose(*batch[name].dims), batch[name]
        if name in EXACT:
            assert np.array_equal(a.values, b.values, equal_nan=True), name
        else:
            np.testing.assert_allclose(a.values, b.values, rtol=1e-6, atol=1e-12, err_msg=name)


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    """Five nights: each adds an init to the forecast and a day to the truth; then the truth
    catches up with the last leads. Returns the store, the data and each night's new pairs."""
    path = tmp_path_factory.mktemp("stats") / "stats.zarr"
    truth, forecast = make_truth(), None
    forecast = make_forecast(truth)
    counts = []
    for night, init in enumerate(INITS):
        known = truth.sel(time=slice(None, init))
        update = update_statistics(
            path,
            forecast.isel(init_time=slice(0, night + 1)),
            known,
            {"persistence": "persistence"},
            regions=REGIONS,
            options=OPTIONS,
        )
        counts.append(update.pairs)
    last = update_statistics(
        path, forecast, truth, {"persistence": "persistence"}, regions=REGIONS, options=OPTIONS
    )
    counts.append(last.pairs)
    return path, truth, forecast, counts


def new_pairs(night: int) -> int:
    """(init, lead) pairs whose valid time the truth reaches on `night` (0-based) for the
    first time, among the inits of that night: counted independently of the store."""

    def reached(upto: int, truth_end) -> int:
        valid = INITS.values[:upto, None] + LEADS.values
        return int((valid <= truth_end).sum())

    end = INITS.values[night]
    before = reached(night, INITS.values[night - 1]) if night else 0
    return reached(night + 1, end) - before


def test_each_night_computes_only_the_new_pairs(nightly):
    _, _, _, counts = nightly
    for night in range(len(INITS)):
        assert counts[night] == {"forecast": new_pairs(night), "persistence": new_pairs(night)}
    total = len(INITS) * len(LEADS)
    assert sum(c["forecast"] for c in counts) == total


def test_finalized_scores_equal_a_batch_verify(nightly):
    path, truth, forecast, _ = nightly
    batch = score(forecast, truth, {"persistence": "persistence"}, regions=REGIONS, options=OPTIONS)
    merged = finalize(path)
    assert_scores_equal(merged, batch)
    expected = {output for entry in SCORES.values() for output in entry.outputs}
    assert expected <= set(merged.data_vars)
    # Any subset: the last three nights, and a time slice.
    last = score(
        forecast.isel(init_time=slice(-3, None)),
        truth,
        {"persistence": "persistence"},
        regions=REGIONS,
        options=OPTIONS,
    )
    assert_scores_equal(finalize(path, 3), last)
    window = slice(INITS[-3], INITS[-1])
    assert_scores_equal(finalize(path, window), last)


def test_a_rerun_adds_nothing_and_other_choices_are_refused(nightly, tmp_path):
    path, truth, forecast, _ = nightly
    files = {
        p: p.stat().st_mtime_ns
        for p in path.rglob("*")
        if p.is_file() and "zarr.json" not in p.name
    }
    again = update_statistics(
        path, forecast, truth, {"persistence": "persistence"}, regions=REGIONS, options=OPTIONS
    )
    assert again.pairs == {"forecast": 0, "persistence": 0}
    assert files == {p: p.stat().st_mtime_ns for p in files}
    listing = sorted(path.rglob("*"))
    other = forecast.assign_attrs(wxens_fingerprint="archive-b")
    with pytest.raises(ScoreError, match="statistics of another forecast"):
        update_statistics(
            path, other, truth, {"persistence": "persistence"}, regions=REGIONS, options=OPTIONS
        )
    with pytest.raises(ScoreError, match="statistics of another forecast"):
        update_statistics(path, forecast, truth, {"persistence": "persistence"}, options=OPTIONS)
    assert sorted(path.rglob("*")) == listing
    with pytest.raises(ScoreError, match="holds no statistics of init"):
        finalize(path, [np.datetime64("2035-01-01")])
    with pytest.raises(ScoreError, match="is not a statistics store"):
        finalize(tmp_path)
