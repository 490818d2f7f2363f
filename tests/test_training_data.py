"""Normalisation statistics and training pairs against direct numpy computations on a real store."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from wxens.data_pipeline.analysis_store import AnalysisStoreWriter, analysis_dataset, open_analyses
from wxens.data_pipeline.sphere import LatLonGrid
from wxens.data_pipeline.training_data import (
    AnalysisPairs,
    NormalisationStats,
    area_weights,
    compute_normalisation,
)

GRID = LatLonGrid(9, 16)


def cell_areas(latitude: np.ndarray, nlon: int) -> np.ndarray:
    """Cell-area weights `(nlat, nlon)` summing to 1, in numpy: each row's band between the
    mid-points to its neighbours (the outermost ones reaching the poles), sin(b+) - sin(b-)."""
    lat = np.radians(latitude)
    edges = np.concatenate(([np.pi / 2], (lat[1:] + lat[:-1]) / 2, [-np.pi / 2]))  # descending
    rows = np.sin(edges[:-1]) - np.sin(edges[1:])
    return np.repeat(rows[:, None] / rows.sum() / nlon, nlon, axis=1)


WEIGHTS = cell_areas(GRID.latitude, GRID.nlon)
"""The project's one area weighting on `GRID` (`training_data.area_weights`)."""
VARIABLES = ["psi_upper", "psi_lower"]
ATTRS = {name: {"units": "m2 s-1", "long_name": name} for name in VARIABLES}
SIX_HOURS = np.timedelta64(6, "h")
# Starts mid-December so that year boundaries fall inside store chunks (of 120 analyses).
TIMES = np.arange(
    np.datetime64("2026-12-01T00", "ns"), np.datetime64("2029-01-01", "ns"), SIX_HOURS
)


def synthetic_fields(times: np.ndarray) -> dict[str, np.ndarray]:
    """A travelling wave plus seeded noise; psi_lower has a mean far from zero (cancellation)."""
    rng = np.random.default_rng(0)
    days = ((times - times[0]) / np.timedelta64(1, "D"))[:, None, None]
    lat = np.radians(GRID.latitude)[None, :, None]
    lon = np.radians(GRID.longitude)[None, None, :]
    wave = np.cos(lat) * np.sin(3 * lon - 2 * np.pi * days / 5)
    shape = (len(times), GRID.nlat, GRID.nlon)
    fields = {
        "psi_upper": 2e7 * wave + 1e6 * rng.standard_normal(shape),
        "psi_lower": -3e8 + 5e6 * np.sin(lat) * wave + 1e6 * rng.standard_normal(shape),
    }
    return {name: values.astype(np.float32) for name, values in fields.items()}


def write_store(path: Path, times: np.ndarray) -> dict[str, np.ndarray]:
    fields = synthetic_fields(times)
    with AnalysisStoreWriter(path, {"title": "test"}) as writer:
        writer.append(analysis_dataset(fields, times, GRID, ATTRS))
    return fields


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("training") / "analyses.zarr"
    return path, write_store(path, TIMES)


def in_years(first: int, last: int) -> np.ndarray:
    return (TIMES >= np.datetime64(f"{first}-01-01")) & (TIMES < np.datetime64(f"{last + 1}-01-01"))


def numpy_mean_std(x: np.ndarray) -> tuple[float, float]:
    """mean = sum_t sum_ij w x / T, std = sqrt(sum_t sum_ij w (x - mean)^2 / T), in float64."""
    w = WEIGHTS
    mean = (x * w).sum(axis=(1, 2)).mean()
    return mean, np.sqrt(((x - mean) ** 2 * w).sum(axis=(1, 2)).mean())


def count_chunk_reads(monkeypatch) -> Counter:
    """Count reads of data-variable chunk files from any local Zarr store."""
    reads: Counter = Counter()
    original = zarr.storage.LocalStore.get

    async def get(self, key, *args, **kwargs):
        if key.split("/")[0] in VARIABLES and "/c/" in key:
            reads[key] += 1
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", get)
    return reads


