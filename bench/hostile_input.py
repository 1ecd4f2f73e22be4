"""Probe the forecast service with hostile requests and report what each one cost it.

Starts ``python -m service`` on 127.0.0.1 with the chosen model and the default limits,
then sends, one case after another: netCDF bodies that keep their data in other files
(``/etc/passwd``, an external link, a virtual dataset, a FIFO), netCDF bodies that declare
far more data than they hold, a 95 MiB admin body without a key, two concurrent 48 MiB
JSON requests inside every limit, and rates of 3e38 mm/h. For each case it prints the
status and reason, how long the answer took, the server's peak resident memory during
the case (``VmHWM``, reset before each case) and its memory after, and the slowest
``/healthz`` answer meanwhile. At the end it checks that the server still forecasts and
that its temporary folder is empty.

    python bench/hostile_input.py --model default-gan --json-out runs/hostile.json
    python bench/hostile_input.py --model persistence      # the service alone, without the GAN's memory
    python bench/hostile_input.py --env NOWCAST_MAX_GRID_PIXELS=262144 --env NOWCAST_MAX_BATCH_PIXELS=262144
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import h5py
import httpx
import netCDF4
import numpy as np
from load_service import LocalServer  # bench/ is on the path of a script run from it

from nowcast.io.netcdf import write_netcdf
from nowcast.synthetic import SyntheticRain, synthetic_sequence

NETCDF = "application/x-netcdf"
MIB = 2**20


@dataclass
class CaseResult:
    case: str
    status: str
    detail: str
    seconds: float
    peak_rss_mib: float
    rss_after_mib: float
    slowest_healthz_ms: float


# --- the server and its memory ---------------------------------------------------------------------------


@contextmanager
def server(model: str, tmp: Path, extra_env: dict[str, str]) -> Iterator[tuple[str, int]]:
    (tmp / "server-tmp").mkdir()
    env = {"NOWCAST_MODEL": model, "NOWCAST_ADMIN_KEYS": "root", "NOWCAST_ACCESS_LOG": "false",
           "NOWCAST_DEVICE": "cpu", "TMPDIR": str(tmp / "server-tmp"), **extra_env}
    with LocalServer(env, startup_s=180) as running:
        assert running.process is not None
        yield running.url, running.process.pid


def memory_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs)."""
    with suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


