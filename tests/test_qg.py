"""The truth world's dynamical core: transforms, closed-form solutions, the energy budget."""

import math

import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y
from wxens.data_pipeline.qg import QGParameters, TwoLayerQG, dynamics_grid
from wxens.data_pipeline.sphere import (
    EARTH_ROTATION_RATE,
    LatLonGrid,
    SpectralTransforms,
    spectral_inner,
    truncate,
)

QUIET = dict(forcing=False, drag=False)


def random_coeffs(shape, truncation, seed=0):
    n = truncation + 1
    g = torch.Generator().manual_seed(seed)
    c = torch.complex(
        torch.randn((*shape, n, n), generator=g, dtype=torch.float64),
        torch.randn((*shape, n, n), generator=g, dtype=torch.float64),
    )
    c[..., 0] = c[..., 0].real
    return truncate(c, truncation)


@pytest.mark.parametrize(
    "grid", [LatLonGrid(32, 64, "legendre-gauss"), LatLonGrid(45, 64, "equiangular")]
)
def test_sht_round_trip(grid):
    transforms = SpectralTransforms(grid, 21)
    coeffs = random_coeffs((3,), 21)
    back = transforms.to_spectral(transforms.to_grid(coeffs))
    assert torch.allclose(back, coeffs, atol=1e-10)


def test_spectral_inner_is_the_area_integral():
    """Parseval for the orthonormal real SHT, against a grid quadrature done with numpy."""
    grid = LatLonGrid(32, 64, "legendre-gauss")
    transforms = SpectralTransforms(grid, 21)
    a, b = random_coeffs((), 21, seed=1), random_coeffs((), 21, seed=2)
    fa, fb = transforms.to_grid(a).numpy(), transforms.to_grid(b).numpy()
    row_weights = grid.quadrature_weights.numpy()[:, None] * (2 * math.pi / grid.nlon)
    assert float(spectral_inner(a, b)) == pytest.approx(
        float((fa * fb * row_weights).sum()), rel=1e-10
    )


def test_gradient_matches_closed_form():
    """grad f = (-df/dphi, 1/cos(phi) df/dlambda) on the unit sphere, for the band-limited
    f = sin^3(phi) + cos^2(phi) sin(phi) cos(2 lambda)."""
    grid = LatLonGrid(32, 64, "legendre-gauss")
    transforms = SpectralTransforms(grid, 21)
    phi = np.radians(grid.latitude)[:, None]
    lam = np.radians(grid.longitude)[None, :]
    f = np.sin(phi) ** 3 + np.cos(phi) ** 2 * np.sin(phi) * np.cos(2 * lam)
    df_dphi = 3 * np.sin(phi) ** 2 * np.cos(phi) + (
        np.cos(phi) ** 3 - 2 * np.cos(phi) * np.sin(phi) ** 2
    ) * np.cos(2 * lam)
    df_dlam_over_cos = -2 * np.cos(phi) * np.sin(phi) * np.sin(2 * lam)
    grad = transforms.gradient(transforms.to_spectral(torch.from_numpy(f))).numpy()
    np.testing.assert_allclose(grad[0], -df_dphi, atol=1e-10)
    np.testing.assert_allclose(grad[1], df_dlam_over_cos, atol=1e-10)


def test_steady_zonal_flow_stays_steady_without_forcing_and_drag():
    model = TwoLayerQG(QGParameters(truncation=21, hyperdiffusion_hours=1e12, **QUIET))
    n = 22
    psi = torch.zeros((1, 2, n, n), dtype=torch.complex128)
    psi[0, 0, 1, 0], psi[0, 0, 3, 0] = 2e7, -5e6  # zonal upper-layer flow (m = 0)
    psi[0, 1, 2, 0] = 3e6
    q0 = model.potential_vorticity(psi)
    q = model.integrate(q0, 10 * 48)
    assert (q - q0).abs().max() / q0.abs().max() < 1e-10


