"""The verification API: `score` (pure) equals `verify` (written) bit for bit, the score and
region registries, typed one-line errors, bad files and missing members, `report`, and the one
area weighting (`wxens skill`'s RMSE equals `verify`'s for a one-member run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from wxens.verification.aggregation import REGIONS, LatLonBox, MaskRegion
from wxens.verification.errors import ScoreError
from wxens.verification.report import report
from wxens.verification.scores import SCORES
from wxens.verification.verify import VerifyOptions, score, verify

REPO = Path(__file__).resolve().parents[1]
LAT = np.linspace(90, -90, 9)
LON = np.arange(16) * 22.5
TIMES = pd.date_range("2031-01-01", periods=60, freq="6h")
LEADS = pd.to_timedelta([0, 12, 24], unit="h")
DIMS = ("init_time", "lead_time", "member", "latitude", "longitude")
PATH_ATTRS = ("systems", "truth")  # the only attributes in which score and verify may differ


def ensemble(truth: xr.Dataset, members: int, noise: float, seed: int) -> xr.Dataset:
    """`members` members around the truth at the valid times of 4 inits x 3 leads."""
    rng = np.random.default_rng(seed)
    inits = TIMES[:4]
    valid = truth.sel(time=(inits.values[:, None] + LEADS.values).ravel())
    data = {
        name: (
            DIMS,
            (
                valid[name].values.reshape(4, 3, 1, 9, 16)
                + noise * rng.normal(size=(4, 3, members, 9, 16))
            ).astype("float32"),
        )
        for name in truth.data_vars
    }
    coords = {"init_time": inits, "lead_time": LEADS, "latitude": LAT, "longitude": LON}
    return xr.Dataset(data, coords=coords)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """In memory and on disk: a truth, a 5-member forecast and a 9-member reference."""
    folder = tmp_path_factory.mktemp("score_api")
    rng = np.random.default_rng(8)
    truth = xr.Dataset(
        {
            name: (("time", "latitude", "longitude"), rng.normal(size=(60, 9, 16)).astype("f4"))
            for name in ("t", "u")
        },
        coords={"time": TIMES, "latitude": LAT, "longitude": LON},
    )
    forecast, wide = ensemble(truth, 5, 1.0, 1), ensemble(truth, 9, 2.0, 2)
    paths = {
        "truth": folder / "truth.zarr",
        "forecast": folder / "f.zarr",
        "wide": folder / "w.zarr",
    }
    truth.chunk({"time": 25, "latitude": 4}).to_zarr(paths["truth"])  # tiles, as some stores
    forecast.to_zarr(paths["forecast"])
    wide.to_zarr(paths["wide"])
    return folder, {"truth": truth, "forecast": forecast, "wide": wide}, paths


REGION_CHOICE = [
    "global",
    "tropics",
    LatLonBox(south=-30, north=60, west=300, east=60, name="atlantic"),  # wraps past 0
    MaskRegion(
        xr.DataArray(np.linspace(0, 1, 9 * 16).reshape(9, 16), dims=("latitude", "longitude")),
        name="ramp",
    ),
]


def assert_bitwise_equal(a: xr.Dataset, b: xr.Dataset) -> None:
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in a.data_vars:
        assert a[name].dims == b[name].dims, name
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name
    for name in a.coords:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    same = {key for key in a.attrs if key not in PATH_ATTRS}
    assert same == {key for key in b.attrs if key not in PATH_ATTRS}
    assert {key: a.attrs[key] for key in same} == {key: b.attrs[key] for key in same}


def test_score_in_memory_equals_verify_on_disk_bit_for_bit(data):
    folder, memory, paths = data
    scores = score(
        memory["forecast"], memory["truth"], {"wide": memory["wide"]}, regions=REGION_CHOICE
    )
    out = folder / "scores.zarr"
    returned = verify(
        paths["forecast"], paths["truth"], out, {"wide": paths["wide"]}, regions=REGION_CHOICE
    )
    written = xr.open_zarr(out)
    assert not out.with_name("scores.zarr.partial").exists()
    assert_bitwise_equal(scores, written)
    assert_bitwise_equal(scores, returned)
    assert scores.region.values.tolist() == ["global", "tropics", "atlantic", "ramp"]
    assert scores.system.values.tolist() == ["forecast", "wide"]
    assert json.loads(scores.attrs["systems"])["wide"] == "<in-memory dataset>"
    assert json.loads(written.attrs["systems"])["wide"] == str(paths["wide"])
    expected = {output for entry in SCORES.values() for output in entry.outputs}
    assert expected <= set(scores.data_vars) and "map_ensemble_mean" in scores.data_vars
    assert not scores.isnull().all().to_array().any()  # every score has values
    # dask-backed inputs (as opened) give the same numbers as in-memory ones
    lazy = {name: xr.open_zarr(path) for name, path in paths.items()}
    again = score(lazy["forecast"], lazy["truth"], {"wide": lazy["wide"]}, regions=["global"])
    np.testing.assert_array_equal(
        again.crps.sel(region="global"),
        scores.crps.sel(region="global", system=["forecast", "wide"]),
    )
    # overwrite: refused without it, replaced with it
    with pytest.raises(ScoreError, match="already exists; pass overwrite=True"):
        verify(memory["forecast"], memory["truth"], out)
    verify(memory["forecast"], memory["truth"], out, scores=["rmse"], overwrite=True)
    assert "crps" not in xr.open_zarr(out).data_vars


def test_scores_and_regions_pick_what_is_computed(data, wxens):
    folder, memory, paths = data
    full = score(memory["forecast"], memory["truth"], regions=REGION_CHOICE)
    box = REGION_CHOICE[2]
    some = score(
        memory["forecast"],
        memory["truth"],
        scores=["crps", "rmse", "tail_reach"],  # an output name picks its whole entry
        regions={"tropics": REGIONS["tropics"], "atlantic": box},
        options=VerifyOptions(maps=False),
    )
    per_init = {f"{name}_by_init" for name in ("crps", "squared_error", "tail_low", "tail_high")}
    per_init |= {"reach_low_by_init", "reach_high_by_init"}  # what the scorecards resample
    assert set(some.data_vars) == {"crps", "rmse", "tail_fraction", "tail_reach", *per_init}
    assert some.region.values.tolist() == ["tropics", "atlantic"]
    assert json.loads(some.attrs["scores"]) == ["crps", "rmse", "tails"]
    for name in some.data_vars:
        chosen = full[name].sel(region=["tropics", "atlantic"])
        np.testing.assert_allclose(some[name], chosen, rtol=1e-12)
    # A Score object, and a region mask given as a bare object, work too.
    mask = REGION_CHOICE[3]
    custom = score(memory["forecast"], memory["truth"], scores=[SCORES["spread"]], regions=[mask])
    np.testing.assert_allclose(custom.spread, full.spread.sel(region=["ramp"]), rtol=1e-12)

    out = folder / "cli-some.zarr"
    code, output = wxens(
        "verify", "--forecast", paths["forecast"], "--truth", paths["truth"], "--out", out,
        "--scores", "crps,rmse", "--regions", "global,tropics", "--quiet",
    )  # fmt: skip
    assert code == 0, output
    written = xr.open_zarr(out)
    assert {"crps", "crps_by_init", "rmse"} <= set(written.data_vars)
    assert "spread" not in written.data_vars and "energy_score" not in written.data_vars
    assert written.region.values.tolist() == ["global", "tropics"]
    assert "CRPS / RMSE, global" in output  # the printed summary has what was computed
    for flag, value, message in [
        ("--scores", "crps,skill", "unknown score 'skill'"),
        ("--regions", "global,arctic", "unknown region 'arctic'"),
    ]:
        bad = folder / f"bad{flag}.zarr"
        code, output = wxens(
            "verify", "--forecast", paths["forecast"], "--truth", paths["truth"],
            "--out", bad, flag, value, "--quiet",
        )  # fmt: skip
        assert code == 1 and message in output and len(output.strip().splitlines()) == 1
        assert not bad.exists() and not bad.with_name(bad.name + ".partial").exists()


def test_api_misuse_raises_one_line_score_errors(data):
    _, memory, _ = data
    forecast, truth = memory["forecast"], memory["truth"]
    cases = [
        (lambda: score(forecast.isel(member=0), truth), "forecast has no 'member' dimension"),
        (lambda: score(forecast, truth.rename(time="when")), "truth has no 'time' dimension"),
        (
            lambda: score(forecast.assign_coords(lead_time=[0, 12, 24]), truth),
            "'lead_time' must be timedelta64",
        ),
        (lambda: score(forecast, truth, variables=["q"]), "forecast has no variable 'q'"),
        (lambda: score(forecast, truth, scores=["crpss"]), "unknown score 'crpss'"),
        (lambda: score(forecast, truth, regions=["arctic"]), "unknown region 'arctic'"),
        (lambda: score(forecast, truth, {"x": 3}), "x is a int; pass a Dataset or a path"),
        (lambda: score(forecast, truth, ["wide"]), "references must map names"),
        (lambda: score(forecast, truth, {"forecast": forecast}), "'forecast' names the forecast"),
        (lambda: score(forecast, truth, options={"seed": 1}), "options must be a VerifyOptions"),
        (lambda: score(forecast["t"].rename(None), truth), "unnamed DataArray"),
        (
            lambda: score(forecast.isel(latitude=slice(0, 5)), truth),
            "forecast is on another grid than the truth: latitude has 5 points",
        ),
        (
            lambda: score(forecast.assign_coords(init_time=TIMES[-4:]), truth),
            "the truth has no analysis at valid time",
        ),
        (
            lambda: score(
                forecast,
                truth,
                regions=[
                    MaskRegion(xr.DataArray(np.ones((3, 16)), dims=("latitude", "longitude")))
                ],
            ),
            "mask region 'mask' is on another grid",
        ),
        (lambda: VerifyOptions(quantiles=(0.5, 1.5)), "quantiles must lie strictly between"),
        (lambda: score("/nonexistent/f.zarr", truth), "/nonexistent/f.zarr does not exist"),
    ]
    for call, message in cases:
        with pytest.raises(ScoreError) as raised:
            call()
        assert message in str(raised.value), (message, str(raised.value))
        assert "\n" not in str(raised.value)
    assert issubclass(ScoreError, ValueError)


def test_a_file_named_grib_that_is_not_grib_fails_with_one_line(data, tmp_path, wxens):
    _, _, paths = data
    fake = tmp_path / "forecast.grib"
    fake.write_text("this is not GRIB\n")
    out = tmp_path / "scores.zarr"
    for forecast, truth in [(fake, paths["truth"]), (paths["forecast"], fake)]:
        code, output = wxens(
            "verify", "--forecast", forecast, "--truth", truth, "--out", out, "--quiet"
        )
        lines = output.strip().splitlines()
        assert code == 1 and len(lines) == 1, output
        assert lines[0].startswith("error: ") and str(fake) in lines[0]
        assert "not a readable GRIB file" in lines[0] and "Aborted" not in output
        assert not out.exists() and not (tmp_path / "scores.zarr.partial").exists()


def test_a_nan_member_value_is_refused_naming_where(data, tmp_path, wxens):
    _, memory, paths = data
    holed = memory["forecast"].copy(deep=True)
    holed["u"][1, 2, 3, 4, 5] = np.nan  # init 1, lead 24 h, member 3
    holed.to_zarr(tmp_path / "holed.zarr")
    out = tmp_path / "scores.zarr"
    code, output = wxens(
        "verify", "--forecast", tmp_path / "holed.zarr", "--truth", paths["truth"],
        "--out", out, "--quiet",
    )  # fmt: skip
    # (Python's warnings about the short climate sample may come first, outside pytest.)
    lines = [line for line in output.strip().splitlines() if "Warning" not in line]
    assert code == 1 and "Traceback" not in output, output
    assert lines[-1] == (
        "error: forecast: 'u' has 1 missing (NaN) member values at init_time 2031-01-01T06, "
        "lead_time 24 h; score complete members only, e.g. forecast.dropna('member', how='any')"
    )
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not out.exists() and not (tmp_path / "scores.zarr.partial").exists()
    # The same refusal through the API, whichever scores are asked for; complete members score.
    for scores in (None, ["spectra"]):
        with pytest.raises(ScoreError, match="'u' has 1 missing"):
            score(holed, memory["truth"], scores=scores, options=VerifyOptions(maps=False))
    complete = holed.dropna("member", how="any")
    assert complete.sizes["member"] == 4
    result = score(complete, memory["truth"], scores=["crps"], options=VerifyOptions(maps=False))
    assert result.crps.notnull().all() and json.loads(result.attrs["members"])["forecast"] == 4


def test_report_of_a_dataset_or_a_store(data, tmp_path):
    folder, memory, _ = data
    store = tmp_path / "s.zarr"
    scores = verify(
        memory["forecast"],
        memory["truth"],
        store,
        {"wide": memory["wide"]},
        scores=["crps", "rmse"],
        regions=["global"],
        variables=["t"],
        options=VerifyOptions(maps=False),
    )
    page = report(scores, tmp_path / "from-dataset")
    assert page == tmp_path / "from-dataset" / "index.html"
    assert "crps scorecard" in page.read_text()  # against the first reference by default
    from_store = report(store, tmp_path / "from-store", reference="forecast")
    assert (tmp_path / "from-store" / "data" / "crps.csv").is_file()
    assert "rmse scorecard" in from_store.read_text()
    with pytest.raises(ScoreError, match="not a scores store"):
        report(folder / "missing.zarr", tmp_path / "never")
    with pytest.raises(ScoreError, match="unknown reference system 'ifs'"):
        report(scores, tmp_path / "never", reference="ifs")
    assert not (tmp_path / "never").exists()


# --- one area weighting: `wxens skill` against `wxens verify` ---------------------------------

CHECKPOINT = REPO / "checkpoints" / "default" / "sfno-seed1"
INIT = "2031-01-01T00"


def synthetic_analyses(store: Path) -> None:
    """A complete analysis store of the default world's grid covering 2031 (the config's test
    year): the checkpoint's zonal-mean profiles plus smooth anomalies of its anomaly std, a
    wave that travels east. Its realism does not matter: both commands score the same rollout."""
    metadata = json.loads((CHECKPOINT / "metadata.json").read_text())
    statistics = metadata["architecture"]["normalisation"]["variables"]
    latitude, longitude = np.linspace(90, -90, 33), np.arange(64) * 5.625
    times = pd.date_range("2031-01-01", "2031-12-31T18", freq="6h")
    phase = np.deg2rad(longitude)[None, None, :] - 0.3 * np.arange(len(times))[:, None, None]
    envelope = np.cos(np.deg2rad(latitude))[None, :, None] ** 2
    fields = {}
    for k, (name, stats) in enumerate(statistics.items()):
        profile = np.asarray(stats["zonal_mean"])[None, :, None]
        wave = (
            np.sin(4 * phase + k)
            + 0.5 * np.cos(7 * phase - 2 * k) * np.sin(np.deg2rad(2 * latitude))[None, :, None]
        )
        values = profile + 2 * stats["anomaly_std"] * envelope * wave
        fields[name] = (("time", "latitude", "longitude"), values.astype("float32"))
    coords = {"time": times, "latitude": latitude, "longitude": longitude}
    dataset = xr.Dataset(fields, coords=coords, attrs={"wxens_complete": True})
    for name in dataset.data_vars:
        dataset[name].attrs["units"] = "m2 s-1"
    dataset.to_zarr(store, consolidated=False)


def test_skill_rmse_equals_verify_rmse_of_a_one_member_run(tmp_path):
    import torch
    from wxens.data_pipeline.config import load_config
    from wxens.data_pipeline.sphere import LatLonGrid
    from wxens.forecast.skill import Analyses, deterministic_skill
    from wxens.models.checkpoint import load_checkpoint

    store = tmp_path / "analyses.zarr"
    synthetic_analyses(store)
    year = {"first": 2031, "last": 2031}
    config = tmp_path / "one-member.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "configs" / "default.yaml"),
                "analyses": str(store),
                "periods": {"start": "2031-01-01", "train": year, "validation": year, "test": year},
                "perturbation": {"initial": "none"},
                # float32: bf16-cpu's numbers depend on the batch shape, and skill and the
                # runner batch differently (the runner's fixed shapes keep members bitwise)
                "sfno": {"precision": "float32"},
            }
        )
    )
    out = tmp_path / "forecast.zarr"
    wxens = Path(sys.executable).with_name("wxens")
    run = subprocess.run(
        [
            str(wxens),
            "forecast",
            "--config",
            str(config),
            "--checkpoints",
            str(CHECKPOINT),
            "--init",
            INIT,
            "--members",
            "1",
            "--lead-days",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr

    cfg = load_config(config)
    analyses = Analyses(store, cfg)
    emulator = load_checkpoint(CHECKPOINT, cfg, torch.device("cpu"))
    skill = deterministic_skill(
        analyses, {"sfno": emulator}, list(cfg.variables), 1, 4, torch.device("cpu"), quiet=True
    )
    assert skill["init_times"] == [str(np.datetime64(INIT, "ns"))]
    scores = score(
        out, store, scores=["rmse"], regions=["global"], options=VerifyOptions(maps=False)
    )
    for name in cfg.variables:
        verified = scores.rmse.sel(system="forecast", variable=name, region="global").values
        assert verified[0] == 0  # lead 0: the analysis itself
        np.testing.assert_allclose(verified[1:], skill["rmse"]["sfno"][name], rtol=2e-6)
        # The grid's quadrature weights (what `wxens skill` used) give another RMSE.
        members = xr.open_zarr(out)[name].isel(init_time=0, member=0).values[1:]
        valid = np.datetime64(INIT) + scores.lead_time.values[1:]
        observed = xr.open_zarr(store)[name].sel(time=valid).values
        quadrature = LatLonGrid(33, 64).area_weights()
        other = np.sqrt(((members.astype(float) - observed) ** 2 * quadrature).sum((-2, -1)))
        assert np.abs(other / verified[1:] - 1).min() > 10 * 2e-6  # far outside the rtol
