"""The product folder's manifest: round trip, atomic replacement, hostile entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nowcast.errors import InputError, UnreadableFileError
from nowcast.feed import MANIFEST, ProductEntry, latest_product, product_file_name, read_manifest, write_manifest


def entry(minute: int, **overrides: object) -> ProductEntry:
    reference = datetime(2017, 5, 9, 12, minute, tzinfo=UTC)
    fields: dict[str, object] = {
        "file": product_file_name(reference),
        "reference_time": reference,
        "valid_times": tuple(reference + timedelta(minutes=5 * k) for k in range(1, 4)),
        "model": "default-gan@v6",
    }
    return ProductEntry(**{**fields, **overrides})  # type: ignore[arg-type]


def test_the_manifest_round_trips_and_lists_products_oldest_first(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) == [] and latest_product(tmp_path) is None
    products = [entry(10, fallback=True, fallback_reason="model failed"), entry(5, members=20, thresholds=(1.0, 4.0))]
    write_manifest(tmp_path, products, source="fmi")
    assert read_manifest(tmp_path) == sorted(products, key=lambda e: e.reference_time)
    assert latest_product(tmp_path) == products[0]
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST]  # no temporary file left


def test_file_names_are_plain_product_names() -> None:
    assert product_file_name(datetime(2017, 5, 9, 12, 5)) == "nowcast_20170509T1205Z.nc"
    for name in ("../etc/passwd", "nowcast_20170509T1205Z.nc/..", "/tmp/nowcast_20170509T1205Z.nc"):
        with pytest.raises(InputError, match="is not of the form"):
            entry(0, file=name)


def test_a_damaged_manifest_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(UnreadableFileError, match=MANIFEST):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text('{"schema": 1, "products": [{"file": "nowcast_20170509T1205Z.nc"}]}')
    with pytest.raises(UnreadableFileError, match="manifest entry"):
        read_manifest(tmp_path)


def test_a_product_file_round_trips_observed_frames_forecast_and_probabilities(tmp_path: Path) -> None:
    import numpy as np
    import xarray as xr

    from nowcast.feed import read_product, write_product
    from nowcast.sequence import future_times, like
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    observed = synthetic_sequence(SyntheticRain(ny=32, nx=40, frames=4), seed=1)
    forecast = like(observed, observed.values[-1:].repeat(3, axis=0) * 1.5, future_times(observed, 3))
    probabilities = xr.DataArray((forecast.values[None] > [[[[1.0]]], [[[4.0]]]]).astype(np.float32),
                                 dims=("threshold", *forecast.dims), coords={"threshold": [1.0, 4.0]})
    probabilities.attrs["neighbourhood_km_per_minute"] = 0.8
    probabilities.attrs["minimum_members_with_data"] = 1
    members = xr.concat([forecast * 0.5, forecast * 1.5], dim="member")
    maxima = probabilities.max(dim="time")
    for with_probabilities in (False, True):
        path = tmp_path / f"p{with_probabilities}.nc"
        write_product(path, observed, forecast, probabilities=probabilities if with_probabilities else None,
                      max_probabilities=maxima if with_probabilities else None,
                      members=members if with_probabilities else None, attrs={"model": "test@v1", "fallback": 0})
        fields = read_product(path)
        np.testing.assert_allclose(fields.observed.values, observed.values, rtol=1e-6)
        np.testing.assert_allclose(fields.forecast.values, forecast.values, rtol=1e-6)
        assert (fields.forecast["time"].values == forecast["time"].values).all()
        assert fields.reference_time == observed["time"].values[-1]
        assert fields.forecast.attrs["projection"] == observed.attrs["projection"]
        assert fields.attrs["model"] == "test@v1"
        if with_probabilities:
            assert fields.probabilities is not None
            np.testing.assert_array_equal(fields.probabilities.values, probabilities.values)
            assert list(fields.probabilities["threshold"].values) == [1.0, 4.0]
            assert fields.probabilities.attrs["neighbourhood_km_per_minute"] == 0.8  # what they are, kept
            assert fields.probabilities.attrs["minimum_members_with_data"] == 1
            assert fields.members is not None and fields.members.dims == ("member", "time", "y", "x")
            np.testing.assert_allclose(fields.members.values, members.values, rtol=1e-6)
            assert fields.max_probabilities is not None and fields.max_probabilities.dims == ("threshold", "y", "x")
            np.testing.assert_array_equal(fields.max_probabilities.values, maxima.values)
        else:
            assert fields.max_probabilities is None
            assert fields.probabilities is None and fields.members is None
    # a product that says its probabilities are something no neighbourhood is: refused by name
    import netCDF4

    for bad in ("wide", -1.0, 1e9):
        with netCDF4.Dataset(tmp_path / "pTrue.nc", "a") as ds:
            ds["probability_of_lwe_precipitation_rate_above_threshold"].neighbourhood_km_per_minute = bad
        with pytest.raises(UnreadableFileError, match="neighbourhood_km_per_minute"):
            read_product(tmp_path / "pTrue.nc")


@pytest.mark.parametrize("value", ["four", -1, 0, 2.5])
def test_a_product_whose_minimum_of_members_is_no_count_is_refused(tmp_path: Path, value: object) -> None:
    import netCDF4
    import numpy as np
    import xarray as xr

    from nowcast.feed import read_product, write_product
    from nowcast.sequence import future_times, like
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    observed = synthetic_sequence(SyntheticRain(ny=16, nx=20, frames=3), seed=2)
    forecast = like(observed, observed.values[-1:].repeat(2, axis=0), future_times(observed, 2))
    probabilities = xr.DataArray((forecast.values[None] > 1.0).astype(np.float32), dims=("threshold", *forecast.dims),
                                 coords={"threshold": [1.0]}, attrs={"minimum_members_with_data": 3})
    path = write_product(tmp_path / "p.nc", observed, forecast, probabilities=probabilities)
    with netCDF4.Dataset(path, "a") as ds:
        ds.variables["probability_of_lwe_precipitation_rate_above_threshold"].minimum_members_with_data = value
    with pytest.raises(UnreadableFileError, match=r"minimum_members_with_data .* no positive whole number"):
        read_product(path)


def test_a_product_whose_maximum_is_on_other_axes_is_refused(tmp_path: Path) -> None:
    import numpy as np
    import xarray as xr

    from nowcast.feed import MAX_PROBABILITY_NAME, read_product, write_product
    from nowcast.sequence import future_times, like
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    observed = synthetic_sequence(SyntheticRain(ny=16, nx=20, frames=3), seed=3)
    forecast = like(observed, observed.values[-1:].repeat(2, axis=0), future_times(observed, 2))
    probabilities = xr.DataArray((forecast.values[None] > 1.0).astype(np.float32), dims=("threshold", *forecast.dims),
                                 coords={"threshold": [1.0]})
    path = write_product(tmp_path / "p.nc", observed, forecast, probabilities=probabilities,
                         max_probabilities=probabilities.max(dim="time"))
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    ds[MAX_PROBABILITY_NAME] = ds["probability_of_lwe_precipitation_rate_above_threshold"]  # a time axis too
    ds.to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(UnreadableFileError, match="is on threshold, time, y, x, not threshold, y and x"):
        read_product(tmp_path / "bad.nc")
