"""The forecasters' page: the static page at ``/`` (no key) and the map frames it shows (under /v1, keyed).

Frames are PNGs of one product each, on the radar's own grid (:mod:`nowcast.render`); the page
places them with the grid's projection. A product's frames are addressed by its reference time,
so a loop never mixes two products while the feed moves on. ``POST /v1/nowcasts/adhoc`` forecasts
a dropped CF-netCDF file through the same model path as ``POST /v1/nowcasts`` and keeps the
result for a while under a random handle, with the same frames and point forecasts.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import time
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse
from starlette.concurrency import run_in_threadpool

from nowcast.errors import InputError
from nowcast.feed import ProductEntry, ProductFields, product_file_name
from nowcast.io.bundle import TAR_TYPE, read_radar_bundle
from service import codec
from service.api.deps import (
    ActiveModelDep,
    BatcherDep,
    MemoryDep,
    MetricsDep,
    RequestIdDep,
    SettingsDep,
    declared_length,
    read_body,
)
from service.api.routes.feed import StoreDep, point_place
from service.api.routes.nowcasts import NowcastJob
from service.core.config import Settings
from service.core.errors import NotFoundError, QueueFullError, RequestTimeoutError, UnsupportedMediaTypeError
from service.feed import Grid, Product, iso, parse_reference_label, reference_label
from service.frames import THRESHOLD_KINDS, AdhocProduct, AdhocProducts, FrameStore, frame_index
from service.schemas import ErrorResponse

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"
ADHOC_PATH = "/v1/nowcasts/adhoc"
#: what the page may load: its own files, images made from fetched blobs; nothing inline, nothing elsewhere
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                           "script-src 'self'; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
                           "base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
_PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer",
                 "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".json": "application/json", ".html": "text/html",
                 ".txt": "text/plain", ".md": "text/plain"}
_PNG_HEADERS = {"Cache-Control": "private, max-age=86400, immutable", "X-Content-Type-Options": "nosniff"}
_ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "no such product, frame or threshold (or no product folder)"},
    422: {"model": ErrorResponse, "description": "a malformed part of the path or query; `field` names it"},
    503: {"model": ErrorResponse, "description": "the product cannot be read now"},
}
_PNG = {200: {"content": {"image/png": {}}, "description": "the frame, indexed-colour PNG, north up"}, **_ERRORS}

router = APIRouter(tags=["page"], include_in_schema=False)
frames_router = APIRouter(tags=["page"])


# --- the page and its files (no key: they hold no data) ---------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


@router.get("/static/{path:path}")
async def static_file(path: str, request: Request) -> Response:
    file = (STATIC_DIR / path).resolve()
    if not file.is_relative_to(STATIC_DIR) or not file.is_file() or file.suffix not in _STATIC_TYPES:
        raise NotFoundError(f"no page file {path[:100]!r}")
    # vendored libraries change only with their version (VERSIONS.json); the page's own files with any deployment
    cache = "public, max-age=86400" if file.is_relative_to(STATIC_DIR / "vendor") else "no-cache"
    headers = {"Cache-Control": cache, "X-Content-Type-Options": "nosniff", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        stat = file.stat()
        body = await run_in_threadpool(_gzipped, str(file), stat.st_size, stat.st_mtime_ns)
        return Response(body, media_type=_STATIC_TYPES[file.suffix], headers={**headers, "Content-Encoding": "gzip"})
    return FileResponse(file, media_type=_STATIC_TYPES[file.suffix], headers=headers)


@functools.lru_cache(maxsize=64)
def _gzipped(path: str, size: int, mtime_ns: int) -> bytes:
    """A page file compressed once per version (the map library and the atlas shrink to a third)."""
    return gzip.compress(Path(path).read_bytes(), compresslevel=6, mtime=0)


# --- frames of the feed ---------------------------------------------------------------------------------


def get_frames(request: Request) -> FrameStore:
    return request.app.state.frames


def get_adhoc(request: Request) -> AdhocProducts:
    return request.app.state.adhoc


FramesDep = Annotated[FrameStore, Depends(get_frames)]
AdhocDep = Annotated[AdhocProducts, Depends(get_adhoc)]


@frames_router.get("/nowcasts/latest/frames", summary="The newest product's map frames: their URLs, the grid's "
                   "projection and extent (cell edges, projection units), times and colour scales", responses=_ERRORS,
                   description="`observed` and `forecast`: one frame URL a time. `probabilities`: one entry a rate "
                   "threshold (`threshold_mmh`), with its `frames` (one a lead) and `max_frame` (P(rate > threshold at "
                   "some lead), one frame; null without it). `accumulation_probabilities`: one entry a threshold of "
                   "the rain over the forecast period in mm (`threshold_mm`, not mm/h), with its one `frame` "
                   "(`.../frames/accumulation_probability/{threshold_mm}/0.png`, P(rain from the reference time to "
                   "the last step > threshold)) and `minimum_members_with_data`; empty for a product without them.")
async def latest_frames(request: Request, store: StoreDep) -> dict[str, Any]:
    entry = await store.latest_entry()
    if entry is None:
        raise NotFoundError("the product folder holds no product yet")
    product = await store.product(entry)
    label = reference_label(entry.reference_time)

    def url(kind: str, index: int, threshold: str) -> str:
        return _frame_url(request, "feed_frame", "feed_probability_frame", kind, index, threshold,
                          reference_time=label)

    return await run_in_threadpool(frame_index, product.fields, url)


@frames_router.get("/nowcasts/{reference_time}/frames/{kind}/{index}.png", name="feed_frame", response_class=Response,
                   summary="One observed or forecast frame of a product of the feed", responses=_PNG)
async def feed_frame(reference_time: str, kind: str, index: int, store: StoreDep, frames: FramesDep) -> Response:
    entry = await _entry(store, reference_time)
    product = await store.product(entry)
    return await _png(frames, _feed_key(entry), product.fields, kind, index, "")


@frames_router.get("/nowcasts/{reference_time}/frames/{kind}/{threshold}/{index}.png",
                   name="feed_probability_frame", response_class=Response, responses=_PNG,
                   summary="One exceedance-probability frame of a product of the feed (kind `probability`: at a "
                   "lead; `max_probability`: of the rate above the threshold at some lead, one frame, 0; "
                   "`accumulation_probability`: of the rain over the forecast period above the threshold in mm, one "
                   "frame, 0)")
async def feed_probability_frame(reference_time: str, kind: str, threshold: str, index: int, store: StoreDep,
                                 frames: FramesDep) -> Response:
    entry = await _entry(store, reference_time)
    product = await store.product(entry)
    return await _png(frames, _feed_key(entry), product.fields, _threshold_kind(kind), index, threshold)


async def _entry(store: Any, reference_time: str) -> ProductEntry:
    entry = await store.entry_at(parse_reference_label(reference_time))
    if entry is None:
        raise NotFoundError(f"no product of reference time {reference_time} in the product folder "
                            "(never made, or already removed)", field="reference_time")
    return entry


def _feed_key(entry: ProductEntry) -> tuple[str, str, str]:
    return ("feed", entry.file, iso(entry.written_at))


def _threshold_kind(kind: str) -> str:
    if kind not in THRESHOLD_KINDS:
        raise NotFoundError(f"no frames of kind {kind!r} at a threshold; those are {', '.join(THRESHOLD_KINDS)}")
    return kind


async def _png(frames: FrameStore, key: Any, fields: ProductFields, kind: str, index: int,
               threshold: str) -> Response:
    if kind in THRESHOLD_KINDS and not threshold:
        raise NotFoundError(f"{kind} frames are under .../{kind}/{{threshold}}/{{index}}.png")
    png = await run_in_threadpool(frames.png, key, fields, kind, index, threshold)
    return Response(png, media_type="image/png", headers=_PNG_HEADERS)


def _frame_url(request: Request, name: str, probability_name: str, kind: str, index: int, threshold: str,
               **params: str) -> str:
    root = request.scope.get("root_path", "")
    if kind in THRESHOLD_KINDS:
        return root + request.app.url_path_for(probability_name, kind=kind, threshold=threshold, index=str(index),
                                               **params)
    return root + request.app.url_path_for(name, kind=kind, index=str(index), **params)


# --- ad-hoc forecasts of a dropped file -------------------------------------------------------------------


@frames_router.post(
    "/nowcasts/adhoc",
    summary="Forecast a radar file for the page: its map frames and a handle for points",
    description="The body is a CF-netCDF sequence, as for `POST /v1/nowcasts` (`Content-Type: application/x-netcdf`), "
    "or a handful of HDF5 radar files (ODIM_H5) in one uncompressed tar (`Content-Type: application/x-tar`); the "
    "query (`steps`, `members`, `seed`, `thresholds`) as for a netCDF body. With members the answer carries the "
    "probability-matched mean, exceedance probabilities, those of the forecast's maximum and those of the rain over "
    "the forecast period (at 1, 5 and 10 mm). The forecast is kept for a while under the handle of "
    "its frame URLs.",
    responses={**_ERRORS, 413: {"model": ErrorResponse, "description": "over the service's limits"},
               415: {"model": ErrorResponse, "description": "not a netCDF body"},
               422: {"model": ErrorResponse, "description": "bad input; `field` names the part at fault"},
               503: {"model": ErrorResponse, "description": "queue or request memory full; retry after `Retry-After`"}},
)
async def adhoc(
    request: Request,
    settings: SettingsDep,
    model: ActiveModelDep,
    batcher: BatcherDep,
    memory: MemoryDep,
    metrics: MetricsDep,
    request_id: RequestIdDep,
    adhoc_products: AdhocDep,
    steps: Annotated[int, Query(ge=1, description="frames to forecast")] = 12,
    members: Annotated[int | None, Query(ge=1, description="ensemble members (probabilities need them)")] = None,
    seed: Annotated[int | None, Query(ge=0, le=2**32 - 1)] = None,
    thresholds: Annotated[str | None, Query(max_length=2000, description="comma-separated mm/h")] = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    media = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media not in (*codec.NETCDF_TYPES, TAR_TYPE):
        raise UnsupportedMediaTypeError(f"Content-Type: send a CF-netCDF file as {codec.NETCDF_TYPE}, or HDF5 radar "
                                        f"files (ODIM_H5) as one uncompressed {TAR_TYPE}", field="Content-Type")
    if batcher.depth >= settings.queue_size:
        metrics.rejected.labels("queue_full").inc()
        raise QueueFullError(f"{batcher.depth} requests are already waiting")
    length = declared_length(request) or settings.max_body_bytes
    reservation = memory.reserve(codec.decode_estimate(codec.NETCDF_TYPE, length), f"a body of {length} bytes")
    request.state.memory = reservation
    job = NowcastJob(request=request, settings=settings, model=model, batcher=batcher,
                     fallback=request.app.state.fallback, reservation=reservation, request_id=request_id,
                     body_type=codec.NETCDF_TYPE, netcdf_answer=False, started=started)
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            product = await _adhoc_forecast(job, adhoc_products, media, steps=steps, members=members, seed=seed,
                                            thresholds=thresholds)
    except TimeoutError:
        metrics.rejected.labels("timeout").inc()
        raise RequestTimeoutError(
            f"no forecast within the request timeout of {settings.request_timeout_s:g} s") from None
    return await run_in_threadpool(_adhoc_answer, request, product)


async def _adhoc_forecast(job: NowcastJob, adhoc_products: AdhocProducts, media: str, *, steps: int,
                          members: int | None, seed: int | None, thresholds: str | None) -> AdhocProduct:
    """Decode, prepare, forecast (the model, or its fallback) and keep: POST /v1/nowcasts's path, kept as frames."""
    settings = job.settings
    products = "pm_mean,probabilities,max_probabilities,accumulation_probabilities" if members else None
    if media == TAR_TYPE:
        query = await job.in_pool(_bundle_query, await read_body(job.request), settings, steps=steps,
                                  members=members, seed=seed, products=products, thresholds=thresholds)
    else:
        query = await job.decode(steps=steps, members=members, seed=seed, products=products, thresholds=thresholds)
    codec.check_limits(query, settings)
    prepared = await job.in_pool(job.prepare, query)
    outcome = await job.fallback.forecast(
        job.batcher, job.model, prepared,
        timeout_s=max(settings.request_timeout_s - (time.perf_counter() - job.started), 0.001))
    forecast = await job.in_pool(outcome.result.model.forecaster.finish, outcome.prepared, outcome.result.frames)
    answer = await job.in_pool(codec.answer_of, query, forecast)
    return adhoc_products.add(_adhoc_fields(query.sequence, answer), model=outcome.result.model.label,
                              fallback=outcome.fallback_reason is not None,
                              fallback_reason=str(outcome.fallback_reason or ""), members=query.members)


