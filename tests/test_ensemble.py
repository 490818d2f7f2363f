"""The ensemble runner: `wxens forecast` and `wxens hindcast` on a tiny real world with two
real trained checkpoints (store layout, reproducibility, resume after SIGKILL, one writer)."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
import zarr
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import load_config
from wxens.data_pipeline.training_data import area_weights
from wxens.forecast.runner import MemberForecaster, prepare

INIT = "2027-02-01T00"


@pytest.fixture(scope="module")
def ensemble(tiny_world, tiny_checkpoints):
    """The tiny world's config with the runner settings, the truth store and the checkpoints."""
    path, store = tiny_world
    return path, store, tiny_checkpoints


def config_with(tmp_path: Path, base: Path, **perturbation) -> Path:
    """`base` with a `perturbation:` section laid over it."""
    data = yaml.safe_load(base.read_text())
    data["perturbation"] = {**data.get("perturbation", {}), **perturbation}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def forecast(wxens, config, checkpoints, out, *extra, members=12, lead_days=1):
    code, output = wxens(
        "forecast", "--config", config, "--checkpoints", checkpoints, "--init", INIT,
        "--members", members, "--lead-days", lead_days, "--out", out, "--quiet", *extra,
    )  # fmt: skip
    return code, output


def fields(store: Path) -> np.ndarray:
    """`(variable, init, lead, member, lat, lon)` of a forecast store."""
    ds = xr.open_zarr(store)
    return np.stack([ds[name].values for name in ("psi_upper", "psi_lower")])


