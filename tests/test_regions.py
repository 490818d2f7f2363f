"""Regions: polygons (regionmask), Natural Earth land and sea, WeatherBench2's regional set,
boxes and masks on the command line; on the real sample data in ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import xarray as xr
from wxens.verification.aggregation import (
    EXTRA_REGIONS,
    REGION_SETS,
    REGIONS,
    LatLonBox,
    PolygonRegion,
    cell_area_weights,
    region_weights,
    resolve_regions,
)
from wxens.verification.errors import ScoreError
from wxens.verification.natural_earth import land_polygons

EARTH_LAND_FRACTION = 148.94 / 510.07
"""The land's share of the Earth's surface: 148.94 of 510.07 million km2."""

WB2_SLICES = {
    "global": (slice(None, None), slice(None, None)),
    "tropics": (slice(-20, 20), slice(None, None)),
    "extra-tropics": ([slice(None, -20), slice(20, None)], slice(None, None)),
    "northern-hemisphere": (slice(20, None), slice(None, None)),
    "southern-hemisphere": (slice(None, -20), slice(None, None)),
    "europe": (slice(35, 75), [slice(360 - 12.5, None), slice(0, 42.5)]),
    "north-america": (slice(25, 60), slice(360 - 120, 360 - 75)),
    "north-atlantic": (slice(25, 65), slice(360 - 70, 360 - 10)),
    "north-pacific": (slice(25, 60), slice(145, 360 - 130)),
    "east-asia": (slice(25, 60), slice(102.5, 150)),
    "ausnz": (slice(-45, -12.5), slice(120, 175)),
    "arctic": (slice(60, 90), slice(None, None)),
    "antarctic": (slice(-90, -60), slice(None, None)),
}
"""WeatherBench2's `predefined_regions` as it writes them (scripts/evaluate.py: latitude and
longitude slices of a grid of increasing latitudes and 0..360 longitudes), in its order."""

WB2_NAMES = {
    "global": "global",
    "tropics": "tropics",
    "extra-tropics": "wb2_extratropics",
    "northern-hemisphere": "nh_extratropics",
    "southern-hemisphere": "sh_extratropics",
    **{name: "wb2_" + name.replace("-", "_") for name in list(WB2_SLICES)[5:]},
}


def grid(step: float, west: float = 0.0, descending: bool = True) -> tuple[xr.DataArray, ...]:
    """A global grid of `step` degrees, poles included, longitudes from `west`."""
    latitude = np.arange(-90, 90 + step / 2, step)
    latitude = latitude[::-1] if descending else latitude
    longitude = west + np.arange(0, 360, step)
    return (
        xr.DataArray(latitude, dims="latitude", coords={"latitude": latitude}),
        xr.DataArray(longitude, dims="longitude", coords={"longitude": longitude}),
    )


def share_of_globe(weights: xr.DataArray) -> float:
    latitude = weights.latitude
    return float(weights.sum() / (cell_area_weights(latitude).sum() * weights.longitude.size))


def test_land_covers_the_known_share_of_the_globe(sample_data):
    latitude, longitude = grid(1.0)
    land = share_of_globe(region_weights(latitude, "land", longitude))
    # The polygons' own area, without regionmask or a grid: in the cylindrical equal-area
    # projection (x = longitude, y = sin(latitude)) the globe is 360 x 2. Edges are straight
    # in longitude and latitude, so they are cut to 0.1 degrees before projecting.
    pieces = shapely.segmentize(land_polygons(), 0.1)
    projected = shapely.transform(
        pieces, lambda xy: np.column_stack([xy[:, 0], np.sin(np.deg2rad(xy[:, 1]))])
    )
    assert land == pytest.approx(projected.area / 720, abs=1e-4)  # cells sampled 10 x 10
    # Natural Earth's 1:110m coastlines leave out small islands and cut corners; 0.005 of the
    # globe (2.5 million km2, under 2 % of the land) allows for that, while land built wrong
    # (Antarctica left open alone is 0.027 of the globe, sea taken for land 0.4) is far off.
    assert land == pytest.approx(EARTH_LAND_FRACTION, abs=0.005)
    sea = region_weights(latitude, "sea", longitude)
    np.testing.assert_allclose(
        region_weights(latitude, "land", longitude) + sea,
        region_weights(latitude, "global") * xr.ones_like(longitude),
        rtol=1e-12,
    )


def test_land_on_grids_of_either_longitude_convention(sample_data):
    latitude, east = grid(1.0)
    _, centred = grid(1.0, west=-180.0)
    by_east = region_weights(latitude, "land", east)
    by_centred = region_weights(latitude, "land", centred)
    np.testing.assert_array_equal(by_centred.roll(longitude=180).values, by_east.values)
    # Cells that are all land or all sea (1-degree cells on integer degrees).
    land = by_east / cell_area_weights(latitude)
    places = {
        "Sahara": (25, 10, 1.0),
        "Antarctica": (-85, 0, 1.0),
        "south pole": (-90, 100, 1.0),
        "Greenland": (72, 320, 1.0),
        "Chukotka, east of 180": (66, 185, 1.0),
        "Australia": (-25, 135, 1.0),
        "Pacific": (0, 210, 0.0),
        "Caspian Sea": (42, 51, 0.0),
        "Black Sea": (43, 34, 0.0),
    }
    for place, (lat, lon, expected) in places.items():
        assert float(land.sel(latitude=lat, longitude=lon)) == pytest.approx(expected, abs=0.03), (
            place
        )
    # ERA-Interim's real grid: 0.75 degrees, longitudes -180..179.25.
    eraint = xr.open_dataset(sample_data / "erainterim" / "eraint_uvz.nc")
    weights = region_weights(eraint.latitude, "land", eraint.longitude)
    assert share_of_globe(weights) == pytest.approx(share_of_globe(by_east), abs=1e-3)


def test_land_has_the_bigger_daily_cycle_in_era5(sample_data):
    """March 2019 over the British Isles (0.25 degrees, 10W..2E): the land warms and cools
    through the day, the sea hardly, so land must weight the cells of the bigger cycle."""
    t2m = xr.open_dataset(
        sample_data / "era5" / "era5-2mt-2019-03-uk.grib",
        engine="cfgrib",
        backend_kwargs={"indexpath": ""},
    ).t2m.load()
    cycle = t2m.groupby("time.hour").mean("time")
    amplitude = cycle.max("hour") - cycle.min("hour")  # K
    land, sea = (
        float(amplitude.weighted(region_weights(t2m.latitude, part, t2m.longitude)).mean())
        for part in ("land", "sea")
    )
    assert land > 2.0 and sea < 1.0 and land > 3 * sea, (land, sea)


def test_polygon_masks_match_boxes_and_give_cell_fractions():
    for west in (0.0, -180.0):
        latitude, longitude = grid(1.0, west=west)
        box = LatLonBox(35, 70, -10, 40).mask_on(latitude, longitude)
        # Edges half-way between grid points: the cells inside are whole.
        rectangle = shapely.box(-10.5, 34.5, 40.5, 70.5)
        for fractional in (True, False):
            region = PolygonRegion(rectangle, fractional=fractional)
            np.testing.assert_array_equal(region.mask_on(latitude, longitude), box)
        # The same box written in 0..360 longitudes: two polygons either side of 0 E.
        halves = [shapely.box(349.5, 34.5, 360, 70.5), shapely.box(0, 34.5, 40.5, 70.5)]
        np.testing.assert_array_equal(PolygonRegion(halves).mask_on(latitude, longitude), box)
    # A polygon edge through the middle of cells: half of each of those cells.
    latitude, longitude = grid(1.0, descending=False)
    mask = PolygonRegion(shapely.box(-0.5, -0.5, 1.0, 0.5)).mask_on(latitude, longitude)
    assert float(mask.sel(latitude=0, longitude=0)) == 1.0
    assert float(mask.sel(latitude=0, longitude=1)) == 0.5
    assert float(mask.sum()) == 1.5
    # Unequally spaced latitudes (a Gaussian grid's): 0/1 by cell centre.
    uneven = np.sort(np.random.default_rng(3).uniform(-89, 89, 40))
    uneven = xr.DataArray(uneven, dims="latitude", coords={"latitude": uneven})
    box = LatLonBox(34.5, 70.5, -10.5, 40.5).mask_on(uneven, longitude)
    np.testing.assert_array_equal(PolygonRegion(rectangle).mask_on(uneven, longitude), box)


def test_weatherbench2_set_matches_weatherbench2_slices():
    assert list(resolve_regions("weatherbench2")) == list(WB2_NAMES.values())
    assert REGION_SETS["weatherbench2"] == list(WB2_NAMES.values())
    default = ["global", "nh_extratropics", "tropics", "sh_extratropics"]
    assert list(resolve_regions(None)) == default
    # WeatherBench2's 1.5-degree grid: latitudes -90..90 (increasing), longitudes 0..358.5.
    latitude, longitude = grid(1.5, descending=False)
    for wb2_name, (lat_slices, lon_slices) in WB2_SLICES.items():
        lats = lat_slices if isinstance(lat_slices, list) else [lat_slices]
        lons = lon_slices if isinstance(lon_slices, list) else [lon_slices]
        rows = xr.concat([latitude.sel(latitude=s) for s in lats], dim="latitude")
        columns = xr.concat([longitude.sel(longitude=s) for s in lons], dim="longitude")
        expected = np.isin(latitude, rows)[:, None] & np.isin(longitude, columns)[None, :]
        weights = region_weights(latitude, WB2_NAMES[wb2_name], longitude)
        inside = (weights > 0) * xr.ones_like(longitude, dtype=bool)
        np.testing.assert_array_equal(inside.transpose("latitude", "longitude"), expected)
    europe = region_weights(latitude, "wb2_europe", longitude) > 0
    assert int(europe.sum()) == 27 * 37  # rows 36..75 N, columns 348..358.5 and 0..42 E


def test_region_names_sets_and_boxes():
    named = resolve_regions(["weatherbench2", "land", "europe2=35,70,-10,40"])
    assert list(named)[-2:] == ["land", "europe2"]
    assert named["europe2"] == LatLonBox(35, 70, -10, 40, name="europe2")
    assert "land" not in REGIONS and EXTRA_REGIONS["sea"].label == "sea"
    failures = {
        "arctic": "unknown region 'arctic'",
        "europe2=35,95,-10,40": "north <= 90",
        "europe2=35,70,west,40": "expected NAME=S,N,W,E",
        "europe2=35,70,40": "expected NAME=S,N,W,E",
    }
    for name, message in failures.items():
        with pytest.raises(ScoreError, match=message):
            resolve_regions([name])
    with pytest.raises(ScoreError, match="'global' is given twice"):
        resolve_regions(["weatherbench2", "global"])


def test_bad_polygons_and_empty_regions_are_refused(sample_data):
    with pytest.raises(ScoreError, match=r"within -180\.\.180 or 0\.\.360"):
        PolygonRegion(shapely.box(-20, 0, 200, 10))
    with pytest.raises(ScoreError, match="is not valid: Self-intersection"):
        PolygonRegion(shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)]))
    with pytest.raises(ScoreError, match="non-empty shapely polygons"):
        PolygonRegion([])
    # The British Isles' grid holds no point of the Pacific.
    latitude = xr.DataArray(np.arange(58, 49.9, -0.25), dims="latitude")
    longitude = xr.DataArray(np.arange(-10, 2.01, 0.25), dims="longitude")
    pacific = PolygonRegion(shapely.box(-170, -10, -120, 10), name="pacific")
    with pytest.raises(ScoreError, match="'pacific' holds no grid point"):
        pacific.weights(latitude, longitude)


def test_land_without_natural_earth_names_the_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("WXENS_CARTOPY_DATA", raising=False)
    monkeypatch.setenv("WXENS_SAMPLE_DATA", str(tmp_path))
    latitude, longitude = grid(10.0)
    with pytest.raises(ScoreError) as failure:
        region_weights(latitude, "sea", longitude)
    message = str(failure.value)
    assert str(tmp_path / "cartopy_data") in message and "WXENS_SAMPLE_DATA" in message
    assert "\n" not in message


@pytest.fixture(scope="module")
def era5_ensemble(sample_data, tmp_path_factory):
    """ERA5's 10-member ensemble of analyses (3-degree grid, longitudes 0..357) as a forecast
    at lead 0, and its mean as the truth: netCDF files."""
    folder = tmp_path_factory.mktemp("era5_regions")
    members = xr.open_dataset(
        sample_data / "era5" / "era5-levels-members.grib",
        engine="cfgrib",
        backend_kwargs={"indexpath": ""},
    )[["t"]].sel(isobaricInhPa=850, drop=True)
    members = members.drop_vars(["step", "valid_time"]).load()
    forecast = members.rename(number="member", time="init_time")
    forecast.to_netcdf(folder / "forecast.nc")
    members.mean("number").to_netcdf(folder / "truth.nc")
    return folder


def verify_args(folder, out) -> list:
    """`wxens verify` of the sample's forecast against its truth into `out`, quietly."""
    truth = folder / "truth.nc"
    return [
        "verify",
        "--forecast",
        folder / "forecast.nc",
        "--truth",
        truth,
        "--out",
        out,
        "--quiet",
    ]


