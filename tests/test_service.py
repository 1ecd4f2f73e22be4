"""The forecast service, in process: the ASGI app driven through Starlette's TestClient.

Forecasts are checked against direct library calls (``Forecaster.forecast``), which is
what ``nowcast forecast`` runs. The models are ``persistence`` and small fakes
registered here, so the tests do not depend on a trained GAN.
"""

from __future__ import annotations

import base64
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from fastapi.testclient import TestClient

from nowcast import artifacts, forecasters
from nowcast.forecasters import Forecaster, get_forecaster
from nowcast.io.netcdf import read_netcdf_bytes, to_netcdf_bytes
from nowcast.synthetic import SyntheticRain, synthetic_sequence
from nowcast.transforms import to_mmh
from service import create_app
from service.core.config import Settings

pytestmark = pytest.mark.service

NETCDF = "application/x-netcdf"


# --- fakes and helpers -----------------------------------------------------------------------------------


class FakeBatched(Forecaster):
    """A deterministic forecaster that uses two past frames and records its batch sizes.

    Each output depends on its own sequence only (so batching must not change it), and on both
    frames it is given (so a wrong frame selection shows).
    """

    name = "test-batched"
    n_input_frames = 2
    batch_sizes: ClassVar[list[int]] = []

    def __init__(self, delay_s: float = 0.0, gain: float = 0.1) -> None:
        self.delay_s = delay_s
        self.gain = gain

    def predict(
        self, past: np.ndarray, steps: int, *, members: int | None = None, seed: int | None = None,
        spacing: Any = None,
    ) -> np.ndarray:
        assert past.shape[1] == self.n_input_frames, past.shape
        FakeBatched.batch_sizes.append(past.shape[0])
        if self.delay_s:
            time.sleep(self.delay_s)
        if np.any(past == 999.0):
            raise RuntimeError("the fake model fails on 999 (internal error test)")
        last, before = past[:, -1], past[:, -2]
        growth = 1.0 + self.gain * np.arange(1, steps + 1, dtype=np.float32)[None, :, None, None]
        level = np.nanmean(before, axis=(1, 2))[:, None, None, None]
        return (last[:, None] * growth + 0.01 * level).astype(np.float32)


@pytest.fixture()
def fake_models(monkeypatch: pytest.MonkeyPatch) -> type[FakeBatched]:
    """Register the fakes in the forecaster registry for this test only."""
    FakeBatched.batch_sizes = []
    monkeypatch.setitem(forecasters.METHODS, "test-batched", lambda **kw: FakeBatched(**kw))
    monkeypatch.setitem(forecasters.METHODS, "test-slow", lambda: FakeBatched(delay_s=0.15))
    monkeypatch.setitem(forecasters.METHODS, "test-slow-other", lambda: FakeBatched(delay_s=0.05, gain=0.5))
    return FakeBatched


def settings(**overrides: Any) -> Settings:
    """Settings for tests: a tiny warm-up grid, no environment leaking in."""
    base: dict[str, Any] = {"model": "persistence", "warmup_grid": 16, "batch_window_ms": 5.0}
    base.update(overrides)
    return Settings(_env_file=None, **base)


@contextmanager
def running(**overrides: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings(**overrides)), raise_server_exceptions=False) as client:
        yield client


def sequence(ny: int = 12, nx: int = 14, frames: int = 4, seed: int = 1, border: int = 1) -> xr.DataArray:
    return synthetic_sequence(SyntheticRain(ny=ny, nx=nx, frames=frames, no_data_border=border), seed=seed)


def nested(values: np.ndarray) -> list[Any]:
    objects = values.astype(object)
    objects[np.isnan(values)] = None
    return objects.tolist()


def from_nested(frames: list[Any]) -> np.ndarray:
    return np.array(frames, dtype=np.float64).astype(np.float32)


def json_body(seq: xr.DataArray, steps: int = 3, **extra: Any) -> dict[str, Any]:
    stamps = [pd.Timestamp(t).isoformat() + "Z" for t in seq["time"].values]
    return {"frames": nested(seq.values), "timestamps": stamps, "steps": steps, **extra}


def base64_frames(values: np.ndarray) -> dict[str, Any]:
    data = np.ascontiguousarray(values, dtype="<f4")
    return {
        "encoding": "base64",
        "shape": list(data.shape),
        "data": base64.b64encode(data.tobytes()).decode(),
    }


def decode_frames(payload: dict[str, Any]) -> np.ndarray:
    frames = payload["frames"]
    if isinstance(frames, dict):
        raw = base64.b64decode(frames["data"])
        return np.frombuffer(raw, dtype="<f4").reshape(frames["shape"])
    return from_nested(frames)


