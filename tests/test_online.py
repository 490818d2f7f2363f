"""Online scoring (`forecast.online`): members scored as they are made, none stored. Its
statistics equal those of the same ensemble stored and then verified (finalized scores to 1e-6
relative, tables bit for bit), the kept members and mean are bitwise those of the stored
ensemble, a rerun does nothing, and bad input is refused in one line with nothing changed."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from test_api import Advection, analyses, bump
from test_stats_store import assert_scores_equal
from wxens.verification.errors import ScoreError
from wxens.verification.stats_store import finalize

import wxens

TRUTH = analyses(40)  # 10 days, 6-hourly
INITS = TRUTH.time.values[[12, 4, 8]]  # out of order
MEMBERS = [Advection(0.1), Advection(0.5)]
ENSEMBLE = {"perturbation": bump, "seed": 3}
PERSISTENCE = {"persistence": "persistence"}


def files(path) -> dict:
    return {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The same 40-member ensemble stored in an archive, and its statistics from it."""
    folder = tmp_path_factory.mktemp("stored")
    ensemble = wxens.run_ensemble(
        MEMBERS, TRUTH, INITS, 40, "48h", **ENSEMBLE, archive=folder / "archive.zarr"
    )
    wxens.update_statistics(folder / "stats.zarr", folder / "archive.zarr", TRUTH, PERSISTENCE)
    return ensemble, folder


def test_online_statistics_equal_store_then_verify_and_keep_members_bitwise(tmp_path, stored):
    ensemble, folder = stored
    online, kept = tmp_path / "online.zarr", tmp_path / "kept.zarr"
    arguments = (MEMBERS, TRUTH, INITS, 40, "48h")
    choices = {**ENSEMBLE, "truth": TRUTH, "stats": online, "references": PERSISTENCE}
    scores = wxens.score_ensemble_online(
        *arguments, **choices, keep=5, archive=kept, scheduler="threads:3"
    )
    assert_scores_equal(scores, wxens.finalize(folder / "stats.zarr"))
    kept_members = wxens.open_archive(kept)
    for name in ("u", "v"):
        expected = ensemble[name].isel(member=slice(0, 5)).values
        assert np.array_equal(kept_members[name].values, expected), name
    before = {**files(online), **files(kept)}
    again = wxens.score_ensemble_online(*arguments, **choices, keep=5, archive=kept)
    assert {**files(online), **files(kept)} == before  # a rerun writes nothing
    assert_scores_equal(again, scores)
    # The stored archive of the same ensemble has the online store's fingerprint: accepted,
    # with nothing left to compute.
    update = wxens.update_statistics(online, folder / "archive.zarr", TRUTH, PERSISTENCE)
    assert update.pairs == {"forecast": 0, "persistence": 0}


def test_online_mean_and_refusals(tmp_path, stored):
    ensemble, _ = stored
    online, kept = tmp_path / "online.zarr", tmp_path / "mean.zarr"
    arguments = (MEMBERS, TRUTH, INITS[:2], 40, "48h")
    choices = {**ENSEMBLE, "truth": TRUTH, "stats": online, "regions": ["global"]}
    wxens.score_ensemble_online(*arguments, **choices, keep="mean", archive=kept)
    mean = wxens.open_archive(kept)
    assert mean.sizes["member"] == 1 and str(mean.kind.attrs["flag_meanings"]) == "mean"
    for name in ("u", "v"):
        expected = ensemble[name].sel(init_time=np.sort(INITS[:2])).values
        expected = expected.mean(axis=2, dtype=np.float64).astype(np.float32)
        assert np.array_equal(mean[name].isel(member=0).values, expected), name
    before = {**files(online), **files(kept)}
    late = TRUTH.time.values[-4]  # its 48 h leads reach past the truth
    for call, error, message in (
        (dict(init_times=late), wxens.ForecastError, "truth has no analysis at"),
        (dict(n_members=20), ScoreError, "statistics of another forecast"),
        (dict(keep=3, archive=kept), wxens.StoreError, "archives another ensemble"),
        (dict(keep=2, archive=None), wxens.ForecastError, "pass both, or neither"),
        (dict(keep="most"), wxens.ForecastError, "expected none, mean or a number"),
    ):
        given = dict(zip(("init_times", "n_members"), arguments[2:4], strict=True))
        given |= {"keep": "mean", "archive": kept, **call}
        with pytest.raises(error, match=message):
            wxens.score_ensemble_online(MEMBERS, TRUTH, lead_time="48h", **choices, **given)
    assert {**files(online), **files(kept)} == before


def test_the_commands_score_online(tiny_world, wxens, tmp_path):
    """`wxens hindcast --score-against --stats --keep N --archive`: the statistics of a stored
    then verified run; misuse gets one line and exit 1."""
    config, truth = tiny_world
    online, kept = tmp_path / "online.zarr", tmp_path / "kept.zarr"
    archive, stats = tmp_path / "archive.zarr", tmp_path / "stats.zarr"
    common = ["--config", config, "--model", "nwp", "--members", 12, "--lead-days", 1]
    common += ["--start", "2027-01-01", "--end", "2027-01-02", "--quiet"]
    scoring = ["--score-against", truth, "--stats", online, "--reference", "persistence"]
    code, output = wxens("hindcast", *common, *scoring, "--keep", 2, "--archive", kept)
    assert code == 0 and "scored 2027-01-01T00:00, 2027-01-02T00:00" in output, output
    code, output = wxens("hindcast", *common, "--archive", archive)
    assert code == 0, output
    verify = ["verify", "--forecast", archive, "--truth", truth, "--reference", "persistence"]
    code, output = wxens(*verify, "--stats", stats, "--quiet")
    assert code == 0, output
    assert_scores_equal(finalize(online), finalize(stats))
    first_two = xr.open_zarr(archive).isel(member=slice(0, 2))
    assert xr.open_zarr(kept).psi_upper.equals(first_two.psi_upper)
    before = files(tmp_path)
    for bad, message in (
        ([*common, "--stats", online], "needs both --score-against"),
        ([*common, *scoring, "--keep", "mean"], "stores into --archive"),
        ([*common, *scoring, "--out", tmp_path / "x.zarr"], "stores no ensemble"),
        ([*common, *scoring, "--members", 6], "statistics of another forecast"),
    ):
        code, output = wxens("hindcast", *bad)
        assert code == 1 and message in output and len(output.strip().splitlines()) == 1, output
    assert files(tmp_path) == before
