"""`wxens verify` end to end: synthetic stores with known answers, the real ERA5 EDA sample,
and every bad-input path."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import properscoring
import pytest
import xarray as xr

LAT = np.linspace(90, -90, 9)
LON = np.arange(16) * 22.5
TIMES = pd.date_range("2031-01-01", periods=120, freq="6h")
LEADS = pd.to_timedelta([0, 12, 24], unit="h")
DIMS = ("init_time", "lead_time", "member", "latitude", "longitude")


def cell_areas(latitude: np.ndarray) -> np.ndarray:
    """Cell areas between latitude mid-points, written out independently of `aggregation`."""
    edges = np.deg2rad(np.r_[90, (latitude[1:] + latitude[:-1]) / 2, -90])
    return np.sin(edges[:-1]) - np.sin(edges[1:])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A truth store and two ensembles around it (7 and 12 members) on a 9 x 16 grid."""
    folder = tmp_path_factory.mktemp("verify")
    rng = np.random.default_rng(3)
    fields = rng.normal(size=(2, 120, 9, 16)).astype("float32")
    truth = xr.Dataset(
        {
            name: (("time", "latitude", "longitude"), f)
            for name, f in zip("tu", fields, strict=True)
        },
        coords={"time": TIMES, "latitude": LAT, "longitude": LON},
    )
    truth.chunk({"time": 50, "latitude": 4}).to_zarr(folder / "truth.zarr")  # tiles, as some have
    inits = TIMES[:6]
    paths = {}
    for name, members, noise in [("ens", 7, 1.0), ("wide", 12, 2.0)]:
        valid = truth.sel(time=(inits.values[:, None] + LEADS.values).ravel())
        base = {v: valid[v].values.reshape(6, 3, 1, 9, 16) for v in ["t", "u"]}
        data = {
            v: (
                ("init_time", "lead_time", "member", "latitude", "longitude"),
                (b + noise * rng.normal(size=(6, 3, members, 9, 16))).astype("float32"),
            )
            for v, b in base.items()
        }
        coords = {"init_time": inits, "lead_time": LEADS, "latitude": LAT, "longitude": LON}
        paths[name] = folder / f"{name}.zarr"
        xr.Dataset(data, coords=coords).to_zarr(paths[name])
    return folder, truth, paths


@pytest.fixture(scope="module")
def scored(stores, wxens):
    """`wxens verify` of the 7-member ensemble, with the 12-member one as reference `wide`."""
    folder, _, paths = stores
    out = folder / "scores.zarr"
    code, output = wxens(
        "verify", "--forecast", paths["ens"], "--truth", folder / "truth.zarr",
        "--reference", f"wide={paths['wide']}", "--out", out, "--quiet",
        "--report", folder / "report",
    )  # fmt: skip
    assert code == 0, output
    assert "| forecast | u | " in output and "| wide | t | " in output  # the printed summary
    return xr.open_zarr(out)


def test_the_report_links_its_figures_and_scorecards(stores, scored):
    folder = stores[0]
    page = (folder / "report" / "index.html").read_text()
    figures = sorted(p.name for p in (folder / "report").glob("*.png"))
    assert figures and all(name in page for name in figures)
    assert "forecast" in page and "wide" in page and "scorecard" in page.lower()


