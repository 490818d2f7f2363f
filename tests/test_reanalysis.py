"""Reanalysis readers and spectral regridding, on the real samples in ../shared/data.

References are independent of `data_pipeline.reanalysis`: direct xarray / cfgrib reads of the
same files, and spherical harmonics evaluated by scipy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy.special import roots_legendre, sph_harm_y
from wxens.data_pipeline.analysis_store import open_analyses
from wxens.data_pipeline.config import ExperimentConfig, SourceField, load_config, parse_config
from wxens.data_pipeline.reanalysis import IngestError, ingest, read_source, regrid_dataset
from wxens.data_pipeline.sphere import LatLonGrid

pytestmark = pytest.mark.filterwarnings("ignore:variable '.' has non-conforming '_FillValue'")

G = 9.80665  # m s-2
MODEL_LAT = np.linspace(90.0, -90.0, 33)
MODEL_LON = np.arange(64) * 5.625
REPO = Path(__file__).resolve().parents[1]


def source_field(source: str, level: float | None = None, scale: float = 1.0) -> SourceField:
    return SourceField(source=source, level=level, scale=scale, units="1", long_name=source)


def ingest_config(**fields: SourceField) -> ExperimentConfig:
    """A config on the default 33 x 64 T21 model grid that ingests `fields`."""
    ingest_section = {name: field.model_dump() for name, field in fields.items()}
    return parse_config({"name": "test", "variables": list(fields), "ingest": ingest_section})


def open_grib(path: Path) -> xr.Dataset:
    return xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})


def area_mean(field: xr.DataArray) -> np.ndarray:
    """cos(latitude)-weighted mean over the grid, per time."""
    weights = np.cos(np.radians(field["latitude"]))
    return field.weighted(weights).mean(("latitude", "longitude")).values


@pytest.fixture(scope="module")
def eda_grib(sample_data: Path) -> Path:
    return sample_data / "era5" / "era5-levels-members.grib"


@pytest.fixture(scope="module")
def eraint(sample_data: Path) -> xr.Dataset:
    """The ERA-Interim sample as decoded (it is packed as int16; copies are written as float64)."""
    with xr.open_dataset(sample_data / "erainterim" / "eraint_uvz.nc") as dataset:
        return dataset.load().drop_encoding()


@pytest.fixture(scope="module")
def eraint_dated(eraint: xr.Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ERA-Interim sample with its `month` axis (1, 7) made a time axis in old CDS naming.

    The sample holds monthly means without a year; the dates are labels for these tests only.
    """
    times = np.array(["2000-01-01", "2000-07-01"], dtype="datetime64[ns]")
    dated = eraint.rename(month="time").assign_coords(time=times)
    path = tmp_path_factory.mktemp("eraint") / "eraint_dated.nc"
    dated.to_netcdf(path)
    return path


def test_grib_member_0_matches_cfgrib(eda_grib: Path) -> None:
    fields = {"z500": source_field("z", 500), "g500": source_field("geopotential", 500, 1 / G)}
    read = read_source(eda_grib, fields)
    direct = open_grib(eda_grib)["z"].sel(number=0, isobaricInhPa=500)
    assert read["z500"].dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(read["z500"].values, direct.values)
    np.testing.assert_allclose(
        read["g500"].values, direct.values.astype(np.float64) / G, rtol=1e-15
    )
    np.testing.assert_array_equal(read["time"].values, direct["time"].values)
    np.testing.assert_array_equal(read["latitude"].values, np.linspace(90, -90, 61))
    np.testing.assert_array_equal(read["longitude"].values, np.arange(120) * 3.0)


