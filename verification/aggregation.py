"""Area weights, regions and the means that turn per-point scores into one number per region.

One area weighting for the whole project: `cell_area_weights`, the area of each latitude row's
cells (training, `wxens skill` and `wxens verify` all use it). A region's weights are those
cell areas times its mask, the share of each cell inside the region (0 to 1):

- `LatitudeBand(south, north)`: a band of latitudes, both edges included;
  `LatitudeBands(bands)`: the latitudes of any of several bands;
- `LatLonBox(south, north, west, east)`: a box, its longitudes running east from `west` to
  `east` (so `LatLonBox(35, 70, 350, 40)` wraps past 0); `parse_box("NAME=S,N,W,E")` reads
  one;
- `PolygonRegion(polygons)`: shapely polygons in longitude and latitude, masked on the data's
  grid with regionmask (the fraction of each cell inside);
- `NaturalEarthRegion("land" | "sea")`: the land of the 1:110m Natural Earth coastlines in
  the local cartopy data folder (`natural_earth`), or the sea, its complement;
- `MaskRegion(mask)`: any 0/1 or fractional mask on the grid (a DataArray on `latitude` and
  `longitude`, e.g. a land fraction).

Regions by name: `REGIONS`, the regions scored when none are named (the four bands
`global`, `nh_extratropics`, `tropics`, `sh_extratropics`); `EXTRA_REGIONS`, scored only when
named (`land`, `sea` and WeatherBench2's regions, `wb2_...`); `REGION_SETS`, names that stand
for several regions (`weatherbench2`: WeatherBench2's regional set). `resolve_regions` takes
any of these names, boxes written `NAME=S,N,W,E`, and `Region` objects.

Order of operations (WeatherBench2): area-weighted mean over the region's grid points, then the
mean over init times; square roots (RMSE, spread) are taken by the caller afterwards. A band's
weights depend on latitude only, so its means are taken over longitude first (a cheap zonal
mean, then a weighted mean of a few rows); boxes, polygons and masks weight every grid point.
"""

from __future__ import annotations

import abc
import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, reduce
from typing import Literal

import numpy as np
import shapely
import xarray as xr
from wxens.verification.errors import ScoreError
from wxens.verification.natural_earth import land_polygons

LATITUDE = "latitude"
LONGITUDE = "longitude"
REGION = "region"


def cell_area_weights(latitude: xr.DataArray | np.ndarray) -> xr.DataArray:
    """Relative cell areas of a regular latitude grid, normalised to mean 1, dimension `latitude`.

    `w_j = sin(b_j+) - sin(b_j-)`, with the cell edges `b` half-way between neighbouring
    latitudes and clipped to +-90 degrees, so a pole point gets its polar cap (WeatherBench2's
    `get_lat_weights`). This is the cos-latitude weight integrated over each cell. Unitless.

    Example:
        >>> weights = cell_area_weights(np.array([90.0, 0.0, -90.0]))
        >>> weights.values.round(4).tolist()  # caps of 45 degrees, the band between them
        [0.4393, 2.1213, 0.4393]
    """
    if not isinstance(latitude, xr.DataArray):
        values = np.asarray(latitude, dtype=np.float64)
        latitude = xr.DataArray(values, dims=[LATITUDE], coords={LATITUDE: values})
    lat = np.deg2rad(np.asarray(latitude, dtype=np.float64))
    if lat.ndim != 1 or lat.size < 2:
        raise ScoreError(f"latitude must be a 1-D coordinate with 2+ points, got shape {lat.shape}")
    order = np.argsort(lat)
    ascending = lat[order]
    edges = np.concatenate(([-np.pi / 2], (ascending[1:] + ascending[:-1]) / 2, [np.pi / 2]))
    area = np.empty_like(lat)
    area[order] = np.diff(np.sin(edges))
    return xr.DataArray(area / area.mean(), coords={LATITUDE: latitude}, dims=[LATITUDE])


