"""POST /v1/nowcasts: the latest radar frames in, the next frames out."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from nowcast.errors import InputError
from nowcast.forecasters import PreparedForecast
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
from service.core.config import Settings
from service.core.errors import NotAcceptableError, QueueFullError, RequestTimeoutError, UnsupportedMediaTypeError
from service.core.memory import Reservation
from service.inference.batching import MicroBatcher
from service.inference.fallback import Fallback
from service.inference.models import LoadedModel
from service.schemas import ErrorResponse, NowcastResponse

T = TypeVar("T")

router = APIRouter(tags=["nowcasts"])

_ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in [
        (401, "missing or invalid API key"),
        (406, "the Accept header asks for a format this service does not write"),
        (413, "body, grid, frame count or answer size over the configured limits"),
        (415, "body is neither JSON nor netCDF"),
        (422, "bad input; `field` names the part of the request at fault"),
        (503, "queue full, memory for requests full, or request timed out; retry after `Retry-After` seconds"),
    ]
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.post(
    "/nowcasts",
    summary="Forecast the next frames of a radar sequence",
    description=(
        "The body is JSON (`NowcastRequest`) or a CF-netCDF file (`Content-Type: application/x-netcdf`; "
        "then `steps`, `members`, `seed`, `products`, `thresholds`, `quantile_levels`, `neighbourhood` and "
        "`accumulation_thresholds` come from the query "
        "string, which a JSON body must not use). With `members`, `products` asks for ensemble products "
        "(probabilities, quantiles, means) instead of the members' frames. The answer is JSON, or CF-netCDF "
        "with `Accept: application/x-netcdf` (members on a CF `realization` axis, products as IMPROVER "
        "writes them). Concurrent requests with the same grid and steps share one model call."
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
    memory: MemoryDep,
    metrics: MetricsDep,
    request_id: RequestIdDep,
    steps: Annotated[int | None, Query(ge=1, description="frames to forecast (netCDF bodies)")] = None,
    members: Annotated[int | None, Query(ge=1, description="ensemble members (netCDF bodies)")] = None,
    seed: Annotated[
        int | None, Query(ge=0, le=2**32 - 1, description="ensemble seed (netCDF bodies)")
    ] = None,
    products: Annotated[
        str | None,
        Query(max_length=200, description="comma-separated: members, probabilities, mean, pm_mean, quantiles, "
                                          "max_probabilities, accumulation_probabilities, accumulation_quantiles "
                                          "(netCDF bodies, with members)"),
    ] = None,
    thresholds: Annotated[
        str | None, Query(max_length=2000, description="comma-separated mm/h of the probabilities (netCDF bodies)")
    ] = None,
    quantile_levels: Annotated[
        str | None, Query(max_length=2000, description="comma-separated levels in [0, 1] (netCDF bodies)")
    ] = None,
    neighbourhood: Annotated[
        float | None, Query(ge=0, le=10, description="km per minute of lead of the probabilities' square "
                                                     "neighbourhood (netCDF bodies)")
    ] = None,
    accumulation_thresholds: Annotated[
        str | None, Query(max_length=2000, description="comma-separated mm over the forecast period of "
                                                       "accumulation_probabilities (netCDF bodies)")
    ] = None,
) -> Response:
    started = time.perf_counter()
    body_type = _body_type(request.headers.get("content-type"))
    netcdf_answer = _wants_netcdf(request.headers.get("accept"))
    in_query = {"steps": steps, "members": members, "seed": seed, "products": products, "thresholds": thresholds,
                "quantile_levels": quantile_levels, "neighbourhood": neighbourhood,
                "accumulation_thresholds": accumulation_thresholds}
    if body_type == codec.JSON_TYPE and any(value is not None for value in in_query.values()):
        raise InputError(
            "steps: with a JSON body, give steps, members, seed and products in the body, not in the query string",
            field="steps",
        )
    # Refusals that cost nothing come before a byte of the body is read.
    if batcher.depth >= settings.queue_size:
        metrics.rejected.labels("queue_full").inc()
        raise QueueFullError(f"{batcher.depth} requests are already waiting")
    length = declared_length(request) or settings.max_body_bytes
    reservation = memory.reserve(codec.decode_estimate(body_type, length), f"a body of {length} bytes")
    # given back by RequestContextMiddleware once the answer is sent (or when a decode it gave up on ends)
    request.state.memory = reservation
    job = NowcastJob(request, settings, model, batcher, request.app.state.fallback, reservation, request_id, body_type,
               netcdf_answer, started)
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            return await job.run(**in_query)
    except (TimeoutError, RequestTimeoutError) as exc:
        if isinstance(exc, TimeoutError):  # the batcher counts its own
            metrics.rejected.labels("timeout").inc()
        raise RequestTimeoutError(
            f"no forecast within the request timeout of {settings.request_timeout_s:g} s"
        ) from None


@dataclass
class NowcastJob:
    """One forecast request, from its body to its answer, as named phases."""

    request: Request
    settings: Settings
    model: LoadedModel
    batcher: MicroBatcher
    fallback: Fallback
    reservation: Reservation
    request_id: str
    body_type: str
    netcdf_answer: bool
    started: float

    async def run(self, **in_query: Any) -> Response:
        query = await self.decode(**in_query)
        codec.check_limits(query, self.settings)
        prepared = await self.in_pool(self.prepare, query)
        self.reservation.resize(
            codec.answer_estimate(query, netcdf_answer=self.netcdf_answer), "this request's forecast"
        )
        decoded = time.perf_counter()
        outcome = await self.fallback.forecast(
            self.batcher,
            self.model,
            prepared,
            timeout_s=max(self.settings.request_timeout_s - (decoded - self.started), 0.001),
        )
        result = outcome.result
        forecast = await self.in_pool(result.model.forecaster.finish, outcome.prepared, result.frames)
        forecast = await self.in_pool(codec.answer_of, query, forecast)
        headers = {"X-Nowcast-Model": result.model.label, "X-Nowcast-Batch-Size": str(result.batch_size)}
        if outcome.fallback_reason is not None:
            headers["X-Nowcast-Fallback"] = outcome.fallback_reason
        fallback = codec.FallbackNote(outcome.fallback_reason, outcome.fallback_from)
        if self.netcdf_answer:
            content = await self.in_pool(codec.netcdf_answer, forecast, result.model, self.request_id, fallback)
            return Response(content, media_type=codec.NETCDF_TYPE, headers=headers)
        timings = {
            "decode_ms": (decoded - self.started) * 1e3,
            "queue_ms": result.queue_s * 1e3,
            "inference_ms": result.inference_s * 1e3,
        }
        chunks = codec.json_answer(
            query,
            forecast,
            result.model,
            request_id=self.request_id,
            batch_size=result.batch_size,
            timings_ms=timings,
            started=self.started,
            fallback=fallback,
        )
        return StreamingResponse(chunks, media_type=codec.JSON_TYPE, headers=headers)

    async def decode(self, **in_query: Any) -> codec.ForecastQuery:
        """The query of a JSON body, or of a netCDF body and the query string's ``in_query`` values."""
        body = await read_body(self.request)
        if self.body_type == codec.JSON_TYPE:
            return await self.in_pool(codec.parse_json_request, body, self.settings)
        return await self.in_pool(
            codec.parse_netcdf_request, body, self.settings, reserve=self.reservation.resize, **in_query
        )

    def prepare(self, query: codec.ForecastQuery) -> PreparedForecast:
        """The forecaster's one preparation step, its errors named as the request's fields."""
        try:
            return self.model.forecaster.prepare(
                query.sequence, query.steps, members=query.members, seed=query.seed,
                max_rate_mmh=self.settings.max_rain_rate_mmh,
            )
        except InputError as exc:
            field = exc.field or "frames"
            raise InputError(f"{field}: {exc}", field=field) from exc

    async def in_pool(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Blocking work in the codec threads, its memory reserved until it ends."""
        return await self.reservation.run(
            self.request.app.state.codec_pool, functools.partial(function, *args, **kwargs)
        )


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
