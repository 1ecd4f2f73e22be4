"""The forecasters' page without a browser: its map frames (colours, orientation, no-data hatch, caching),
their routes and keys, the page's own files, and ad-hoc forecasts of a posted file.

The browser itself is driven in tests/test_page_browser.py.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from matplotlib.colors import to_rgba
from page_products import PROJECTION, THRESHOLDS, minutes_ago, projected_sequence, publish
from PIL import Image

from nowcast.feed import read_product
from nowcast.io.netcdf import to_netcdf_bytes
from nowcast.plots import probability_style, rain_style
from nowcast.render import classify, image_extent, map_projection, probability_scale, rain_scale, render_png
from service import create_app
from service.core.config import Settings
from service.feed import reference_label

pytestmark = pytest.mark.service

#: the thresholds (mm over the forecast period) of the accumulation probabilities the watcher writes by default
ACCUMULATIONS_MM = (1.0, 5.0, 10.0)


def add_accumulations(folder: Path, entry: Any, thresholds: tuple[float, ...] = ACCUMULATIONS_MM) -> None:
    """Write ``entry``'s product again with the feed's own writer, now with probabilities of the rain over the
    forecast period at ``thresholds`` mm (falling with the threshold, as an ensemble's; 4 members needed, as of 8)."""
    import xarray as xr

    from nowcast.feed import write_product

    path = folder / entry.file
    fields = read_product(path)
    rain = fields.forecast.sum(dim="time", skipna=False).values * 5.0 / 60.0  # mm over the period
    values = np.stack([np.clip(rain / (2.0 * t), 0.0, 1.0) for t in thresholds]).astype(np.float32)
    totals = xr.DataArray(values, dims=("accumulation_threshold", "y", "x"),
                          coords={"accumulation_threshold": list(thresholds)}, attrs={"minimum_members_with_data": 4})
    write_product(path, fields.observed, fields.forecast, probabilities=fields.probabilities,
                  max_probabilities=fields.max_probabilities, accumulation_probabilities=totals,
                  attrs={"model": "page-test"})


def rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def colour(hex_colour: str) -> tuple[int, ...]:
    return tuple(round(255 * c) for c in to_rgba(hex_colour))


# --- rendering ---------------------------------------------------------------------------------------------


def test_the_map_scales_are_the_plots_scales() -> None:
    rain, probability = rain_scale(), probability_scale()
    cmap, norm = rain_style()["cmap"], rain_style()["norm"]
    assert rain.levels == tuple(norm.boundaries) and len(rain.colours) == cmap.N
    assert [colour(c) for c in rain.colours] == [tuple(round(255 * v) for v in cmap(i)) for i in range(cmap.N)]
    assert probability.levels == tuple(probability_style()["norm"].boundaries)


def test_a_frame_has_the_class_colours_is_transparent_where_dry_and_hatched_where_no_data() -> None:
    scale = rain_scale()
    field = np.full((3, 8), np.nan, dtype=np.float32)  # the last row: no data all along
    field[0, :4], field[1, :3] = [0.0, 0.05, 0.1, 0.7], [3.0, 64.0, 500.0]
    pixels = rgba(render_png(field, np.array([3.0, 2.0, 1.0]), scale))  # y falls with the row: as stored
    assert pixels[0, 0, 3] == 0 and pixels[0, 1, 3] == 0  # dry and below the first level: nothing drawn
    assert tuple(pixels[0, 2]) == colour(scale.colours[0])  # 0.1 opens the first class
    assert tuple(pixels[0, 3]) == colour(scale.colours[1])
    assert tuple(pixels[1, 0]) == colour(scale.colours[3])  # 2-4 mm/h
    assert tuple(pixels[1, 1]) == tuple(pixels[1, 2]) == colour(scale.over)  # the last level and above
    no_data = {tuple(p) for p in pixels[2]} | {tuple(pixels[1, 3])}
    assert len(no_data) == 2 and all(p[3] > 0 and p[0] == p[1] == p[2] for p in no_data)  # two greys: a hatch


def test_a_frame_is_north_up_whichever_way_the_rows_run() -> None:
    field = np.zeros((4, 3), dtype=np.float32)
    field[0, 0] = 10.0  # the first row
    down = rgba(render_png(field, np.array([4.0, 3.0, 2.0, 1.0]), rain_scale()))
    up = rgba(render_png(field, np.array([1.0, 2.0, 3.0, 4.0]), rain_scale()))
    assert down[0, 0, 3] > 0 and down[-1, 0, 3] == 0  # rows already north to south: kept
    assert up[-1, 0, 3] > 0 and up[0, 0, 3] == 0  # first row is the southernmost: drawn at the bottom


def test_probabilities_of_one_take_the_top_class_and_bad_fields_are_refused() -> None:
    scale = probability_scale()
    n = len(scale.levels)
    assert classify(np.array([[1.0, 0.97, 0.01]]), scale).tolist() == [[n, n - 1, 0]]  # 0.95-1, and 1 itself
    assert colour(scale.over) == colour(scale.colours[-1])  # ... drawn alike
    with pytest.raises(Exception, match="2-D"):
        classify(np.zeros((2, 2, 2)), scale)
    with pytest.raises(Exception, match="2x2"):
        image_extent(np.array([1.0]), np.array([1.0, 2.0]))
    assert image_extent(np.array([0.5, 1.5, 2.5]), np.array([10.0, 8.0])) == (0.0, 7.0, 3.0, 11.0)


# --- the service's routes ----------------------------------------------------------------------------------


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{"model": "extrapolation", "warmup_grid": 16, **overrides})


