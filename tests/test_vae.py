"""VAE members (`models.vae`): the KL and the loss, the zero-initialised latent, training,
per-member sampling, checkpoint kinds and mixed hindcasts, on the tiny real world."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from member_kinds import (
    check_sampling_per_member,
    check_two_draws_differ,
    fine_tune,
    member_kinds,
    with_ensemble,
)
from wxens.data_pipeline.config import VAEConfig, load_config
from wxens.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from wxens.models.fgn import draw_noise
from wxens.models.training import Trainer, sampled_rollout_errors, validate
from wxens.models.vae import Gaussian, VAEEmulator, gaussian_kl

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vae_checkpoint(tiny_world, tiny_checkpoints, tmp_path_factory, wxens) -> Path:
    """A short real VAE run started from the tiny world's SFNO checkpoint of seed 1."""
    out = tmp_path_factory.mktemp("vae") / "vae-seed1"
    return fine_tune(wxens, tiny_world[0], "vae", tiny_checkpoints / "sfno-seed1", out)


def numpy_kl(q: Gaussian, p: Gaussian) -> float:
    """KL(q || p) of diagonal Gaussians, 0.5 (s_q^2 / s_p^2 + (m_p - m_q)^2 / s_p^2 - 1
    + ln(s_p^2 / s_q^2)), averaged over the values, in numpy float64."""
    (mq, lq), (mp, lp) = ([t.detach().double().numpy() for t in g] for g in (q, p))
    vq, vp = np.exp(2 * lq), np.exp(2 * lp)
    return float(np.mean(0.5 * (vq / vp + (mp - mq) ** 2 / vp - 1 + np.log(vp / vq))))


def test_gaussian_kl_equals_the_closed_form():
    """By hand: KL(N(1, 0.5^2) || N(0, 1)) = ln 2 + (0.25 + 1) / 2 - 1/2; KL(p || p) = 0; and
    against numpy on random Gaussians."""
    half = Gaussian(torch.tensor([1.0]), torch.tensor([math.log(0.5)]))
    unit = Gaussian(torch.tensor([0.0]), torch.tensor([0.0]))
    assert float(gaussian_kl(half, unit)) == pytest.approx(math.log(2) + 0.125, rel=1e-6)
    assert float(gaussian_kl(unit, unit)) == 0.0
    rng = np.random.default_rng(0)
    q, p = (Gaussian(*torch.from_numpy(rng.normal(size=(2, 3, 4, 5, 6)))) for _ in range(2))
    assert float(gaussian_kl(q, p)) == pytest.approx(numpy_kl(q, p), rel=1e-12)


def randomise_latent(vae: VAEEmulator) -> None:
    """Give the prior, posterior and projection random weights (they start at zero)."""
    encoder = vae.network.encoder
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for module in (encoder.prior, encoder.posterior, encoder.projection):
            for parameter in module.parameters():
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def test_the_loss_equals_numpy_on_a_tiny_case(tiny_world, tmp_path):
    """Two steps of 3 samples of 2 states: the loss is numpy's pairwise fair CRPS of the
    posterior samples plus kl_weight x KL, the KL that of the prior and posterior networks'
    Gaussians (each step's posterior seeing that step's target)."""
    path, store = tiny_world
    config = load_config(path)
    config = config.model_copy(update={"vae": VAEConfig(samples=3, kl_weight=0.5)})
    trainer = Trainer(config, {}, store, 3, tmp_path / "v", CPU, True, model="vae")
    vae, weights = trainer.emulator, trainer.train.area_weights
    randomise_latent(vae)
    inputs, targets = trainer.train.windows(np.array([5, 40]), 2)
    with torch.no_grad():
        seeded = torch.Generator().manual_seed(5)
        got = sampled_rollout_errors(vae, inputs, targets, weights, seeded)
    generator, state = torch.Generator().manual_seed(5), inputs.repeat(3, 1, 1, 1)
    scale = vae.tendency_std.numpy().astype(np.float64)
    for k in range(2):
        target = targets[:, k].repeat(3, 1, 1, 1)
        noise = draw_noise(6, vae.noise_shape, generator)
        features = vae.features(state)
        tendency = (target - state - vae.tendency_mean) / vae.tendency_std
        with torch.no_grad():
            prior = vae.network.encoder.prior(features)
            posterior = vae.network.encoder.posterior(torch.cat([features, tendency], dim=1))
            state, kl = vae.sample(state, noise, target, True)
        assert float(kl) == pytest.approx(numpy_kl(posterior, prior), rel=1e-5)
        x = state.double().numpy().reshape(3, 2, 2, 9, 16) / scale
        y = targets[:, k].double().numpy() / scale
        pairs = np.abs(x[:, None] - x[None, :]).sum(axis=(0, 1)) / (2 * 3 * 2)
        crps = ((np.abs(x - y).mean(axis=0) - pairs) * weights.numpy()).sum(axis=(-2, -1))
        expected = crps.mean(axis=0) + 0.5 * numpy_kl(posterior, prior)
        np.testing.assert_allclose(got[k].numpy(), expected, rtol=1e-5)
    assert float(kl) > 0.01  # the KL term is not trivially zero


