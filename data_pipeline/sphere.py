"""Grids on the sphere and spectral operations on them, built on torch-harmonics.

A `LatLonGrid` is a regular global latitude-longitude grid. Spectral coefficients follow
torch-harmonics' real SHT with orthonormal ("ortho") normalisation: shape `(..., lmax, mmax)`,
complex, orders `m >= 0` only. With that normalisation, for real fields f and g on the unit
sphere, `integral f g dOmega = sum_l [f_l0 g_l0 + 2 sum_{m>0} Re(f_lm conj(g_lm))]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import torch
import torch_harmonics as th
from torch_harmonics import fft as th_fft

EARTH_RADIUS_M = 6.371e6
EARTH_ROTATION_RATE = 7.292e-5  # s-1
GRAVITY = 9.80665  # m s-2


@dataclass(frozen=True)
class LatLonGrid:
    """A regular global grid: latitudes descending (north first), longitudes 0 .. 360 - dlon.

    `kind` is torch-harmonics' quadrature: "equiangular" (poles included, as ERA5) or
    "legendre-gauss" (no poles; exact quadrature, used inside the dynamical core).
    """

    nlat: int
    nlon: int
    kind: str = "equiangular"

    @cached_property
    def latitude(self) -> np.ndarray:
        """Latitudes in degrees north, descending."""
        colat, _ = th.quadrature.precompute_latitudes(self.nlat, grid=self.kind)
        return 90.0 - np.degrees(colat.numpy())

    @cached_property
    def longitude(self) -> np.ndarray:
        """Longitudes in degrees east, 0 .. 360 - dlon."""
        return np.arange(self.nlon) * (360.0 / self.nlon)

    @cached_property
    def quadrature_weights(self) -> torch.Tensor:
        """Quadrature weight of each latitude row (float64, sums to 2 over the rows)."""
        _, weights = th.quadrature.precompute_latitudes(self.nlat, grid=self.kind)
        return weights

    def area_weights(self) -> np.ndarray:
        """Normalised cell-area weights `(nlat, nlon)` summing to 1 (cos latitude cells)."""
        weights = self.quadrature_weights.numpy()[:, None] * np.ones((1, self.nlon))
        return weights / weights.sum()


def max_truncation(grid: LatLonGrid) -> int:
    """The largest triangular truncation T whose coefficients a grid's quadrature gives exactly.

    Gauss-Legendre rows integrate degree 2 nlat - 1 exactly (T = nlat - 1); Clenshaw-Curtis
    rows (equiangular, poles included) integrate degree nlat - 1 (T = (nlat - 1) // 2).
    Synthesis (coefficients to grid) only needs T < nlon / 2.
    """
    by_rows = grid.nlat - 1 if grid.kind == "legendre-gauss" else (grid.nlat - 1) // 2
    return min(by_rows, grid.nlon // 2 - 1)


def check_synthesis(grid: LatLonGrid, truncation: int) -> None:
    """Refuse a truncation the grid's longitudes cannot represent."""
    if truncation > grid.nlon // 2 - 1:
        raise ValueError(f"T{truncation} needs more than {grid.nlon} longitudes")


class SpectralTransforms(torch.nn.Module):
    """Scalar SHT, its inverse, and the gradient of a scalar, at triangular truncation T.

    `gradient(coeffs)` returns `(d/dtheta, 1/sin(theta) d/dlambda)` on the unit sphere, theta
    the colatitude; that is `(-df/dphi, 1/cos(phi) df/dlambda)` with phi the latitude.
    """

    def __init__(self, grid: LatLonGrid, truncation: int, exact: bool = True):
        """With `exact=False`, accept any T the longitudes can synthesise: the analyses of the
        33 x 64 model grid are T21, where its quadrature is exact up to T16 and off by at most
        0.5% of a coefficient at T21."""
        super().__init__()
        check_synthesis(grid, truncation)
        if exact and truncation > max_truncation(grid):
            raise ValueError(
                f"truncation T{truncation} exceeds what a {grid.nlat}x{grid.nlon} grid resolves"
            )
        n = truncation + 1
        self.grid = grid
        self.truncation = truncation
        self.forward_sht = th.RealSHT(grid.nlat, grid.nlon, lmax=n, mmax=n, grid=grid.kind)
        self.inverse_sht = th.InverseRealSHT(grid.nlat, grid.nlon, lmax=n, mmax=n, grid=grid.kind)
        self.inverse_vector_sht = th.InverseRealVectorSHT(
            grid.nlat, grid.nlon, lmax=n, mmax=n, grid=grid.kind
        )
        l_index = torch.arange(n, dtype=torch.float64)[:, None].expand(n, n)
        self.register_buffer("total_wavenumber", l_index.clone(), persistent=False)
        self.register_buffer("zonal_wavenumber", l_index.T.clone(), persistent=False)

    def to_spectral(self, field: torch.Tensor) -> torch.Tensor:
        return self.forward_sht(field)

    def to_grid(self, coeffs: torch.Tensor) -> torch.Tensor:
        return self.inverse_sht(coeffs)

    def gradient(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Gradient components `(..., 2, nlat, nlon)` of fields with coefficients `coeffs`.

        The same as `InverseRealVectorSHT` on `(coeffs, 0)`, with its Legendre-derivative tables,
        but skipping the four contractions of the zero toroidal part: the gradient is the hot
        path of the truth model, and this halves its cost.
        """
        x = coeffs.transpose(-1, -2)
        x_re, x_im = x.real.contiguous(), x.imag.contiguous()
        d_theta, d_lambda = self.inverse_vector_sht.dpct.to(x_re.dtype)
        theta_re = torch.einsum("...ml,mkl->...km", x_re, d_theta)
        theta_im = torch.einsum("...ml,mkl->...km", x_im, d_theta)
        lambda_re = -torch.einsum("...ml,mkl->...km", x_im, d_lambda)
        lambda_im = torch.einsum("...ml,mkl->...km", x_re, d_lambda)
        fourier = torch.complex(
            torch.stack((theta_re, lambda_re), dim=-3), torch.stack((theta_im, lambda_im), dim=-3)
        )
        return th_fft.irfft(fourier, n=self.grid.nlon, dim=-1, norm="forward")


def order_weights(coeffs: torch.Tensor) -> torch.Tensor:
    """`w_m` for real-SHT coefficients `(..., l, m)`: 1 for m = 0 and 2 for m > 0 (which stands
    for +m and -m), in the coefficients' real dtype and on their device."""
    weight = torch.full(coeffs.shape[-1:], 2.0, dtype=coeffs.real.dtype, device=coeffs.device)
    weight[0] = 1.0
    return weight


def spectral_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`integral a b dOmega` over the unit sphere from orthonormal real-SHT coefficients.

    Sums over the last two axes `(l, m)` with the `order_weights`.
    """
    return (torch.real(a * torch.conj(b)) * order_weights(a)).sum(dim=(-2, -1))


def truncate(coeffs: torch.Tensor, truncation: int) -> torch.Tensor:
    """Keep degrees and orders up to `truncation` (triangular: m <= l <= T)."""
    n = truncation + 1
    out = coeffs[..., :n, :n].clone()
    lower = torch.tril(torch.ones(n, n, dtype=torch.bool, device=coeffs.device))
    return out * lower


@cache
def analysis(grid: LatLonGrid, truncation: int) -> th.RealSHT:
    """The (cached) forward SHT of `grid` at triangular truncation T."""
    n = truncation + 1
    return th.RealSHT(grid.nlat, grid.nlon, lmax=n, mmax=n, grid=grid.kind)


@cache
def synthesis(grid: LatLonGrid, truncation: int) -> th.InverseRealSHT:
    """The (cached) inverse SHT onto `grid` at triangular truncation T."""
    n = truncation + 1
    return th.InverseRealSHT(grid.nlat, grid.nlon, lmax=n, mmax=n, grid=grid.kind)


def regrid(
    field: torch.Tensor, source: LatLonGrid, target: LatLonGrid, truncation: int
) -> torch.Tensor:
    """Spectral regridding: SHT on `source`, truncate to T`truncation`, inverse SHT on `target`.

    Exact (to round-off) for any field band-limited to degree <= truncation, provided both
    grids resolve that degree.
    """
    if truncation > max_truncation(source):
        raise ValueError(
            f"truncation T{truncation} exceeds what the {source.nlat}x{source.nlon} source grid"
            f" resolves (at most T{max_truncation(source)})"
        )
    check_synthesis(target, truncation)
    coeffs = analysis(source, truncation).to(field.device)(field)
    return synthesis(target, truncation).to(field.device)(truncate(coeffs, truncation))


@cache
def random_field_scales(
    truncation: int, length_scale_m: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """`gaussian_random_field`'s factors (float64, read-only: cached, as a member draws a field
    every step): the order scale, 1 for m = 0 and sqrt(1/2) for m > 0 (isotropy: E|f_lm|^2
    is the same for every m, so the complex m > 0 coefficients, which stand for +m and -m,
    get real and imaginary parts of variance 1/2 each), and `sqrt(exp(-l (l + 1) (L / a)^2
    / 2))` by `(l, m)`, zero for l = 0 and m > l."""
    n = truncation + 1
    l_index = torch.arange(n, dtype=torch.float64)[:, None].expand(n, n)
    spectrum = torch.exp(-0.5 * l_index * (l_index + 1) * (length_scale_m / EARTH_RADIUS_M) ** 2)
    spectrum[0] = 0.0
    spectrum = spectrum * torch.tril(torch.ones(n, n, dtype=torch.float64))
    order_scale = torch.full((n,), math.sqrt(0.5), dtype=torch.float64)
    order_scale[0] = 1.0
    return order_scale, torch.sqrt(spectrum)


def gaussian_random_field(
    shape: tuple[int, ...],
    truncation: int,
    length_scale_m: float,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Spectral coefficients of a random field, spatially correlated over `length_scale_m`.

    Written here rather than with `torch_harmonics.random_fields.GaussianRandomFieldS2`
    because we need the coefficients (not a grid field) at a given truncation, drawn from an
    explicit `torch.Generator` so that each member's noise is reproducible on its own.

    Each coefficient is Gaussian with `E|f_lm|^2` proportional to `exp(-(l (l+1)) (L / a)^2 / 2)`
    for every order m (an isotropic field with a Gaussian-shaped covariance of width L),
    normalised so that the field's
    area-mean variance is 1. `l = 0` (the global mean) is zero. The same as
    `shaped_random_field(white_coefficients(shape, truncation, generator), ...)`.
    """
    white = white_coefficients(shape, truncation, generator)
    return shaped_random_field(white, truncation, length_scale_m, dtype)


def white_coefficients(
    shape: tuple[int, ...], truncation: int, generator: torch.Generator
) -> torch.Tensor:
    """`(*shape, T+1, T+1)` complex128 draws from `generator`: independent N(0, 1) real and
    imaginary parts, the imaginary part zero for m = 0 (real fields), every (l, m) drawn.

    The random part of `gaussian_random_field`: a batch whose members each need their own
    generator draws these one member at a time and shapes them all at once
    (`shaped_random_field` is the same, member by member, in any batch)."""
    n = truncation + 1
    real = torch.randn((*shape, n, n), generator=generator, dtype=torch.float64)
    imag = torch.randn((*shape, n, n), generator=generator, dtype=torch.float64)
    imag[..., 0] = 0.0  # m = 0 coefficients of a real field are real
    return torch.complex(real, imag)


def shaped_random_field(
    white: torch.Tensor,
    truncation: int,
    length_scale_m: float,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """`white_coefficients` given `gaussian_random_field`'s spectrum, each field (the last two
    axes) normalised to area-mean variance 1, as `dtype`'s complex type."""
    order_scale, amplitude = random_field_scales(truncation, length_scale_m)
    coeffs = white * order_scale * amplitude
    variance = spectral_inner(coeffs, coeffs) / (4 * math.pi)
    coeffs = coeffs / torch.sqrt(variance)[..., None, None]
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    return coeffs.to(complex_dtype)


def power_spectrum(field: torch.Tensor, grid: LatLonGrid, truncation: int) -> torch.Tensor:
    """Area-mean variance by total wavenumber, `(..., l)` for `l = 0..truncation`.

    `P_l = sum_m w_m |f_lm|^2 / (4 pi)` from orthonormal real-SHT coefficients (`w_m` = 2 for
    m > 0, which stands for +m and -m), so `sum_l P_l` is the area mean of `f^2`
    (units: those of `f`, squared).
    """
    coeffs = analysis(grid, truncation).to(field.device)(field)
    return (coeffs.abs() ** 2 * order_weights(coeffs)).sum(dim=-1) / (4 * math.pi)


def kinetic_energy_spectrum(
    streamfunction: torch.Tensor, grid: LatLonGrid, truncation: int
) -> torch.Tensor:
    """Area-mean kinetic energy `|grad psi|^2 / 2` by total wavenumber, `(..., l)`, in m2 s-2
    for `psi` in m2 s-1: `E_l = l (l + 1) P_l / (2 a^2)` with `P_l` from `power_spectrum`."""
    power = power_spectrum(streamfunction, grid, truncation)
    degree = torch.arange(truncation + 1, dtype=power.dtype, device=power.device)
    return power * degree * (degree + 1) / (2 * EARTH_RADIUS_M**2)