def test_eraint_matches_xarray_after_longitude_roll(eraint: xr.Dataset, eraint_dated: Path) -> None:
    read = read_source(
        eraint_dated, {"z500": source_field("z", 500), "u200": source_field("u", 200)}
    )
    for name, variable, level in (("z500", "z", 500), ("u200", "u", 200)):
        direct = eraint[variable].sel(level=level).roll(longitude=240, roll_coords=True)
        np.testing.assert_array_equal(read[name].values, direct.values)
    np.testing.assert_array_equal(read["longitude"].values, np.arange(480) * 0.75)
    np.testing.assert_array_equal(read["latitude"].values, eraint["latitude"].values)


def test_file_without_dates_refused(sample_data: Path) -> None:
    path = sample_data / "erainterim" / "eraint_uvz.nc"
    with pytest.raises(IngestError, match=r"eraint_uvz\.nc: no time axis \(dimensions: month"):
        read_source(path, {"z500": source_field("z", 500)})


def assert_same_read(path: Path, reference: Path) -> None:
    fields = {"z500": source_field("z", 500), "v850": source_field("v", 850)}
    got, expected = read_source(path, fields), read_source(reference, fields)
    xr.testing.assert_identical(got.load(), expected.load())


def test_cds_new_naming(eraint_dated: Path, tmp_path: Path) -> None:
    with xr.open_dataset(eraint_dated) as old:
        new = old.rename(time="valid_time", level="pressure_level").assign_coords(
            number=0, expver=("valid_time", ["0001", "0001"])
        )
        new.to_netcdf(tmp_path / "new.nc")
    assert_same_read(tmp_path / "new.nc", eraint_dated)


def test_cds_expver_dimension_merged(eraint_dated: Path, tmp_path: Path) -> None:
    """ERA5 final (expver 1) and ERA5T (expver 5) each hold one of the two times."""
    with xr.open_dataset(eraint_dated) as old:
        final = old.where(old["time"] == old["time"][0])
        preliminary = old.where(old["time"] == old["time"][1])
        split = xr.concat([final, preliminary], dim=xr.DataArray([1, 5], dims="expver"))
        split.to_netcdf(tmp_path / "expver.nc")
    assert_same_read(tmp_path / "expver.nc", eraint_dated)


def test_weatherbench2_zarr(eraint_dated: Path, tmp_path: Path) -> None:
    with xr.open_dataset(eraint_dated) as old:
        long_names = {"z": "geopotential", "u": "u_component_of_wind", "v": "v_component_of_wind"}
        wb2 = old.rename(long_names).assign_coords(longitude=np.mod(old["longitude"], 360.0))
        wb2 = (
            wb2.sortby("longitude")
            .sortby("latitude")
            .transpose("time", "level", "longitude", "latitude")
        )
        wb2.to_zarr(tmp_path / "wb2.zarr", zarr_format=3, consolidated=False)
    assert_same_read(tmp_path / "wb2.zarr", eraint_dated)