def chunk_keys(first: int, last: int) -> set[str]:
    """Keys of the store chunks (120 analyses each) that hold the analyses of the years."""
    positions = np.flatnonzero(in_years(first, last))
    chunks = range(positions[0] // 120, positions[-1] // 120 + 1)
    return {f"{name}/c/{k}/0/0" for name in VARIABLES for k in chunks}


@pytest.mark.parametrize("years", [(2027, 2027), (2027, 2028)])
def test_statistics_equal_numpy(store, years):
    path, fields = store
    stats = compute_normalisation(open_analyses(path), VARIABLES, years)
    assert stats.years == years and stats.timestep_hours == 6.0
    for name in VARIABLES:
        x = fields[name][in_years(*years)].astype(np.float64)
        mean, std = numpy_mean_std(x)
        tendency_mean, tendency_std = numpy_mean_std(np.diff(x, axis=0))
        got = stats.variables[name]
        np.testing.assert_allclose([got.mean, got.std], [mean, std], rtol=1e-5)
        np.testing.assert_allclose(got.tendency_std, tendency_std, rtol=1e-5)
        np.testing.assert_allclose(got.tendency_mean, tendency_mean, atol=1e-5 * tendency_std)
        assert got.units == "m2 s-1"
        profile = x.mean(axis=(0, 2))
        anomaly_std = np.sqrt(((x - profile[:, None]) ** 2 * WEIGHTS).sum((1, 2)).mean())
        np.testing.assert_allclose(got.zonal_mean, profile, rtol=1e-5, atol=1e-5 * std)
        np.testing.assert_allclose(got.anomaly_std, anomaly_std, rtol=1e-5)


def test_statistics_read_each_chunk_once(store, monkeypatch):
    reads = count_chunk_reads(monkeypatch)
    compute_normalisation(open_analyses(store[0]), VARIABLES, (2027, 2028))
    assert set(reads) == chunk_keys(2027, 2028) and set(reads.values()) == {1}


def test_statistics_round_trip_through_json(store):
    stats = compute_normalisation(open_analyses(store[0]), VARIABLES, (2027, 2027))
    again = NormalisationStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats
    std = again.channel("std", ["psi_lower", "psi_upper"])
    assert std.shape == (2, 1, 1) and std.dtype == np.float32
    assert std[0, 0, 0] == np.float32(stats.variables["psi_lower"].std)
    profile = again.zonal_mean(["psi_upper"])
    assert profile.shape == (1, GRID.nlat, 1)
    assert profile[0, 3, 0] == np.float32(stats.variables["psi_upper"].zonal_mean[3])
    with pytest.raises(ValueError, match="'timestep_hours'"):
        NormalisationStats.from_dict(
            {k: v for k, v in stats.to_dict().items() if k != "timestep_hours"}
        )


def test_area_weights_are_the_cell_areas():
    """On the grid (poles included: each pole point its polar cap) and by hand on three
    latitudes, bands -90..-5, -5..40 and 40..90 degrees (sin differences 0.9128, 0.7300,
    0.3572 for -30, 20, 60)."""
    np.testing.assert_allclose(area_weights(GRID.latitude, GRID.longitude), WEIGHTS, rtol=1e-12)
    weights = area_weights(np.array([60.0, 20.0, -30.0]), np.arange(4) * 90.0)
    bands = np.array(
        [
            1 - np.sin(np.radians(40)),
            np.sin(np.radians(40)) + np.sin(np.radians(5)),
            1 - np.sin(np.radians(5)),
        ]
    )
    np.testing.assert_allclose(weights, np.repeat(bands[:, None], 4, axis=1) / bands.sum() / 4)
    np.testing.assert_allclose(bands, [0.3572, 0.7300, 0.9128], atol=1e-4)


@pytest.mark.parametrize("steps", [1, 4])
def test_pairs_equal_numpy_slices(store, steps):
    path, fields = store
    pairs = AnalysisPairs(path, VARIABLES, (2027, 2027), steps=steps)
    first = int(np.flatnonzero(in_years(2027, 2027))[0])
    assert len(pairs) == in_years(2027, 2027).sum() - steps
    np.testing.assert_array_equal(pairs.times, TIMES[first : first + len(pairs)])
    assert pairs.times[-1] + steps * SIX_HOURS == np.datetime64("2027-12-31T18")
    np.testing.assert_array_equal(pairs.area_weights.numpy(), WEIGHTS.astype(np.float32))
    stacked = np.stack([fields[name] for name in VARIABLES], axis=1)
    for i in [0, 1, 89, 90, 91, 500, len(pairs) - 1, -1]:
        x, y = pairs[i]
        t = first + range(len(pairs))[i]
        assert x.dtype == torch.float32 and x.shape == (2, GRID.nlat, GRID.nlon)
        np.testing.assert_array_equal(x.numpy(), stacked[t])
        np.testing.assert_array_equal(y.numpy(), stacked[t + steps])
    with pytest.raises(IndexError):
        pairs[len(pairs)]


def test_pairs_read_each_chunk_once_and_keep_little(store, monkeypatch):
    path, _ = store
    reads = count_chunk_reads(monkeypatch)
    pairs = AnalysisPairs(path, VARIABLES, (2027, 2028), cache_chunks=2)
    assert not reads, "constructing the dataset must read no field data"
    chunk_bytes = 120 * GRID.nlat * GRID.nlon * 4
    for i in range(len(pairs)):
        pairs[i]
        assert sum(a.nbytes for a in pairs._cache.values()) <= 2 * len(VARIABLES) * chunk_bytes
    assert set(reads) == chunk_keys(2027, 2028) and set(reads.values()) == {1}


def test_pairs_pickle_without_store_or_cache(store):
    pairs = AnalysisPairs(store[0], VARIABLES, (2027, 2027))
    first = pairs[100]
    copy = pickle.loads(pickle.dumps(pairs))
    assert copy._arrays is None and not copy._cache
    for a, b in zip(copy[100], first, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def batches(pairs: AnalysisPairs, workers: int) -> list[list[torch.Tensor]]:
    loader = torch.utils.data.DataLoader(
        pairs,
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(1),
        num_workers=workers,
    )
    return list(loader)


def test_dataloader_workers_give_the_same_batches(store):
    pairs = AnalysisPairs(store[0], VARIABLES, (2027, 2027), steps=2)
    pairs[0]  # the parent holds an open store and a cache before the workers start
    serial, parallel = batches(pairs, 0), batches(pairs, 2)
    assert len(serial) == len(parallel) == -(-len(pairs) // 64)
    for (x0, y0), (x2, y2) in zip(serial, parallel, strict=True):
        torch.testing.assert_close(x0, x2, rtol=0, atol=0)
        torch.testing.assert_close(y0, y2, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("variables", "years", "culprit"),
    [
        (["psi_upper", "temperature"], (2027, 2027), "temperature"),
        (VARIABLES, (2026, 2027), "years 2026-2027"),
        (VARIABLES, (2028, 2029), "years 2028-2029"),
    ],
)
def test_bad_requests_name_the_culprit(store, variables, years, culprit):
    path, _ = store
    with pytest.raises(ValueError, match=culprit):
        compute_normalisation(open_analyses(path), variables, years)
    with pytest.raises(ValueError, match=culprit):
        AnalysisPairs(path, variables, years)


def test_irregular_time_axis_and_too_long_lead_are_refused(tmp_path, store):
    times = np.concatenate([TIMES[:40], TIMES[41:1600]])
    write_store(tmp_path / "gappy.zarr", times)
    with pytest.raises(ValueError, match="not regular"):
        AnalysisPairs(tmp_path / "gappy.zarr", VARIABLES, (2027, 2027))
    with pytest.raises(ValueError, match="no pair 1460 steps apart"):
        AnalysisPairs(store[0], VARIABLES, (2027, 2027), steps=1460)
