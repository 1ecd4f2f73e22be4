"""Dependencies of the routes, as ``Annotated`` aliases (the FastAPI template's style)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from nowcast.errors import InputError
from service.core.config import Settings
from service.core.errors import ForbiddenError, NotReadyError, UnauthorizedError, request_id_of
from service.core.memory import MemoryBudget
from service.core.metrics import ServiceMetrics
from service.inference.batching import MicroBatcher
from service.inference.models import LoadedModel, ModelManager

API_KEY_HEADER = "X-API-Key"
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="required when the service is configured with API keys"
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_models(request: Request) -> ModelManager:
    return request.app.state.models


def get_batcher(request: Request) -> MicroBatcher:
    return request.app.state.batcher


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


def get_request_id(request: Request) -> str:
    return request_id_of(request) or "-"


def get_memory(request: Request) -> MemoryBudget:
    return request.app.state.memory


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelManager, Depends(get_models)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
RequestIdDep = Annotated[str, Depends(get_request_id)]
MemoryDep = Annotated[MemoryBudget, Depends(get_memory)]
ApiKeyHeaderDep = Annotated[str | None, Security(api_key_header)]


def get_active_model(models: ModelsDep) -> LoadedModel:
    """The model this request runs on, fixed at arrival (a later switch does not change it)."""
    if not models.ready:
        raise NotReadyError("no model is loaded yet", headers={"Retry-After": "5"})
    return models.active


ActiveModelDep = Annotated[LoadedModel, Depends(get_active_model)]


def require_api_key(settings: SettingsDep, key: ApiKeyHeaderDep) -> None:
    """Callers need one of the configured keys (admin keys count too); none configured: open."""
    if not settings.api_keys:
        return
    if not key:
        raise UnauthorizedError(f"missing API key: send it in the {API_KEY_HEADER} header")
    if not _matches(key, [*settings.api_keys, *settings.admin_keys]):
        raise UnauthorizedError(f"invalid API key in the {API_KEY_HEADER} header")


def require_admin_key(settings: SettingsDep, key: ApiKeyHeaderDep) -> None:
    """Admin calls need an admin key; with none configured they are switched off."""
    if not settings.admin_keys:
        raise ForbiddenError("admin calls are disabled on this service (no NOWCAST_ADMIN_KEYS configured)")
    if not key:
        raise UnauthorizedError(f"missing admin key: send it in the {API_KEY_HEADER} header")
    if not _matches(key, settings.admin_keys):
        raise ForbiddenError("this key may not make admin calls")


def _matches(key: str, keys: list[str]) -> bool:
    # compare_digest against every key, so timing does not reveal which one nearly matched
    given = key.encode()
    return any([hmac.compare_digest(given, candidate.encode()) for candidate in keys])


async def read_body(request: Request) -> bytes:
    """The whole body; its size is bounded by :class:`~service.core.middleware.BodyLimitMiddleware`."""
    chunks = [chunk async for chunk in request.stream()]
    if not any(chunks):
        raise InputError("body: empty request body", field="body")
    return b"".join(chunks)


def declared_length(request: Request) -> int | None:
    """The body's size as Content-Length declares it, or None (chunked)."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None
