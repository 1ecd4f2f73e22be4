"""The feed's products: the newest one's metadata, any product's file, and the forecast at one place."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from nowcast.errors import InputError
from nowcast.feed import ProductEntry
from service.codec import NETCDF_TYPE
from service.core.errors import NotFoundError
from service.feed import ProductStore, iso, parse_reference_label, reference_label
from service.schemas import ErrorResponse, LatestProduct, PointForecast

router = APIRouter(tags=["feed"])

_CHUNK_BYTES = 1 << 20
_ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "no product folder configured, or no such product (yet)"},
    503: {"model": ErrorResponse, "description": "the product folder cannot be read now"},
}


def get_store(request: Request) -> ProductStore:
    store: ProductStore | None = request.app.state.products
    if store is None:
        raise NotFoundError("this service has no product folder (NOWCAST_PRODUCTS_DIR)")
    return store


StoreDep = Annotated[ProductStore, Depends(get_store)]


async def _latest(store: ProductStore) -> ProductEntry:
    entry = await store.latest_entry()
    if entry is None:
        raise NotFoundError("the product folder holds no product yet")
    return entry


@router.get("/nowcasts/latest", response_model=LatestProduct, summary="The feed's newest product",
            responses=_ERRORS)
async def latest(request: Request, store: StoreDep) -> dict[str, Any]:
    entry = await _latest(store)
    product = await store.product(entry)
    reference = pd.Timestamp(entry.reference_time)
    age = store.age_s(entry.reference_time)
    return {
        "reference_time": iso(entry.reference_time),
        "model": entry.model,
        "fallback": entry.fallback,
        "fallback_reason": entry.fallback_reason or None,
        "members": entry.members,
        "thresholds_mmh": list(entry.thresholds),
        "valid_times": [iso(t) for t in entry.valid_times],
        "lead_times_min": [(pd.Timestamp(t) - reference).total_seconds() / 60.0 for t in entry.valid_times],
        "observed_times": [iso(t) for t in pd.DatetimeIndex(product.fields.observed["time"].values)],
        "missing_frames": entry.missing_frames,
        "written_at": iso(entry.written_at),
        "age_s": round(age, 3),
        "stale": age > store.stale_after_s,
        "grid": product.grid.describe(),
        "links": {
            "self": _path(request, "latest"),
            "file": _path(request, "product_file", reference_time=reference_label(entry.reference_time)),
            "point": _path(request, "latest_point"),
        },
    }


_FILE_RESPONSES = {200: {"content": {NETCDF_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                         "description": "the CF-netCDF product"}, **_ERRORS}


@router.get("/nowcasts/latest/file", summary="The newest product's CF-netCDF file", response_class=StreamingResponse,
            responses=_FILE_RESPONSES)
async def latest_file(store: StoreDep) -> StreamingResponse:
    return await _file_answer(store, await _latest(store))


@router.get("/nowcasts/latest/point", response_model=PointForecast, responses={
    **_ERRORS, 422: {"model": ErrorResponse, "description": "no place, two places, or a place outside the grid"}},
    summary="Forecast rain rate (and exceedance probabilities) at one place, from the newest product")
async def latest_point(
    store: StoreDep,
    lat: Annotated[float | None, Query(ge=-90, le=90, description="latitude, degrees north (WGS84)")] = None,
    lon: Annotated[float | None, Query(ge=-180, le=360, description="longitude, degrees east (WGS84)")] = None,
    x: Annotated[float | None, Query(allow_inf_nan=False, description="x in the grid's projection units")] = None,
    y: Annotated[float | None, Query(allow_inf_nan=False, description="y in the grid's projection units")] = None,
) -> dict[str, Any]:
    place = point_place(lat, lon, x, y)
    entry = await _latest(store)
    product = await store.product(entry)
    location = product.grid.locate(**place)
    return {
        "reference_time": iso(entry.reference_time),
        "model": entry.model,
        "fallback": entry.fallback,
        "location": {"lat": location.lat, "lon": location.lon, "x": location.x, "y": location.y,
                     "row": location.row, "col": location.col},
        **product.point(location),
    }


@router.get("/nowcasts/{reference_time}/file", summary="The CF-netCDF file of a product still in the manifest",
            response_class=StreamingResponse, responses={
                **_FILE_RESPONSES, 422: {"model": ErrorResponse, "description": "not a YYYYMMDDTHHMMZ time"}})
async def product_file(reference_time: str, store: StoreDep) -> StreamingResponse:
    moment = parse_reference_label(reference_time)
    entry = await store.entry_at(moment)
    if entry is None:
        raise NotFoundError(f"no product of reference time {reference_time} in the product folder "
                            "(never made, or already removed)", field="reference_time")
    return await _file_answer(store, entry)


def point_place(lat: float | None, lon: float | None, x: float | None, y: float | None) -> dict[str, float]:
    geographic, projected = (lat, lon), (x, y)
    if any(v is not None for v in geographic) and any(v is not None for v in projected):
        raise InputError("lat: give either lat and lon, or x and y, not both", field="lat")
    if all(v is not None for v in geographic):
        return {"lat": lat, "lon": lon if lon is None or lon <= 180 else lon - 360}  # type: ignore[dict-item]
    if all(v is not None for v in projected):
        return {"x": x, "y": y}  # type: ignore[dict-item]
    missing = ("lon" if lon is None else "lat") if any(v is not None for v in geographic) else \
        ("y" if y is None else "x") if any(v is not None for v in projected) else None
    if missing is not None:
        raise InputError(f"{missing}: missing; give lat and lon together, or x and y together", field=missing)
    raise InputError("lat: give a place: lat and lon (WGS84 degrees), or x and y (the grid's projection units)",
                     field="lat")


async def _file_answer(store: ProductStore, entry: ProductEntry) -> StreamingResponse:
    handle, size = await run_in_threadpool(store.open_file, entry)
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'attachment; filename="{entry.file}"',
        "X-Nowcast-Reference-Time": iso(entry.reference_time),
        "X-Nowcast-Model": _header_text(entry.model),
    }
    if entry.fallback:
        headers["X-Nowcast-Fallback"] = _header_text(entry.fallback_reason or "fallback")
    return StreamingResponse(_chunks(handle), media_type=NETCDF_TYPE, headers=headers)


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """The open file a chunk at a time (Starlette iterates it in a worker thread)."""
    try:
        while chunk := handle.read(_CHUNK_BYTES):
            yield chunk
    finally:
        handle.close()


def _header_text(text: str) -> str:
    """What the manifest says, fit for a header (printable ASCII, bounded)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:200])


def _path(request: Request, name: str, **params: str) -> str:
    return request.scope.get("root_path", "") + request.app.url_path_for(name, **params)