def test_per_init_crps_and_maps_match_the_members(stores, scored):
    _, truth, paths = stores
    crps = scored.crps.sel(system="forecast")
    np.testing.assert_allclose(scored.crps_by_init.sel(system="forecast").mean("init_time"), crps)
    ens = xr.open_zarr(paths["ens"])["t"].isel(init_time=0)
    np.testing.assert_array_equal(scored.map_lead_time, LEADS.values[1:])  # after lead 0
    maps = scored.sel(variable="t").isel(map_lead_time=-1)
    members = ens.isel(lead_time=-1).values
    np.testing.assert_allclose(maps.map_ensemble_mean, members.mean(0), rtol=1e-5)
    np.testing.assert_allclose(maps.map_spread, members.std(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(maps.map_members, members[:4], rtol=1e-6)
    observed = truth["t"].sel(time=ens.init_time.values + LEADS.values[-1]).values
    np.testing.assert_allclose(maps.map_truth, observed)
    assert float(abs(maps.map_efi).max()) <= 1
    assert scored.attrs["planet"] == "earth"  # the truth store says nothing else


def test_report_command_writes_page_figures_and_tables(stores, scored, wxens):
    folder = stores[0]
    code, output = wxens("report", folder / "scores.zarr", "--out", folder / "by-command")
    assert code == 0, output
    index = folder / "by-command" / "index.html"
    assert output.strip().splitlines()[-1] == str(index.resolve())
    page = index.read_text()
    assert ">Maps</h2>" in page and "data/crps.csv" in page and "data/crps_by_init.json" in page
    table = pd.read_csv(folder / "by-command" / "data" / "crps.csv")
    assert list(table.columns) == ["system", "variable", "region", "lead_hours", "crps"]
    row = table.query("system == 'wide' and variable == 'u' and region == 'global'")
    expected = scored.crps.sel(system="wide", variable="u", region="global").values
    np.testing.assert_allclose(row.sort_values("lead_hours").crps, expected, rtol=1e-6)
    records = json.loads((folder / "by-command" / "data" / "rank_histogram.json").read_text())
    assert len(records) == scored.rank_histogram.size
    assert not any(name.startswith("map_") for name in page.split("data/")[1:])
    code, output = wxens("report", folder / "missing.zarr", "--out", folder / "r2")
    assert code != 0 and "not a scores store" in output and not (folder / "r2").exists()
    code, output = wxens(
        "report", folder / "scores.zarr", "--out", folder / "r3", "--reference", "x"
    )
    assert code != 0 and "unknown reference system 'x'" in output


def test_scores_match_an_independent_computation(stores, scored):
    _, truth, paths = stores
    scores = scored
    assert list(scores.system.values) == ["forecast", "wide"]
    assert json.loads(scores.attrs["members"]) == {"forecast": 7, "wide": 12}

    ens = xr.open_zarr(paths["ens"])["u"].isel(lead_time=2)  # 24 h
    valid = ens.init_time.values + LEADS.values[2]
    observed = truth["u"].sel(time=valid).values
    members = np.moveaxis(ens.values, 1, -1)  # (init, lat, lon, member)
    weights = cell_areas(LAT)[None, :, None] * np.ones((1, 1, 16))
    weights /= weights.sum()

    def area_then_init_mean(per_point):
        return (per_point * weights).sum((1, 2)).mean()

    got = scores.sel(system="forecast", variable="u", region="global").isel(lead_time=2)
    crps = area_then_init_mean(properscoring.crps_ensemble(observed, members))
    assert float(got.crps_ecdf) == pytest.approx(crps, rel=1e-5)
    spread = np.sqrt(area_then_init_mean(members.var(-1, ddof=1)))
    assert float(got.spread) == pytest.approx(spread, rel=1e-5)
    rmse = np.sqrt(area_then_init_mean((members.mean(-1) - observed) ** 2))
    assert float(got.rmse) == pytest.approx(rmse, rel=1e-5)
    # Members are truth + N(0, 1): spread ~ 1, RMSE of the mean ~ sqrt(1/7), calibrated-ish.
    assert float(got.spread) == pytest.approx(1.0, abs=0.1)
    ssr = scores.spread_skill_ratio.sel(system="forecast")
    # Truth is not drawn from the ensemble (it is the centre): the ensemble is over-dispersive.
    assert float(ssr.mean()) > 2
    histogram = scores.rank_histogram.sel(system="forecast").dropna("rank")
    np.testing.assert_allclose(histogram.sum("rank"), 1.0)
    ranks = (members < observed[..., None]).sum(-1)  # continuous values: no ties
    expected = [area_then_init_mean(ranks == r) for r in range(8)]
    np.testing.assert_allclose(got.rank_histogram.dropna("rank"), expected, rtol=1e-6)
    # Events above the truth climate's 90th percentile: the Brier score by hand.
    # (the +-15-day window holds fewer than 100 analyses, so the climate is all 120 of them)
    threshold = np.quantile(truth["u"].values, 0.9, axis=0)
    probability = (members > threshold[..., None]).mean(-1)
    brier = area_then_init_mean((probability - (observed > threshold)) ** 2)
    assert float(got.brier_score.sel(quantile=0.9)) == pytest.approx(brier, rel=1e-6)
    assert 0.5 < float(got.efi_roc_auc.sel(quantile=0.9)) <= 1
    assert got.power_truth.dims == ("wavenumber",) and got.power_members.notnull().all()
    # The wider reference has the worse CRPS everywhere.
    assert (scores.crps.sel(system="wide") > scores.crps.sel(system="forecast")).all()


def test_era5_eda_one_member_as_truth(sample_data, tmp_path, wxens):
    grib = sample_data / "era5" / "era5-levels-members.grib"
    eda = xr.open_dataset(grib, engine="cfgrib", backend_kwargs={"indexpath": ""})
    eda.isel(number=0).to_netcdf(tmp_path / "truth.nc")
    eda.isel(number=slice(1, None)).to_zarr(tmp_path / "members.zarr")  # cfgrib's names kept
    out = tmp_path / "scores.zarr"
    code, output = wxens(
        "verify", "--forecast", tmp_path / "members.zarr", "--truth", tmp_path / "truth.nc",
        "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 0, output
    scores = xr.open_zarr(out).sel(system="forecast", region="global").isel(lead_time=0)
    assert sorted(scores.variable.values) == ["t500", "t850", "z500", "z850"]

    members = eda["z"].sel(isobaricInhPa=500).values  # (number, time, lat, lon)
    truth, ensemble = members[0], np.moveaxis(members[1:], 0, -1)
    weights = cell_areas(eda.latitude.values)[None, :, None] * np.ones((1, 1, 120))
    weights /= weights.sum()
    crps = properscoring.crps_ensemble(truth, ensemble)
    expected_crps = (crps * weights).sum((1, 2)).mean()
    assert float(scores.crps_ecdf.sel(variable="z500")) == pytest.approx(expected_crps, rel=1e-4)
    spread = np.sqrt((ensemble.var(-1, ddof=1) * weights).sum((1, 2)).mean())
    assert float(scores.spread.sel(variable="z500")) == pytest.approx(spread, rel=1e-4)
    # An EDA member is a draw like the others: the spread-skill ratio is near 1.
    assert 0.6 < float(scores.spread_skill_ratio.sel(variable="t850")) < 1.6


def test_names_can_be_mapped(stores, scored, tmp_path, wxens):
    folder, _, paths = stores
    renamed = xr.open_zarr(paths["ens"]).rename(member="realisation", u="wind")
    renamed.to_zarr(tmp_path / "stranger.zarr")
    names = tmp_path / "names.yaml"
    names.write_text("forecast:\n  realisation: member\n")
    code, output = wxens(
        "verify", "--forecast", tmp_path / "stranger.zarr", "--truth", folder / "truth.zarr",
        "--names", names, "--rename-forecast", "wind=u", "--variables", "u",
        "--out", tmp_path / "scores.zarr", "--quiet", "--scheduler", "local-cluster:1",
    )  # fmt: skip
    assert code == 0, output
    scores = xr.open_zarr(tmp_path / "scores.zarr")
    assert list(scores.variable.values) == ["u"]
    reference = scored.crps.sel(system="forecast", variable="u")
    np.testing.assert_allclose(scores.crps.sel(system="forecast", variable="u"), reference)


def test_bad_input(stores, tmp_path, wxens):
    folder, _, paths = stores
    truth_path = folder / "truth.zarr"

    def verify(*args):
        return wxens("verify", "--truth", truth_path, "--quiet", *args)

    out = tmp_path / "scores.zarr"
    out.mkdir()
    (out / "keep").write_text("precious")
    cases = [
        (("--forecast", paths["ens"], "--out", out), "already exists"),
        (("--forecast", tmp_path / "nope.zarr", "--out", tmp_path / "a"), "does not exist"),
        (("--forecast", paths["ens"], "--variables", "v", "--out", tmp_path / "b"),
         "forecast has no variable 'v'"),
        (("--forecast", paths["ens"], "--rename-forecast", "x=y", "--out", tmp_path / "c"),
         "has no 'x' to rename"),
        (("--forecast", paths["ens"], "--rename-forecast", "x", "--out", tmp_path / "d"),
         "expected OLD=NEW"),
        (("--forecast", paths["ens"], "--scheduler", "bogus", "--out", tmp_path / "e"),
         "expected threads, local-cluster:N"),
        (("--forecast", truth_path, "--out", tmp_path / "f"), "no 'member' dimension"),
    ]  # fmt: skip
    for args, message in cases:
        code, output = verify(*args)
        assert code == 1 and message in output, (args, output)
        assert len(output.strip().splitlines()) == 1, output
    assert (out / "keep").read_text() == "precious"

    coarse = xr.open_zarr(paths["ens"]).isel(latitude=slice(0, 5))
    coarse.to_zarr(tmp_path / "coarse.zarr")
    code, output = verify("--forecast", tmp_path / "coarse.zarr", "--out", tmp_path / "g")
    assert code == 1 and "on another grid than the truth: latitude has 5 points" in output
    late = xr.open_zarr(paths["ens"]).assign_coords(init_time=TIMES[-6:])
    late.to_zarr(tmp_path / "late.zarr")
    code, output = verify("--forecast", tmp_path / "late.zarr", "--out", tmp_path / "h")
    assert code == 1 and "no analysis at valid time 2031-01-31T00 (6 of 18" in output
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_climatological_ensemble_reference(tmp_path, wxens):
    """Members are the analyses at the valid time less whole years and +-15 days."""
    from wxens.verification.verify import climatological_ensemble

    rng = np.random.default_rng(5)
    times = pd.date_range("2029-01-01", "2031-03-01", freq="6h")
    values = rng.normal(size=(times.size, 9, 16)).astype("float32")
    truth = xr.Dataset(
        {"u": (("time", "latitude", "longitude"), values)},
        coords={"time": times, "latitude": LAT, "longitude": LON},
    )
    inits = pd.DatetimeIndex(["2031-01-20", "2031-02-01"])
    base = truth["u"].sel(time=(inits.values[:, None] + LEADS.values).ravel()).values
    noise = 0.1 * rng.normal(size=(2, 3, 4, 9, 16))
    forecast = xr.Dataset(
        {"u": (DIMS, (base.reshape(2, 3, 1, 9, 16) + noise).astype("float32"))},
        coords={"init_time": inits, "lead_time": LEADS, "latitude": LAT, "longitude": LON},
    )
    climatology = climatological_ensemble(truth, forecast)
    assert climatology.sizes["member"] == 14  # 2 earlier years x 7 shifts
    valid = inits[1] + LEADS[2]
    first = truth["u"].sel(time=valid - pd.Timedelta(days=365 - 15))
    np.testing.assert_array_equal(climatology["u"].isel(init_time=1, lead_time=2, member=0), first)

    truth.to_zarr(tmp_path / "truth.zarr")
    forecast.to_zarr(tmp_path / "forecast.zarr")
    code, output = wxens(
        "verify", "--forecast", tmp_path / "forecast.zarr", "--truth", tmp_path / "truth.zarr",
        "--reference", "climatology", "--out", tmp_path / "scores.zarr", "--quiet",
    )  # fmt: skip
    assert code == 0, output
    scores = xr.open_zarr(tmp_path / "scores.zarr")
    assert json.loads(scores.attrs["members"]) == {"forecast": 4, "climatology": 14}
    crps = scores.crps.sel(region="global", variable="u")
    assert (crps.sel(system="forecast") < 0.3 * crps.sel(system="climatology")).all()

    short = truth.sel(time=slice("2031-01-01", None))
    short.to_zarr(tmp_path / "short.zarr")
    code, output = wxens(
        "verify", "--forecast", tmp_path / "forecast.zarr", "--truth", tmp_path / "short.zarr",
        "--reference", "climatology", "--out", tmp_path / "none.zarr", "--quiet",
    )  # fmt: skip
    assert code == 1 and "no earlier year of the valid times" in output
