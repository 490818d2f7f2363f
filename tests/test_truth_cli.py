"""The truth world end to end through the CLI, configs, the store, and every bad-input path."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import yaml
from typer.testing import CliRunner
from wxens.data_pipeline.analysis_store import (
    AnalysisStoreWriter,
    StoreError,
    analysis_dataset,
    open_analyses,
)
from wxens.data_pipeline.config import ConfigError, load_config
from wxens.data_pipeline.diagnose import doubling_time_days, saturation_day
from wxens.data_pipeline.sphere import LatLonGrid
from wxens.data_pipeline.truth import TRUTH_FIELDS
from wxens.forecast.cli import app

TINY = {
    "seed": 7,
    "truth": {"truncation": 10, "spinup_days": 2, "timestep_minutes": 60},
    "grid": {"nlat": 9, "nlon": 16, "truncation": 4},
}
runner = CliRunner()


def write_config(tmp_path, data, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_default_config_is_valid():
    config = load_config("configs/default.yaml")
    assert config.truth.truncation == 42 and config.grid.nlat == 33
    assert config.periods.total_years == 7


@pytest.mark.parametrize(
    ("data", "culprit"),
    [
        (
            {"truth": {"drag_dayz": 4}},
            "truth.drag_dayz: unknown key; allowed: deformation_radius_km",
        ),
        ({"truth": {"drag_days": "soon"}}, "truth.drag_days: Input should be a valid number"),
        ({"truth": {"drag_days": -1}}, "truth.drag_days: Input should be greater than 0"),
        ({"variables": ["t2m"]}, "variables: unknown ['t2m']"),
        ({"grid": {"nlon": 16, "truncation": 12}}, "grid: truncation T12 needs more"),
        ({"periods": {"train": {"first": 2030, "last": 2025}}}, "periods.train: last year"),
    ],
)
def test_bad_config_names_the_dotted_key(tmp_path, data, culprit):
    code, output = run("config", "check", write_config(tmp_path, data))
    assert code != 0
    lines = output.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], output


def test_config_check_prints_the_resolved_config(tmp_path):
    code, output = run("config", "check", write_config(tmp_path, TINY))
    assert code == 0
    resolved = yaml.safe_load(output)
    assert resolved["truth"]["truncation"] == 10 and resolved["truth"]["drag_days"] == 4.0


def test_missing_and_malformed_config_files(tmp_path):
    code, output = run("config", "check", tmp_path / "nope.yaml")
    assert code != 0 and "nope.yaml: config file not found" in output
    bad = tmp_path / "bad.yaml"
    bad.write_text("truth: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line 2 not valid YAML"):
        load_config(bad)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: x\n\x89PNG\r\n\x1a\n")
    code, output = run("config", "check", binary)
    assert code == 1 and output == f"error: {binary}: not a UTF-8 text file (byte 8: 0x89)\n"
    code, output = run("config", "check", tmp_path)
    assert code == 1 and output == f"error: {tmp_path}: a folder, not a config file\n"


@pytest.fixture(scope="module")
def tiny_truth(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("truth")
    config = write_config(tmp, TINY)
    out = tmp / "truth.zarr"
    code, output = run(  # 0.09 years: two appends of TIME_CHUNK analyses
        "data", "truth", "--config", config, "--years", 0.09, "--out", out, "--quiet"
    )
    assert code == 0, output
    return config, out


def test_truth_store_is_cf_and_complete(tiny_truth):
    _, out = tiny_truth
    ds = open_analyses(out)
    assert set(ds.data_vars) == {"psi_upper", "psi_lower"}
    assert ds.psi_upper.dims == ("time", "latitude", "longitude")
    assert ds.psi_upper.dtype == np.float32
    assert ds.psi_upper.attrs["units"] == "m2 s-1"
    assert ds.psi_upper.attrs["standard_name"] == "atmosphere_horizontal_streamfunction"
    np.testing.assert_allclose(ds.latitude, np.linspace(90, -90, 9))
    np.testing.assert_allclose(ds.longitude, np.arange(16) * 22.5)
    times = ds.time.values
    assert times[0] == np.datetime64("2025-01-01T00")
    assert len(times) == round(0.09 * 365.25) * 4
    assert (np.diff(times) == np.timedelta64(6, "h")).all()
    assert yaml.safe_load(ds.attrs["wxens_config"])["truth"]["truncation"] == 10
    assert ds.attrs["wxens_seed"] == 7
    assert ds.attrs["planet"] == "idealised"  # not Earth: the report's maps draw no coastlines
    assert np.isfinite(ds.psi_upper.values).all()
    # a jet in each hemisphere: u = -(1/a) dpsi/dphi, centred differences on rows 1..7
    zonal = ds.psi_upper.mean(("time", "longitude")).values
    u = zonal[2:] - zonal[:-2]  # latitude descends, so this is proportional to u
    assert u[1] > 2 * abs(u[3]) and u[5] > 2 * abs(u[3])  # 45N and 45S beat the equator


def test_truth_is_reproducible_and_refuses_existing_output(tiny_truth, tmp_path):
    config, out = tiny_truth
    before = sorted(p.name for p in out.iterdir())
    code, output = run(
        "data", "truth", "--config", config, "--years", 0.09, "--out", out, "--quiet"
    )
    assert code != 0 and "already exists; overwrite it to replace it (pass --overwrite)" in output
    assert sorted(p.name for p in out.iterdir()) == before
    again = tmp_path / "again.zarr"
    code, _ = run("data", "truth", "--config", config, "--years", 0.09, "--out", again, "--quiet")
    assert code == 0
    xr.testing.assert_identical(
        open_analyses(out).load(),
        open_analyses(again).load().assign_attrs(open_analyses(out).attrs),
    )


@pytest.mark.parametrize("years", [-1, 0])
def test_non_positive_years_are_refused(tmp_path, years):
    out = tmp_path / "t.zarr"
    code, output = run(
        "data", "truth", "--config", write_config(tmp_path, TINY), "--years", years, "--out", out
    )
    assert code != 0 and "the truth needs a positive number of years" in output
    assert not out.exists()


def test_unknown_config_key_stops_truth_before_writing(tmp_path):
    out = tmp_path / "t.zarr"
    config = write_config(tmp_path, {**TINY, "truht": {}})
    code, output = run("data", "truth", "--config", config, "--years", 1, "--out", out)
    assert code != 0 and "truht: unknown key" in output
    assert not out.exists()


def small_dataset(times):
    grid = LatLonGrid(5, 8)
    fields = {"psi_upper": np.ones((len(times), 5, 8)), "psi_lower": np.zeros((len(times), 5, 8))}
    return analysis_dataset(fields, times, grid, TRUTH_FIELDS)


def test_interrupted_write_never_looks_complete(tmp_path):
    out = tmp_path / "s.zarr"
    times = np.arange("2025-01-01", "2025-01-02", np.timedelta64(6, "h"), dtype="datetime64[ns]")
    with pytest.raises(KeyboardInterrupt), AnalysisStoreWriter(out, {}) as writer:
        writer.append(small_dataset(times))
        raise KeyboardInterrupt
    assert not out.exists()
    with pytest.raises(StoreError, match="incomplete"):
        open_analyses(out.with_name("s.zarr.partial"))


def test_overwrite_replaces_only_after_success(tmp_path):
    out = tmp_path / "s.zarr"
    times = np.arange("2025-01-01", "2025-01-02", np.timedelta64(6, "h"), dtype="datetime64[ns]")
    with AnalysisStoreWriter(out, {"run": "first"}) as writer:
        writer.append(small_dataset(times))
    with (
        pytest.raises(RuntimeError),
        AnalysisStoreWriter(out, {"run": "second"}, overwrite=True) as w,
    ):
        w.append(small_dataset(times))
        raise RuntimeError("crash")
    assert open_analyses(out).attrs["run"] == "first"
    with AnalysisStoreWriter(out, {"run": "third"}, overwrite=True) as writer:
        writer.append(small_dataset(times))
    assert open_analyses(out).attrs["run"] == "third"


def test_store_being_written_by_another_run_is_refused(tmp_path):
    out = tmp_path / "s.zarr"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        out.with_name("s.zarr.lock").write_text(str(other.pid))
        with pytest.raises(StoreError, match=f"being written by another run \\(pid {other.pid}\\)"):
            AnalysisStoreWriter(out, {})
    finally:
        other.kill()
        other.wait()
    out.with_name("s.zarr.lock").write_text(str(other.pid))  # a dead run's lock is taken over
    AnalysisStoreWriter(out, {})


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match=r"nope\.zarr: no such store"):
        open_analyses(tmp_path / "nope.zarr")


def test_doubling_time_of_a_known_exponential():
    days = np.arange(0, 10.25, 0.25)
    errors = np.exp(math.log(2) * days / 1.7)[:, None] * np.array([1.0, 3.0, 0.2])
    assert doubling_time_days(days, errors) == pytest.approx(1.7, rel=1e-12)


def test_saturation_day_is_first_crossing():
    days = np.arange(0, 20.25, 0.25)
    errors = np.minimum(0.1 * np.exp(days / 4), 2.0)[:, None] * np.ones((1, 4))
    expected = days[np.argmax(0.1 * np.exp(days / 4) >= 0.9 * math.sqrt(2))]
    assert saturation_day(days, errors, 1.0) == expected
    assert saturation_day(days, errors * 0.1, 1.0) is None


def test_console_script_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "wxens")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "data" in result.stdout


def test_diagnose_json_end_to_end(tmp_path):
    """`wxens data diagnose --json` on a tiny world: one JSON object with every number."""
    import json

    data = {**TINY, "diagnose": {"years": 1, "twin_pairs": 2, "twin_days": 6}}
    code, output = run(
        "data", "diagnose", "--config", write_config(tmp_path, data), "--json", "--quiet"
    )
    assert code == 0, output
    numbers = json.loads(output)
    assert numbers["twin_pairs"] == 2 and numbers["years"] == 1 and numbers["truncation"] == 10
    assert numbers["eke_year_spread"] == 0.0  # one year is its own mean
    assert 1 <= numbers["spectrum_peak_wavenumber"] <= 10
    assert numbers["doubling_time_days"] > 0 and numbers["sim_years_per_minute"] > 0
    assert numbers["mean_eddy_kinetic_energy_m2_s2"] > 0
    assert numbers["jets"]["north"]["latitude"] > 0 > numbers["jets"]["south"]["latitude"]
    assert numbers["jets"]["north"]["speed_m_s"] > 5 and numbers["jets"]["south"]["speed_m_s"] > 5


def test_config_base_merges_sections_and_replaces_values(tmp_path):
    """A config with `base:` changes only the keys it names; a mapping value such as
    `training.rollout_schedule` is replaced whole, not merged."""
    base = {**TINY, "training": {"epochs": 3, "rollout_schedule": {2: 2}}}
    write_config(tmp_path, base, "base.yaml")
    (tmp_path / "sub").mkdir()
    child = {"base": "../base.yaml", "training": {"rollout_schedule": {0: 1, 5: 4}}}
    config = load_config(write_config(tmp_path / "sub", child, "child.yaml"))
    assert config.training.epochs == 3 and config.truth.truncation == 10
    assert config.training.rollout_schedule == {0: 1, 5: 4}
    gpu = load_config("configs/default-gpu-finetune.yaml")
    assert gpu.sfno.embed_dim == 96 and gpu.grid == load_config("configs/default.yaml").grid


def test_config_base_errors_name_the_file(tmp_path):
    missing = write_config(tmp_path, {"base": "nowhere.yaml"}, "a.yaml")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: config file not found"):
        load_config(missing)
    loop = write_config(tmp_path, {"base": "b.yaml"}, "a.yaml")
    write_config(tmp_path, {"base": "a.yaml"}, "b.yaml")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(loop)
    bad = write_config(tmp_path, {"base": "c.yaml", "training": {"rollout_schedule": {0: 0}}})
    write_config(tmp_path, TINY, "c.yaml")
    with pytest.raises(ConfigError, match=r"training.rollout_schedule.0: Input should be greater"):
        load_config(bad)