def real_harmonic(degree: int, order: int, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Re Y_degree^order (orthonormal) on a latitude x longitude grid, degrees."""
    colat = np.radians(90.0 - np.asarray(lat))[:, None]
    return sph_harm_y(degree, order, colat, np.radians(np.asarray(lon))[None, :]).real


def band_limited(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Re Y_5^3 + 0.5 Re Y_21^7 (kept at T21)."""
    return real_harmonic(5, 3, lat, lon) + 0.5 * real_harmonic(21, 7, lat, lon)


GAUSS_LAT = np.degrees(np.arcsin(roots_legendre(96)[0]))[::-1]
SOURCE_GRIDS = {
    "poles": (np.linspace(90, -90, 121), np.arange(240) * 1.5),
    "ascending": (np.linspace(-90, 90, 121), np.arange(240) * 1.5),
    "lon -180..180": (np.linspace(90, -90, 121), np.arange(240) * 1.5 - 180.0),
    "no poles, offset": (89.25 - np.arange(120) * 1.5, 0.75 + np.arange(240) * 1.5),
    "gaussian": (GAUSS_LAT, np.arange(192) * 1.875),
}


@pytest.mark.parametrize("grid", SOURCE_GRIDS)
def test_regridding_is_exact_for_band_limited_fields(grid: str) -> None:
    """T21 content comes through exactly; degree 25 (above T21) is removed."""
    lat, lon = SOURCE_GRIDS[grid]
    values = band_limited(lat, lon) + 0.5 * real_harmonic(25, 4, lat, lon)
    coords = {"time": [np.datetime64("2000-01-01", "ns")], "latitude": lat, "longitude": lon}
    source = xr.Dataset({"f": (("time", "latitude", "longitude"), values[None])}, coords=coords)
    out = regrid_dataset(source, LatLonGrid(33, 64), truncation=21)
    expected = band_limited(MODEL_LAT, MODEL_LON)
    np.testing.assert_allclose(out["latitude"].values, MODEL_LAT, atol=1e-12)
    np.testing.assert_allclose(out["longitude"].values, MODEL_LON, atol=1e-12)
    error = np.abs(out["f"].values[0] - expected).max()
    assert error < 1e-5 * np.abs(expected).max()


def grid_dataset(lat: np.ndarray, lon: np.ndarray) -> xr.Dataset:
    values = np.zeros((1, lat.size, lon.size))
    coords = {"time": [np.datetime64("2000-01-01", "ns")], "latitude": lat, "longitude": lon}
    return xr.Dataset({"f": (("time", "latitude", "longitude"), values)}, coords=coords)


def test_coarse_source_refused() -> None:
    coarse = grid_dataset(np.linspace(90, -90, 33), np.arange(64) * 5.625)
    with pytest.raises(IngestError, match=r"coarse\.nc: the 33x64 grid resolves at most T16"):
        regrid_dataset(coarse, LatLonGrid(33, 64), truncation=21, name="coarse.nc")


def test_irregular_grid_refused() -> None:
    lat = np.linspace(90, -90, 121)
    lat[60] = 1.0
    with pytest.raises(IngestError, match=r"odd\.nc: irregular grid: 121 latitudes"):
        regrid_dataset(grid_dataset(lat, np.arange(240) * 1.5), LatLonGrid(33, 64), 21, "odd.nc")


@pytest.fixture
def existing_out(tmp_path: Path) -> Path:
    out = tmp_path / "analyses.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("original")
    return out


def assert_untouched(out: Path) -> None:
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "original"
    assert not out.with_name(out.name + ".partial").exists()


def with_nan(eraint_dated: Path, tmp_path: Path) -> Path:
    with xr.open_dataset(eraint_dated) as dataset:
        dataset = dataset.load()
    dataset["z"][1, 1, 100, 200] = np.nan  # July, 500 hPa
    dataset.to_netcdf(tmp_path / "eraint_nan.nc")
    return tmp_path / "eraint_nan.nc"


CASES = {
    "regional": (
        "era5/era5-2mt-2019-03-uk.grib",
        {"t2m": source_field("t2m")},
        r"era5-2mt-2019-03-uk\.grib: grid is regional \(latitude 50\.\.58, longitude -10\.\.2\);"
        " spectral regridding needs a global grid",
    ),
    "missing file": (
        "era5/no-such.grib",
        {"z500": source_field("z", 500)},
        r"no-such\.grib: no such file",
    ),
    "missing variable": (
        "era5/era5-levels-members.grib",
        {"q700": source_field("q", 700)},
        r"members\.grib: no variable 'q' for q700; available: t, z",
    ),
    "missing level": (
        "era5/era5-levels-members.grib",
        {"z300": source_field("z", 300)},
        r"members\.grib: z has no level 300 \(levels 850, 500\)",
    ),
    "NaN": (
        None,
        {"z500": source_field("z", 500)},
        r"eraint_nan\.nc: z500 has 1 NaN .* 2000-07-01T00",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_refused_and_output_untouched(
    case: str, sample_data: Path, eraint_dated: Path, tmp_path: Path, existing_out: Path
) -> None:
    relative, fields, message = CASES[case]
    source = with_nan(eraint_dated, tmp_path) if relative is None else sample_data / relative
    config = ingest_config(**fields)
    with pytest.raises(IngestError, match=message) as raised:
        ingest(
            config,
            config.model_dump(mode="json"),
            [source],
            existing_out,
            overwrite=True,
            quiet=True,
        )
    assert "\n" not in str(raised.value)
    assert_untouched(existing_out)


def test_ingest_era5_eda_sample(eda_grib: Path, tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "era5.yaml")
    out = ingest(
        config, config.model_dump(mode="json"), [eda_grib], tmp_path / "era5.zarr", quiet=True
    )
    analyses = open_analyses(out)
    direct = open_grib(eda_grib).sel(number=0)
    assert analyses["z500"].dims == ("time", "latitude", "longitude")
    assert analyses["z500"].shape == (4, 33, 64)
    np.testing.assert_allclose(analyses["latitude"].values, MODEL_LAT, atol=1e-12)
    np.testing.assert_array_equal(analyses["time"].values, direct["time"].values)
    assert analyses["z500"].attrs["units"] == "m"
    assert analyses["t850"].attrs["units"] == "K"
    source_height = direct["z"].sel(isobaricInhPa=500) / G
    np.testing.assert_allclose(area_mean(analyses["z500"]), area_mean(source_height), rtol=5e-3)
    source_t850 = direct["t"].sel(isobaricInhPa=850)
    np.testing.assert_allclose(area_mean(analyses["t850"]), area_mean(source_t850), rtol=5e-3)


def test_ingest_sorts_sources_by_time_and_refuses_repeats(
    eraint: xr.Dataset, eraint_dated: Path, tmp_path: Path
) -> None:
    with xr.open_dataset(eraint_dated) as dated:
        for index, name in enumerate(("jan.nc", "jul.nc")):
            dated.isel(time=[index]).to_netcdf(tmp_path / name)
    config = ingest_config(z500=source_field("z", 500, 1 / G))
    sources = [tmp_path / "jul.nc", tmp_path / "jan.nc"]
    out = ingest(config, config.model_dump(mode="json"), sources, tmp_path / "a.zarr", quiet=True)
    analyses = open_analyses(out)
    months = np.array(["2000-01-01", "2000-07-01"], dtype="datetime64[ns]")
    np.testing.assert_array_equal(analyses["time"].values, months)
    expected = area_mean(eraint["z"].sel(level=500).rename(month="time") / G)
    np.testing.assert_allclose(area_mean(analyses["z500"]), expected, rtol=5e-3)
    repeated = [tmp_path / "jan.nc", eraint_dated]
    with pytest.raises(IngestError, match=r"2000-01-01T00 appears twice: in .*jan\.nc and in"):
        ingest(config, {}, repeated, tmp_path / "b.zarr", quiet=True)
    assert not (tmp_path / "b.zarr").exists()


def test_ingest_command_line(sample_data, tmp_path):
    """`wxens data ingest` writes the store; a regional source fails with one line."""
    from typer.testing import CliRunner
    from wxens.forecast.cli import app

    runner = CliRunner()
    out = tmp_path / "era5.zarr"
    grib = sample_data / "era5" / "era5-levels-members.grib"
    args = ["data", "ingest", "--config", "configs/era5.yaml", "--out", str(out), "--quiet"]
    result = runner.invoke(app, [*args, "--source", str(grib)])
    assert result.exit_code == 0, result.output
    assert open_analyses(out).sizes["time"] == 4
    regional = sample_data / "era5" / "era5-2mt-2019-03-uk.grib"
    result = runner.invoke(app, [*args, "--overwrite", "--source", str(regional)])
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1 and "regional" in result.output
    assert open_analyses(out).sizes["time"] == 4


def test_ingest_of_a_corrupt_or_false_grib_fails_in_one_line(sample_data, tmp_path):
    """A truncated GRIB file, and a text file named .grib: one line (none of cfgrib's logged
    tracebacks, which `wxens --verbose` shows), exit 1, no store."""
    import subprocess
    import sys

    real = (sample_data / "era5" / "era5-levels-members.grib").read_bytes()
    corrupt, false = tmp_path / "corrupt.grib", tmp_path / "false.grib"
    corrupt.write_bytes(real[:1500])
    false.write_text("not a GRIB file\n")
    out = tmp_path / "era5.zarr"
    wxens = [sys.executable, "-m", "wxens.forecast.cli"]
    args = ["data", "ingest", "--config", "configs/era5.yaml", "--out", str(out), "--quiet"]
    quiet = subprocess.run([*wxens, *args, "--source", corrupt], capture_output=True, text=True)
    assert quiet.returncode == 1 and quiet.stdout == ""
    assert quiet.stderr == f"error: {corrupt}: cannot read (No valid message found: '{corrupt}')\n"
    from typer.testing import CliRunner
    from wxens.forecast.cli import app

    result = CliRunner().invoke(app, [*args, "--source", str(false)])
    assert result.exit_code == 1
    assert result.output == f"error: {false}: not a GRIB file (it does not start with 'GRIB')\n"
    assert not out.exists() and not out.with_name("era5.zarr.partial").exists()


def test_a_night_ingests_the_new_era5_files_only(eda_grib: Path, tmp_path: Path) -> None:
    """`wxens nightly` on real analyses (`sources`): a night appends the analyses of the new
    files, bitwise as if all were ingested in one go; a rerun adds nothing; a gap or a bad file
    is refused in one line and leaves the store as it was."""
    from wxens.data_pipeline.reanalysis import extend_analyses
    from wxens.forecast.nightly import NightlySettings, update_analyses

    with open_grib(eda_grib) as grib:  # the sample's 4 analyses as 3 files of CDS netCDF
        for name, times in (("2017-01-01a", [0, 1]), ("2017-01-02b", [2, 3]), ("late", [3])):
            grib.isel(time=times).to_netcdf(tmp_path / f"era5-{name}.nc")
    config = load_config(REPO / "configs" / "era5.yaml")
    settings = {"config": REPO / "configs" / "era5.yaml", "truth": tmp_path / "era5.zarr"}
    settings |= {name: tmp_path / name for name in ("archive", "stats", "scores")}
    settings |= {"members": 2, "lead_days": 1, "sources": str(tmp_path / "era5-2017-*.nc")}
    settings = NightlySettings(**settings)
    first = tmp_path / "era5-2017-01-01a.nc"
    ingest(config, {}, [first], settings.truth, quiet=True)
    night = np.datetime64("2017-01-02T12", "ns")
    assert update_analyses(settings, config, night) == 2
    whole = ingest(config, {}, [eda_grib], tmp_path / "whole.zarr", quiet=True)
    grown, expected = open_analyses(settings.truth), open_analyses(whole)
    np.testing.assert_array_equal(grown["time"].values, expected["time"].values)
    for name in config.variables:
        assert np.array_equal(grown[name].values, expected[name].values), name
    listing = {p: p.stat().st_mtime_ns for p in settings.truth.rglob("*")}
    assert update_analyses(settings, config, night) == 0
    # A store of the first file only, then a file that skips 2017-01-02T00: refused.
    gapped = tmp_path / "gapped.zarr"
    ingest(config, {}, [first], gapped, quiet=True)
    with pytest.raises(IngestError, match="skip 2017-01-02T00"):
        extend_analyses(config, gapped, [tmp_path / "era5-late.nc"], night)
    (tmp_path / "bad.nc").write_text("not a netCDF file")
    with pytest.raises(IngestError, match=r"bad\.nc: cannot read"):
        extend_analyses(config, gapped, [tmp_path / "bad.nc"], night)
    assert open_analyses(gapped).sizes["time"] == 2
    assert {p: p.stat().st_mtime_ns for p in settings.truth.rglob("*")} == listing
