"""pySTEPS' S-PROG and STEPS as forecasters: what they promise, on small synthetic grids."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from nowcast import forecasters
from nowcast.ensemble import probability_matched_mean
from nowcast.forecasters import cascade, get_forecaster
from nowcast.forecasters.steps import DEFAULT_MEMBERS
from nowcast.quiet import quiet_stdout
from nowcast.synthetic import SyntheticRain, synthetic_sequence

BORDER = 3


@pytest.fixture(scope="module")
def past():
    return synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=4, no_data_border=BORDER), seed=3)


def test_both_are_in_the_registry_and_use_three_frames() -> None:
    assert {"sprog", "steps"} <= set(forecasters.builtin_names())
    assert get_forecaster("sprog").n_input_frames == get_forecaster("steps").n_input_frames == 3
    assert get_forecaster("steps").supports_members and get_forecaster("steps").batch_invariant
    assert not get_forecaster("sprog").supports_members


@pytest.mark.parametrize(("name", "members"), [("sprog", None), ("steps", None), ("steps", 4)])
def test_forecasts_are_rain_rates_with_the_last_frames_no_data(past, name: str, members: int | None) -> None:
    forecast = get_forecaster(name).forecast(past, 3, members=members, seed=1)
    expected_shape = (3, 64, 64) if members is None else (members, 3, 64, 64)
    assert forecast.shape == expected_shape and forecast.dtype == np.float32
    values = forecast.values
    assert np.nanmin(values) >= 0.0 and np.nanmax(values) > 1.0
    no_data = ~np.isfinite(past.values[-1])
    assert no_data.sum() > 0
    assert np.isnan(values[..., no_data]).all()
    assert np.isfinite(values[..., BORDER + 10:-BORDER - 10, BORDER + 10:-BORDER - 10]).all()


def test_steps_members_depend_on_the_seed_only(past) -> None:
    steps = get_forecaster("steps")
    first = steps.forecast(past, 3, members=4, seed=1).values
    again = steps.forecast(past, 3, members=4, seed=1).values
    other = steps.forecast(past, 3, members=4, seed=2).values
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other, equal_nan=True)
    last = first[:, -1]
    spread = last[:, np.isfinite(last).all(axis=0)].std(axis=0)
    assert spread.mean() > 0.01


def test_steps_is_batch_invariant_and_leaves_numpy_alone(past) -> None:
    steps = get_forecaster("steps")
    other = synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=4, no_data_border=BORDER), seed=8)
    batch = np.stack([past.values[-3:], other.values[-3:]]).astype(np.float32)
    state = np.random.get_state()
    together = steps.predict(batch, 2, members=3, seed=5)
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    for i in range(2):
        alone = steps.predict(batch[i:i + 1], 2, members=3, seed=5)[0]
        np.testing.assert_array_equal(together[i], alone)


def test_steps_without_members_is_the_probability_matched_mean(past) -> None:
    steps = get_forecaster("steps")
    sequence = past.values[-3:][np.newaxis].astype(np.float32)
    members = steps.predict(sequence, 2, members=DEFAULT_MEMBERS, seed=4)[0]
    one = steps.predict(sequence, 2, seed=4)[0]
    np.testing.assert_array_equal(one, probability_matched_mean(members))


def test_steps_gets_the_frames_spacing(past, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    real = cascade.run_nowcast

    def spy(method, *args, **options):
        seen.update(options)
        return real(method, *args, **options)

    monkeypatch.setattr(cascade, "run_nowcast", spy)
    steps = get_forecaster("steps")
    prepared = steps.prepare(past, 2, members=2, seed=1)
    steps.predict(prepared.past[np.newaxis], 2, members=2, seed=1, spacing=prepared.spacing)
    assert seen["kmperpixel"] == pytest.approx(prepared.spacing.pixel_km)
    assert seen["timestep"] == pytest.approx(prepared.spacing.step_minutes) == 5.0
    assert (seen["noise_method"], seen["vel_pert_method"], seen["n_ens_members"]) == ("nonparametric", "bps", 2)
    steps.predict(prepared.past[np.newaxis], 1, members=1, seed=1)
    assert (seen["kmperpixel"], seen["timestep"]) == (1.0, 5.0)


def small_scale_power(field: np.ndarray) -> float:
    """Share of the field's power at wavelengths under 8 pixels."""
    power = np.abs(np.fft.fft2(field - field.mean())) ** 2
    ky, kx = np.meshgrid(np.fft.fftfreq(field.shape[0]), np.fft.fftfreq(field.shape[1]), indexing="ij")
    return float(power[np.hypot(ky, kx) > 1 / 8].sum() / power.sum())


def test_sprog_is_smoother_than_extrapolation(past) -> None:
    inner = (slice(None), slice(BORDER + 12, -BORDER - 12), slice(BORDER + 12, -BORDER - 12))
    sprog = get_forecaster("sprog").forecast(past, 6).values[inner][-1]
    advected = get_forecaster("extrapolation", n_input_frames=3).forecast(past, 6).values[inner][-1]
    assert small_scale_power(np.nan_to_num(sprog)) < 0.8 * small_scale_power(np.nan_to_num(advected))


def test_pysteps_prints_nothing(past, capfd: pytest.CaptureFixture[str]) -> None:
    get_forecaster("sprog").forecast(past, 1)
    get_forecaster("steps").forecast(past, 1, members=2, seed=1)
    assert capfd.readouterr().out == ""


def test_quiet_stdout_silences_only_its_own_thread(capsys: pytest.CaptureFixture[str]) -> None:
    inside, outside = threading.Event(), threading.Event()

    def quiet() -> None:
        with quiet_stdout() as printed:
            print("from the quiet thread")
            inside.set()
            outside.wait(5)
        assert printed.getvalue() == "from the quiet thread\n"

    thread = threading.Thread(target=quiet)
    real = sys.stdout
    thread.start()
    inside.wait(5)
    print("from the main thread")
    outside.set()
    thread.join(5)
    assert sys.stdout is real
    assert capsys.readouterr().out == "from the main thread\n"