def test_verify_command_scores_named_boxed_and_masked_regions(era5_ensemble, wxens):
    folder = era5_ensemble
    truth = xr.open_dataset(folder / "truth.nc")
    # The box europe2 as a mask file, by hand: 35..70 N, 350..40 E.
    inside = (truth.latitude >= 35) & (truth.latitude <= 70)
    inside = inside & ((truth.longitude >= 350) | (truth.longitude <= 40))
    inside.astype(float).rename("europe_mask").to_netcdf(folder / "europe_mask.nc")
    out = folder / "scores.zarr"
    code, output = wxens(
        *verify_args(folder, out),
        "--scores",
        "crps",
        "--regions",
        "weatherbench2,land,sea,europe2=35,70,-10,40",
        "--mask",
        folder / "europe_mask.nc",
    )
    assert code == 0, output
    crps = xr.open_zarr(out).crps.sel(system="forecast", variable="t").squeeze().load()
    names = [*WB2_NAMES.values(), "land", "sea", "europe2", "europe_mask"]
    assert crps.region.values.tolist() == names
    assert float(crps.sel(region="europe_mask")) == pytest.approx(
        float(crps.sel(region="europe2")), rel=1e-12
    )
    # Land and sea split the globe: their area-weighted CRPS adds up to the global one.
    latitude, longitude = truth.latitude, truth.longitude
    areas = {
        part: float(region_weights(latitude, part, longitude).sum()) for part in ("land", "sea")
    }
    parts = sum(areas[part] * float(crps.sel(region=part)) for part in areas)
    assert parts / sum(areas.values()) == pytest.approx(float(crps.sel(region="global")), rel=1e-9)


def test_verify_command_refuses_a_box_beyond_the_pole(era5_ensemble, wxens):
    folder = era5_ensemble
    out = folder / "refused.zarr"
    code, output = wxens(*verify_args(folder, out), "--regions", "global,arctic2=60,95,0,360")
    assert code != 0
    assert output.strip().splitlines() == [
        "error: region box 'arctic2=60,95,0,360': a box needs -90 <= south <= north <= 90,"
        " got 60.0, 95.0"
    ]
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
