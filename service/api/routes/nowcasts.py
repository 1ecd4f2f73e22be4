"""POST /v1/nowcasts: the latest radar frames in, the next frames out."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from nowcast.errors import InputError
from service import codec
from service.api.deps import ActiveModelDep, BatcherDep, RequestIdDep, SettingsDep
from service.core.errors import NotAcceptableError, PayloadTooLargeError, UnsupportedMediaTypeError
from service.inference.batching import RequestTimeoutError
from service.schemas import ErrorResponse, NowcastResponse

router = APIRouter(tags=["nowcasts"])

_ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (401, "missing or invalid API key"),
        (406, "the Accept header asks for a format this service does not write"),
        (413, "body, grid, frame count or answer size over the configured limits"),
        (415, "body is neither JSON nor netCDF"),
        (422, "bad input; `field` names the part of the request at fault"),
        (503, "queue full or request timed out; retry after `Retry-After` seconds"),
    ]
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "/nowcasts",
    summary="Forecast the next frames of a radar sequence",
    description=(
        "The body is JSON (`NowcastRequest`) or a CF-netCDF file (`Content-Type: application/x-netcdf`; "
        "then `steps`, `members` and `seed` come from the query string, which a JSON body must not use). "
        "The answer is JSON, or CF-netCDF with `Accept: application/x-netcdf`. Concurrent requests with the "
        "same grid and steps share one model call."
    ),
    response_class=Response,
    responses={
        200: {
            "model": NowcastResponse,
            "description": "the forecast",
            "content": {codec.NETCDF_TYPE: _BINARY},
        },
        **_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                codec.JSON_TYPE: {"schema": {"$ref": "#/components/schemas/NowcastRequest"}},
                codec.NETCDF_TYPE: _BINARY,
            },
        }
    },
)
async def create_nowcast(
    request: Request,
    settings: SettingsDep,
    model: ActiveModelDep,
    batcher: BatcherDep,
    request_id: RequestIdDep,
    steps: Annotated[int | None, Query(ge=1, description="frames to forecast (netCDF bodies)")] = None,
    members: Annotated[int | None, Query(ge=1, description="ensemble members (netCDF bodies)")] = None,
    seed: Annotated[
        int | None, Query(ge=0, le=2**32 - 1, description="ensemble seed (netCDF bodies)")
    ] = None,
) -> Response:
    started = time.perf_counter()
    body_type = _body_type(request.headers.get("content-type"))
    netcdf_answer = _wants_netcdf(request.headers.get("accept"))
    body = await _read_body(request, settings.max_body_bytes)
    if body_type == codec.JSON_TYPE:
        if steps is not None or members is not None or seed is not None:
            raise InputError(
                "steps: with a JSON body, give steps, members and seed in the body, not in the query string",
                field="steps",
            )
        query = await run_in_threadpool(codec.parse_json_request, body, settings)
    else:
        query = await run_in_threadpool(
            codec.parse_netcdf_request, body, settings, steps=steps, members=members, seed=seed
        )
    past = codec.check_query(query, model, settings, netcdf_answer=netcdf_answer)
    decoded = time.perf_counter()

    remaining = settings.request_timeout_s - (decoded - started)
    try:
        result = await batcher.submit(
            model, past, query.steps, members=query.members, seed=query.seed, timeout_s=max(remaining, 0.001)
        )
    except RequestTimeoutError:
        raise RequestTimeoutError(
            f"no forecast within the request timeout of {settings.request_timeout_s:g} s"
        ) from None
    predicted = time.perf_counter()

    forecast = await run_in_threadpool(codec.forecast_sequence, query, result.model, result.frames)
    headers = {"X-Nowcast-Model": result.model.label, "X-Nowcast-Batch-Size": str(result.batch_size)}
    if netcdf_answer:
        content = await run_in_threadpool(codec.netcdf_answer, forecast, result.model, request_id)
        return Response(content, media_type=codec.NETCDF_TYPE, headers=headers)
    timings = {
        "decode_ms": (decoded - started) * 1e3,
        "queue_ms": result.queue_s * 1e3,
        "inference_ms": result.inference_s * 1e3,
        "encode_ms": (time.perf_counter() - predicted) * 1e3,
        "total_ms": (time.perf_counter() - started) * 1e3,
    }
    content = await run_in_threadpool(
        codec.json_answer,
        query,
        forecast,
        result.model,
        request_id=request_id,
        batch_size=result.batch_size,
        timings_ms=timings,
    )
    return Response(content, media_type=codec.JSON_TYPE, headers=headers)


def _body_type(content_type: str | None) -> str:
    media = (content_type or "").split(";")[0].strip().lower()
    if media == codec.JSON_TYPE or (media.startswith("application/") and media.endswith("+json")):
        return codec.JSON_TYPE
    if media in codec.NETCDF_TYPES:
        return codec.NETCDF_TYPE
    raise UnsupportedMediaTypeError(
        f"Content-Type: {content_type or 'missing'!s} is not supported; send {codec.JSON_TYPE} or "
        f"{codec.NETCDF_TYPE}",
        field="Content-Type",
    )


def _wants_netcdf(accept: str | None) -> bool:
    """netCDF when the client accepts it; JSON otherwise; 406 when it accepts neither."""
    if not accept:
        return False
    offered = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if offered & set(codec.NETCDF_TYPES):
        return True
    if offered & {codec.JSON_TYPE, "application/*", "*/*", ""}:
        return False
    raise NotAcceptableError(
        f"Accept: {accept!r} lists no format this service writes; accept "
        f"{codec.JSON_TYPE} or {codec.NETCDF_TYPE}",
        field="Accept",
    )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"body of {declared} bytes is over this service's limit of {limit} bytes", field="body"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body is over this service's limit of {limit} bytes", field="body")
        chunks.append(chunk)
    if not size:
        raise InputError("body: empty request body", field="body")
    return b"".join(chunks)
