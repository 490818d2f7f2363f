"""SFNO emulator, checkpoints, training, the NWP baseline and `wxens skill` on a tiny real world."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.torch
import torch
import xarray as xr
import yaml
from typer.testing import CliRunner
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import NWPConfig, load_config, parse_config
from wxens.data_pipeline.sphere import LatLonGrid, analysis, power_spectrum, synthesis
from wxens.data_pipeline.training_data import AnalysisPairs, area_weights, compute_normalisation
from wxens.data_pipeline.truth import model_grid, write_truth
from wxens.forecast.cli import app
from wxens.forecast.settings import MemberKind
from wxens.models.checkpoint import WEIGHTS, CheckpointError, load_checkpoint, save_checkpoint
from wxens.models.emulator import Emulator
from wxens.models.nwp import QGEmulator
from wxens.models.sfno import SFNOEmulator
from wxens.models.training import (
    LAST,
    OPTIMIZER,
    STATE,
    PeriodStates,
    Trainer,
    adjusted_mse,
    validate,
    weighted_mse,
)

runner = CliRunner()


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def world(tiny_world):
    path, store = tiny_world
    config = load_config(path)
    return path, store, config


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """One short real training run of the tiny world's config (seed 5)."""
    path, _, _ = world
    out = tmp_path_factory.mktemp("trained") / "sfno"
    code, output = run_cli("train", "--config", path, "--seed", 5, "--out", out, "--quiet")
    assert code == 0, output
    return out


def emulator_of(config, store) -> SFNOEmulator:
    train = (config.periods.train.first, config.periods.train.last)
    stats = compute_normalisation(open_analyses(store), config.variables, train)
    return SFNOEmulator(
        model_grid(config), config.grid.truncation, config.variables, stats, config.sfno
    )


def first_states(store, count=4) -> torch.Tensor:
    dataset = open_analyses(store)
    fields = dataset[["psi_upper", "psi_lower"]].to_array("channel").isel(time=slice(0, count))
    return torch.from_numpy(fields.transpose("time", "channel", ...).values.astype(np.float32))


def test_emulator_protocol_and_the_step_formula(world):
    """With the network's output zeroed, a step adds exactly the mean 6 h tendency."""
    _, store, config = world
    emulator = emulator_of(config, store)
    assert isinstance(emulator, Emulator)
    assert emulator.timestep == np.timedelta64(6, "h")
    torch.nn.init.zeros_(emulator.network.decoder[-1].weight)
    state = first_states(store)
    expected = state + emulator.tendency_mean
    torch.testing.assert_close(
        emulator.step(state), expected, rtol=0, atol=1e-6 * state.abs().max()
    )