def test_an_untrained_vae_is_its_backbone_sfno(tiny_world, tiny_checkpoints, tmp_path):
    """Its projection starts at zero: started from an SFNO checkpoint, prior or posterior
    samples give the SFNO's step exactly; the SFNO cannot start from a VAE (one line)."""
    path, store = tiny_world
    config = load_config(path)
    sfno_folder = tiny_checkpoints / "sfno-seed1"
    trainer = Trainer(config, {}, store, 3, tmp_path / "v", CPU, True, sfno_folder, model="vae")
    sfno = load_checkpoint(sfno_folder)
    vae = trainer.emulator.eval()
    state, target = trainer.validation.states[:3], trainer.validation.states[1:4]
    expected = sfno.step(state)
    for generator in (torch.Generator().manual_seed(1), None):
        torch.testing.assert_close(vae.step(state, generator=generator), expected, rtol=0, atol=0)
    with torch.no_grad():
        noise = draw_noise(3, vae.noise_shape, torch.Generator().manual_seed(2))
        posterior, kl = vae.sample(state, noise, target, True)
    torch.testing.assert_close(posterior, expected, rtol=0, atol=0)
    assert float(kl) == 0.0  # prior and posterior both start as N(0, I)
    vae_folder = save_checkpoint(vae, tmp_path / "vae")
    with pytest.raises(
        CheckpointError, match="a checkpoint of kind vae cannot start one of kind sfno"
    ):
        Trainer(config, {}, store, 3, tmp_path / "s", CPU, True, vae_folder)


def test_vae_training_lowers_the_crps_and_records_it(
    vae_checkpoint, tiny_world, tiny_checkpoints, tmp_path
):
    """The validation CRPS of prior samples after training is below that of the starting
    SFNO (a one-member ensemble, whose CRPS is its MAE), and the checkpoint records the kind,
    the CRPS by variable and the KL."""
    path, store = tiny_world
    metadata = json.loads((vae_checkpoint / "metadata.json").read_text())
    assert metadata["kind"] == "vae"
    validation = metadata["validation"]
    assert set(validation["crps"]) == {"psi_upper", "psi_lower"} and validation["kl"] > 0
    config = load_config(path)
    start = Trainer(
        config, {}, store, 1, tmp_path / "s", CPU, True, tiny_checkpoints / "sfno-seed1", "vae"
    )
    settings = config.training
    arguments = (start.validation, settings.validation_inits, 16, settings.validation_lead_steps)
    before = validate(start.emulator.eval(), *arguments)["score"]
    after = validate(load_checkpoint(vae_checkpoint, config), *arguments)["score"]
    assert after == pytest.approx(validation["score"], rel=1e-6)
    assert after < 0.9 * before


def test_sampling_is_reproducible_per_member(vae_checkpoint, tiny_world):
    """Member k's latent noise comes from its own generator alone (`check_sampling_per_member`);
    without a generator the step is deterministic, z the prior mean."""
    path, _ = tiny_world
    vae = load_checkpoint(vae_checkpoint, load_config(path))
    state = check_sampling_per_member(vae)
    mean_step = vae.step(state)
    assert torch.equal(mean_step, vae.step(state))
    assert not torch.allclose(mean_step, vae.step(state, generator=torch.Generator()))


def test_vae_kinds_are_checked_and_a_mixed_hindcast_writes_a_valid_store(
    vae_checkpoint, tiny_checkpoints, tiny_world, tmp_path, wxens
):
    """A VAE checkpoint under the default `ensemble.kinds` ([sfno]) is refused in one line;
    allowed, a hindcast's members alternate between the SFNO and the VAE, and the store says
    which."""
    path, _ = tiny_world

    def run(config: Path, out: Path) -> tuple[int, str]:
        return wxens(
            "hindcast", "--config", config, "--checkpoints", tiny_checkpoints / "sfno-seed1",
            "--checkpoints", vae_checkpoint, "--start", "2027-02-01T00", "--end",
            "2027-02-02T00", "--members", 4, "--lead-days", 1, "--out", out, "--quiet",
        )  # fmt: skip

    code, output = run(path, tmp_path / "refused.zarr")
    assert code == 1
    assert "vae-seed1: a checkpoint of kind vae, but ensemble.kinds is ['sfno']" in output
    assert not (tmp_path / "refused.zarr").exists()
    pairs = with_ensemble(path, tmp_path, kinds=["sfno", "vae"], checkpoint_group=2)
    code, output = run(pairs, tmp_path / "h.zarr")
    assert code == 0, output
    store = xr.open_zarr(tmp_path / "h.zarr")
    assert member_kinds(store) == (["sfno", "sfno", "vae", "vae"], ["sfno-seed1", "vae-seed1"])
    values = store["psi_upper"].values
    assert values.shape[:3] == (2, 5, 4) and np.isfinite(values).all()
    assert not np.array_equal(values[:, -1, 2], values[:, -1, 3])  # the VAE members differ


def test_committed_vae_checkpoint_loads_and_samples():
    """checkpoints/vae/vae-seed1 under configs/default-vae.yaml: a VAE whose latent noise acts
    (two generators give two different steps of one state)."""
    vae = load_checkpoint("checkpoints/vae/vae-seed1", load_config("configs/default-vae.yaml"))
    assert vae.kind == "vae" and vae.vae.latent_channels == 8
    check_two_draws_differ(vae)
