"""The command line: forecasts round-trip through CF-netCDF; bad input exits 2 with a message."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nowcast import forecasters
from nowcast.cli import EXIT_USER_ERROR, app
from nowcast.forecasters.base import Forecaster
from nowcast.io.netcdf import read_netcdf, write_netcdf
from nowcast.products import PRODUCTS, ProductRequest, ensemble_products
from nowcast.sequence import make_sequence
from nowcast.synthetic import SyntheticRain, synthetic_sequence

runner = CliRunner()


@pytest.fixture()
def past():
    return synthetic_sequence(SyntheticRain(ny=32, nx=40, frames=6, no_data_border=2), seed=5)


@pytest.fixture()
def past_file(past, tmp_path):
    return write_netcdf(past, tmp_path / "past.nc")


def run(*args: str):
    return runner.invoke(app, ["-q", *args])


def test_forecast_round_trip(past, past_file, tmp_path):
    out = tmp_path / "forecast.nc"
    result = run("forecast", str(past_file), "--model", "persistence", "--steps", "3", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    forecast = read_netcdf(out)
    last = pd.Timestamp(past["time"].values[-1])
    expected_times = [last + pd.Timedelta(minutes=5 * k) for k in (1, 2, 3)]
    assert list(pd.DatetimeIndex(forecast["time"].values)) == expected_times
    np.testing.assert_array_equal(forecast.values, np.repeat(past.values[-1:], 3, axis=0))
    np.testing.assert_array_equal(forecast["x"].values, past["x"].values)
    import xarray as xr

    with xr.open_dataset(out) as ds:
        assert pd.Timestamp(ds["forecast_reference_time"].values) == last
        assert ds.attrs["forecast_method"] == "persistence"
        assert ds["precipitation_rate"].attrs["units"] == "mm h-1"
        assert list(ds["forecast_period"].values) == [5.0, 10.0, 15.0]


def test_forecast_with_extrapolation_from_single_frame_files(past, tmp_path):
    # one file per frame, given out of order, the way national archives store radar scans
    paths = [write_netcdf(past.isel(time=[i]), tmp_path / f"frame{i}.nc") for i in range(past.sizes["time"])]
    out = tmp_path / "sub" / "forecast.nc"
    result = run("forecast", *map(str, reversed(paths)), "-m", "extrapolation", "-n", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    forecast = read_netcdf(out)
    assert forecast.sizes["time"] == 2
    assert np.isnan(forecast.values[:, :2]).all()  # no-data border kept
    assert np.nanmax(forecast.values) > 0


class _TwoFutures(Forecaster):
    name = "two-futures"
    n_input_frames = 1
    supports_members = True

    def predict(self, past, steps, *, members=None, seed=None, spacing=None):
        frames = np.repeat(past[:, -1:], steps, axis=1)
        if members is None:
            return frames
        return np.stack([frames * (m + 1) for m in range(members)], axis=1)


def test_forecast_members_are_written_as_realizations(past_file, tmp_path, monkeypatch):
    monkeypatch.setitem(forecasters.METHODS, "two-futures", lambda: _TwoFutures())
    out = tmp_path / "ensemble.nc"
    result = run("forecast", str(past_file), "-m", "two-futures", "-n", "2", "--members", "3", "-o", str(out))
    assert result.exit_code == 0, result.output
    import xarray as xr

    with xr.open_dataset(out) as ds:
        rate = ds["precipitation_rate"]
        assert rate.dims == ("realization", "time", "y", "x")
        assert ds["realization"].attrs["standard_name"] == "realization"
        np.testing.assert_allclose(rate.isel(realization=2).values, 3 * rate.isel(realization=0).values)
        # members and exceedance probabilities are what --members writes unless --products says otherwise
        assert ds["probability_of_lwe_precipitation_rate_above_threshold"].dims == ("threshold", "time", "y", "x")
        assert list(ds["threshold"].values) == [1.0, 4.0, 8.0]


def test_forecast_steps_products_are_the_librarys(past_file, tmp_path):
    out = tmp_path / "steps.nc"
    result = run("forecast", str(past_file), "-m", "steps", "-n", "2", "--members", "3", "--seed", "7",
                 "--products", "members,probabilities,mean,pm_mean,quantiles", "--thresholds", "0.5,2",
                 "--quantiles", "0.5", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)  # nothing of pysteps' printing on stdout
    expected = forecasters.get_forecaster("steps").forecast(read_netcdf(past_file), 2, members=3, seed=7)
    products = ensemble_products(expected, ProductRequest(PRODUCTS, (0.5, 2.0), (0.5,)))
    import xarray as xr

    with xr.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds["precipitation_rate"].values, expected.values)
        np.testing.assert_array_equal(ds["probability_of_lwe_precipitation_rate_above_threshold"].values,
                                      products["probabilities"].values)
        np.testing.assert_array_equal(ds["precipitation_rate_mean"].values, products["mean"].values)
        np.testing.assert_array_equal(ds["precipitation_rate_pm_mean"].values, products["pm_mean"].values)
        np.testing.assert_array_equal(ds["precipitation_rate_percentile"].values, products["quantiles"].values)
        assert list(ds["threshold"].values) == [0.5, 2.0] and list(ds["percentile"].values) == [50.0]
        assert ds.attrs["forecast_method"] == "steps"


def test_forecast_writes_neighbourhood_processed_probabilities(past_file, tmp_path):
    out = tmp_path / "steps.nc"
    result = run("forecast", str(past_file), "-m", "steps", "-n", "2", "--members", "3", "--seed", "7",
                 "--products", "probabilities", "--neighbourhood", "0.8", "-o", str(out))
    assert result.exit_code == 0, result.output
    expected = forecasters.get_forecaster("steps").forecast(read_netcdf(past_file), 2, members=3, seed=7)
    products = ensemble_products(expected, ProductRequest(("probabilities",), neighbourhood=0.8))
    import xarray as xr

    with xr.open_dataset(out) as ds:
        probability = ds["probability_of_lwe_precipitation_rate_above_threshold"]
        np.testing.assert_array_equal(probability.values, products["probabilities"].values)
        assert probability.attrs["neighbourhood_km_per_minute"] == 0.8


def test_forecast_writes_the_rain_over_the_period(past_file, tmp_path, monkeypatch):
    monkeypatch.setitem(forecasters.METHODS, "two-futures", lambda: _TwoFutures())
    out = tmp_path / "accumulations.nc"
    result = run("forecast", str(past_file), "-m", "two-futures", "-n", "3", "--members", "4",
                 "--products", "accumulation_probabilities,accumulation_quantiles", "--accumulation-thresholds", "1,5",
                 "--quantiles", "0.25,0.75", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    expected_forecast = _TwoFutures().forecast(read_netcdf(past_file), 3, members=4)
    expected = ensemble_products(expected_forecast, ProductRequest(
        ("accumulation_probabilities", "accumulation_quantiles"), quantile_levels=(0.25, 0.75),
        accumulation_thresholds=(1.0, 5.0)))
    import xarray as xr

    with xr.open_dataset(out) as ds:
        probability = ds["probability_of_lwe_thickness_of_precipitation_amount_above_threshold"]
        assert probability.dims == ("accumulation_threshold", "y", "x")
        np.testing.assert_array_equal(probability.values, expected["accumulation_probabilities"].values)
        assert list(ds["accumulation_threshold"].values) == [1.0, 5.0]
        assert ds["accumulation_threshold"].attrs["units"] == "mm"
        amount = ds["lwe_thickness_of_precipitation_amount_percentile"]
        np.testing.assert_array_equal(amount.values, expected["accumulation_quantiles"].values)
        assert list(ds["percentile"].values) == [25.0, 75.0] and amount.attrs["units"] == "mm"
        assert "precipitation_rate" not in ds.variables  # only what was asked for
    # member m brings (m + 1) times the last frame's rate over 15 minutes: the highest quartile is 3.25 times
    # a quarter of an hour of that rate
    rate = read_netcdf(past_file).values[-1]
    np.testing.assert_allclose(expected["accumulation_quantiles"].values[1], rate * 3.25 * 0.25, rtol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--members", "2", "--products", "members,maxima"], "products: unknown product 'maxima'"),
        (["--members", "2", "--products", "accumulation_probabilities", "--accumulation-thresholds", "1,x"],
         "accumulation_thresholds: 'x' is not a number"),
        (["--members", "2", "--products", "accumulation_probabilities", "--accumulation-thresholds", "5,1"],
         "accumulation_thresholds: values must be strictly increasing"),
        (["--members", "2", "--products", "accumulation_probabilities", "--accumulation-thresholds", "-1"],
         "accumulation_thresholds: -1 is outside [0, 1000]"),
        (["--members", "2", "--products", "accumulation_quantiles", "--accumulation-thresholds", "1"],
         "accumulation_thresholds: given, but accumulation_probabilities are not among"),
        (["--accumulation-thresholds", "1"],
         "--accumulation-thresholds: ensemble products are made from members; give --members N"),
        (["--members", "2", "--thresholds", "1,x"], "thresholds: 'x' is not a number"),
        (["--members", "2", "--products", "mean", "--quantiles", "0.5"], "quantile_levels: given, but quantiles"),
        (["--thresholds", "1"], "--thresholds: ensemble products are made from members; give --members N"),
        (["--neighbourhood", "0.8"], "--neighbourhood: ensemble products are made from members; give --members N"),
        (["--members", "2", "--products", "mean", "--neighbourhood", "0.8"], "neighbourhood: given, but probabilities"),
        (["--members", "2", "--neighbourhood", "11"], "neighbourhood: 11 is outside [0, 10]"),
    ],
)
def test_bad_product_options(past_file, tmp_path, options, message):
    out = tmp_path / "f.nc"
    result = run("forecast", str(past_file), "-m", "steps", "-n", "1", *options, "-o", str(out))
    expect_user_error(result, message, out)


def expect_user_error(result, message: str, out) -> None:
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temporary file left either


def test_missing_input_file(tmp_path):
    out = tmp_path / "f.nc"
    result = run("forecast", str(tmp_path / "nope.nc"), "-m", "persistence", "-o", str(out))
    expect_user_error(result, "nope.nc: no such file", out)


def test_corrupt_input_file(tmp_path):
    corrupt = tmp_path / "corrupt.nc"
    corrupt.write_bytes(b"CDF\x01 this is not really netCDF" * 10)
    out = tmp_path / "f.nc"
    result = run("forecast", str(corrupt), "-m", "persistence", "-o", str(out))
    expect_user_error(result, "corrupt.nc: not a readable netCDF file", out)


def test_unknown_model(past_file, tmp_path):
    out = tmp_path / "f.nc"
    result = run("forecast", str(past_file), "-m", "magic", "-o", str(out), "--models-dir", str(tmp_path))
    expect_user_error(result, "unknown forecaster 'magic'; valid names are: extrapolation, persistence, sprog, steps",
                      out)


def test_too_few_frames(past, tmp_path):
    short = write_netcdf(past.isel(time=slice(0, 2)), tmp_path / "short.nc")
    out = tmp_path / "f.nc"
    result = run("forecast", str(short), "-m", "extrapolation", "-o", str(out))
    expect_user_error(result, "extrapolation needs at least 4 past frames; got 2", out)


def test_irregular_time_steps(past, tmp_path):
    minutes = [0, 5, 10, 20, 25, 30]
    times = pd.Timestamp("2024-06-01 12:00") + pd.to_timedelta(minutes, unit="min")
    irregular = write_netcdf(make_sequence(past.values, times), tmp_path / "irregular.nc")
    out = tmp_path / "f.nc"
    result = run("forecast", str(irregular), "-m", "persistence", "-o", str(out))
    expect_user_error(result, "irregular time steps", out)


def test_all_nan_frame(past, tmp_path):
    broken = past.copy(deep=True)
    broken.values[-2] = np.nan
    path = write_netcdf(broken, tmp_path / "hole.nc")
    out = tmp_path / "f.nc"
    result = run("forecast", str(path), "-m", "extrapolation", "-o", str(out))
    expect_user_error(result, "all-NaN frame(s) at 2024-06-01 12:20:00", out)


def test_members_from_a_deterministic_model(past_file, tmp_path):
    out = tmp_path / "f.nc"
    result = run("forecast", str(past_file), "-m", "persistence", "--members", "2", "-o", str(out))
    expect_user_error(result, "persistence gives one forecast, not ensemble members", out)


def test_output_that_is_a_folder(past_file, tmp_path):
    result = run("forecast", str(past_file), "-m", "persistence", "-o", str(tmp_path))
    assert result.exit_code == EXIT_USER_ERROR
    assert "is a folder" in result.stderr


def test_existing_output_survives_a_failed_forecast(past, tmp_path):
    out = tmp_path / "f.nc"
    out.write_bytes(b"previous forecast")
    short = write_netcdf(past.isel(time=[0]), tmp_path / "one.nc")
    result = run("forecast", str(short), "-m", "extrapolation", "-o", str(out))
    assert result.exit_code == EXIT_USER_ERROR
    assert out.read_bytes() == b"previous forecast"


def test_models_lists_the_registry(tmp_path):
    result = run("models", "--models-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "persistence" in result.stdout and "extrapolation" in result.stdout
    assert "baseline" in result.stdout


def test_evaluate_rejects_unknown_event_and_method(tmp_path):
    out = tmp_path / "eval"
    result = run("evaluate", "--events", "knmi-20100826,atlantis", "--out", str(out))
    assert result.exit_code == EXIT_USER_ERROR
    assert "unknown event 'atlantis'" in result.stderr and "knmi-20100826" in result.stderr
    result = run("evaluate", "--methods", "persistence,nope", "--events", "knmi-20100826", "--out", str(out))
    assert result.exit_code == EXIT_USER_ERROR
    assert "unknown forecaster 'nope'" in result.stderr
    assert not out.exists()


def test_evaluate_with_a_catalogue_and_missing_archive(tmp_path):
    catalogue = tmp_path / "events.json"
    catalogue.write_text(json.dumps({"events": {"x": {
        "start": "2024-01-01T00:00", "end": "2024-01-01T02:00", "importer": "netcdf", "root_path": "radar",
        "path_fmt": "", "fn_pattern": "%Y%m%d%H%M", "fn_ext": "nc", "timestep": 5}}}))
    out = tmp_path / "eval"
    result = run("evaluate", "--methods", "persistence", "--events", "all", "--catalogue", str(catalogue),
                 "--data-root", str(tmp_path / "no-archive"), "--out", str(out))
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert "radar archive not found" in result.stderr
    assert not out.exists()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("nowcast ")


def test_evaluate_end_to_end_on_a_small_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("NOWCAST_CACHE_DIR", str(tmp_path / "cache"))
    sequence = synthetic_sequence(SyntheticRain(ny=48, nx=48, frames=18), seed=8, start="2024-06-01T12:00")
    folder = tmp_path / "archive" / "radar" / "synthetic"
    for i in range(sequence.sizes["time"]):
        stamp = pd.Timestamp(sequence["time"].values[i])
        write_netcdf(sequence.isel(time=[i]), folder / f"{stamp:%Y%m%d%H%M}.nc")
    catalogue = tmp_path / "events.toml"
    catalogue.write_text(
        '[events.synthetic]\nstart = "2024-06-01T12:00"\nend = "2024-06-01T13:25"\n'
        'importer = "netcdf"\nroot_path = "radar/synthetic"\npath_fmt = ""\n'
        'fn_pattern = "%Y%m%d%H%M"\nfn_ext = "nc"\ntimestep = 5\n'
    )
    out = tmp_path / "eval"
    result = run("evaluate", "--methods", "persistence", "--events", "all", "--catalogue", str(catalogue),
                 "--data-root", str(tmp_path / "archive"), "--out", str(out), "--steps", "6", "--stride", "4",
                 "--no-progress")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "scores.md")
    report = json.loads((out / "scores.json").read_text())
    assert report["config"]["events"] == ["synthetic"]
    assert report["events"]["synthetic"]["n_start_times"] == 3  # 18 frames, 10 per window, every 4
    assert report["overall"]["scores"]["persistence"]["leads"]["30"]["n_forecasts"] == 3


def test_train_job_runs_with_its_progress_bar(tmp_path, tiny_train_config):
    """`nowcast train` as a person runs it (progress bar on) trains and logs on a synthetic event."""
    config = tiny_train_config("tiny")
    result = run("train", "--config", str(config), "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["g_lp"]) for r in records)
