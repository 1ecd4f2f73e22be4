"""The service against hostile requests (in process): refused with a named reason, nothing leaked.

The memory and concurrency cases run against a real uvicorn process in
``test_service_hostile_process.py``; here are the refusals themselves.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hostile_files import declared, external_link, external_storage, fifo_storage, virtual_dataset
from test_service import NETCDF, FakeBatched, json_body, running, sequence

from nowcast import forecasters
from nowcast.io.netcdf import read_netcdf_bytes, to_netcdf_bytes
from service import codec
from service.schemas import NowcastRequest

pytestmark = pytest.mark.service

SECRET = b"SECRET-BYTES-" * 100


def _netcdf(client: Any, content: bytes, steps: int = 2) -> Any:
    return client.post("/v1/nowcasts", content=content, params={"steps": steps}, headers={"Content-Type": NETCDF})


@pytest.mark.timeout(120)
def test_netcdf_bodies_that_read_other_files_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(SECRET)
    bodies = {
        "keeps its data in an external file": external_storage(tmp_path / "e.nc", secret),
        "is an external link": external_link(tmp_path / "l.nc", tmp_path / "other.nc"),
        "is a virtual dataset": virtual_dataset(tmp_path / "v.nc", tmp_path / "source.nc"),
        "keeps its data in an external file ": fifo_storage(tmp_path / "f.nc", tmp_path / "fifo"),
    }
    with running() as client:
        for words, path in bodies.items():
            answer = _netcdf(client, path.read_bytes())
            assert answer.status_code == 422, answer.text
            assert answer.json()["field"] == "body"
            assert words.strip() in answer.json()["detail"]
            assert str(tmp_path) not in answer.json()["detail"]  # the server's paths stay its own
        assert client.post("/v1/nowcasts", json=json_body(sequence())).status_code == 200


def test_declared_grids_over_the_limits_are_refused_from_the_header(tmp_path: Path) -> None:
    bomb = declared(tmp_path / "bomb.nc", frames=80, ny=2048, nx=2048).read_bytes()
    big_grid = declared(tmp_path / "grid.nc", frames=4, ny=1024, nx=1024).read_bytes()
    zeros = declared(tmp_path / "zeros.nc", frames=4, ny=700, nx=700, write_zeros=True).read_bytes()
    with running(max_grid_pixels=512 * 512) as client:
        for body, words in [
            (bomb, "declares 80x2048x2048"),  # over the largest variable the limits allow
            (big_grid, "grid of 1024x1024 is larger than this service's limit"),
            (zeros, "grid of 700x700 is larger than this service's limit"),
        ]:
            answer = _netcdf(client, body)
            assert answer.status_code == 413, answer.text
            assert words in answer.json()["detail"]
        assert client.app.state.memory.used == 0


def test_rates_above_the_physical_bound_are_refused_and_forecasts_stay_finite(tmp_path: Path) -> None:
    seq = sequence()
    hot = seq.copy(data=seq.values * 0 + 3e38)
    with running(model="default-gan") as client:
        for encoding in ("nested", "base64"):
            body = json_body(hot)
            if encoding == "base64":
                body["frames"] = {"shape": list(hot.shape), "data": _b64(hot.values)}
            answer = client.post("/v1/nowcasts", json=body)
            assert answer.status_code == 422, answer.text
            assert answer.json()["field"] == "frames"
            assert "above the physical bound of 1000 mm/h" in answer.json()["detail"]
        answer = _netcdf(client, to_netcdf_bytes(hot))
        assert answer.status_code == 422 and "physical bound" in answer.json()["detail"]
        at_bound = seq.copy(data=seq.values * 0 + 1000.0)
        answer = client.post("/v1/nowcasts", json=json_body(at_bound), headers={"Accept": NETCDF})
        assert answer.status_code == 200
        forecast = read_netcdf_bytes(answer.content).values
        has_data = np.isfinite(at_bound.values[-1])
        assert np.isfinite(forecast[:, has_data]).all() and forecast[:, has_data].max() <= 1000.0
    with running(max_rain_rate_mmh=5000.0) as client:
        assert client.post("/v1/nowcasts", json=json_body(seq.copy(data=seq.values * 0 + 3000.0))).status_code == 200


def _b64(values: Any) -> str:
    import base64

    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode()


def test_admin_bodies_are_read_only_after_the_key_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    original = codec.parse_switch_request

    def spy(body: bytes) -> Any:
        parsed.append(body)
        return original(body)

    monkeypatch.setattr(codec, "parse_switch_request", spy)
    switch = json.dumps({"name": "persistence"}).encode()
    with running(admin_keys=["root"], max_admin_body_bytes=1024) as client:
        keyless = client.put("/v1/admin/active-model", content=switch + b" " * 900)
        wrong = client.put("/v1/admin/active-model", content=switch, headers={"X-API-Key": "nope"})
        assert parsed == []  # neither body was parsed
        large = client.put("/v1/admin/active-model", content=b"[" * 5000, headers={"X-API-Key": "root"})
        chunked = client.put(
            "/v1/admin/active-model",
            content=iter([b"{" + b" " * 600, b" " * 600 + b"}"]),
            headers={"X-API-Key": "root", "Content-Type": "application/json"},
        )
        ok = client.put("/v1/admin/active-model", content=switch, headers={"X-API-Key": "root"})
    assert keyless.status_code == 401 and wrong.status_code == 403
    assert large.status_code == 413 and "limit of 1024 bytes" in large.json()["detail"]
    assert chunked.status_code == 413
    assert ok.status_code == 200 and parsed == [switch]


def test_a_model_outside_the_registry_is_as_unknown_as_a_missing_one(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    outside = tmp_path / "x" / "v1"  # model-shaped, beside the registry
    outside.mkdir(parents=True)
    (outside / "SHA256SUMS").write_text("")
    admin = {"X-API-Key": "root"}
    with running(admin_keys=["root"], models_dir=registry) as client:
        answers = [
            client.put("/v1/admin/active-model", json={"name": name}, headers=admin)
            for name in ("../x", "../x@v1", "no-such-model", "../../etc", "/etc")
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert answer.json()["detail"].split("'")[2] == answers[0].json()["detail"].split("'")[2]


class GatedFake(FakeBatched):
    """Once closed, holds every model call until the test opens the gate, so a full queue stays full.

    The gate starts open because the service warms the model up before it takes requests. ``held`` is set once
    a call waits at the closed gate: from then on the inference thread is taken and the queue no longer drains.
    """

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate
        self.held = threading.Event()

    def predict(self, past: np.ndarray, steps: int, **kwargs: Any) -> np.ndarray:
        if not self.gate.is_set():
            self.held.set()
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return super().predict(past, steps, **kwargs)


def test_a_full_queue_or_memory_budget_refuses_before_reading_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    gate.set()
    fake = GatedFake(gate)
    monkeypatch.setitem(forecasters.METHODS, "test-gated", lambda: fake)
    seq = sequence()
    with running(model="test-gated", max_batch=1, queue_size=1) as client:
        gate.clear()
        busy = [threading.Thread(target=client.post, args=("/v1/nowcasts",), kwargs={"json": json_body(seq)})
                for _ in range(2)]
        # One request at a time: sent together, the later ones could find the first still queued and be
        # refused, leaving nothing to wait behind it once it is held. Only a held call and a waiting one
        # make the queue full for good.
        deadline = time.monotonic() + 60
        busy[0].start()
        while not fake.held.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        busy[1].start()
        while not (full := fake.held.is_set() and client.app.state.batcher.depth >= 1) and time.monotonic() < deadline:
            time.sleep(0.005)
        try:
            assert full, "the queue never filled"
            refused = client.post(
                "/v1/nowcasts", content=b"not JSON at all", headers={"Content-Type": "application/json"}
            )
        finally:
            gate.set()
            for thread in busy:
                thread.join()
    assert refused.status_code == 503, refused.text  # not 422: the body was never read
    assert refused.headers["Retry-After"] == "1"

    with running(request_memory_bytes=16 * 2**20) as client:
        too_big = client.post(
            "/v1/nowcasts", content=b"x" * 4 * 2**20, headers={"Content-Type": "application/json"}
        )
        assert too_big.status_code == 413 and "more than this service allows one request" in too_big.json()["detail"]
        assert client.post("/v1/nowcasts", json=json_body(seq)).status_code == 200
        assert client.app.state.memory.used == 0


def test_the_memory_budget_refuses_503_while_it_is_full_and_is_given_back() -> None:
    seq = sequence()
    with running(request_memory_bytes=32 * 2**20) as client:
        budget = client.app.state.memory
        hold = budget.reserve(28 * 2**20, "a test")
        refused = client.post("/v1/nowcasts", json=json_body(seq))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert "needs about" in refused.json()["detail"]
        hold.close()
        assert budget.used == 0
        for output_encoding in ("nested", "base64"):
            assert client.post("/v1/nowcasts", json=json_body(seq, output_encoding=output_encoding)).status_code == 200
        assert _netcdf(client, to_netcdf_bytes(seq)).status_code == 200
        assert budget.used == 0
        metrics = client.get("/metrics").text
    assert 'nowcast_requests_rejected_total{reason="memory"} 1.0' in metrics


def test_the_request_timeout_covers_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    original = codec.parse_json_request
    release = threading.Event()

    def slow(body: bytes, settings: Any) -> Any:
        release.wait(10)
        return original(body, settings)

    monkeypatch.setattr(codec, "parse_json_request", slow)
    with running(request_timeout_s=0.3) as client:
        started = time.monotonic()
        answer = client.post("/v1/nowcasts", json=json_body(sequence()))
        took = time.monotonic() - started
        budget = client.app.state.memory
        assert answer.status_code == 503 and "request timeout of 0.3 s" in answer.json()["detail"]
        assert took < 5
        assert budget.used > 0  # the decoding thread still holds its memory...
        release.set()
        deadline = time.monotonic() + 5
        while budget.used and time.monotonic() < deadline:
            time.sleep(0.01)
        assert budget.used == 0  # ...until it ends
        monkeypatch.setattr(codec, "parse_json_request", original)
        assert client.post("/v1/nowcasts", json=json_body(sequence())).status_code == 200


def test_openapi_declares_keys_only_where_they_are_asked() -> None:
    with running() as client:
        open_spec = client.get("/openapi.json").json()
    with running(api_keys=["k"], admin_keys=["root"]) as client:
        keyed = client.get("/openapi.json").json()
    with running(admin_keys=["root"]) as client:
        admin_only = client.get("/openapi.json").json()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert all("security" not in op for ops in open_spec["paths"].values() for op in ops.values())
    assert "securitySchemes" in keyed["components"]
    assert "security" in keyed["paths"]["/v1/nowcasts"]["post"]
    assert "security" not in admin_only["paths"]["/v1/nowcasts"]["post"]
    assert "security" in admin_only["paths"]["/v1/admin/active-model"]["put"]
    assert "SwitchModelRequest" in keyed["components"]["schemas"]


def test_the_documented_example_is_valid_for_the_default_model() -> None:
    example = NowcastRequest.model_json_schema()["examples"][0]
    with running(model=None) as client:
        answer = client.post("/v1/nowcasts", json=example)
        model = client.get("/v1/models").json()["active"]
    assert answer.status_code == 200, answer.text
    assert len(example["frames"]) >= model["n_input_frames"]


def test_docs_and_metrics_can_be_closed() -> None:
    with running(docs=False, api_keys=["k"], metrics_need_key=True) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(path).status_code == 404, path
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "k"}).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/nowcasts", json=json_body(sequence()), headers={"X-API-Key": "k"}).status_code == 200
    with running(api_keys=["k"]) as client:
        assert client.get("/metrics").status_code == 200  # open to scrapers by default
        spec = client.get("/openapi.json").json()
        assert "security" not in spec["paths"]["/metrics"]["get"]


def test_a_model_call_takes_no_more_pixels_than_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(forecasters.METHODS, "test-slow", lambda: FakeBatched(delay_s=0.15))
    FakeBatched.batch_sizes = []
    sequences = [sequence(seed=s) for s in range(8)]  # 12x14 = 168 pixels each
    limits = {"batch_window_ms": 100, "max_batch": 8, "max_batch_pixels": 3 * 168}
    with running(model="test-slow", **limits) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda s: client.post("/v1/nowcasts", json=json_body(s)), sequences))
    assert all(a.status_code == 200 for a in answers)
    assert max(FakeBatched.batch_sizes) == 3
    with running(model="test-slow", max_batch_pixels=100) as client:  # a larger grid still runs, alone
        assert client.post("/v1/nowcasts", json=json_body(sequences[0])).json()["batch_size"] == 1
