"""How failures become HTTP answers.

Every error answer has the same JSON body, ``{"detail", "field", "request_id"}`` (plus
``errors`` for schema violations), so a client can show ``detail`` and log
``request_id``. User mistakes are 4xx naming the field; an overloaded service answers
503 with ``Retry-After``; anything unexpected is logged with its request id and
answered 500 by :mod:`service.core.middleware` while the service keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nowcast.errors import InputError, UnknownNameError

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with its HTTP status; ``field`` names the part of the request at fault."""

    status_code = 500

    def __init__(
        self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.field = field
        self.headers = headers


class PayloadTooLargeError(ServiceError):
    status_code = 413


class UnsupportedMediaTypeError(ServiceError):
    status_code = 415


class NotAcceptableError(ServiceError):
    status_code = 406


class UnauthorizedError(ServiceError):
    status_code = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, field="X-API-Key", headers={"WWW-Authenticate": "APIKey"})


class ForbiddenError(ServiceError):
    status_code = 403


class NotFoundError(ServiceError):
    status_code = 404


class NotReadyError(ServiceError):
    status_code = 503


class ServiceBusyError(ServiceError):
    """The service cannot take the request now (memory, queue, time, shutdown); the client should retry.

    Answered 503 with ``Retry-After``, the configured seconds unless the error brings its own.
    """

    status_code = 503


class QueueFullError(ServiceBusyError):
    """The queue holds as many requests as it may."""

    def __str__(self) -> str:
        return f"the service is busy ({super().__str__()})"


class RequestTimeoutError(ServiceBusyError):
    """The forecast was not ready within the request timeout."""

    def __str__(self) -> str:
        return f"the service is busy: {super().__str__()}; retry later"


class BatcherStoppedError(ServiceBusyError):
    """The service is shutting down."""


class TooLargeInputError(InputError):
    """Input over a configured size limit (answered 413)."""


def error_body(request: Request, detail: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "field": field, "request_id": request_id_of(request), **extra}


def request_id_of(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _answer(
    request: Request,
    status: int,
    detail: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(error_body(request, detail, field, **extra), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    retry = {"Retry-After": str(retry_after_s)}

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        headers = exc.headers
        if isinstance(exc, ServiceBusyError):
            headers = {**retry, **(headers or {})}
        return _answer(request, exc.status_code, str(exc), exc.field, headers)

    async def on_input_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InputError)
        status = 413 if isinstance(exc, TooLargeInputError) else 422
        return _answer(request, status, str(exc), exc.field)

    async def on_unknown_name(request: Request, exc: Exception) -> JSONResponse:
        return _answer(request, 404, str(exc), "name")

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [_plain_error(error) for error in exc.errors()]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        field = ".".join(str(part) for part in first["loc"][1:] if part is not None) or None
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc'][1:])) or e['loc'][0]}: {e['msg']}" for e in errors[:5]
        )
        if len(errors) > 5:
            detail += f"; and {len(errors) - 5} more"
        return _answer(request, 422, detail or "invalid request", field, errors=errors[:50])

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _answer(request, exc.status_code, str(exc.detail), headers=exc.headers)

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(InputError, on_input_error)
    app.add_exception_handler(UnknownNameError, on_unknown_name)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)


def _plain_error(error: Any) -> dict[str, Any]:
    # Without the offending input (it can be megabytes of frames) and with JSON-safe parts only.
    loc = [part if isinstance(part, str | int) else str(part) for part in error.get("loc", ())]
    return {"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}
