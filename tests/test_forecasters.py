"""The one registry table and the one preparation step that the CLI, evaluate and the service share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nowcast import forecasters
from nowcast.errors import InputError, SequenceError, UnknownNameError
from nowcast.forecasters import ForecasterName, get_forecaster, resolve
from nowcast.forecasters.extrapolation import Extrapolation
from nowcast.paths import models_dir
from nowcast.sequence import make_sequence
from nowcast.synthetic import SyntheticRain, synthetic_sequence


def test_names_resolve_in_one_table() -> None:
    assert resolve("persistence") == ForecasterName("persistence")
    latest = resolve("default-gan")
    assert latest.trained and latest.version == "v6" and latest.label == "default-gan@v6"
    assert resolve("default-gan@v6") == resolve("default-gan", "v6") == latest
    assert isinstance(get_forecaster("extrapolation", n_input_frames=3), Extrapolation)
    assert forecasters.builtin_names() == ["extrapolation", "persistence", "sprog", "steps"]
    assert set(forecasters.available()) >= {"persistence", "extrapolation", "default-gan", "lp-only"}


@pytest.mark.parametrize(
    ("name", "version", "error", "words"),
    [
        ("nope", None, UnknownNameError, "valid names are: extrapolation, persistence, sprog, steps, default-gan"),
        ("../models/default-gan", None, UnknownNameError, "unknown forecaster '../models/default-gan'"),
        ("default-gan@v99", None, UnknownNameError, "has no version 'v99'; versions: v6"),
        ("persistence@v1", None, InputError, "built-in method and has no versions"),
        ("default-gan@v6", "v5", InputError, "names version 'v6' but version 'v5' was asked"),
    ],
)
def test_bad_names_are_refused_with_the_valid_ones(name: str, version: str | None, error: type, words: str) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(").replace(".", r"\.")):
        resolve(name, version, models_dir=models_dir())


def test_preparation_checks_once_what_every_caller_needs() -> None:
    forecaster = get_forecaster("extrapolation")
    past = synthetic_sequence(SyntheticRain(ny=24, nx=24, frames=5), seed=2)
    prepared = forecaster.prepare(past, 3)
    assert prepared.past.shape == (4, 24, 24) and prepared.past.dtype == np.float32
    np.testing.assert_array_equal(prepared.past, past.values[-4:])
    last = pd.Timestamp(past["time"].values[-1])
    assert list(prepared.valid_times) == [last + pd.Timedelta(minutes=5 * k) for k in (1, 2, 3)]
    for kwargs, field in [
        ({"steps": 0}, "steps"),
        ({"steps": 2, "members": 3}, "members"),
    ]:
        with pytest.raises(SequenceError) as refused:
            forecaster.prepare(past, **kwargs)
        assert refused.value.field == field
    with pytest.raises(SequenceError, match="needs at least 4 past frames; got 2") as refused:
        forecaster.prepare(past.isel(time=slice(0, 2)), 3)
    assert refused.value.field == "frames"
    hot = past.copy(data=np.where(np.isfinite(past.values), 2000.0, np.nan).astype(np.float32))
    with pytest.raises(SequenceError, match="physical bound") as refused:
        forecaster.prepare(hot, 3)
    assert refused.value.field == "frames"
    assert forecaster.prepare(hot, 3, max_rate_mmh=5000.0).past.max() == 2000.0


def test_a_single_frame_forecasts_when_its_time_step_is_known() -> None:
    persistence = get_forecaster("persistence")
    one = make_sequence(np.ones((1, 4, 5), np.float32), ["2024-06-01 12:00"])
    with pytest.raises(SequenceError, match="single frame has no time step") as refused:
        persistence.forecast(one, 2)
    assert refused.value.field == "time_step_minutes"
    one.attrs["time_step_minutes"] = 10.0
    forecast = persistence.forecast(one, 2)
    assert list(pd.DatetimeIndex(forecast["time"].values)) == [pd.Timestamp("2024-06-01 12:10"),
                                                               pd.Timestamp("2024-06-01 12:20")]
    np.testing.assert_array_equal(forecast.values, np.ones((2, 4, 5)))
