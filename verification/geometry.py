"""Geometries beside the grid: stations and indices, and stations sampled from a grid.

A forecast or a truth comes on one of three geometries:

- a grid: dimensions `latitude` and `longitude` (area-weighted, as in `aggregation`);
- stations: a dimension `station` of ids, with `latitude` and `longitude` coordinates on it
  for regions other than `global`, and an optional `weight` coordinate;
- an index: no spatial dimension at all (Nino 3.4, an MJO amplitude, a city's mean), scored
  as a single station named `index`.

Stations and indices are *points*: a region's mean over them is `sum_s w_s m_s x_s /
sum_s w_s m_s`, with the weights w (1, or the truth's `weight` coordinate) and the region's
mask m at each station's latitude and longitude (bands, boxes, polygons; a grid mask cannot
apply). Points score `global` alone unless regions are asked for. The scores that need a
grid (ACC over a field, the energy score, spectra, maps) are left out for points; the
scores dataset lists them in its `not_scored` attribute.

`at_stations` samples a gridded dataset at stations (`read_stations` reads them from a CSV
file), bilinearly in latitude and longitude, longitude periodic on a global grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from wxens.verification.aggregation import (
    LATITUDE,
    LONGITUDE,
    REGION,
    Counter,
    MaskRegion,
    Region,
    RegionsLike,
    regional_means,
    regional_sums,
    resolve_regions,
)
from wxens.verification.errors import ScoreError

STATION = "station"
WEIGHT = "weight"
INDEX = "index"
"""The station name of an index (a forecast without spatial dimensions)."""
GRID = (LATITUDE, LONGITUDE)
GEOMETRY_NAMES = {"grid": "a grid", "stations": "stations", "index": "an index"}


def geometry(ds: xr.Dataset | xr.DataArray, label: str) -> str:
    """`"grid"`, `"stations"` or `"index"` (see the module docstring); ScoreError when the
    dimensions mix them.

    Example:
        >>> geometry(xr.Dataset({"nino34": ("time", [0.5, 0.7])}), "truth")
        'index'
    """
    spatial = [dim for dim in (*GRID, STATION) if dim in ds.dims]
    if spatial == list(GRID):
        return "grid"
    if spatial == [STATION]:
        return "stations"
    if not spatial:
        return "index"
    raise ScoreError(
        f"{label} has dimension(s) {spatial}: expected latitude and longitude (a grid), "
        f"{STATION!r} (stations) or neither (an index)"
    )


def geometry_name(ds: xr.Dataset | xr.DataArray) -> str:
    """ "a grid", "stations" or "an index", for messages (an index already `as_points` too)."""
    if STATION in ds.dims and ds[STATION].values.tolist() == [INDEX]:
        return GEOMETRY_NAMES["index"]
    return GEOMETRY_NAMES[geometry(ds, "data")]


def as_points(ds: xr.Dataset, label: str) -> xr.Dataset:
    """Stations as they are (ids checked unique), an index as the one station `index`."""
    if STATION not in ds.dims:
        return ds.expand_dims({STATION: [INDEX]})
    check_unique_ids(ds[STATION].values, label)
    return ds


def check_unique_ids(ids: object, label: str) -> None:
    """ScoreError naming the first station id that `label` holds twice."""
    index = pd.Index(ids)
    if index.has_duplicates:
        raise ScoreError(f"{label} has duplicate station ids: {index[index.duplicated()][0]!r}")


def spatial_dims(data: xr.DataArray | xr.Dataset) -> tuple[str, ...]:
    """The dimensions a region averages over: latitude and longitude, or station."""
    return (STATION,) if STATION in data.dims else GRID


def _covers_everything(region: Region) -> bool:
    """A band of every latitude (`global`): it needs no coordinates."""
    poles = xr.DataArray([-90.0, 0.0, 90.0], dims=LATITUDE)
    return region.zonal and bool((region.mask_on(poles, None) == 1).all())


def point_weights(points: xr.DataArray | xr.Dataset, regions: RegionsLike = None) -> xr.DataArray:
    """Each region's weights of the stations (dims `region`, `station`): the `weight`
    coordinate (else 1) times the region's mask at the stations' coordinates.

    Example:
        >>> stations = xr.Dataset(coords={"station": ["oslo", "lagos"],
        ...     "latitude": ("station", [59.9, 6.5]), "longitude": ("station", [10.8, 3.4])})
        >>> point_weights(stations, ["global", "tropics"]).values.tolist()
        [[1.0, 1.0], [0.0, 1.0]]
    """
    named = resolve_regions(regions)
    base = points[WEIGHT] if WEIGHT in points.coords else xr.ones_like(points[STATION], float)
    base = base.astype(np.float64).reset_coords(drop=True)
    if not np.isfinite(base.values).all() or (base.values < 0).any():
        raise ScoreError("station weights must be finite and non-negative")
    located = LATITUDE in points.coords and LONGITUDE in points.coords
    weights = []
    for name, region in named.items():
        if _covers_everything(region):
            mask = xr.ones_like(base)
        elif isinstance(region, MaskRegion):
            raise ScoreError(f"region {name!r} is a mask on a grid; stations take bands and boxes")
        elif not located:
            raise ScoreError(
                f"region {name!r} needs the stations' latitude and longitude coordinates; "
                "an index scores region 'global' only"
            )
        else:
            mask = region.mask_at_points(points[LATITUDE], points[LONGITUDE])
        weight = base * mask.values
        if not (weight > 0).any():
            raise ScoreError(f"region {name!r} holds no station with a weight")
        weights.append(weight)
    return xr.concat(weights, dim=xr.DataArray(list(named), dims=[REGION], name=REGION))


def spatial_means(
    data: xr.DataArray | xr.Dataset,
    regions: RegionsLike,
    time_dim: str | None,
    like: xr.DataArray | xr.Dataset,
) -> xr.DataArray | xr.Dataset:
    """Means per region (new dimension `region`) over `time_dim` (None: kept) and the points
    or the grid (`aggregation.regional_means`); `like` holds the stations' coordinates.

    Example:
        >>> like = xr.Dataset(coords={"station": ["a", "b"], "weight": ("station", [3.0, 1.0])})
        >>> data = xr.DataArray([1.0, 5.0], dims="station")
        >>> spatial_means(data, ["global"], None, like).values.tolist()
        [2.0]
    """
    if STATION not in data.dims:
        return regional_means(data, regions, time_dim)
    means = data.mean(time_dim, skipna=False) if time_dim in data.dims else data
    return means.weighted(point_weights(like, regions)).mean(STATION, skipna=False)


def spatial_sums(
    count: Counter,
    like: xr.DataArray | xr.Dataset,
    regions: RegionsLike,
    time_dim: str | None = "init_time",
) -> xr.DataArray:
    """Weighted sums per region of counts (`aggregation.regional_sums` on a grid): on
    points, `count` over `(time_dim, station)` with each region's `point_weights`."""
    if STATION not in like.dims:
        return regional_sums(count, like[LATITUDE], like[LONGITUDE], regions, time_dim)
    weights = point_weights(like, regions)
    summed = (time_dim,) if time_dim is not None else ()
    parts = [
        count((*summed, STATION), weights.sel({REGION: name}, drop=True)).expand_dims(
            {REGION: [name]}
        )
        for name in weights[REGION].values
    ]
    return xr.concat(parts, dim=REGION)


