"""The forecasters' page as a person uses it: a real headless chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium) against a real uvicorn process serving a product folder.

The page loads without console errors, the loop plays through every frame, the slider moves the
valid time, a click on the map shows the forecast there with the numbers of the point endpoint,
a dropped file is forecast, a stale or fallback product says so, and an API key typed once is kept
for the tab and sent in a header, never in a URL. Where no chromium can be found the tests skip
and say how to install it. With the real archive present, the page shows a real radar grid in its
own projection (FMI's polar stereographic) and the map agrees with pyproj on where a click is.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from page_products import minutes_ago, projected_sequence, publish
from test_page import add_accumulations
from test_service_process import free_port, server_process

from nowcast.io.netcdf import to_netcdf_bytes

pytestmark = [pytest.mark.service, pytest.mark.browser]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
KEY = "tab-key-0123"


def chromium_or_skip() -> tuple[str, str]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no chromium and chromium-driver on this machine (apt-get install chromium chromium-driver; "
                    ".ci/run installs them)")
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, driver = chromium_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
                     "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    chrome = webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


def serve(folder: Path, log: Path, **env: str) -> Any:
    port = free_port()
    environment = {"NOWCAST_MODEL": "extrapolation", "NOWCAST_WARMUP_GRID": "16", "NOWCAST_PORT": str(port),
                   "NOWCAST_PRODUCTS_DIR": str(folder), "NOWCAST_ACCESS_LOG": "false", **env}
    return server_process([sys.executable, "-m", "service"], environment, log, port)


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A fresh ensemble product (probabilities at 1, 4 and 8 mm/h, and of the rain over the forecast period at 1, 5
    and 10 mm) of 120x120 synthetic rain; no keys."""
    folder = tmp_path_factory.mktemp("feed")
    add_accumulations(folder, publish(folder, minutes_ago(4), n=120))
    with serve(folder, folder.parent / "server.log") as (url, _pid):
        yield url, folder


@pytest.fixture(scope="module")
def stale_feed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A two-hour-old product of the extrapolation fallback without members, behind an API key, on a grid
    without a projection."""
    folder = tmp_path_factory.mktemp("stale")
    publish(folder, minutes_ago(120), n=64, thresholds=(), model="extrapolation", fallback=True,
            fallback_reason="the model missed its deadline of 30 s", projection="")
    with serve(folder, folder.parent / "stale-server.log", NOWCAST_API_KEYS=KEY) as (url, _pid):
        yield url, folder


def write_feed_product(folder: Path, observed: Any, forecast: Any, *, model: str) -> None:
    """One deterministic product of ``observed`` and its ``forecast``, listed alone in ``folder``'s manifest."""
    import pandas as pd

    from nowcast.feed import ProductEntry, product_file_name, write_manifest, write_product

    folder.mkdir(parents=True, exist_ok=True)
    moment = pd.Timestamp(observed["time"].values[-1]).tz_localize("UTC").to_pydatetime()
    name = product_file_name(moment)
    write_product(folder / name, observed, forecast, attrs={"model": model})
    valid = tuple(t.tz_localize("UTC").to_pydatetime() for t in pd.DatetimeIndex(forecast["time"].values))
    write_manifest(folder, [ProductEntry(file=name, reference_time=moment, model=model, valid_times=valid)])


def wait_for(chrome: Any, condition: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    state = chrome.execute_script("return window.nowcastPage && {errors: nowcastPage.errors, mode: nowcastPage.mode}")
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}; page state {state}")


def open_page(chrome: Any, url: str) -> None:
    chrome.get(url)
    wait_for(chrome, lambda: chrome.execute_script("return document.body.dataset.ready === 'true'"),
             "every frame of the loop to load")


def page_state(chrome: Any, expression: str) -> Any:
    return chrome.execute_script(f"return {expression}")


