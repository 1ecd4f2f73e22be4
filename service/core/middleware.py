"""Request ids, per-request metrics and the last line of defence against internal errors."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    """Give every request an id (the client's ``X-Request-ID`` when sane), count and time it.

    An exception that no handler turned into an answer is logged with the request id and
    answered 500 here, so one failing request never takes the worker down.
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
                body = json.dumps(
                    {
                        "detail": "internal error; the service logged it under this request id",
                        "field": None,
                        "request_id": request_id,
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (REQUEST_ID_HEADER.encode(), request_id.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
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