def test_rossby_haurwitz_wave_propagates_at_the_closed_form_speed():
    """A barotropic single-harmonic wave psi = A Y_l^m is an exact solution that turns
    westward: psi_lm(t) = psi_lm(0) exp(-i omega t), omega = -2 Omega m / (l (l+1)).
    The tolerance is SSP-RK3's phase error, (omega dt)^4 / 24 per step."""
    model = TwoLayerQG(QGParameters(truncation=21, hyperdiffusion_hours=1e12, **QUIET))
    degree, m, n = 4, 3, 22
    psi = torch.zeros((1, 2, n, n), dtype=torch.complex128)
    psi[0, :, degree, m] = 1e7
    days = 3
    q = model.integrate(model.potential_vorticity(psi), days * 48)
    coeff = model.streamfunction(q)[0, 0, degree, m]
    omega = -2 * EARTH_ROTATION_RATE * m / (degree * (degree + 1))
    expected = 1e7 * np.exp(-1j * omega * days * 86400)
    assert abs(complex(coeff) - expected) / 1e7 < 1e-4
    psi_after = model.streamfunction(q).clone()
    psi_after[0, :, degree, m] = 0
    assert psi_after.abs().max() < 1e-3  # no other harmonic is excited


def test_analytic_harmonic_matches_torch_harmonics_convention():
    """Y_l^m from scipy, synthesised on a grid, has a single coefficient at (l, m)."""
    grid = LatLonGrid(32, 64, "legendre-gauss")
    transforms = SpectralTransforms(grid, 21)
    colat = np.radians(90 - grid.latitude)[:, None]
    lam = np.radians(grid.longitude)[None, :]
    field = np.real(sph_harm_y(5, 2, colat, lam))
    coeffs = transforms.to_spectral(torch.from_numpy(field))
    mask = torch.ones_like(coeffs.real, dtype=torch.bool)
    mask[5, 2] = False
    assert coeffs[mask].abs().max() < 1e-12
    assert abs(coeffs[5, 2]) > 0.1


@pytest.fixture(scope="module")
def turbulent_state():
    model = TwoLayerQG(QGParameters(truncation=21))
    q = model.rest_state(2, torch.Generator().manual_seed(3), noise_m2_s=2e6)
    return model, model.integrate(q, 48)


def test_advection_and_beta_conserve_energy(turbulent_state):
    model, q = turbulent_state
    budget = model.energy_budget(q)
    scale = sum(term.abs() for term in budget.values())
    assert (budget["advection"].abs() / scale).max() < 1e-10
    assert (budget["beta"].abs() / scale).max() < 1e-10


def test_energy_budget_closes_over_a_step(turbulent_state):
    """E(t + dt) - E(t) equals the time integral of the summed budget terms (trapezoid rule)
    to 1e-3 of the change: the terms account for all of the energy."""
    model, q = turbulent_state
    q1 = model.step(q)
    rate0 = sum(model.energy_budget(q).values())
    rate1 = sum(model.energy_budget(q1).values())
    change = model.energy(q1) - model.energy(q)
    predicted = 0.5 * (rate0 + rate1) * model.dt
    assert torch.allclose(change, predicted, rtol=1e-3, atol=0)
    assert (change.abs() > 1e-6 * model.energy(q)).all()  # the step really changes the energy


def test_energy_matches_grid_quadrature(turbulent_state):
    """E from coefficients equals <|grad psi|^2>/4 + F <(psi1 - psi2)^2>/8 on the Gauss grid."""
    model, q = turbulent_state
    psi = model.streamfunction(q)
    grad = model.transforms.gradient(psi).numpy() / 6.371e6
    psi_grid = model.transforms.to_grid(psi).numpy()
    w = model.grid.area_weights()
    kinetic = ((grad**2).sum(axis=(1, 2)) * w).sum(axis=(-2, -1)) / 4
    available = (
        model.inverse_deformation_sq
        * (((psi_grid[:, 0] - psi_grid[:, 1]) ** 2) * w).sum(axis=(-2, -1))
        / 8
    )
    np.testing.assert_allclose(model.energy(q).numpy(), kinetic + available, rtol=1e-10)


def test_dynamics_grid_is_alias_free():
    assert dynamics_grid(42) == LatLonGrid(64, 128, "legendre-gauss")
    assert dynamics_grid(21) == LatLonGrid(32, 64, "legendre-gauss")


def test_rest_state_is_made_on_the_model_device():
    """The noise comes from a CPU generator (the same state on any device) and is then moved to
    the model's device: on PyTorch's shape-only `meta` device, which stands in for a GPU here, a
    CPU tensor left in the product would raise."""
    model = TwoLayerQG(QGParameters(truncation=21)).to("meta")
    q = model.rest_state(2, torch.Generator().manual_seed(3))
    assert q.device.type == "meta" and q.shape == (2, 2, 22, 22)
