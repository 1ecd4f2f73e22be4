"""Benchmark: the forecasters' page on the loopback, in a real headless chromium.

Serves a product folder with ``python -m service`` and loads the page the way a forecaster does,
then reports:

* page weight: bytes over the wire for the page, its libraries, the atlas, the JSON and every frame
  of the loop (Chrome's own network accounting), cold (fresh server, empty browser cache);
* time to first frame and to the whole loop decoded, from navigation start, cold and with the
  server's frame cache warm (browser cache off);
* the loop: milliseconds from asking for a frame to the map having drawn it, over every frame
  several times (what bounds a smooth loop; 10 frames/s needs under 100 ms);
* the frame encoding, server side: render time and PNG size per frame, against the compact
  alternative (one class byte per cell, gzip) and the browser's time to colour such a frame itself.

The default product is 700x700 synthetic rain, 4 observed and 12 forecast frames (a 16-frame loop)
with probabilities at 1, 4 and 8 mm/h; ``--feed DIR`` serves an existing product folder instead.
``--screenshots DIR`` also saves the page (rain loop, a probability map, the point chart).

    python bench/bench_page.py
    python bench/bench_page.py --feed /path/to/products --screenshots docs/images

Prints a JSON record; ``--output FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from load_service import LocalServer  # bench/ is on the path of a script run from it

from nowcast.feed import ProductEntry, latest_product, product_file_name, read_product, write_manifest, write_product
from nowcast.files import write_text_atomically
from nowcast.render import classify, rain_scale, render_png
from nowcast.sequence import future_times, like, make_sequence
from nowcast.synthetic import SyntheticRain, synthetic_sequence

THRESHOLDS = (1.0, 4.0, 8.0)


def synthetic_feed(folder: Path, n: int, observed_frames: int, steps: int) -> Path:
    """One product of n x n synthetic rain on a 1-km grid over the Netherlands, with probabilities."""
    reference = (datetime.now(UTC) - timedelta(minutes=3)).replace(second=0, microsecond=0)
    frames = observed_frames + steps
    start = (reference - timedelta(minutes=5 * (observed_frames - 1))).replace(tzinfo=None).isoformat()
    rain = synthetic_sequence(SyntheticRain(ny=n, nx=n, frames=frames, no_data_border=10), seed=5, start=start)
    centres = (np.arange(n) - n / 2 + 0.5) * 1000.0
    full = make_sequence(rain.values, rain["time"].values, x=centres, y=centres[::-1],
                         projection="+proj=laea +lat_0=52 +lon_0=5 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs")
    observed = full.isel(time=slice(0, observed_frames))
    forecast = like(observed, full.values[observed_frames:], future_times(observed, steps))
    chance = np.stack([np.clip(forecast.values / (2.0 * t), 0.0, 1.0) for t in THRESHOLDS]).astype(np.float32)
    probabilities = xr.DataArray(chance, dims=("threshold", *forecast.dims), coords={"threshold": list(THRESHOLDS)})
    name = product_file_name(reference)
    write_product(folder / name, observed, forecast, probabilities=probabilities, attrs={"model": "bench"})
    valid = tuple(t.tz_localize("UTC").to_pydatetime() for t in pd.DatetimeIndex(forecast["time"].values))
    write_manifest(folder, [ProductEntry(file=name, reference_time=reference, model="bench-synthetic",
                                         valid_times=valid, members=8, thresholds=THRESHOLDS)], source="bench")
    return folder


@contextmanager
def service(feed: Path, stale_after_s: float | None = None) -> Iterator[str]:
    env = {"NOWCAST_MODEL": "extrapolation", "NOWCAST_WARMUP_GRID": "16", "NOWCAST_PRODUCTS_DIR": str(feed),
           "NOWCAST_ACCESS_LOG": "false"}
    if stale_after_s is not None:
        env["NOWCAST_STALE_AFTER_S"] = str(stale_after_s)
    with LocalServer(env, startup_s=120) as server:
        yield server.url


def chromium() -> Any:
    from selenium import webdriver

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        raise SystemExit("bench_page needs chromium and chromedriver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                     "--disable-gpu", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)


def wait(chrome: Any, expression: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not chrome.execute_script(f"return {expression}"):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {expression}")
        time.sleep(0.05)


def load(chrome: Any, url: str) -> dict[str, Any]:
    """Load the page once; its timings and the bytes Chrome received for it."""
    chrome.get_log("performance")
    chrome.get(url + "/")
    wait(chrome, "document.body.dataset.ready === 'true'")
    received: dict[str, float] = {}
    kinds: dict[str, str] = {}
    for entry in chrome.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.responseReceived":
            kinds[params["requestId"]] = params["response"]["url"]
        elif message["method"] == "Network.loadingFinished":
            received[params["requestId"]] = params["encodedDataLength"]
    by_kind = {"page": 0.0, "libraries": 0.0, "atlas": 0.0, "json": 0.0, "frames": 0.0}
    for request, size in received.items():
        address = kinds.get(request, "")
        kind = ("frames" if address.endswith(".png") else "atlas" if "countries" in address else
                "libraries" if "/vendor/" in address else "json" if "/v1/" in address else "page")
        by_kind[kind] += size
    timings = chrome.execute_script("return {first: nowcastPage.firstFrameMs, ready: nowcastPage.readyMs,"
                                    "frames: nowcastPage.frames.length, errors: nowcastPage.errors}")
    return {"first_frame_ms": round(timings["first"], 1), "loop_ready_ms": round(timings["ready"], 1),
            "frames": timings["frames"], "errors": timings["errors"],
            "bytes": {k: int(v) for k, v in by_kind.items()}, "total_bytes": int(sum(by_kind.values()))}


LOOP_SCRIPT = """
const done = arguments[arguments.length - 1];
const page = window.nowcastPage, map = page.map, rounds = arguments[0];
const times = [];
let i = 0;
const n = page.frames.length;
function step() {
  if (i >= rounds * n) { done(times); return; }
  const started = performance.now();
  map.once("rendercomplete", () => { times.push(performance.now() - started); i++; requestAnimationFrame(step); });
  const slider = document.getElementById("frame-slider");
  slider.value = String(i % n);
  slider.dispatchEvent(new Event("input"));
  map.render();
}
step();
"""

COLOUR_SCRIPT = """
const n = arguments[0], rounds = arguments[1], done = arguments[arguments.length - 1];
const classes = new Uint8Array(n * n);
for (let k = 0; k < classes.length; k++) classes[k] = (k * 7 + (k >> 9)) % 12;
const palette = new Uint32Array(12);
for (let c = 0; c < 12; c++) palette[c] = (255 << 24) | (c * 20 << 16) | (c * 10 << 8) | (c * 5);
const canvas = new OffscreenCanvas(n, n), ctx = canvas.getContext("2d");
(async () => {
  const times = [];
  for (let r = 0; r < rounds; r++) {
    const t = performance.now();
    const image = ctx.createImageData(n, n), out = new Uint32Array(image.data.buffer);
    for (let k = 0; k < classes.length; k++) out[k] = palette[classes[k]];
    ctx.putImageData(image, 0, 0);
    await createImageBitmap(canvas);
    times.push(performance.now() - t);
  }
  done(times);
})();
"""


def loop_timings(chrome: Any, rounds: int) -> dict[str, float]:
    chrome.set_script_timeout(120)
    times = chrome.execute_async_script(LOOP_SCRIPT, rounds)
    return {"switches": len(times), "median_ms": round(statistics.median(times), 2),
            "p95_ms": round(float(np.percentile(times, 95)), 2), "max_ms": round(max(times), 2)}


def encoding(feed: Path, chrome: Any) -> dict[str, Any]:
    """Server-side PNG per frame against a class-byte encoding coloured in the browser."""
    entry = latest_product(feed)
    fields = read_product(feed / entry.file)
    frames = fields.forecast.values
    y = fields.forecast["y"].values
    render_ms, png_bytes, compact_bytes = [], [], []
    for frame in frames:
        started = time.perf_counter()
        png = render_png(frame, y, rain_scale())
        render_ms.append((time.perf_counter() - started) * 1e3)
        png_bytes.append(len(png))
        compact_bytes.append(len(gzip.compress(classify(frame, rain_scale()).tobytes(), 6)))
    n = int(max(frames.shape[1:]))
    colour_ms = chrome.execute_async_script(COLOUR_SCRIPT, n, 10)
    return {"grid": list(frames.shape[1:]), "png_render_ms_median": round(statistics.median(render_ms), 1),
            "png_bytes_median": int(statistics.median(png_bytes)),
            "class_bytes_gzip_median": int(statistics.median(compact_bytes)),
            "browser_colour_ms_median": round(statistics.median(colour_ms), 2)}


def screenshots(chrome: Any, url: str, folder: Path) -> list[str]:
    """The page on the product: the rain loop at +30 min, a probability map, and the point chart where it rains."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    chrome.get(url + "/")
    wait(chrome, "document.body.dataset.ready === 'true'")
    index = chrome.execute_script("return nowcastPage.frames.findIndex(f => f.lead_min >= 30)")
    chrome.execute_script("const s = document.getElementById('frame-slider'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'))", max(index, 0))
    time.sleep(0.5)
    saved.append(save(chrome, folder / "page-latest.png"))
    options = chrome.find_elements(By.CSS_SELECTOR, "#field-select option")
    probability = [o for o in options if o.get_attribute("value").startswith("p:") and o.is_enabled()]
    if probability:
        probability[0].click()
        wait(chrome, "document.body.dataset.ready === 'true' && nowcastPage.frames[0].kind === 'probability'")
        chrome.execute_script("const s = document.getElementById('frame-slider'); s.value = 5;"
                              "s.dispatchEvent(new Event('input'))")
        time.sleep(0.5)
        saved.append(save(chrome, folder / "page-probability.png"))
    wet = wettest_offset(chrome)
    map_element = chrome.find_element(By.ID, "map")
    ActionChains(chrome).move_to_element_with_offset(map_element, *wet).click().perform()
    wait(chrome, "!document.getElementById('point-panel').hidden")
    time.sleep(0.5)
    saved.append(save(chrome, folder / "page-point.png"))
    return saved


