"""Verification of any geometry: stations sampled from the real ERA5 samples, station
forecasts against station truths matched by id, an index hindcast in a SubX layout through
the CLI, valid times within a tolerance, and the bad inputs, against properscoring, scores and
scipy's interpolation."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import properscoring
import pytest
import scores
import xarray as xr
from scipy.interpolate import RegularGridInterpolator
from wxens.verification.errors import ScoreError
from wxens.verification.geometry import at_stations, point_weights, read_stations
from wxens.verification.verify import VerifyOptions, score

STATIONS = """station,latitude,longitude
reading,51.44,-0.94
oslo,59.91,10.75
lagos,6.45,3.39
sydney,-33.87,151.21
honolulu,21.31,-157.86
mcmurdo,-77.85,166.67
wrap,12.0,358.9
"""


def bilinear(field: np.ndarray, lat: np.ndarray, lon: np.ndarray, stations: pd.DataFrame):
    """scipy's bilinear interpolation on the grid with its first column repeated at +360,
    written independently of `at_stations`; field (..., lat, lon) with latitudes descending."""
    lat_up, field_up = lat[::-1], field[..., ::-1, :]
    lon_ext = np.r_[lon, lon[0] + 360]
    field_ext = np.concatenate([field_up, field_up[..., :1]], axis=-1)
    points = np.c_[stations.latitude, stations.longitude % 360]
    moved = np.moveaxis(field_ext, (-2, -1), (0, 1))
    return np.moveaxis(RegularGridInterpolator((lat_up, lon_ext), moved)(points), 0, -1)


@pytest.fixture(scope="module")
def eda(sample_data):
    """The ERA5 EDA sample: member 0 as the truth, members 1-9 as the ensemble (z500)."""
    grib = sample_data / "era5" / "era5-levels-members.grib"
    data = xr.open_dataset(grib, engine="cfgrib", backend_kwargs={"indexpath": ""})
    return data.sel(isobaricInhPa=500)[["z", "t"]].load()


def test_era5_eda_sampled_at_stations_scores_as_properscoring_and_scores(eda):
    stations = read_stations(io.StringIO(STATIONS))
    table = pd.read_csv(io.StringIO(STATIONS))
    truth = eda.isel(number=0, drop=True)
    forecast = eda.isel(number=slice(1, None)).rename(number="member", time="init_time")
    options = VerifyOptions(stations=stations, maps=False, quantiles=(0.9,))
    scored = score(forecast, truth, scores=["crps", "crps_ecdf", "twcrps", "rank_histogram"],
                   options=options)  # fmt: skip
    assert list(scored.region.values) == ["global"]  # points score `global` unless asked
    got = scored.sel(system="forecast", variable="z", region="global").isel(lead_time=0)

    lat, lon = eda.latitude.values, eda.longitude.values
    members = bilinear(eda.z.values[1:], lat, lon, table)  # (member, time, station)
    observed = bilinear(eda.z.values[0], lat, lon, table)  # (time, station)
    ensemble = np.moveaxis(members, 0, -1)
    ecdf = properscoring.crps_ensemble(observed, ensemble).mean()
    assert float(got.crps_ecdf) == pytest.approx(ecdf, rel=1e-6)
    fair = scores.probability.crps_for_ensemble(
        xr.DataArray(ensemble, dims=("time", "station", "member")),
        xr.DataArray(observed, dims=("time", "station")), "member", method="fair",
    )  # fmt: skip
    assert float(got.crps) == pytest.approx(float(fair), rel=1e-6)
    rank = scores.probability.rank_histogram(
        xr.DataArray(ensemble, dims=("time", "station", "member")),
        xr.DataArray(observed, dims=("time", "station")), "member",
    )  # fmt: skip
    np.testing.assert_allclose(got.rank_histogram, rank, atol=1e-12)
    # the wrap station lies between the last column (357) and the first (0 = 360)
    sampled = at_stations(truth.z, stations).sel(station="wrap").values
    np.testing.assert_allclose(sampled, observed[:, -1], rtol=1e-12)


def test_stations_matched_by_id_in_any_order_with_weights(eda):
    """A station ensemble against a station truth that holds more stations, in another
    order: matched by id; the truth's `weight` coordinate weights the mean."""
    stations = read_stations(io.StringIO(STATIONS))
    points = at_stations(eda[["t"]], stations)
    weights = np.arange(1.0, 8.0)
    truth = points.isel(number=0, drop=True).assign_coords(weight=("station", weights))
    truth = truth.isel(station=np.arange(7)[::-1])  # reversed
    forecast = points.isel(number=slice(1, None), station=slice(0, 5))  # five of seven
    forecast = forecast.rename(number="member", time="init_time")
    scored = score(forecast, truth, scores=["crps_ecdf"], options=VerifyOptions(maps=False))
    got = float(scored.crps_ecdf.sel(system="forecast", variable="t").squeeze())
    ensemble = np.moveaxis(points.t.values[1:, :, :5], 0, -1)
    crps = properscoring.crps_ensemble(points.t.values[0, :, :5], ensemble).mean(0)
    assert got == pytest.approx(np.average(crps, weights=weights[:5]), rel=1e-6)