@contextmanager
def running(**overrides: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings(**overrides)), raise_server_exceptions=False) as client:
        yield client


def test_the_frame_index_places_the_grid_and_lists_every_frame(tmp_path: Path) -> None:
    entry = publish(tmp_path, minutes_ago(3), n=40, observed_frames=4, steps=6)
    with running(products_dir=tmp_path) as client:
        index = client.get("/v1/nowcasts/latest/frames").json()
        label = reference_label(entry.reference_time)
        assert index["projection"] == PROJECTION and index["shape"] == [40, 40]
        assert index["extent"] == [-20000.0, -20000.0, 20000.0, 20000.0]
        assert [f["lead_min"] for f in index["observed"]] == [-15.0, -10.0, -5.0, 0.0]
        assert [f["lead_min"] for f in index["forecast"]] == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
        assert index["forecast"][2]["url"] == f"/v1/nowcasts/{label}/frames/forecast/2.png"
        assert [p["threshold_mmh"] for p in index["probabilities"]] == list(THRESHOLDS)
        assert {p["neighbourhood_km_per_minute"] for p in index["probabilities"]} == {0.0}  # raw fractions
        assert {p["minimum_members_with_data"] for p in index["probabilities"]} == {4}
        assert index["probabilities"][2]["max_frame"] == f"/v1/nowcasts/{label}/frames/max_probability/8/0.png"
        assert index["probabilities"][1]["frames"][5] == f"/v1/nowcasts/{label}/frames/probability/4/5.png"
        assert index["scales"]["rain"] == rain_scale().legend()
        fields = read_product(tmp_path / entry.file)
        for url, field, scale in [(index["forecast"][2]["url"], fields.forecast.values[2], rain_scale()),
                                  (index["observed"][0]["url"], fields.observed.values[0], rain_scale()),
                                  (index["probabilities"][1]["frames"][5],
                                   fields.probabilities.values[1, 5], probability_scale()),
                                  (index["probabilities"][1]["max_frame"],
                                   fields.max_probabilities.values[1], probability_scale())]:
            answer = client.get(url)
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
            assert "immutable" in answer.headers["cache-control"]
            assert answer.content == render_png(field, fields.forecast["y"].values, scale)