def tree_digest(path: Path) -> str:
    """sha256 over every file name and content under `path`."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


def test_store_layout_provenance_and_bred_pairs(ensemble, wxens, tmp_path):
    path, store, checkpoints = ensemble
    out = tmp_path / "ens.zarr"
    code, output = forecast(wxens, path, checkpoints, out, "--scheduler", "threads:2")
    assert code == 0, output
    ds = xr.open_zarr(out)  # no extra arguments
    assert dict(ds["psi_upper"].sizes) == {
        "init_time": 1, "lead_time": 5, "member": 12, "latitude": 9, "longitude": 16
    }  # fmt: skip
    assert ds["psi_upper"].dtype == np.float32 and not ds["psi_upper"].isnull().any()
    # 2 checkpoints x micro-batches of 8, 12 members over 2 workers: one task of 12
    assert ds.attrs["wxens_batch_size"] == 12
    assert ds["psi_upper"].encoding["chunks"] == (1, 1, 12, 9, 16)
    lead_hours = ds["lead_time"].values / np.timedelta64(1, "h")
    np.testing.assert_array_equal(lead_hours, [0, 6, 12, 18, 24])
    np.testing.assert_array_equal(
        ds["valid_time"].values[0], ds["init_time"].values[0] + ds["lead_time"].values
    )
    # groups of two bred pairs (4j ... 4j + 3) run on checkpoint j mod 2
    np.testing.assert_array_equal(ds["checkpoint"].values, [0] * 4 + [1] * 4 + [0] * 4)
    assert ds["checkpoint"].attrs["flag_meanings"] == "sfno-seed1 sfno-seed2"
    attrs = ds.attrs
    assert yaml.safe_load(attrs["wxens_config"])["perturbation"]["initial"] == "bred_vector"
    assert set(json.loads(attrs["wxens_checkpoints_sha256"])) == {"sfno-seed1", "sfno-seed2"}
    assert attrs["wxens_complete"] is True and attrs["wxens_seed"] == 0

    truth = open_analyses(store).sel(time=INIT)
    analysis = np.stack([truth["psi_upper"].values, truth["psi_lower"].values])
    start = fields(out)[:, 0, 0]  # (variable, member, lat, lon)
    centre = np.broadcast_to(2 * analysis[:, None], (2, 6, 9, 16))
    atol = 1e-6 * np.abs(analysis).max()
    np.testing.assert_allclose(start[:, 0::2] + start[:, 1::2], centre, rtol=0, atol=atol)
    # after rescaling, each hemisphere's RMS of dx is 0.35 x the checkpoint's 48 h RMSE
    rmse = json.loads(attrs["wxens_bred_rmse_48h"])
    weights = area_weights(ds.latitude.values, ds.longitude.values)
    north = ds.latitude.values >= 0
    for member in range(0, 12, 2):
        dx = start[:, member] - analysis
        target = [0.35 * rmse[member // 4 % 2][name] for name in ("psi_upper", "psi_lower")]
        for hemisphere in (north, ~north):
            w = weights[hemisphere]
            rms = np.sqrt((w * dx[:, hemisphere] ** 2).sum((-2, -1)) / w.sum())
            np.testing.assert_allclose(rms, target, rtol=1e-5)
    assert np.abs(fields(out)[:, 0, -1, 0] - fields(out)[:, 0, -1, 1]).max() > 0


def test_members_are_bitwise_the_same_whatever_batch_worker_or_company(ensemble, wxens, tmp_path):
    """Bred vectors, two checkpoints and weight noise: the same member from one batch of 24,
    batches of 1 on 4 threads, batches of 5 on a dask LocalCluster of 2 processes, and alone
    (the runner's API), is bitwise the same."""
    path, _, checkpoints = ensemble
    config = config_with(tmp_path, path, parameter_sigma=0.02)
    runs = {
        "one batch": ("--batch-size", 24, "--scheduler", "threads:1"),
        "batches of 1": ("--batch-size", 1, "--scheduler", "threads:4"),
        "local cluster": ("--batch-size", 5, "--scheduler", "local-cluster:2"),
    }
    values = {}
    for name, extra in runs.items():
        code, output = forecast(
            wxens, config, checkpoints, tmp_path / f"{name}.zarr", *extra, members=24
        )
        assert code == 0, output
        values[name] = fields(tmp_path / f"{name}.zarr")
    for name, value in values.items():
        assert np.array_equal(value, values["one batch"]), name
    cfg = load_config(config)
    spec = prepare(cfg, "sfno", [checkpoints], cfg.analyses, torch.device("cpu"))
    alone = MemberForecaster.from_spec(spec)
    torch.set_num_threads(1)
    for member in (17, 6):
        states = list(alone.trajectories(np.datetime64(INIT, "ns"), range(member, member + 1), 4))
        computed = np.stack([s[0].numpy() for s in states], axis=1)  # (variable, lead, ...)
        assert np.array_equal(computed, values["one batch"][:, 0, :, member]), member
    # the weight noise really acts: without it the members differ
    code, output = forecast(wxens, path, checkpoints, tmp_path / "plain.zarr", members=24)
    assert code == 0, output
    assert not np.array_equal(fields(tmp_path / "plain.zarr"), values["one batch"])


def test_a_member_alone_equals_the_member_among_a_thousand(ensemble, wxens, tmp_path):
    """Random-field starts and perturbed tendencies (SPPT, each member's pattern from its own
    noise stream, carried in a hidden channel, its amplitude ramped by the hours in another):
    members 0-2 of 1000 are bitwise those of 3; the tendencies' perturbations really act."""
    path, _, checkpoints = ensemble
    config = config_with(tmp_path, path, initial="random_field")
    plain = config.read_text()
    data = yaml.safe_load(plain)
    data["ensemble"] = {
        **data.get("ensemble", {}),
        "kinds": {"sfno": {"tendency_sigma": 0.3, "tendency_hours": 24, "tendency_ramp_hours": 12}},
    }
    config.write_text(yaml.safe_dump(data))
    code, output = forecast(wxens, config, checkpoints, tmp_path / "big.zarr", members=1000)
    assert code == 0, output
    big = fields(tmp_path / "big.zarr")
    code, output = forecast(wxens, config, checkpoints, tmp_path / "small.zarr", members=3)
    assert code == 0, output
    assert np.array_equal(fields(tmp_path / "small.zarr"), big[:, :, :, :3])
    config.write_text(plain)
    code, output = forecast(wxens, config, checkpoints, tmp_path / "plain.zarr", members=3)
    assert code == 0, output
    unperturbed = fields(tmp_path / "plain.zarr")
    assert np.array_equal(unperturbed[:, :, 0], big[:, :, 0, :3])  # the same starts
    assert not np.array_equal(unperturbed[:, :, -1], big[:, :, -1, :3])


def test_nwp_baseline_gets_the_same_perturbations_and_layout(ensemble, wxens, tmp_path):
    path, _, checkpoints = ensemble
    config = config_with(tmp_path, path, initial="random_field")
    for model in ("sfno", "nwp"):
        code, output = forecast(
            wxens, config, checkpoints, tmp_path / f"{model}.zarr", "--model", model
        )
        assert code == 0, output
    sfno, nwp = xr.open_zarr(tmp_path / "sfno.zarr"), xr.open_zarr(tmp_path / "nwp.zarr")
    assert nwp["psi_upper"].dims == sfno["psi_upper"].dims and nwp.sizes == sfno.sizes
    assert nwp.attrs["wxens_model"] == "nwp"
    np.testing.assert_array_equal(
        nwp["psi_upper"].isel(lead_time=0).values, sfno["psi_upper"].isel(lead_time=0).values
    )
    assert not np.array_equal(nwp["psi_upper"].values, sfno["psi_upper"].values)


def hindcast_command(config, checkpoints, out, end="2027-01-12"):
    command = [sys.executable, "-m", "wxens.forecast.cli", "hindcast", "--config", str(config)]
    command += ["--checkpoints", str(checkpoints), "--start", "2027-01-01", "--end", end]
    command += ["--every", "1D", "--members", "16", "--lead-days", "3", "--batch-size", "4"]
    return [*command, "--scheduler", "threads:1", "--out", str(out), "--resume", "--quiet"]


def test_hindcast_resumes_after_sigkill_and_is_idempotent(ensemble, wxens, tmp_path):
    path, _, checkpoints = ensemble
    reference = tmp_path / "reference.zarr"
    end = "2027-01-06"  # 6 inits x 4 batches: 24 tasks
    done = subprocess.run(
        hindcast_command(path, checkpoints, reference, end), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr

    out = tmp_path / "hind.zarr"
    command = hindcast_command(path, checkpoints, out, end)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    flags = out.with_name("hind.zarr.partial") / "tasks" / "done" / "c"
    deadline = time.time() + 300
    while process.poll() is None and time.time() < deadline:
        if flags.exists() and any(p.is_file() for p in flags.rglob("*")):
            break
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = zarr.open_group(out.with_name("hind.zarr.partial"))["tasks/done"][:]
    assert 0 < written.sum() < written.size  # killed mid-run: some tasks done, some not
    assert not out.exists()

    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"{written.size - written.sum()} of {written.size} tasks" in again.stdout
    assert np.array_equal(fields(out), fields(reference))
    digest = tree_digest(out)
    code, output = wxens(*command[3:])
    assert code == 0 and "complete: nothing to do" in output, output
    assert tree_digest(out) == digest


def test_dry_run_and_a_second_writer(ensemble, wxens, tmp_path):
    path, _, checkpoints = ensemble
    out = tmp_path / "hind.zarr"
    command = hindcast_command(path, checkpoints, out)
    code, output = wxens(*command[3:], "--dry-run")
    assert code == 0 and "would compute 48 of 48 tasks (12 inits x 4 batches of 4" in output
    assert not out.exists() and not out.with_name("hind.zarr.partial").exists()

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = out.with_name("hind.zarr.lock")
    deadline = time.time() + 300
    while not lock.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    code, output = wxens(*command[3:])
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert code == 1 and f"{out} is being written by another run (pid {process.pid})" in output

    # A run killed while creating its store leaves one without task flags: resuming starts afresh.
    partial = out.with_name("hind.zarr.partial")
    assert (partial / "zarr.json").exists()  # created while the second run started up
    shutil.rmtree(partial / "tasks", ignore_errors=True)  # the kill may come before they exist
    code, output = wxens(*command[3:], "--dry-run")
    assert code == 0 and "would compute 48 of 48 tasks" in output


@pytest.mark.parametrize(
    "change, message",
    [
        ({"perturbation": {"initial": "magic"}}, "perturbation.initial"),
        ({"members": 0}, "the ensemble needs at least one member, got 0"),
        ({"init": "2031-01-01T00"}, "init time 2031-01-01T00:00:00.000000000 is not an analysis"),
        ({"lead_days": 0.3}, "lead time 0 days 07:12:00: not a positive multiple of the 6 h"),
        ({"existing": True}, "already exists; resume it or overwrite it (pass --resume or"),
        ({"grid": True}, "trained on grid 9x16 T3, the config has 9x16 T4"),
        ({"analyses": "nan"}, "the analysis of psi_lower at init time 2027-02-01T00:00:00.0"),
        ({"analyses": "grid"}, "the analyses are on a 9 x 8 grid, the members on 9 x 16"),
    ],
)
def test_bad_input_fails_in_one_line_and_leaves_stores_intact(
    ensemble, wxens, tmp_path, change, message
):
    path, store, checkpoints = ensemble
    out = tmp_path / "ens.zarr"
    code, output = forecast(wxens, path, checkpoints, out, members=2)
    assert code == 0, output
    digest = tree_digest(out)
    config = path
    if "perturbation" in change:
        config = config_with(tmp_path, path, **change["perturbation"])
    if change.get("grid"):
        broken = tmp_path / "checkpoints"
        shutil.copytree(checkpoints, broken)
        metadata = broken / "sfno-seed2" / "metadata.json"
        data = json.loads(metadata.read_text())
        data["architecture"]["truncation"] = 3
        metadata.write_text(json.dumps(data))
        checkpoints = broken
    if "analyses" in change:
        analyses = xr.open_zarr(store).load()
        if change["analyses"] == "nan":
            analyses["psi_lower"].loc[{"time": INIT}] = np.nan
        else:
            analyses = analyses.isel(longitude=slice(None, None, 2))
        analyses.to_zarr(tmp_path / "analyses.zarr", zarr_format=3, consolidated=False)
    target = out if change.get("existing") else tmp_path / "other.zarr"
    args = ["forecast", "--config", config, "--checkpoints", checkpoints, "--out", target]
    if "analyses" in change:
        args += ["--analyses", tmp_path / "analyses.zarr"]
    args += ["--init", change.get("init", INIT), "--members", change.get("members", 2)]
    code, output = wxens(*args, "--lead-days", change.get("lead_days", 1), "--quiet")
    assert code == 1 and message in output, output
    assert output.strip().count("\n") == 0 and output.startswith("error: ")
    assert tree_digest(out) == digest
    assert not (tmp_path / "other.zarr").exists() and not (tmp_path / "other.zarr.partial").exists()
    assert not os.path.exists(out.with_name("ens.zarr.lock"))


def test_a_fingerprint_counts_only_the_settings_that_differ_from_their_defaults():
    """A store's identity does not change when a version adds a setting whose default keeps
    the numbers: a config dumped with every setting (`config_json` as `prepare` writes it) and
    the same config with only its non-default settings, as an earlier version that lacked the
    others would have dumped it, give the same fingerprint; a changed setting does not."""
    from wxens.data_pipeline.config import parse_config
    from wxens.forecast.runner import EnsembleSpec, fingerprint

    settings = {"seed": 5, "perturbation": {"bred_fraction": 0.3}}
    inits = np.array(["2027-01-10T00"], dtype="datetime64[ns]")
    leads = np.array([6, 12], dtype="timedelta64[h]").astype("timedelta64[ns]")

    def identity(config_json: str) -> str:
        spec = EnsembleSpec(config_json, "nwp", (), "truth.zarr", "cpu", "{}", "[null]")
        return fingerprint(spec, inits, leads, 8)

    full = parse_config(settings).model_dump_json()
    assert "sigma_data" in full and "sigma_data" not in json.dumps(settings)
    assert identity(full) == identity(json.dumps(settings))
    explicit_default = {**settings, "diffusion": {"sigma_data": 1.0}}
    assert identity(json.dumps(explicit_default)) == identity(full)
    assert identity(json.dumps({**settings, "seed": 6})) != identity(full)
    assert identity(json.dumps({**settings, "diffusion": {"sigma_data": 0.5}})) != identity(full)
