"""CF-netCDF: round trips, the CF attributes, units on reading, and bad files."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nowcast.errors import SequenceError, UnitsError, UnreadableFileError
from nowcast.io.netcdf import (
    read_netcdf,
    read_netcdf_bytes,
    sequence_to_dataset,
    to_netcdf_bytes,
    write_netcdf,
)
from nowcast.products import PRODUCTS, ProductRequest, ensemble_products
from nowcast.sequence import VARIABLE_NAME, make_sequence, validate_sequence

PROJECTIONS = [
    "",
    "+proj=stere +lat_0=90 +lon_0=0.0 +lat_ts=60.0 +a=6378137 +b=6356752 +x_0=0 +y_0=0",
    "+proj=aea +lat_0=-27.7178 +lon_0=153.24 +lat_1=-26.2 +lat_2=-29.3 +x_0=0 +y_0=0 +ellps=GRS80 "
    "+units=m +no_defs",
    "+proj=somerc +lon_0=7.43958333333333 +lat_0=46.9524055555556 +k_0=1 +x_0=600000 +y_0=200000 "
    "+ellps=bessel +towgs84=674.374,15.056,405.346,0,0,0,0 +units=m +no_defs",
]


@st.composite
def sequences(draw) -> xr.DataArray:
    n_t = draw(st.integers(1, 4))
    n_y = draw(st.integers(2, 5))
    n_x = draw(st.integers(2, 5))
    values = draw(
        arrays(
            np.float32,
            (n_t, n_y, n_x),
            elements=st.one_of(st.floats(0.0, 300.0, width=32), st.just(float("nan"))),
        )
    )
    step = draw(st.sampled_from([1, 2, 5, 6, 10, 15, 60]))
    start = draw(
        st.datetimes(
            min_value=pd.Timestamp("1990-01-01").to_pydatetime(),
            max_value=pd.Timestamp("2040-01-01").to_pydatetime(),
        )
    )
    start = pd.Timestamp(start).floor("min")
    pixel = draw(st.sampled_from([250.0, 500.0, 1000.0, 2000.0]))
    x0 = draw(st.integers(-500, 500)) * 1000.0
    y0 = draw(st.integers(-5000, 5000)) * 1000.0
    north_up = draw(st.booleans())
    y = y0 + (np.arange(n_y) + 0.5) * pixel
    return make_sequence(
        values,
        pd.date_range(start, periods=n_t, freq=f"{step}min"),
        x=x0 + (np.arange(n_x) + 0.5) * pixel,
        y=y[::-1] if north_up else y,
        projection=draw(st.sampled_from(PROJECTIONS)),
        xpixelsize=pixel,
        ypixelsize=pixel,
        attrs={"institution": draw(st.sampled_from(["KNMI", "MeteoSwiss", "somewhere"]))},
    )


def assert_same_sequence(got: xr.DataArray, expected: xr.DataArray) -> None:
    np.testing.assert_array_equal(got.values, expected.values)  # float32 on disk: exact, NaN included
    np.testing.assert_array_equal(got["time"].values, expected["time"].values)
    np.testing.assert_array_equal(got["x"].values, expected["x"].values)
    np.testing.assert_array_equal(got["y"].values, expected["y"].values)
    for key in ("units", "projection", "xpixelsize", "ypixelsize", "institution"):
        assert got.attrs[key] == expected.attrs[key], key


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=sequences())
def test_round_trip_through_bytes(sequence):
    assert_same_sequence(read_netcdf_bytes(to_netcdf_bytes(sequence)), sequence)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=sequences(), lead=st.integers(0, 3))
def test_round_trip_through_a_file_with_a_reference_time(tmp_path, sequence, lead):
    reference = pd.Timestamp(sequence["time"].values[0]) - pd.Timedelta(minutes=5 * lead)
    path = write_netcdf(sequence, tmp_path / "sub" / "forecast.nc", forecast_reference_time=reference)
    assert_same_sequence(read_netcdf(path), sequence)
    with xr.open_dataset(path) as ds:
        assert pd.Timestamp(ds["forecast_reference_time"].values) == reference
    assert [p.name for p in path.parent.iterdir()] == ["forecast.nc"]  # no temporary file left


def test_cf_attributes(small_sequence, tmp_path):
    sequence = small_sequence.assign_attrs(projection=PROJECTIONS[1], institution="KNMI")
    reference = pd.Timestamp(sequence["time"].values[0]) - pd.Timedelta(minutes=5)
    path = write_netcdf(sequence, tmp_path / "f.nc", forecast_reference_time=reference)
    with netCDF4.Dataset(path) as ds:
        assert ds.getncattr("Conventions") == "CF-1.8"
        assert ds.getncattr("institution") == "KNMI"
        rate = ds.variables["precipitation_rate"]
        assert rate.standard_name == "lwe_precipitation_rate"
        assert rate.units == "mm h-1"
        assert rate.grid_mapping == "crs"
        assert rate.dimensions == ("time", "y", "x")
        assert "forecast_reference_time" in rate.coordinates
        assert math.isnan(rate._FillValue)
        assert rate.filters()["zlib"]
        frt = ds.variables["forecast_reference_time"]
        assert frt.standard_name == "forecast_reference_time"
        assert netCDF4.num2date(frt[:], frt.units) == reference.to_pydatetime()
        period = ds.variables["forecast_period"]
        assert period.standard_name == "forecast_period" and period.units == "minutes"
        np.testing.assert_array_equal(period[:], 5 * np.arange(1, sequence.sizes["time"] + 1))
        assert ds.variables["time"].standard_name == "time"
        assert ds.variables["x"].standard_name == "projection_x_coordinate" and ds.variables["x"].units == "m"
        assert ds.variables["y"].standard_name == "projection_y_coordinate"
        crs = ds.variables["crs"]
        assert crs.grid_mapping_name == "polar_stereographic"
        assert crs.proj4_params == PROJECTIONS[1]


def test_observations_have_no_reference_time(small_sequence):
    ds = sequence_to_dataset(small_sequence)
    assert "forecast_reference_time" not in ds.coords
    assert ds.attrs["title"] == "nowcast precipitation"


# --- reading other people's CF files -----------------------------------------------------------


def cf_file(
    path: Path,
    values: np.ndarray,
    units: str | None,
    *,
    minutes: int = 10,
    name: str = "precip",
    standard_name: str | None = "precipitation_amount",
    attrs: dict | None = None,
    stamps: list[str] | None = None,
) -> Path:
    n_t = values.shape[0]
    time = (
        pd.DatetimeIndex(stamps)
        if stamps
        else pd.date_range("2024-06-01 12:00", periods=n_t, freq=f"{minutes}min")
    )
    var_attrs = dict(attrs or {})
    if units is not None:
        var_attrs["units"] = units
    if standard_name:
        var_attrs["standard_name"] = standard_name
    ds = xr.Dataset(
        {name: (("time", "y", "x"), values.astype(np.float32), var_attrs)},
        coords={"time": time, "y": [1500.0, 500.0], "x": [500.0, 1500.0, 2500.0]},
    )
    ds.to_netcdf(path)
    return path


def field(n_t: int = 3) -> np.ndarray:
    values = np.arange(n_t * 6, dtype=np.float32).reshape(n_t, 2, 3) / 10.0
    values[0, 0, 0] = np.nan
    return values


@pytest.mark.parametrize(
    ("units", "minutes", "factor"),
    [
        ("mm", 10, 6.0),
        ("mm", 5, 12.0),
        ("kg m-2", 6, 10.0),
        ("mm h-1", 10, 1.0),
        ("mm/h", 5, 1.0),
        ("kg m-2 s-1", 5, 3600.0),
    ],
)
def test_units_are_converted_to_mm_per_hour(tmp_path, units, minutes, factor):
    sequence = read_netcdf(cf_file(tmp_path / "f.nc", field(), units, minutes=minutes))
    np.testing.assert_allclose(sequence.values, field() * factor, rtol=1e-6)
    assert sequence.attrs["units"] == "mm/h"
    assert np.isnan(sequence.values[0, 0, 0])
    assert sequence.attrs["xpixelsize"] == 1000.0


def test_reflectivity_is_converted(tmp_path):
    dbz = np.array([[[10 * math.log10(200.0), 40.0, np.nan], [0.0, 20.0, 30.0]]] * 2)
    sequence = read_netcdf(
        cf_file(
            tmp_path / "dbz.nc",
            dbz,
            "dBZ",
            name="reflectivity",
            standard_name="equivalent_reflectivity_factor",
        )
    )
    np.testing.assert_allclose(sequence.values[0, 0, :2], [1.0, (1e4 / 200) ** (1 / 1.6)], rtol=1e-5)
    assert np.isnan(sequence.values[0, 0, 2])


def test_single_accumulation_needs_its_period(tmp_path):
    with pytest.raises(UnitsError, match="accumulation period"):
        read_netcdf(cf_file(tmp_path / "one.nc", field(1), "mm"))
    sequence = read_netcdf(
        cf_file(tmp_path / "one-with-period.nc", field(1), "mm", attrs={"accumulation_minutes": 15})
    )
    np.testing.assert_allclose(sequence.values, field(1) * 4.0, rtol=1e-6)


# --- bad input -------------------------------------------------------------------------------------


def test_unknown_and_missing_units(tmp_path):
    with pytest.raises(UnitsError, match="unknown units 'furlongs'"):
        read_netcdf(cf_file(tmp_path / "a.nc", field(), "furlongs"))
    with pytest.raises(UnitsError, match="has no units attribute"):
        read_netcdf(cf_file(tmp_path / "b.nc", field(), None))


def test_missing_corrupt_and_truncated_files(tmp_path, small_sequence):
    with pytest.raises(UnreadableFileError, match=r"absent\.nc: no such file"):
        read_netcdf(tmp_path / "absent.nc")
    corrupt = tmp_path / "corrupt.nc"
    corrupt.write_bytes(b"CDF\x01" + bytes(range(256)) * 4)
    with pytest.raises(UnreadableFileError, match=r"corrupt\.nc: not a readable netCDF file"):
        read_netcdf(corrupt)
    data = to_netcdf_bytes(small_sequence)
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match=r"truncated\.nc"):
        read_netcdf(truncated)
    with pytest.raises(UnreadableFileError, match="not a readable netCDF"):
        read_netcdf_bytes(b"not netCDF at all")


def test_irregular_time_steps(tmp_path):
    path = cf_file(
        tmp_path / "irregular.nc",
        field(3),
        "mm h-1",
        stamps=["2024-06-01 12:00", "2024-06-01 12:05", "2024-06-01 12:15"],
    )
    with pytest.raises(SequenceError, match="irregular time steps"):
        read_netcdf(path)


def test_all_nan_frames_and_negative_rates_are_caught_by_validation(tmp_path):
    values = field()
    values[1] = np.nan
    sequence = read_netcdf(cf_file(tmp_path / "gap.nc", values, "mm h-1"))
    with pytest.raises(SequenceError, match=r"all-NaN frame\(s\) at 2024-06-01 12:10:00"):
        validate_sequence(sequence)
    values = field()
    values[2, 1, 1] = -1.0
    sequence = read_netcdf(cf_file(tmp_path / "negative.nc", values, "mm h-1"))
    with pytest.raises(SequenceError, match="must not be negative"):
        validate_sequence(sequence)


def test_too_few_frames(tmp_path):
    sequence = read_netcdf(cf_file(tmp_path / "short.nc", field(2), "mm h-1"))
    with pytest.raises(SequenceError, match="too few frames: need at least 4, got 2"):
        validate_sequence(sequence, min_frames=4)


def test_files_without_one_precipitation_variable(tmp_path):
    path = tmp_path / "two.nc"
    xr.Dataset(
        {
            name: (("time", "y", "x"), field(), {"units": "mm h-1", "standard_name": "rainfall_rate"})
            for name in ("a", "b")
        },
        coords={
            "time": pd.date_range("2024-06-01", periods=3, freq="5min"),
            "y": [0.0, 1.0],
            "x": [0.0, 1.0, 2.0],
        },
    ).to_netcdf(path)
    with pytest.raises(SequenceError, match=r"expected one precipitation variable.*\['a', 'b'\]"):
        read_netcdf(path)
    assert read_netcdf(path, variable="b").shape == (3, 2, 3)
    with pytest.raises(SequenceError, match="no variable 'c'"):
        read_netcdf(path, variable="c")
    flat = tmp_path / "flat.nc"
    xr.Dataset({"precip": (("y", "x"), field(1)[0], {"units": "mm h-1"})}).to_netcdf(flat)
    with pytest.raises(SequenceError, match="expected one precipitation variable"):
        read_netcdf(flat)


def test_latitude_longitude_grid_from_another_network_round_trips_as_cf(tmp_path):
    """A lat/lon file with a precipitation flux and 15-min steps, as a service elsewhere writes it."""
    lat = np.linspace(50.0, 52.0, 9)
    lon = np.linspace(4.0, 7.0, 12)
    flux = np.full((3, 9, 12), 2.0 / 3600.0, dtype=np.float32)  # kg m-2 s-1 = 2 mm/h
    flux[:, 0, :] = np.nan
    xr.Dataset(
        {"pr": (("time", "lat", "lon"), flux, {"standard_name": "precipitation_flux", "units": "kg m-2 s-1"})},
        coords={"time": pd.date_range("2023-07-01T10:00", periods=3, freq="15min"),
                "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})},
    ).to_netcdf(tmp_path / "in.nc")
    seq = read_netcdf(tmp_path / "in.nc")
    assert seq.attrs["projection"].startswith("+proj=longlat")
    np.testing.assert_allclose(seq.values[:, 1:], 2.0, rtol=1e-5)
    assert np.isnan(seq.values[:, 0]).all()
    write_netcdf(seq, tmp_path / "out.nc", forecast_reference_time=seq["time"].values[-1])
    with xr.open_dataset(tmp_path / "out.nc") as ds:
        assert ds["x"].attrs["standard_name"] == "longitude" and ds["y"].attrs["units"] == "degrees_north"
        assert ds["crs"].attrs["grid_mapping_name"] == "latitude_longitude"
    np.testing.assert_allclose(read_netcdf(tmp_path / "out.nc")["x"].values, lon)


def test_unknown_projection_writes_no_grid_mapping(tmp_path):
    seq = make_sequence(np.ones((2, 4, 5)), pd.date_range("2024-01-01", periods=2, freq="5min"))
    write_netcdf(seq, tmp_path / "out.nc")
    with xr.open_dataset(tmp_path / "out.nc") as ds:
        assert "crs" not in ds.variables and "grid_mapping" not in ds[VARIABLE_NAME].attrs


# --- ensembles and CF compliance ---------------------------------------------------------------------------


def ensemble_forecast(sequence: xr.DataArray, members: int = 3) -> xr.DataArray:
    """A (member, time, y, x) forecast: the sequence scaled per member, its reference time one step before."""
    scaled = [sequence * (0.5 + m) for m in range(members)]
    forecast = xr.concat(scaled, dim="member").assign_coords(member=np.arange(members))
    forecast.attrs = dict(sequence.attrs)
    forecast.attrs["forecast_reference_time"] = str(pd.Timestamp(sequence["time"].values[0]) - pd.Timedelta("5min"))
    return forecast


def reference_of(forecast: xr.DataArray) -> pd.Timestamp:
    return pd.Timestamp(forecast.attrs["forecast_reference_time"])


def test_members_lie_on_a_realization_axis(small_sequence, tmp_path):
    forecast = ensemble_forecast(small_sequence.isel(time=slice(0, 3)))
    path = write_netcdf(forecast, tmp_path / "members.nc", forecast_reference_time=reference_of(forecast))
    with netCDF4.Dataset(path) as ds:
        rate = ds.variables[VARIABLE_NAME]
        assert rate.dimensions == ("realization", "time", "y", "x")
        realization = ds.variables["realization"]
        assert realization.standard_name == "realization" and realization.dtype == np.int32
        np.testing.assert_array_equal(realization[:], [0, 1, 2])
        np.testing.assert_array_equal(rate[2].filled(np.nan), forecast.values[2])


def test_products_are_written_as_improver_writes_them(small_sequence, tmp_path):
    forecast = ensemble_forecast(small_sequence.isel(time=slice(0, 3)), members=4)
    products = ensemble_products(forecast, ProductRequest(PRODUCTS, (0.5, 2.0), (0.1, 0.9)))
    path = write_netcdf(products, tmp_path / "products.nc", forecast_reference_time=reference_of(forecast))
    with netCDF4.Dataset(path) as ds:
        probability = ds.variables["probability_of_lwe_precipitation_rate_above_threshold"]
        assert probability.dimensions == ("threshold", "time", "y", "x") and probability.units == "1"
        threshold = ds.variables["threshold"]
        assert threshold.standard_name == "lwe_precipitation_rate" and threshold.units == "mm h-1"
        assert threshold.spp__relative_to_threshold == "greater_than"
        np.testing.assert_array_equal(threshold[:], [0.5, 2.0])
        np.testing.assert_array_equal(probability[:].filled(np.nan), products["probabilities"].values)
        mean = ds.variables["precipitation_rate_mean"]
        assert mean.cell_methods == "realization: mean" and mean.standard_name == "lwe_precipitation_rate"
        assert mean.minimum_members_with_data == 2 and mean.comment == "missing where fewer than 2 members have data"
        assert ds.variables["precipitation_rate_percentile"].minimum_members_with_data == 2
        np.testing.assert_array_equal(mean[:].filled(np.nan), products["mean"].values)
        pm_mean = ds.variables["precipitation_rate_pm_mean"]
        assert "probability-matched" in pm_mean.long_name and not hasattr(pm_mean, "cell_methods")
        percentile = ds.variables["percentile"]
        assert percentile.units == "%"
        np.testing.assert_allclose(percentile[:], [10.0, 90.0])
        assert ds.variables["precipitation_rate_percentile"].dimensions == ("percentile", "time", "y", "x")
        assert ds.variables[VARIABLE_NAME].dimensions[0] == "realization"
        assert "forecast_period" in probability.coordinates
        period = ds.variables["probability_of_lwe_precipitation_rate_max_above_threshold"]
        assert period.dimensions == ("threshold", "y", "x") and period.cell_methods == "time: maximum"
        assert period.coordinates == "forecast_reference_time" and period.minimum_members_with_data == 2
        assert "valid from" in period.comment and "missing where fewer than 2 members" in period.comment
        np.testing.assert_array_equal(period[:].filled(np.nan), products["max_probabilities"].values)
        accumulation = ds.variables["probability_of_lwe_thickness_of_precipitation_amount_above_threshold"]
        assert accumulation.dimensions == ("accumulation_threshold", "y", "x") and accumulation.units == "1"
        assert accumulation.cell_methods == "time: sum"
        assert accumulation.coordinates == "forecast_reference_time" and accumulation.minimum_members_with_data == 2
        assert not hasattr(accumulation, "standard_name")  # IMPROVER's probabilities have none
        start, end = reference_of(forecast), pd.Timestamp(forecast["time"].values[-1])
        assert accumulation.comment == (f"the rain over the forecast period from {start.isoformat()} to "
                                        f"{end.isoformat()}; missing where fewer than 2 members have data")
        np.testing.assert_array_equal(accumulation[:].filled(np.nan), products["accumulation_probabilities"].values)
        accumulation_threshold = ds.variables["accumulation_threshold"]
        assert accumulation_threshold.standard_name == "lwe_thickness_of_precipitation_amount"
        assert accumulation_threshold.units == "mm" and accumulation_threshold.spp__relative_to_threshold == (
            "greater_than")
        assert "forecast period" in accumulation_threshold.long_name
        np.testing.assert_array_equal(accumulation_threshold[:], [1.0, 5.0, 10.0])
        amount = ds.variables["lwe_thickness_of_precipitation_amount_percentile"]
        assert amount.dimensions == ("percentile", "y", "x")
        assert amount.standard_name == "lwe_thickness_of_precipitation_amount" and amount.units == "mm"
        assert amount.cell_methods == "time: sum"
        assert amount.minimum_members_with_data == 2 and amount.comment == accumulation.comment
        np.testing.assert_array_equal(amount[:].filled(np.nan), products["accumulation_quantiles"].values)


def test_the_accumulations_period_without_a_reference_time_starts_a_step_before_the_first_valid_time(
        small_sequence):
    from nowcast.io.netcdf import products_to_dataset

    forecast = ensemble_forecast(small_sequence.isel(time=slice(0, 3)), members=4)
    products = ensemble_products(forecast, ProductRequest(("accumulation_quantiles",)))
    times = pd.DatetimeIndex(forecast["time"].values)
    del products.attrs["forecast_reference_time"]
    comment = products_to_dataset(products)["lwe_thickness_of_precipitation_amount_percentile"].attrs["comment"]
    assert comment.startswith(f"the rain over the forecast period from {(times[0] - (times[1] - times[0])).isoformat()}"
                              f" to {times[-1].isoformat()}")


def test_times_are_float64_and_coordinates_have_no_fill_value(small_sequence, tmp_path):
    path = write_netcdf(small_sequence, tmp_path / "f.nc", forecast_reference_time=small_sequence["time"].values[0])
    with netCDF4.Dataset(path) as ds:
        for name in ("time", "forecast_reference_time"):
            assert ds.variables[name].dtype == np.float64, name
        for name in ("time", "x", "y", "forecast_period", "forecast_reference_time"):
            assert "_FillValue" not in ds.variables[name].ncattrs(), name
    back = read_netcdf(path)
    np.testing.assert_array_equal(back.values, small_sequence.values)
    np.testing.assert_array_equal(back["time"].values, small_sequence["time"].values)


def _cf_errors(checker: str, path: Path, report: Path) -> list[str]:
    """What ``compliance-checker --test cf:1.8`` calls errors (its high-priority failures) in ``path``."""
    command = [checker, "--test", "cf:1.8", "--format", "json_new", "--output", str(report), str(path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert report.is_file(), run.stdout + run.stderr
    results = json.loads(report.read_text())[str(path)]["cf:1.8"]
    return [f"{check['name']}: {message}" for check in results["high_priorities"]
            if check["value"][0] < check["value"][1] for message in check["msgs"]]


def test_files_pass_the_cf_compliance_checker(small_sequence, tmp_path):
    """Deterministic, members, probability, period-maximum and accumulation files: no CF-1.8 errors.

    The checker reads standard names from the table it ships unless a file names another
    version in ``standard_name_vocabulary`` (ours do not), so it needs no network.
    """
    checker = shutil.which("compliance-checker", path=str(Path(sys.executable).parent)) or shutil.which(
        "compliance-checker")
    if checker is None:
        pytest.skip("compliance-checker is not installed (pip install -e .[dev])")
    sequence = small_sequence.isel(time=slice(0, 3)).assign_attrs(projection=PROJECTIONS[1])  # KNMI's polar grid
    forecast = ensemble_forecast(sequence)
    reference = reference_of(forecast)
    files = {
        "deterministic": write_netcdf(sequence, tmp_path / "deterministic.nc", forecast_reference_time=reference),
        "members": write_netcdf(forecast, tmp_path / "members.nc", forecast_reference_time=reference),
        "probabilities": write_netcdf(ensemble_products(forecast, ProductRequest(("probabilities",))),
                                      tmp_path / "probabilities.nc", forecast_reference_time=reference),
        "neighbourhood": write_netcdf(
            ensemble_products(forecast, ProductRequest(("probabilities",), neighbourhood=1.0)),
            tmp_path / "neighbourhood.nc", forecast_reference_time=reference),
        "period maximum": write_netcdf(ensemble_products(forecast, ProductRequest(("max_probabilities",))),
                                       tmp_path / "period.nc", forecast_reference_time=reference),
        "accumulations": write_netcdf(
            ensemble_products(forecast, ProductRequest(("accumulation_probabilities", "accumulation_quantiles"))),
            tmp_path / "accumulations.nc", forecast_reference_time=reference),
        "every product": write_netcdf(ensemble_products(forecast, ProductRequest(PRODUCTS)),
                                      tmp_path / "every-product.nc", forecast_reference_time=reference),
    }
    with xr.open_dataset(files["neighbourhood"]) as ds:
        probability = ds["probability_of_lwe_precipitation_rate_above_threshold"]
        assert probability.attrs["neighbourhood_km_per_minute"] == 1.0
        assert "grows 1 km per minute of lead" in probability.attrs["comment"]
        assert probability.attrs["minimum_members_with_data"] == 2
        assert probability.attrs["comment"].endswith("; missing where fewer than 2 members have data")
    with netCDF4.Dataset(files["accumulations"]) as ds:
        for name in ("probability_of_lwe_thickness_of_precipitation_amount_above_threshold",
                     "lwe_thickness_of_precipitation_amount_percentile"):
            assert ds.variables[name].grid_mapping == "crs", name
    for kind, path in files.items():
        assert _cf_errors(checker, path, tmp_path / f"{kind.replace(' ', '-')}.json") == [], kind


def test_threads_reading_and_writing_netcdf_at_once_do_not_crash_the_process(tmp_path: Path) -> None:
    """The netCDF4 wheels' HDF5 is not thread-safe: without the library's one lock this crashes (SIGSEGV)."""
    script = f"""
import threading
from nowcast.feed import read_product, write_product
from nowcast.io.netcdf import read_netcdf_bytes, to_netcdf_bytes
from nowcast.synthetic import SyntheticRain, synthetic_sequence
seq = synthetic_sequence(SyntheticRain(ny=200, nx=200, frames=8), seed=1)
body = to_netcdf_bytes(seq)
product = {str(tmp_path / "p.nc")!r}
write_product(product, seq[:4], seq[4:])
def work(k):
    for _ in range(25):
        [lambda: read_netcdf_bytes(body), lambda: read_product(product), lambda: to_netcdf_bytes(seq[:3])][k % 3]()
threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"