def test_point_weights_of_bands_and_boxes_at_stations() -> None:
    from wxens.verification.aggregation import LatLonBox

    stations = read_stations(io.StringIO(STATIONS))
    box = LatLonBox(south=40, north=70, west=-20, east=30, name="europe")
    weights = point_weights(stations, ["global", "tropics", "nh_extratropics", box])
    expected = {
        "global": [1, 1, 1, 1, 1, 1, 1],
        "tropics": [0, 0, 1, 0, 0, 0, 1],
        "nh_extratropics": [1, 1, 0, 0, 1, 0, 0],
        "europe": [1, 1, 0, 0, 0, 0, 0],
    }
    for name, row in expected.items():
        assert weights.sel(region=name).values.tolist() == row, name


def test_an_index_hindcast_in_a_subx_layout_through_the_cli(tmp_path, wxens):
    """4 members x 500 weekly inits x 45 daily leads, dims S, M, L mapped with --names."""
    rng = np.random.default_rng(7)
    days = pd.date_range("1999-01-01", "2010-12-31", freq="D")
    signal = np.sin(np.arange(days.size) / 9.0)
    observed = xr.Dataset({"rmm1": ("time", signal + 0.3 * rng.normal(size=days.size))},
                          coords={"time": days})  # fmt: skip
    inits, leads = pd.date_range("2000-01-01", periods=500, freq="7D"), np.arange(45)
    valid = observed.rmm1.sel(time=(inits.values[:, None] + leads * np.timedelta64(1, "D")).ravel())
    truth = valid.values.reshape(500, 45)
    spread = 0.1 + leads / 45
    members = truth[:, None, :] + spread * rng.normal(size=(500, 4, 45))
    forecast = xr.Dataset({"rmm1": (("S", "M", "L"), members)},
                          coords={"S": inits, "L": pd.to_timedelta(leads, "D")})  # fmt: skip
    forecast.to_zarr(tmp_path / "subx.zarr")
    observed.to_netcdf(tmp_path / "rmm.nc")
    names = tmp_path / "names.yaml"
    names.write_text("forecast:\n  S: init_time\n  M: member\n  L: lead_time\n")
    code, output = wxens(
        "verify", "--forecast", tmp_path / "subx.zarr", "--truth", tmp_path / "rmm.nc",
        "--names", names, "--out", tmp_path / "scores.zarr", "--report", tmp_path / "report",
        "--quiet",
    )  # fmt: skip
    assert code == 0, output
    scored = xr.open_zarr(tmp_path / "scores.zarr").sel(system="forecast", variable="rmm1")
    crps = properscoring.crps_ensemble(truth, np.moveaxis(members, 1, -1)).mean(0)
    np.testing.assert_allclose(scored.crps_ecdf.squeeze(), crps, rtol=1e-6)
    assert "energy_score" not in scored and "acc" not in scored
    assert "energy_score" in xr.open_zarr(tmp_path / "scores.zarr").attrs["not_scored"]
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Not scored: acc: needs a grid; the forecast is on an index" in page