def _bundle_query(body: bytes, settings: Settings, *, steps: int, members: int | None, seed: int | None,
                  products: str | None, thresholds: str | None) -> codec.ForecastQuery:
    """The query of a tar of radar files: read as the netCDF body of POST /v1/nowcasts is, with its limits."""
    asked = codec.product_request(members, products.split(",") if products else None,
                                  codec.query_numbers(thresholds, "thresholds"), None)
    try:
        sequence = read_radar_bundle(body, max_files=settings.max_input_frames, limits=codec.read_limits(settings),
                                     name="body")
    except InputError as exc:
        message = str(exc)
        raise InputError(message if message.startswith("body") else f"body: {message}", field="body") from exc
    codec.check_grid(*sequence.shape, settings)
    return codec.ForecastQuery(sequence=sequence, steps=steps, members=members, seed=seed, output_encoding="nested",
                               products=asked)


def _adhoc_fields(observed: Any, answer: Any) -> ProductFields:
    if "pm_mean" in getattr(answer, "data_vars", {}):
        forecast = answer["pm_mean"].assign_attrs(answer.attrs)
        probabilities = answer["probabilities"].assign_attrs(answer.attrs)
        maxima = answer["max_probabilities"].assign_attrs(answer.attrs)
        accumulations = answer["accumulation_probabilities"].assign_attrs(answer.attrs)
    else:
        forecast, probabilities, maxima, accumulations = answer, None, None, None
    return ProductFields(observed=observed, forecast=forecast, probabilities=probabilities,
                         reference_time=pd.Timestamp(observed["time"].values[-1]), attrs={},
                         max_probabilities=maxima, accumulation_probabilities=accumulations)