class HealthWatch:
    """Polls /healthz from a separate process (the probe's own parsing of large answers would delay
    it otherwise); the slowest answer is how long the server's event loop stalled."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop, self._ready = context.Event(), context.Event()
        self._slowest = context.Value("d", 0.0)
        self._process = context.Process(
            target=_watch_health, args=(url, self._stop, self._ready, self._slowest), daemon=True
        )
        self.slowest_ms = 0.0

    def __enter__(self) -> HealthWatch:
        self._process.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join()
        self.slowest_ms = self._slowest.value


def _watch_health(url: str, stop: Any, ready: Any, slowest: Any) -> None:
    with httpx.Client(timeout=60) as client:
        client.get(f"{url}/healthz")  # connected and warm before the case starts
        ready.set()
        while not stop.is_set():
            started = time.perf_counter()
            with suppress(httpx.TransportError):
                client.get(f"{url}/healthz")
            slowest.value = max(slowest.value, (time.perf_counter() - started) * 1e3)
            stop.wait(0.05)


def run_case(name: str, url: str, pid: int, send: Callable[[], tuple[str, str]]) -> CaseResult:
    reset_peak(pid)
    with HealthWatch(url) as watch:
        started = time.perf_counter()
        status, detail = send()
        seconds = time.perf_counter() - started
        time.sleep(0.3)
    result = CaseResult(
        case=name,
        status=status,
        detail=detail[:140],
        seconds=round(seconds, 2),
        peak_rss_mib=round(memory_mib(pid, "VmHWM"), 1),
        rss_after_mib=round(memory_mib(pid, "VmRSS"), 1),
        slowest_healthz_ms=round(watch.slowest_ms, 1),
    )
    print(
        f"{name:<44} {status:>7} {result.seconds:7.2f} s  peak {result.peak_rss_mib:7.1f} MiB  after "
        f"{result.rss_after_mib:7.1f} MiB  healthz <= {result.slowest_healthz_ms:6.1f} ms  {result.detail}",
        flush=True,
    )
    return result


# --- the hostile bodies ---------------------------------------------------------------------------------


def good_file(path: Path, frames: int = 4, size: int = 64) -> Path:
    return write_netcdf(synthetic_sequence(SyntheticRain(ny=size, nx=size, frames=frames), seed=1), path)


def rewrite_rain(path: Path, **create: object) -> bytes:
    with h5py.File(path, "r+") as f:
        old = f["precipitation_rate"]
        shape, dtype = old.shape, old.dtype
        attrs = {k: old.attrs[k] for k in old.attrs if k not in ("DIMENSION_LIST", "_FillValue")}
        del f["precipitation_rate"]
        if "layout" in create:
            new = f.create_virtual_dataset("precipitation_rate", create["layout"])
        else:
            new = f.create_dataset("precipitation_rate", shape=shape, dtype=dtype, **create)
        for key, value in attrs.items():
            new.attrs[key] = value
        for axis, name in enumerate(("time", "y", "x")):
            new.dims[axis].attach_scale(f[name])
    return path.read_bytes()


def external_storage(tmp: Path, target: str) -> bytes:
    return rewrite_rain(good_file(tmp / f"ext-{Path(target).name}.nc"), external=[(target, 0, 4 * 64 * 64 * 4)])


def external_link(tmp: Path) -> bytes:
    path, other = good_file(tmp / "link.nc"), good_file(tmp / "link-target.nc")
    with h5py.File(path, "r+") as f:
        del f["precipitation_rate"]
        f["precipitation_rate"] = h5py.ExternalLink(str(other), "/precipitation_rate")
    return path.read_bytes()


def virtual_dataset(tmp: Path) -> bytes:
    source = good_file(tmp / "vds-source.nc")
    layout = h5py.VirtualLayout(shape=(4, 64, 64), dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), "precipitation_rate", shape=(4, 64, 64))
    return rewrite_rain(good_file(tmp / "vds.nc"), layout=layout)


def declared(tmp: Path, frames: int, side: int, *, zeros: bool) -> bytes:
    path = tmp / f"declared-{frames}x{side}-{zeros}.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        for name, size in (("time", frames), ("y", side), ("x", side)):
            nc.createDimension(name, size)
        time_var = nc.createVariable("time", "i8", ("time",))
        time_var.units = "seconds since 2024-06-01 12:00:00"
        time_var[:] = np.arange(frames) * 300
        rain = nc.createVariable(
            "precipitation_rate", "f4", ("time", "y", "x"), zlib=True, complevel=9, chunksizes=(1, side, side),
            fill_value=np.float32(np.nan),
        )
        rain.units = "mm h-1"
        if zeros:
            for t in range(frames):
                rain[t] = np.zeros((side, side), dtype=np.float32)
    return path.read_bytes()


def json_body(frames: int, side: int, token: str, steps: int = 12) -> bytes:
    row = "[" + ",".join([token] * side) + "]"
    frame = "[" + ",".join([row] * side) + "]"
    start = datetime(2024, 6, 1, 12, 0)
    stamps = json.dumps([(start + timedelta(minutes=5 * i)).isoformat() + "Z" for i in range(frames)])
    return f'{{"frames":[{",".join([frame] * frames)}],"timestamps":{stamps},"steps":{steps}}}'.encode()


# --- sending --------------------------------------------------------------------------------------------


def post_netcdf(url: str, body: bytes, steps: int = 12) -> tuple[str, str]:
    answer = httpx.post(
        f"{url}/v1/nowcasts", params={"steps": steps}, content=body, headers={"Content-Type": NETCDF}, timeout=300
    )
    return str(answer.status_code), _detail(answer)


def post_json(url: str, body: bytes) -> tuple[str, str]:
    answer = httpx.post(f"{url}/v1/nowcasts", content=body, headers={"Content-Type": "application/json"}, timeout=300)
    return str(answer.status_code), _detail(answer)


def post_json_retrying(url: str, body: bytes, attempts: int = 5) -> tuple[str, str]:
    """Like a well-behaved client: on 503, wait Retry-After seconds and send again."""
    statuses = []
    for _ in range(attempts):
        answer = httpx.post(
            f"{url}/v1/nowcasts", content=body, headers={"Content-Type": "application/json"}, timeout=300
        )
        statuses.append(str(answer.status_code))
        if answer.status_code != 503:
            break
        time.sleep(float(answer.headers.get("Retry-After", "1")))
    return "->".join(statuses), _detail(answer)


def _detail(answer: httpx.Response) -> str:
    if answer.status_code == 200:
        payload = answer.json()
        values = np.frombuffer(b"", dtype=np.float32)
        if isinstance(payload.get("frames"), list):
            values = np.array(payload["frames"], dtype=np.float64)
        finite = "all finite" if np.isfinite(values[~np.isnan(values)]).all() else "NON-FINITE VALUES"
        return f"forecast {payload['shape']} ({finite}, batch {payload['batch_size']})"
    try:
        return answer.json()["detail"]
    except ValueError:
        return answer.text


def raw_put(port: int, path: str, declared_bytes: int, chunk: bytes, headers: dict[str, str]) -> tuple[str, str]:
    """Send a body of ``declared_bytes`` (Content-Length) or, at 0, chunked, reading the answer as soon as
    it comes: a server that refuses early closes the connection while we still send."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        lines = [f"PUT {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {declared_bytes}" if declared_bytes else "Transfer-Encoding: chunked")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        sent, total = 0, declared_bytes or 95 * MIB
        try:
            while sent < total:
                piece = chunk if declared_bytes else f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
                sock.sendall(piece)
                sent += len(chunk)
            if not declared_bytes:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed: read what it said
        sock.settimeout(60)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b" ")[1].decode() if head else "closed"
    return status, f"{body[:120].decode(errors='replace')} (after sending {sent / MIB:.1f} MiB)"


