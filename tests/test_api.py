"""The library API (`import wxens`): one namespace, and an ensemble of a user's own emulator
and perturbation, member by member reproducible, in memory or in a resumable store."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from wxens.data_pipeline.sphere import LatLonGrid
from wxens.models.checkpoint import checkpoint_labels

import wxens

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_one_namespace_and_the_command(tmp_path):
    """A non-editable build holds only `wxens` at the top level; installed, `wxens --help`
    works and the repository's folder names (`models`, ...) are not importable."""
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name if source.exists() else _mkdir(source) / name)
    for folder in ("wxens", "data_pipeline", "models", "forecast", "verification"):
        shutil.copytree(
            ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel = tmp_path / "wheel"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(wheel)],
        check=True,
    )
    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), *wheel.glob("*.whl")], check=True
    )
    top = sorted(p.name for p in site.iterdir() if p.name not in ("bin", "__pycache__"))
    assert [n for n in top if not n.endswith(".dist-info")] == ["wxens"], top
    environment = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    help_text = subprocess.run(
        [site / "bin" / "wxens", "--help"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert help_text.returncode == 0 and "verify" in help_text.stdout, help_text.stderr
    probe = "import wxens.forecast.cli as c; print(c.__file__); import models"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert result.stdout.startswith(str(site)), result.stdout
    assert "ModuleNotFoundError: No module named 'models'" in result.stderr


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


GRID = LatLonGrid(9, 16)


class Advection(torch.nn.Module):
    """A user's own emulator: each field shifted east by one cell a step, plus noise."""

    input_variables = ("u", "v")
    grid = GRID
    timestep = np.timedelta64(6, "h")

    def __init__(self, noise: float):
        super().__init__()
        self.noise = torch.nn.Parameter(torch.tensor(noise))

    def step(self, state, *, generator=None):
        draws = [torch.randn(state.shape[1:], generator=g) for g in generator or []]
        noise = torch.stack(draws) if draws else torch.zeros_like(state)
        return torch.roll(state, 1, dims=-1) + self.noise * noise


def bump(initial_state, member_ids, generator_for):
    """A user's own perturbation: member k's analysis plus a uniform draw of its generator."""
    return torch.stack(
        [initial_state + torch.rand((), generator=generator_for(k)) for k in member_ids]
    )


def analyses(times: int = 8) -> xr.Dataset:
    rng = np.random.default_rng(0)
    shape = (times, GRID.nlat, GRID.nlon)
    coords = {
        "time": np.datetime64("2030-01-01", "ns") + np.arange(times) * np.timedelta64(6, "h"),
        "latitude": GRID.latitude,
        "longitude": GRID.longitude,
    }
    fields = {
        name: (("time", "latitude", "longitude"), rng.normal(size=shape).astype("float32"))
        for name in ("u", "v")
    }
    return xr.Dataset(fields, coords=coords)


def test_a_users_emulator_and_perturbation_run_member_by_member_reproducibly(tmp_path):
    truth = analyses()
    members = [Advection(0.1), Advection(0.5)]
    inits = truth.time.values[:2]
    ensemble = wxens.run_ensemble(members, truth, inits, 6, "12h", perturbation=bump, seed=3)
    assert dict(ensemble.sizes) == {
        "init_time": 2,
        "lead_time": 3,
        "member": 6,
        "latitude": 9,
        "longitude": 16,
    }
    assert ensemble.checkpoint.values.tolist() == [0, 1, 0, 1, 0, 1]
    # Lead 1 by hand for member 4 of the second init (model 0): shifted, plus its own noise.
    from wxens.forecast.perturbations import member_generator

    start = truth.u.values[1] + torch.rand((), generator=member_generator(3, inits[1], 4)).item()
    noise = torch.randn((2, 9, 16), generator=member_generator(3, inits[1], 4, stream="model"))
    expected = np.roll(start, 1, axis=-1) + 0.1 * noise[0].numpy()
    np.testing.assert_allclose(ensemble.u.values[1, 1, 4], expected, rtol=1e-6)
    # Member 4 alone, in another batch and worker layout, is bitwise the same.
    alone = wxens.run_ensemble(
        members,
        truth,
        inits,
        5,
        "12h",
        perturbation=bump,
        seed=3,
        batch_size=1,
        scheduler="threads:1",
    )
    assert np.array_equal(alone.u.values, ensemble.u.values[:, :, :5])
    # Written to a store: the same numbers, and a resumed complete run is a no-op.
    store = tmp_path / "ens.zarr"
    written = wxens.run_ensemble(
        members, truth, inits, 6, "12h", perturbation=bump, seed=3, store=store
    )
    assert np.array_equal(written.v.values, ensemble.v.values)
    again = wxens.run_ensemble(
        members, truth, inits, 6, "12h", perturbation=bump, seed=3, store=store, resume=True
    )
    assert np.array_equal(again.v.values, ensemble.v.values)
    with pytest.raises(wxens.StoreError, match="already exists; resume it or overwrite it"):
        wxens.run_ensemble(members, truth, inits, 6, "12h", perturbation=bump, seed=4, store=store)
    with pytest.raises(wxens.StoreError, match="holds a different ensemble"):
        wxens.run_ensemble(
            members, truth, inits, 6, "12h", perturbation=bump, seed=4, store=store, resume=True
        )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"members": [object()]}, "object is not an Emulator"),
        ({"lead_time": "7h"}, "lead time 0 days 07:00:00: not a positive multiple of the 6 h"),
        ({"n_members": 0}, "the ensemble needs at least one member, got 0"),
        (
            {"analyses": "nan"},
            "the analysis of v at init time 2030-01-01T06:00:00.000000000 has NaNs",
        ),
        ({"analyses": "grid"}, "the analyses are on a 9 x 8 grid, the members on 9 x 16"),
        ({"analyses": "variable"}, "variable v not in the analysis store"),
        (
            {"init_times": "2031-01-01"},
            "init time 2031-01-01T00:00:00.000000000 is not an analysis",
        ),
    ],
)
def test_unusable_input_raises_one_line_and_writes_nothing(tmp_path, change, message):
    truth = analyses()
    if change.get("analyses") == "nan":
        truth["v"][1, 3, 4] = np.nan
    elif change.get("analyses") == "grid":
        truth = truth.isel(longitude=slice(None, None, 2))
    elif change.get("analyses") == "variable":
        truth = truth.drop_vars("v")
    arguments = {
        "members": [Advection(0.1)],
        "analyses": truth,
        "init_times": truth.time.values[1],
        "n_members": 2,
        "lead_time": "6h",
        **{k: v for k, v in change.items() if k != "analyses"},
    }
    with pytest.raises(wxens.ForecastError, match=message) as raised:
        wxens.run_ensemble(**arguments, store=tmp_path / "ens.zarr")
    assert "\n" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_simulate_truth_is_what_wxens_data_truth_writes(tmp_path):
    from conftest import TINY_WORLD
    from wxens.data_pipeline.config import parse_config
    from wxens.data_pipeline.truth import write_truth

    config = parse_config(TINY_WORLD)
    truth = wxens.simulate_truth(2, config=config)
    write_truth(config, {}, 2 / 365.25, tmp_path / "truth.zarr", quiet=True)
    stored = wxens.open_analyses(tmp_path / "truth.zarr").load()
    assert dict(truth.sizes) == {"time": 8, "latitude": 9, "longitude": 16}
    for name in ("psi_upper", "psi_lower"):
        xr.testing.assert_identical(truth[name], stored[name])
    assert truth.psi_upper.attrs["units"] == "m2 s-1" and truth.attrs["planet"] == "idealised"
    with pytest.raises(ValueError, match="the truth needs a positive number of days, got 0"):
        wxens.simulate_truth(0, config=config)


