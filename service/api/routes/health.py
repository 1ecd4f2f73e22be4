"""Liveness, readiness and Prometheus metrics (no API key: orchestrators call these; /metrics can ask
for one with ``NOWCAST_METRICS_NEED_KEY``)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.api.deps import ApiKeyHeaderDep, BatcherDep, MetricsDep, ModelsDep, SettingsDep, require_api_key
from service.schemas import ErrorResponse, HealthResponse, ReadyResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="The process answers")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="A warmed-up model is serving",
    responses={503: {"model": ReadyResponse, "description": "not ready"}},
)
async def readyz(models: ModelsDep, batcher: BatcherDep) -> ReadyResponse | JSONResponse:
    if not models.ready:
        return JSONResponse(
            ReadyResponse(ready=False, reason="model not loaded").model_dump(), status_code=503
        )
    if not batcher.alive:
        return JSONResponse(
            ReadyResponse(ready=False, reason="batcher not running").model_dump(), status_code=503
        )
    return ReadyResponse(ready=True, model=models.active.label)


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
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
