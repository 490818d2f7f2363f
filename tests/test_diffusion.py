"""Diffusion members (`models.diffusion`): EDM's closed forms, the sampler on a Gaussian whose
denoiser is known exactly, training, per-member sampling and mixed ensembles, on the tiny real
world."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from member_kinds import (
    check_mixed_ensemble,
    check_sampling_per_member,
    check_two_draws_differ,
    member_kinds,
    one_day_forecast,
)
from wxens.data_pipeline.config import ConfigError, MemberKind, load_config, parse_config
from wxens.forecast.runner import load_models
from wxens.models.checkpoint import CheckpointError, load_checkpoint
from wxens.models.diffusion import (
    MEAN_PREFIX,
    denoiser_calls,
    denoising_loss,
    edm_coefficients,
    loss_weight,
    sample,
    sigma_schedule,
)
from wxens.models.fgn import draw_noise
from wxens.models.sfno import SFNOEmulator
from wxens.models.training import LAST, STATE, Trainer, validate

FOUR_LEVELS = [80.0, 9.723201355260132, 0.46997905799774714, 0.002, 0.0]
"""EDM's 4 levels from 80 to 0.002 with rho = 7, then 0 (worked by hand)."""


@pytest.fixture(scope="module")
def diffusion_checkpoint(tiny_world, tmp_path_factory, wxens) -> Path:
    """A short real diffusion run on the tiny world (its default sampler: 8 Heun levels)."""
    path, _ = tiny_world
    out = tmp_path_factory.mktemp("diffusion") / "diffusion-seed1"
    code, output = wxens(
        "train", "--config", path, "--model", "diffusion", "--seed", 1, "--out", out, "--quiet"
    )
    assert code == 0, output
    return out


def test_edm_coefficients_and_the_noise_levels_are_the_closed_forms():
    """At sigma = 0.5 and 2 (sd = 1): c_skip = 1 / (1 + sigma^2), c_out = sigma / sqrt(1 +
    sigma^2), c_in = 1 / sqrt(1 + sigma^2), c_noise = ln(sigma) / 4, lambda = (1 + sigma^2) /
    sigma^2; 4 levels from 80 to 0.002 with rho = 7, then 0 (numbers worked by hand)."""
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma)
    expected = {
        "c_skip": (c_skip, [0.8, 0.2]),
        "c_out": (c_out, [0.4472135954999579, 0.8944271909999159]),
        "c_in": (c_in, [0.8944271909999159, 0.4472135954999579]),
        "c_noise": (c_noise, [-0.17328679513998632, 0.17328679513998632]),
        "lambda": (loss_weight(sigma), [5.0, 1.25]),
    }
    for name, (got, want) in expected.items():
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), msg=name)
    torch.testing.assert_close(
        sigma_schedule(4, 0.002, 80.0, 7.0), torch.tensor(FOUR_LEVELS, dtype=torch.float64)
    )