class Region(abc.ABC):
    """A part of the globe. Its weights are `cell_area_weights` times its mask (`mask_on`, 0 to 1).

    Subclasses define `mask_on`; `zonal` is True when the mask depends on latitude only, which
    lets the means average over longitude first. `name` labels the region in the scores
    dataset when the region is given as an object rather than by its `REGIONS` key.
    """

    name: str | None
    zonal: bool = False

    @abc.abstractmethod
    def mask_on(self, latitude: xr.DataArray, longitude: xr.DataArray | None) -> xr.DataArray:
        """The share of each grid cell inside the region, 0 to 1, on dims `latitude` (zonal
        regions) or `(latitude, longitude)`."""

    @abc.abstractmethod
    def default_name(self) -> str:
        """The name used when `name` is None."""

    @property
    def label(self) -> str:
        """`name`, or a name made of the region's parameters."""
        return self.name or self.default_name()

    def mask_at_points(self, latitude: xr.DataArray, longitude: xr.DataArray) -> xr.DataArray:
        """The mask at points (stations) whose coordinates lie along one dimension: read off
        the grid of their own distinct latitudes and longitudes. A region's mask on a grid
        is that of each grid point (cell centre) for bands and boxes; regions whose grid masks
        are cell fractions override this with centre tests.

        Example:
            >>> latitude = xr.DataArray([10.0, 50.0], dims="station")
            >>> longitude = xr.DataArray([5.0, 5.0], dims="station")
            >>> LatLonBox(0, 20, 0, 10).mask_at_points(latitude, longitude).values.tolist()
            [1.0, 0.0]
        """
        (dim,) = latitude.dims
        lats, lat_index = np.unique(np.asarray(latitude, float), return_inverse=True)
        lons, lon_index = np.unique(np.asarray(longitude, float), return_inverse=True)
        grid_mask = self.mask_on(
            xr.DataArray(lats, dims=LATITUDE, coords={LATITUDE: lats}),
            xr.DataArray(lons, dims=LONGITUDE, coords={LONGITUDE: lons}),
        )
        picks = {LATITUDE: lat_index, LONGITUDE: lon_index}
        indexers = {name: xr.DataArray(picks[name], dims=dim) for name in grid_mask.dims}
        return grid_mask.isel(indexers).drop_vars([LATITUDE, LONGITUDE], errors="ignore")

    def weights(
        self, latitude: xr.DataArray, longitude: xr.DataArray | None = None
    ) -> xr.DataArray:
        """Cell-area weights times the mask: zero outside the region. Unitless.

        Example:
            >>> latitude = xr.DataArray([60.0, 0.0, -60.0], dims="latitude")
            >>> LatitudeBand(-10, 90).weights(latitude).values.round(3).tolist()
            [0.75, 1.5, 0.0]
        """
        if not isinstance(latitude, xr.DataArray) or LATITUDE not in latitude.dims:
            raise ScoreError(f"region {self.label!r} needs a {LATITUDE!r} coordinate")
        if LATITUDE not in latitude.coords:
            latitude = latitude.assign_coords({LATITUDE: latitude.values})
        mask = self.mask_on(latitude, longitude)
        weights = cell_area_weights(latitude)
        if self.zonal:
            return weights.where(mask > 0, 0.0)  # 0/1: the band's cells as they are
        weights = weights * mask
        if not (weights > 0).any():
            raise ScoreError(f"region {self.label!r} holds no grid point with a weight")
        return weights.transpose(LATITUDE, LONGITUDE)


def _longitude(region: Region, longitude: xr.DataArray | None) -> xr.DataArray:
    if longitude is None:
        raise ScoreError(f"region {region.label!r} needs a {LONGITUDE!r} coordinate")
    if LONGITUDE not in longitude.coords:
        longitude = longitude.assign_coords({LONGITUDE: longitude.values})
    return longitude


@dataclass(frozen=True)
class LatitudeBand(Region):
    """The latitudes from `south` to `north` (degrees north), both edges included.

    Example:
        >>> LatitudeBand(-20, 20).label
        'band_20S_20N'
    """

    south: float
    north: float
    name: str | None = None
    zonal = True

    def __post_init__(self) -> None:
        if not -90 <= self.south <= self.north <= 90:
            raise ScoreError(
                f"a latitude band needs -90 <= south <= north <= 90, got {self.south}, {self.north}"
            )

    def default_name(self) -> str:
        return f"band_{_degrees(self.south, 'N', 'S')}_{_degrees(self.north, 'N', 'S')}"

    def mask_on(
        self, latitude: xr.DataArray, longitude: xr.DataArray | None = None
    ) -> xr.DataArray:
        return ((latitude >= self.south) & (latitude <= self.north)).astype(np.float64)


