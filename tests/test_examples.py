"""The scripts in examples/ run as a user runs them, and say what they should."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart(tmp_path, monkeypatch, capsys):
    """examples/quickstart.py (the README's example): a 20-member ensemble of the committed
    checkpoints beats persistence on the fair CRPS at every lead from day 1, and the report is
    written."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["quickstart.py", str(tmp_path)])
    names = runpy.run_path(str(ROOT / "examples" / "quickstart.py"))
    ensemble, scores = names["ensemble"], names["scores"]
    assert dict(ensemble.sizes) == {
        "init_time": 1, "lead_time": 21, "member": 20, "latitude": 33, "longitude": 64
    }  # fmt: skip
    assert ensemble.checkpoint.values.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] * 2 + [0, 0, 1, 1]
    crps = scores.crps.sel(region="global").where(scores.lead_time >= np.timedelta64(1, "D"))
    forecast, persistence = crps.sel(system="forecast"), crps.sel(system="persistence")
    assert (forecast < persistence).sum() == 2 * 17  # both variables, every lead of days 1-5
    index = tmp_path / "report" / "index.html"
    assert index.is_file() and str(index.resolve()) in capsys.readouterr().out


def _paired_store(path: Path, truth_path: Path, pairs: int, bias: float, half_width: float):
    """A forecast store of centred pairs `y + bias +/- half_width` around the truth y, and
    the truth store: every block of whole pairs has the ensemble mean y + bias."""
    rng = np.random.default_rng(3)
    inits = np.array(["2031-01-01", "2031-01-11"], dtype="datetime64[ns]")
    leads = np.arange(0, 11) * np.timedelta64(1, "D")
    times = np.arange(
        inits[0], inits[-1] + leads[-1] + np.timedelta64(1, "D"), np.timedelta64(1, "D")
    )
    grid = {"latitude": np.array([30.0, -30.0]), "longitude": np.array([0.0, 120.0, 240.0])}
    truth = xr.Dataset(
        {"psi": (("time", "latitude", "longitude"), rng.normal(size=(times.size, 2, 3)))},
        coords={"time": times, **grid},
    )
    valid = xr.DataArray(inits[:, None] + leads[None, :], dims=("init_time", "lead_time"))
    observed = truth.psi.sel(time=valid).values
    signs = np.tile([1.0, -1.0], pairs)
    members = observed[:, :, None] + bias + half_width * signs[None, None, :, None, None]
    forecast = xr.Dataset(
        {"psi": (("init_time", "lead_time", "member", "latitude", "longitude"), members)},
        coords={
            "init_time": inits,
            "lead_time": leads,
            "member": np.arange(2 * pairs),
            "valid_time": valid,
            **grid,
        },
    )
    forecast.to_zarr(path)
    truth.to_zarr(truth_path)


def test_ratio_by_members_reads_centred_pairs_higher_the_fewer_they_are(
    tmp_path, monkeypatch, capsys
):
    """examples/ratio_by_members.py: members y + b +/- d in centred pairs have the mean y + b in
    every block of whole pairs, so the ratio of M members is the closed form
    sqrt((M + 1) / M) sqrt(M d^2 / (M - 1)) / b = (d / b) sqrt((M + 1) / (M - 1)) at every day;
    a store a hindcast is writing is read over its finished inits; asking for more members than
    the store has exits with a line naming them."""
    store, truth = tmp_path / "pairs.zarr", tmp_path / "truth.zarr"
    _paired_store(store, truth, pairs=20, bias=1.0, half_width=2.0)
    script = str(ROOT / "examples" / "ratio_by_members.py")
    monkeypatch.setattr(
        sys, "argv", ["ratio_by_members.py", str(store), str(truth), "2", "8", "40"]
    )
    runpy.run_path(script, run_name="__main__")
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| ") and line[2].isdigit()
    ]
    for row, members in zip(rows, (2, 8, 40), strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:2] == [str(members), str(40 // members)]
        expected = 2.0 * np.sqrt((members + 1) / (members - 1))  # 3.464, 2.268, 2.051
        np.testing.assert_allclose([float(c) for c in cells[2:]], [expected] * 9, atol=6e-4)
    done = zarr.open_group(store, mode="a").require_group("tasks")
    done.create_array("done", data=np.array([[True, True], [True, False]]))  # one init finished
    monkeypatch.setattr(sys, "argv", ["ratio_by_members.py", str(store), str(truth), "40"])
    runpy.run_path(script, run_name="__main__")
    assert f"{store}: 1 inits, 40 members" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["ratio_by_members.py", str(store), str(truth), "41"])
    with pytest.raises(SystemExit, match=r"^M=41: the store has 40 members$"):
        runpy.run_path(script, run_name="__main__")