def test_frames_that_do_not_exist_are_404_with_the_reason(tmp_path: Path) -> None:
    entry = publish(tmp_path, minutes_ago(3), n=24, observed_frames=3, steps=3)
    label = reference_label(entry.reference_time)
    with running(products_dir=tmp_path) as client:
        for path, reason in [(f"/v1/nowcasts/{label}/frames/forecast/3.png", "the product has 3"),
                             (f"/v1/nowcasts/{label}/frames/forecast/-1.png", "no forecast frame -1"),
                             (f"/v1/nowcasts/{label}/frames/members/0.png", "no frames of kind 'members'"),
                             (f"/v1/nowcasts/{label}/frames/probability/0.png", "probability frames are under"),
                             (f"/v1/nowcasts/{label}/frames/probability/2/0.png", "it has 1, 4, 8"),
                             (f"/v1/nowcasts/{label}/frames/max_probability/4/1.png", "is one frame, 0"),
                             (f"/v1/nowcasts/{label}/frames/max_probability/2/0.png", "it has 1, 4, 8"),
                             (f"/v1/nowcasts/{label}/frames/max_probability/0.png", "max_probability frames are"),
                             (f"/v1/nowcasts/{label}/frames/accumulation_probability/5/0.png",
                              "this product has no probabilities of the rain over the forecast period"),
                             (f"/v1/nowcasts/{label}/frames/forecast/4/0.png", "no frames of kind 'forecast' at a"),
                             ("/v1/nowcasts/20170509T1205Z/frames/forecast/0.png", "no product of reference time")]:
            answer = client.get(path)
            assert answer.status_code == 404 and reason in answer.json()["detail"], (path, answer.text)
        assert client.get(f"/v1/nowcasts/{label}/frames/forecast/x.png").status_code == 422
        assert client.get("/v1/nowcasts/..%2F..%2Fetc/frames/forecast/0.png").status_code in (404, 422)
    with running() as client:
        assert client.get("/v1/nowcasts/latest/frames").status_code == 404


def test_the_rain_over_the_forecast_period_is_one_frame_a_threshold_in_mm(tmp_path: Path) -> None:
    entry = publish(tmp_path, minutes_ago(3), n=40, observed_frames=4, steps=6)
    add_accumulations(tmp_path, entry)
    label = reference_label(entry.reference_time)
    with running(products_dir=tmp_path) as client:
        index = client.get("/v1/nowcasts/latest/frames").json()
        assert index["accumulation_probabilities"] == [
            {"threshold_mm": t, "minimum_members_with_data": 4,
             "frame": f"/v1/nowcasts/{label}/frames/accumulation_probability/{t:g}/0.png"} for t in ACCUMULATIONS_MM]
        assert [p["threshold_mmh"] for p in index["probabilities"]] == list(THRESHOLDS)  # beside, not instead
        fields = read_product(tmp_path / entry.file)
        assert fields.accumulation_probabilities is not None
        for k, item in enumerate(index["accumulation_probabilities"]):
            answer = client.get(item["frame"])
            assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
            assert answer.content == render_png(fields.accumulation_probabilities.values[k],
                                                fields.forecast["y"].values, probability_scale())
        assert client.get(index["accumulation_probabilities"][0]["frame"]).content != \
            client.get(index["accumulation_probabilities"][2]["frame"]).content  # each threshold its own field
        for path, reason in [(f"/v1/nowcasts/{label}/frames/accumulation_probability/2/0.png", "it has 1, 5, 10"),
                             (f"/v1/nowcasts/{label}/frames/accumulation_probability/4/0.png", "'4' mm in this"),
                             (f"/v1/nowcasts/{label}/frames/accumulation_probability/5/1.png", "is one frame, 0"),
                             (f"/v1/nowcasts/{label}/frames/accumulation_probability/0.png",
                              "accumulation_probability frames are under")]:
            answer = client.get(path)
            assert answer.status_code == 404 and reason in answer.json()["detail"], (path, answer.text)
    assert "accumulation_probability" in client.app.openapi()["paths"]["/v1/nowcasts/latest/frames"]["get"][
        "description"]


def test_a_product_without_members_has_no_probability_frames(tmp_path: Path) -> None:
    entry = publish(tmp_path, minutes_ago(3), n=24, observed_frames=3, steps=3, thresholds=())
    with running(products_dir=tmp_path) as client:
        index = client.get("/v1/nowcasts/latest/frames").json()
        assert index["probabilities"] == [] and len(index["forecast"]) == 3
        assert index["accumulation_probabilities"] == []
        answer = client.get(f"/v1/nowcasts/{reference_label(entry.reference_time)}/frames/probability/1/0.png")
        assert answer.status_code == 404 and "without ensemble members" in answer.json()["detail"]


def test_the_page_is_open_and_its_data_needs_the_key(tmp_path: Path) -> None:
    entry = publish(tmp_path, minutes_ago(3), n=24, observed_frames=3, steps=3)
    label = reference_label(entry.reference_time)
    with running(products_dir=tmp_path, api_keys=["k1"]) as client:
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "k1" not in page.text and "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        for path in ["/static/app.js", "/static/style.css", "/static/vendor/ol.js", "/static/vendor/VERSIONS.json",
                     "/static/vendor/LICENSES/ol.txt", "/static/vendor/countries-50m.json"]:
            assert client.get(path).status_code == 200, path
        for path in ["/static/../api/main.py", "/static/%2e%2e/api/main.py", "/static/vendor", "/static/nope.js",
                     "/static/../../../pyproject.toml"]:
            assert client.get(path).status_code == 404, path
        for path in ["/v1/nowcasts/latest/frames", f"/v1/nowcasts/{label}/frames/forecast/0.png"]:
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"X-API-Key": "k1"}).status_code == 200, path
        assert client.post("/v1/nowcasts/adhoc", content=b"x").status_code == 401