def console_errors(chrome: Any) -> list[dict[str, Any]]:
    return [entry for entry in chrome.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def requested_urls(chrome: Any) -> list[tuple[str, dict[str, str]]]:
    """(URL, request headers with lower-case names) of each request the page made since the last call."""
    found = []
    for entry in chrome.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            request = message["params"]["request"]
            found.append((request["url"], {k.lower(): v for k, v in request.get("headers", {}).items()}))
    return found


# --- the live feed ---------------------------------------------------------------------------------------


def test_the_page_loads_without_console_errors_and_shows_the_product(browser: Any, feed: tuple[str, Path]) -> None:
    url, _ = feed
    browser.get_log("browser")
    open_page(browser, url + "/")
    assert console_errors(browser) == []
    assert page_state(browser, "nowcastPage.errors") == []
    info = browser.find_element(By.ID, "product-info")
    assert "page-test@1" in info.text and "(8 members)" in info.text and "min old" in info.text
    assert page_state(browser, "nowcastPage.frames.length") == 24  # 12 observed, 12 forecast
    assert page_state(browser, "nowcastPage.georeferenced") is True
    assert page_state(browser, "nowcastPage.drawn.length") >= 1
    # borders, coastlines and graticule came out of the packaged atlas, projected onto the grid's map
    assert page_state(browser, "document.querySelectorAll('#banners .banner').length") == 0
    legend = browser.find_element(By.ID, "legend").text
    assert "≥ 64 mm/h" in legend and "0.1 – 0.5 mm/h" in legend and "no data" in legend
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#field-select option")]
    assert options == ["rain", "p:1", "p:4", "p:8", "m:1", "m:4", "m:8", "a:1", "a:5", "a:10"]


def test_the_loop_plays_through_every_frame_and_the_slider_moves_valid_time(browser: Any,
                                                                             feed: tuple[str, Path]) -> None:
    url, _ = feed
    open_page(browser, url + "/")
    index = httpx.get(f"{url}/v1/nowcasts/latest/frames").json()
    times = [f["time"] for f in index["observed"] + index["forecast"]]
    browser.find_element(By.CSS_SELECTOR, "#speed option[value='200']").click()
    browser.execute_script("nowcastPage.drawn.length = 0")
    browser.find_element(By.ID, "play").click()
    seen: set[str] = set()

    def every_frame_shown() -> bool:
        seen.add(browser.find_element(By.ID, "valid-time").get_attribute("data-time"))
        return set(times) <= seen and set(page_state(browser, "nowcastPage.drawn")) >= set(range(len(times)))

    wait_for(browser, every_frame_shown, "the loop to show every frame", timeout_s=40)
    browser.find_element(By.ID, "play").click()
    assert page_state(browser, "nowcastPage.playing") is False
    slider = browser.find_element(By.ID, "frame-slider")
    for position in (0, 11, 12, 23):
        browser.execute_script("arguments[0].value = arguments[1];"
                               "arguments[0].dispatchEvent(new Event('input'))", slider, position)
        valid = browser.find_element(By.ID, "valid-time")
        assert valid.get_attribute("data-time") == times[position]
        lead = browser.find_element(By.ID, "lead-time").text
        minutes = 5 * (position - 11)
        assert lead == ("observed, newest frame" if minutes == 0 else
                        f"observed, {minutes} min" if minutes < 0 else f"forecast +{minutes} min")
        assert page_state(browser, "nowcastPage.drawn[nowcastPage.drawn.length - 1]") == position
    assert console_errors(browser) == []


def test_the_forecasts_maximum_is_one_frame_over_the_whole_forecast(browser: Any, feed: tuple[str, Path]) -> None:
    url, _ = feed
    open_page(browser, url + "/")
    index = httpx.get(f"{url}/v1/nowcasts/latest/frames").json()
    browser.find_element(By.CSS_SELECTOR, "#field-select option[value='m:8']").click()
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.ready === 'true' && "
                                                  "nowcastPage.frames[0].kind === 'max_probability'"), "the maximum")
    assert page_state(browser, "nowcastPage.frames.length") == 1
    assert page_state(browser, "nowcastPage.frames[0].url").endswith(index["probabilities"][2]["max_frame"])
    assert browser.find_element(By.ID, "lead-time").text == "at some time from +5 to +60 min"
    legend = browser.find_element(By.ID, "legend").text
    assert "P(rain rate > 8 mm/h at some time)" in legend and "fewer than 4 members with data" in legend
    assert console_errors(browser) == []


