"""The feed over HTTP: the newest product, its file, the forecast at one place, and how old the feed is.

Product folders are made here with the library's own writer (``nowcast.feed.write_product`` and
``write_manifest``), from synthetic rain and, where the archive is present, from real FMI frames
with their polar stereographic grid.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr
from fastapi.testclient import TestClient

from nowcast.feed import MANIFEST, ProductEntry, product_file_name, read_product, write_manifest, write_product
from nowcast.sequence import future_times, like
from nowcast.synthetic import SyntheticRain, synthetic_sequence
from service import create_app, feed
from service.core.config import Settings

pytestmark = pytest.mark.service

NO_FOLDER = "this service has no product folder (NOWCAST_PRODUCTS_DIR)"


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{"model": "persistence", "warmup_grid": 16, "fallback": False, **overrides})


@contextmanager
def running(**overrides: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings(**overrides)), raise_server_exceptions=False) as client:
        yield client


def sample(metrics: str, name: str) -> float | None:
    """The value of an unlabelled sample of a Prometheus exposition (None when absent)."""
    return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " ")), None)


def recent(minutes_ago: float) -> datetime:
    """A reference time ``minutes_ago`` before now, on a whole minute (product names go to the minute)."""
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).replace(second=0, microsecond=0)


def observed_until(reference: datetime, ny: int = 20, nx: int = 24, frames: int = 4, seed: int = 1) -> xr.DataArray:
    start = reference - timedelta(minutes=5 * (frames - 1))
    rain = SyntheticRain(ny=ny, nx=nx, frames=frames, no_data_border=2)
    return synthetic_sequence(rain, seed=seed, start=start.replace(tzinfo=None).isoformat())


def publish(folder: Path, observed: xr.DataArray, *, steps: int = 3, thresholds: tuple[float, ...] = (),
            accumulations: tuple[float, ...] = (), keep: list[ProductEntry] | None = None,
            **entry: Any) -> ProductEntry:
    """Write one product from ``observed`` (a forecast that grows the last frame) and list it in the manifest
    after ``keep``; with ``thresholds``, exceedance probabilities of the forecast, as an ensemble product has; with
    ``accumulations`` (mm), probabilities of the rain over the forecast period, falling with the threshold."""
    reference = pd.Timestamp(observed["time"].values[-1]).tz_localize("UTC").to_pydatetime()
    times = future_times(observed, steps)
    growth = 1.0 + 0.5 * np.arange(1, steps + 1, dtype=np.float32)[:, None, None]
    forecast = like(observed, observed.values[-1] * growth, times)
    probabilities = None
    if thresholds:
        values = np.stack([np.where(np.isnan(forecast.values), np.nan, (forecast.values > t) * 0.9)
                           for t in thresholds]).astype(np.float32)
        probabilities = xr.DataArray(values, dims=("threshold", *forecast.dims), coords={"threshold": list(thresholds)})
    totals = None
    if accumulations:
        rain = forecast.sum(dim="time", skipna=False).values * 5.0 / 60.0  # mm over the period
        totals = xr.DataArray(np.stack([np.clip(rain / (2.0 * t), 0.0, 1.0) for t in accumulations]).astype(np.float32),
                              dims=("accumulation_threshold", "y", "x"),
                              coords={"accumulation_threshold": list(accumulations)})
    name = product_file_name(reference)
    write_product(folder / name, observed, forecast, probabilities=probabilities, attrs={"model": "test-model"},
                  max_probabilities=None if probabilities is None else probabilities.max(dim="time") * 0.5,
                  accumulation_probabilities=totals)
    product = ProductEntry(file=name, reference_time=reference, model=entry.pop("model", "test-model@v1"),
                           valid_times=tuple(t.tz_localize("UTC").to_pydatetime() for t in times),
                           thresholds=thresholds, members=entry.pop("members", 20 if thresholds else None), **entry)
    write_manifest(folder, [*(keep or []), product], source="test")
    return product


# --- without a product folder, before the first product --------------------------------------------------


def test_without_a_product_folder_the_feed_routes_answer_404_and_readyz_has_no_feed() -> None:
    with running() as client:
        for path in ("/v1/nowcasts/latest", "/v1/nowcasts/latest/file", "/v1/nowcasts/latest/point?x=1&y=1",
                     "/v1/nowcasts/20170509T1205Z/file"):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert answer.json()["detail"] == NO_FOLDER
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text
    assert ready.status_code == 200 and "feed" not in ready.json()
    assert "nowcast_feed" not in metrics


def test_before_the_first_product_latest_is_404_and_the_feed_is_stale(tmp_path: Path) -> None:
    with running(products_dir=tmp_path / "not-yet") as client:
        answer = client.get("/v1/nowcasts/latest")
        assert answer.status_code == 404 and "no product yet" in answer.json()["detail"]
        assert client.get("/v1/nowcasts/latest/point?x=1&y=1").status_code == 404
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text
    assert ready.status_code == 200
    assert ready.json()["feed"] == {"newest_reference_time": None, "age_s": None, "stale": True,
                                    "error": "no product yet"}
    assert sample(metrics, "nowcast_feed_product_age_seconds") is None  # no sample: alert on its absence
    assert sample(metrics, "nowcast_feed_stale") == 1.0


# --- the latest product --------------------------------------------------------------------------------


def test_latest_describes_the_newest_product_and_its_links_lead_to_it(tmp_path: Path) -> None:
    older = publish(tmp_path, observed_until(recent(12)))
    reference = recent(7)
    newest = publish(tmp_path, observed_until(reference, seed=2), keep=[older], missing_frames=1, steps=4)
    with running(products_dir=tmp_path) as client:
        answer = client.get("/v1/nowcasts/latest")
        assert answer.status_code == 200, answer.text
        latest = answer.json()
        by_link = client.get(latest["links"]["file"])
        by_latest = client.get("/v1/nowcasts/latest/file")
        older_file = client.get(f"/v1/nowcasts/{feed.reference_label(older.reference_time)}/file")
        point = client.get(latest["links"]["point"], params={"x": 3500, "y": 4500})
    stamp = reference.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert latest["reference_time"] == stamp
    assert latest["model"] == "test-model@v1" and latest["fallback"] is False and latest["fallback_reason"] is None
    assert latest["valid_times"] == [(reference + timedelta(minutes=5 * k)).strftime("%Y-%m-%dT%H:%M:%SZ")
                                     for k in range(1, 5)]
    assert latest["lead_times_min"] == [5.0, 10.0, 15.0, 20.0]
    assert latest["observed_times"][-1] == stamp and len(latest["observed_times"]) == 4
    assert latest["missing_frames"] == 1 and latest["members"] is None and latest["thresholds_mmh"] == []
    assert 7 * 60 <= latest["age_s"] < 9 * 60 and latest["stale"] is False
    assert latest["grid"] == {"ny": 20, "nx": 24, "projection": "", "x": [500.0, 23500.0], "y": [500.0, 19500.0],
                              "pixel_size_m": 1000.0, "bounds_lonlat": None, "corners_lonlat": None}
    label = reference.strftime("%Y%m%dT%H%MZ")
    assert latest["links"] == {"self": "/v1/nowcasts/latest", "file": f"/v1/nowcasts/{label}/file",
                               "point": "/v1/nowcasts/latest/point"}
    on_disk = (tmp_path / newest.file).read_bytes()
    for answer in (by_link, by_latest):
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/x-netcdf"
        assert answer.headers["content-disposition"] == f'attachment; filename="{newest.file}"'
        assert answer.content == on_disk
    assert older_file.status_code == 200 and older_file.content == (tmp_path / older.file).read_bytes()
    assert point.status_code == 200 and point.json()["reference_time"] == stamp


def test_a_fallback_product_says_so(tmp_path: Path) -> None:
    publish(tmp_path, observed_until(recent(3)), fallback=True, fallback_reason="deadline", model="extrapolation")
    with running(products_dir=tmp_path) as client:
        latest = client.get("/v1/nowcasts/latest").json()
        file = client.get("/v1/nowcasts/latest/file")
    assert latest["fallback"] is True and latest["fallback_reason"] == "deadline"
    assert latest["model"] == "extrapolation"
    assert file.headers["x-nowcast-fallback"] == "deadline"


def test_product_files_are_found_by_reference_time_only(tmp_path: Path) -> None:
    publish(tmp_path, observed_until(recent(3)))
    (tmp_path / "secret.nc").write_bytes(b"not for anyone")
    with running(products_dir=tmp_path) as client:
        for bad in ("2017-05-09T12:05", "20170509T1205", "20170599T1205Z", "secret.nc", "..%2Fsecret.nc", "x" * 500):
            answer = client.get(f"/v1/nowcasts/{bad}/file")
            assert answer.status_code in (404, 422), bad
            assert answer.content != b"not for anyone"
            if answer.status_code == 422:
                assert answer.json()["field"] == "reference_time"
        unknown = client.get("/v1/nowcasts/20170509T1205Z/file")
    assert unknown.status_code == 404 and "no product of reference time 20170509T1205Z" in unknown.json()["detail"]


def test_the_feed_routes_need_the_api_key(tmp_path: Path) -> None:
    publish(tmp_path, observed_until(recent(3)))
    with running(products_dir=tmp_path, api_keys=["k1"]) as client:
        for path in ("/v1/nowcasts/latest", "/v1/nowcasts/latest/file", "/v1/nowcasts/latest/point?x=1&y=1"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"X-API-Key": "k1"}).status_code in (200, 422), path
        assert client.get("/readyz").status_code == 200  # operations endpoints stay open


# --- point forecasts -----------------------------------------------------------------------------------


def test_a_point_is_the_nearest_cell_of_the_product_with_its_probabilities(tmp_path: Path) -> None:
    entry = publish(tmp_path, observed_until(recent(3), ny=30, nx=30, seed=4), thresholds=(0.5, 4.0), steps=12)
    fields = read_product(tmp_path / entry.file)
    assert fields.probabilities is not None
    wet = np.argwhere(fields.forecast.values[0] > 1.0)
    row, col = (int(v) for v in wet[len(wet) // 2])
    x = float(fields.forecast["x"].values[col]) + 400.0  # not the centre: the nearest cell is still this one
    y = float(fields.forecast["y"].values[row]) - 300.0
    with running(products_dir=tmp_path) as client:
        answer = client.get("/v1/nowcasts/latest/point", params={"x": x, "y": y})
    assert answer.status_code == 200, answer.text
    point = answer.json()
    assert point["location"] == {"lat": None, "lon": None, "x": float(fields.forecast["x"].values[col]),
                                 "y": float(fields.forecast["y"].values[row]), "row": row, "col": col}
    assert point["no_data"] is False and point["fallback"] is False
    np.testing.assert_allclose([s["rate_mmh"] for s in point["forecast"]], fields.forecast.values[:, row, col],
                               atol=1e-4)
    np.testing.assert_allclose([s["rate_mmh"] for s in point["observed"]], fields.observed.values[:, row, col],
                               atol=1e-4)
    assert [s["lead_min"] for s in point["forecast"]] == [5.0 * k for k in range(1, 13)]
    first = point["forecast"][0]
    assert set(first["probabilities"]) == {"0.5", "4.0"}
    assert first["probabilities"]["0.5"] == pytest.approx(float(fields.probabilities.values[0, 0, row, col]))
    assert point["probability_neighbourhood_km_per_minute"] == 0.0  # the members' own fractions
    assert fields.max_probabilities is not None
    assert point["max_probabilities"] == {
        label: pytest.approx(float(fields.max_probabilities.values[k, row, col]), abs=1e-4)
        for k, label in enumerate(("0.5", "4.0"))}
    assert point["accumulation_probabilities"] is None  # a product without them: an older one, or not asked for


def test_a_point_answers_the_probabilities_of_the_rain_over_the_period_in_mm(tmp_path: Path) -> None:
    entry = publish(tmp_path, observed_until(recent(3), ny=30, nx=30, seed=4), thresholds=(0.5,), steps=12,
                    accumulations=(1.0, 5.0, 10.0))
    with xr.open_dataset(tmp_path / entry.file) as ds:  # the file itself, not the feed's reader
        variable = ds["probability_of_lwe_thickness_of_precipitation_amount_above_threshold"]
        assert variable.dims == ("accumulation_threshold", "y", "x")
        in_file = variable.values
        assert list(ds["accumulation_threshold"].values) == [1.0, 5.0, 10.0]
    between = np.argwhere((in_file[1] > 0.05) & (in_file[1] < 0.95))  # a cell neither certain nor hopeless
    row, col = (int(v) for v in between[len(between) // 2])
    dry = np.argwhere(np.isnan(in_file[0]))[0]  # the no-data border
    with running(products_dir=tmp_path) as client:
        at = {"x": float((col + 0.5) * 1000), "y": float((row + 0.5) * 1000)}
        answer = client.get("/v1/nowcasts/latest/point", params=at)
        outside = client.get("/v1/nowcasts/latest/point",
                             params={"x": float((dry[1] + 0.5) * 1000), "y": float((dry[0] + 0.5) * 1000)})
    assert answer.status_code == 200, answer.text
    point = answer.json()
    assert (point["location"]["row"], point["location"]["col"]) == (row, col)
    assert point["accumulation_probabilities"] == {
        label: pytest.approx(float(in_file[k, row, col]), abs=1e-4) for k, label in enumerate(("1.0", "5.0", "10.0"))}
    assert 0.05 < point["accumulation_probabilities"]["5.0"] < 0.95
    assert set(point["max_probabilities"]) == {"0.5"}  # beside the maximum, on its own thresholds (mm/h)
    assert outside.json()["accumulation_probabilities"] == {"1.0": None, "5.0": None, "10.0": None}
    assert "NaN" not in outside.text


def test_a_point_without_data_is_no_data_and_nulls_never_a_number(tmp_path: Path) -> None:
    entry = publish(tmp_path, observed_until(recent(3)), thresholds=(1.0,))
    fields = read_product(tmp_path / entry.file)
    assert np.isnan(fields.forecast.values[:, 0, 0]).all()  # the no-data border
    with running(products_dir=tmp_path) as client:
        answer = client.get("/v1/nowcasts/latest/point", params={"x": 500.0, "y": 500.0})
    assert answer.status_code == 200
    point = answer.json()
    assert point["no_data"] is True
    # an ensemble product keeps its thresholds, each without a probability
    assert all(s["rate_mmh"] is None and s["probabilities"] == {"1.0": None} for s in point["forecast"])
    assert all(s["rate_mmh"] is None for s in point["observed"])
    assert "NaN" not in answer.text


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"x": 99_000, "y": 500}, "x", "outside the product's grid (x from 0 to 24000, y from 0 to 20000"),
    ({"x": -1, "y": 500}, "x", "outside the product's grid"),
    ({"x": 500}, "y", "give lat and lon together, or x and y together"),
    ({"lat": 60.0}, "lon", "missing"),
    ({}, "lat", "give a place"),
    ({"lat": 60.0, "lon": 25.0, "x": 1, "y": 1}, "lat", "not both"),
    ({"lat": 60.0, "lon": 25.0}, "lat", "no projection"),
    ({"lat": 91.0, "lon": 25.0}, "lat", "less than or equal to 90"),
    ({"x": "nan", "y": 1}, "x", "finite"),
    ({"x": "inf", "y": 1}, "x", "finite"),
])
def test_a_point_outside_the_grid_or_badly_given_is_422_naming_the_problem(
    tmp_path: Path, params: dict[str, Any], field: str, words: str
) -> None:
    publish(tmp_path, observed_until(recent(3)))
    with running(products_dir=tmp_path) as client:
        answer = client.get("/v1/nowcasts/latest/point", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert words in answer.json()["detail"]


# --- reading once, following the manifest ----------------------------------------------------------------


def test_a_product_file_is_read_once_per_new_manifest_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def counted(path: Path) -> Any:
        reads.append(Path(path).name)
        return read_product(path)

    monkeypatch.setattr(feed, "read_product", counted)
    first = publish(tmp_path, observed_until(recent(12)))
    with running(products_dir=tmp_path) as client:
        for _ in range(5):
            assert client.get("/v1/nowcasts/latest/point", params={"x": 3500, "y": 4500}).status_code == 200
        assert client.get("/v1/nowcasts/latest").status_code == 200
        assert reads == [first.file]
        second = publish(tmp_path, observed_until(recent(7), seed=3), keep=[first])
        answers = [client.get("/v1/nowcasts/latest/point", params={"x": 3500, "y": 4500}) for _ in range(3)]
        assert reads == [first.file, second.file]
        assert {a.json()["reference_time"] for a in answers} == {feed.iso(second.reference_time)}
        # the same product written again (a rerun) is a new file: read again
        publish(tmp_path, observed_until(recent(7), seed=5), keep=[first])
        again = client.get("/v1/nowcasts/latest/point", params={"x": 3500, "y": 4500}).json()
    assert reads == [first.file, second.file, second.file]
    assert again["reference_time"] == feed.iso(second.reference_time)


def test_the_newest_product_and_one_other_stay_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def counted(path: Path) -> Any:
        reads.append(Path(path).name)
        return read_product(path)

    monkeypatch.setattr(feed, "read_product", counted)
    first = publish(tmp_path, observed_until(recent(17)))
    second = publish(tmp_path, observed_until(recent(12)), keep=[first])
    third = publish(tmp_path, observed_until(recent(7)), keep=[first, second])
    store = feed.ProductStore(tmp_path, 900)

    async def read(*entries: ProductEntry) -> list[datetime]:
        return [(await store.product(e)).fields.reference_time.to_pydatetime() for e in entries]

    times = asyncio.run(read(third, first, third, first, third, second, third))
    assert times == [e.reference_time.replace(tzinfo=None) for e in (third, first, third, first, third, second, third)]
    assert reads == [third.file, first.file, second.file]


def test_a_damaged_manifest_is_503_and_readiness_says_why(tmp_path: Path) -> None:
    publish(tmp_path, observed_until(recent(3)))
    (tmp_path / MANIFEST).write_text("{not json")
    with running(products_dir=tmp_path) as client:
        answer = client.get("/v1/nowcasts/latest")
        ready = client.get("/readyz")
        metrics = client.get("/metrics")
    assert answer.status_code == 503 and "manifest cannot be read" in answer.json()["detail"]
    assert "retry-after" in answer.headers
    assert str(tmp_path) not in answer.text  # server paths stay in the log
    assert ready.status_code == 200 and ready.json()["feed"]["error"] == "the product manifest cannot be read"
    assert metrics.status_code == 200 and sample(metrics.text, "nowcast_feed_stale") == 1.0


def test_a_stale_feed_keeps_the_service_ready_and_says_how_old_it_is(tmp_path: Path) -> None:
    publish(tmp_path, observed_until(recent(40)))
    with running(products_dir=tmp_path, stale_after_s=1800) as client:
        ready = client.get("/readyz")
        metrics = client.get("/metrics").text
        latest = client.get("/v1/nowcasts/latest").json()
    assert ready.status_code == 200 and ready.json()["ready"] is True
    feed_status = ready.json()["feed"]
    assert feed_status["stale"] is True and 40 * 60 <= feed_status["age_s"] < 42 * 60
    age = sample(metrics, "nowcast_feed_product_age_seconds")
    assert age is not None and 40 * 60 <= age < 42 * 60
    assert sample(metrics, "nowcast_feed_stale") == 1.0
    assert latest["stale"] is True


# --- a real grid ---------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_a_real_grid_answers_by_latitude_and_longitude(tmp_path: Path, real_data_root: Path) -> None:
    from nowcast.io.catalogue import load_event

    frames = load_event("fmi-20170509", start="2017-05-09 11:50", end="2017-05-09 12:05")
    observed = frames.isel(y=slice(600, 760), x=slice(300, 460))  # southern Finland, 160 km square
    entry = publish(tmp_path, observed, steps=3)
    fields = read_product(tmp_path / entry.file)
    to_grid = pyproj.Transformer.from_crs("EPSG:4326", observed.attrs["projection"], always_xy=True)
    wet = np.argwhere(np.isfinite(fields.forecast.values[0]) & (fields.forecast.values[0] > 0.5))
    row, col = (int(v) for v in wet[0])
    lon, lat = pyproj.Transformer.from_crs(observed.attrs["projection"], "EPSG:4326", always_xy=True).transform(
        float(observed["x"].values[col]), float(observed["y"].values[row]))
    with running(products_dir=tmp_path) as client:
        latest = client.get("/v1/nowcasts/latest").json()
        point = client.get("/v1/nowcasts/latest/point", params={"lat": lat, "lon": lon})
        far = client.get("/v1/nowcasts/latest/point", params={"lat": 48.85, "lon": 2.35})  # Paris
    grid = latest["grid"]
    assert grid["ny"] == grid["nx"] == 160 and "+proj=stere" in grid["projection"]
    assert grid["y"][0] > grid["y"][1]  # row 0 is the north edge
    assert abs(grid["pixel_size_m"] - 1000.0) < 5.0
    (lon_min, lat_min), (lon_max, lat_max) = grid["bounds_lonlat"]
    assert 19 < lon_min < lon_max < 32 and 58 < lat_min < lat_max < 64
    # clockwise from the north-west corner, on the cells' outer edges
    x_west, x_east = float(observed["x"].values[0]) - 500, float(observed["x"].values[-1]) + 500
    y_north, y_south = float(observed["y"].values[0]) + 500, float(observed["y"].values[-1]) - 500
    expected = [(x_west, y_north), (x_east, y_north), (x_east, y_south), (x_west, y_south)]
    for corner, (x, y) in zip(grid["corners_lonlat"], expected, strict=True):
        assert to_grid.transform(*corner) == pytest.approx((x, y), abs=2)
    assert point.status_code == 200, point.text
    found = point.json()
    assert (found["location"]["row"], found["location"]["col"]) == (row, col)
    assert found["location"]["lat"] == pytest.approx(lat, abs=1e-6)
    assert found["forecast"][0]["rate_mmh"] == pytest.approx(float(fields.forecast.values[0, row, col]), abs=1e-4)
    assert far.status_code == 422 and "outside the product's grid" in far.json()["detail"]
    assert "longitude" in far.json()["detail"]