def test_every_library_file_of_the_page_matches_its_pinned_hash() -> None:
    import hashlib
    import json

    vendor = Path(__file__).resolve().parent.parent / "service" / "static" / "vendor"
    for package in json.loads((vendor / "VERSIONS.json").read_text())["packages"]:
        assert package["version"] and package["license"]
        for target in package["files"].values():
            path = vendor / target["to"]
            assert path.is_file(), f"{path} missing: run scripts/vendor_web.py (scripts/setup.sh does)"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == target["sha256"], path


# --- ad-hoc forecasts --------------------------------------------------------------------------------------


def radar_file(n: int = 48, frames: int = 4) -> bytes:
    sequence = projected_sequence(minutes_ago(30), n=n, frames=2 * frames).isel(time=slice(0, frames))
    return to_netcdf_bytes(sequence)


def test_an_adhoc_forecast_gives_frames_and_points_like_the_feed() -> None:
    body = radar_file()
    with running() as client:
        answer = client.post("/v1/nowcasts/adhoc?steps=4", content=body,
                             headers={"Content-Type": "application/x-netcdf"})
        assert answer.status_code == 200, answer.text
        made = answer.json()
        assert made["model"] == "extrapolation" and made["fallback"] is False and made["probabilities"] == []
        assert made["accumulation_probabilities"] == []
        assert len(made["observed"]) == 4 and [f["lead_min"] for f in made["forecast"]] == [5.0, 10.0, 15.0, 20.0]
        assert made["projection"] == PROJECTION and made["grid"]["bounds_lonlat"] is not None
        frame = client.get(made["forecast"][3]["url"])
        assert frame.status_code == 200 and Image.open(io.BytesIO(frame.content)).size == (48, 48)
        point = client.get(f"{made['links']['point']}?lat=52.0&lon=5.0").json()
        assert point["location"]["row"] in (23, 24) and len(point["forecast"]) == 4
        assert point["forecast"][0]["probabilities"] is None and point["accumulation_probabilities"] is None
        far = client.get(f"{made['links']['point']}?lat=60.0&lon=5.0")
        assert far.status_code == 422 and "outside the product's grid" in far.json()["detail"]
        gone = client.get(made["forecast"][0]["url"].replace(made["handle"], "x" * 24))
        assert gone.status_code == 404 and "drop the file again" in gone.json()["detail"]


def test_an_adhoc_forecast_with_members_has_probabilities_and_bad_files_are_refused() -> None:
    body = radar_file(n=32)
    with running(model="steps", max_members=4) as client:
        made = client.post("/v1/nowcasts/adhoc?steps=2&members=3&thresholds=0.5,2", content=body,
                           headers={"Content-Type": "application/x-netcdf"})
        assert made.status_code == 200, made.text
        index = made.json()
        assert [p["threshold_mmh"] for p in index["probabilities"]] == [0.5, 2.0] and index["members"] == 3
        assert client.get(index["probabilities"][1]["frames"][1]).status_code == 200
        maximum = client.get(index["probabilities"][1]["max_frame"])
        assert maximum.status_code == 200 and maximum.headers["content-type"] == "image/png"
        assert "/adhoc/" in index["probabilities"][1]["max_frame"]
        # the rain over the forecast period too, at the default thresholds (mm)
        assert [p["threshold_mm"] for p in index["accumulation_probabilities"]] == list(ACCUMULATIONS_MM)
        assert "/adhoc/" in index["accumulation_probabilities"][2]["frame"]
        total = client.get(index["accumulation_probabilities"][2]["frame"])
        assert total.status_code == 200 and total.headers["content-type"] == "image/png"
        point = client.get(f"{index['links']['point']}?lat=52.0&lon=5.0").json()
        assert set(point["forecast"][1]["probabilities"]) == {"0.5", "2.0"}
        assert set(point["accumulation_probabilities"]) == {"1.0", "5.0", "10.0"}
        too_many = client.post("/v1/nowcasts/adhoc?steps=2&members=5", content=body,
                               headers={"Content-Type": "application/x-netcdf"})
        assert too_many.status_code in (413, 422), too_many.text
        for content, kind, status in [(b"not a netCDF file", "application/x-netcdf", 422),
                                      (body, "application/json", 415)]:
            answer = client.post("/v1/nowcasts/adhoc", content=content, headers={"Content-Type": kind})
            assert answer.status_code == status, answer.text


