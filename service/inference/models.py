"""The active model: loaded once, warmed up, and swapped atomically at run time.

Requests take a reference to the :class:`LoadedModel` that is active when they arrive
and are batched and run on that one, so switching versions never fails a request in
flight: the new model is loaded and warmed up first, then one reference assignment
makes it active, and the old one is freed when its last batch finishes.

A model asked for by name alone follows its live version (``models/NAME/LIVE``, see
:mod:`nowcast.artifacts`): :meth:`ModelManager.follow_live` switches to a newly promoted or
rolled-back version with the same switch; one pinned to a version stays on it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from nowcast import artifacts
from nowcast.errors import UnreadableFileError
from nowcast.forecasters import Forecaster, default_model, get_forecaster, resolve
from service.core.config import Settings
from service.core.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

_generation = itertools.count(1)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A forecaster ready to serve, with what the API reports about it."""

    name: str
    version: str | None
    forecaster: Forecaster
    device: str
    card: dict[str, Any] | None
    warmup_s: float
    precision: str = "float32"
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    generation: int = field(default_factory=lambda: next(_generation))

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "kind": "builtin" if self.version is None else "trained",
            "device": self.device,
            "precision": self.precision,
            "n_input_frames": int(self.forecaster.n_input_frames),
            "supports_members": bool(self.forecaster.supports_members),
            "loaded_at": self.loaded_at.isoformat(),
            "warmup_seconds": round(self.warmup_s, 3),
            "card": self.card,
        }


def default_model_name(settings: Settings) -> str:
    return settings.model or default_model(settings.resolved_models_dir())


def load_model(settings: Settings, name: str, version: str | None = None) -> LoadedModel:
    """Load and warm up ``name`` (blocking: call it from a worker thread).

    Names are resolved by the library's one table (:func:`nowcast.forecasters.resolve`):
    anything that is not a method or a model of the registry is the same 404.
    """
    models_dir = settings.resolved_models_dir()
    resolved = resolve(name, version, models_dir=models_dir)
    forecaster = get_forecaster(resolved.name, resolved.version, models_dir=models_dir,
                                device=settings.resolved_device())
    card: dict[str, Any] | None = None
    if resolved.trained:
        try:
            card = artifacts.card(resolved.name, resolved.version, models_dir)
        except UnreadableFileError as exc:
            logger.warning("model card of %s unreadable: %s", resolved.label, exc)
    started = time.perf_counter()
    precision = choose_precision(forecaster, settings.half_precision, settings.half_tolerance_mmh)
    forecaster.warmup(settings.warmup_grid, settings.warmup_grid)
    warmup_s = time.perf_counter() - started
    loaded = LoadedModel(
        name=resolved.name,
        version=resolved.version,
        forecaster=forecaster,
        device=str(forecaster.device),
        card=card,
        warmup_s=warmup_s,
        precision=precision,
    )
    logger.info("loaded %s on %s in %s (warm-up %.2fs)", loaded.label, loaded.device, precision, warmup_s)
    return loaded


def choose_precision(forecaster: Forecaster, mode: str, tolerance_mmh: float) -> str:
    """Run a model in half precision where its device has one and the forecast stays within tolerance.

    Applies to forecasters that support it (the GAN). ``on`` forces the device's half
    precision (float16 on a GPU, bfloat16 on a CPU with bfloat16 instructions), ``off``
    forbids it. ``auto`` takes float16 on a GPU after forecasting a synthetic sequence
    both ways, only when no pixel moves by more than ``tolerance_mmh`` + 1% of its rate;
    on a CPU it keeps float32, so that the service answers what the CLI and the library
    answer (bfloat16 there is opt-in).
    """
    forecaster.half = False
    precision = forecaster.half_precision if forecaster.supports_half else None
    if precision is None or mode == "off":
        return "float32"
    if mode == "on":
        forecaster.half = True
        return precision
    if precision != "float16":
        return "float32"
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    frames = max(forecaster.n_input_frames, 2)
    past = synthetic_sequence(SyntheticRain(ny=128, nx=128, frames=frames), seed=0).values
    past = past[np.newaxis, -forecaster.n_input_frames :]
    full = forecaster.predict(past, 6)
    forecaster.half = True
    half = forecaster.predict(past, 6)
    with np.errstate(invalid="ignore"):
        excess = np.abs(half - full) - (tolerance_mmh + 0.01 * np.abs(full))
    worst = float(np.nanmax(excess)) if np.isfinite(excess).any() else 0.0
    if worst > 0:
        forecaster.half = False
        logger.info("half precision moves the forecast %.3g mm/h beyond tolerance: keeping float32", worst)
        return "float32"
    return precision


class ModelManager:
    """Holds the active model and switches it without interrupting requests."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._active: LoadedModel | None = None
        self._switch_lock = asyncio.Lock()
        self.switches = 0
        self._pinned = True
        self._live_error: str | None = None
        self._failed_live: tuple[str, str] | None = None  # (name, version) whose load failed: not retried

    @property
    def ready(self) -> bool:
        return self._active is not None

    @property
    def active(self) -> LoadedModel:
        """The model new requests run on (a snapshot: later swaps do not change it)."""
        if self._active is None:
            raise RuntimeError("no model loaded yet")
        return self._active

    async def start(self) -> LoadedModel:
        name = default_model_name(self._settings)
        self._pinned = _pinned(name, self._settings.model_version)
        self._active = await asyncio.to_thread(load_model, self._settings, name, self._settings.model_version)
        self._metrics.model_loaded(self._active.name, self._active.version, self._active.device, switched=False)
        return self._active

    async def switch(self, name: str, version: str | None = None) -> tuple[LoadedModel, LoadedModel | None]:
        """Load ``name``/``version``, warm it up, then make it active. Returns (new, previous)."""
        async with self._switch_lock:
            new = await asyncio.to_thread(load_model, self._settings, name, version)
            previous, self._active = self._active, new
            self._pinned = _pinned(name, version)
            self.switches += 1
            self._metrics.model_loaded(new.name, new.version, new.device, switched=True)
        logger.info("active model switched from %s to %s", previous.label if previous else None, new.label)
        return new, previous

    async def follow_live(self) -> LoadedModel | None:
        """Switch to the live version of the active model's name when it moved; the new model, or None.

        A pinned model, a method, or a name with no live pointer stays as it is; a pointer that
        cannot be read, or a live version that fails to load, is logged once and leaves the
        active model serving (a failed version is tried again only once the pointer moves).
        """
        active = self._active
        if active is None or self._pinned or active.version is None:
            return None
        try:
            live = await asyncio.to_thread(artifacts.live_version, active.name, self._settings.resolved_models_dir())
        except UnreadableFileError as exc:
            if str(exc) != self._live_error:
                logger.warning("live pointer of %s unreadable, still serving %s: %s", active.name, active.label, exc)
            self._live_error = str(exc)
            return None
        self._live_error = None
        if live is None or live == active.version or self._active is not active \
                or self._failed_live == (active.name, live):
            return None
        logger.info("%s@%s is live now: switching from %s", active.name, live, active.label)
        try:
            new, _ = await self.switch(active.name, live)
        except Exception:
            logger.exception("%s@%s is live but failed to load; still serving %s", active.name, live, active.label)
            self._failed_live = (active.name, live)
            return None
        self._pinned = False  # switched to follow the pointer, not to stay on this version
        self._failed_live = None
        return new

    def stop(self) -> None:
        self._active = None


def _pinned(name: str, version: str | None) -> bool:
    return bool(version) or "@" in name