def _adhoc_answer(request: Request, product: AdhocProduct) -> dict[str, Any]:
    def url(kind: str, index: int, threshold: str) -> str:
        return _frame_url(request, "adhoc_frame", "adhoc_probability_frame", kind, index, threshold,
                          handle=product.handle)

    grid = Grid.of(product.fields)
    return {"handle": product.handle, "model": product.model, "fallback": product.fallback,
            "fallback_reason": product.fallback_reason or None, "members": product.members,
            "grid": grid.describe(),
            "links": {"point": request.scope.get("root_path", "") + request.app.url_path_for(
                "adhoc_point", handle=product.handle)},
            **frame_index(product.fields, url)}


@frames_router.get("/nowcasts/adhoc/{handle}/frames/{kind}/{index}.png", name="adhoc_frame",
                   response_class=Response, responses=_PNG, summary="One frame of an ad-hoc forecast")
async def adhoc_frame(handle: str, kind: str, index: int, adhoc_products: AdhocDep, frames: FramesDep) -> Response:
    product = adhoc_products.get(handle)
    return await _png(frames, ("adhoc", handle), product.fields, kind, index, "")


@frames_router.get("/nowcasts/adhoc/{handle}/frames/{kind}/{threshold}/{index}.png",
                   name="adhoc_probability_frame", response_class=Response, responses=_PNG,
                   summary="One exceedance-probability frame of an ad-hoc forecast (kinds as for the feed's)")
