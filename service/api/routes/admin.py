"""Admin calls: switch the active model at run time."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from service import codec
from service.api.deps import ModelsDep, read_body, require_admin_key
from service.schemas import ActiveModel, ErrorResponse, SwitchModelResponse

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])


@router.put(
    "/active-model",
    response_model=SwitchModelResponse,
    summary="Load a model version, warm it up, then make it active",
    description="Requests already queued or running finish on the previous model; the new one takes "
    "the requests that arrive after the switch. Nothing changes when loading fails. A trained model named "
    "without a version loads its live version (`nowcast promote`) and follows it from then on; one named "
    "with a version stays on it. The body "
    "(`SwitchModelRequest`) is read only after the admin key is checked.",
    responses={
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse},
        404: {"model": ErrorResponse, "description": "not a model of the registry, or no such version"},
        413: {"model": ErrorResponse, "description": "body over NOWCAST_MAX_ADMIN_BODY_BYTES"},
        422: {"model": ErrorResponse},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {codec.JSON_TYPE: {"schema": {"$ref": "#/components/schemas/SwitchModelRequest"}}},
        }
    },
)
async def switch_active_model(request: Request, models: ModelsDep) -> SwitchModelResponse:
    body = await read_body(request)
    switch = await run_in_threadpool(codec.parse_switch_request, body)
    new, previous = await models.switch(switch.name, switch.version)
    return SwitchModelResponse(
        active=ActiveModel(**new.describe()),
        previous=ActiveModel(**previous.describe()) if previous else None,
    )
