"""Request ids, per-request metrics, body limits and the last line of defence against internal errors."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.errors import PayloadTooLargeError
from service.core.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Give every request an id (the client's ``X-Request-ID`` when sane), count and time it.

    An exception that no handler turned into an answer is logged with the request id and
    answered 500 here, so one failing request never takes the worker down; a request cut
    short by the server's shutdown is answered 503. The request's memory reservation
    (``state["memory"]``, see :mod:`service.core.memory`) is given back once its answer is
    sent or abandoned.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, route_paths: Callable[[], set[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self._route_paths = route_paths
        self._known: set[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "internal error answering %s %s (request %s)",
                scope.get("method"),
                scope.get("path"),
                request_id,
            )
            status = 500
            if not response_started:
                await _send_error(send, 500, "internal error; the service logged it under this request id", request_id)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when its graceful shutdown times out
            status = 503
            if not response_started:
                await _send_error(send, 503, "the service is shutting down; retry", request_id, retry=True)
            raise
        finally:
            reservation = scope["state"].get("memory")
            if reservation is not None:
                reservation.close()
            if self._known is None:
                self._known = self._route_paths()
            # The label is the route's path (no route takes path parameters), so that random URLs
            # cannot blow up the number of series.
            path = scope.get("path", "")
            label = path if path in self._known else "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - started)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            if _CLIENT_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


async def _send_error(send: Send, status: int, detail: str, request_id: str, *, retry: bool = False) -> None:
    body = json.dumps({"detail": detail, "field": None, "request_id": request_id}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (REQUEST_ID_HEADER.encode(), request_id.encode()),
    ]
    if retry:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Bound every route's body: refused at once when Content-Length is over the route's limit,
    else cut off (413) as soon as the bytes received pass it. Nothing here reads a body that
    the route does not read itself, so keys are checked (by the routes' dependencies) first.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self._limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            request_id = scope.get("state", {}).get("request_id", "-")
            await _send_too_large(send, f"body of {declared} bytes is over this route's limit of {limit} bytes",
                                  request_id)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"body is over this route's limit of {limit} bytes", field="body")
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _send_too_large(send: Send, detail: str, request_id: str) -> None:
    body = json.dumps({"detail": detail, "field": "body", "request_id": request_id}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
