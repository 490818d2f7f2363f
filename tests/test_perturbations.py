"""Initial-condition and model perturbations (`forecast.perturbations`) on a tiny real QG world."""

import numpy as np
import pytest
import torch
from scipy.special import eval_legendre
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import ConfigError, PerturbationConfig, parse_config
from wxens.data_pipeline.sphere import (
    EARTH_RADIUS_M,
    LatLonGrid,
    gaussian_random_field,
    shaped_random_field,
    white_coefficients,
)
from wxens.data_pipeline.training_data import area_weights, compute_normalisation
from wxens.data_pipeline.truth import model_grid, write_truth
from wxens.forecast.perturbations import (
    CHECKPOINT_GROUP,
    BredVectorPerturbation,
    GaussianRandomFieldPerturbation,
    ParameterPerturbation,
    assign_checkpoints,
    initial_condition_perturbation,
    member_generator,
)
from wxens.forecast.runner import checkpoint_group_size
from wxens.models.emulator import FixedBatchEmulator
from wxens.models.nwp import QGEmulator
from wxens.models.sfno import SFNOEmulator

INIT = np.datetime64("2027-03-01T06", "h")
TINY = {
    "seed": 4,
    "truth": {"truncation": 10, "spinup_days": 2, "timestep_minutes": 360},
    "grid": {"nlat": 9, "nlon": 16, "truncation": 4},
    "periods": {"start": "2025-01-01"},
    "sfno": {"embed_dim": 8, "num_layers": 2},
}


def generator_for(k: int) -> torch.Generator:
    return member_generator(7, INIT, k, "cpu")