async def adhoc_probability_frame(handle: str, kind: str, threshold: str, index: int, adhoc_products: AdhocDep,
                                  frames: FramesDep) -> Response:
    product = adhoc_products.get(handle)
    return await _png(frames, ("adhoc", handle), product.fields, _threshold_kind(kind), index, threshold)


@frames_router.get("/nowcasts/adhoc/{handle}/point", name="adhoc_point", responses=_ERRORS,
                   summary="The forecast of an ad-hoc forecast at one place (as /v1/nowcasts/latest/point)")
async def adhoc_point(
    handle: str,
    adhoc_products: AdhocDep,
    lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    lon: Annotated[float | None, Query(ge=-180, le=360)] = None,
    x: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    y: Annotated[float | None, Query(allow_inf_nan=False)] = None,
) -> dict[str, Any]:
    place = point_place(lat, lon, x, y)
    adhoc_product = adhoc_products.get(handle)
    fields = adhoc_product.fields
    reference = fields.reference_time.to_pydatetime()
    entry = ProductEntry(file=product_file_name(reference), reference_time=reference,
                         valid_times=tuple(pd.DatetimeIndex(fields.forecast["time"].values).to_pydatetime()),
                         model=adhoc_product.model)
    product = Product(entry, fields, await run_in_threadpool(Grid.of, fields))
    location = product.grid.locate(**place)
    return {"reference_time": iso(reference), "model": adhoc_product.model, "fallback": adhoc_product.fallback,
            "location": {"lat": location.lat, "lon": location.lon, "x": location.x, "y": location.y,
                         "row": location.row, "col": location.col},
            **product.point(location)}
