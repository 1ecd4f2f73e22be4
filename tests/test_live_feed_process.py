"""The live feed end to end, as deployed: a replayed real event, `nowcast watch` and the service as processes.

The watcher is killed with SIGKILL half-way and restarted; the service, reading the same product
folder, must then serve every product and answer point forecasts with the product's own numbers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from test_service_process import free_port, server_process, service_env

from nowcast.feed import MANIFEST, read_manifest, read_product
from nowcast.forecasters import get_forecaster
from nowcast.io.catalogue import find_event_files, get_event
from nowcast.watch import replay_event

pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.service]

EVENT = "mch-20160711"
FRAMES = 8


def _watch_config(tmp_path: Path) -> Path:
    config = tmp_path / "watch.toml"
    config.write_text('input_dir = "feed"\noutput_dir = "products"\nsource = "mch"\nmodel = "extrapolation"\n'
                      "steps = 6\nsettle_s = 0.3\npoll_interval_s = 0.3\nmissing_wait_s = 0.0\n"
                      "max_missing_frames = 0\n")
    return config


def _wait_for_products(folder: Path, count: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if (folder / MANIFEST).exists() and len(read_manifest(folder)) >= count:
            return
        time.sleep(0.3)
    pytest.fail(f"no {count} products in time (exit {process.poll()}):\n{log.read_text()[-3000:]}")


@pytest.mark.timeout(600)
def test_watch_and_serve_a_replayed_event_through_a_sigkill(tmp_path: Path, real_data_root: Path) -> None:
    event = get_event(EVENT)
    times = [when for when, _ in find_event_files(event, real_data_root)][:FRAMES]
    n_input = get_forecaster("extrapolation").n_input_frames
    feed, products = tmp_path / "feed", tmp_path / "products"
    products.mkdir()
    command = [sys.executable, "-m", "nowcast.cli", "watch", str(_watch_config(tmp_path))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOWCAST_DATA_ROOT": str(real_data_root)}
    port = free_port()
    service = service_env(tmp_path, NOWCAST_MODEL="extrapolation", NOWCAST_PRODUCTS_DIR=str(products),
                          NOWCAST_STALE_AFTER_S=str(10 * 365 * 86400))
    with server_process([sys.executable, "-m", "service", "--port", str(port)], service, tmp_path / "service.log",
                        port) as (url, _):
        first_log = tmp_path / "watch-1.log"
        with first_log.open("wb") as log:
            watcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            replay_event(event, feed, interval_s=0.5, frames=n_input + 2, root=real_data_root)
            _wait_for_products(products, 2, watcher, first_log)
        finally:
            watcher.send_signal(signal.SIGKILL)
            watcher.wait()
        before = {entry.reference_time: entry for entry in read_manifest(products)}
        replay_event(event, feed, interval_s=0.0, start=times[n_input + 2], frames=FRAMES - n_input - 2,
                     root=real_data_root)
        second = subprocess.run([*command, "--once"], capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 0, second.stderr[-3000:]

        after = {entry.reference_time: entry for entry in read_manifest(products)}
        assert sorted(after) == [pd.Timestamp(t, tz="UTC").to_pydatetime() for t in times[n_input - 1:]]
        for when, entry in before.items():
            assert after[when].written_at == entry.written_at, "a frame was forecast twice"
        assert sorted(p.name for p in products.iterdir()) == sorted([MANIFEST, *(e.file for e in after.values())])

        latest = httpx.get(f"{url}/v1/nowcasts/latest", timeout=60).json()
        newest = after[max(after)]
        assert pd.Timestamp(latest["reference_time"]) == pd.Timestamp(newest.reference_time)
        assert latest["model"] == "extrapolation" and not latest["fallback"] and len(latest["valid_times"]) == 6
        _check_point(url, products / newest.file)


def _check_point(url: str, product: Path) -> None:
    """The point answer at the wettest cell of the last forecast frame is the product's own series there."""
    import pyproj

    fields = read_product(product)
    last = np.nan_to_num(fields.forecast.values[-1], nan=-1.0)
    row, col = np.unravel_index(int(np.argmax(last)), last.shape)
    x, y = float(fields.forecast["x"].values[col]), float(fields.forecast["y"].values[row])
    lon, lat = pyproj.Transformer.from_crs(fields.forecast.attrs["projection"], "EPSG:4326",
                                           always_xy=True).transform(x, y)
    answer = httpx.get(f"{url}/v1/nowcasts/latest/point", params={"lat": lat, "lon": lon}, timeout=60)
    assert answer.status_code == 200, answer.text
    point = answer.json()
    assert (point["location"]["row"], point["location"]["col"]) == (row, col) and not point["no_data"]
    rates = [step["rate_mmh"] for step in point["forecast"]]
    np.testing.assert_allclose(rates, fields.forecast.values[:, row, col], rtol=1e-5, atol=5e-5)  # 4 decimals
    assert rates[-1] > 0.0
