"""Benchmark: from a radar file landing in the watched folder to its product being listed in the manifest.

``nowcast watch`` runs as deployed, a process of its own (its model in its worker process), on a folder
this script delivers files into the way a feed does (temporary name, then rename), one at a time; each
file's latency is the time from its rename to the manifest naming its product, seen from outside by
polling the manifest every 20 ms. The watcher's own view (``written_at - frame_arrived_at`` in the
manifest) is reported beside it. The first frames fill the model's window (no product) and the first
product pays the model's warm-up on the grid, so only the frames after it are timed.

Cases: a 512×512 crop of a real event, delivered as CF-netCDF files, and the whole grid of the largest
shared event (fmi-20170509, 1226×760), its own gzipped PGM files.

    python bench/bench_watch.py --model default-gan --frames 4
    python bench/bench_watch.py --cases fmi --frames 3 --output bench-watch.json

Prints a JSON record; ``--output FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pandas as pd

from nowcast.feed import read_manifest, read_manifest_extras
from nowcast.files import write_text_atomically
from nowcast.io.catalogue import find_event_files, get_event, load_event
from nowcast.io.netcdf import write_netcdf
from nowcast.paths import data_root

EVENT = "fmi-20170509"
CROP = 512
CROP_SOURCE = """
[sources.crop]
fn_pattern = "crop_%Y%m%d%H%M"
fn_ext = "nc"
importer = "netcdf"
timestep = 5
"""


def deliver(source: Path, target: Path) -> float:
    """Copy ``source`` to ``target`` the way a feed does; the time of the rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.part"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return time.time()


def wait_decided(folder: Path, when: pd.Timestamp, timeout_s: float) -> float | None:
    """When the manifest first says ``when`` was decided (its product listed), None past the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            last = read_manifest_extras(folder).get("last_reference_time")
        except Exception:  # replaced while read: read again
            last = None
        if last is not None and pd.Timestamp(last).tz_convert(None) >= when:
            return time.time()
        time.sleep(0.02)
    return None


def run_case(name: str, frames: list[tuple[pd.Timestamp, Path]], layout: Callable[[pd.Timestamp, Path], Path],
             config_text: str, n_timed: int, timeout_s: float, workdir: Path) -> dict:
    """Start a watcher, deliver ``frames`` one by one, time the products of the last ``n_timed``."""
    feed, out = workdir / "feed", workdir / "out"
    feed.mkdir()
    config = workdir / "watch.toml"
    config.write_text(config_text.format(feed=feed, out=out))
    log = (workdir / "watch.log").open("w")
    port = free_port()
    watcher = subprocess.Popen([sys.executable, "-m", "nowcast.cli", "watch", str(config), "--metrics-port",
                                str(port)], stdout=log, stderr=subprocess.STDOUT)
    records = []
    try:
        started = time.monotonic()
        while not (out / "manifest.json").exists() and not _started(workdir / "watch.log"):
            if watcher.poll() is not None or time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the watcher did not start: {(workdir / 'watch.log').read_text()[-2000:]}")
            time.sleep(0.2)
        for k, (when, path) in enumerate(frames):
            landed = deliver(path, layout(when, path) if layout else feed / path.name)
            listed = wait_decided(out, when, timeout_s)
            if listed is None:
                raise RuntimeError(f"no decision on {when} within {timeout_s} s: "
                                   f"{(workdir / 'watch.log').read_text()[-2000:]}")
            if k >= len(frames) - n_timed:
                entry = {pd.Timestamp(e.reference_time).tz_convert(None): e for e in read_manifest(out)}.get(when)
                records.append({"valid_time": str(when), "latency_s": listed - landed,
                                "watcher_latency_s": None if entry is None or entry.frame_arrived_at is None
                                else (entry.written_at - entry.frame_arrived_at).total_seconds(),
                                "fallback": None if entry is None else entry.fallback,
                                "model": None if entry is None else entry.model})
        model = scrape(port, "nowcast_watch_model_seconds")
    finally:
        watcher.terminate()
        watcher.wait(timeout=60)
    latencies = [r["latency_s"] for r in records]
    return {"case": name, "frames": records, "median_latency_s": statistics.median(latencies),
            "max_latency_s": max(latencies), "fallbacks": sum(bool(r["fallback"]) for r in records),
            # the model's share: its mean time per forecast (worker round trip included, warm-up product too)
            "model_mean_s": model["sum"] / model["count"] if model.get("count") else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int, histogram: str) -> dict[str, float]:
    """``histogram``'s sum and count from the watcher's metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"{histogram}_{part} "):
                values[part] = float(line.split()[1])
    return values


