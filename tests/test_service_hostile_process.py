"""Hostile requests against a real uvicorn process: what they cost the server, and what it leaves.

The server serves ``persistence`` (the model's own memory is not what is measured here)
with a fresh temporary folder; its resident memory is read from /proc before and during
each case (``VmHWM``, reset between cases), and /healthz is polled meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hostile_files import declared, external_storage, fifo_storage
from test_service_process import free_port, server_process, service_env

pytestmark = [pytest.mark.service, pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")]

MIB = 2**20
NETCDF = "application/x-netcdf"
BUDGET_MIB = 400


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    tmp = tmp_path_factory.mktemp("hostile")
    server_tmp = tmp / "server-tmp"
    server_tmp.mkdir()
    port = free_port()
    env = service_env(
        tmp / "models",
        TMPDIR=str(server_tmp),
        NOWCAST_REQUEST_MEMORY_BYTES=str(BUDGET_MIB * MIB),
        NOWCAST_MAX_GRID_PIXELS=str(1024 * 1024),
    )
    command = [sys.executable, "-m", "service", "--port", str(port)]
    with server_process(command, env, tmp / "server.log", port) as (url, pid):
        yield url, pid, server_tmp
    assert list(server_tmp.iterdir()) == []


class Healthz:
    """The slowest /healthz answer while the block runs."""

    def __init__(self, url: str) -> None:
        self.url, self.slowest_s, self._stop = url, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Healthz:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                client.get(f"{self.url}/healthz")
                self.slowest_s = max(self.slowest_s, time.perf_counter() - started)
                self._stop.wait(0.05)


def _read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer: the head, then as many body bytes as its Content-Length says."""
    answer = b""
    while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
        answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)
    while len(body) < length and (data := sock.recv(65536)):
        body += data
    return head + b"\r\n\r\n" + body


def raw_request(port: int, head: list[str], body_bytes: int, piece: bytes) -> bytes:
    """Send a request with a large body, reading the answer even if the server answers early and closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join([*head, f"Content-Length: {body_bytes}", "", ""])).encode())
        sent = 0
        try:
            while sent < body_bytes:
                sock.sendall(piece)
                sent += len(piece)
        except OSError:
            pass
        try:
            return _read_answer(sock)
        except OSError:
            return b""


@pytest.mark.timeout(300)
def test_hostile_bodies_are_refused_at_no_memory_cost(hostile_server: tuple[str, int, Path], tmp_path: Path) -> None:
    url, pid, _ = hostile_server
    port = int(url.rsplit(":", 1)[1])
    secret = tmp_path / "secret"
    secret.write_bytes(b"S" * 4096)
    netcdf_cases = {
        "external file": (external_storage(tmp_path / "e.nc", "/etc/passwd"), 422),
        "FIFO": (fifo_storage(tmp_path / "f.nc", tmp_path / "fifo"), 422),
        "declared 80x2048x2048": (declared(tmp_path / "b.nc", frames=80, ny=2048, nx=2048), 413),
        "zlib zeros 40x2048x2048": (declared(tmp_path / "z.nc", frames=40, ny=2048, nx=2048, write_zeros=True), 413),
    }
    baseline = rss_mib(pid)
    reset_peak(pid)
    with Healthz(url) as health, httpx.Client(base_url=url, timeout=60) as client:
        for name, (path, status) in netcdf_cases.items():
            answer = client.post(
                "/v1/nowcasts", params={"steps": 3}, content=path.read_bytes(), headers={"Content-Type": NETCDF}
            )
            assert answer.status_code == status, (name, answer.text)
            assert answer.json()["field"] == "body", name
        hot = json.dumps({
            "frames": [[[3e38] * 8] * 8] * 4,
            "timestamps": [f"2024-06-01T12:{5 * i:02d}:00Z" for i in range(4)],
            "steps": 3,
        })
        answer = client.post("/v1/nowcasts", content=hot, headers={"Content-Type": "application/json"})
        assert answer.status_code == 422 and "physical bound" in answer.json()["detail"]
        admin_head = ["PUT /v1/admin/active-model HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
        started = time.monotonic()
        refused = raw_request(port, admin_head, 95 * MIB, b"[" * MIB)
        assert refused.startswith(b"HTTP/1.1 413"), refused[:200]
        assert time.monotonic() - started < 10
        good = client.post("/v1/nowcasts", content=_json_frames(4, 64, "0.5", steps=3),
                           headers={"Content-Type": "application/json"})
        assert good.status_code == 200, good.text
    peak = rss_mib(pid, "VmHWM")
    assert peak - baseline < 64, (baseline, peak)
    assert health.slowest_s < 1.0


def _json_frames(frames: int, side: int, token: str, steps: int = 1) -> bytes:
    row = "[" + ",".join([token] * side) + "]"
    frame = "[" + ",".join([row] * side) + "]"
    stamps = json.dumps([f"2024-06-01T12:{5 * i:02d}:00Z" for i in range(frames)])
    return f'{{"frames":[{",".join([frame] * frames)}],"timestamps":{stamps},"steps":{steps}}}'.encode()


@pytest.mark.timeout(300)
def test_concurrent_large_bodies_stay_within_the_memory_budget(hostile_server: tuple[str, int, Path]) -> None:
    url, pid, _ = hostile_server
    body = _json_frames(3, 1024, "0.1234567")  # 30 MiB of nested numbers, inside every limit
    assert 25 * MIB < len(body) < 40 * MIB
    baseline = rss_mib(pid)
    reset_peak(pid)
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(timeout=120) as client:
            answer = client.post(f"{url}/v1/nowcasts", content=body, headers={"Content-Type": "application/json"})
            answers.append(answer)

    with Healthz(url) as health:
        threads = [threading.Thread(target=post) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses[0] == 200 and set(statuses) <= {200, 503}, [a.text[:200] for a in answers]
    for answer in answers:
        if answer.status_code == 503:
            assert answer.headers["Retry-After"] and "needs about" in answer.json()["detail"]
        else:
            assert answer.json()["shape"] == [1, 1024, 1024]
    peak = rss_mib(pid, "VmHWM")
    # the budget plus what the answers hold beyond the estimate and the allocator's slack
    assert peak - baseline < BUDGET_MIB + 96, (baseline, peak)
    assert health.slowest_s < 2.0
    time.sleep(0.5)
    assert rss_mib(pid) - baseline < 96  # given back


@pytest.mark.timeout(120)
def test_sigterm_during_an_upload_answers_and_leaves_nothing(tmp_path: Path) -> None:
    server_tmp = tmp_path / "server-tmp"
    server_tmp.mkdir()
    port = free_port()
    env = {**os.environ, **service_env(tmp_path / "models", TMPDIR=str(server_tmp), NOWCAST_REQUEST_TIMEOUT_S="3")}
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], env=env, stdout=log,
                               stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = ["POST /v1/nowcasts?steps=3 HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {NETCDF}",
                    f"Content-Length: {10 * MIB}", "", ""]
            sock.sendall("\r\n".join(head).encode() + b"\x89HDF\r\n\x1a\n" + bytes(MIB))
            # time for the server to take in what was sent: bytes still unread when it closes the connection
            # make the kernel reset it, and on a loaded machine the reset can overtake the answer
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
        assert b"request timeout" in answer
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert list(server_tmp.iterdir()) == []
