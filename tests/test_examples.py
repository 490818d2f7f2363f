"""The scripts in examples/ run as a user runs them, and say what they should."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np

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
