"""Area weights, regions and the means that turn per-point scores into one number per region.

Order of operations (WeatherBench2): area-weighted mean over the region's grid points, then the
mean over init times; square roots (RMSE, spread) are taken by the caller afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xarray as xr

LATITUDE = "latitude"
LONGITUDE = "longitude"

REGIONS: dict[str, tuple[float, float]] = {
    "global": (-90.0, 90.0),
    "nh_extratropics": (20.0, 90.0),
    "tropics": (-20.0, 20.0),
    "sh_extratropics": (-90.0, -20.0),
}
"""Latitude bands (south, north) in degrees, both edges included."""


def cell_area_weights(latitude: xr.DataArray) -> xr.DataArray:
    """Relative cell areas of a regular latitude grid, normalised to mean 1.

    `w_j = sin(b_j+) - sin(b_j-)`, with the cell edges `b` half-way between neighbouring
    latitudes and clipped to +-90 degrees, so a pole point gets its polar cap (WeatherBench2's
    `get_lat_weights`). This is the cos-latitude weight integrated over each cell.
    """
    lat = np.deg2rad(np.asarray(latitude, dtype=np.float64))
    if lat.ndim != 1 or lat.size < 2:
        raise ValueError(f"latitude must be a 1-D coordinate with 2+ points, got shape {lat.shape}")
    order = np.argsort(lat)
    ascending = lat[order]
    edges = np.concatenate(([-np.pi / 2], (ascending[1:] + ascending[:-1]) / 2, [np.pi / 2]))
    area = np.empty_like(lat)
    area[order] = np.diff(np.sin(edges))
    return xr.DataArray(area / area.mean(), coords={LATITUDE: latitude}, dims=[LATITUDE])


def region_weights(latitude: xr.DataArray, region: str) -> xr.DataArray:
    """Cell-area weights that are zero outside `region` (a key of `REGIONS`)."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; choose from {', '.join(REGIONS)}")
    south, north = REGIONS[region]
    inside = (latitude >= south) & (latitude <= north)
    return cell_area_weights(latitude).where(inside, 0.0)


def area_mean(data: xr.DataArray | xr.Dataset, region: str = "global") -> xr.DataArray:
    """Area-weighted mean over latitude and longitude within `region`.

    `mean = sum_j w_j x_j / sum_j w_j` over the grid points j of the region. NaNs propagate.
    """
    weights = region_weights(data[LATITUDE], region)
    return data.weighted(weights).mean((LATITUDE, LONGITUDE), skipna=False)


def regional_means(
    data: xr.DataArray | xr.Dataset,
    regions: Iterable[str] = REGIONS,
    time_dim: str | None = "init_time",
) -> xr.DataArray | xr.Dataset:
    """Area means per region (new dimension `region`) averaged over `time_dim` (None: kept).

    Every init time has the same grid, so the mean over init times of the area means equals the
    area-weighted mean over latitude of the mean over (init time, longitude): that order reduces
    the big array once, and the regions only weight its latitudes.
    """
    zonal = data.mean([dim for dim in (time_dim, LONGITUDE) if dim in data.dims], skipna=False)
    return zonal.weighted(regional_weights(data[LATITUDE], regions)).mean(LATITUDE, skipna=False)


def regional_weights(latitude: xr.DataArray, regions: Iterable[str] = REGIONS) -> xr.DataArray:
    """`region_weights` of each region, stacked on a `region` dimension."""
    names = list(regions)
    return xr.concat(
        [region_weights(latitude, region) for region in names],
        dim=xr.DataArray(names, dims=["region"], name="region"),
    )
