"""The product folder's manifest: round trip, atomic replacement, hostile entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def test_a_product_that_also_holds_the_rain_over_the_period_is_read(tmp_path: Path) -> None:
    """A product file that holds both accumulation products (written by another tool from the same forecast) reads as
    one without them, but for the probabilities of the rain over the period, which the feed publishes: those read
    back as made; the file without them (an older one) reads with none."""
    import numpy as np
    import pandas as pd
    import xarray as xr

    from nowcast.feed import read_product, write_product
    from nowcast.io.netcdf import PRODUCT_VARIABLES, products_to_dataset
    from nowcast.products import ProductRequest, ensemble_products
    from nowcast.sequence import future_times, like
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    observed = synthetic_sequence(SyntheticRain(ny=16, nx=20, frames=3), seed=4)
    forecast = like(observed, observed.values[-1:].repeat(2, axis=0), future_times(observed, 2))
    members = xr.concat([forecast * 0.5, forecast * 1.5, forecast * 2.5], dim="member")
    members.attrs = {**forecast.attrs, "forecast_reference_time": str(pd.Timestamp(observed["time"].values[-1]))}
    products = ensemble_products(members, ProductRequest(("pm_mean", "probabilities", "accumulation_probabilities",
                                                          "accumulation_quantiles")))
    path = write_product(tmp_path / "p.nc", observed, products["pm_mean"].assign_attrs(products.attrs),
                         probabilities=products["probabilities"])
    accumulations = products_to_dataset(products.drop_vars(["pm_mean", "probabilities", "threshold"]))
    names = [PRODUCT_VARIABLES["accumulation_probabilities"], PRODUCT_VARIABLES["accumulation_quantiles"]]
    with xr.open_dataset(path) as ds:
        both = ds.load().assign({name: accumulations[name].drop_vars("forecast_reference_time", errors="ignore")
                                 for name in names})
    both.to_netcdf(tmp_path / "both.nc")
    with xr.open_dataset(tmp_path / "both.nc") as ds:
        assert set(names) <= set(ds.data_vars)
    plain, with_accumulations = read_product(path), read_product(tmp_path / "both.nc")
    xr.testing.assert_identical(with_accumulations.forecast, plain.forecast)
    assert with_accumulations.probabilities is not None and plain.probabilities is not None
    xr.testing.assert_identical(with_accumulations.probabilities, plain.probabilities)
    assert plain.accumulation_probabilities is None
    read = with_accumulations.accumulation_probabilities
    assert read is not None and read.dims == ("accumulation_threshold", "y", "x")
    assert list(read["accumulation_threshold"].values) == [1.0, 5.0, 10.0]
    np.testing.assert_array_equal(read.values, products["accumulation_probabilities"].values.astype(np.float32))


def ensemble_product(path: Path, **written: bool) -> tuple[Path, Any]:
    """A product file of a three-member ensemble's products (ensemble_products), with the products ``written`` says
    (by default every one the feed publishes), and those products."""
    import pandas as pd
    import xarray as xr

    from nowcast.feed import write_product
    from nowcast.products import ProductRequest, ensemble_products
    from nowcast.sequence import future_times, like
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    observed = synthetic_sequence(SyntheticRain(ny=16, nx=20, frames=3, no_data_border=2), seed=5)
    forecast = like(observed, observed.values[-1:].repeat(3, axis=0), future_times(observed, 3))
    members = xr.concat([forecast * 0.5, forecast * 4.0, forecast * 12.0], dim="member")
    members.attrs = {**forecast.attrs, "forecast_reference_time": str(pd.Timestamp(observed["time"].values[-1]))}
    products = ensemble_products(members, ProductRequest(("pm_mean", "probabilities", "max_probabilities",
                                                          "accumulation_probabilities")))
    chosen = {name: products[name] for name in ("probabilities", "max_probabilities", "accumulation_probabilities")
              if written.get(name, True)}
    return write_product(path, observed, products["pm_mean"].assign_attrs(products.attrs), **chosen), products


def test_a_product_file_round_trips_the_probabilities_of_the_rain_over_the_period(tmp_path: Path) -> None:
    import numpy as np
    import xarray as xr

    from nowcast.feed import ACCUMULATION_PROBABILITY_NAME, read_product

    path, products = ensemble_product(tmp_path / "p.nc")
    fields = read_product(path)
    made = products["accumulation_probabilities"]
    assert 0.0 < np.nanmean(made.values) < 1.0 and np.isnan(made.values).any()  # some rain, some, no data
    read = fields.accumulation_probabilities
    assert read is not None and read.dims == ("accumulation_threshold", "y", "x")
    assert list(read["accumulation_threshold"].values) == [1.0, 5.0, 10.0]  # mm: the request's defaults
    np.testing.assert_array_equal(read.values, made.values.astype(np.float32))
    assert read.attrs["minimum_members_with_data"] == made.attrs["minimum_members_with_data"] == 2
    assert read.attrs["projection"] == fields.forecast.attrs["projection"]
    with xr.open_dataset(path) as ds:
        assert ds[ACCUMULATION_PROBABILITY_NAME].attrs["cell_methods"] == "time: sum"
        assert ds["accumulation_threshold"].attrs["units"] == "mm"
    # a product of an older writer, without them: read, with none
    older, _ = ensemble_product(tmp_path / "older.nc", accumulation_probabilities=False)
    fields = read_product(older)
    assert fields.accumulation_probabilities is None and fields.max_probabilities is not None


def test_a_product_whose_rain_over_the_period_is_on_other_axes_is_refused(tmp_path: Path) -> None:
    import xarray as xr

    from nowcast.feed import ACCUMULATION_PROBABILITY_NAME, read_product

    path, _ = ensemble_product(tmp_path / "p.nc")
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    ds[ACCUMULATION_PROBABILITY_NAME] = ds["probability_of_lwe_precipitation_rate_above_threshold"]  # time, mm/h
    ds.to_netcdf(tmp_path / "bad.nc")
    with pytest.raises(UnreadableFileError, match=f"{ACCUMULATION_PROBABILITY_NAME} is on threshold, time, y, x, "
                                                  "not accumulation_threshold, y and x"):
        read_product(tmp_path / "bad.nc")