def test_valid_times_within_a_tolerance() -> None:
    """Daily observations stamped 00 UTC against forecasts valid at 12 UTC."""
    days = pd.date_range("2031-01-01", periods=30, freq="D")
    truth = xr.Dataset({"x": ("time", np.arange(30.0))}, coords={"time": days})
    inits = days[:5] + pd.to_timedelta([0, 12, 0, 12, 13], "h")
    forecast = xr.Dataset(
        {"x": (("init_time", "member"), [[-1.0, 1.0], [0.0, 2.0], [1.0, 3.0], [2.0, 4.0],
                                         [4.0, 6.0]])},
        coords={"init_time": inits},
    )  # fmt: skip
    with pytest.raises(ScoreError, match=r"no analysis at valid time 2031-01-02T12 \(3 of 5"):
        score(forecast, truth, scores=["rmse"])
    options = VerifyOptions(valid_time_tolerance="12h", maps=False)
    rmse = score(forecast, truth, scores=["rmse"], options=options).rmse
    # nearest within 12 h, the earlier day at 12 UTC: days 0, 1, 2, 3; 13 UTC on day 4 is
    # nearest day 5, where the members' mean 5 is
    assert float(rmse.squeeze()) == pytest.approx(0.0)
    with pytest.raises(ScoreError, match="not a time span"):
        VerifyOptions(valid_time_tolerance="soon")


STATION_CASES = [
    ("reading,51.44,-0.94\nreading,59.9,10.8\n", "duplicate station ids: 'reading'"),
    ("paris,48.85,2.35\n", "station 'paris' at \\(48.85, 2.35\\) lies outside the grid"),
    ("north,91.0,0.0\n", "latitude 91.0 outside -90..90"),
]


@pytest.mark.parametrize(("rows", "message"), STATION_CASES)
def test_bad_stations_are_refused_and_nothing_is_written(sample_data, tmp_path, wxens, rows,
                                                         message):  # fmt: skip
    """On the UK 2 m temperature sample (58-50N, 10W-2E): one line, exit 1, no output."""
    grib = sample_data / "era5" / "era5-2mt-2019-03-uk.grib"
    data = xr.open_dataset(grib, engine="cfgrib", backend_kwargs={"indexpath": ""})
    truth = data.isel(time=slice(0, 48))
    truth.to_netcdf(tmp_path / "truth.nc")
    members = xr.concat([truth.shift(time=k) for k in (1, 2, 3)], dim="number")
    members.isel(time=slice(3, 48)).rename(time="init_time").to_zarr(tmp_path / "f.zarr")
    csv = tmp_path / "stations.csv"
    csv.write_text("station,latitude,longitude\n" + rows)
    out = tmp_path / "scores.zarr"
    code, output = wxens(
        "verify", "--forecast", tmp_path / "f.zarr", "--truth", tmp_path / "truth.nc",
        "--stations", csv, "--out", out, "--quiet",
    )  # fmt: skip
    assert code == 1, output
    assert len(output.strip().splitlines()) == 1 and pytest.importorskip("re").search(
        message, output
    ), output
    assert not out.exists() and not out.with_name("scores.zarr.partial").exists()


def test_geometry_mismatches_are_refused() -> None:
    days = pd.date_range("2031-01-01", periods=10, freq="D")
    index = xr.Dataset({"x": ("time", np.arange(10.0))}, coords={"time": days})
    grid = xr.Dataset(
        {"x": (("time", "latitude", "longitude"), np.zeros((10, 2, 2)))},
        coords={"time": days, "latitude": [45.0, -45.0], "longitude": [0.0, 180.0]},
    )
    forecast = xr.Dataset(
        {"x": (("init_time", "member"), np.zeros((3, 2)))}, coords={"init_time": days[:3]}
    )
    with pytest.raises(ScoreError, match="forecast is on an index but the truth is on a grid"):
        score(forecast, grid, scores=["rmse"])
    with pytest.raises(ScoreError, match="needs the stations' latitude and longitude"):
        score(forecast, index, scores=["rmse"], regions=["tropics"])
    later = forecast.assign_coords(init_time=pd.date_range("2040-01-01", periods=3, freq="D"))
    with pytest.raises(
        ScoreError,
        match=r"share no valid time: the forecast's run 2040-01-01T00\.\.2040-01-03T00, "
        r"the truth's 2031-01-01T00\.\.2031-01-10T00",
    ):
        score(later, index, scores=["rmse"])