def read_stations(path: str | Path) -> xr.Dataset:
    """Stations from a CSV file with columns `station` (ids), `latitude`, `longitude` (degrees)
    and optionally `weight`: a Dataset of coordinates on dim `station`. ScoreError on a
    missing column, a duplicate id or a latitude outside [-90, 90].

    Example:
        >>> import io
        >>> read_stations(io.StringIO("station,latitude,longitude\\noslo,59.9,10.8\\n")).sizes
        Frozen({'station': 1})
    """
    try:
        table = pd.read_csv(path, dtype={STATION: str})
    except (OSError, ValueError) as exc:
        raise ScoreError(f"stations {path}: {str(exc).splitlines()[0]}") from None
    wanted = [STATION, LATITUDE, LONGITUDE]
    missing = [column for column in wanted if column not in table.columns]
    if missing:
        raise ScoreError(f"stations {path} has no column {missing[0]!r} (it needs {wanted})")
    check_unique_ids(table[STATION], f"stations {path}")
    outside = table[(table[LATITUDE].abs() > 90) | table[LATITUDE].isna()]
    if len(outside):
        row = outside.iloc[0]
        raise ScoreError(f"station {row[STATION]!r} has latitude {row[LATITUDE]} outside -90..90")
    columns = [LATITUDE, LONGITUDE, *([WEIGHT] if WEIGHT in table.columns else [])]
    coords = {name: (STATION, table[name].to_numpy(float)) for name in columns}
    return xr.Dataset(coords={STATION: table[STATION].to_numpy(), **coords})