def test_the_map_gets_the_projection_in_the_form_proj4js_reads() -> None:
    fmi = "+proj=stere  +lon_0=25E +lat_0=90N +lat_ts=60 +a=6371288 +x_0=380886.310 +y_0=3395677.920 +no_defs"
    normal = map_projection(fmi)
    assert "+lon_0=25 " in normal and "+lat_0=90 " in normal and "+R=6371288" in normal  # proj4js misreads the rest
    import pyproj

    same = [pyproj.Transformer.from_crs(pyproj.CRS(p), "EPSG:4326", always_xy=True).transform(380e3, 600e3)
            for p in (fmi, normal)]
    assert np.allclose(same[0], same[1], atol=1e-9)
    assert map_projection("") == "" and map_projection("+proj=nonsense") == ""


def test_page_files_are_sent_compressed_to_browsers_that_take_gzip() -> None:
    library = Path(__file__).resolve().parent.parent / "service" / "static" / "vendor" / "ol.js"
    with running() as client:
        packed = client.get("/static/vendor/ol.js", headers={"Accept-Encoding": "gzip"})
        plain = client.get("/static/vendor/ol.js", headers={"Accept-Encoding": "identity"})
    assert packed.headers["content-encoding"] == "gzip" and "accept-encoding" in packed.headers["vary"].lower()
    assert int(packed.headers["content-length"]) < library.stat().st_size / 2
    assert packed.content == plain.content == library.read_bytes()  # httpx undoes the gzip
    assert "content-encoding" not in plain.headers


def odim_files(folder: Path, n: int = 40, frames: int = 4) -> list[Path]:
    """``frames`` ODIM_H5 rain-rate composites 5 minutes apart, from synthetic rain (0.1 mm/h steps)."""
    from test_io_importers import write_odim

    rain = projected_sequence(minutes_ago(60), n=n, frames=2 * frames).values[:frames]
    raw = np.where(np.isnan(rain), 65535, np.round(rain / 0.1)).astype(np.uint16)
    return [write_odim(folder / f"composite_{i}.h5", raw[i], when=f"20240601{12 + i // 12:02d}{5 * (i % 12):02d}00")
            for i in range(frames)]


def tar_of(paths: list[Path], *, extra: Any = None) -> bytes:
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in paths:
            archive.add(path, arcname=path.name)
        if extra is not None:
            archive.addfile(extra)
    return buffer.getvalue()


def test_a_handful_of_odim_files_in_a_tar_is_forecast_like_a_netcdf_file(tmp_path: Path) -> None:
    import tarfile

    files = odim_files(tmp_path)
    tar = {"Content-Type": "application/x-tar"}
    with running() as client:
        answer = client.post("/v1/nowcasts/adhoc?steps=3", content=tar_of(files), headers=tar)
        assert answer.status_code == 200, answer.text
        made = answer.json()
        assert [f["time"] for f in made["observed"]] == ["2024-06-01T12:00:00Z", "2024-06-01T12:05:00Z",
                                                         "2024-06-01T12:10:00Z", "2024-06-01T12:15:00Z"]
        assert made["shape"] == [40, 40] and "+proj=laea" in made["projection"] and len(made["forecast"]) == 3
        assert client.get(made["forecast"][2]["url"]).status_code == 200
        link = tarfile.TarInfo("link.h5")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        notes = tmp_path / "notes.txt"
        notes.write_text("not radar")
        for body, reason in [(b"not a tar" * 100, "not an uncompressed tar archive"),
                             (tar_of(files, extra=link), "is not a plain file"),
                             (tar_of([*files, notes]), "is not an HDF5 radar file"),
                             (tar_of(files * 7), "more than the limit of 24 frames"),
                             (tar_of([]), "holds no radar file")]:
            refused = client.post("/v1/nowcasts/adhoc?steps=3", content=body, headers=tar)
            assert refused.status_code == 422 and reason in refused.json()["detail"], refused.text
            assert refused.json()["field"] == "body"
