"""Liveness, readiness and Prometheus metrics (no API key: orchestrators call these)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.api.deps import BatcherDep, MetricsDep, ModelsDep
from service.schemas import HealthResponse, ReadyResponse

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
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(metrics: MetricsDep) -> Response:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
