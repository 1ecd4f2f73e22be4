"""Run the service under uvicorn: what ``python -m service`` calls."""

from __future__ import annotations

import logging
import os
from typing import Any

import uvicorn

from service.core.config import Settings

logger = logging.getLogger(__name__)

APP_FACTORY = "service.main:create_app"


def serve(
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    *,
    model: str | None = None,
    model_version: str | None = None,
    device: str | None = None,
    models_dir: str | None = None,
    log_level: str | None = None,
    **settings_overrides: Any,
) -> None:
    """Serve the forecast API until interrupted.

    Arguments left as None come from the ``NOWCAST_*`` environment (see
    :class:`~service.core.config.Settings`). ``settings_overrides`` take any other setting by
    its field name (``max_batch=1``, ``api_keys=["..."]``).
    """
    overrides = {
        "host": host,
        "port": port,
        "workers": workers,
        "model": model,
        "model_version": model_version,
        "device": device,
        "models_dir": models_dir,
        "log_level": log_level,
        **settings_overrides,
    }
    overrides = {key: value for key, value in overrides.items() if value is not None}
    settings = Settings(**overrides)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": 30,
    }
    if settings.workers == 1:
        from service.main import create_app

        uvicorn.run(create_app(settings), **options)
        return
    # Worker processes build their own app from the environment, so hand the overrides on through it.
    for key, value in overrides.items():
        os.environ[f"NOWCAST_{key.upper()}"] = _env_value(value)
    logger.info("starting %d workers; each loads its own copy of the model", settings.workers)
    uvicorn.run(APP_FACTORY, factory=True, workers=settings.workers, **options)


def _env_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)
