"""The matrix-product SFNO of models/cpu_bf16.py against torch-harmonics' own forward and
autograd: `sfno.precision: bf16-cpu`, its DFT matrices against torch.fft, the emulator's
switch, its float32 fallback, and the float32 view that CPU training runs."""

import numpy as np
import pytest
import torch
import wxens.models.cpu_bf16 as cpu_bf16
from wxens.data_pipeline.config import parse_config
from wxens.data_pipeline.sphere import LatLonGrid
from wxens.data_pipeline.training_data import NormalisationStats
from wxens.models.cpu_bf16 import dft_matrices, matmul_network, training_network
from wxens.models.fgn import FGNEmulator, conditioning
from wxens.models.settings import SFNOConfig
from wxens.models.sfno import SFNOEmulator, build_network, warn_float32_fallback
from wxens.models.vae import LatentDraw, VAEEmulator

from tests.conftest import TINY_WORLD

needs_bf16 = pytest.mark.skipif(
    not cpu_bf16.cpu_has_bf16_matrix_units(), reason="this CPU has no bfloat16 matrix units"
)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).detach().norm() / reference.detach().norm())


@pytest.mark.parametrize(
    ("nlon", "mmax"), [(64, 22), (16, 5), (16, 9), (12, 7)], ids=["T21", "T4", "nyquist", "above"]
)
def test_dft_matrices_equal_torch_fft(nlon, mmax):
    """Analysis: rfft(norm="forward") truncated at M (zero above the Nyquist order);
    synthesis: irfft(n=W, norm="forward") of M orders, imaginary parts of m = 0 and the
    Nyquist order ignored."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, nlon, dtype=torch.float64, generator=generator)
    analysis, synthesis = dft_matrices(nlon, mmax)
    spectrum = torch.fft.rfft(x, norm="forward")
    expected = torch.zeros(5, mmax, dtype=torch.complex128)
    kept = min(mmax, nlon // 2 + 1)
    expected[:, :kept] = spectrum[:, :kept]
    computed = x @ analysis.T  # rows: Re X_m, then Im X_m
    np.testing.assert_allclose(computed[:, :mmax], expected.real, atol=1e-14)
    np.testing.assert_allclose(computed[:, mmax:], expected.imag, atol=1e-14)
    coefficients = torch.complex(*torch.randn(2, 5, mmax, dtype=torch.float64))
    stacked = torch.cat([coefficients.real, coefficients.imag], 1)
    expected_grid = torch.fft.irfft(coefficients[:, :kept], n=nlon, norm="forward")
    np.testing.assert_allclose(stacked @ synthesis.T, expected_grid, atol=1e-12)


def sfno_network(nlat: int, nlon: int, truncation: int) -> torch.nn.Module:
    """A torch-harmonics SFNO with random weights, as `build_network` makes it."""
    torch.manual_seed(1)
    grid = LatLonGrid(nlat, nlon)
    sfno = SFNOConfig(embed_dim=16, num_layers=3)
    return build_network(grid, 2, sfno, truncation).eval()


@pytest.mark.parametrize(("nlat", "nlon", "truncation"), [(33, 64, 21), (9, 16, 4)])
def test_float32_matrix_products_equal_torch_harmonics(nlat, nlon, truncation):
    """In float32 the token-layout steps are torch-harmonics' forward, to round-off."""
    network = sfno_network(nlat, nlon, truncation)
    x = torch.randn(3, 6, nlat, nlon, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = network(x)
        computed = matmul_network(network, torch.float32)(x)
    assert relative_error(computed, reference) < 1e-5
    assert computed.dtype == torch.float32


@needs_bf16
def test_bfloat16_network_is_close_and_blocks_are_swapped():
    network = sfno_network(33, 64, 21)
    fast = matmul_network(network)
    assert all(type(b.mlp) is cpu_bf16.MatmulMLP for b in fast.blocks)
    assert all(type(b.global_conv) is cpu_bf16.MatmulSpectralConv for b in fast.blocks)
    assert type(network.blocks[0].mlp) is not cpu_bf16.MatmulMLP  # the original is untouched
    x = torch.randn(4, 6, 33, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        error = relative_error(fast(x), network(x))
    assert 1e-4 < error < 0.03  # bfloat16's 8-bit mantissa, not float32's round-off


def tiny_config(precision: str):
    data = {**TINY_WORLD, "sfno": {**TINY_WORLD["sfno"], "precision": precision}}
    return parse_config(data)


def tiny_emulator(kind: type[SFNOEmulator], precision: str) -> SFNOEmulator:
    """A new emulator of the tiny world at `precision`, the same weights for every call."""
    config = tiny_config(precision)
    names = config.variables
    unit = {"units": "1", "mean": 0.0, "std": 1.0, "tendency_mean": 0.0, "tendency_std": 0.1}
    profile = {"zonal_mean": [0.0] * config.grid.nlat, "anomaly_std": 1.0}
    stats = NormalisationStats.from_dict(
        {
            "variables": {name: {**unit, **profile} for name in names},
            "years": [2025, 2025],
            "timestep_hours": 6.0,
        }
    )
    torch.manual_seed(4)
    return kind.from_config(config, stats).eval()


def tiny_state(seed: int) -> torch.Tensor:
    return torch.randn(2, 2, 9, 16, generator=torch.Generator().manual_seed(seed))


@needs_bf16
def test_emulator_steps_in_bfloat16_outside_autograd_only():
    """`bf16-cpu`: `step` runs the bfloat16 copy, a forward with gradients the float32
    network; new weights make a new copy."""
    fast, plain = tiny_emulator(SFNOEmulator, "bf16-cpu"), tiny_emulator(SFNOEmulator, "float32")
    state = tiny_state(5)
    stepped, reference = fast.step(state), plain.step(state)
    assert not torch.equal(stepped, reference)
    assert relative_error(stepped - state, reference - state) < 0.03
    assert torch.equal(fast(state), plain(state))  # gradients on: float32
    with torch.no_grad():
        for ours, theirs in zip(fast.network.parameters(), plain.network.parameters(), strict=True):
            ours.mul_(-1.5), theirs.mul_(-1.5)
    changed = plain.step(state)
    assert relative_error(fast.step(state) - state, changed - state) < 0.03
    assert relative_error(changed - state, reference - state) > 0.5


def without_bf16_units(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process read the CPU as one without bfloat16 matrix units."""
    monkeypatch.setattr(cpu_bf16, "cpu_has_bf16_matrix_units", lambda: False)
    monkeypatch.setattr("wxens.models.sfno.cpu_has_bf16_matrix_units", lambda: False)


@pytest.mark.parametrize(
    ("bf16_units", "tolerance"), [pytest.param(True, 0.05, marks=needs_bf16), (False, 1e-5)]
)
def test_fgn_noise_reaches_the_matrix_product_blocks(bf16_units, tolerance, monkeypatch):
    """The generative kinds' conditional norms act in the matrix-product copy (bfloat16, or
    float32 on a CPU without bfloat16 units): noise changes the step as it does in
    torch-harmonics' float32 network."""
    if not bf16_units:
        without_bf16_units(monkeypatch)
    fast, plain = tiny_emulator(FGNEmulator, "bf16-cpu"), tiny_emulator(FGNEmulator, "float32")
    for ours, theirs in zip(fast.network.blocks, plain.network.blocks, strict=True):
        torch.nn.init.normal_(ours.norm.modulation.weight, std=0.5)  # zero at init
        theirs.norm.modulation.weight.data.copy_(ours.norm.modulation.weight.data)
    state = tiny_state(6)
    noise = torch.randn(2, *fast.noise_shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        changes = [e(state, noise) - e(state, torch.zeros_like(noise)) for e in (fast, plain)]
    assert changes[1].abs().max() > 0
    assert relative_error(*changes) < tolerance


def test_a_cpu_without_bf16_warns_in_one_line_and_steps_float32_matrix_products(monkeypatch):
    """Without bfloat16 units, `bf16-cpu` steps the same matrix-product copy in float32:
    torch-harmonics' float32 step to round-off, not bit for bit."""
    without_bf16_units(monkeypatch)
    fast = tiny_emulator(SFNOEmulator, "float32")
    warn_float32_fallback.cache_clear()  # it warns once a process
    with pytest.warns(UserWarning, match=r"^sfno.precision bf16-cpu: this CPU has no bfloat16"):
        fast.use_precision("bf16-cpu")
    with torch.no_grad():
        copy = fast.runtime_network()
    assert all(type(b.mlp) is cpu_bf16.MatmulMLP for b in copy.blocks)
    assert all(b.mlp.weight1.dtype == torch.float32 for b in copy.blocks)
    state = tiny_state(8)
    reference = tiny_emulator(SFNOEmulator, "float32").step(state)
    stepped = fast.step(state)
    assert not torch.equal(stepped, reference)
    assert relative_error(stepped - state, reference - state) < 1e-5


def noisy_layers_drawn(emulator: SFNOEmulator) -> SFNOEmulator:
    """`emulator` with its zero-initialised noise layers (an FGN's modulations, a VAE's
    projection) drawn at random, so that the noise reaches the output and the gradients."""
    generator = torch.Generator().manual_seed(8)
    for name, parameter in emulator.network.named_parameters():
        if "modulation" in name or "projection" in name:
            parameter.data.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    return emulator


@pytest.mark.parametrize("kind", [SFNOEmulator, FGNEmulator, VAEEmulator])
def test_training_view_has_torch_harmonics_gradients_on_the_same_parameters(kind):
    """`training_network` runs the network's own parameters (no copy: an optimizer step on
    them is a step of the network), and a loss through it has torch-harmonics' value and
    gradients to float32 round-off, noise layers and all."""
    emulator = noisy_layers_drawn(tiny_emulator(kind, "float32")).train()
    network, state = emulator.network, tiny_state(9)
    view = training_network(network)
    assert {id(p) for p in view.parameters()} == {id(p) for p in network.parameters()}
    assert any(type(b.global_conv) is cpu_bf16.MatmulSpectralConv for b in view.blocks)
    noise = torch.randn(2, *getattr(emulator, "noise_shape", (1,)))
    driven = {FGNEmulator: noise, VAEEmulator: LatentDraw(noise)}.get(kind)

    def output_and_gradients(net: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        network.zero_grad(set_to_none=True)
        with conditioning(driven):
            output = net(emulator.features(state))
        output.square().mean().backward()
        return output.detach(), [p.grad for p in network.parameters()]  # None: not reached

    (output, gradients), (reference, expected) = map(output_and_gradients, (view, network))
    assert relative_error(output, reference) < 1e-5
    assert [g is None for g in gradients] == [g is None for g in expected]
    reached = [(g, e) for g, e in zip(gradients, expected, strict=True) if e is not None]
    assert len(reached) > len(expected) // 2
    for gradient, reference_gradient in reached:  # some are zero in both: zero-init layers
        assert (gradient - reference_gradient).norm() <= 1e-5 * reference_gradient.norm()


def test_training_steps_the_view_and_float32_steps_torch_harmonics():
    """With gradients on, the emulator runs its training view (torch-harmonics' value to
    round-off, and a change of the weights is seen at once); `step` in float32 runs
    torch-harmonics' network itself, bit for bit."""
    emulator, state = tiny_emulator(SFNOEmulator, "float32"), tiny_state(10)
    with torch.no_grad():
        raw = emulator.advance(state, emulator.network(emulator.features(state)))
    assert torch.equal(emulator.step(state), raw)
    trained = emulator(state)
    assert not torch.equal(trained, raw)
    assert relative_error(trained - state, raw - state) < 1e-5
    trained.square().mean().backward()
    torch.optim.SGD(emulator.parameters(), lr=0.5).step()
    assert relative_error(emulator(state) - state, trained - state) > 1e-3
    for mode in (True, False, True):  # the view follows the network's train/eval mode
        view = emulator.train(mode).runtime_network()
        assert all(module.training is mode for module in view.modules())