def test_perturbed_tendencies_multiply_the_step_by_the_members_pattern(world):
    """SPPT (`tendency_sigma` s, `tendency_hours` tau): with the network's output zeroed, a
    step adds `P_T[(1 + s r) mu_tend]` (no clipping at s = 0.05: it would take |r| > 20) and
    carries r in its hidden channel. Each fresh draw has area-mean variance exactly 1: the
    first step's r, and eps = (r2 - phi r1) / sqrt(1 - phi^2) of the second, phi =
    exp(-6 h / tau). Member k's pattern comes from its own generator, the same alone as in a
    batch; at tau = 0 each step draws a fresh pattern and keeps none; without a generator, or
    at s = 0, the step is the deterministic one."""
    _, store, config = world
    emulator = emulator_of(config, store)
    torch.nn.init.zeros_(emulator.network.decoder[-1].weight)
    fields = first_states(store)
    deterministic = emulator.step(fields)
    emulator.use_member_settings(MemberKind(tendency_sigma=0.05, tendency_hours=24))
    assert emulator.hidden_channels == 1
    state = torch.cat([fields, torch.zeros_like(fields[:, :1])], 1)
    generators = [torch.Generator().manual_seed(k) for k in range(len(state))]
    first = emulator.step(state, generator=generators)
    second = emulator.step(first, generator=generators)
    grid, truncation = model_grid(config), config.grid.truncation

    def unit_variance(field):
        variance = power_spectrum(field[:, 0].double(), grid, truncation).sum(-1)
        torch.testing.assert_close(variance, torch.ones_like(variance), rtol=2e-3, atol=0)

    for before, after in ((state, first), (first, second)):
        change = emulator.project((1 + 0.05 * after[:, 2:]) * emulator.tendency_mean)
        scale = before.abs().max()
        torch.testing.assert_close(after[:, :2] - before[:, :2], change, rtol=0, atol=1e-6 * scale)
    phi = np.exp(-6 / 24)
    unit_variance(first[:, 2:])
    unit_variance((second[:, 2:] - phi * first[:, 2:]) / np.sqrt(1 - phi**2))
    assert (first[1:, 2] - first[:-1, 2]).abs().max() > 0.1  # the members' own patterns
    alone = emulator.step(state[2:3], generator=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(alone, first[2:3], rtol=0, atol=1e-6 * fields.abs().max())
    assert torch.equal(emulator.step(fields), deterministic)
    emulator.use_member_settings(MemberKind(tendency_sigma=0.05))  # tau 0: white in time
    assert emulator.hidden_channels == 0
    white = emulator.step(fields, generator=[torch.Generator().manual_seed(k) for k in range(4)])
    torch.testing.assert_close(white, first[:, :2], rtol=0, atol=1e-6 * fields.abs().max())
    emulator.use_member_settings(MemberKind())
    assert torch.equal(emulator.step(fields, generator=generators), deterministic)


def test_the_ramp_scales_the_perturbed_tendency_by_the_hours_stepped(world):
    """`tendency_ramp_hours` R: the amplitude is s min(1, h / R) after h hours, carried in a
    hidden channel. With R = 12 h and no clipping, the first step's departure from the
    deterministic step is exactly half the unramped one with the same draws, the second's
    and third's whole; with a persistent pattern the hours follow it in a second channel."""
    _, store, config = world
    emulator = emulator_of(config, store)
    torch.nn.init.zeros_(emulator.network.decoder[-1].weight)
    fields = first_states(store)
    atol = 1e-6 * fields.abs().max()

    def departures(settings: MemberKind, state: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        emulator.use_member_settings(settings)
        generators = [torch.Generator().manual_seed(k) for k in range(len(state))]
        steps = []
        for _ in range(3):
            plain = state[:, :2] + emulator.project(emulator.tendency_mean.expand_as(state[:, :2]))
            state = emulator.step(state, generator=generators)
            steps.append((state[:, :2] - plain, state[:, 2:]))
        return steps

    flat = departures(MemberKind(tendency_sigma=0.05), fields)
    hours = torch.zeros_like(fields[:, :1])
    ramp = MemberKind(tendency_sigma=0.05, tendency_ramp_hours=12)
    ramped = departures(ramp, torch.cat([fields, hours], 1))
    assert emulator.hidden_channels == 1
    for n, ((full, _), (part, clock)) in enumerate(zip(flat, ramped, strict=True), 1):
        torch.testing.assert_close(part, min(1, n / 2) * full, rtol=0, atol=atol)
        assert torch.equal(clock, torch.full_like(clock, 6.0 * n))
    both = MemberKind(tendency_sigma=0.05, tendency_hours=24, tendency_ramp_hours=12)
    persistent = departures(both, torch.cat([fields, hours, hours], 1))
    assert emulator.hidden_channels == 2
    assert persistent[-1][1][:, 0].abs().max() > 0.1 and (persistent[-1][1][:, 1] == 18).all()


def test_the_additive_part_adds_the_pattern_in_units_of_the_tendency_std(world):
    """`tendency_additive` a, persistent pattern (tau 24 h) carried in the hidden channel r:
    with the network's output zeroed, a step adds `P_T[(1 + s r) mu_tend + a r sigma_tend]`,
    ramped with R = 12 h to half of a at the first step; at s = 0 the additive part alone
    perturbs the step, and it is zero where the pattern is."""
    _, store, config = world
    emulator = emulator_of(config, store)
    torch.nn.init.zeros_(emulator.network.decoder[-1].weight)
    fields = first_states(store)
    atol = 1e-6 * fields.abs().max()
    mean, std = emulator.tendency_mean, emulator.tendency_std
    for s, a in ((0.05, 0.3), (0.0, 0.3)):
        kind = MemberKind(tendency_sigma=s, tendency_additive=a, tendency_hours=24)
        emulator.use_member_settings(kind.model_copy(update={"tendency_ramp_hours": 12}))
        assert emulator.hidden_channels == 2
        state = torch.cat([fields, torch.zeros_like(fields[:, :2])], 1)
        generators = [torch.Generator().manual_seed(k) for k in range(len(state))]
        for ramp in (0.5, 1.0):
            after = emulator.step(state, generator=generators)
            r = after[:, 2:3]
            change = emulator.project((1 + s * ramp * r) * mean + a * ramp * r * std)
            torch.testing.assert_close(after[:, :2] - state[:, :2], change, rtol=0, atol=atol)
            assert r.abs().max() > 0.1
            state = after


def test_step_adds_no_scale_beyond_the_model_truncation(world):
    """The change of a step is band-limited to T4: projecting it again leaves it unchanged,
    while the raw network output is not band-limited."""
    _, store, config = world
    torch.manual_seed(0)
    emulator = emulator_of(config, store)
    grid, truncation = model_grid(config), config.grid.truncation

    def projected(field):
        return synthesis(grid, truncation)(analysis(grid, truncation)(field))

    state = first_states(store).double()
    change = (emulator.step(state.float()) - state.float()).double()
    torch.testing.assert_close(projected(change), change, rtol=0, atol=1e-5 * change.abs().max())
    raw = emulator.network(emulator.features(state.float())).double()
    assert (projected(raw) - raw).abs().max() > 1e-3 * raw.abs().max()


def test_power_spectrum_sums_to_the_area_mean_square():
    """Parseval on the sphere: sum_l P_l equals the quadrature mean of f^2 (band-limited f)."""
    grid = LatLonGrid(17, 32)
    coeffs = torch.randn(2, 8, 8, dtype=torch.complex128) * torch.tril(torch.ones(8, 8))
    coeffs[..., 0] = coeffs[..., 0].real.to(coeffs.dtype)
    values = synthesis(grid, 7)(coeffs)
    weights = torch.from_numpy(grid.area_weights())  # the quadrature's, exact for f^2 here
    mean_square = (values**2 * weights).sum(dim=(-2, -1))
    spectrum = power_spectrum(values, grid, 7)
    assert spectrum.shape == (2, 8)
    torch.testing.assert_close(spectrum.sum(-1), mean_square, rtol=1e-10, atol=0)


def test_checkpoint_round_trip_is_bitwise(world, tmp_path):
    _, store, config = world
    torch.manual_seed(1)
    emulator = emulator_of(config, store)
    save_checkpoint(emulator, tmp_path / "ck", validation={"score": 1.0})
    loaded = load_checkpoint(tmp_path / "ck", config)
    state = first_states(store)
    assert torch.equal(loaded.step(state), emulator.step(state))
    metadata = json.loads((tmp_path / "ck" / "metadata.json").read_text())
    assert metadata["architecture"]["variables"] == ["psi_upper", "psi_lower"]
    assert metadata["validation"] == {"score": 1.0}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate", "sha256 differs"),
        ("metadata", "corrupt metadata"),
        ("no_weights", "missing model.safetensors"),
        ("not_a_checkpoint", "not a checkpoint"),
        ("wrong_tensors", "cannot be loaded"),
    ],
)
def test_corrupt_checkpoints_fail_with_one_line(world, tmp_path, damage, message):
    _, store, config = world
    folder = save_checkpoint(emulator_of(config, store), tmp_path / "ck")
    weights = folder / WEIGHTS
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "metadata":
        (folder / "metadata.json").write_text('{"format": ')
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "not_a_checkpoint":
        (folder / "metadata.json").unlink()
    else:  # valid safetensors with the right hash but the wrong tensors
        safetensors.torch.save_file({"bogus": torch.zeros(3)}, str(weights))
        metadata = json.loads((folder / "metadata.json").read_text())
        from wxens.models.checkpoint import sha256_file

        metadata["weights_sha256"] = sha256_file(weights)
        (folder / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(folder, config)
    assert "\n" not in str(error.value) and str(folder) in str(error.value)


def test_checkpoint_for_another_grid_or_variables_is_refused(world, tmp_path):
    _, store, config = world
    folder = save_checkpoint(emulator_of(config, store), tmp_path / "ck")
    other_grid = config.model_copy(
        update={"grid": config.grid.model_copy(update={"nlat": 17, "nlon": 32})}
    )
    with pytest.raises(CheckpointError, match=r"trained on grid 9x16 T4, the config has 17x32 T4"):
        load_checkpoint(folder, other_grid)
    swapped = config.model_copy(update={"variables": ["psi_lower", "psi_upper"]})
    with pytest.raises(CheckpointError, match="trained on variables"):
        load_checkpoint(folder, swapped)


def weights_of(folder):
    return safetensors.torch.load_file(str(folder / WEIGHTS))


def last_weights(out):
    """The weights of the state in `out/last`, from the file its state JSON names."""
    name = json.loads((out / LAST / STATE).read_text())["weights_file"]
    return safetensors.torch.load_file(str(out / LAST / name))


def test_training_lowers_the_validation_error_and_keeps_the_best(trained):
    state = json.loads((trained / LAST / STATE).read_text())
    scores = [entry["score"] for entry in state["history"]]
    assert len(scores) == 2
    metadata = json.loads((trained / "metadata.json").read_text())
    assert metadata["validation"]["score"] == min(scores)
    assert metadata["training"]["seed"] == 5
    assert len(metadata["training"]["training_data_sha256"]) == 64


def test_training_beats_the_untrained_network(world, trained):
    """Validation score of the trained emulator against the same network untrained."""
    _, store, config = world
    trainer = Trainer(config, {}, store, 5, trained.parent / "fresh", torch.device("cpu"), True)
    grad_enabled = []  # validation builds no autograd graph
    for module in trainer.emulator.modules():
        module.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    untrained = validate(trainer.emulator.eval(), trainer.validation, 8, 16, 2)["score"]
    best = json.loads((trained / "metadata.json").read_text())["validation"]["score"]
    assert best < 0.7 * untrained
    assert grad_enabled and not any(grad_enabled)


def test_period_windows_equal_the_lazy_store_pairs(world):
    """`PeriodStates` windows against `AnalysisPairs`, which reads the Zarr chunks itself."""
    _, store, config = world
    period = PeriodStates(store, tuple(config.variables), (2026, 2026), torch.device("cpu"))
    starts = np.array([0, 7, period.count(3) - 1])
    inputs, targets = period.windows(starts, 3)
    assert targets.shape == (3, 3, 2, 9, 16) and period.count(3) == len(period.states) - 3
    for steps in (1, 3):
        pairs = AnalysisPairs(store, config.variables, (2026, 2026), steps=steps)
        assert len(pairs) == period.count(steps)
        for row, start in enumerate(starts[:2]):
            first, last = pairs[int(start)]
            assert torch.equal(inputs[row], first) and torch.equal(targets[row, steps - 1], last)
    with pytest.raises(ValueError, match="hold no 5000-step window"):
        period.count(5000)


def test_adjusted_mse_closed_forms(world):
    """AMSE (Subich et al. 2025) against the MSE weighted by the grid's quadrature (in which
    the spectral sums are exact): zero for a perfect forecast; equal to the MSE for a damped
    but coherent one, `a y`; three times the target's mean square for a forecast of zero
    (amplitude term P_y plus 2 P_y decorrelation), where the MSE is once; never below the
    MSE."""
    _, store, config = world
    emulator = emulator_of(config, store)
    grid = emulator.grid
    weights = torch.from_numpy(grid.area_weights()).float()
    torch.manual_seed(0)
    band_limited = emulator.transforms.to_grid(
        emulator.transforms.to_spectral(emulator.std * torch.randn(5, 2, grid.nlat, grid.nlon))
    )
    target, other = band_limited[:3], band_limited[2:]
    scale = emulator.tendency_std
    mean_square = weighted_mse(torch.zeros_like(target), target, weights, scale)
    tolerance = {"rtol": 1e-4, "atol": 1e-6 * float(mean_square.max())}
    torch.testing.assert_close(adjusted_mse(target, target, emulator), 0 * mean_square, **tolerance)
    torch.testing.assert_close(
        adjusted_mse(0.3 * target, target, emulator), 0.49 * mean_square, **tolerance
    )
    zero = adjusted_mse(torch.zeros_like(target), target, emulator)
    torch.testing.assert_close(zero, 3 * mean_square, **tolerance)
    mse = weighted_mse(other, target, weights, scale)
    assert (adjusted_mse(other, target, emulator) >= mse * (1 - 1e-5)).all()


def test_rollout_schedule_sets_the_rollout_length_by_epoch(world, tmp_path):
    _, store, config = world
    settings = config.training.model_copy(update={"rollout_schedule": {2: 2, 4: 8}})
    config = config.model_copy(update={"training": settings})
    trainer = Trainer(config, {}, store, 5, tmp_path / "x", torch.device("cpu"), True)
    assert [trainer.rollout_steps(e) for e in range(6)] == [1, 1, 2, 2, 8, 8]


def test_init_from_starts_at_the_checkpoint_and_is_part_of_the_identity(world, trained, tmp_path):
    """A fine-tune begins with the checkpoint's weights (same validation score before any
    step), records their sha256, and refuses a network of another shape."""
    path, store, config = world
    out = tmp_path / "tuned"
    trainer = Trainer(config, {}, store, 5, out, torch.device("cpu"), True, init_from=trained)
    metadata = json.loads((trained / "metadata.json").read_text())
    assert trainer.identity["init_weights_sha256"] == metadata["weights_sha256"]
    lead = config.training.validation_lead_steps
    score = validate(trainer.emulator.eval(), trainer.validation, 8, 16, lead)["score"]
    assert score == pytest.approx(metadata["validation"]["score"], rel=1e-5)
    wider = config.model_copy(update={"sfno": config.sfno.model_copy(update={"embed_dim": 12})})
    with pytest.raises(CheckpointError, match="is not the config's sfno"):
        Trainer(wider, {}, store, 5, out, torch.device("cpu"), True, init_from=trained)
    shutil.copytree(trained, out)  # a run started from scratch cannot be resumed as a fine-tune
    code, output = run_cli(
        "train", "--config", path, "--seed", 5, "--out", out, "--init-from", trained, "--quiet"
    )
    assert code == 1 and "holds a run with another init weights sha256" in output


def test_same_seed_same_weights_and_resume_after_sigkill(world, trained, tmp_path):
    """A second run with seed 5, SIGKILLed after its first epoch and run again, ends with
    weights bitwise equal to the uninterrupted run's."""
    path, _, _ = world
    out = tmp_path / "again"
    command = [sys.executable, "-m", "wxens.forecast.cli", "train", "--config", str(path)]
    command += ["--seed", "5", "--out", str(out), "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / LAST / STATE).exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = json.loads((out / LAST / STATE).read_text())["epoch"]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr
    assert interrupted == 1  # killed between the two epochs, so the resume did real work
    for name, value in weights_of(trained).items():
        assert torch.equal(value, weights_of(out)[name]), name
    assert last_weights(out).keys() == last_weights(trained).keys()


def test_max_epochs_stops_and_continue_finishes_a_cut_short_schedule(world, trained, tmp_path):
    """`--max-epochs 1` stops the tiny run (2 epochs of 6 steps, warm-up W = 2) after its first
    epoch, where the uninterrupted run was then, unfinished. `--continue` finishes it from the
    checkpoint alone (no last/): its config, seed, epoch and step, fresh AdamW moments, and a
    learning rate that warms up again, lr(s) = lr0 f(s) min(1, (s - s0 + 1) / W) with the
    cosine f(s) = (1 + cos(pi (s - W) / (12 - W))) / 2."""
    path, _, config = world
    cut = tmp_path / "cut"
    arguments = ("--config", path, "--seed", 5, "--quiet")
    code, output = run_cli("train", *arguments, "--out", cut, "--max-epochs", 1)
    assert code == 0 and "stopped after epoch 1 of 2" in output
    reference = json.loads((trained / "metadata.json").read_text())["training"]["history"]
    training = json.loads((cut / "metadata.json").read_text())["training"]
    assert "finished" not in training and training["history"] == reference[:1]
    legacy = tmp_path / "legacy"  # a state saved under the fixed file names resumes as well
    shutil.copytree(cut, legacy)
    state = json.loads((legacy / LAST / STATE).read_text())
    for part, name in (("weights", WEIGHTS), ("optimizer", OPTIMIZER)):
        (legacy / LAST / state.pop(f"{part}_file")).rename(legacy / LAST / name)
    (legacy / LAST / STATE).write_text(json.dumps(state))
    code, output = run_cli("train", *arguments, "--out", legacy)
    assert code == 0 and json.loads(output.strip().splitlines()[-1]) == reference[1]
    checkpoint = tmp_path / "checkpoint"  # what a run that lost its last/ leaves
    checkpoint.mkdir()
    for name in ("metadata.json", WEIGHTS):
        shutil.copy(cut / name, checkpoint / name)

    trainer = Trainer.continuing(checkpoint, tmp_path / "finished", torch.device("cpu"), quiet=True)
    assert (trainer.epoch, trainer.step, len(trainer.optimizer.state)) == (1, 6, 0)
    for name, value in trainer.emulator.weights().items():
        assert torch.equal(value, weights_of(checkpoint)[name]), name
    lr0, total = config.training.learning_rate, trainer.total_steps()
    cosine = [(1 + np.cos(np.pi * (s - 2) / 10)) / 2 for s in (6, 7)]
    assert trainer.learning_rate(6, total) == pytest.approx(lr0 * cosine[0] / 2, rel=1e-12)
    assert trainer.learning_rate(7, total) == pytest.approx(lr0 * cosine[1], rel=1e-12)
    summary = trainer.run()
    assert summary["finished"] and [e["epoch"] for e in summary["history"]] == [0, 1]
    assert summary["history"][0] == reference[0] and summary["history"][1] != reference[1]
    training = json.loads((tmp_path / "finished" / "metadata.json").read_text())["training"]
    assert training["continues"]["step"] == 6 and training["finished"]
    # The starting weights, validated again on the same analyses, score what the cut run
    # recorded for them; epoch 1 must beat that score to replace them.
    start = training["start_validation"]
    assert start["score"] == pytest.approx(reference[0]["score"], rel=1e-9)
    best = min(start["score"], summary["history"][1]["score"])
    assert summary["best_score"] == best
    code, output = run_cli("train", "--continue", checkpoint, "--out", tmp_path / "finished")
    assert code == 0 and json.loads(output.strip().splitlines()[-1]) == summary["history"][-1]

    other = tmp_path / "other.zarr"  # another truth run: not the data it was trained on
    data = {**yaml.safe_load(path.read_text()), "seed": 99}
    write_truth(
        parse_config(data), parse_config(data).model_dump(mode="json"), 3, other, quiet=True
    )
    for args, message in [
        ((trained,), "finished its schedule; nothing to continue"),
        ((checkpoint, "--seed", 5), "--continue takes the checkpoint's own config, seed"),
        ((checkpoint, "--analyses", other), "not the data"),
    ]:
        code, output = run_cli("train", "--continue", *args, "--out", tmp_path / "refused")
        assert code == 1 and message in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()


def test_a_run_killed_mid_epoch_resumes_there_with_the_same_weights(world, trained, tmp_path):
    """With `--save-minutes 0` the state goes to last/ after every batch; a run stopped and
    SIGKILLed within its first epoch resumes at that batch and ends bitwise where the
    uninterrupted run (seed 5) ended."""
    path, _, _ = world
    out = tmp_path / "mid"
    command = [sys.executable, "-m", "wxens.forecast.cli", "train", "--config", str(path)]
    command += ["--seed", "5", "--out", str(out), "--quiet", "--save-minutes", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, state = time.time() + 300, {}
    while state.get("batch", 0) < 2 and process.poll() is None and time.time() < deadline:
        if (out / LAST / STATE).exists():
            state = json.loads((out / LAST / STATE).read_text())
        time.sleep(0.005)
    process.send_signal(signal.SIGSTOP)
    interrupted = json.loads((out / LAST / STATE).read_text())
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert interrupted["epoch"] == 0 and 2 <= interrupted["batch"] < 6
    assert interrupted["step"] == interrupted["batch"]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    assert finished.returncode == 0, finished.stderr
    for name, value in weights_of(trained).items():
        assert torch.equal(value, weights_of(out)[name]), name


def test_resume_refuses_another_seed(world, trained, tmp_path):
    path, _, _ = world
    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    code, output = run_cli("train", "--config", path, "--seed", 6, "--out", out, "--quiet")
    assert code == 1 and "holds a run with another seed" in output


@pytest.mark.parametrize(
    ("seed", "edit", "message"),
    [
        ("x1", {}, "--seed must be an integer, got 'x1'"),
        ("1", {"periods": {"train": {"first": 2020, "last": 2025}}}, "years 2020-2025 are not"),
        ("1", {"variables": ["psi_upper"], "analyses": "/nonexistent.zarr"}, "no such store"),
    ],
)
def test_train_bad_input(world, tmp_path, seed, edit, message):
    path, _, _ = world
    data = yaml.safe_load(path.read_text())
    for key, value in edit.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    code, output = run_cli("train", "--config", bad, "--seed", seed, "--out", tmp_path / "o")
    assert code == 1 and message in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "metadata.json").exists()


def test_nwp_baseline_at_the_truth_resolution_reproduces_the_truth(tmp_path):
    """With the model grid at the truth's own truncation, coarse-graining is the identity and
    the NWP baseline is the truth model: a step from one analysis lands on the next."""
    config = parse_config(
        {
            "seed": 3,
            "truth": {"truncation": 10, "spinup_days": 5, "timestep_minutes": 60},
            "grid": {"nlat": 17, "nlon": 32, "truncation": 10},
        }
    )
    store = write_truth(config, {}, 0.01, tmp_path / "t.zarr", quiet=True)
    fields = open_analyses(store)[["psi_upper", "psi_lower"]].to_array("channel")
    states = torch.from_numpy(fields.transpose("time", "channel", ...).values.astype(np.float64))
    nwp = QGEmulator(config)
    step = nwp.step(states[:-1])
    error = (step - states[1:]).abs().max() / states.abs().max()
    change = (states[1:] - states[:-1]).abs().max() / states.abs().max()
    assert error < 1e-6 < change
    # Its own, longer time step (two 3 h steps for the truth's six 1 h steps): close, not equal.
    longer = QGEmulator(config.model_copy(update={"nwp": NWPConfig(timestep_minutes=180)}))
    assert longer.steps == 2 and nwp.steps == 6
    error = (longer.step(states[:-1]) - states[1:]).abs().max() / states.abs().max()
    assert 1e-6 < error < 0.01 * change
    with pytest.raises(ValueError, match=r"nwp\.timestep_minutes: 70\.0 does not divide the 6 h"):
        parse_config({"nwp": {"timestep_minutes": 70}})


def test_nwp_baseline_needs_both_layers(world):
    _, _, config = world
    with pytest.raises(ValueError, match="needs variables"):
        QGEmulator(config.model_copy(update={"variables": ["psi_upper"]}))


def test_skill_json_against_hand_computed_references(world, trained):
    path, store, _ = world
    code, output = run_cli(
        "skill", "--config", path, "--checkpoints", trained, "--init-dates", 3,
        "--lead-days", 1, "--stability-days", 3, "--json", "--quiet",
    )  # fmt: skip
    assert code == 0, output
    scores = json.loads(output)
    assert scores["lead_hours"] == [6.0, 12.0, 18.0, 24.0]
    assert set(scores["rmse"]) == {"persistence", "climatology", "sfno", "nwp"}
    dataset = xr.open_zarr(store, consolidated=False)
    test = dataset.sel(time=slice("2027", "2027"))
    inits = np.datetime64(scores["init_times"][1], "ns")
    index = int(np.searchsorted(test["time"].values, inits))
    assert index == round((len(test["time"]) - 1 - 4) / 2)
    weights = area_weights(dataset["latitude"].values, dataset["longitude"].values)
    picks = [0, index, len(test["time"]) - 1 - 4]
    field = test["psi_lower"].values.astype(np.float64)
    lead = 2
    persistence = np.sqrt(
        np.mean([(weights * (field[i + lead] - field[i]) ** 2).sum() for i in picks])
    )
    assert scores["rmse"]["persistence"]["psi_lower"][lead - 1] == pytest.approx(persistence, 1e-6)
    climate = dataset["psi_lower"].sel(time="2025").values.astype(np.float64).mean(0)
    climatology = np.sqrt(
        np.mean([(weights * (field[i + lead] - climate) ** 2).sum() for i in picks])
    )
    assert scores["rmse"]["climatology"]["psi_lower"][lead - 1] == pytest.approx(climatology, 1e-6)
    check = scores["rollout_checks"]["sfno"]
    assert check["finite"] and check["days"] == 3 and check["spectrum_ratio"] is None


def test_skill_bad_input(world, trained, tmp_path):
    path, _, _ = world
    code, output = run_cli("skill", "--config", path, "--checkpoints", tmp_path, "--quiet")
    assert code == 1 and "neither a checkpoint nor a folder" in output
    code, output = run_cli("skill", "--config", path, "--checkpoints", trained, "--lead-days", 0.1)
    assert code == 1 and "not a positive multiple" in output


@pytest.mark.skipif(not os.path.isdir("checkpoints/default"), reason="no committed checkpoints")
def test_committed_checkpoints_load_under_the_default_config():
    config = load_config("configs/default.yaml")
    folders = sorted(p.path for p in os.scandir("checkpoints/default") if p.is_dir())
    assert len(folders) >= 4
    seeds = set()
    for folder in folders:
        emulator = load_checkpoint(folder, config)
        assert os.path.getsize(os.path.join(folder, WEIGHTS)) <= 10e6
        seeds.add(emulator.metadata["training"]["seed"])
    assert len(seeds) == len(folders)