@pytest.mark.parametrize("spread", [1.0, 0.3])
def test_heun_sampler_draws_a_gaussian_from_its_exact_denoiser(spread):
    """For data N(mu, s^2) the ideal denoiser is the posterior mean D(x; sigma) = mu + s^2 /
    (s^2 + sigma^2) (x - mu); Heun on 32 levels (63 calls) from 80 to 0.002 then draws 64000
    numbers of variance s^2 (within 8 %: the ODE's discretisation error, 3-5 % here, +70 % to
    +170 % with 8 levels) and the mean the exact ODE gives from x_0 ~ N(0, 80^2), mu (1 - s /
    sqrt(80^2 + s^2)) (within 0.015 s; EDM starts its noise at 0, not at mu)."""
    mu = 0.7

    def posterior_mean(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return mu + spread**2 / (spread**2 + sigma[:, None] ** 2) * (x - mu)

    noise = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    drawn = sample(posterior_mean, noise, sigma_schedule(32, 0.002, 80.0, 7.0))
    mean = mu * (1 - spread / math.hypot(80.0, spread))
    assert float(drawn.mean()) == pytest.approx(mean, abs=0.015 * spread)
    assert float(drawn.var()) == pytest.approx(spread**2, rel=0.08)


@pytest.mark.parametrize(
    ("sampler", "levels", "low", "high"),
    [("dpmpp_2m", 8, 1.05, 1.22), ("dpmpp_2m", 16, 1.03, 1.12)],
)
@pytest.mark.parametrize("spread", [1.0, 0.2])
def test_dpm_solver_draws_the_gaussian_with_one_call_a_level(spread, sampler, levels, low, high):
    """DPM-Solver++(2M) with the exact denoiser of N(mu, s^2) (as above): N calls on N levels
    (Heun makes 2N - 1), a std of 1.09-1.19 s on 8 levels and 1.07-1.10 s on 16 (measured
    here: Heun's on 16 levels is 1.06-1.10 s, its 8 levels' 1.30-1.49 s), and the exact ODE's
    mean within 0.02 s."""
    mu, calls = 0.7, []

    def posterior_mean(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(float(sigma[0]))
        return mu + spread**2 / (spread**2 + sigma[:, None] ** 2) * (x - mu)

    noise = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    drawn = sample(posterior_mean, noise, sigma_schedule(levels, 0.002, 80.0, 7.0), sampler)
    assert len(calls) == denoiser_calls(sampler, levels) == levels
    assert calls == pytest.approx(sigma_schedule(levels, 0.002, 80.0, 7.0)[:-1].tolist())
    assert low * spread < float(drawn.std()) < high * spread
    assert float(drawn.mean()) == pytest.approx(
        mu * (1 - spread / math.hypot(80.0, spread)), abs=0.02 * spread
    )


def test_diffusion_training_lowers_the_crps_and_records_it(
    diffusion_checkpoint, tiny_world, tiny_checkpoints, tmp_path
):
    """The validation CRPS (2 sampled forecasts) after training is below 0.7 x the untrained
    denoiser's, the checkpoint records the kind and the CRPS by variable, and an SFNO cannot
    start a diffusion model (one line: their inputs differ)."""
    path, store = tiny_world
    metadata = json.loads((diffusion_checkpoint / "metadata.json").read_text())
    assert metadata["kind"] == "diffusion"
    assert set(metadata["validation"]["crps"]) == {"psi_upper", "psi_lower"}
    history = json.loads((diffusion_checkpoint / LAST / STATE).read_text())["history"]
    config = load_config(path)
    trained = load_checkpoint(diffusion_checkpoint, config)
    cpu = torch.device("cpu")
    fresh = Trainer(config, {}, store, 1, tmp_path / "y", cpu, True, model="diffusion")
    settings = config.training
    lead = settings.validation_lead_steps

    def score(emulator) -> float:
        return validate(emulator, fresh.validation, settings.validation_inits, 16, lead)["score"]

    before, after = score(fresh.emulator.eval()), score(trained)
    assert after == pytest.approx(min(h["score"] for h in history), rel=1e-6)
    assert math.isfinite(before) and after < 0.7 * before
    with pytest.raises(CheckpointError, match="kind sfno cannot start one of kind diffusion"):
        sfno = tiny_checkpoints / "sfno-seed1"
        Trainer(config, {}, store, 1, tmp_path / "s", cpu, True, sfno, model="diffusion")


def loss_inputs(diffusion) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three random states about the climate, next states one tendency std away, and uniform
    area weights: what `denoising_loss` takes."""
    shape = (3, *diffusion.noise_shape)
    draws = torch.Generator().manual_seed(5)
    state = diffusion.mean + diffusion.std * torch.randn(shape, generator=draws)
    following = state + diffusion.tendency_std * torch.randn(shape, generator=draws)
    return state, following, torch.full(shape[-2:], 1 / (shape[-2] * shape[-1]))


def test_input_noise_perturbs_the_conditioning_state_not_the_target(diffusion_checkpoint):
    """With `input_noise: a` the loss is the one of the state `x + P_T[a sigma_tend m]` (`m`
    the generator's first draw, white on the grid) toward the same next state, with the
    generator's later draws; `m` leaves no degree above T (its projection is unchanged)."""
    diffusion = load_checkpoint(diffusion_checkpoint)
    shape = (3, *diffusion.noise_shape)
    state, following, weights = loss_inputs(diffusion)
    diffusion.settings = diffusion.diffusion.model_copy(update={"input_noise": 0.5})
    noisy = denoising_loss(diffusion, state, following, weights, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    errors = diffusion.project(0.5 * diffusion.tendency_std * draw_noise(3, shape[1:], generator))
    torch.testing.assert_close(diffusion.project(errors), errors, atol=1e-2, rtol=1e-4)
    diffusion.settings = diffusion.diffusion.model_copy(update={"input_noise": 0.0})
    moved = denoising_loss(diffusion, state + errors, following, weights, generator)
    clean = denoising_loss(diffusion, state, following, weights, torch.Generator().manual_seed(1))
    torch.testing.assert_close(noisy, moved)
    assert not torch.allclose(noisy, clean)


def test_sampling_is_reproducible_per_member(diffusion_checkpoint, tiny_world):
    """`check_sampling_per_member` of the trained diffusion model."""
    path, _ = tiny_world
    check_sampling_per_member(load_checkpoint(diffusion_checkpoint, load_config(path)))


def test_member_settings_override_the_sampler_and_its_levels(diffusion_checkpoint, tiny_world):
    """`ensemble.kinds.diffusion.sampler_steps: 4` loads the checkpoint (trained on 8 Heun
    levels) to sample on EDM's 4 levels (`FOUR_LEVELS`), and `sampler: dpmpp_2m` with
    DPM-Solver++(2M), so one generator's steps differ from each other and from the 8-level
    Heun one; another kind cannot set either (one line naming the kinds that read it, from the
    kind registry)."""
    path, _ = tiny_world
    config = load_config(path)
    cpu = torch.device("cpu")

    def loaded(**settings) -> torch.nn.Module:
        kinds = {"kinds": {"diffusion": MemberKind(**settings)}}
        changed = config.model_copy(update={"ensemble": config.ensemble.model_copy(update=kinds)})
        return load_models("sfno", [str(diffusion_checkpoint)], changed, cpu)[0]

    four, dpm = loaded(sampler_steps=4), loaded(sampler_steps=4, sampler="dpmpp_2m")
    eight = load_checkpoint(diffusion_checkpoint, config)
    assert eight.diffusion.sampler_steps == 8 and four.diffusion.sampler_steps == 4
    assert (eight.diffusion.sampler, four.diffusion.sampler, dpm.diffusion.sampler) == (
        "heun",
        "heun",
        "dpmpp_2m",
    )
    torch.testing.assert_close(four.sigmas(), torch.tensor(FOUR_LEVELS, dtype=torch.float64))
    state = eight.mean.expand(1, -1, -1, eight.grid.nlon).contiguous()  # the zonal means
    steps = [e.step(state, generator=torch.Generator().manual_seed(0)) for e in (four, eight, dpm)]
    assert all(torch.isfinite(step).all() for step in steps)
    assert not torch.allclose(steps[0], steps[1]) and not torch.allclose(steps[0], steps[2])
    for setting, value in (("sampler_steps", 16), ("sampler", "dpmpp_2m")):
        refused = (
            rf"kinds\.fgn\.{setting}: FGN members have no sampler( levels)?; it is for diffusion$"
        )
        with pytest.raises(ConfigError, match=refused):
            parse_config({"ensemble": {"kinds": {"fgn": {setting: value}}}})


def test_checkpoint_kinds_are_checked_and_mixed_ensembles_write_valid_stores(
    diffusion_checkpoint, tiny_checkpoints, tiny_world, tmp_path, wxens
):
    """`check_mixed_ensemble` of the tiny SFNO of seed 1 and the diffusion model."""
    path, _ = tiny_world
    sfno = tiny_checkpoints / "sfno-seed1"
    check_mixed_ensemble(wxens, path, sfno, diffusion_checkpoint, tmp_path)


def test_committed_diffusion_checkpoint_loads_and_samples():
    """checkpoints/diffusion/diffusion-seed1 under configs/default-diffusion.yaml: a diffusion
    model whose initial noise acts (two generators give two different steps of one state)."""
    config = load_config("configs/default-diffusion.yaml")
    diffusion = load_checkpoint("checkpoints/diffusion/diffusion-seed1", config)
    assert diffusion.kind == "diffusion" and diffusion.diffusion.sampler_steps == 8
    check_two_draws_differ(diffusion)


@pytest.fixture(scope="module")
def residual_config(tiny_world, tmp_path_factory) -> Path:
    """The tiny world's config with a residual diffusion member: the tiny SFNO's own settings
    as `diffusion.mean_network`, corrections of std 0.3 tendency stds."""
    path, _ = tiny_world
    data = yaml.safe_load(path.read_text())
    data["diffusion"] = {"mean_network": dict(data["sfno"]), "sigma_data": 0.3}
    residual = tmp_path_factory.mktemp("residual") / "residual.yaml"
    residual.write_text(yaml.safe_dump(data))
    return residual


@pytest.fixture(scope="module")
def residual_checkpoint(residual_config, tiny_checkpoints, tmp_path_factory, wxens) -> Path:
    """A short real residual diffusion run on the tiny world from the tiny SFNO of seed 1."""
    out = tmp_path_factory.mktemp("residual-run") / "diffusion-seed1"
    sfno = tiny_checkpoints / "sfno-seed1"
    arguments = ("--config", residual_config, "--model", "diffusion", "--seed", 1, "--quiet")
    code, output = wxens("train", *arguments, "--init-from", sfno, "--out", out)
    assert code == 0, output
    return out


def test_a_residual_member_steps_as_its_frozen_sfno_plus_the_sampled_correction(
    residual_checkpoint, residual_config, tiny_checkpoints
):
    """After training, the mean network holds the SFNO checkpoint's weights bitwise (frozen).
    With the denoiser's output `F` zeroed, `D(c; sigma) = c_skip c` is the exact denoiser of
    corrections N(0, sd^2): zero noise steps exactly as the SFNO does, and noise `n` adds
    `P_T[sigma_tend g sd n]` with one scalar `g` (the sampler is linear for a linear
    denoiser), within 8 % of 1 on 32 Heun levels (the ODE's exact map is
    `sigma_0 / sqrt(sigma_0^2 + sd^2)`, 1 - 7e-6)."""
    config = load_config(residual_config)
    residual = load_checkpoint(residual_checkpoint, config)
    sfno = load_checkpoint(tiny_checkpoints / "sfno-seed1", config)
    weights = residual.weights()
    for name, value in sfno.network.state_dict().items():
        assert torch.equal(weights[MEAN_PREFIX + name], value), name
    for parameter in residual.network.decoder.parameters():
        parameter.data.zero_()
    residual.settings = residual.diffusion.model_copy(update={"sampler_steps": 32})
    draws = torch.Generator().manual_seed(3)
    state = residual.mean + residual.std * torch.randn(2, 2, 9, 16, generator=draws)
    noise = torch.randn(2, *residual.noise_shape, generator=draws)
    with torch.no_grad():
        mean_step = residual(state, torch.zeros_like(noise))
        added = residual(state, noise) - mean_step
    torch.testing.assert_close(mean_step, sfno.step(state), rtol=1e-6, atol=1e-3)
    unit = residual.project(0.3 * residual.tendency_std * noise)
    gain = float((added * unit).sum() / (unit * unit).sum())
    assert gain == pytest.approx(1, abs=0.08)
    torch.testing.assert_close(added, gain * unit, rtol=1e-3, atol=1e-3 * float(unit.abs().max()))


def test_correction_damping_is_a_del4_filter_of_the_sampled_correction(
    residual_checkpoint, residual_config
):
    """`ensemble.kinds.diffusion.correction_damping: 2` multiplies each spherical harmonic of
    total wavenumber l in the correction by `exp(-2 (l (l + 1) / (T (T + 1)))^2)` (worked here
    with numpy), so a step's correction is its undamped one filtered so; 0 leaves it alone.
    Another kind cannot set it (one line naming the kinds that read it)."""
    config = load_config(residual_config)
    kinds = {"kinds": {"diffusion": MemberKind(correction_damping=2.0)}}
    damping = config.model_copy(update={"ensemble": config.ensemble.model_copy(update=kinds)})
    cpu = torch.device("cpu")
    damped = load_models("sfno", [str(residual_checkpoint)], damping, cpu)[0]
    plain = load_checkpoint(residual_checkpoint, config)
    assert (damped.correction_damping, plain.correction_damping) == (2.0, 0.0)
    transforms, truncation = damped.transforms, damped.truncation
    coefficients = torch.zeros(1, 1, truncation + 1, truncation + 1, dtype=torch.complex64)
    degrees = (0, 1, truncation - 1, truncation)
    for l in degrees:  # noqa: E741 (the total wavenumber)
        coefficients[..., l, min(l, 1)] = 1.0
    field = transforms.to_grid(coefficients)
    kept = transforms.to_spectral(damped.damped(field))
    scale = truncation * (truncation + 1)
    for l in degrees:  # noqa: E741
        expected = np.exp(-2.0 * (l * (l + 1) / scale) ** 2)
        assert float(kept[0, 0, l, min(l, 1)].real) == pytest.approx(expected, rel=1e-4), l
    torch.testing.assert_close(plain.damped(field), field)

    draws = torch.Generator().manual_seed(5)
    state = plain.mean + plain.std * torch.randn(2, 2, 9, 16, generator=draws)
    noise = torch.randn(2, *plain.noise_shape, generator=draws)
    with torch.no_grad():
        features = plain.features(state)
        correction = sample(
            lambda x, sigma: plain.denoise(x, sigma, features),
            noise,
            plain.sigmas(),
            plain.diffusion.sampler,
        )
        step = plain.advance(state, plain.mean_tendency(features) + damped.damped(correction))
        torch.testing.assert_close(damped(state, noise), step, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(plain(state, noise), step)
    refused = r"kinds\.fgn\.correction_damping: FGN members have no sampled correction to damp"
    with pytest.raises(ConfigError, match=refused):
        parse_config({"ensemble": {"kinds": {"fgn": {"correction_damping": 1.0}}}})


def test_a_residual_member_learns_the_tendency_less_the_sfno_one(residual_checkpoint):
    """`denoising_loss` of a residual member toward `x(t + dt)` is the loss of the same
    denoiser without a mean toward `x(t + dt) - sigma_tend m`, `m` the frozen SFNO's
    normalised tendency (the same generator's draws)."""
    residual = load_checkpoint(residual_checkpoint)
    state, following, weights = loss_inputs(residual)
    loss = denoising_loss(residual, state, following, weights, torch.Generator().manual_seed(1))
    shifted = following - residual.tendency_std * residual.mean_tendency(residual.features(state))
    residual.mean_network = None
    alone = denoising_loss(residual, state, shifted, weights, torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss, alone, rtol=1e-4, atol=0)


def test_a_residual_member_refuses_an_sfno_of_other_settings(
    residual_config, residual_checkpoint, tiny_world, tiny_checkpoints, tmp_path
):
    """An `--init-from` SFNO whose settings are not `diffusion.mean_network`, and such an SFNO
    as a member's mean network (one line naming the section); a mean network that reads other
    features than the denoiser (a one-line config error naming the setting)."""
    data = yaml.safe_load(residual_config.read_text())
    data["diffusion"]["mean_network"]["embed_dim"] = 16
    wider = parse_config(data)
    _, store = tiny_world
    sfno, cpu = tiny_checkpoints / "sfno-seed1", torch.device("cpu")
    with pytest.raises(
        CheckpointError, match=r"sfno-seed1: its network \(.*\) is not the config's sfno$"
    ):
        Trainer(wider, {}, store, 1, tmp_path / "w", cpu, True, sfno, model="diffusion")
    residual = load_checkpoint(residual_checkpoint)
    architecture = load_checkpoint(sfno).architecture()
    architecture["sfno"]["embed_dim"] = 16
    with pytest.raises(CheckpointError, match=r"^wide: .* mean network \(its sfno differs\)$"):
        residual.with_mean_network(SFNOEmulator.from_architecture(architecture), "wide")
    data["diffusion"]["mean_network"].update(embed_dim=8, gradient_features=False)
    with pytest.raises(
        ConfigError, match=r"diffusion\.mean_network\.gradient_features: False differs"
    ):
        parse_config(data)


def test_mean_checkpoints_put_each_sfno_under_the_same_corrections(
    residual_checkpoint, residual_config, tiny_checkpoints, diffusion_checkpoint, tmp_path, wxens
):
    """`ensemble.kinds.diffusion.mean_checkpoints: [the tiny SFNOs]` makes one member model per
    SFNO: its mean network holds that SFNO's weights bitwise and its denoiser the checkpoint's.
    A one-day forecast of 8 members cycles over them by bred pairs, the store names each
    (`diffusion-seed1+sfno-seed2`) and records their weights' sha256, and 4 members run alone
    equal the first 4. Refused in one line: a mean checkpoint of another kind, a diffusion
    checkpoint without a mean network, another kind setting it."""
    data = yaml.safe_load(residual_config.read_text())
    data["ensemble"] = {
        "kinds": {"diffusion": {"mean_checkpoints": [str(tiny_checkpoints)]}},
        "checkpoint_group": 2,
    }
    means = tmp_path / "means.yaml"
    means.write_text(yaml.safe_dump(data))
    config = load_config(means)
    models = load_models("sfno", [str(residual_checkpoint)], config, torch.device("cpu"))
    residual = load_checkpoint(residual_checkpoint, config)
    assert [m.name for m in models] == [f"diffusion-seed1+sfno-seed{k}" for k in (1, 2)]
    for model, seed in zip(models, (1, 2), strict=True):
        sfno = load_checkpoint(tiny_checkpoints / f"sfno-seed{seed}", config)
        for name, value in sfno.network.state_dict().items():
            assert torch.equal(model.weights()[MEAN_PREFIX + name], value), name
        for name, value in residual.network.state_dict().items():
            assert torch.equal(model.network.state_dict()[name], value), name

    code, output = one_day_forecast(wxens, means, [residual_checkpoint], 8, tmp_path / "a.zarr")
    assert code == 0, output
    store = xr.open_zarr(tmp_path / "a.zarr")
    kinds, names = member_kinds(store)
    assert kinds == ["diffusion"] * 8
    assert names == ["diffusion-seed1+sfno-seed1", "diffusion-seed1+sfno-seed2"]
    assert store["checkpoint"].values.tolist() == [0, 0, 1, 1] * 2
    weights = json.loads(store.attrs["wxens_checkpoints_sha256"])
    assert set(weights) == {"diffusion-seed1", "sfno-seed1", "sfno-seed2"}
    values = store["psi_upper"].values
    assert not np.array_equal(values[:, -1, 0], values[:, -1, 2])  # another mean, another step
    code, output = one_day_forecast(wxens, means, [residual_checkpoint], 4, tmp_path / "b.zarr")
    assert code == 0, output
    np.testing.assert_array_equal(
        xr.open_zarr(tmp_path / "b.zarr")["psi_upper"].values, values[:, :, :4]
    )

    for mean, checkpoint, refused in (
        (
            residual_checkpoint,
            residual_checkpoint,
            "cannot be a diffusion member's mean network (kind diffusion)",
        ),
        (tiny_checkpoints, diffusion_checkpoint, "has no mean network to replace"),
    ):
        data["ensemble"]["kinds"]["diffusion"]["mean_checkpoints"] = [str(mean)]
        means.write_text(yaml.safe_dump(data))
        code, output = one_day_forecast(wxens, means, [checkpoint], 4, tmp_path / "c.zarr")
        assert code == 1 and refused in output, output
        assert not (tmp_path / "c.zarr").exists()
    with pytest.raises(
        ConfigError, match=r"kinds\.fgn\.mean_checkpoints: FGN members have no mean network"
    ):
        parse_config({"ensemble": {"kinds": {"fgn": {"mean_checkpoints": ["x"]}}}})
