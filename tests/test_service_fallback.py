"""The fallback of POST /v1/nowcasts: a model that fails or hangs is answered for by the extrapolation, marked
as such; bad input never falls back, and where the extrapolation cannot answer the model's own outcome stands."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from fastapi.testclient import TestClient

from nowcast import forecasters
from nowcast.forecasters import Forecaster, get_forecaster
from nowcast.io.netcdf import read_netcdf_bytes
from nowcast.synthetic import SyntheticRain, synthetic_sequence
from service import create_app
from service.core.config import Settings

pytestmark = pytest.mark.service

NETCDF = "application/x-netcdf"


class FailingModel(Forecaster):
    """Loads and warms up fine, then fails on every forecast (a GPU out of memory, a broken kernel)."""

    name = "test-failing"
    n_input_frames = 2

    def warmup(self, ny: int = 128, nx: int = 128) -> None:
        pass

    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None, seed: int | None = None,
                spacing: Any = None) -> np.ndarray:
        raise RuntimeError("fake device failure")


class FailingEnsemble(FailingModel):
    name = "test-failing-ensemble"
    supports_members = True


class HangingModel(Forecaster):
    """Hangs in its forecast until the test opens the gate, then answers persistence of the last frame."""

    name = "test-hanging"
    n_input_frames = 2
    supports_members = False
    gate: ClassVar[threading.Event] = threading.Event()
    calls: ClassVar[int] = 0

    def warmup(self, ny: int = 128, nx: int = 128) -> None:
        pass

    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None, seed: int | None = None,
                spacing: Any = None) -> np.ndarray:
        HangingModel.calls += 1
        HangingModel.gate.wait(60)  # bounded, so that a failing test cannot hang the suite
        frames = np.repeat(past[:, -1:], steps, axis=1)
        return frames if members is None else np.repeat(frames[:, None], members, axis=1)


class HangingEnsemble(HangingModel):
    name = "test-hanging-ensemble"
    supports_members = True

    @property
    def batch_invariant(self) -> bool:
        return True


@pytest.fixture()
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[HangingModel]]:
    for fake in (FailingModel, FailingEnsemble, HangingModel, HangingEnsemble):
        monkeypatch.setitem(forecasters.METHODS, fake.name, fake)
    HangingModel.gate = threading.Event()
    HangingModel.calls = 0
    yield HangingModel
    HangingModel.gate.set()  # whatever happened, no thread stays stuck after the test


@contextmanager
def running(**overrides: Any) -> Iterator[TestClient]:
    base: dict[str, Any] = {"model": "persistence", "warmup_grid": 16, "batch_window_ms": 5.0}
    app = create_app(Settings(_env_file=None, **{**base, **overrides}))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def sequence(frames: int = 4, seed: int = 1) -> xr.DataArray:
    return synthetic_sequence(SyntheticRain(ny=24, nx=28, frames=frames, no_data_border=1), seed=seed)


def json_body(seq: xr.DataArray, steps: int = 3, **extra: Any) -> dict[str, Any]:
    objects = seq.values.astype(object)
    objects[np.isnan(seq.values)] = None
    stamps = [pd.Timestamp(t).isoformat() + "Z" for t in seq["time"].values]
    return {"frames": objects.tolist(), "timestamps": stamps, "steps": steps, **extra}


def frames_of(payload: dict[str, Any]) -> np.ndarray:
    return np.array(payload["frames"], dtype=np.float64).astype(np.float32)


def fallbacks(client: TestClient, reason: str) -> float:
    wanted = f'nowcast_fallbacks_total{{reason="{reason}"}} '
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith(wanted))
    return float(line.split()[-1])


def timed(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    started = time.monotonic()
    return call(*args, **kwargs), time.monotonic() - started


def inference_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("nowcast-inference")]


# --- a model that fails ---------------------------------------------------------------------------------


def test_a_failing_model_is_answered_for_by_the_extrapolation_marked_as_such(fakes: type[HangingModel]) -> None:
    seq = sequence()
    with running(model="test-failing") as client:
        answer = client.post("/v1/nowcasts", json=json_body(seq), headers={"X-Request-ID": "fall-1"})
        as_netcdf = client.post("/v1/nowcasts", json=json_body(seq), headers={"Accept": NETCDF})
        count = fallbacks(client, "model_error")
        assert fallbacks(client, "deadline") == 0
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-nowcast-fallback"] == "model_error"
    assert answer.headers["x-nowcast-model"] == "extrapolation"
    payload = answer.json()
    assert payload["fallback"] is True and payload["fallback_reason"] == "model_error"
    assert payload["fallback_from"] == "test-failing"
    assert payload["model"] == {"name": "extrapolation", "version": None}
    expected = get_forecaster("extrapolation").forecast(seq, 3)
    np.testing.assert_array_equal(frames_of(payload), expected.values)
    assert as_netcdf.status_code == 200 and as_netcdf.headers["x-nowcast-fallback"] == "model_error"
    forecast = read_netcdf_bytes(as_netcdf.content, name="answer")
    np.testing.assert_array_equal(forecast.values, expected.values)
    import netCDF4

    with netCDF4.Dataset("answer.nc", memory=as_netcdf.content) as ds:
        assert int(ds.getncattr("fallback")) == 1
        assert ds.getncattr("fallback_reason") == "model_error"
        assert ds.getncattr("fallback_from") == "test-failing"
        assert ds.getncattr("nowcast_model") == "extrapolation"
    assert count == 2


def test_a_model_that_answers_says_it_is_no_fallback(fakes: type[HangingModel]) -> None:
    import netCDF4

    with running(model="persistence") as client:
        answer = client.post("/v1/nowcasts", json=json_body(sequence()))
        as_netcdf = client.post("/v1/nowcasts", json=json_body(sequence()), headers={"Accept": NETCDF})
    assert answer.status_code == 200 and "x-nowcast-fallback" not in answer.headers
    payload = answer.json()
    assert payload["fallback"] is False and payload["fallback_reason"] is None and payload["fallback_from"] is None
    with netCDF4.Dataset("answer.nc", memory=as_netcdf.content) as ds:
        assert int(ds.getncattr("fallback")) == 0 and ds.getncattr("fallback_reason") == ""


def test_bad_input_never_falls_back(fakes: type[HangingModel]) -> None:
    seq = sequence()
    negative = seq.copy(data=np.where(np.isfinite(seq.values), -1.0, np.nan).astype(np.float32))
    with running(model="test-failing", max_steps=6) as client:
        answers = [
            client.post("/v1/nowcasts", json=json_body(negative)),
            client.post("/v1/nowcasts", json=json_body(seq, steps=7)),
            client.post("/v1/nowcasts", json=json_body(sequence(frames=1), time_step_minutes=5)),
            client.post("/v1/nowcasts", json={**json_body(seq), "units": "furlongs"}),
        ]
        assert fallbacks(client, "model_error") == fallbacks(client, "deadline") == 0
    assert [a.status_code for a in answers] == [422] * 4
    assert all("x-nowcast-fallback" not in a.headers for a in answers)


def test_where_the_extrapolation_cannot_answer_the_model_error_stands(fakes: type[HangingModel]) -> None:
    with running(model="test-failing-ensemble") as client:
        members = client.post("/v1/nowcasts", json=json_body(sequence(), members=3))
        too_few = client.post("/v1/nowcasts", json=json_body(sequence(frames=2)))  # extrapolation uses 4
        assert fallbacks(client, "model_error") == 0
        assert client.get("/readyz").status_code == 200
    for answer in (members, too_few):
        assert answer.status_code == 500 and "x-nowcast-fallback" not in answer.headers
        assert "fake device failure" not in answer.text


def test_with_the_fallback_off_a_failing_model_is_an_error(fakes: type[HangingModel]) -> None:
    with running(model="test-failing", fallback=False) as client:
        answer = client.post("/v1/nowcasts", json=json_body(sequence()))
        assert fallbacks(client, "model_error") == 0
    assert answer.status_code == 500


# --- a model that hangs ---------------------------------------------------------------------------------


def test_a_hanging_model_is_answered_for_after_the_deadline_and_the_service_keeps_answering(
    fakes: type[HangingModel],
) -> None:
    seq = sequence()
    expected = get_forecaster("extrapolation").forecast(seq, 3).values
    deadline_s = 1.5
    with running(model="test-hanging", model_deadline_s=deadline_s, request_timeout_s=30) as client:
        started = time.monotonic()
        first = client.post("/v1/nowcasts", json=json_body(seq))
        first_s = time.monotonic() - started
        # the model holds its one inference thread now: later requests do not wait their deadline out behind it
        with ThreadPoolExecutor(4) as pool:
            later = list(pool.map(lambda s: timed(client.post, "/v1/nowcasts", json=json_body(sequence(seed=s))),
                                  range(4)))
        stuck = inference_threads()
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/models").status_code == 200
        assert fallbacks(client, "deadline") == 5
        calls_while_hung = fakes.calls
        fakes.gate.set()  # the model comes back
        deadline = time.monotonic() + 10
        while client.app.state.batcher.stalled_for(deadline_s) and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        recovered = client.post("/v1/nowcasts", json=json_body(seq))
    assert first.status_code == 200, first.text
    assert first.headers["x-nowcast-fallback"] == "deadline"
    assert first.json()["fallback_reason"] == "deadline" and first.json()["fallback_from"] == "test-hanging"
    np.testing.assert_array_equal(frames_of(first.json()), expected)
    assert deadline_s <= first_s < 20
    assert all(a.status_code == 200 and a.headers["x-nowcast-fallback"] == "deadline" for a, _ in later)
    assert max(seconds for _, seconds in later) < deadline_s  # at once, not after a deadline each
    assert len(stuck) == 1  # one stuck thread: NOWCAST_INFERENCE_THREADS bounds them
    assert calls_while_hung == 1  # the requests that gave up left the queue; none reached the hung model
    assert recovered.status_code == 200 and "x-nowcast-fallback" not in recovered.headers
    np.testing.assert_array_equal(frames_of(recovered.json()), np.repeat(seq.values[-1:], 3, axis=0))


def test_a_slow_model_within_its_deadline_answers_itself(fakes: type[HangingModel]) -> None:
    fakes.gate.set()
    with running(model="test-hanging", model_deadline_s=5) as client:
        answer = client.post("/v1/nowcasts", json=json_body(sequence()))
    assert answer.status_code == 200 and answer.json()["fallback"] is False


def test_where_the_extrapolation_cannot_answer_a_hanging_model_gets_the_request_timeout(
    fakes: type[HangingModel],
) -> None:
    with running(model="test-hanging-ensemble", model_deadline_s=0.2, request_timeout_s=1.0) as client:
        answer = client.post("/v1/nowcasts", json=json_body(sequence(), members=2))
        assert fallbacks(client, "deadline") == 0
        fakes.gate.set()  # before the shutdown, which waits for the model call in progress
    assert answer.status_code == 503 and "request timeout of 1 s" in answer.json()["detail"]


def test_a_request_timeout_before_the_deadline_is_503_not_a_fallback(fakes: type[HangingModel]) -> None:
    with running(model="test-hanging", model_deadline_s=30, request_timeout_s=0.3) as client:
        answer = client.post("/v1/nowcasts", json=json_body(sequence()))
        assert fallbacks(client, "deadline") == fallbacks(client, "model_error") == 0
        fakes.gate.set()
    assert answer.status_code == 503 and "x-nowcast-fallback" not in answer.headers
