"""The predictability limit (`models.limit`, member kind `truth`): the truth's own model at
the truth's resolution. Started from the truth's full state it reproduces the truth store bit
for bit, through the hidden channels that carry that state between steps; started from the
coarse analyses it beats the NWP baseline from the same perturbed states. The NWP baseline
itself breeds to its own error (a fair baseline)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import torch
import xarray as xr
import yaml
import zarr
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import load_config
from wxens.data_pipeline.truth import MODEL_STATE, extend_truth
from wxens.models.kinds import KINDS
from wxens.models.limit import PerfectModelEmulator
from wxens.verification.report import gap_closed


def test_from_the_truths_full_state_the_member_is_the_truth(tiny_world, tmp_path):
    config_path, store = tiny_world
    config = load_config(config_path)
    copy = tmp_path / "truth.zarr"
    shutil.copytree(store, copy)
    saved = zarr.open_group(copy, mode="r")[MODEL_STATE]
    shape = saved.attrs["q_shape"]
    real = torch.from_numpy(saved[1:].reshape(shape).copy())
    q = torch.view_as_complex(real)  # the truth model's state at the next analysis time
    start = open_analyses(copy).time.values[-1] + np.timedelta64(6, "h")
    extend_truth(config, copy, pd.Timestamp(start) + pd.Timedelta(hours=18))
    expected = open_analyses(copy).sel(time=slice(start, None))
    member = KINDS["truth"].build(config, None, "cpu")
    assert isinstance(member, PerfectModelEmulator)
    state = torch.cat([torch.zeros(1, 2, 9, 16), member.pack(q, 1)], dim=1)
    state[:, :2] = member.model.streamfunction_on(q, member.grid, member.truncation)[
        :, member.layers
    ].float()
    for lead in range(1, 4):
        state = member.step(state)
        for c, name in enumerate(member.input_variables):
            truth = expected[name].isel(time=lead).values
            assert np.array_equal(state[0, c].numpy(), truth), (name, lead)
    # Without the hidden channels each step restarts from the coarse fields: not the truth.
    coarse = expected[list(member.input_variables)].isel(time=0).to_array().values[None]
    stepped = member.step(torch.from_numpy(coarse))
    assert stepped.shape == (1, 2, 9, 16)
    assert not np.array_equal(stepped[0, 0].numpy(), expected["psi_upper"].isel(time=1).values)


def test_the_limit_from_the_nwp_ensembles_states_beats_it(tiny_world, wxens, tmp_path):
    """`wxens hindcast --model truth` with `ensemble.seeds` at lead 0: the NWP ensemble's own
    perturbed analyses, stepped by the truth's model, have a lower fair CRPS at every lead."""
    import wxens as api

    config_path, truth = tiny_world
    nwp, limit = tmp_path / "nwp.zarr", tmp_path / "limit.zarr"
    common = ["--members", 8, "--lead-days", 2, "--start", "2027-02-01", "--end", "2027-02-03"]
    code, output = wxens(
        "hindcast", "--config", config_path, "--model", "nwp", *common, "--out", nwp, "--quiet"
    )
    assert code == 0, output
    settings = yaml.safe_load(config_path.read_text())
    settings["ensemble"] = {"seeds": {"store": str(nwp), "members": 8, "lead_hours": 0}}
    seeded = tmp_path / "limit.yaml"
    seeded.write_text(yaml.safe_dump(settings))
    code, output = wxens(
        "hindcast", "--config", seeded, "--model", "truth", *common, "--out", limit, "--quiet"
    )
    assert code == 0, output
    nwp_ds, limit_ds = xr.open_zarr(nwp), xr.open_zarr(limit)
    for name in ("psi_upper", "psi_lower"):
        assert np.array_equal(limit_ds[name].isel(lead_time=0), nwp_ds[name].isel(lead_time=0))
    references = {"limit": limit_ds, "persistence": "persistence"}
    scores = api.score(nwp_ds, truth, references, scores=["crps"], regions=["global"])
    crps = scores.crps.isel(lead_time=slice(1, None)).squeeze("region")
    assert (crps.sel(system="limit") < crps.sel(system="forecast")).all(), crps.values
    # The report's gap: how much of the way from the baseline to the limit a system goes.
    gap = gap_closed(scores, "crps", baseline="forecast").isel(lead_time=slice(1, None))
    by_hand = (crps.sel(system="forecast") - crps.sel(system="persistence")) / (
        crps.sel(system="forecast") - crps.sel(system="limit")
    )
    np.testing.assert_allclose(gap.sel(system="persistence").squeeze("region"), by_hand)
    assert list(gap.system.values) == ["persistence"]
    page = api.report(scores, tmp_path / "report", reference="forecast").read_text()
    assert "CRPS gap closed from forecast to the limit" in page


def test_the_nwp_baseline_breeds_to_its_own_error(tiny_world):
    """A fair baseline: `nwp.bred_rmse_48h` sizes the NWP members' bred vectors, the shared
    `perturbation.bred_rmse_48h` the emulators'."""
    import json

    from wxens.data_pipeline.config import parse_config
    from wxens.forecast.runner import fixed_bred_rmse_48h, perturbation_settings, prepare

    config_path, truth = tiny_world
    own, shared = {"psi_upper": 2e6, "psi_lower": 1e6}, {"psi_upper": 1e6, "psi_lower": 5e5}
    data = yaml.safe_load(config_path.read_text())
    data["perturbation"] = {"initial": "bred_vector", "bred_rmse_48h": shared}
    data["nwp"] = {"bred_rmse_48h": own}
    config = parse_config(data)
    assert fixed_bred_rmse_48h(config, "nwp") == own
    assert fixed_bred_rmse_48h(config, "sfno") == shared
    assert fixed_bred_rmse_48h(config, "truth") == shared
    spec = prepare(config, "nwp", [], truth, torch.device("cpu"))
    assert json.loads(spec.bred_rmse_48h_json) == [own]
    data["nwp"]["bred_fraction"] = 1.5
    config = parse_config(data)
    assert perturbation_settings(config, "nwp").bred_fraction == 1.5
    assert perturbation_settings(config, "sfno").bred_fraction == config.perturbation.bred_fraction