# --- the run --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default-gan")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--env", action="append", default=[], metavar="NOWCAST_X=VALUE",
                        help="a setting for the server (repeatable), e.g. NOWCAST_MAX_GRID_PIXELS=262144")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.env)
    side = min(1024, int(int(settings.get("NOWCAST_MAX_GRID_PIXELS", 1024 * 1024)) ** 0.5))
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        bodies = tmp / "bodies"
        bodies.mkdir()
        fifo = tmp / "fifo"
        os.mkfifo(fifo)
        with server(args.model, tmp, {"NOWCAST_TORCH_THREADS": str(os.cpu_count() or 1), **settings}) as (url, pid):
            port = int(url.rsplit(":", 1)[1])
            print(f"server {url} (pid {pid}) serving {args.model}: {memory_mib(pid, 'VmRSS'):.1f} MiB resident "
                  f"after start, {memory_mib(pid, 'VmHWM'):.1f} MiB peak while loading", flush=True)
            hot = json.dumps({
                "frames": [[[3e38] * 32] * 32] * 4,
                "timestamps": [f"2024-06-01T12:{5 * i:02d}:00Z" for i in range(4)],
                "steps": 3,
            }).encode()
            netcdf_cases = {
                "good: 64x64 netCDF": good_file(bodies / "good.nc").read_bytes(),
                "netCDF stored in /etc/passwd": external_storage(bodies, "/etc/passwd"),
                "netCDF with an external link": external_link(bodies),
                "netCDF virtual dataset": virtual_dataset(bodies),
                "netCDF stored in a FIFO": external_storage(bodies, str(fifo)),
                "netCDF declaring 80x2048x2048": declared(bodies, 80, 2048, zeros=False),
                "zlib zeros declaring 80x2048x2048": declared(bodies, 80, 2048, zeros=True),
                f"zlib zeros 24x{side}x{side} (at the limits)": declared(bodies, 24, side, zeros=True),
            }
            cases: list[tuple[str, Callable[[], tuple[str, str]]]] = [
                (f"{name} ({len(body) / 1024:.0f} KiB)", lambda body=body: post_netcdf(url, body))
                for name, body in netcdf_cases.items()
            ]
            cases += [
                ("admin: 95 MiB, Content-Length, no key",
                 lambda: raw_put(port, "/v1/admin/active-model", 95 * MIB, b"[" * MIB, {})),
                ("admin: 95 MiB chunked, no key",
                 lambda: raw_put(port, "/v1/admin/active-model", 0, b"[" * MIB, {})),
                ("admin: 95 MiB chunked, admin key",
                 lambda: raw_put(port, "/v1/admin/active-model", 0, b"[" * MIB, {"X-API-Key": "root"})),
                ("rates of 3e38 mm/h", lambda: post_json(url, hot)),
            ]
            for name, send in cases:
                results.append(run_case(name, url, pid, send))

            frames = min(24, max(1, -(-48 * MIB // (side * side * 10))))
            big = json_body(frames, side, "0.1234567")
            print(f"two concurrent JSON bodies of {len(big) / MIB:.1f} MiB ({frames}x{side}x{side}, 12 steps), "
                  "each retried after Retry-After when refused", flush=True)

            def concurrent() -> tuple[str, str]:
                answers: list[tuple[str, str]] = []
                threads = [
                    threading.Thread(target=lambda: answers.append(post_json_retrying(url, big))) for _ in range(2)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                return "/".join(a[0] for a in answers), " | ".join(a[1][:60] for a in answers)

            results.append(run_case(f"two concurrent {len(big) / MIB:.0f} MiB JSON requests", url, pid, concurrent))
            results.append(run_case("good again", url, pid,
                                    lambda: post_netcdf(url, good_file(bodies / "again.nc").read_bytes())))
            time.sleep(2)
            settled = memory_mib(pid, "VmRSS")
            print(f"resident memory two seconds after the last case: {settled:.1f} MiB", flush=True)
        leftovers = sorted(p.name for p in (tmp / "server-tmp").iterdir())
        print(f"server's temporary folder after SIGTERM: {leftovers or 'empty'}")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "model": args.model,
            "settings": settings,
            "cases": [asdict(r) for r in results],
            "settled_rss_mib": settled,
            "temporary_files_left": leftovers,
        }
        args.json_out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
