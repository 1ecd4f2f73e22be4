"""Load benchmark of the forecast service, on the loopback interface only.

Starts ``python -m service`` on 127.0.0.1 (once with batching on, once with it off) or
targets a running server given with ``--url`` (loopback addresses only), then measures
requests per second and p50/p99 latency at several numbers of concurrent clients, each
level for a bounded time. The request is a synthetic radar sequence (default 256x256,
4 frames in, 12 out), sent as base64 float32 JSON.

    python bench/load_service.py --model persistence
    python bench/load_service.py --model default-gan --duration 15 --json-out runs/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd

from nowcast.synthetic import SyntheticRain, synthetic_sequence

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class LevelResult:
    batching: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float


def request_body(grid: int, frames: int, steps: int, seed: int = 0) -> bytes:
    seq = synthetic_sequence(SyntheticRain(ny=grid, nx=grid, frames=frames), seed=seed)
    values = np.ascontiguousarray(seq.values, dtype="<f4")
    return json.dumps(
        {
            "frames": {
                "encoding": "base64",
                "shape": list(values.shape),
                "data": base64.b64encode(values.tobytes()).decode(),
            },
            "timestamps": [pd.Timestamp(t).isoformat() + "Z" for t in seq["time"].values],
            "steps": steps,
        }
    ).encode()


async def run_level(
    url: str, bodies: list[bytes], concurrency: int, duration_s: float, batching: str, headers: dict[str, str]
) -> LevelResult:
    latencies: list[float] = []
    batch_sizes: list[int] = []
    errors = 0
    deadline = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker(index: int) -> None:
            nonlocal errors
            sent = 0
            while time.perf_counter() < deadline:
                body = bodies[(index + sent) % len(bodies)]
                sent += 1
                started = time.perf_counter()
                try:
                    answer = await client.post(
                        "/v1/nowcasts", content=body, headers={"Content-Type": "application/json", **headers}
                    )
                except httpx.HTTPError:
                    errors += 1
                    continue
                if answer.status_code != 200:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - started)
                batch_sizes.append(int(answer.headers.get("x-nowcast-batch-size", "1")))

        began = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - began

    ordered = sorted(latencies)

    def percentile(q: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3

    return LevelResult(
        batching=batching,
        concurrency=concurrency,
        requests=len(latencies),
        errors=errors,
        seconds=round(elapsed, 2),
        requests_per_s=round(len(latencies) / elapsed, 2),
        p50_ms=round(percentile(0.50), 1),
        p99_ms=round(percentile(0.99), 1),
        mean_batch=round(statistics.fmean(batch_sizes), 2) if batch_sizes else float("nan"),
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """`python -m service` on 127.0.0.1 with the given settings, stopped on exit."""

    def __init__(self, env: dict[str, str], startup_s: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.startup_s = startup_s
        self.log = tempfile.NamedTemporaryFile(prefix="nowcast-bench-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LocalServer:
        command = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, cwd=REPO, env={**os.environ, **self.env}, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.startup_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}); log: {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"server not ready within {self.startup_s} s; log: {self.log.name}")
            time.sleep(0.25)

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def describe_device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def print_table(
    model: str, grid: int, frames: int, steps: int, threads: int | None, results: list[LevelResult]
) -> None:
    print(
        f"\nmodel={model} grid={grid}x{grid} frames_in={frames} steps_out={steps} device={describe_device()}"
        f" torch_threads={threads or 'default'}"
    )
    print(
        f"{'batching':<9} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>9} "
        f"{'p99 ms':>9} {'mean batch':>10}"
    )
    for r in results:
        print(
            f"{r.batching:<9} {r.concurrency:>7} {r.requests:>8} {r.errors:>6} {r.requests_per_s:>8.2f} "
            f"{r.p50_ms:>9.1f} {r.p99_ms:>9.1f} {r.mean_batch:>10.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="persistence", help="forecaster to serve (NOWCAST_MODEL)")
    parser.add_argument("--grid", type=int, default=256, help="side of the square grid")
    parser.add_argument("--frames", type=int, default=4, help="frames sent")
    parser.add_argument("--steps", type=int, default=12, help="frames forecast")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level (bounded run)")
    parser.add_argument("--batching", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--max-batch", type=int, default=8, help="NOWCAST_MAX_BATCH with batching on")
    parser.add_argument("--window-ms", type=float, default=5.0, help="NOWCAST_BATCH_WINDOW_MS")
    parser.add_argument("--device", default="auto", help="NOWCAST_DEVICE")
    parser.add_argument("--torch-threads", type=int, help="NOWCAST_TORCH_THREADS (default: torch's choice)")
    parser.add_argument("--url", help="a running server on a loopback address (then --batching is ignored)")
    parser.add_argument("--api-key", help="X-API-Key for --url")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)

    if args.url and urlsplit(args.url).hostname not in LOOPBACK:
        parser.error(f"--url must point to a loopback address ({', '.join(sorted(LOOPBACK))})")
    if args.duration <= 0 or args.duration > 300:
        parser.error("--duration must be in (0, 300] seconds")

    bodies = [request_body(args.grid, args.frames, args.steps, seed=s) for s in range(4)]
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    results: list[LevelResult] = []

    def measure(url: str, batching: str) -> None:
        asyncio.run(run_level(url, bodies, 1, min(2.0, args.duration), batching, headers))  # warm-up
        for concurrency in args.concurrency:
            result = asyncio.run(run_level(url, bodies, concurrency, args.duration, batching, headers))
            print(
                f"  {batching:<3} x{concurrency:<3} {result.requests_per_s:8.2f} req/s"
                f"  p50 {result.p50_ms:8.1f} ms  p99 {result.p99_ms:8.1f} ms"
                f"  batch {result.mean_batch:5.2f}  errors {result.errors}",
                flush=True,
            )
            results.append(result)

    if args.url:
        measure(args.url.rstrip("/"), "external")
    else:
        for batching in args.batching:
            env = {
                "NOWCAST_MODEL": args.model,
                "NOWCAST_DEVICE": args.device,
                "NOWCAST_MAX_BATCH": str(args.max_batch if batching == "on" else 1),
                "NOWCAST_BATCH_WINDOW_MS": str(args.window_ms if batching == "on" else 0),
                "NOWCAST_QUEUE_SIZE": str(max(args.concurrency) * 2),
                "NOWCAST_WARMUP_GRID": str(args.grid),
                "NOWCAST_MAX_STEPS": str(max(args.steps, 36)),
                "NOWCAST_REQUEST_TIMEOUT_S": "120",
                "NOWCAST_ACCESS_LOG": "false",
                **({"NOWCAST_TORCH_THREADS": str(args.torch_threads)} if args.torch_threads else {}),
                "NOWCAST_LOG_LEVEL": "warning",
            }
            with LocalServer(env, args.startup_timeout) as server:
                measure(server.url, batching)

    print_table(args.model, args.grid, args.frames, args.steps, args.torch_threads, results)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "model": args.model,
            "grid": args.grid,
            "frames": args.frames,
            "steps": args.steps,
            "device": describe_device(),
        }
        args.json_out.write_text(json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=2))
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
