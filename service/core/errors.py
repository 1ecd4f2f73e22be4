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
from service.inference.batching import BatcherStoppedError, QueueFullError, RequestTimeoutError

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


class NotReadyError(ServiceError):
    status_code = 503


class ServiceBusyError(ServiceError):
    """Not enough memory or queue room for the request now; the client should retry."""

    status_code = 503


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
        return _answer(request, exc.status_code, str(exc), exc.field, exc.headers)

    async def on_input_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InputError)
        status = 413 if isinstance(exc, TooLargeInputError) else 422
        return _answer(request, status, str(exc), exc.field)

    async def on_unknown_name(request: Request, exc: Exception) -> JSONResponse:
        return _answer(request, 404, str(exc), "name")

    async def on_queue_full(request: Request, exc: Exception) -> JSONResponse:
        return _answer(
            request, 503, f"the service is busy ({exc}); retry in {retry_after_s} s", headers=retry
        )

    async def on_timeout(request: Request, exc: Exception) -> JSONResponse:
        return _answer(request, 503, f"the service is busy: {exc}; retry later", headers=retry)

    async def on_stopped(request: Request, exc: Exception) -> JSONResponse:
        return _answer(request, 503, str(exc), headers=retry)

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
    app.add_exception_handler(QueueFullError, on_queue_full)
    app.add_exception_handler(RequestTimeoutError, on_timeout)
    app.add_exception_handler(BatcherStoppedError, on_stopped)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)


def _plain_error(error: Any) -> dict[str, Any]:
    # Without the offending input (it can be megabytes of frames) and with JSON-safe parts only.
    loc = [part if isinstance(part, str | int) else str(part) for part in error.get("loc", ())]
    return {"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}
