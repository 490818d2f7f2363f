"""FGN members (`models.fgn`): the CRPS loss, training, per-member sampling, checkpoint kinds and
mixed ensembles, on the tiny real world."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from member_kinds import (
    check_mixed_ensemble,
    check_sampling_per_member,
    check_two_draws_differ,
    fine_tune,
    member_kinds,
    one_day_forecast,
    with_ensemble,
)
from wxens.data_pipeline.config import ConfigError, MemberKind, load_config, parse_config
from wxens.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wxens.models.fgn import draw_noise
from wxens.models.training import LAST, STATE, Trainer, fair_crps, validate


@pytest.fixture(scope="module")
def fgn_checkpoint(tiny_world, tiny_checkpoints, tmp_path_factory, wxens) -> Path:
    """A short real FGN run started from the tiny world's SFNO checkpoint of seed 1."""
    out = tmp_path_factory.mktemp("fgn") / "fgn-seed1"
    return fine_tune(wxens, tiny_world[0], "fgn", tiny_checkpoints / "sfno-seed1", out)


def test_fair_crps_equals_the_pairwise_formula():
    """Against numpy's pairwise fair CRPS, mean_k |x_k - y| - sum_kl |x_k - x_l| / (2K(K-1)),
    area-weighted per channel and averaged over the batch, for K = 2 and 5."""
    rng = np.random.default_rng(0)
    for k in (2, 5):
        x = rng.normal(size=(k, 3, 2, 4, 6))
        y = rng.normal(size=(3, 2, 4, 6))
        weights = rng.uniform(size=(4, 6))
        scale = np.array([2.0, 0.5])[:, None, None]
        xs, ys = x / scale, y / scale
        skill = np.abs(xs - ys).mean(axis=0)
        pairs = np.abs(xs[:, None] - xs[None, :]).sum(axis=(0, 1)) / (2 * k * (k - 1))
        expected = ((skill - pairs) * weights).sum(axis=(-2, -1)).mean(axis=0)
        got = fair_crps(*map(torch.from_numpy, (x, y, weights, scale)))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_an_untrained_fgn_is_its_backbone_sfno(tiny_world, tiny_checkpoints, tmp_path):
    """Its noise layers start at zero: started from an SFNO checkpoint, any noise gives the
    SFNO's step exactly; the SFNO cannot start from an FGN (one line)."""
    path, store = tiny_world
    config = load_config(path)
    trainer = Trainer(
        config, {}, store, 3, tmp_path / "f", torch.device("cpu"), True,
        init_from=tiny_checkpoints / "sfno-seed1", model="fgn",
    )  # fmt: skip
    sfno = load_checkpoint(tiny_checkpoints / "sfno-seed1")
    fgn = trainer.emulator.eval()
    state = trainer.validation.states[:3]
    noisy = fgn.step(state, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(noisy, sfno.step(state), rtol=0, atol=0)
    fgn_folder = save_checkpoint(fgn, tmp_path / "fgn")
    with pytest.raises(
        CheckpointError, match="a checkpoint of kind fgn cannot start one of kind sfno"
    ):
        Trainer(config, {}, store, 3, tmp_path / "s", torch.device("cpu"), True, fgn_folder)


def test_fgn_training_lowers_the_crps_and_records_it(fgn_checkpoint, tiny_world, tmp_path):
    """The validation CRPS after training is below that of the starting SFNO (the FGN with
    zero noise layers), and the checkpoint records the kind and the CRPS by variable."""
    path, store = tiny_world
    metadata = json.loads((fgn_checkpoint / "metadata.json").read_text())
    assert metadata["kind"] == "fgn" and set(metadata["validation"]["crps"]) == {
        "psi_upper",
        "psi_lower",
    }
    history = json.loads((fgn_checkpoint / LAST / STATE).read_text())["history"]
    config = load_config(path)
    trained = load_checkpoint(fgn_checkpoint, config)
    fresh = Trainer(config, {}, store, 1, tmp_path / "y", torch.device("cpu"), True, model="fgn")
    settings = config.training
    lead = settings.validation_lead_steps
    before = validate(fresh.emulator.eval(), fresh.validation, settings.validation_inits, 16, lead)[
        "score"
    ]
    after = validate(trained, fresh.validation, settings.validation_inits, 16, lead)["score"]
    assert after == pytest.approx(min(h["score"] for h in history), rel=1e-6)
    assert after < 0.9 * before


def test_sampling_is_reproducible_per_member(fgn_checkpoint, tiny_world):
    """Member k's noise comes from its own generator alone: the same member alone, among
    others, or in a padded pass gives the same numbers; another generator gives others."""
    path, _ = tiny_world
    fgn = load_checkpoint(fgn_checkpoint, load_config(path))
    state = check_sampling_per_member(fgn)
    fgn.noise_scale = 2.0  # `MemberKind.noise_scale`: the same draws, doubled
    with torch.no_grad():
        noise = draw_noise(5, fgn.fgn.noise_dim, torch.Generator().manual_seed(7))
        doubled = fgn.forward(state, 2 * noise)
    torch.testing.assert_close(fgn.step(state, generator=torch.Generator().manual_seed(7)), doubled)
    fgn.noise_scale = 1.0
    with pytest.raises(ValueError, match="2 generators for a batch of 5 members"):
        draw_noise(5, fgn.fgn.noise_dim, [torch.Generator(), torch.Generator()])


def test_the_noise_ramps_with_the_hours_stepped(fgn_checkpoint, tiny_world):
    """`noise_ramp_hours` R: member k's noise is `s min(1, h / R)` times its draws, h the
    hours after the step, counted in a hidden channel that the step carries on; without a
    ramp the state has no hidden channel."""
    path, _ = tiny_world
    fgn = load_checkpoint(fgn_checkpoint, load_config(path))
    fields = torch.randn(3, 2, 9, 16, generator=torch.Generator().manual_seed(0)) * fgn.std
    assert fgn.hidden_channels == 0
    fgn.noise_scale, fgn.noise_ramp_hours = 2.0, 24.0
    assert fgn.hidden_channels == 1
    dt = fgn.timestep / np.timedelta64(1, "h")
    before = torch.tensor([0.0, 12.0, 48.0])  # hours stepped so far, per member
    state = torch.cat([fields, before[:, None, None, None].expand(3, 1, 9, 16)], 1)
    stepped = fgn.step(state, generator=[torch.Generator().manual_seed(k) for k in range(3)])
    amplitude = 2.0 * torch.clamp((before + dt) / 24.0, max=1.0)
    draws = torch.cat([draw_noise(1, fgn.fgn.noise_dim, torch.Generator().manual_seed(k))
                       for k in range(3)])  # fmt: skip
    with torch.no_grad():
        expected = fgn.forward(fields, amplitude[:, None] * draws)
    torch.testing.assert_close(stepped[:, :2], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stepped[:, 2], (before + dt)[:, None, None].expand(3, 9, 16))
    fgn.noise_scale, fgn.noise_ramp_hours = 1.0, 0.0


def test_the_noise_follows_its_profile_in_the_hours_stepped(fgn_checkpoint, tiny_world):
    """`noise_profile` {0: 0.5, 24: 2}: the amplitude is `s p(h)`, p linear between the knots
    and constant beyond, hand-computed for members at 6, 18 and 54 h after the step; the
    hours are carried in a hidden channel as with a ramp. An SFNO member is refused it."""
    path, _ = tiny_world
    fgn = load_checkpoint(fgn_checkpoint, load_config(path))
    fgn.use_member_settings(MemberKind(noise_scale=3.0, noise_profile={24: 2.0, 0: 0.5}))
    assert fgn.hidden_channels == 1 and fgn.noise_profile == ((0.0, 0.5), (24.0, 2.0))
    fields = torch.randn(3, 2, 9, 16, generator=torch.Generator().manual_seed(0)) * fgn.std
    dt = fgn.timestep / np.timedelta64(1, "h")
    assert dt == 6
    before = torch.tensor([0.0, 12.0, 48.0])
    state = torch.cat([fields, before[:, None, None, None].expand(3, 1, 9, 16)], 1)
    stepped = fgn.step(state, generator=[torch.Generator().manual_seed(k) for k in range(3)])
    amplitude = 3.0 * torch.tensor([0.5 + 1.5 * 6 / 24, 0.5 + 1.5 * 18 / 24, 2.0])
    draws = torch.cat([draw_noise(1, fgn.fgn.noise_dim, torch.Generator().manual_seed(k))
                       for k in range(3)])  # fmt: skip
    with torch.no_grad():
        expected = fgn.forward(fields, amplitude[:, None] * draws)
    torch.testing.assert_close(stepped[:, :2], expected, rtol=1e-6, atol=1e-6)
    fgn.use_member_settings(MemberKind())
    assert fgn.hidden_channels == 0 and fgn.noise_amplitude(before[:, None, None, None]) == 1.0
    sfno_profile = {"sfno": {"noise_profile": {0: 1.0, 48: 2.0}}}
    with pytest.raises(ConfigError, match=r"sfno\.noise_profile: SFNO members draw no noise"):
        parse_config({"ensemble": {"kinds": sfno_profile}})


def test_generative_members_add_the_tendencies_additive_part_after_their_sample(
    fgn_checkpoint, tiny_world
):
    """An FGN member with noise x 2 and `tendency_additive` 0.3 (pattern persisting 24 h,
    ramped over 12 h): a step is its sample for the first noise draw of each member's
    generator plus `P_T[a min(1, h / 12) r sigma_tend]`, `r` drawn next from the same
    generator and carried in the first hidden channel, the hours in the second: half of a at
    6 h, all of it at 18 h. The multiplicative part stays refused, and a diffusion member
    takes the additive one."""
    path, _ = tiny_world
    fgn = load_checkpoint(fgn_checkpoint, load_config(path))
    settings = {"tendency_additive": 0.3, "tendency_hours": 24, "tendency_ramp_hours": 12}
    fgn.use_member_settings(MemberKind(noise_scale=2.0, **settings))
    assert fgn.hidden_channels == 2
    fields = torch.randn(2, 2, 9, 16, generator=torch.Generator().manual_seed(0)) * fgn.std
    before = torch.tensor([0.0, 12.0])[:, None, None, None].expand(2, 1, 9, 16)
    state = torch.cat([fields, torch.zeros_like(before), before], 1)
    stepped = fgn.step(state, generator=[torch.Generator().manual_seed(k) for k in range(2)])
    generators = [torch.Generator().manual_seed(k) for k in range(2)]
    draws = torch.cat([draw_noise(1, fgn.fgn.noise_dim, g) for g in generators])
    pattern = fgn.next_pattern(torch.zeros(2, 1, 9, 16), generators)
    ramp = torch.tensor([0.5, 1.0])[:, None, None, None]
    with torch.no_grad():
        sample = fgn.forward(fields, 2.0 * draws)
    expected = sample + fgn.project(0.3 * ramp * pattern * fgn.tendency_std)
    torch.testing.assert_close(stepped[:, :2], expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stepped[:, 2:3], pattern, rtol=0, atol=0)
    assert stepped[:, 3, 0, 0].tolist() == [6.0, 18.0]
    assert (stepped[:, :2] - sample).abs().max() > 1e-3 * sample.abs().max()
    with pytest.raises(ConfigError, match=r"fgn\.tendency_sigma: FGN members have no"):
        parse_config({"ensemble": {"kinds": {"fgn": {"tendency_sigma": 0.1}}}})
    kinds = parse_config({"ensemble": {"kinds": {"diffusion": settings}}}).ensemble.kinds
    assert kinds["diffusion"].tendency_additive == 0.3


def test_checkpoint_kinds_are_checked_and_mixed_ensembles_write_valid_stores(
    fgn_checkpoint, tiny_checkpoints, tiny_world, tmp_path, wxens
):
    """`check_mixed_ensemble` of the tiny SFNO of seed 1 and the FGN; then shares and a
    perturbation per kind: a bred SFNO pair, then three unperturbed FGN pairs whose noise
    ramps over 12 h (a hidden channel the SFNO members carry along unread)."""
    path, _ = tiny_world
    sfno = tiny_checkpoints / "sfno-seed1"
    check_mixed_ensemble(wxens, path, sfno, fgn_checkpoint, tmp_path)
    fgn_settings = {"share": 3, "initial": "none", "noise_scale": 2.0, "noise_ramp_hours": 12}
    kinds = {"sfno": {"share": 1}, "fgn": fgn_settings}
    shared = with_ensemble(path, tmp_path, kinds=kinds, checkpoint_group=2)
    code, output = one_day_forecast(
        wxens, shared, [sfno, fgn_checkpoint], 8, tmp_path / "shared.zarr"
    )
    assert code == 0, output
    store = xr.open_zarr(tmp_path / "shared.zarr")
    assert member_kinds(store)[0] == ["sfno"] * 2 + ["fgn"] * 6
    start = store["psi_upper"].values[:, 0]  # (init, member, lat, lon)
    assert all(np.array_equal(start[:, m], start[:, 2]) for m in range(3, 8))  # the analysis
    assert not np.array_equal(start[:, 0], start[:, 2])  # bred
    last = store["psi_upper"].values[:, -1]
    assert not np.array_equal(last[:, 2], last[:, 3])


def test_committed_fgn_checkpoint_loads_and_samples():
    """checkpoints/fgn/fgn-seed1 under configs/default-fgn.yaml: an FGN whose noise acts (two
    generators give two different steps of one state)."""
    fgn = load_checkpoint("checkpoints/fgn/fgn-seed1", load_config("configs/default-fgn.yaml"))
    assert fgn.kind == "fgn" and fgn.fgn.noise_dim == 32
    check_two_draws_differ(fgn)


def test_seeds_members_branch_from_their_seeds(
    fgn_checkpoint, tiny_checkpoints, tiny_world, tmp_path, wxens
):
    """SEEDS-like members (`ensemble.seeds`): from a store of 2 bred SFNO members, 6 FGN members
    branching at the first lead copy seed k mod 2 up to it, then the members of one seed part;
    a deterministic SFNO from the same seeds at lead 0 gives the seed store back bitwise. A
    missing store, too few seed members and a lead off the step are refused in one line, and
    no store is written."""
    path, _ = tiny_world
    sfno = tiny_checkpoints / "sfno-seed1"

    def run(config: Path, out: Path, checkpoint: Path, members: int) -> tuple[int, str]:
        return one_day_forecast(wxens, config, [checkpoint], members, out)

    code, output = run(path, tmp_path / "seeds.zarr", sfno, 2)
    assert code == 0, output
    seed_store = xr.open_zarr(tmp_path / "seeds.zarr")
    seeds = seed_store["psi_upper"].values  # (init, lead, member, lat, lon)
    first = float(seed_store["lead_time"].values[1] / np.timedelta64(1, "h"))
    branch = {"store": str(tmp_path / "seeds.zarr"), "members": 2, "lead_hours": first}
    drawn_config = with_ensemble(path, tmp_path, kinds=["fgn"], seeds=branch)
    code, output = run(drawn_config, tmp_path / "drawn.zarr", fgn_checkpoint, 6)
    assert code == 0, output
    drawn = xr.open_zarr(tmp_path / "drawn.zarr")["psi_upper"].values
    for k in range(6):
        np.testing.assert_array_equal(drawn[:, :2, k], seeds[:, :2, k % 2])
    assert not np.array_equal(drawn[:, 2, 0], drawn[:, 2, 2])  # one seed, two noise streams
    again_config = with_ensemble(path, tmp_path, seeds={**branch, "lead_hours": 0})
    code, output = run(again_config, tmp_path / "again.zarr", sfno, 4)
    assert code == 0, output
    again = xr.open_zarr(tmp_path / "again.zarr")["psi_upper"].values
    for k in range(4):
        np.testing.assert_array_equal(again[:, :, k], seeds[:, :, k % 2])
    refused = {
        "no such store": {**branch, "store": str(tmp_path / "none.zarr")},
        "ensemble.seeds.members: 3, but": {**branch, "members": 3},
        "ensemble.seeds.lead_hours: 1.0 h is not a lead": {**branch, "lead_hours": 1.0},
    }
    for message, settings in refused.items():
        config = with_ensemble(path, tmp_path, kinds=["fgn"], seeds=settings)
        code, output = run(config, tmp_path / "refused.zarr", fgn_checkpoint, 4)
        assert code == 1 and message in output, output
        assert not (tmp_path / "refused.zarr").exists()
