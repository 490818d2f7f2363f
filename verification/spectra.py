"""Total-wavenumber power spectra of global fields, through torch-harmonics.

A field `f` on a global latitude-longitude grid is analysed with torch-harmonics' real SHT in
orthonormal ("ortho") normalisation, `f = sum_lm f_lm Y_lm` with `integral Y_lm^2 dOmega = 1`
on the unit sphere. The power at total wavenumber `l` is

    P_l = (|f_l0|^2 + 2 sum_{m=1..l} |f_lm|^2) / (4 pi)

(order `m > 0` counts twice: it stands for `+m` and `-m`), so that Parseval reads
`sum_l P_l = area mean of f^2`, in the field's units squared.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
import torch_harmonics as th
import xarray as xr
from wxens.verification.errors import ScoreError

LATITUDE = "latitude"
LONGITUDE = "longitude"
WAVENUMBER = "wavenumber"
GRIDS = ("equiangular", "legendre-gauss")


def power_spectrum(
    field: xr.DataArray, grid: str = "equiangular", truncation: int | None = None
) -> xr.DataArray:
    """Power `P_l` by total wavenumber `l = 0..T` of each `(latitude, longitude)` field.

    `P_l = (|f_l0|^2 + 2 sum_{m>0} |f_lm|^2) / (4 pi)` from orthonormal SHT coefficients, so
    `sum_l P_l` is the area mean of `f^2` (units: the field's, squared) for any field that the
    grid's quadrature integrates exactly (`f^2` of degree <= nlat - 1 on the equiangular grid,
    <= 2 nlat - 1 on the Gauss grid).

    `grid` is the quadrature of the latitudes: "equiangular" (poles included, as ERA5) or
    "legendre-gauss". Latitudes may be ascending or descending; they are put north first.
    `truncation` defaults to torch-harmonics' exact one ((nlat - 1) // 2 equiangular, nlat - 1
    Gauss, at most nlon / 2); pass it to go further (e.g. T21 analyses on a 33 x 64 grid), at
    most `min(nlat, nlon / 2) - 1`. Leading dimensions are kept; the result has a last
    dimension `wavenumber` and is lazy when `field` is a dask array whose chunks each hold
    whole `(latitude, longitude)` fields.

    Example:
        >>> latitude = 90.0 - np.degrees(th.quadrature.precompute_latitudes(9)[0].numpy())
        >>> field = xr.DataArray(np.full((9, 16), 3.0), dims=("latitude", "longitude"),
        ...     coords={"latitude": latitude, "longitude": np.arange(16) * 22.5})
        >>> power_spectrum(field).round(6).values.tolist()  # all at l = 0: the mean of 3^2
        [9.0, 0.0, 0.0, 0.0, 0.0]
    """
    field = _north_first(field)
    nlat, nlon = field.sizes[LATITUDE], field.sizes[LONGITUDE]
    _check_grid(field, grid)
    truncation = _checked_truncation(nlat, nlon, grid, truncation)
    power = xr.apply_ufunc(
        _power_of_array,
        field,
        input_core_dims=[[LATITUDE, LONGITUDE]],
        output_core_dims=[[WAVENUMBER]],
        kwargs={"grid": grid, "truncation": truncation},
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {WAVENUMBER: truncation + 1}},
        keep_attrs=False,
    )
    power = power.assign_coords({WAVENUMBER: np.arange(truncation + 1)})
    power.attrs["long_name"] = f"power spectrum of {field.name or 'the field'}"
    if "units" in field.attrs:
        power.attrs["units"] = f"({field.attrs['units']})^2"
    return power


def ensemble_spectra(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    member_dim: str = "member",
    grid: str = "equiangular",
    truncation: int | None = None,
) -> xr.Dataset:
    """The spectra of an ensemble forecast and of the truth it is verified against.

    `truth` has the forecast's dimensions less `member_dim` (e.g. truth at the valid times of
    each `(init_time, lead_time)`). Returns `power_members` (the mean over members of each
    member's spectrum), `power_ensemble_mean` (the spectrum of the ensemble mean) and
    `power_truth`, each with the other dimensions kept (average over `init_time` afterwards).

    Example:
        >>> latitude = 90.0 - np.degrees(th.quadrature.precompute_latitudes(9)[0].numpy())
        >>> grid = {"latitude": latitude, "longitude": np.arange(16) * 22.5}
        >>> truth = xr.DataArray(np.ones((9, 16)), dims=list(grid), coords=grid)
        >>> members = xr.concat([truth, -truth], dim="member")
        >>> spectra = ensemble_spectra(members, truth)
        >>> [round(float(spectra[name][0]), 6) for name in spectra]  # members, mean, truth at l=0
        [1.0, 0.0, 1.0]
    """
    if member_dim not in forecast.dims:
        raise ScoreError(f"forecast has no member dimension {member_dim!r}: {forecast.dims}")
    spectrum = {"grid": grid, "truncation": truncation}
    return xr.Dataset(
        {
            "power_members": power_spectrum(forecast, **spectrum).mean(member_dim),
            "power_ensemble_mean": power_spectrum(forecast.mean(member_dim), **spectrum),
            "power_truth": power_spectrum(truth, **spectrum),
        }
    )


def _north_first(field: xr.DataArray) -> xr.DataArray:
    """`field` with latitudes descending, after checking its horizontal dimensions."""
    missing = {LATITUDE, LONGITUDE} - set(field.dims)
    if missing:
        raise ScoreError(f"field {field.name!r} lacks dimension(s) {sorted(missing)}")
    chunks = field.chunksizes
    split = [dim for dim in (LATITUDE, LONGITUDE) if dim in chunks and len(chunks[dim]) > 1]
    if split:
        raise ScoreError(
            f"field {field.name!r} is chunked along {split}; each chunk must hold whole fields:"
            f" rechunk with {{'latitude': -1, 'longitude': -1}}"
        )
    latitude = field[LATITUDE].values
    if latitude.size > 1 and latitude[0] < latitude[-1]:
        return field.isel({LATITUDE: slice(None, None, -1)})
    return field


def _check_grid(field: xr.DataArray, grid: str) -> None:
    """Refuse latitudes that are not the `grid` quadrature nodes or irregular longitudes."""
    if grid not in GRIDS:
        raise ScoreError(f"unknown grid {grid!r}; choose one of {GRIDS}")
    nlat, nlon = field.sizes[LATITUDE], field.sizes[LONGITUDE]
    if nlat < 2 or nlon < 4:
        raise ScoreError(f"a {nlat} x {nlon} grid is too small for a spectrum")
    colatitude, _ = th.quadrature.precompute_latitudes(nlat, grid=grid)
    expected = 90.0 - np.degrees(colatitude.numpy())
    if not np.allclose(field[LATITUDE].values, expected, atol=1e-3):
        raise ScoreError(
            f"the {nlat} latitudes of {field.name!r} are not a global {grid} grid"
            f" ({expected[0]:.4g} to {expected[-1]:.4g}, step {expected[0] - expected[1]:.4g})"
        )
    spacing = np.diff(field[LONGITUDE].values) % 360.0
    if not np.allclose(spacing, 360.0 / nlon, atol=1e-3):
        raise ScoreError(
            f"the {nlon} longitudes of {field.name!r} are not regular with step {360 / nlon:.4g}"
        )


def _checked_truncation(nlat: int, nlon: int, grid: str, truncation: int | None) -> int:
    """The requested truncation, or torch-harmonics' exact default; at most what the grid holds."""
    largest = min(nlat, nlon // 2) - 1
    if truncation is None:
        exact = nlat - 1 if grid == "legendre-gauss" else (nlat - 1) // 2
        return min(exact, largest)
    if not 0 <= truncation <= largest:
        raise ScoreError(f"truncation T{truncation} is outside 0..{largest} for a {nlat} x {nlon}")
    return truncation


@cache
def _analysis(nlat: int, nlon: int, grid: str, truncation: int) -> th.RealSHT:
    """The forward orthonormal real SHT, cached per grid and truncation."""
    n = truncation + 1
    return th.RealSHT(nlat, nlon, lmax=n, mmax=n, grid=grid, norm="ortho")


def _power_of_array(values: np.ndarray, grid: str, truncation: int) -> np.ndarray:
    """`P_l` of an array `(..., nlat, nlon)` with latitudes north first, as `(..., T + 1)`."""
    nlat, nlon = values.shape[-2:]
    with torch.inference_mode():
        fields = torch.from_numpy(np.array(values, dtype=np.float64, order="C"))
        coeffs = _analysis(nlat, nlon, grid, truncation)(fields)
        order_weight = torch.full((truncation + 1,), 2.0, dtype=torch.float64)
        order_weight[0] = 1.0
        power = (coeffs.abs() ** 2 * order_weight).sum(dim=-1) / (4 * math.pi)
    return power.numpy()