def _started(log: Path) -> bool:
    return "watching" in log.read_text()


def config_text(source: str, catalogue: Path | None, model: str, poll_s: float, deadline_s: float) -> str:
    lines = ['input_dir = "{feed}"', 'output_dir = "{out}"', f'source = "{source}"', f'model = "{model}"',
             "steps = 12", f"poll_interval_s = {poll_s}", "settle_s = 0.0", "max_missing_frames = 0",
             "missing_wait_s = 0.0", f"model_deadline_s = {deadline_s}"]
    if catalogue is not None:
        lines.append(f'catalogue = "{catalogue}"')
    return "\n".join(lines) + "\n"


def crop_frames(workdir: Path, n: int) -> list[tuple[pd.Timestamp, Path]]:
    """The event's first ``n`` frames, cropped to CROP×CROP around the grid centre, as CF-netCDF files."""
    event = get_event(EVENT)
    sequence = load_event(event, end=event.start + (n - 1) * event.step)
    ny, nx = sequence.sizes["y"], sequence.sizes["x"]
    y0, x0 = (ny - CROP) // 2, (nx - CROP) // 2 if nx > CROP else 0
    crop = sequence.isel(y=slice(y0, y0 + CROP), x=slice(x0, x0 + min(CROP, nx)))
    files = []
    for k in range(n):
        when = pd.Timestamp(crop["time"].values[k])
        path = workdir / f"crop_{when:%Y%m%d%H%M}.nc"
        write_netcdf(crop.isel(time=[k]), path)
        files.append((when, path))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default-gan")
    parser.add_argument("--cases", default="512,fmi", help="comma-separated: 512 (a crop), fmi (the whole grid)")
    parser.add_argument("--frames", type=int, default=4, help="products timed per case")
    parser.add_argument("--poll", type=float, default=0.5, help="the watcher's poll interval (s)")
    parser.add_argument("--deadline", type=float, default=600.0, help="the model's deadline (s)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if not (data_root() / "radar").is_dir():
        sys.exit(f"the real archive is not at {data_root()} (set NOWCAST_DATA_ROOT)")
    import torch

    event = get_event(EVENT)
    n = 4 + args.frames  # three to fill the window, one warm-up product, then the timed ones
    record = {"benchmark": "watch", "model": args.model, "poll_interval_s": args.poll,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "date": datetime.now().isoformat(timespec="seconds"), "cases": []}
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        with tempfile.TemporaryDirectory(prefix=f"bench-watch-{case}-") as tmp:
            workdir = Path(tmp)
            if case == "512":
                catalogue = workdir / "catalogue.toml"
                catalogue.write_text(CROP_SOURCE)
                (workdir / "frames").mkdir()
                frames = crop_frames(workdir / "frames", n)
                text = config_text("crop", catalogue, args.model, args.poll, args.deadline)
                result = run_case(f"{EVENT} crop {CROP}x{CROP}", frames, None, text, args.frames, args.timeout,
                                  workdir)
            elif case == "fmi":
                frames = find_event_files(event, end=event.start + (n - 1) * event.step)

                def layout(when: pd.Timestamp, path: Path, feed: Path = workdir / "feed") -> Path:
                    return feed / when.strftime(event.path_fmt) / path.name

                text = config_text("fmi", None, args.model, args.poll, args.deadline)
                result = run_case(f"{EVENT} whole grid 1226x760", frames, layout, text, args.frames, args.timeout,
                                  workdir)
            else:
                sys.exit(f"unknown case {case!r}: 512 or fmi")
        record["cases"].append(result)
        print(json.dumps(result), file=sys.stderr)
    text = json.dumps(record, indent=1)
    print(text)
    if args.output:
        write_text_atomically(args.output, text + "\n")


if __name__ == "__main__":
    main()