@dataclass(frozen=True)
class LatitudeBands(Region):
    """The latitudes of any of `bands` (`LatitudeBand`s), e.g. both extratropics.

    Example:
        >>> latitude = xr.DataArray([60.0, 0.0, -60.0], dims="latitude")
        >>> extratropics = LatitudeBands((LatitudeBand(-90, -20), LatitudeBand(20, 90)))
        >>> extratropics.label, extratropics.mask_on(latitude).values.tolist()
        ('band_90S_20S+band_20N_90N', [1.0, 0.0, 1.0])
    """

    bands: tuple[LatitudeBand, ...]
    name: str | None = None
    zonal = True

    def __post_init__(self) -> None:
        if not self.bands or not all(isinstance(band, LatitudeBand) for band in self.bands):
            raise ScoreError("latitude bands need one or more LatitudeBand")

    def default_name(self) -> str:
        return "+".join(band.label for band in self.bands)

    def mask_on(
        self, latitude: xr.DataArray, longitude: xr.DataArray | None = None
    ) -> xr.DataArray:
        return reduce(np.maximum, (band.mask_on(latitude) for band in self.bands))


@dataclass(frozen=True)
class LatLonBox(Region):
    """Latitudes `south` to `north`, longitudes east from `west` to `east` (degrees; edges
    included). Longitudes are taken modulo 360, so a box may wrap past 0: `west=350, east=40`
    (or `west=-10, east=40`) is 50 degrees wide. `east - west >= 360` is every longitude.

    Example:
        >>> latitude = xr.DataArray([45.0, 0.0, -45.0], dims="latitude")
        >>> longitude = xr.DataArray([0.0, 90.0, 180.0, 270.0], dims="longitude")
        >>> box = LatLonBox(south=0, north=60, west=250, east=100)  # wraps past 0
        >>> box.mask_on(latitude, longitude).values.tolist()
        [[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    """

    south: float
    north: float
    west: float
    east: float
    name: str | None = None

    def __post_init__(self) -> None:
        if not -90 <= self.south <= self.north <= 90:
            raise ScoreError(
                f"a box needs -90 <= south <= north <= 90, got {self.south}, {self.north}"
            )

    def default_name(self) -> str:
        corners = (
            _degrees(self.south, "N", "S"),
            _degrees(self.north, "N", "S"),
            _degrees(self.west % 360, "E", "W"),
            _degrees(self.east % 360, "E", "W"),
        )
        return "box_" + "_".join(corners)

    def mask_on(self, latitude: xr.DataArray, longitude: xr.DataArray | None) -> xr.DataArray:
        longitude = _longitude(self, longitude)
        rows = (latitude >= self.south) & (latitude <= self.north)
        if self.east - self.west >= 360:
            columns = xr.ones_like(longitude, dtype=bool)
        else:
            width = (self.east - self.west) % 360
            columns = (longitude - self.west) % 360 <= width
        return (rows & columns).astype(np.float64).transpose(LATITUDE, LONGITUDE)


@dataclass(frozen=True, eq=False)
class MaskRegion(Region):
    """A user's mask on the grid: a DataArray on `latitude` and/or `longitude`, values 0 to 1
    (0/1 masks, or fractions such as a land fraction). Its coordinates, when it has them,
    must be the grid's (to 1e-6 degrees).

    Example:
        >>> latitude = xr.DataArray([45.0, -45.0], dims="latitude")
        >>> longitude = xr.DataArray([0.0, 180.0], dims="longitude")
        >>> land = xr.DataArray([[1.0, 0.5], [0.0, 0.0]], dims=("latitude", "longitude"))
        >>> land = MaskRegion(land, name="land")
        >>> land.weights(latitude, longitude).values.tolist()
        [[1.0, 0.5], [0.0, 0.0]]
    """

    mask: xr.DataArray = field(repr=False)
    name: str | None = None

    def __post_init__(self) -> None:
        data = self.mask
        if not isinstance(data, xr.DataArray) or not data.dims:
            raise ScoreError("a mask region needs a DataArray on latitude and longitude")
        extra = [dim for dim in data.dims if dim not in (LATITUDE, LONGITUDE)]
        if extra:
            raise ScoreError(
                f"mask region {self.label!r} has dimension(s) {extra}; "
                f"it may have only {LATITUDE!r} and {LONGITUDE!r}"
            )
        values = np.asarray(data.values, dtype=np.float64)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ScoreError(f"mask region {self.label!r} must hold values from 0 to 1")

    def default_name(self) -> str:
        return str(self.mask.name) if self.mask.name is not None else "mask"

    def mask_on(self, latitude: xr.DataArray, longitude: xr.DataArray | None) -> xr.DataArray:
        grid = {LATITUDE: latitude, LONGITUDE: _longitude(self, longitude)}
        mask = self.mask.astype(np.float64)
        for dim in mask.dims:
            ours = np.asarray(grid[dim].values, dtype=np.float64)
            if mask.sizes[dim] != ours.size or (
                dim in mask.coords and not np.allclose(mask[dim].values, ours, atol=1e-6)
            ):
                raise ScoreError(
                    f"mask region {self.label!r} is on another grid: its {dim} has "
                    f"{mask.sizes[dim]} points against the data's {ours.size}"
                )
        mask = mask.drop_vars(list(mask.coords)).assign_coords(
            {dim: grid[dim].values for dim in mask.dims}
        )
        plane = xr.zeros_like(grid[LATITUDE], dtype=np.float64) + xr.zeros_like(
            grid[LONGITUDE], dtype=np.float64
        )
        return (mask + plane).transpose(LATITUDE, LONGITUDE)


