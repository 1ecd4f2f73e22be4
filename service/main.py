"""The app factory: settings in, a FastAPI app out; the model is loaded in its lifespan."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from nowcast import __version__ as nowcast_version
from service.api.main import api_router, root_router
from service.api.routes.page import ADHOC_PATH
from service.core.config import Settings
from service.core.errors import install_error_handlers
from service.core.memory import MemoryBudget
from service.core.metrics import ServiceMetrics
from service.core.middleware import BodyLimitMiddleware, RequestContextMiddleware
from service.feed import ProductStore
from service.frames import AdhocProducts, FrameStore
from service.inference.batching import MicroBatcher
from service.inference.fallback import Fallback
from service.inference.models import ModelManager
from service.schemas import NowcastRequest, SwitchModelRequest

NOWCASTS_PATH = "/v1/nowcasts"

logger = logging.getLogger(__name__)

DESCRIPTION = """
Precipitation nowcasts from the latest radar frames.

`POST /v1/nowcasts` takes JSON or CF-netCDF and answers JSON or CF-netCDF; see
`GET /v1/models` for the model being served. Keys go in the `X-API-Key` header when the
service is configured with keys. Grids larger than the configured limits are refused
(413): split them into tiles on the client.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; ``settings`` default to the ``NOWCAST_*`` environment."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    models = ModelManager(settings, metrics)
    batcher = MicroBatcher(
        window_s=settings.batch_window_ms / 1e3,
        max_batch=settings.max_batch,
        max_pixels=settings.max_batch_pixels,
        max_queue=settings.queue_size,
        threads=settings.inference_threads,
        metrics=metrics,
    )
    metrics.watch_device(lambda: models.active.device if models.ready else None)
    products = _product_store(settings)
    if products is not None:
        metrics.watch_feed(products.newest_reference_time, settings.stale_after_s)
    app = FastAPI(
        title="nowcast",
        summary="Precipitation nowcasting service",
        description=DESCRIPTION,
        version=nowcast_version,
        lifespan=_lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.models = models
    app.state.batcher = batcher
    app.state.fallback = Fallback(settings, metrics)
    app.state.products = products
    app.state.frames = FrameStore()
    app.state.adhoc = AdhocProducts()
    app.state.memory = MemoryBudget(
        settings.request_memory_bytes,
        retry_after_s=settings.retry_after_s,
        on_refusal=lambda: metrics.rejected.labels("memory").inc(),
    )
    # the last added runs first: request ids are set before a body limit answers
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda path: _body_limit(settings, path))
    app.add_middleware(RequestContextMiddleware, metrics=metrics, route_paths=lambda: _route_paths(app))
    install_error_handlers(app, settings.retry_after_s)
    app.include_router(root_router)
    app.include_router(api_router)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load and warm up the model, start the batcher and the codec threads; stop them at the end."""
    settings: Settings = app.state.settings
    models: ModelManager = app.state.models
    batcher: MicroBatcher = app.state.batcher
    if settings.torch_threads is not None:
        import torch

        torch.set_num_threads(settings.torch_threads)
    codec_pool = ThreadPoolExecutor(max_workers=settings.codec_threads, thread_name_prefix="nowcast-codec")
    app.state.codec_pool = codec_pool
    loaded = await models.start()
    await app.state.fallback.start()
    await batcher.start()
    background: set[asyncio.Task[None]] = set()
    reload_on_hangup = _install_reload_signal(models, background)
    if settings.live_poll_s > 0:
        _start_background(background, _follow_live_pointer(models, settings.live_poll_s))
    app.state.metrics.ready.set(1)
    logger.info("serving %s on %s", loaded.label, loaded.device)
    try:
        yield
    finally:
        app.state.metrics.ready.set(0)
        for task in list(background):  # the live pointer's poll, a reload in flight
            task.cancel()
        if reload_on_hangup:
            with suppress(Exception):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await batcher.stop()
        app.state.fallback.stop()
        models.stop()
        codec_pool.shutdown(wait=False, cancel_futures=True)


def _product_store(settings: Settings) -> ProductStore | None:
    """The feed's product folder, when the service has one (it may not exist yet: the feed makes it)."""
    if settings.products_dir is None:
        return None
    if not settings.products_dir.is_dir():
        logger.warning("product folder %s does not exist (yet): no product until the feed writes one",
                       settings.products_dir)
    return ProductStore(settings.products_dir, settings.stale_after_s)


def _body_limit(settings: Settings, path: str) -> int:
    return settings.max_body_bytes if path in (NOWCASTS_PATH, ADHOC_PATH) else settings.max_admin_body_bytes


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The generated schema plus the request bodies the routes read themselves (after their keys are
    checked); the API-key scheme only where the service asks for keys."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (NowcastRequest, SwitchModelRequest):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        _declare_keys_where_asked(schema, settings)
        app.openapi_schema = schema
    return app.openapi_schema


def _declare_keys_where_asked(schema: dict[str, Any], settings: Settings) -> None:
    """The API-key scheme on the operations that ask for a key with these settings, and nowhere else."""
    asked = False
    for path, operations in schema.get("paths", {}).items():
        if path.startswith("/v1/admin/"):
            needs_key = bool(settings.admin_keys)
        elif path.startswith("/v1/"):
            needs_key = bool(settings.api_keys)
        else:
            needs_key = path == "/metrics" and settings.metrics_need_key and bool(settings.api_keys)
        for operation in operations.values():
            if not needs_key:
                operation.pop("security", None)
            asked = asked or needs_key
    if not asked:
        schema.get("components", {}).pop("securitySchemes", None)


def _route_paths(app: FastAPI) -> set[str]:
    documented = set(app.openapi().get("paths", {}))
    return documented | {path for path in (app.docs_url, app.redoc_url, app.openapi_url) if path}


async def _follow_live_pointer(models: ModelManager, interval_s: float) -> None:
    """Look at the live pointer every ``interval_s`` and switch when a version was promoted or rolled back."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await models.follow_live()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("switch to the live version failed; the active model is unchanged")


def _start_background(background: set[asyncio.Task[None]], coroutine: Any) -> None:
    task = asyncio.get_running_loop().create_task(coroutine)
    background.add(task)
    task.add_done_callback(background.discard)


def _install_reload_signal(models: ModelManager, background: set[asyncio.Task[None]]) -> bool:
    """SIGHUP reloads the active model at its live version (``nowcast promote``), else its latest."""
    loop = asyncio.get_running_loop()

    def on_hangup() -> None:
        async def reload() -> None:
            name = models.active.name
            try:
                await models.switch(name)
            except Exception:
                logger.exception("reload of %s on SIGHUP failed; the active model is unchanged", name)

        task = loop.create_task(reload())
        background.add(task)
        task.add_done_callback(background.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests) or no SIGHUP
        return False
    return True
