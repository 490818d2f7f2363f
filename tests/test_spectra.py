"""Power spectra: single harmonics, Parseval, ensemble-mean damping, dask laziness."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy.special import sph_harm_y
from wxens.verification.spectra import ensemble_spectra, power_spectrum

EQUIANGULAR = (33, 64)
GAUSS = (32, 64)


def grid_coords(nlat: int, nlon: int, grid: str) -> dict[str, np.ndarray]:
    """Latitudes north first (equiangular with poles, or Gauss nodes) and longitudes 0..360-Δ."""
    if grid == "equiangular":
        latitude = np.linspace(90.0, -90.0, nlat)
    else:
        nodes, _ = np.polynomial.legendre.leggauss(nlat)  # cos(colatitude), ascending
        latitude = 90.0 - np.degrees(np.arccos(nodes[::-1]))
    return {"latitude": latitude, "longitude": np.arange(nlon) * 360.0 / nlon}


def area_weights(latitude: np.ndarray, grid: str) -> np.ndarray:
    """Exact quadrature weights of the latitude rows, summing to 1: Clenshaw-Curtis (equiangular,
    exact for polynomials in sin(latitude) of degree <= nlat - 1) or Gauss-Legendre."""
    n = latitude.size - 1
    if grid == "legendre-gauss":
        return np.polynomial.legendre.leggauss(n + 1)[1] / 2.0
    colatitude = np.radians(90.0 - latitude)
    k = np.arange(1, n // 2 + 1)
    factor = np.where(2 * k == n, 1.0, 2.0) / (4 * k**2 - 1)
    weights = 1.0 - (factor[None, :] * np.cos(2 * k[None, :] * colatitude[:, None])).sum(axis=1)
    weights *= np.where((np.arange(n + 1) == 0) | (np.arange(n + 1) == n), 1.0, 2.0) / n
    return weights / weights.sum()


def harmonic(degree: int, order: int, coords: dict[str, np.ndarray]) -> np.ndarray:
    """Re Y_l^m (scipy's orthonormal harmonics; sph_harm_y(n, m, colatitude, longitude))."""
    colatitude = np.radians(90.0 - coords["latitude"])[:, None]
    longitude = np.radians(coords["longitude"])[None, :]
    return sph_harm_y(degree, order, colatitude, longitude).real


def band_limited(truncation: int, coords: dict[str, np.ndarray], rng) -> np.ndarray:
    """A random real field of harmonics of degree <= `truncation`."""
    field = np.zeros((coords["latitude"].size, coords["longitude"].size))
    for degree in range(truncation + 1):
        for order in range(degree + 1):
            field += rng.normal() * harmonic(degree, order, coords)
    return field


def on_grid(values: np.ndarray, coords: dict[str, np.ndarray], *leading: str) -> xr.DataArray:
    return xr.DataArray(values, dims=(*leading, "latitude", "longitude"), coords=coords)


@pytest.mark.parametrize(
    ("grid", "shape"), [("equiangular", EQUIANGULAR), ("legendre-gauss", GAUSS)]
)
@pytest.mark.parametrize(("degree", "order"), [(0, 0), (3, 0), (5, 3), (12, 12)])
def test_single_harmonic_has_all_its_power_at_its_degree(grid, shape, degree, order):
    coords = grid_coords(*shape, grid)
    power = power_spectrum(on_grid(harmonic(degree, order, coords), coords), grid=grid)
    # integral (Re Y_l^m)^2 dOmega is 1 for m = 0 and 1/2 for m > 0; P_l is its area mean
    expected = np.zeros(power.sizes["wavenumber"])
    expected[degree] = (1.0 if order == 0 else 0.5) / (4 * np.pi)
    np.testing.assert_allclose(power.values, expected, atol=1e-12)
    assert power.dims == ("wavenumber",)
    np.testing.assert_array_equal(power.wavenumber, np.arange(expected.size))


@pytest.mark.parametrize(
    ("grid", "shape"), [("equiangular", EQUIANGULAR), ("legendre-gauss", GAUSS)]
)
def test_parseval_sum_of_power_is_area_mean_of_square(grid, shape):
    rng = np.random.default_rng(0)
    coords = grid_coords(*shape, grid)
    field = band_limited(16, coords, rng)  # f^2 has degree 32: exact on both grids
    area_mean_square = (area_weights(coords["latitude"], grid) @ field**2).mean()
    power = power_spectrum(on_grid(field, coords), grid=grid)
    np.testing.assert_allclose(power.sum().item(), area_mean_square, rtol=1e-10)


def test_ascending_latitudes_give_the_same_spectrum_and_units_are_squared():
    coords = grid_coords(*EQUIANGULAR, "equiangular")
    field = on_grid(band_limited(8, coords, np.random.default_rng(1)), coords)
    field.attrs["units"] = "K"
    flipped = power_spectrum(field.sortby("latitude"))
    xr.testing.assert_allclose(flipped, power_spectrum(field))
    assert flipped.attrs["units"] == "(K)^2"


def test_truncation_beyond_the_exact_default():
    coords = grid_coords(*EQUIANGULAR, "equiangular")
    field = on_grid(harmonic(21, 4, coords), coords)
    assert power_spectrum(field).sizes["wavenumber"] == 17
    power = power_spectrum(field, truncation=21)
    assert power.values.argmax() == 21
    assert power.values[:21].max() < 1e-3 * power.values[21]


def random_ensemble(members: int = 6, inits: int = 3) -> tuple[xr.DataArray, xr.DataArray]:
    rng = np.random.default_rng(2)
    coords = grid_coords(*EQUIANGULAR, "equiangular")
    shape = (inits, members, *EQUIANGULAR)
    forecast = on_grid(rng.normal(size=shape), coords, "init_time", "member")
    truth = on_grid(rng.normal(size=(inits, *EQUIANGULAR)), coords, "init_time")
    return forecast, truth


def test_ensemble_mean_has_less_power_than_the_members():
    forecast, truth = random_ensemble()
    spectra = ensemble_spectra(forecast, truth)
    assert set(spectra.data_vars) == {"power_members", "power_ensemble_mean", "power_truth"}
    for power in spectra.data_vars.values():
        assert power.dims == ("init_time", "wavenumber")
    members, ensemble_mean = spectra.power_members, spectra.power_ensemble_mean
    assert (ensemble_mean <= members + 1e-12).all()
    # independent members: the mean has about 1/M of the members' power
    assert float(ensemble_mean.sum() / members.sum()) == pytest.approx(1 / 6, rel=0.2)
    np.testing.assert_allclose(
        spectra.power_members.values, power_spectrum(forecast).mean("member").values
    )


def test_dask_result_is_lazy_and_equals_numpy():
    forecast, truth = random_ensemble()
    lazy = ensemble_spectra(forecast.chunk({"init_time": 1, "member": 2}), truth.chunk())
    assert all(power.chunks is not None for power in lazy.data_vars.values())
    xr.testing.assert_allclose(lazy.compute(), ensemble_spectra(forecast, truth))


def test_refuses_split_fields_bad_grids_and_bad_truncation():
    forecast, _ = random_ensemble()
    with pytest.raises(ValueError, match=r"chunked along \[.latitude.\]"):
        power_spectrum(forecast.chunk({"latitude": 11}))
    with pytest.raises(ValueError, match="not a global legendre-gauss grid"):
        power_spectrum(forecast, grid="legendre-gauss")
    with pytest.raises(ValueError, match="not a global equiangular grid"):
        power_spectrum(forecast.isel(latitude=slice(1, None)))
    with pytest.raises(ValueError, match=r"longitudes .* not regular"):
        power_spectrum(forecast.isel(longitude=[0, 1, 2, 4, 5, 6]))
    with pytest.raises(ValueError, match="unknown grid 'healpix'"):
        power_spectrum(forecast, grid="healpix")
    with pytest.raises(ValueError, match=r"T40 is outside 0\.\.31"):
        power_spectrum(forecast, truncation=40)
    with pytest.raises(ValueError, match="lacks dimension"):
        power_spectrum(forecast.rename(latitude="lat"))
