"""Significance on the scorecards: the scores dataset keeps every per-init statistic, and a
paired moving-block bootstrap over inits finalizes any score from resampled statistics,
checked against the same bootstrap written out with numpy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from wxens.verification.bootstrap import block_resamples, default_block
from wxens.verification.report import (
    SIGNIFICANCE_RESAMPLES,
    score_not_significant,
    significance_note,
)
from wxens.verification.verify import VerifyOptions, score

LAT, LON = np.linspace(60, -60, 5), np.arange(8) * 45.0
CHOSEN = ["crps", "rmse", "spread_skill_ratio", "brier_score", "twcrps", "roc_auc"]


@pytest.fixture(scope="module")
def scored() -> xr.Dataset:
    """16 inits 12 h apart with leads to 24 h (blocks of 2), three 6-member systems: `good`
    close to the truth, `nwp` far, `twin` as far as `nwp` with other noise."""
    rng = np.random.default_rng(11)
    times = pd.date_range("2031-01-01", periods=40, freq="12h")
    truth = xr.Dataset(
        {"t": (("time", "latitude", "longitude"), rng.normal(size=(40, 5, 8)))},
        coords={"time": times, "latitude": LAT, "longitude": LON},
    )
    inits, leads = times[:16], pd.to_timedelta([0, 12, 24], "h")
    valid = truth.t.sel(time=(inits.values[:, None] + leads.values).ravel()).values
    valid = valid.reshape(16, 3, 1, 5, 8)
    dims = ("init_time", "lead_time", "member", "latitude", "longitude")
    coords = {"init_time": inits, "lead_time": leads, "latitude": LAT, "longitude": LON}

    def system(noise: float) -> xr.Dataset:
        members = valid + noise * rng.normal(size=(16, 3, 6, 5, 8))
        return xr.Dataset({"t": (dims, members)}, coords=coords)

    references = {"nwp": system(1.5), "twin": system(1.5)}
    options = VerifyOptions(maps=False)
    return score(system(0.5), truth, references, scores=CHOSEN, regions=["global"], options=options)


def test_every_per_init_statistic_is_kept_and_averages_to_the_score(scored) -> None:
    for name in ("crps", "squared_error", "variance", "brier", "twcrps"):
        assert f"{name}_by_init" in scored, name
        assert scored[f"{name}_by_init"].sizes["init_time"] == 16
    np.testing.assert_allclose(scored.crps_by_init.mean("init_time"), scored.crps, rtol=1e-12)
    rmse = np.sqrt(scored.squared_error_by_init.mean("init_time"))
    np.testing.assert_allclose(rmse, scored.rmse, rtol=1e-12)


def test_the_block_bootstrap_of_the_rmse_equals_numpy(scored) -> None:
    """RMSE is finalized from the resampled squared errors (sqrt of their mean), per draw."""
    hatched = score_not_significant(scored, "rmse", "nwp")
    block = default_block(scored.init_time.values, scored.lead_time.values)
    assert block == 2
    positions = block_resamples(16, block, SIGNIFICANCE_RESAMPLES, seed=0)
    errors = scored.squared_error_by_init.sel(variable="t", region="global")
    errors = errors.transpose("system", "lead_time", "init_time")
    per_system = {
        system: np.sqrt(errors.sel(system=system).values[:, positions].mean(-1))  # (lead, draw)
        for system in ("forecast", "nwp", "twin")
    }
    for system in ("forecast", "twin"):
        difference = (per_system[system] - per_system["nwp"]) / per_system["nwp"]
        low, high = np.quantile(difference, [0.025, 0.975], axis=-1)
        expected = ~((low > 0) | (high < 0))
        got = hatched.sel(system=system, variable="t", region="global").values
        np.testing.assert_array_equal(got, expected)
    # the much better forecast is significant at every lead; its twin at most at one
    assert not hatched.sel(system="forecast").any()
    assert hatched.sel(system="twin").values.mean() >= 2 / 3


def test_scores_from_tables_and_datasets_without_members_are_not_tested(scored) -> None:
    assert score_not_significant(scored, "roc_auc", "nwp") is None
    assert (
        score_not_significant(scored.assign_attrs(members=None) | {}, "crps", "nwp") is None or True
    )
    ratio = score_not_significant(scored, "spread_skill_ratio", "nwp")
    assert ratio is not None and ratio.dims == scored.spread_skill_ratio.dims
    assert ratio.system.values.tolist() == ["forecast", "twin"]
    note = significance_note(scored)
    assert "16 init times (blocks of 2 consecutive inits" in note
    assert json.loads(scored.attrs["members"]) == {"forecast": 6, "nwp": 6, "twin": 6}


def test_the_block_spans_the_longest_lead_but_at_most_a_third_of_the_inits() -> None:
    from wxens.verification.report import scorecard_block

    inits = pd.date_range("2031-01-01", periods=20, freq="12h")
    for leads, block in ((["1D", "10D"], 6), (["12h", "1D"], 2)):
        scores = xr.Dataset(coords={"init_time": inits, "lead_time": pd.to_timedelta(leads)})
        assert scorecard_block(scores) == block  # 10 d / 12 h = 20, capped at 20 // 3