def hemispheric_rms_reference(field: np.ndarray, latitude: np.ndarray) -> np.ndarray:
    """`(..., lat, lon)` -> `(..., 2)`: sqrt(sum w x^2 / sum w) over latitude >= 0, then < 0."""
    weights = area_weights(latitude, np.arange(field.shape[-1]) * 360.0 / field.shape[-1])
    rows = []
    for mask in (latitude >= 0, latitude < 0):
        w = weights[mask]
        rows.append(np.sqrt((w * field[..., mask, :] ** 2).sum((-2, -1)) / w.sum()))
    return np.stack(rows, axis=-1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: torch's thread pool only costs here (50x on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny config, the normalisation statistics of a one-year real truth store, and its
    last analysis `(channel, lat, lon)` in float64."""
    config = parse_config(TINY)
    store = tmp_path_factory.mktemp("perturb") / "truth.zarr"
    write_truth(config, {}, 1, store, quiet=True)
    dataset = open_analyses(store)
    stats = compute_normalisation(dataset, config.variables, (2025, 2025))
    fields = dataset[config.variables].to_array("channel").isel(time=-1)
    return config, stats, torch.from_numpy(fields.values.astype(np.float64))


@pytest.fixture(scope="module")
def bred(world):
    """Bred-vector perturbation of the NWP baseline (stepped in fixed batches of 8, so its
    numbers per state do not depend on the batch) and members 0..5 from it."""
    config, stats, analysis = world
    rmse_48h = {"psi_upper": 0.3 * analysis[0].std().item(), "psi_lower": 1e6}
    emulator = FixedBatchEmulator(QGEmulator(config), 8)
    perturbation = initial_condition_perturbation(
        config.perturbation, emulator, config.grid.truncation, stats, rmse_48h
    )
    assert isinstance(perturbation, BredVectorPerturbation)
    return perturbation, rmse_48h, perturbation(analysis, torch.arange(6), generator_for)


def test_member_generator_depends_on_the_three_numbers_only():
    def first(*key):
        return torch.rand(4, generator=member_generator(*key, "cpu"))

    same = first(7, np.datetime64("2027-03-01T06:00:00", "s"), 3)
    assert torch.equal(first(7, INIT, 3), same)
    for other in [(8, INIT, 3), (7, INIT + np.timedelta64(6, "h"), 3), (7, INIT, 4)]:
        assert not torch.equal(first(*other), same)


def test_random_field_statistics_and_member_independence():
    """1000 members: mean ~ 0, area-mean variance ~ a^2, correlation falling with distance
    along the equator and along a meridian; a member computed alone is bitwise the one
    computed among 1000."""
    grid = LatLonGrid(9, 16)
    perturbation = GaussianRandomFieldPerturbation(grid, 4, [2.0, 0.5], 2.0e6)
    analysis = torch.zeros(2, 9, 16, dtype=torch.float64)
    members = 1000
    states = perturbation(analysis, range(members), generator_for).numpy()
    assert states.shape == (members, 2, 9, 16)
    amplitude = np.array([2.0, 0.5])
    assert np.abs(states.mean(0)).max() < 5 * amplitude.max() / np.sqrt(members)
    variance = (states.var(0) * area_weights(grid.latitude, grid.longitude)).sum((-2, -1))
    np.testing.assert_allclose(variance, amplitude**2, rtol=0.05)

    field = states[:, 0] / amplitude[0]
    along_equator = [np.mean(field[:, 4] * np.roll(field[:, 4], -k, axis=-1)) for k in range(4)]
    along_meridian = [np.mean(field[:, 4] * field[:, 4 - k]) for k in range(4)]
    assert np.all(np.diff(along_equator) < -0.1) and np.all(np.diff(along_meridian) < -0.1)

    for alone in ([37], [999], [998, 3]):
        assert torch.equal(
            perturbation(analysis, alone, generator_for), torch.from_numpy(states[alone])
        )


def test_random_field_is_isotropic():
    """The variance at each latitude is a^2 and the correlation along the equator is the
    isotropic sum_l (2l+1) s_l P_l(cos gamma), normalised (s_l the field's spectrum)."""
    grid, truncation, length = LatLonGrid(9, 16), 4, 2.0e6
    perturbation = GaussianRandomFieldPerturbation(grid, truncation, [1.0], length)
    field = perturbation(torch.zeros(1, 9, 16), range(1000), generator_for).double().numpy()[:, 0]
    degree = np.arange(1, truncation + 1)
    spectrum = np.exp(-0.5 * degree * (degree + 1) * (length / EARTH_RADIUS_M) ** 2)
    gamma = np.radians(grid.longitude[:5])
    expected = [
        np.sum((2 * degree + 1) * spectrum * eval_legendre(degree, np.cos(g))) for g in gamma
    ]
    measured = [np.mean(field[:, 4] * np.roll(field[:, 4], -k, axis=-1)) for k in range(5)]
    np.testing.assert_allclose(measured, np.array(expected) / expected[0], atol=0.06)
    np.testing.assert_allclose(field.var(0).mean(-1), np.ones(9), rtol=0.15)


def test_random_field_drawn_per_member_and_shaped_per_batch_is_the_same_field():
    """`gaussian_random_field` from one generator equals its white draws shaped later, and
    shaping a stack of members' white draws gives each member bitwise what it gets alone; each
    field has area-mean variance 1 (the sum of w_m |f_lm|^2 / (4 pi) over (l, m))."""
    truncation, length = 6, 1.5e6
    members = [torch.Generator().manual_seed(11 + k) for k in range(5)]
    alone = [gaussian_random_field((2,), truncation, length, g, torch.float32) for g in members]
    members = [torch.Generator().manual_seed(11 + k) for k in range(5)]
    white = torch.stack([white_coefficients((2,), truncation, g) for g in members])
    shaped = shaped_random_field(white, truncation, length, torch.float32)
    assert shaped.dtype == torch.complex64 and torch.equal(shaped, torch.stack(alone))
    weights = torch.tensor([1.0] + [2.0] * truncation, dtype=torch.float64)
    variance = (shaped.to(torch.complex128).abs() ** 2 * weights).sum((-2, -1)) / (4 * np.pi)
    np.testing.assert_allclose(variance.numpy(), 1.0, rtol=1e-6)
    assert torch.all(white[..., 0].imag == 0) and torch.all(shaped[..., 0, :] == 0)


def test_random_field_amplitude_from_the_normalisation_statistics(world):
    """Each member's area-mean square perturbation is (fraction x anomaly_std)^2 exactly: the
    sphere's integral, which the grid's quadrature weights give exactly for a band-limited
    field (cell-area weights only to about 1 %)."""
    config, stats, analysis = world
    settings = PerturbationConfig(initial="random_field", random_field_fraction=0.2)
    emulator = QGEmulator(config)
    perturbation = initial_condition_perturbation(settings, emulator, config.grid.truncation, stats)
    dx = (perturbation(analysis, [0, 5], generator_for) - analysis).numpy()
    weights = emulator.grid.area_weights()
    mean_square = (weights * dx**2).sum((-2, -1))
    anomaly_std = np.array([stats.variables[name].anomaly_std for name in config.variables])
    np.testing.assert_allclose(mean_square, np.tile((0.2 * anomaly_std) ** 2, (2, 1)), rtol=1e-9)


def test_bred_vectors_have_the_target_hemispheric_rms(world, bred):
    _, _, analysis = world
    perturbation, rmse_48h, states = bred
    dx = (states[0::2] - analysis).numpy()
    rms = hemispheric_rms_reference(dx, perturbation.emulator.grid.latitude)
    target = [0.35 * rmse_48h["psi_upper"], 0.35 * rmse_48h["psi_lower"]]
    np.testing.assert_allclose(
        rms, np.broadcast_to(np.array(target)[:, None], rms.shape), rtol=1e-5
    )
    seed = perturbation.seed.field(generator_for(0), analysis)
    assert not torch.allclose(states[0] - analysis, perturbation.rescale(seed), rtol=0.1)


def test_bred_pairs_are_centred_and_members_reproduce_alone(world, bred):
    _, _, analysis = world
    perturbation, _, states = bred
    torch.testing.assert_close(
        states[0::2] + states[1::2], 2 * analysis.expand(3, -1, -1, -1), rtol=1e-12, atol=0
    )
    assert not torch.equal(states[0], states[2])
    for alone in ([5], [2], [3, 0]):
        assert torch.equal(perturbation(analysis, alone, generator_for), states[alone])


def test_bred_vectors_need_every_variable_rmse(world):
    config, _, _ = world
    emulator = QGEmulator(config)
    seed = GaussianRandomFieldPerturbation(emulator.grid, 4, [1.0, 1.0], 1e6)
    with pytest.raises(ValueError, match="lacks the variables"):
        BredVectorPerturbation(emulator, seed, {"psi_upper": 1.0})


def test_checkpoints_are_spread_evenly():
    for n_checkpoints in range(1, 8):
        for group in (1, 2):
            for first in (0, 6):
                for count in range(1, 30):
                    members = np.arange(first, first + group * count)
                    checkpoint = assign_checkpoints(members, n_checkpoints, group)
                    counts = np.bincount(checkpoint, minlength=n_checkpoints)
                    assert counts.max() - counts.min() <= group
                    assert np.array_equal(checkpoint[::group], checkpoint[group - 1 :: group])
    np.testing.assert_array_equal(assign_checkpoints([7], 3), assign_checkpoints(range(9), 3)[[7]])
    pairs = assign_checkpoints(range(8), 4, group_size=2)
    np.testing.assert_array_equal(pairs, [0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(ValueError, match="need a checkpoint"):
        assign_checkpoints([0, 1], 0)
    # The default groups of two bred pairs: 100 members fill 13 passes of 8 (3.8 % padding),
    # pairs 14 (10.7 %), single members 16 (21.9 %).
    cases = ((CHECKPOINT_GROUP, [28, 24, 24, 24], 13), (2, [26, 26, 24, 24], 14), (1, [25] * 4, 16))
    for group, members, passes in cases:
        counts = np.bincount(assign_checkpoints(range(100), 4, group))
        assert counts.tolist() == members and sum(-(-counts // 8)) == passes


def test_kinds_take_their_shares_of_the_members():
    """Shares 4, 3, 3 of groups of 2 (kind 0 on four checkpoints): every 20 consecutive members
    are 8, 6 and 6 of the kinds, pairs stay on one checkpoint, a member alone gets the same."""
    kinds = [0, 0, 0, 0, 1, 2]
    checkpoint = assign_checkpoints(range(100), kinds, 2, [4, 3, 3])
    np.testing.assert_array_equal(checkpoint[:20], [0, 0, 1, 1, 2, 2, 3, 3] + [4] * 6 + [5] * 6)
    for start in range(0, 100, 20):
        np.testing.assert_array_equal(np.bincount(checkpoint[start : start + 20]), [2] * 4 + [6, 6])
    np.testing.assert_array_equal(checkpoint[::2], checkpoint[1::2])
    np.testing.assert_array_equal(assign_checkpoints([57], kinds, 2, [4, 3, 3]), checkpoint[[57]])
    # one kind: the checkpoints in turn, as before shares existed
    np.testing.assert_array_equal(assign_checkpoints(range(6), [0, 0, 0]), [0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="no checkpoint of kind 1"):
        assign_checkpoints(range(4), [0, 0, 2], 1, [1, 1, 1])
    with pytest.raises(ValueError, match="must index the 2 shares"):
        assign_checkpoints(range(4), [0, 2], 1, [1, 1])


def test_member_kinds_in_the_config():
    """A list of kinds or a mapping with settings; a kind's own initial perturbation; the
    deterministic SFNO takes no noise scale; a bred kind keeps the checkpoint groups even."""
    listed = parse_config({"ensemble": {"kinds": ["sfno", "fgn"]}}).ensemble.kinds
    assert list(listed) == ["sfno", "fgn"] and listed["fgn"].share == 1
    mixed = parse_config(
        {
            "perturbation": {"initial": "bred_vector"},
            "ensemble": {"kinds": {"sfno": None, "fgn": {"share": 3, "initial": "none"}}},
        }
    )
    assert mixed.initial_perturbation("sfno") == "bred_vector"
    assert mixed.initial_perturbation("fgn") == "none"
    assert mixed.initial_perturbation("nwp") == "bred_vector"  # not a kind: `perturbation`
    generative = {"perturbation": {"initial": "none"}, "ensemble": {"kinds": {"fgn": {}}}}
    assert checkpoint_group_size(parse_config(generative)) == 4
    with pytest.raises(ConfigError, match=r"sfno\.noise_scale: SFNO members draw no noise"):
        parse_config({"ensemble": {"kinds": {"sfno": {"noise_scale": 2}}}})
    bred_kind = {"initial": "bred_vector"}
    odd = {"perturbation": {"initial": "none"}, "ensemble": {"checkpoint_group": 3}}
    with pytest.raises(ConfigError, match="would split a bred pair"):
        parse_config({**odd, "ensemble": {**odd["ensemble"], "kinds": {"sfno": bred_kind}}})


def test_checkpoint_group_keeps_bred_pairs_together():
    assert checkpoint_group_size(parse_config({})) == 4  # two bred pairs by default
    assert checkpoint_group_size(parse_config({"perturbation": {"initial": "none"}})) == 4
    assert checkpoint_group_size(parse_config({"ensemble": {"checkpoint_group": 2}})) == 2
    assert checkpoint_group_size(parse_config({"ensemble": {"checkpoint_group": 4}})) == 4
    with pytest.raises(ConfigError, match=r"ensemble\.checkpoint_group: 3 would split a bred pair"):
        parse_config({"ensemble": {"checkpoint_group": 3}})
    odd = {"ensemble": {"checkpoint_group": 3}, "perturbation": {"initial": "random_field"}}
    assert checkpoint_group_size(parse_config(odd)) == 3


def test_parameter_perturbation(world):
    config, stats, analysis = world
    emulator = SFNOEmulator(
        model_grid(config), config.grid.truncation, config.variables, stats, config.sfno
    )
    original = [p.detach().clone() for p in emulator.network.parameters()]
    assert ParameterPerturbation(0.0)(emulator, generator_for(1)) is emulator
    sigma = 0.05
    perturbed = ParameterPerturbation(sigma)(emulator, generator_for(1))
    for before, after in zip(original, emulator.network.parameters(), strict=True):
        assert torch.equal(before, after)  # the original is left alone
    ratios = torch.cat(
        [
            (after / before - 1).real.flatten()
            for before, after in zip(original, perturbed.network.parameters(), strict=True)
        ]
    )
    ratios = ratios[ratios.isfinite()].double()
    assert ratios.numel() > 1000
    assert abs(ratios.std().item() / sigma - 1) < 0.1
    assert abs(ratios.mean().item()) < 4 * sigma / ratios.numel() ** 0.5

    again = ParameterPerturbation(sigma)(emulator, generator_for(1))
    other = ParameterPerturbation(sigma)(emulator, generator_for(2))

    def same(a, b):  # per parameter with a nonzero entry (zeros stay zero)
        pairs = zip(a.network.parameters(), b.network.parameters(), strict=True)
        return [torch.equal(x, y) for x, y in pairs if x.count_nonzero() > 0]

    assert all(same(perturbed, again))
    assert not any(same(perturbed, other))
    state = analysis.float()[None]
    assert not torch.equal(perturbed.step(state), emulator.step(state))


@pytest.mark.parametrize(
    ("section", "key"),
    [({"initial": "gaussian"}, "perturbation.initial"), ({"sigma": 0.1}, "perturbation.sigma")],
)
def test_bad_perturbation_config_names_the_dotted_key(section, key):
    with pytest.raises(ConfigError, match=key):
        parse_config({"perturbation": section})


def test_perturbation_config_defaults():
    defaults = parse_config({}).perturbation
    assert (defaults.initial, defaults.bred_fraction, defaults.bred_cycles) == (
        "bred_vector",
        0.35,
        4,
    )
    assert defaults.parameter_sigma == 0.0


def test_bad_members_and_inputs_fail_with_one_line(world):
    config, stats, analysis = world
    perturbation = GaussianRandomFieldPerturbation(LatLonGrid(9, 16), 4, [1.0, 1.0], 1e6)
    for members, message in [
        ([], "non-empty"),
        (torch.tensor([[0, 1]]), "non-empty 1-D"),
        ([0, -1], "must be >= 0"),
        ([0.5], "integers"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            perturbation(analysis, members, generator_for)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="initial_state must be"):
        perturbation(analysis[0], [0], generator_for)
    with pytest.raises(ValueError, match="48 h RMSE"):
        initial_condition_perturbation(
            PerturbationConfig(), QGEmulator(config), config.grid.truncation, stats
        )
