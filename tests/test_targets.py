"""The targets table (`verification.targets`, `wxens targets`): on ensembles whose scores have
closed forms (members and truth independent draws of one distribution: calibrated; members
twice as wide: a known spread-skill ratio, power and CRPS order), the values match them; the
rank test keeps a uniform histogram and rejects a humped one, with the Kish effective number
of independent points (within 20 %); the
bootstrap brackets the values, and separate stores give what one store gives; misuse is
refused in one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats as scipy_stats
from wxens.verification.aggregation import cell_area_weights
from wxens.verification.errors import ScoreError
from wxens.verification.stats_store import update_statistics
from wxens.verification.targets import (
    TARGET_SCORES,
    Targets,
    bootstrap_targets,
    passed,
    rank_test,
    target_values,
    targets_summary,
    targets_table,
)
from wxens.verification.verify import VerifyOptions, score

LAT = np.linspace(90, -90, 33)
LON = np.arange(64) * 5.625
INITS = pd.date_range("2031-01-16", periods=8, freq="2D")
LEADS = pd.to_timedelta(np.arange(13) * 6, unit="h")
TARGETS = Targets(
    ratio_days=(1, 2, 3),
    scored_days=(1.0, 3.0),
    limit_days=(1, 3),
    power_day=3,
    rank_days=(1, 2, 3),
)
"""3-day leads (the defaults' days up to 10, cut to 3): the same code on a third of the work."""
MEMBERS = 5
WIDE = 2.0
"""The second ensemble's members have twice the truth's standard deviation."""
OPTIONS = VerifyOptions(maps=False)


def make_truth() -> xr.Dataset:
    times = pd.date_range("2030-12-01", "2031-03-20", freq="6h")
    noise = np.random.default_rng(3).normal(size=(len(times), len(LAT), len(LON)))
    return xr.Dataset(
        {"u": (("time", "latitude", "longitude"), noise.astype("f4"))},
        coords={"time": times, "latitude": LAT, "longitude": LON},
    )


def make_forecast(scale: float, seed: int) -> xr.Dataset:
    shape = (len(INITS), len(LEADS), MEMBERS, len(LAT), len(LON))
    values = scale * np.random.default_rng(seed).normal(size=shape)
    dims = ("init_time", "lead_time", "member", "latitude", "longitude")
    coords = {"init_time": INITS, "lead_time": LEADS, "latitude": LAT, "longitude": LON}
    attrs = {"wxens_fingerprint": f"noise-{scale}-{seed}"}
    return xr.Dataset({"u": (dims, values.astype("f4"))}, coords=coords, attrs=attrs)


@pytest.fixture(scope="module")
def systems():
    return make_truth(), make_forecast(1.0, 1), make_forecast(WIDE, 2)


@pytest.fixture(scope="module")
def scores(systems):
    truth, calibrated, wide = systems
    result = score(
        calibrated,
        truth,
        {"wide": wide},
        scores=list(TARGET_SCORES),
        regions=["global"],
        options=OPTIONS,
    )
    return result


@pytest.fixture(scope="module")
def stores(systems, tmp_path_factory):
    truth, calibrated, wide = systems
    folder = tmp_path_factory.mktemp("targets")
    paths = {"forecast": folder / "calibrated.zarr", "wide": folder / "wide.zarr"}
    for path, forecast in zip(paths.values(), (calibrated, wide), strict=True):
        update_statistics(
            path, forecast, truth, scores=list(TARGET_SCORES), regions=["global"], options=OPTIONS
        )
    return paths


def test_the_values_match_their_closed_forms(scores):
    values = target_values(scores, baseline="wide", limit="forecast", targets=TARGETS)
    ratio = values.spread_skill_ratio
    assert np.allclose(ratio.sel(system="forecast"), 1.0, atol=0.08)
    # sqrt((M+1)/M) spread / RMSE of the mean: spread WIDE, RMSE sqrt(1 + WIDE^2 / M).
    wide_ratio = math.sqrt((MEMBERS + 1) / MEMBERS) * WIDE / math.sqrt(1 + WIDE**2 / MEMBERS)
    assert np.allclose(ratio.sel(system="wide"), wide_ratio, rtol=0.06)
    # Outside the members: 2 / (M + 1) if calibrated; the allowance is 1.5 x that.
    assert float(values.outlier_fraction.sel(system="forecast")) == pytest.approx(
        2 / (MEMBERS + 1), abs=0.01
    )
    assert values.outlier_fraction_allowed.values.tolist() == pytest.approx([0.5, 0.5])
    # The calibrated ensemble's fair CRPS is below the wide one's at every lead.
    assert float(values.crps_beats_baseline.sel(system="forecast")) == 1.0
    assert np.isnan(values.crps_beats_baseline.sel(system="wide"))
    assert np.allclose(values.crps_over_limit.sel(system="forecast"), 1.0)
    # White noise: the members' power over the truth's is their variance ratio.
    assert float(values.power_ratio.sel(system="forecast").squeeze()) == pytest.approx(1.0, abs=0.1)
    assert float(values.power_ratio.sel(system="wide").squeeze()) == pytest.approx(WIDE**2, rel=0.1)
    # Noise carries no signal: the EFI's ROC area is that of chance.
    assert float(values.efi_roc_auc.sel(system="forecast")) == pytest.approx(0.5, abs=0.05)
    checks = passed(values, TARGETS)
    assert checks.spread_skill_in_band.values.tolist() == [True, False]
    assert checks.power_within_tolerance.values.tolist() == [True, False]
    assert checks.efi_roc_auc_reached.values.tolist() == [False, False]


def test_the_rank_test_uses_the_effective_number_of_points(stores):
    from wxens.verification.stats_store import read_statistics

    weights = cell_area_weights(LAT).values[:, None] * np.ones(len(LON))
    kish = weights.sum() ** 2 / (weights**2).sum()  # independent points, area-weighted
    for name, expect_uniform in (("forecast", True), ("wide", False)):
        counts = read_statistics(stores[name]).systems["forecast"].rank_counts
        counts = counts.sel(region="global").isel(lead_time=slice(1, None))
        # Every (init, lead) a field of its own: 96 fields estimate the points well.
        fields = counts.transpose("init_time", "lead_time", "variable", "rank").values
        folded = xr.DataArray(
            fields.reshape(-1, *fields.shape[2:]), dims=("init_time", "variable", "rank")
        )
        test = rank_test(folded, MEMBERS)
        assert float(test.rank_effective_points) == pytest.approx(kish, rel=0.2)
        if expect_uniform:
            assert float(test.rank_p_value.min()) > 1e-3
        else:
            assert float(test.rank_p_value.max()) < 1e-6  # humped: too many middle ranks


def test_the_rank_test_is_the_chi_square_of_pooled_counts():
    """With identical fields (no spread across them) the effective points are capped at the
    points of a field, and the test is scipy's chi-square on the pooled counts of all."""
    histogram = np.array([30.0, 10.0, 10.0, 10.0, 10.0, 30.0])  # 100 points, M = 5
    counts = xr.DataArray(np.tile(histogram, (4, 1, 1)), dims=("init_time", "variable", "rank"))
    test = rank_test(counts, members=5, bins=3)
    pooled = 4 * np.array([40.0, 20.0, 40.0])
    expected = scipy_stats.chisquare(pooled, np.full(3, pooled.sum() / 3)).pvalue
    assert float(test.rank_effective_points) == 100.0
    assert float(test.rank_p_value) == pytest.approx(expected, rel=1e-9)


def test_the_bootstrap_brackets_the_values_of_separate_stores(scores, stores):
    values = bootstrap_targets(
        {"forecast": stores["forecast"], "wide": stores["wide"]},
        baseline="wide",
        limit=None,
        resamples=40,
        targets=TARGETS,
    )
    assert values.attrs["block"] == 2  # 3-day leads, inits 2 days apart
    direct = target_values(scores, baseline="wide", limit=None, targets=TARGETS)
    for name in ("spread_skill_ratio", "outlier_fraction", "power_ratio", "efi_roc_auc"):
        xr.testing.assert_allclose(values[name], direct[name].transpose(*values[name].dims))
        bounds = values[f"{name}_interval"]
        assert (bounds.sel(bound="low") <= values[name] + 1e-12).all()
        assert (bounds.sel(bound="high") >= values[name] - 1e-12).all()
    summary = targets_summary(values, TARGETS)
    assert summary["forecast"]["passed"]["spread_skill_in_band"] is True
    assert summary["forecast"]["passed"]["beats_baseline"] is True
    assert "beats_baseline" not in summary["wide"]["passed"]
    assert summary["bootstrap"] == {"inits": 8, "resamples": 40, "block": 2, "confidence": 0.9}
    json.dumps(summary)
    table = targets_table(values, TARGETS)
    assert table.splitlines()[2].startswith("| forecast | 5 | ")
    assert "rank test p" in table


def test_misuse_is_refused_in_one_line(scores, stores, systems, tmp_path, wxens):
    with pytest.raises(ScoreError, match="fewer than two blocks of 5"):
        bootstrap_targets(stores["forecast"], resamples=2, block=5)
    truth, calibrated, _ = systems
    fewer = tmp_path / "fewer.zarr"
    update_statistics(
        fewer,
        calibrated.isel(init_time=slice(0, 4)),
        truth,
        scores=list(TARGET_SCORES),
        regions=["global"],
        options=OPTIONS,
    )
    with pytest.raises(ScoreError, match="holds other init_times"):
        bootstrap_targets({"forecast": stores["forecast"], "short": fewer}, resamples=2)
    with pytest.raises(ScoreError, match="need the score 'crps'"):
        target_values(scores.drop_vars("crps"))
    code, output = wxens("targets", "--stats", tmp_path / "absent.zarr")
    assert (code, output.strip()) == (
        1,
        f"error: {tmp_path / 'absent.zarr'} is not a statistics store",
    )
    code, output = wxens("targets", "--stats", f"a={stores['wide']}", "--stats", stores["wide"])
    assert code == 1
    assert "--stats NAME=STORE for every system" in output