def test_the_rain_over_the_forecast_period_is_one_frame_a_threshold_in_mm(browser: Any,
                                                                         feed: tuple[str, Path]) -> None:
    url, _ = feed
    open_page(browser, url + "/")
    index = httpx.get(f"{url}/v1/nowcasts/latest/frames").json()
    option = browser.find_element(By.CSS_SELECTOR, "#field-select option[value='a:10']")
    assert option.text == "probability of rain > 10 mm in total over the forecast"
    option.click()
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.ready === 'true' && "
                                                  "nowcastPage.frames[0].kind === 'accumulation_probability'"),
             "the rain over the period")
    assert page_state(browser, "nowcastPage.frames.length") == 1
    assert page_state(browser, "nowcastPage.frames[0].url").endswith(index["accumulation_probabilities"][2]["frame"])
    assert page_state(browser, "nowcastPage.drawn.length") >= 1
    assert browser.find_element(By.ID, "lead-time").text == "in total from now to +60 min"
    legend = browser.find_element(By.ID, "legend").text
    assert "P(rain > 10 mm in total)" in legend and "fewer than 4 members with data" in legend
    assert console_errors(browser) == []


def test_a_click_on_the_map_shows_the_point_forecast_of_the_endpoint(browser: Any, feed: tuple[str, Path]) -> None:
    url, _ = feed
    open_page(browser, url + "/")
    browser.find_element(By.CSS_SELECTOR, "#field-select option[value='p:4']").click()
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.ready === 'true' && "
                                                  "nowcastPage.frames[0].kind === 'probability'"), "probability frames")
    legend = browser.find_element(By.ID, "legend").text
    assert "P(rain rate > 4 mm/h)" in legend and "95 % – 100 %" in legend
    assert "no data, or fewer than 4 members with data" in legend  # the product's minimum_members_with_data
    map_element = browser.find_element(By.ID, "map")
    ActionChains(browser).move_to_element_with_offset(map_element, 30, 20).click().perform()
    panel = wait_for(browser, lambda: (p := browser.find_element(By.ID, "point-panel")).is_displayed() and p,
                     "the point panel")
    query = panel.get_attribute("data-query")
    assert query.startswith("lat=") and "&lon=" in query
    expected = httpx.get(f"{url}/v1/nowcasts/latest/point?{query}").json()
    rows = browser.find_elements(By.CSS_SELECTOR, "#point-table tr.forecast")
    assert len(rows) == len(expected["forecast"]) == 12
    for row, step in zip(rows, expected["forecast"], strict=True):
        cells = row.find_elements(By.TAG_NAME, "td")
        assert row.get_attribute("data-time") == step["time"]
        shown_rate = cells[2].get_attribute("data-value")
        assert (shown_rate == "" and step["rate_mmh"] is None) or float(shown_rate) == step["rate_mmh"]
        for cell, threshold in zip(cells[3:], ("1.0", "4.0", "8.0"), strict=True):
            value = step["probabilities"][threshold]
            assert (cell.get_attribute("data-value") == "" and value is None) or \
                float(cell.get_attribute("data-value")) == value
            assert cell.text == ("–" if value is None else f"{value:.2f}")
    assert browser.find_elements(By.CSS_SELECTOR, "#point-chart canvas")  # the chart is drawn
    # the whole forecast at the place: the maximum's and the total's probabilities, as the endpoint gives them
    for kind, key in (("max", "max_probabilities"), ("accumulation", "accumulation_probabilities")):
        shown = browser.find_elements(By.CSS_SELECTOR, f"#point-period div[data-kind='{kind}'] span")
        assert [span.get_attribute("data-threshold") for span in shown] == list(expected[key])
        for span, value in zip(shown, expected[key].values(), strict=True):
            assert span.get_attribute("data-value") == ("" if value is None else str(value)) or \
                float(span.get_attribute("data-value")) == value
    period = browser.find_element(By.ID, "point-period").text
    assert "From now to +60 min:" in period and "P(rain > 10 mm in total)" in period
    assert "P(rate > 4 mm/h at some time)" in period
    assert console_errors(browser) == []