def expected_forecast(name: str, seq: xr.DataArray, steps: int) -> xr.DataArray:
    return get_forecaster(name).forecast(seq, steps)


def assert_same_forecast(payload: dict[str, Any], expected: xr.DataArray) -> None:
    np.testing.assert_array_equal(decode_frames(payload), expected.values)
    valid = pd.DatetimeIndex([t.rstrip("Z") for t in payload["valid_times"]])
    np.testing.assert_array_equal(valid.values, expected["time"].values)
    assert pd.Timestamp(payload["forecast_reference_time"].rstrip("Z")) == pd.Timestamp(
        expected.attrs["forecast_reference_time"]
    )


def metric_value(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus exposition (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def batches_larger_than_one(metrics_text: str) -> float:
    count = metric_value(metrics_text, "nowcast_batch_size_count")
    singles = metric_value(metrics_text, "nowcast_batch_size_bucket", 'le="1.0"')
    return count - singles


# --- round trips -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["persistence", "test-batched"])
def test_json_round_trip_matches_the_library(model: str, fake_models: type[FakeBatched]) -> None:
    seq = sequence()
    with running(model=model) as client:
        answer = client.post("/v1/nowcasts", json=json_body(seq, steps=3))
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert_same_forecast(payload, expected_forecast(model, seq, 3))
    assert payload["model"] == {"name": model, "version": None}
    assert payload["shape"] == [3, 12, 14]
    assert payload["request_id"] == answer.headers["x-request-id"]
    assert set(payload["timings_ms"]) == {"decode_ms", "queue_ms", "inference_ms", "encode_ms", "total_ms"}
    # the no-data border travels as null, not as a number
    assert payload["frames"][0][0][0] is None


def test_base64_round_trip_and_start_time(fake_models: type[FakeBatched]) -> None:
    seq = sequence(ny=9, nx=11)
    body = {
        "frames": base64_frames(seq.values),
        "start_time": "2024-06-01T14:00:00+02:00",
        "time_step_minutes": 5,
        "steps": 2,
    }
    with running(model="test-batched") as client:
        answer = client.post("/v1/nowcasts", json=body)
    assert answer.status_code == 200, answer.text
    payload = answer.json()
    assert payload["frames"]["encoding"] == "base64"
    # the offset is honoured: 14:00+02:00 is 12:00 UTC, the synthetic sequence's own start
    assert_same_forecast(payload, expected_forecast("test-batched", seq, 2))


def test_netcdf_round_trip_matches_the_library() -> None:
    seq = sequence()
    with running() as client:
        answer = client.post(
            "/v1/nowcasts?steps=4",
            content=to_netcdf_bytes(seq),
            headers={"Content-Type": NETCDF, "Accept": NETCDF},
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == NETCDF
    forecast = read_netcdf_bytes(answer.content)
    expected = expected_forecast("persistence", seq, 4)
    np.testing.assert_array_equal(forecast.values, expected.values)
    np.testing.assert_array_equal(forecast["time"].values, expected["time"].values)
    with _open_bytes(answer.content) as ds:
        assert pd.Timestamp(ds["forecast_reference_time"].values) == pd.Timestamp(seq["time"].values[-1])
        assert ds.attrs["nowcast_model"] == "persistence"
        assert ds.attrs["Conventions"] == "CF-1.8"


@contextmanager
def _open_bytes(content: bytes) -> Iterator[xr.Dataset]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "answer.nc"
        path.write_bytes(content)
        with xr.open_dataset(path, engine="netcdf4") as ds:
            yield ds.load()


def test_netcdf_in_json_out_and_json_in_netcdf_out() -> None:
    seq = sequence()
    expected = expected_forecast("persistence", seq, 2)
    with running() as client:
        as_json = client.post(
            "/v1/nowcasts",
            params={"steps": 2},
            content=to_netcdf_bytes(seq),
            headers={"Content-Type": NETCDF},
        )
        as_netcdf = client.post("/v1/nowcasts", json=json_body(seq, steps=2), headers={"Accept": NETCDF})
    assert as_json.status_code == 200, as_json.text
    assert_same_forecast(as_json.json(), expected)
    assert as_netcdf.status_code == 200, as_netcdf.text
    np.testing.assert_array_equal(read_netcdf_bytes(as_netcdf.content).values, expected.values)


@pytest.mark.parametrize("units", ["dBZ", "mm"])
def test_units_are_converted_like_the_library(units: str) -> None:
    seq = sequence()
    rate = np.nan_to_num(seq.values, nan=0.0)
    if units == "dBZ":
        sent = 10 * np.log10(200 * np.maximum(rate, 0.01) ** 1.6)  # Marshall–Palmer
        as_mmh = to_mmh(sent, "dBZ")
    else:
        sent = rate * 5 / 60  # mm in each 5-minute step
        as_mmh = to_mmh(sent, "mm", accumulation_minutes=5)
    expected = expected_forecast("persistence", seq.copy(data=as_mmh), 2)
    body = json_body(seq, steps=2, units=units)
    body["frames"] = nested(sent.astype(np.float32))
    with running() as client:
        answer = client.post("/v1/nowcasts", json=body)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(decode_frames(answer.json()), expected.values, rtol=1e-6)


def test_one_frame_with_a_time_step() -> None:
    seq = sequence(frames=1)
    body = {
        "frames": nested(seq.values),
        "start_time": "2024-06-01T12:00:00Z",
        "time_step_minutes": 10,
        "steps": 2,
    }
    with running() as client:
        answer = client.post("/v1/nowcasts", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["valid_times"] == ["2024-06-01T12:10:00Z", "2024-06-01T12:20:00Z"]


# --- bad input -------------------------------------------------------------------------------------------


def _bad_requests() -> list[tuple[str, dict[str, Any], int, str, str]]:
    seq = sequence()
    good = json_body(seq, steps=2)
    frames = good["frames"]
    negative = json.loads(json.dumps(frames))
    negative[1][3][4] = -0.5
    ragged = json.loads(json.dumps(frames))
    ragged[2] = ragged[2][:-1]
    short_row = json.loads(json.dumps(frames))
    short_row[1][5] = short_row[1][5][:-2]
    all_missing = json.loads(json.dumps(frames))
    all_missing[3] = [[None] * 14 for _ in range(12)]
    irregular = list(good["timestamps"])
    irregular[3] = "2024-06-01T12:20:00Z"
    encoded = base64_frames(seq.values)
    cases: list[tuple[str, dict[str, Any], int, str, str]] = [
        # (id, request kwargs, status, field, words in the message)
        (
            "too few frames for the model",
            {
                "json": {
                    **good,
                    "frames": frames[:1],
                    "timestamps": good["timestamps"][:1],
                    "time_step_minutes": 5,
                }
            },
            422,
            "frames",
            "needs at least 2",
        ),
        ("mismatched frame shapes", {"json": {**good, "frames": ragged}}, 422, "frames[2]", "mismatched"),
        (
            "mismatched row lengths",
            {"json": {**good, "frames": short_row}},
            422,
            "frames[1][5]",
            "mismatched",
        ),
        ("negative rate", {"json": {**good, "frames": negative}}, 422, "frames", "negative rain rate -0.5"),
        ("all-NaN frame", {"json": {**good, "frames": all_missing}}, 422, "frames", "all-NaN"),
        ("irregular timestamps", {"json": {**good, "timestamps": irregular}}, 422, "timestamps", "irregular"),
        (
            "timestamp count",
            {"json": {**good, "timestamps": good["timestamps"][:3]}},
            422,
            "timestamps",
            "3 timestamps for 4 frames",
        ),
        (
            "no times",
            {"json": {k: v for k, v in good.items() if k != "timestamps"}},
            422,
            "timestamps",
            "start_time",
        ),
        ("unknown units", {"json": {**good, "units": "furlongs"}}, 422, "units", "unknown units 'furlongs'"),
        ("steps below one", {"json": {**good, "steps": 0}}, 422, "steps", "greater than or equal to 1"),
        ("steps over the limit", {"json": {**good, "steps": 99}}, 422, "steps", "limit of 36"),
        ("members unsupported", {"json": {**good, "members": 3}}, 422, "members", "not ensemble members"),
        ("unknown field", {"json": {**good, "step": 3}}, 422, "step", "Extra inputs"),
        (
            "bad base64",
            {"json": {**good, "frames": {**encoded, "data": "***"}}},
            422,
            "frames.data",
            "base64",
        ),
        (
            "base64 length",
            {"json": {**good, "frames": {**encoded, "shape": [4, 12, 13]}}},
            422,
            "frames.data",
            "needs 2496",
        ),
        (
            "grid too large",
            {"json": {**good, "frames": {**encoded, "shape": [4, 3000, 3]}}},
            413,
            "frames",
            "larger than this service's limit",
        ),
        (
            "too many frames",
            {"json": {**good, "frames": {**encoded, "shape": [30, 12, 14]}}},
            413,
            "frames",
            "limit of 24",
        ),
        (
            "truncated netCDF",
            {
                "content": to_netcdf_bytes(seq)[:300],
                "params": {"steps": 2},
                "headers": {"Content-Type": NETCDF},
            },
            422,
            "body",
            "not a readable netCDF",
        ),
        (
            "not netCDF at all",
            {"content": b"hello", "params": {"steps": 2}, "headers": {"Content-Type": NETCDF}},
            422,
            "body",
            "not a readable netCDF",
        ),
        (
            "netCDF without rain",
            {"content": b"CDF\x01" + bytes(28), "params": {"steps": 2}, "headers": {"Content-Type": NETCDF}},
            422,
            "body",
            "precipitation variable",
        ),
        (
            "netCDF without steps",
            {"content": to_netcdf_bytes(seq), "headers": {"Content-Type": NETCDF}},
            422,
            "steps",
            "?steps=N",
        ),
        ("query steps with JSON", {"json": good, "params": {"steps": 2}}, 422, "steps", "in the body"),
        (
            "unsupported content type",
            {"content": b"a,b\n1,2", "headers": {"Content-Type": "text/csv"}},
            415,
            "Content-Type",
            "text/csv",
        ),
        ("missing content type", {"content": b"{}"}, 415, "Content-Type", "missing"),
        (
            "unacceptable answer format",
            {"json": good, "headers": {"Accept": "image/png"}},
            406,
            "Accept",
            "image/png",
        ),
        (
            "broken JSON",
            {"content": b'{"frames": [', "headers": {"Content-Type": "application/json"}},
            422,
            "",
            "JSON",
        ),
        (
            "empty body",
            {"content": b"", "headers": {"Content-Type": "application/json"}},
            422,
            "body",
            "empty",
        ),
    ]
    return cases


BAD_REQUESTS = _bad_requests()


def test_bad_input_is_refused_with_the_field_named(fake_models: type[FakeBatched]) -> None:
    seq = sequence()
    with running(model="test-batched") as client:
        for case_id, kwargs, status, field, words in BAD_REQUESTS:
            answer = client.post("/v1/nowcasts", **kwargs)
            assert answer.status_code == status, (case_id, answer.text)
            payload = answer.json()
            assert (payload["field"] or "") == field, (case_id, payload)
            assert words in payload["detail"], (case_id, payload["detail"])
            assert payload["request_id"] == answer.headers["x-request-id"], case_id
        for token, words in [
            ("1e39", "infinite"),  # overflows float32
            ("3e38", "above the physical bound of 1000 mm/h"),
            ("1000.5", "above the physical bound"),
            ("Infinity", "Invalid JSON"),  # not JSON
            ("NaN", "Invalid JSON"),
            ('"1.5"', 'found "1.5"'),  # numbers only, strictly
            ("true", "found true"),
            ("[1.0]", "frames[0]"),
        ]:
            body = json.dumps(json_body(seq)).replace("[[[null", f"[[[{token}", 1)
            answer = client.post("/v1/nowcasts", content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 422, (token, answer.text)
            assert words in answer.json()["detail"], (token, answer.json())
        # no bad request left the service unready or unable to forecast
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/nowcasts", json=json_body(seq)).status_code == 200


def test_body_size_limit() -> None:
    seq = sequence()
    with running(max_body_bytes=2048) as client:
        answer = client.post("/v1/nowcasts", json=json_body(seq))
    assert answer.status_code == 413
    assert answer.json()["field"] == "body"
    assert "limit of 2048 bytes" in answer.json()["detail"]


def test_internal_error_answers_500_with_request_id_and_service_keeps_serving(
    fake_models: type[FakeBatched],
) -> None:
    seq = sequence()
    poisoned = seq.copy(data=np.where(np.isfinite(seq.values), 999.0, np.nan).astype(np.float32))
    # without the fallback, which would answer for the failing model (tests/test_service_fallback.py)
    with running(model="test-batched", fallback=False) as client:
        answer = client.post("/v1/nowcasts", json=json_body(poisoned), headers={"X-Request-ID": "trace-42"})
        assert answer.status_code == 500
        assert answer.json()["request_id"] == "trace-42" == answer.headers["x-request-id"]
        assert "999" not in answer.json()["detail"]  # internals stay in the log
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/nowcasts", json=json_body(seq)).status_code == 200
        text = client.get("/metrics").text
    assert (
        metric_value(text, "nowcast_http_requests_total", 'method="POST",route="/v1/nowcasts",status="500"')
        == 1
    )


def test_a_failing_batch_is_retried_request_by_request(fake_models: type[FakeBatched]) -> None:
    seq = sequence()
    poisoned = seq.copy(data=np.where(np.isfinite(seq.values), 999.0, np.nan).astype(np.float32))
    with (
        running(model="test-slow", batch_window_ms=200, max_batch=4, fallback=False) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        good = pool.submit(client.post, "/v1/nowcasts", json=json_body(seq))
        bad = pool.submit(client.post, "/v1/nowcasts", json=json_body(poisoned))
        assert good.result().status_code == 200
        assert bad.result().status_code == 500
    assert 2 in fake_models.batch_sizes  # they were batched, and only the poisoned one failed


# --- batching, queueing, timeouts ------------------------------------------------------------------------


def test_parallel_requests_are_batched_and_match_sequential_answers(fake_models: type[FakeBatched]) -> None:
    sequences = [sequence(seed=s) for s in range(8)]
    with running(model="test-slow", batch_window_ms=100, max_batch=8) as client:
        sequential = [client.post("/v1/nowcasts", json=json_body(s)).json() for s in sequences]
        assert all(p["batch_size"] == 1 for p in sequential)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda s: client.post("/v1/nowcasts", json=json_body(s)), sequences))
        text = client.get("/metrics").text
    assert all(a.status_code == 200 for a in answers)
    for answer, alone, seq in zip(answers, sequential, sequences, strict=True):
        np.testing.assert_array_equal(decode_frames(answer.json()), decode_frames(alone))
        assert_same_forecast(answer.json(), expected_forecast("test-batched", seq, 3))
    assert max(a.json()["batch_size"] for a in answers) > 1
    assert max(fake_models.batch_sizes) > 1
    assert batches_larger_than_one(text) >= 1


def test_different_shapes_are_not_mixed_in_a_batch(fake_models: type[FakeBatched]) -> None:
    small, large = sequence(ny=8, nx=8), sequence(ny=10, nx=12)
    with running(model="test-slow", batch_window_ms=100) as client, ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(lambda s: client.post("/v1/nowcasts", json=json_body(s)), [small, large, small, large])
        )
    assert [a.json()["shape"] for a in answers] == [[3, 8, 8], [3, 10, 12]] * 2
    assert_same_forecast(answers[1].json(), expected_forecast("test-batched", large, 3))


def test_batching_off_runs_one_request_per_call(fake_models: type[FakeBatched]) -> None:
    with running(model="test-batched", max_batch=1) as client, ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(lambda s: client.post("/v1/nowcasts", json=json_body(sequence(seed=s))), range(6))
        )
    assert all(a.status_code == 200 and a.json()["batch_size"] == 1 for a in answers)
    assert set(fake_models.batch_sizes) == {1}


def test_full_queue_answers_503_with_retry_after(fake_models: type[FakeBatched]) -> None:
    seq = sequence()
    with (
        running(model="test-slow", queue_size=1, max_batch=1, retry_after_s=3) as client,
        ThreadPoolExecutor(6) as pool,
    ):
        answers = list(pool.map(lambda _: client.post("/v1/nowcasts", json=json_body(seq)), range(6)))
        text = client.get("/metrics").text
        assert client.post("/v1/nowcasts", json=json_body(seq)).status_code == 200
    statuses = sorted(a.status_code for a in answers)
    assert 200 in statuses and 503 in statuses, statuses
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["retry-after"] == "3"
    assert "busy" in refused.json()["detail"]
    assert metric_value(text, "nowcast_requests_rejected_total", 'reason="queue_full"') >= 1


def test_request_timeout_answers_503_and_the_service_recovers(fake_models: type[FakeBatched]) -> None:
    seq = sequence()
    with running(model="test-slow", request_timeout_s=0.05) as client:
        answer = client.post("/v1/nowcasts", json=json_body(seq))
        assert answer.status_code == 503
        assert "no forecast within the request timeout of 0.05 s" in answer.json()["detail"]
        assert "retry-after" in answer.headers
        assert client.get("/readyz").status_code == 200


# --- models, switching, auth -----------------------------------------------------------------------------


def test_models_lists_builtins_and_trained_versions_with_cards(tmp_path: Path) -> None:
    for _ in range(2):
        artifacts.write_artifact(
            "tiny-gan",
            config={"model": {}},
            weights_writer=lambda p: p.write_bytes(b"w"),
            card_data={"trained_on": "synthetic"},
            card_markdown="# tiny\n",
            models_dir=tmp_path,
        )
    with running(models_dir=tmp_path) as client:
        payload = client.get("/v1/models").json()
    assert payload["active"]["name"] == "persistence" and payload["active"]["kind"] == "builtin"
    by_name = {m["name"]: m for m in payload["available"]}
    assert {"persistence", "extrapolation", "tiny-gan"} <= set(by_name)
    versions = by_name["tiny-gan"]["versions"]
    assert [v["version"] for v in versions] == ["v1", "v2"]
    assert versions[1]["card"]["trained_on"] == "synthetic" and versions[1]["card"]["version"] == "v2"


def test_default_model_without_a_trained_default_is_extrapolation(tmp_path: Path) -> None:
    with TestClient(create_app(settings(model=None, models_dir=tmp_path))) as client:
        assert client.get("/readyz").json()["model"] == "extrapolation"


def test_model_switch_under_load_fails_no_request(fake_models: type[FakeBatched]) -> None:
    seq = sequence()
    expected = {
        "test-slow": expected_forecast("test-batched", seq, 3).values,
        "test-slow-other": FakeBatched(gain=0.5).forecast(seq, 3).values,
    }
    answers: list[Any] = []
    stop = threading.Event()

    def hammer(client: TestClient) -> None:
        while not stop.is_set():
            answers.append(client.post("/v1/nowcasts", json=json_body(seq), headers={"X-API-Key": "user"}))

    admin = {"X-API-Key": "root"}
    with running(model="test-slow", api_keys=["user"], admin_keys=["root"], batch_window_ms=20) as client:
        threads = [threading.Thread(target=hammer, args=(client,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        switched = []
        for target in ["test-slow-other", "test-slow", "test-slow-other"]:
            time.sleep(0.3)
            switched.append(client.put("/v1/admin/active-model", json={"name": target}, headers=admin))
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
        text = client.get("/metrics").text
        active = client.get("/v1/models", headers=admin).json()["active"]
    assert [s.status_code for s in switched] == [200, 200, 200], [s.text for s in switched]
    assert switched[0].json()["previous"]["name"] == "test-slow"
    assert active["name"] == "test-slow-other"
    assert len(answers) > 8
    assert [a.status_code for a in answers if a.status_code != 200] == []
    served = {a.headers["x-nowcast-model"] for a in answers}
    assert served == {"test-slow", "test-slow-other"}
    for answer in answers:  # each answer comes wholly from the model that claims it
        np.testing.assert_array_equal(
            decode_frames(answer.json()), expected[answer.headers["x-nowcast-model"]]
        )
    assert metric_value(text, "nowcast_model_switches_total") == 3


def test_failed_switches_leave_the_active_model(tmp_path: Path) -> None:
    artifacts.write_artifact(
        "broken",
        config={"model": {"nonsense": 1}},
        weights_writer=lambda p: p.write_bytes(b"x"),
        card_data={},
        card_markdown="",
        models_dir=tmp_path,
    )
    admin = {"X-API-Key": "root"}
    with running(admin_keys=["root"], models_dir=tmp_path) as client:
        unknown = client.put("/v1/admin/active-model", json={"name": "no-such-model"}, headers=admin)
        versioned_builtin = client.put(
            "/v1/admin/active-model", json={"name": "persistence@v3"}, headers=admin
        )
        missing_version = client.put(
            "/v1/admin/active-model", json={"name": "broken", "version": "v9"}, headers=admin
        )
        corrupt = client.put("/v1/admin/active-model", json={"name": "broken"}, headers=admin)
        active = client.get("/v1/models").json()["active"]["name"]
        still_serving = client.post("/v1/nowcasts", json=json_body(sequence()))
    assert unknown.status_code == 404 and "valid names are: " in unknown.json()["detail"]
    assert versioned_builtin.status_code == 422 and versioned_builtin.json()["field"] == "version"
    assert missing_version.status_code == 404 and "versions: v1" in missing_version.json()["detail"]
    assert corrupt.status_code >= 400
    assert active == "persistence"
    assert still_serving.status_code == 200


def test_api_keys_and_admin_keys() -> None:
    seq = sequence()
    with running(api_keys=["k1", "k2"], admin_keys=["root"]) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200
        missing = client.post("/v1/nowcasts", json=json_body(seq))
        assert missing.status_code == 401 and missing.json()["field"] == "X-API-Key"
        assert (
            client.post("/v1/nowcasts", json=json_body(seq), headers={"X-API-Key": "nope"}).status_code == 401
        )
        assert (
            client.post("/v1/nowcasts", json=json_body(seq), headers={"X-API-Key": "k2"}).status_code == 200
        )
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"X-API-Key": "k1"}).status_code == 200
        switch = {"name": "persistence"}
        assert client.put("/v1/admin/active-model", json=switch).status_code == 401
        assert (
            client.put("/v1/admin/active-model", json=switch, headers={"X-API-Key": "k1"}).status_code == 403
        )
        assert (
            client.put("/v1/admin/active-model", json=switch, headers={"X-API-Key": "root"}).status_code
            == 200
        )
        # an admin key is a valid key for the ordinary calls too
        assert client.get("/v1/models", headers={"X-API-Key": "root"}).status_code == 200
    with running() as client:  # no admin keys configured: admin calls are off, even for anyone
        off = client.put("/v1/admin/active-model", json={"name": "persistence"})
        assert off.status_code == 403 and "disabled" in off.json()["detail"]


# --- operations ------------------------------------------------------------------------------------------


def test_not_ready_before_the_model_is_loaded() -> None:
    client = TestClient(create_app(settings()))  # no `with`: the lifespan has not run
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False
    answer = client.post("/v1/nowcasts", json=json_body(sequence()))
    assert answer.status_code == 503


def test_metrics_and_docs() -> None:
    with running() as client:
        client.post("/v1/nowcasts", json=json_body(sequence()))
        client.post("/v1/nowcasts", json={"steps": 1})
        text = client.get("/metrics").text
        docs = client.get("/docs")
        spec = client.get("/openapi.json").json()
    assert (
        metric_value(text, "nowcast_http_requests_total", 'method="POST",route="/v1/nowcasts",status="200"')
        == 1
    )
    assert (
        metric_value(text, "nowcast_http_requests_total", 'method="POST",route="/v1/nowcasts",status="422"')
        == 1
    )
    assert metric_value(text, "nowcast_batch_size_count") == 1
    assert metric_value(text, "nowcast_queue_depth") == 0
    assert metric_value(text, "nowcast_ready") == 1
    assert 'nowcast_device_memory_bytes{device="cpu",kind="resident"}' in text
    assert "nowcast_http_request_duration_seconds_bucket" in text
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    body_types = spec["paths"]["/v1/nowcasts"]["post"]["requestBody"]["content"]
    assert set(body_types) == {"application/json", NETCDF}
    assert "NowcastRequest" in spec["components"]["schemas"]


# --- ensembles and the GAN -------------------------------------------------------------------------------


class FakeEnsemble(Forecaster):
    """Draws members from one random generator for the whole batch, as a GAN with noise does."""

    name = "test-ensemble"
    n_input_frames = 1
    supports_members = True
    batch_sizes: ClassVar[list[int]] = []

    def predict(
        self, past: np.ndarray, steps: int, *, members: int | None = None, seed: int | None = None,
        spacing: Any = None,
    ) -> np.ndarray:
        FakeEnsemble.batch_sizes.append(past.shape[0])
        time.sleep(0.05)
        rng = np.random.default_rng(0 if seed is None else seed)
        draws = members or 1
        noise = rng.uniform(0.5, 1.5, size=(past.shape[0], draws, steps, 1, 1)).astype(np.float32)
        out = past[:, None, -1:] * noise
        return out if members is not None else out[:, 0]


def test_models_that_draw_noise_run_each_request_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeEnsemble.batch_sizes = []
    monkeypatch.setitem(forecasters.METHODS, "test-ensemble", FakeEnsemble)
    seq = sequence()
    body = json_body(seq, steps=2, members=3, seed=7)
    with running(model="test-ensemble", batch_window_ms=100) as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/nowcasts", json=body), range(4)))
        as_netcdf = client.post("/v1/nowcasts", json=body, headers={"Accept": NETCDF})
    assert all(a.status_code == 200 for a in answers), answers[0].text
    assert set(FakeEnsemble.batch_sizes) == {1}
    expected = FakeEnsemble().forecast(seq, 2, members=3, seed=7)
    for answer in answers:
        assert answer.json()["shape"] == [3, 2, 12, 14] and answer.json()["members"] == 3
        np.testing.assert_array_equal(decode_frames(answer.json()), expected.values)
    # members are answered in the CF file too, on its realization axis
    assert as_netcdf.status_code == 200, as_netcdf.text
    with _open_bytes(as_netcdf.content) as ds:
        np.testing.assert_array_equal(ds["precipitation_rate"].transpose("realization", ...).values, expected.values)


def _write_tiny_gan(models_dir: Path, seed: int) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("nowcast.gan.forecaster", reason="the GAN forecaster is not available")
    from nowcast import config as config_io
    from nowcast.gan.config import ModelConfig
    from nowcast.gan.model import Generator
    from nowcast.transforms import Normalisation

    model = ModelConfig(
        n_input=3,
        n_output=2,
        generator_channels=(6, 4),
        discriminator_channels=(4, 4),
        generator_layers=2,
        condition_on_advection=False,
        envelope_db=0.0,
        correction_deadzone_db=0.0,
        correction_db_per_step=0.0,
    )
    torch.manual_seed(seed)
    generator = Generator(model)
    spec = {"model": config_io.to_dict(model), "normalisation": Normalisation().to_dict()}
    artifacts.write_artifact(
        "tiny-gan",
        config=spec,
        card_data={"description": f"untrained, seed {seed}"},
        weights_writer=lambda path: torch.save(generator.state_dict(), path),
        card_markdown="# tiny-gan\n",
        models_dir=models_dir,
    )


def test_serves_a_gan_artifact_batched_like_the_library(tmp_path: Path) -> None:
    """A tiny (untrained) GAN exported to a registry: served answers match `forecast` on it."""
    _write_tiny_gan(tmp_path, seed=1)
    _write_tiny_gan(tmp_path, seed=2)
    sequences = [sequence(ny=13, nx=15, seed=s) for s in range(4)]  # 13x15: the model pads and crops
    library = get_forecaster("tiny-gan@v1", models_dir=tmp_path, device="cpu")
    expected = [library.forecast(s, 5).values for s in sequences]  # 5 steps: fed back past n_output
    admin = {"X-API-Key": "root"}
    with (
        running(
            model="tiny-gan",
            model_version="v1",
            models_dir=tmp_path,
            device="cpu",
            admin_keys=["root"],
            batch_window_ms=100,
        ) as client,
        ThreadPoolExecutor(4) as pool,
    ):
        answers = list(pool.map(lambda s: client.post("/v1/nowcasts", json=json_body(s, steps=5)), sequences))
        models = client.get("/v1/models").json()
        switched = client.put("/v1/admin/active-model", json={"name": "tiny-gan@v2"}, headers=admin)
        after = client.post("/v1/nowcasts", json=json_body(sequences[0], steps=5))
    assert all(a.status_code == 200 for a in answers), answers[0].text
    assert max(a.json()["batch_size"] for a in answers) > 1
    for answer, want in zip(answers, expected, strict=True):
        assert answer.json()["model"] == {"name": "tiny-gan", "version": "v1"}
        np.testing.assert_allclose(decode_frames(answer.json()), want, rtol=1e-4, atol=1e-5)
    assert (
        models["active"]["version"] == "v1" and models["active"]["card"]["description"] == "untrained, seed 1"
    )
    assert switched.status_code == 200 and switched.json()["active"]["version"] == "v2"
    v2 = get_forecaster("tiny-gan@v2", models_dir=tmp_path, device="cpu").forecast(sequences[0], 5).values
    np.testing.assert_allclose(decode_frames(after.json()), v2, rtol=1e-4, atol=1e-5)


def test_serves_the_trained_models_in_the_registry() -> None:
    """Every trained model in models/ (the GAN the image ships) serves what the library forecasts."""
    names = artifacts.list_models()
    if not names:
        pytest.skip("no trained model in models/ yet")
    seq = sequence(ny=32, nx=32, frames=8, border=0)
    for name in names:
        library = get_forecaster(name, device="cpu")
        if library.n_input_frames > 8:
            continue
        expected = library.forecast(seq, 3).values
        with running(model=name, device="cpu", warmup_grid=32) as client:
            answer = client.post("/v1/nowcasts", json=json_body(seq, steps=3))
        assert answer.status_code == 200, (name, answer.text)
        assert answer.json()["model"]["version"] == artifacts.list_versions(name)[-1]
        np.testing.assert_allclose(decode_frames(answer.json()), expected, rtol=1e-4, atol=1e-4, err_msg=name)


class FakeHalf(Forecaster):
    """A 'CUDA' model whose half precision changes its forecast by ``half_error`` (relative)."""

    name = "test-half"
    n_input_frames = 2
    device = "cuda:0"
    supports_half = True
    half_precision = "float16"

    def __init__(self, half_error: float) -> None:
        self.half = False
        self.half_error = half_error

    def predict(
        self, past: np.ndarray, steps: int, *, members: int | None = None, seed: int | None = None,
        spacing: Any = None,
    ) -> np.ndarray:
        factor = 1.0 + (self.half_error if self.half else 0.0)
        return np.repeat(past[:, -1:], steps, axis=1) * np.float32(factor)


@pytest.mark.parametrize(
    ("mode", "half_error", "expected"),
    [
        ("auto", 1e-3, "float16"),  # within 0.1 mm/h + 1%: keep half precision
        ("auto", 0.2, "float32"),  # moves heavy rain by 20%: back to float32
        ("on", 0.2, "float16"),
        ("off", 1e-3, "float32"),
    ],
)
def test_half_precision_only_within_tolerance(mode: str, half_error: float, expected: str) -> None:
    from service.inference.models import choose_precision

    model = FakeHalf(half_error)
    assert choose_precision(model, mode, tolerance_mmh=0.1) == expected
    assert model.half is (expected == "float16")


def test_half_precision_on_the_cpu_is_bfloat16_and_opt_in() -> None:
    from service.inference.models import choose_precision

    model = FakeHalf(1e-6)
    model.device, model.half_precision = "cpu", None  # a CPU without bfloat16 instructions
    assert choose_precision(model, "on", tolerance_mmh=0.1) == "float32" and model.half is False
    model.half_precision = "bfloat16"
    assert choose_precision(model, "auto", tolerance_mmh=0.1) == "float32" and model.half is False
    assert choose_precision(model, "on", tolerance_mmh=0.1) == "bfloat16" and model.half is True
