"""The models this service can serve, and the one it serves now."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from nowcast import artifacts
from nowcast.errors import UnreadableFileError
from nowcast.forecasters import builtin_names, get_forecaster
from service.api.deps import ActiveModelDep, SettingsDep
from service.core.config import Settings
from service.schemas import ActiveModel, AvailableModel, ErrorResponse, ModelsResponse, ModelVersion

router = APIRouter(tags=["models"])


@router.get(
    "/models",
    response_model=ModelsResponse,
    summary="Available and active models with their cards",
    responses={
        401: {"model": ErrorResponse, "description": "missing or invalid API key"},
        503: {"model": ErrorResponse, "description": "no model loaded yet"},
    },
)
async def list_models(settings: SettingsDep, active: ActiveModelDep) -> ModelsResponse:
    available = await run_in_threadpool(_available, settings)
    return ModelsResponse(active=ActiveModel(**active.describe()), available=available)


def _available(settings: Settings) -> list[AvailableModel]:
    root = settings.resolved_models_dir()
    entries = [
        AvailableModel(name=name, kind="builtin", versions=[], description=get_forecaster(name).describe())
        for name in builtin_names()
    ]
    for name in artifacts.list_models(root):
        versions = []
        for version in artifacts.list_versions(name, root):
            try:
                versions.append(ModelVersion(version=version, card=artifacts.card(name, version, root)))
            except UnreadableFileError as exc:
                versions.append(ModelVersion(version=version, card=None, error=str(exc)))
        entries.append(AvailableModel(name=name, kind="trained", versions=versions))
    return entries
