"""The in-memory sequence form: building, checking, times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from nowcast.errors import InputError, SequenceError
from nowcast.sequence import (
    DIMS,
    UNITS,
    VARIABLE_NAME,
    future_times,
    like,
    make_sequence,
    time_step,
    validate_sequence,
)


def frames(n: int = 3, ny: int = 4, nx: int = 5, value: float = 1.0) -> np.ndarray:
    return np.full((n, ny, nx), value, dtype=np.float32)


def times(n: int = 3, step: str = "5min") -> pd.DatetimeIndex:
    return pd.date_range("2024-06-01 12:00", periods=n, freq=step)


def test_make_sequence_builds_the_product_form():
    x = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    y = np.array([400.0, 300.0, 200.0, 100.0])
    sequence = make_sequence(
        frames(),
        times(),
        x=x,
        y=y,
        projection="+proj=utm +zone=32",
        xpixelsize=10,
        ypixelsize=100,
        attrs={"institution": "here", "units": "furlongs"},
    )
    assert sequence.name == VARIABLE_NAME
    assert sequence.dims == DIMS
    assert sequence.dtype == np.float32
    assert sequence.attrs["units"] == UNITS  # never overridden by attrs
    assert sequence.attrs["projection"] == "+proj=utm +zone=32"
    assert sequence.attrs["xpixelsize"] == 10.0 and sequence.attrs["ypixelsize"] == 100.0
    assert sequence.attrs["institution"] == "here"
    np.testing.assert_array_equal(sequence["y"].values, y)
    assert sequence["time"].dtype == np.dtype("datetime64[ns]")


def test_default_grid_is_numbered_from_cell_centres():
    sequence = make_sequence(frames(ny=2, nx=3), times(), xpixelsize=500.0, ypixelsize=1000.0)
    np.testing.assert_array_equal(sequence["x"].values, [250.0, 750.0, 1250.0])
    np.testing.assert_array_equal(sequence["y"].values, [500.0, 1500.0])


def test_a_single_field_becomes_one_frame():
    sequence = make_sequence(np.ones((4, 5)), ["2024-06-01T12:00"])
    assert sequence.shape == (1, 4, 5)


def test_time_zones_become_naive_utc():
    aware = pd.date_range("2024-06-01 14:00", periods=3, freq="5min", tz="Europe/Zurich")
    sequence = make_sequence(frames(), aware)
    assert pd.Timestamp(sequence["time"].values[0]) == pd.Timestamp("2024-06-01 12:00")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": np.ones((2, 2, 2, 2))}, "must be 3-D"),
        ({"times": times(2)}, "2 timestamps for 3 frames"),
        ({"x": np.arange(4.0)}, "do not match frames of 4x5"),
        ({"y": np.arange(5.0)}, "do not match frames of 4x5"),
    ],
)
def test_make_sequence_refuses_inconsistent_input(kwargs, message):
    arguments = {"rate": frames(), "times": times(), **kwargs}
    with pytest.raises(SequenceError, match=message):
        make_sequence(arguments.pop("rate"), arguments.pop("times"), **arguments)


def test_sequence_errors_are_input_errors():
    assert issubclass(SequenceError, InputError)


@pytest.mark.parametrize("step", ["1min", "5min", "6min", "10min", "1h"])
def test_time_step_and_future_times(step):
    sequence = make_sequence(frames(4), times(4, step))
    assert time_step(sequence) == pd.Timedelta(step)
    future = future_times(sequence, 3)
    last = pd.Timestamp(sequence["time"].values[-1])
    assert list(future) == [last + pd.Timedelta(step) * k for k in (1, 2, 3)]


@pytest.mark.parametrize(
    ("stamps", "message"),
    [
        (
            ["2024-06-01 12:00", "2024-06-01 12:05", "2024-06-01 12:15"],
            "irregular time steps: found steps of 300s, 600s",
        ),
        (["2024-06-01 12:10", "2024-06-01 12:05", "2024-06-01 12:00"], "strictly increasing"),
        (["2024-06-01 12:00", "2024-06-01 12:00", "2024-06-01 12:05"], "strictly increasing"),
    ],
)
def test_bad_time_steps_are_named(stamps, message):
    sequence = make_sequence(frames(), stamps)
    with pytest.raises(SequenceError, match=message):
        time_step(sequence)
    with pytest.raises(SequenceError, match=message):
        validate_sequence(sequence)


def test_a_single_frame_has_no_time_step():
    with pytest.raises(SequenceError, match="single frame"):
        time_step(make_sequence(frames(1), times(1)))


def test_validate_accepts_a_good_sequence_with_no_data(small_sequence):
    assert np.isnan(small_sequence.values).any()
    assert validate_sequence(small_sequence, min_frames=16) is small_sequence


def with_values(update) -> xr.DataArray:
    values = frames(3)
    update(values)
    return make_sequence(values, times())


@pytest.mark.parametrize(
    ("sequence", "message"),
    [
        (np.ones((3, 4, 5)), "expected an xarray.DataArray"),
        (make_sequence(frames(), times()).transpose("time", "x", "y"), "dims must be"),
        (make_sequence(frames(), times()).assign_attrs(units="mm"), "units must be 'mm/h'"),
        (make_sequence(frames(n=3, ny=1, nx=5), times()), "grid too small: 1x5"),
        (with_values(lambda v: v.__setitem__((1, 0, 0), np.inf)), "infinite"),
        (with_values(lambda v: v.__setitem__(1, np.nan)), r"all-NaN frame\(s\) at 2024-06-01 12:05:00"),
        (with_values(lambda v: v.__setitem__((2, 1, 1), -0.5)), "must not be negative"),
        (
            with_values(lambda v: v.__setitem__((2, 1, 3), 3e38)),
            r"rain rate 3e\+38 mm/h in frame 2 at row 1, column 3 is above the physical bound of 1000 mm/h",
        ),
    ],
)
def test_validate_names_the_problem(sequence, message):
    with pytest.raises(SequenceError, match=message):
        validate_sequence(sequence)


def test_the_rate_bound_is_inclusive_and_can_be_raised():
    at_bound = with_values(lambda v: v.__setitem__((0, 0, 0), 1000.0))
    assert validate_sequence(at_bound) is at_bound
    above = with_values(lambda v: v.__setitem__((0, 0, 0), 1500.0))
    with pytest.raises(SequenceError, match="physical bound"):
        validate_sequence(above)
    assert validate_sequence(above, max_rate_mmh=2000.0) is above


def test_too_few_frames():
    with pytest.raises(SequenceError, match="too few frames: need at least 4, got 3"):
        validate_sequence(make_sequence(frames(), times()), min_frames=4)


def test_like_keeps_grid_and_georeferencing(small_sequence):
    sequence = small_sequence.assign_attrs(projection="+proj=stere +lat_0=90", institution="somewhere")
    new_times = future_times(sequence, 2)
    other = like(sequence, np.zeros((2, *sequence.shape[1:])), new_times)
    np.testing.assert_array_equal(other["x"].values, sequence["x"].values)
    np.testing.assert_array_equal(other["y"].values, sequence["y"].values)
    assert other.attrs["projection"] == "+proj=stere +lat_0=90"
    assert other.attrs["institution"] == "somewhere"
    assert other.attrs["units"] == UNITS
    assert list(pd.DatetimeIndex(other["time"].values)) == list(new_times)