def wettest_offset(chrome: Any) -> tuple[int, int]:
    """Offset from the map's centre (CSS pixels) of the grid cell with the most forecast rain in the product."""
    return tuple(chrome.execute_script("""
        const page = window.nowcastPage, map = page.map, bitmap = page.bitmaps[page.bitmaps.length - 1];
        const canvas = new OffscreenCanvas(bitmap.width, bitmap.height), ctx = canvas.getContext('2d');
        ctx.drawImage(bitmap, 0, 0);
        const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
        let best = -1, at = 0;
        for (let k = 0; k < data.length; k += 4) {
          const score = data[k + 3] > 0 && data[k] !== data[k + 1] ? (255 - data[k + 2]) + data[k] : -1;
          if (score > best) { best = score; at = k / 4; }
        }
        const e = page.index.extent, col = at % bitmap.width, row = Math.floor(at / bitmap.width);
        const coordinate = [e[0] + (col + 0.5) * (e[2] - e[0]) / bitmap.width,
                            e[3] - (row + 0.5) * (e[3] - e[1]) / bitmap.height];
        const pixel = map.getPixelFromCoordinate(coordinate), size = map.getSize();
        return [Math.round(pixel[0] - size[0] / 2), Math.round(pixel[1] - size[1] / 2)];
    """))