def test_a_dropped_file_is_forecast_and_shown_like_the_feed(browser: Any, feed: tuple[str, Path],
                                                            tmp_path: Path) -> None:
    url, _ = feed
    open_page(browser, url + "/")
    radar = tmp_path / "radar sequence.nc"
    radar.write_bytes(to_netcdf_bytes(projected_sequence(minutes_ago(60), n=80, frames=12, seed=7)
                                      .isel(time=slice(0, 6))))
    file_input = browser.find_element(By.ID, "file-input")
    file_input.send_keys(str(radar))  # chosen with the file dialog
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.adhoc") in ("done", "failed"), "the forecast")
    assert page_state(browser, "document.body.dataset.adhoc") == "done", \
        browser.find_element(By.ID, "adhoc-status").text
    browser.find_element(By.ID, "back-to-feed").click()
    wait_for(browser, lambda: page_state(browser, "nowcastPage.mode === 'feed' && nowcastPage.index && "
                                                  "nowcastPage.index.shape[0] === 120"), "the feed again")
    # then dropped: the same file handed to the drop zone as a drag and drop hands it
    browser.execute_script("document.body.dataset.adhoc = ''; const dt = new DataTransfer();"
                           "dt.items.add(arguments[0].files[0]);"
                           "document.getElementById('drop-zone').dispatchEvent("
                           "new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}))", file_input)
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.adhoc") in ("done", "failed"), "the forecast")
    assert page_state(browser, "document.body.dataset.adhoc") == "done", \
        browser.find_element(By.ID, "adhoc-status").text
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.ready === 'true'"), "the ad-hoc frames")
    assert page_state(browser, "nowcastPage.mode") == "adhoc"
    assert page_state(browser, "nowcastPage.frames.length") == 6 + 12
    assert page_state(browser, "nowcastPage.index.shape") == [80, 80]
    banner = browser.find_element(By.CSS_SELECTOR, "#banners .banner.adhoc").text
    assert "radar sequence.nc" in banner
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "map")).click().perform()
    wait_for(browser, lambda: browser.find_element(By.ID, "point-panel").is_displayed(), "the ad-hoc point panel")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#point-table tr.forecast")) == 12
    browser.find_element(By.ID, "back-to-feed").click()
    wait_for(browser, lambda: page_state(browser, "nowcastPage.mode === 'feed' && nowcastPage.index && "
                                                  "nowcastPage.index.shape[0] === 120"), "the feed again")
    assert console_errors(browser) == []


def test_a_handful_of_dropped_odim_files_is_forecast(browser: Any, feed: tuple[str, Path], tmp_path: Path) -> None:
    from test_page import odim_files

    url, _ = feed
    open_page(browser, url + "/")
    files = odim_files(tmp_path, n=40, frames=4)
    browser.find_element(By.ID, "file-input").send_keys("\n".join(str(f) for f in files))
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.adhoc") in ("done", "failed"), "the forecast")
    assert page_state(browser, "document.body.dataset.adhoc") == "done", \
        browser.find_element(By.ID, "adhoc-status").text
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.ready === 'true'"), "the ad-hoc frames")
    assert page_state(browser, "nowcastPage.index.shape") == [40, 40]
    assert page_state(browser, "nowcastPage.index.observed.map(f => f.time)") == [
        "2024-06-01T12:00:00Z", "2024-06-01T12:05:00Z", "2024-06-01T12:10:00Z", "2024-06-01T12:15:00Z"]
    assert "4 radar files" in browser.find_element(By.CSS_SELECTOR, "#banners .banner.adhoc").text
    assert console_errors(browser) == []