def _is_global(longitude: np.ndarray) -> bool:
    step = np.diff(np.sort(longitude)).max(initial=0.0)
    return longitude.size > 1 and np.ptp(longitude) + step >= 360 - 1e-6


def at_stations(data: xr.Dataset | xr.DataArray, stations: xr.Dataset) -> xr.Dataset | xr.DataArray:
    """`data` on a grid, sampled at the stations (`read_stations`): bilinear interpolation in
    latitude and longitude between the four surrounding grid points (xarray's `interp`,
    linear in each), the longitude periodic on a global grid (its first column repeated at
    +360), so a station between the last and the first longitude is interpolated across
    them. Result on dim `station` with the stations' coordinates. ScoreError for a station
    outside the grid.

    Example:
        >>> grid = xr.DataArray([[0.0, 10.0], [20.0, 30.0]], dims=("latitude", "longitude"),
        ...     coords={"latitude": [10.0, 0.0], "longitude": [0.0, 10.0]})
        >>> where = xr.Dataset(coords={"station": ["x"], "latitude": ("station", [5.0]),
        ...                            "longitude": ("station", [5.0])})
        >>> at_stations(grid, where).values.tolist()
        [15.0]
    """
    lats = np.asarray(data[LATITUDE].values, float)
    lons = np.asarray(data[LONGITUDE].values, float)
    west = lons.min()
    wanted_lon = west + (np.asarray(stations[LONGITUDE].values, float) - west) % 360
    wanted_lat = np.asarray(stations[LATITUDE].values, float)
    if _is_global(lons):
        first = data.isel({LONGITUDE: [int(np.argmin(lons))]})
        data = xr.concat([data, first.assign_coords({LONGITUDE: [west + 360]})], LONGITUDE)
        east = west + 360
    else:
        east = lons.max()
    inside = (wanted_lat >= lats.min() - 1e-9) & (wanted_lat <= lats.max() + 1e-9)
    inside &= wanted_lon <= east + 1e-9
    if not inside.all():
        k = int(np.flatnonzero(~inside)[0])
        raise ScoreError(
            f"station {stations[STATION].values[k]!r} at ({wanted_lat[k]:g}, "
            f"{stations[LONGITUDE].values[k]:g}) lies outside the grid (latitude "
            f"{lats.min():g}..{lats.max():g}, longitude {west:g}..{east:g})"
        )
    data = data.sortby(LATITUDE).sortby(LONGITUDE)
    sampled = data.interp(
        {
            LATITUDE: xr.DataArray(np.clip(wanted_lat, lats.min(), lats.max()), dims=STATION),
            LONGITUDE: xr.DataArray(np.clip(wanted_lon, west, east), dims=STATION),
        },
        method="linear",
    )
    return sampled.drop_vars(list(GRID)).assign_coords(stations.coords)
