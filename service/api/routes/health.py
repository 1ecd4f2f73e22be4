"""Liveness, readiness and Prometheus metrics (no API key: orchestrators call these; /metrics can ask
for one with ``NOWCAST_METRICS_NEED_KEY``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import ApiKeyHeaderDep, BatcherDep, MetricsDep, ModelsDep, SettingsDep, require_api_key
from service.feed import ProductStore
from service.schemas import ErrorResponse, FeedReadiness, HealthResponse, ReadyResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="The process answers")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="A warmed-up model is serving (and, with a product folder, how old its newest product is)",
    responses={503: {"model": ReadyResponse, "description": "not ready"}},
)
async def readyz(request: Request, models: ModelsDep, batcher: BatcherDep) -> JSONResponse:
    feed = await _feed_readiness(request.app.state.products)
    if not models.ready:
        return _readiness(ReadyResponse(ready=False, reason="model not loaded", feed=feed), 503)
    if not batcher.alive:
        return _readiness(ReadyResponse(ready=False, reason="batcher not running", feed=feed), 503)
    # a stale feed leaves the service ready: it still forecasts what it is sent, and says how old the feed is
    return _readiness(ReadyResponse(ready=True, model=models.active.label, feed=feed), 200)


def _readiness(answer: ReadyResponse, status: int) -> JSONResponse:
    """The answer, with ``feed`` only where the service has a product folder."""
    body = answer.model_dump(mode="json", exclude={"feed"} if answer.feed is None else None)
    return JSONResponse(body, status_code=status)


async def _feed_readiness(store: ProductStore | None) -> FeedReadiness | None:
    if store is None:
        return None
    status = await store.status()
    return FeedReadiness(
        newest_reference_time=status.newest_reference_time,
        age_s=None if status.age_s is None else round(status.age_s, 3),
        stale=status.stale,
        error=status.error,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        401: {"model": ErrorResponse, "description": "missing or invalid API key (with NOWCAST_METRICS_NEED_KEY)"},
    },
)
async def metrics(metrics: MetricsDep, settings: SettingsDep, key: ApiKeyHeaderDep) -> Response:
    if settings.metrics_need_key:
        require_api_key(settings, key)
    # in a thread: collectors read /proc and the feed's manifest at scrape time
    body, content_type = await run_in_threadpool(metrics.exposition)
    return Response(body, media_type=content_type)