# --- a stale fallback product behind a key -----------------------------------------------------------------


def test_a_stale_fallback_product_without_members_says_so_and_the_key_stays_in_a_header(
        browser: Any, stale_feed: tuple[str, Path]) -> None:
    url, _ = stale_feed
    browser.get(url + "/")
    form = wait_for(browser, lambda: (f := browser.find_element(By.ID, "key-form")).is_displayed() and f,
                    "the key form")
    assert "missing API key" in form.text
    browser.find_element(By.ID, "key-input").send_keys(KEY)
    requested_urls(browser)  # forget what came before the key
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.ready === 'true'"), "the frames")
    stale = browser.find_element(By.CSS_SELECTOR, "#banners .banner.stale").text
    assert stale.startswith("Feed stale") and "2.0 h old" in stale
    fallback = browser.find_element(By.CSS_SELECTOR, "#banners .banner.fallback").text
    assert "extrapolation fallback" in fallback and "missed its deadline" in fallback
    options = browser.find_elements(By.CSS_SELECTOR, "#field-select option")
    assert [o.get_attribute("value") for o in options] == ["rain", "none"] and not options[1].is_enabled()
    assert "no map projection" in browser.find_element(By.CSS_SELECTOR, "#banners .banner.info").text
    assert page_state(browser, f"sessionStorage.getItem('nowcast.apiKey') === '{KEY}'")
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "map")).click().perform()
    wait_for(browser, lambda: browser.find_element(By.ID, "point-panel").is_displayed(), "the point panel")
    assert page_state(browser, "nowcastPage.pointQuery").startswith("x=")  # no latitude without a projection
    assert len(browser.find_elements(By.CSS_SELECTOR, "#point-table tr.forecast")) == 12
    requests = requested_urls(browser)
    data_requests = [(u, h) for u, h in requests if "/v1/" in u]
    assert data_requests and all(h.get("x-api-key") == KEY for _, h in data_requests)
    assert all(KEY not in u for u, _ in requests)
    # kept for the tab: a reload asks for nothing
    browser.refresh()
    wait_for(browser, lambda: page_state(browser, "document.body.dataset.ready === 'true'"), "the frames again")
    assert not browser.find_element(By.ID, "key-form").is_displayed()


# --- a real radar grid -------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.slow
def test_a_real_radar_grid_is_drawn_in_its_own_projection(browser: Any, real_data_root: Path,
                                                          tmp_path: Path) -> None:
    import pyproj

    from nowcast.forecasters import get_forecaster
    from nowcast.io.catalogue import load_event

    sequence = load_event("fmi-20160928", real_data_root, start="2016-09-28T16:00", end="2016-09-28T16:15")
    forecast = get_forecaster("extrapolation").forecast(sequence, 6)
    folder = tmp_path / "feed"
    write_feed_product(folder, sequence, forecast, model="extrapolation")
    with serve(folder, tmp_path / "server.log") as (url, _pid):
        open_page(browser, url + "/")
        assert page_state(browser, "nowcastPage.georeferenced") is True
        ActionChains(browser).move_to_element(browser.find_element(By.ID, "map")).click().perform()
        wait_for(browser, lambda: browser.find_element(By.ID, "point-panel").is_displayed(), "the point panel")
        x, y = page_state(browser, "nowcastPage.clicked")
        query = dict(part.split("=") for part in page_state(browser, "nowcastPage.pointQuery").split("&"))
        crs = pyproj.CRS.from_user_input(forecast.attrs["projection"])
        lon, lat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
        assert abs(float(query["lon"]) - lon) < 1e-4 and abs(float(query["lat"]) - lat) < 1e-4
        assert 55.0 < lat < 71.0 and 15.0 < lon < 35.0  # Finland
        if os.environ.get("NOWCAST_PAGE_SCREENSHOTS"):
            browser.save_screenshot(str(Path(os.environ["NOWCAST_PAGE_SCREENSHOTS"]) / "page-fmi.png"))
        assert np.isfinite([x, y]).all()
