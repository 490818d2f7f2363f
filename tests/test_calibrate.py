"""`wxens calibrate` (`forecast.calibrate`): the golden-section search against scipy's, and a
real calibration of the NWP baseline's bred fraction on the tiny world, with its refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.optimize import minimize_scalar
from wxens.data_pipeline.config import load_config
from wxens.forecast.calibrate import (
    KNOBS,
    Calibration,
    calibrate,
    check_request,
    golden_section,
    member_cycle,
    objective_j,
    write_calibrated,
)
from wxens.forecast.runner import ForecastError


def test_golden_section_finds_scipys_minimum_in_rounds_plus_one_calls():
    calls = []

    def objective(x: float) -> float:
        calls.append(x)
        return math.exp(x) - 3 * x  # minimum at log 3

    found = golden_section(objective, 0.0, 3.0, 30)
    reference = minimize_scalar(lambda x: math.exp(x) - 3 * x, bracket=(0.0, 3.0), method="golden")
    assert found == pytest.approx(reference.x, abs=1e-5)
    assert found == pytest.approx(math.log(3), abs=1e-5)
    assert len(calls) == 31


def test_the_objective_penalises_each_ratio_outside_the_band_by_its_excess():
    """J = CRPS (1 + 10 mean(max(0, |r - 1| - b))), by hand: ratios 1.0, 1.15 and 0.8 exceed
    the 0.1 band by 0, 0.05 and 0.1 (mean 0.05, J = 1.5 CRPS); the 0.05 band by 0, 0.1 and
    0.15 (mean 1/12, J = 1.8333 CRPS); and a ratio inside both bands costs nothing."""
    ratios = np.array([1.0, 1.15, 0.8])
    assert objective_j(0.3, ratios) == pytest.approx(0.3 * 1.5)
    assert objective_j(0.3, ratios, band=0.05) == pytest.approx(0.3 * (1 + 10 / 12))
    assert objective_j(0.3, np.array([0.96, 1.04]), band=0.05) == pytest.approx(0.3)


def test_calibrate_the_nwp_bred_fraction_and_refusals(tiny_world, wxens, tmp_path):
    config, _ = tiny_world
    out = tmp_path / "calibrated.yaml"
    common = ["--config", config, "--model", "nwp", "--members", 8, "--lead-days", 2]
    period = ["--start", "2026-03-01", "--end", "2026-04-05", "--every", "5D"]
    code, output = wxens(
        "calibrate", *common, *period, "--knob", "bred_fraction", "--rounds", 2, "--out", out
    )
    assert code == 0, output
    rows = [line for line in output.splitlines() if line.startswith("| 0.")]
    values = [float(row.split("|")[1]) for row in rows]
    objectives = [float(row.split("|")[2]) for row in rows]
    outliers = [float(row.split("|")[5]) for row in rows]  # over 2/(M+1): 9/2 at most
    assert len(rows) == 3 and all(0.05 <= v <= 2.0 for v in values)
    assert all(0 <= o <= 4.5 for o in outliers) and len(set(outliers)) > 1
    chosen = values[int(np.argmin(objectives))]
    calibrated = load_config(out)  # the baseline's own bred fraction: the emulators' is kept
    assert calibrated.nwp.bred_fraction == pytest.approx(chosen, rel=1e-3)
    assert calibrated.perturbation.bred_fraction == load_config(config).perturbation.bred_fraction
    assert f"| {values[0]:.4g} |" in out.read_text()  # the table, as comments
    before = config.read_text()
    for bad, message in (
        (["--start", "2027-03-01", "--end", "2027-04-05"], "overlap the test period 2027-2027"),
        (["--start", "2026-03-01", "--end", "2026-03-16"], "at least 8 inits"),
        ([*period, "--knob", "noise_scale"], "kind nwp: NWP members draw no noise"),
        (
            [*period, "--knob", "tendency_sigma"],
            "kind nwp: NWP members have no deterministic tendency",
        ),
        (
            [*period, "--knob", "tendency_additive"],
            "kind nwp: NWP members have no emulated tendency",
        ),
        (
            [*period, "--knob", "correction_damping"],
            "kind nwp: NWP members have no sampled correction",
        ),
        ([*period, "--knob", "spread"], "knob 'spread': expected one of"),
        ([*period, "--band", 0], "the spread-skill band needs 0 < band < 1, got 0.0"),
    ):
        knob = [] if "--knob" in bad else ["--knob", "bred_fraction"]
        code, output = wxens("calibrate", *common, *bad, *knob, "--out", tmp_path / "x.yaml")
        assert code == 1 and message in output and len(output.strip().splitlines()) == 1, output
    assert not (tmp_path / "x.yaml").exists() and config.read_text() == before


def test_the_written_config_keeps_the_kinds_other_settings(tiny_world, tmp_path):
    """A kind's knob rewritten under `base:` keeps that kind's other settings (its ramp) and
    the other kinds: `kinds` replaces whole, so the written config carries them all."""
    config, _ = tiny_world
    tuned = tmp_path / "tuned.yaml"
    data = {"base": str(config), "ensemble": {"kinds": {
        "sfno": {"share": 2, "tendency_sigma": 0.2, "tendency_ramp_hours": 24},
        "fgn": {"noise_scale": 2.0, "noise_ramp_hours": 48},
    }}}  # fmt: skip
    tuned.write_text(yaml.safe_dump(data))
    calibration = Calibration("noise_scale", "fgn", band=0.05)
    calibration.tries += [(3.0, 0.5, 0.4, 0.9, 1.2), (4.5, 0.3, 0.35, 1.0, 1.1)]
    out = tmp_path / "calibrated.yaml"
    write_calibrated(calibration, tuned, out, KNOBS["noise_scale"])
    assert "excess of |ratio - 1| over 0.05)" in out.read_text()
    kinds = load_config(out).ensemble.kinds
    assert kinds["fgn"].noise_scale == 4.5 and kinds["fgn"].noise_ramp_hours == 48
    assert kinds["sfno"].share == 2 and kinds["sfno"].tendency_ramp_hours == 24


CALIBRATION_INITS = pd.date_range("2030-02-01", periods=9, freq="30D").values


@pytest.mark.parametrize(
    ("config", "kind", "knob", "models", "cycle", "short"),
    [
        # groups of 4 members (two bred pairs) on each of the 4 checkpoints in turn: 4 x 4
        ("configs/demo.yaml", "sfno", "bred_fraction", 4, 16, 8),
        # groups of 2 (one bred pair) on each of the 4 mean networks of one checkpoint: 2 x 4
        ("configs/demo-diffusion.yaml", "diffusion", "noise_scale", 4, 8, 12),
        # groups of 2 alternate SFNO and VAE (shares 1:1), the SFNO's on its 4 checkpoints in
        # turn: 8 groups, 16 members, before the pattern repeats
        ("configs/demo-mixed.yaml", "sfno", "tendency_additive", 5, 16, 24),
        # one model, bred pairs
        ("configs/demo.yaml", "nwp", "bred_fraction", 1, 2, 9),
    ],
)
def test_a_try_must_cover_whole_cycles_of_the_kinds_models(
    config, kind, knob, models, cycle, short, tmp_path
):
    """The committed checkpoints' cycles, counted by hand from the assignment's rule; a try
    of whole cycles passes the check, another is refused in one line before any run."""
    loaded = load_config(config)
    assert member_cycle(loaded, kind) == (models, cycle, True)  # each breeds
    assert check_request(loaded, kind, knob, CALIBRATION_INITS, 2 * cycle) is KNOBS[knob]
    with pytest.raises(ForecastError) as refused:
        calibrate(Path(config), kind, knob, CALIBRATION_INITS, short, 10.0, analyses=tmp_path)
    message = str(refused.value)
    assert message.startswith(f"--members {short}: kind {kind}'s members come in cycles of")
    assert f"model(s) in bred pairs; a try of {short}" in message
    assert f"use a multiple of {cycle})" in message and "\n" not in message
