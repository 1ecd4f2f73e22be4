"""Admin calls: switch the active model at run time."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.deps import MetricsDep, ModelsDep, require_admin_key
from service.schemas import ActiveModel, ErrorResponse, SwitchModelRequest, SwitchModelResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


@router.put(
    "/active-model",
    response_model=SwitchModelResponse,
    summary="Load a model version, warm it up, then make it active",
    description="Requests already queued or running finish on the previous model; the new one takes "
    "the requests that arrive after the switch. Nothing changes when loading fails.",
    responses={
        400: {"model": ErrorResponse, "description": "body is not JSON text"},
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
    },
)
async def switch_active_model(
    body: SwitchModelRequest, models: ModelsDep, metrics: MetricsDep
) -> SwitchModelResponse:
    new, previous = await models.switch(body.name, body.version)
    metrics.model_switches.inc()
    metrics.model_info.info({"name": new.name, "version": new.version or "builtin", "device": new.device})
    return SwitchModelResponse(
        active=ActiveModel(**new.describe()),
        previous=ActiveModel(**previous.describe()) if previous else None,
    )