def save(chrome: Any, path: Path) -> str:
    """A screenshot, quantised to a palette so that docs/ stays small."""
    from PIL import Image

    chrome.save_screenshot(str(path))
    image = Image.open(path).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    image.save(path, optimize=True)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feed", type=Path, help="serve this product folder (default: a synthetic 700x700 one)")
    parser.add_argument("--size", type=int, default=700)
    parser.add_argument("--observed", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5, help="times the loop is stepped through")
    parser.add_argument("--screenshots", type=Path, help="save screenshots of the page into this folder")
    parser.add_argument("--stale-after-s", type=float,
                        help="the service's NOWCAST_STALE_AFTER_S (an archived event is stale by years)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        feed = args.feed or synthetic_feed(Path(tmp), args.size, args.observed, args.steps)
        chrome = chromium()
        try:
            with service(feed, args.stale_after_s) as url:
                chrome.execute_cdp_cmd("Network.enable", {})
                chrome.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
                cold = load(chrome, url)
                warm = load(chrome, url)
                record = {"product": str(feed if args.feed else f"synthetic {args.size}x{args.size}"),
                          "cold": cold, "server_warm": warm, "loop": loop_timings(chrome, args.rounds),
                          "encoding": encoding(feed, chrome)}
                if args.screenshots:
                    chrome.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
                    chrome.set_window_size(1400, 1000)
                    record["screenshots"] = screenshots(chrome, url, args.screenshots)
        finally:
            chrome.quit()
    text = json.dumps(record, indent=1)
    print(text)
    if args.output:
        write_text_atomically(args.output, text + "\n")


if __name__ == "__main__":
    main()