Polygons = shapely.Polygon | shapely.MultiPolygon


@dataclass(frozen=True, eq=False)
class PolygonRegion(Region):
    """The inside of one or more shapely polygons (`Polygon` or `MultiPolygon`; x longitude,
    y latitude, degrees; longitudes all within -180..180 or all within 0..360), masked with
    regionmask on the data's grid, whichever longitude convention the grid uses.

    With `fractional` (the default), the mask is the fraction of each grid cell inside
    (regionmask's `mask_3D_frac_approx`: each cell sampled at 10 x 10 points, cells ending
    half-way between grid points and at the poles). regionmask gives fractions only on
    equally spaced latitudes and longitudes; on other grids (a Gaussian grid), and without
    `fractional`, the mask is 1 where the cell centre is inside and 0 elsewhere
    (`mask_3D`). A grid with no cell inside has no weight (ScoreError).

    Example:
        >>> latitude = xr.DataArray([45.0, 15.0, -15.0, -45.0], dims="latitude")
        >>> longitude = xr.DataArray([0.0, 90.0, 180.0, 270.0], dims="longitude")
        >>> north_west = shapely.box(-135, 0, 45, 90)  # west 135W, south 0, east 45E, north 90N
        >>> PolygonRegion(north_west, fractional=False).mask_on(latitude, longitude).values
        array([[1., 0., 0., 1.],
               [1., 0., 0., 1.],
               [0., 0., 0., 0.],
               [0., 0., 0., 0.]])
    """

    polygons: Polygons | Sequence[Polygons] = field(repr=False)
    name: str | None = None
    fractional: bool = True
    _masks: dict[tuple, np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        polygons = self.polygons
        polygons = (polygons,) if isinstance(polygons, shapely.Geometry) else tuple(polygons)
        object.__setattr__(self, "polygons", polygons)
        if not polygons or not all(isinstance(p, Polygons) and not p.is_empty for p in polygons):
            raise ScoreError(
                f"polygon region {self.label!r} needs one or more non-empty shapely polygons"
            )
        for polygon in polygons:
            if not polygon.is_valid:
                reason = shapely.is_valid_reason(polygon)
                raise ScoreError(f"polygon region {self.label!r} is not valid: {reason}")
        west, south, east, north = np.round(shapely.total_bounds(polygons), 6)
        if south < -90 or north > 90 or west < -180 or east > 360 or (west < 0 and east > 180):
            raise ScoreError(
                f"polygon region {self.label!r} spans longitudes {west:g} to {east:g} and"
                f" latitudes {south:g} to {north:g}: it must lie within -90..90 N and within"
                " -180..180 or 0..360 E"
            )

    def __repr__(self) -> str:
        # The polygons themselves would make a huge repr; their digest tells them apart.
        digest = hashlib.sha256(b"".join(shapely.to_wkb(self.polygons))).hexdigest()[:16]
        return (
            f"PolygonRegion(name={self.name!r}, polygons={len(self.polygons)},"
            f" wkb_sha256={digest!r}, fractional={self.fractional})"
        )

    def default_name(self) -> str:
        return "polygon"

    def mask_at_points(self, latitude: xr.DataArray, longitude: xr.DataArray) -> xr.DataArray:
        """1 at the points inside the polygons, 0 elsewhere (centre tests, not fractions)."""
        return Region.mask_at_points(replace(self, fractional=False), latitude, longitude)

    def mask_on(self, latitude: xr.DataArray, longitude: xr.DataArray | None) -> xr.DataArray:
        longitude = _longitude(self, longitude)
        key = (_grid_key(latitude), _grid_key(longitude))
        if key not in self._masks:  # every score asks again; regionmask takes up to seconds
            if len(self._masks) > 8:
                self._masks.clear()
            self._masks[key] = self._grid_mask(latitude.values, longitude.values)
        return xr.DataArray(
            self._masks[key],
            dims=(LATITUDE, LONGITUDE),
            coords={LATITUDE: latitude.values, LONGITUDE: longitude.values},
        )

    def _grid_mask(self, latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
        import regionmask
        from regionmask.core.mask import InvalidCoordsError

        outline = regionmask.Regions([shapely.union_all(self.polygons)], overlap=False)
        lon = np.asarray(longitude, dtype=np.float64)
        lat = np.asarray(latitude, dtype=np.float64)
        with warnings.catch_warnings():
            # regionmask 0.13 multiplies affine transforms with `*`, which affine 3 deprecates;
            # a region with no grid point is `weights`'s ScoreError, not a warning as well.
            warnings.filterwarnings("ignore", "Use `@` matmul", PendingDeprecationWarning)
            warnings.filterwarnings("ignore", "No gridpoint belongs to any region", UserWarning)
            if self.fractional:
                try:
                    return outline.mask_3D_frac_approx(lon, lat, drop=False).values[0]
                except InvalidCoordsError:  # not equally spaced: cell centres
                    pass
            return outline.mask_3D(lon, lat, drop=False).values[0].astype(np.float64)


@dataclass(frozen=True)
class NaturalEarthRegion(Region):
    """The land (`part="land"`) or the sea (`"sea"`) of the 1:110m Natural Earth coastlines,
    read from the local cartopy data folder (`natural_earth.land_polygons`: lakes count as
    land, the Caspian Sea as sea). Land is a fractional `PolygonRegion` mask; the sea is one
    minus it, so land and sea weights add up to the global weights.

    Without the coastlines on this machine, the mask is a ScoreError naming the folder and
    the variable to set (`WXENS_CARTOPY_DATA` or `WXENS_SAMPLE_DATA`).
    """

    part: Literal["land", "sea"] = "land"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.part not in ("land", "sea"):
            raise ScoreError(f"a Natural Earth region is 'land' or 'sea', not {self.part!r}")

    def default_name(self) -> str:
        return self.part

    def mask_at_points(self, latitude: xr.DataArray, longitude: xr.DataArray) -> xr.DataArray:
        """1 at the points on this part (land or sea), 0 elsewhere."""
        land = _land_region(land_polygons()).mask_at_points(latitude, longitude)
        return land if self.part == "land" else 1.0 - land

    def mask_on(self, latitude: xr.DataArray, longitude: xr.DataArray | None) -> xr.DataArray:
        land = _land_region(land_polygons()).mask_on(latitude, _longitude(self, longitude))
        return land if self.part == "land" else 1.0 - land


@cache
def _land_region(polygons: shapely.MultiPolygon) -> PolygonRegion:
    """One `PolygonRegion` per set of land polygons, so its masks are computed once a grid."""
    return PolygonRegion(polygons, name="land")


def _degrees(value: float, positive: str, negative: str) -> str:
    return f"{abs(value):g}{positive if value >= 0 else negative}"


REGIONS: dict[str, Region] = {
    "global": LatitudeBand(-90.0, 90.0, "global"),
    "nh_extratropics": LatitudeBand(20.0, 90.0, "nh_extratropics"),
    "tropics": LatitudeBand(-20.0, 20.0, "tropics"),
    "sh_extratropics": LatitudeBand(-90.0, -20.0, "sh_extratropics"),
}
"""The regions scored when none are named: four latitude bands (south, north), both edges
included. Score stores and reports expect these four by default: add other named regions to
`EXTRA_REGIONS`."""

EXTRA_REGIONS: dict[str, Region] = {
    "land": NaturalEarthRegion("land", "land"),
    "sea": NaturalEarthRegion("sea", "sea"),
    # WeatherBench2's `predefined_regions` (google-research/weatherbench2, scripts/evaluate.py):
    # latitude and longitude slices, both ends included as here. Its `global`, `tropics`,
    # `northern-hemisphere` (20-90N) and `southern-hemisphere` (90-20S) are `REGIONS` bands.
    "wb2_extratropics": LatitudeBands(
        (LatitudeBand(-90.0, -20.0), LatitudeBand(20.0, 90.0)), "wb2_extratropics"
    ),
    "wb2_europe": LatLonBox(35.0, 75.0, 347.5, 42.5, "wb2_europe"),
    "wb2_north_america": LatLonBox(25.0, 60.0, 240.0, 285.0, "wb2_north_america"),
    "wb2_north_atlantic": LatLonBox(25.0, 65.0, 290.0, 350.0, "wb2_north_atlantic"),
    "wb2_north_pacific": LatLonBox(25.0, 60.0, 145.0, 230.0, "wb2_north_pacific"),
    "wb2_east_asia": LatLonBox(25.0, 60.0, 102.5, 150.0, "wb2_east_asia"),
    "wb2_ausnz": LatLonBox(-45.0, -12.5, 120.0, 175.0, "wb2_ausnz"),
    "wb2_arctic": LatitudeBand(60.0, 90.0, "wb2_arctic"),
    "wb2_antarctic": LatitudeBand(-90.0, -60.0, "wb2_antarctic"),
}
"""Named regions scored only when named: `land` and `sea` (`NaturalEarthRegion`, from the
local Natural Earth coastlines), and WeatherBench2's regions (`wb2_...`). Add an entry (any
`Region`) to make a region available by name."""

REGION_SETS: dict[str, list[str]] = {
    "weatherbench2": [
        "global",
        "tropics",
        "wb2_extratropics",
        "nh_extratropics",
        "sh_extratropics",
        "wb2_europe",
        "wb2_north_america",
        "wb2_north_atlantic",
        "wb2_north_pacific",
        "wb2_east_asia",
        "wb2_ausnz",
        "wb2_arctic",
        "wb2_antarctic",
    ],
}
"""Names that stand for several regions: `weatherbench2` is WeatherBench2's regional set (its
land regions, which need its land-sea mask, aside)."""

RegionsLike = Sequence[str | Region] | Mapping[str, Region] | str | Region | None


def parse_box(text: str) -> LatLonBox:
    """The box written `NAME=S,N,W,E`: south, north (degrees north), west, east (degrees east,
    the longitudes running east from W to E), named NAME.

    Example:
        >>> parse_box("europe2=35,70,-10,40")
        LatLonBox(south=35.0, north=70.0, west=-10.0, east=40.0, name='europe2')
    """
    name, _, corners = text.partition("=")
    try:
        values = [float(value) for value in corners.split(",")]
    except ValueError:
        values = []
    if not name.strip() or len(values) != 4 or not np.isfinite(values).all():
        raise ScoreError(f"region box {text!r}: expected NAME=S,N,W,E, four numbers in degrees")
    try:
        return LatLonBox(*values, name=name.strip())
    except ScoreError as exc:
        raise ScoreError(f"region box {text!r}: {exc}") from None


def _named(name: str) -> list[tuple[str, Region]]:
    """The (name, region) pairs that `name` stands for: a set's regions, a registered region,
    or a box `NAME=S,N,W,E`."""
    if name in REGION_SETS:
        return [pair for member in REGION_SETS[name] for pair in _named(member)]
    if "=" in name:
        box = parse_box(name)
        return [(box.label, box)]
    for registry in (REGIONS, EXTRA_REGIONS):
        if name in registry:
            return [(name, registry[name])]
    choices = ", ".join([*REGIONS, *EXTRA_REGIONS, *REGION_SETS])
    raise ScoreError(f"unknown region {name!r}; choose from {choices} or a box NAME=S,N,W,E")


def resolve_regions(regions: RegionsLike = None) -> dict[str, Region]:
    """The regions to score, by name: names of `REGIONS`, `EXTRA_REGIONS` and `REGION_SETS`,
    boxes written `NAME=S,N,W,E` (`parse_box`), `Region` objects (named by their `label`), a
    mapping of names to regions, or None (all of `REGIONS`).

    Example:
        >>> list(resolve_regions(["tropics", LatLonBox(30, 60, 350, 40, name="europe")]))
        ['tropics', 'europe']
        >>> list(resolve_regions(["land", "box=35,70,-10,40"]))
        ['land', 'box']
        >>> list(resolve_regions("weatherbench2"))[:5]
        ['global', 'tropics', 'wb2_extratropics', 'nh_extratropics', 'sh_extratropics']
    """
    if regions is None:
        return dict(REGIONS)
    if isinstance(regions, str | Region):
        regions = [regions]
    if isinstance(regions, Mapping):
        named = dict(regions)
    else:
        named = {}
        for region in regions:
            if isinstance(region, str):
                pairs = _named(region)
            elif isinstance(region, Region):
                pairs = [(region.label, region)]
            else:
                raise ScoreError(f"a region is a name or a Region, got {type(region).__name__}")
            for key, value in pairs:
                if key in named:
                    raise ScoreError(f"region {key!r} is given twice")
                named[key] = value
    if not named:
        raise ScoreError("no region to score")
    for key, region in named.items():
        if not isinstance(region, Region):
            raise ScoreError(f"region {key!r} is a {type(region).__name__}, not a Region")
    return named


def region_weights(
    latitude: xr.DataArray,
    region: str | Region,
    longitude: xr.DataArray | None = None,
) -> xr.DataArray:
    """Cell-area weights that are zero outside `region` (a region's name, as in
    `resolve_regions`, or a `Region`); dims `latitude` for a zonal region,
    `(latitude, longitude)` otherwise (`longitude` needed then).

    Example:
        >>> latitude = xr.DataArray([60.0, 0.0, -60.0], dims="latitude")
        >>> region_weights(latitude, "tropics").values.round(3).tolist()
        [0.0, 1.5, 0.0]
    """
    resolved = list(resolve_regions([region]).values())
    if len(resolved) != 1:
        raise ScoreError(f"{region!r} names {len(resolved)} regions; region_weights takes one")
    return resolved[0].weights(latitude, longitude)


def regional_weights(
    latitude: xr.DataArray,
    regions: RegionsLike = None,
    longitude: xr.DataArray | None = None,
) -> xr.DataArray:
    """`region_weights` of each region, stacked on a `region` dimension (a band's weights are
    broadcast over longitude when other regions need it).

    Example:
        >>> latitude = xr.DataArray([60.0, 0.0, -60.0], dims="latitude")
        >>> regional_weights(latitude, ["global", "tropics"]).dims
        ('region', 'latitude')
    """
    named = resolve_regions(regions)
    try:  # regions of numbers are hashable (not a MaskRegion, which holds a DataArray)
        key = (tuple(named.items()), _grid_key(latitude), _grid_key(longitude))
        hash(key)
    except TypeError:
        return _stacked_weights(named, latitude, longitude)
    if key not in _WEIGHTS:
        if len(_WEIGHTS) > 64:
            _WEIGHTS.clear()
        _WEIGHTS[key] = _stacked_weights(named, latitude, longitude)
    return _WEIGHTS[key]


_WEIGHTS: dict[tuple, xr.DataArray] = {}
"""`regional_weights` already computed, by regions and grid: every score of every update
needs the same few (the same regions on the same grid), at 30 ms each."""


def _grid_key(coordinate: xr.DataArray | None) -> tuple | None:
    if coordinate is None:
        return None
    return (coordinate.dims, coordinate.values.tobytes(), str(coordinate.dtype))


def _stacked_weights(
    named: Mapping[str, Region], latitude: xr.DataArray, longitude: xr.DataArray | None
) -> xr.DataArray:
    weights = [region.weights(latitude, longitude) for region in named.values()]
    return xr.concat(
        weights, dim=xr.DataArray(list(named), dims=[REGION], name=REGION), join="exact"
    )


def area_mean(data: xr.DataArray | xr.Dataset, region: str | Region = "global") -> xr.DataArray:
    """Area-weighted mean over latitude and longitude within `region`.

    `mean = sum_j w_j x_j / sum_j w_j` over the grid points j of the region, in the units of
    `data`. NaNs propagate.

    Example:
        >>> data = xr.DataArray(
        ...     [[1.0, 1.0], [3.0, 3.0]], dims=("latitude", "longitude"),
        ...     coords={"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]})
        >>> float(area_mean(data))
        2.0
    """
    weights = region_weights(data[LATITUDE], region, data[LONGITUDE])
    return data.weighted(weights).mean((LATITUDE, LONGITUDE), skipna=False)


def _split(named: Mapping[str, Region]) -> tuple[dict[str, Region], dict[str, Region]]:
    """The zonal regions (bands) and the others (boxes, masks)."""
    zonal = {key: region for key, region in named.items() if region.zonal}
    return zonal, {key: region for key, region in named.items() if key not in zonal}


def _in_order(parts: list[xr.DataArray], named: Mapping[str, Region]):
    if len(parts) == 1:
        return parts[0]
    return xr.concat(parts, dim=REGION).sel({REGION: list(named)})


def regional_means(
    data: xr.DataArray | xr.Dataset,
    regions: RegionsLike = None,
    time_dim: str | None = "init_time",
) -> xr.DataArray | xr.Dataset:
    """Area means per region (new dimension `region`) averaged over `time_dim` (None: kept).

    Every init time has the same grid, so the mean over init times of the area means equals the
    area-weighted mean of the mean over init times: that order reduces the big array once. For
    bands (weights by latitude only) the mean over longitude comes first too, and the regions
    only weight its latitudes; boxes and masks weight every (latitude, longitude) point.

    Example:
        >>> data = xr.DataArray(
        ...     [[[1.0, 2.0], [3.0, 4.0]]], dims=("init_time", "latitude", "longitude"),
        ...     coords={"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]})
        >>> box = LatLonBox(0, 90, 90, 270, name="east")
        >>> regional_means(data, ["global", box]).values.tolist()
        [2.5, 2.0]
    """
    named = resolve_regions(regions)
    zonal, others = _split(named)
    parts = []
    if zonal:
        means = data.mean([dim for dim in (time_dim, LONGITUDE) if dim in data.dims], skipna=False)
        weights = regional_weights(data[LATITUDE], zonal)
        parts.append(means.weighted(weights).mean(LATITUDE, skipna=False))
    if others:
        means = data.mean(time_dim, skipna=False) if time_dim in data.dims else data
        weights = regional_weights(data[LATITUDE], others, data[LONGITUDE])
        parts.append(means.weighted(weights).mean((LATITUDE, LONGITUDE), skipna=False))
    return _in_order(parts, named)


Counter = Callable[[tuple[str, ...], "xr.DataArray | None"], xr.DataArray]
"""`count(dims, weights)`: something counted (rank counts, contingency tables) and summed over
`dims`, each point weighted by `weights` (None: 1)."""


def ordered_sum(data: xr.DataArray, dim: str) -> xr.DataArray:
    """The sum along `dim` added in index order, NaNs counted as 0.

    `.sum` adds pairwise in an order that follows the array's memory layout and chunks, so the
    same numbers laid out another way can differ in the last bit; the running sum
    (`np.nancumsum`, whose last element this is) adds one after the other whatever the layout:
    the tables of a set of inits come out bit for bit the same in a batch verify and from a
    statistics store.

    Example:
        >>> data = xr.DataArray([[0.1, 0.2, 0.3]], dims=("x", "y"))
        >>> ordered_sum(data, "y").values.tolist() == [(0.1 + 0.2) + 0.3]
        True
    """
    if len(data.chunksizes.get(dim, ())) > 1:
        data = data.chunk({dim: -1})
    return xr.apply_ufunc(
        _running_total,
        data,
        input_core_dims=[[dim]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )


def _running_total(values: np.ndarray) -> np.ndarray:
    if values.shape[-1] == 0:
        return np.zeros(values.shape[:-1])
    return np.nancumsum(values, axis=-1, dtype=np.float64)[..., -1]


def regional_sums(
    count: Counter,
    latitude: xr.DataArray,
    longitude: xr.DataArray,
    regions: RegionsLike = None,
    time_dim: str | None = "init_time",
) -> xr.DataArray:
    """Area-weighted sums per region of counts: `sum_j w_j n_j` (new dimension `region`).

    For the bands, `count` is called once over `(time_dim, longitude)`, and the regions'
    weights then act on its latitudes; for each box or mask, over `(time_dim, latitude,
    longitude)` with the region's weights (`time_dim` None: kept, not summed). The counts are
    weighted by cell area (normalised to mean 1 over the globe), not normalised to sum 1.

    Example:
        >>> ones = xr.DataArray(
        ...     np.ones((1, 2, 2)), dims=("init_time", "latitude", "longitude"),
        ...     coords={"latitude": [45.0, -45.0], "longitude": [0.0, 180.0]})
        >>> def count(dims, weights):
        ...     return (ones if weights is None else ones * weights).sum(dims)
        >>> regional_sums(count, ones.latitude, ones.longitude, ["global"]).values.tolist()
        [4.0]
    """
    named = resolve_regions(regions)
    zonal, others = _split(named)
    parts = []
    summed = (time_dim,) if time_dim is not None else ()
    if zonal:
        counts = count((*summed, LONGITUDE), None)
        parts.append(ordered_sum(counts * regional_weights(latitude, zonal), LATITUDE))
    for name, region in others.items():
        weights = region.weights(latitude, longitude)
        counts = count((*summed, LATITUDE, LONGITUDE), weights)
        parts.append(counts.expand_dims({REGION: [name]}))
    return _in_order(parts, named)


def per_region(
    score: Callable[[Region], xr.DataArray], regions: RegionsLike = None
) -> xr.DataArray:
    """`score(region)` for each region, stacked on a `region` dimension.

    Example:
        >>> per_region(lambda region: xr.DataArray(region.south), ["global", "tropics"]).values
        array([-90., -20.])
    """
    named = resolve_regions(regions)
    values = [score(region) for region in named.values()]
    return xr.concat(values, dim=xr.DataArray(list(named), dims=[REGION], name=REGION))
