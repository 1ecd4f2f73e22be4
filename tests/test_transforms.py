"""The dBR normalisation (numpy and torch) and unit conversion to mm/h."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from nowcast.errors import UnitsError
from nowcast.transforms import Normalisation, dbz_to_mmh, to_mmh


@st.composite
def normalisations(draw) -> Normalisation:
    threshold = draw(st.floats(0.01, 1.0))
    dry = draw(st.floats(-40.0, 10 * math.log10(threshold) - 0.5))
    scale = draw(st.floats(1.0, 30.0))
    return Normalisation(threshold_mmh=threshold, dry_dbr=dry, scale_db=scale)


def rate_arrays(dtype, low: float = 0.0, high: float = 500.0, nan: bool = True):
    elements = st.floats(low, high, width=32 if dtype == np.float32 else 64)
    if nan:
        elements = st.one_of(elements, st.just(float("nan")))
    return arrays(dtype, st.tuples(st.integers(1, 4), st.integers(1, 6)), elements=elements)


@settings(max_examples=60, deadline=None)
@given(norm=normalisations(), dtype=st.sampled_from([np.float32, np.float64]), data=st.data())
def test_round_trip_is_exact_above_threshold_and_dry_below(norm, dtype, data):
    rate = data.draw(rate_arrays(dtype))
    z = norm.encode(rate)
    back = norm.decode(z)
    assert z.dtype == dtype and back.dtype == dtype
    nan = np.isnan(rate)
    np.testing.assert_array_equal(np.isnan(z), nan)
    np.testing.assert_array_equal(np.isnan(back), nan)
    wet = ~nan & (rate >= norm.threshold_mmh)
    dry = ~nan & (rate < norm.threshold_mmh)
    np.testing.assert_allclose(back[wet], rate[wet], rtol=1e-5)
    assert (back[dry] == 0).all()
    assert (z[dry] == 0).all()
    assert (z[wet] >= norm.threshold_z - 1e-5).all()


@settings(max_examples=40, deadline=None)
@given(norm=normalisations(), dtype=st.sampled_from([np.float32, np.float64]))
def test_the_threshold_itself_is_rain(norm, dtype):
    at = np.array([norm.threshold_mmh], dtype=dtype)
    below = np.nextafter(at, dtype(0))
    np.testing.assert_allclose(norm.decode(norm.encode(at)), at, rtol=1e-5)
    assert norm.decode(norm.encode(below))[0] == 0.0


@settings(max_examples=40, deadline=None)
@given(norm=normalisations(), data=st.data())
def test_numpy_and_torch_agree(norm, data):
    rate = data.draw(rate_arrays(np.float32))
    z_numpy = norm.encode(rate)
    z_torch = norm.encode(torch.from_numpy(rate.copy()))
    assert isinstance(z_torch, torch.Tensor) and z_torch.dtype == torch.float32
    np.testing.assert_allclose(z_torch.numpy(), z_numpy, rtol=1e-5, atol=1e-6)
    back_torch = norm.decode(z_torch).numpy()
    np.testing.assert_allclose(back_torch, norm.decode(z_numpy), rtol=1e-5, atol=0)


@settings(max_examples=40, deadline=None)
@given(norm=normalisations(), z=arrays(np.float32, (5,), elements=st.floats(-5.0, 5.0, width=32)))
def test_decoding_any_model_output_is_dry_or_at_least_the_threshold(norm, z):
    rate = norm.decode(z)
    assert ((rate == 0) | (rate >= norm.threshold_mmh)).all()
    assert np.isfinite(rate).all()
    torch_rate = norm.decode(torch.from_numpy(z.copy())).numpy()
    assert ((torch_rate == 0) | (torch_rate >= norm.threshold_mmh)).all()


def test_known_values_of_the_default_normalisation():
    norm = Normalisation()
    z = norm.encode(np.array([0.0, 0.05, 0.1, 1.0, 10.0, np.nan]))
    np.testing.assert_allclose(z, [0.0, 0.0, 1 / 3, 1.0, 5 / 3, np.nan], rtol=1e-12)
    assert norm.threshold_z == pytest.approx(1 / 3)
    assert norm.to_dict() == {"threshold_mmh": 0.1, "dry_dbr": -15.0, "scale_db": 15.0}
    assert Normalisation.from_dict(norm.to_dict()) == norm


def test_integer_input_is_encoded_as_float32():
    assert Normalisation().encode(np.array([0, 1, 10])).dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold_mmh": 0.0}, "threshold_mmh must be positive"),
        ({"scale_db": -1.0}, "scale_db must be positive"),
        ({"dry_dbr": -5.0}, "dry_dbr must lie below"),
    ],
)
def test_bad_normalisations_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Normalisation(**kwargs)


def test_unknown_normalisation_keys_are_refused():
    with pytest.raises(ValueError, match="unknown normalisation keys"):
        Normalisation.from_dict({"threshold_mmh": 0.1, "offset": 3})


# --- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("units", "factor"),
    [
        ("mm/h", 1.0),
        ("mm h-1", 1.0),
        ("mm hr-1", 1.0),
        ("kg m-2 h-1", 1.0),
        ("MM/H", 1.0),
        ("mm s-1", 3600.0),
        ("kg m-2 s-1", 3600.0),
        ("kg m**-2 s**-1", 3600.0),
        ("m s-1", 3.6e6),
    ],
)
def test_rates_convert_to_mm_per_hour(units, factor):
    values = np.array([0.0, 1e-4, 2.5, np.nan])
    np.testing.assert_allclose(to_mmh(values, units), values * factor, rtol=1e-6)


@pytest.mark.parametrize(("minutes", "factor"), [(5, 12.0), (6, 10.0), (10, 6.0), (60, 1.0)])
def test_accumulations_convert_with_their_period(minutes, factor):
    values = np.array([0.0, 0.2, 1.5, np.nan])
    np.testing.assert_allclose(to_mmh(values, "mm", accumulation_minutes=minutes), values * factor, rtol=1e-6)
    np.testing.assert_allclose(
        to_mmh(values, "kg m-2", accumulation_minutes=minutes), values * factor, rtol=1e-6
    )


def test_reflectivity_converts_with_marshall_palmer():
    dbz = np.array([10 * math.log10(200.0), 40.0, np.nan])
    expected = [1.0, (1e4 / 200.0) ** (1 / 1.6), np.nan]
    np.testing.assert_allclose(to_mmh(dbz, "dBZ"), expected, rtol=1e-6)
    np.testing.assert_allclose(dbz_to_mmh(dbz), expected, rtol=1e-6)
    np.testing.assert_allclose(
        dbz_to_mmh(np.array([40.0]), a=223.0, b=1.53), [(1e4 / 223) ** (1 / 1.53)], rtol=1e-6
    )


def test_unknown_units_are_refused_by_name():
    with pytest.raises(UnitsError, match="unknown units 'inches'"):
        to_mmh(np.ones(3), "inches")


@pytest.mark.parametrize("minutes", [None, 0, -5])
def test_accumulation_without_a_period_is_refused(minutes):
    with pytest.raises(UnitsError, match="accumulation period"):
        to_mmh(np.ones(3), "mm", accumulation_minutes=minutes)