def test_the_facade_exports_what_it_lists():
    from wxens import _EXPORTS

    assert sorted(wxens.__all__) == sorted(_EXPORTS)
    for name in wxens.__all__:
        assert getattr(wxens, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        wxens.nothing  # noqa: B018


def test_loading_refuses_what_is_not_a_checkpoint_or_a_store(tmp_path):
    with pytest.raises(wxens.CheckpointError, match="neither a checkpoint nor a folder of"):
        wxens.load_members(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(wxens.CheckpointError, match=r"metadata\.json: corrupt metadata"):
        wxens.load_members(tmp_path)
    with pytest.raises(wxens.StoreError, match=r"no\.zarr: no such store"):
        wxens.open_analyses(tmp_path / "no.zarr")
    (tmp_path / "half.zarr").mkdir()
    with pytest.raises(wxens.StoreError, match=r"half\.zarr: not a readable Zarr store"):
        wxens.open_analyses(tmp_path / "half.zarr")


def test_checkpoints_of_the_same_name_get_labels_that_tell_them_apart(tmp_path):
    committed = ROOT / "checkpoints" / "default" / "sfno-seed1"
    for folder in ("cut-short", "finished"):
        shutil.copytree(committed, tmp_path / folder / "runs" / "sfno-seed1")
    paths = [tmp_path / f / "runs" / "sfno-seed1" for f in ("cut-short", "finished")]
    members = wxens.load_members([*paths, committed.parent / "sfno-seed2"], device="cpu")
    assert [m.name for m in members] == [
        "cut-short/runs/sfno-seed1",
        "finished/runs/sfno-seed1",
        "sfno-seed2",
    ]
    assert list(checkpoint_labels([Path("a/x"), Path("b/y")])) == ["x", "y"]
    with pytest.raises(wxens.CheckpointError, match=r"sfno-seed1: the same checkpoint is named"):
        wxens.load_members([paths[0], paths[0].parent / ".." / "runs" / "sfno-seed1"])
