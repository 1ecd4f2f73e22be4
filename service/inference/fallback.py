"""A forecast that always comes: the extrapolation answers when the model fails or is late, and says so.

The ``extrapolation`` forecaster is kept loaded beside the active model, with threads of its
own, so that neither a model that raises nor one that hangs in the batcher's threads stops
it. A request falls back when its model call raises (``model_error``) or has not answered
within ``NOWCAST_MODEL_DEADLINE_S`` of being queued (``deadline``); when every inference
thread has been held past the deadline already (a hung model), it falls back at once rather
than wait its own deadline out behind them. Nothing else falls back: bad input was refused
before the model was asked, and a full queue, the request timeout or a shutdown are answered
503 as before. Where the extrapolation cannot answer the request either (ensemble members or
products: it draws no members; fewer past frames than it uses), the model's own outcome
stands: its error, or the wait for it up to the request timeout.

A hung model keeps its inference threads (``NOWCAST_INFERENCE_THREADS``, never more: the
batcher's pool is fixed) until it returns; the requests that gave up on it leave the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from nowcast.errors import InputError
from nowcast.forecasters import PreparedForecast
from service.core.config import FALLBACK_MODEL, Settings
from service.core.errors import BatcherStoppedError, RequestTimeoutError, ServiceBusyError
from service.core.metrics import ServiceMetrics
from service.inference.batching import BatchResult, MicroBatcher
from service.inference.models import LoadedModel, load_model

logger = logging.getLogger(__name__)

Reason = Literal["model_error", "deadline"]


@dataclass(frozen=True)
class Outcome:
    """What answered a request: the model's result, or the fallback's with why."""

    result: BatchResult
    prepared: PreparedForecast
    fallback_reason: Reason | None = None
    fallback_from: str | None = None


class Fallback:
    """The extrapolation kept ready (``model`` is None when the fallback is off or failed to load)."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self.model: LoadedModel | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if not self._settings.fallback:
            return
        try:
            self.model = await asyncio.to_thread(load_model, self._settings, FALLBACK_MODEL)
        except Exception:  # the safety net failing must not keep the model from serving
            logger.exception("the fallback %s could not be loaded; model failures will be errors", FALLBACK_MODEL)
            return
        self._executor = ThreadPoolExecutor(max_workers=self._settings.inference_threads,
                                            thread_name_prefix="nowcast-fallback")

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self.model = None

    def replaces(self, model: LoadedModel) -> bool:
        """Whether there is a fallback for ``model`` (not for the extrapolation itself)."""
        return self.model is not None and model.name != self.model.name

    async def forecast(self, batcher: MicroBatcher, model: LoadedModel, prepared: PreparedForecast, *,
                       timeout_s: float) -> Outcome:
        """``model``'s forecast of ``prepared`` through ``batcher``, or the extrapolation's; see the module."""
        started = time.monotonic()
        if not self.replaces(model):
            return Outcome(await _submit(batcher, model, prepared, timeout_s), prepared)
        deadline_s = self._settings.model_deadline_s
        if batcher.stalled_for(deadline_s):
            substitute = await self._prepare(prepared)
            if substitute is not None:
                return await self._answer(substitute, model, "deadline", timeout_s - (time.monotonic() - started))
        task = asyncio.ensure_future(_submit(batcher, model, prepared, timeout_s))
        try:
            # a request timeout before the deadline ends the request (503) without a fallback
            done, _ = await asyncio.wait({task}, timeout=deadline_s if deadline_s < timeout_s else None)
            failure = _model_failure(task) if done else None
            if done and failure is None:
                return Outcome(task.result(), prepared)
            substitute = await self._prepare(prepared)
            if substitute is None:
                if failure is not None:
                    raise failure
                return Outcome(await task, prepared)
            if failure is not None:
                logger.error("%s failed (%s: %s); answering with %s", model.label, type(failure).__name__,
                             failure, FALLBACK_MODEL, exc_info=failure)
            else:
                task.cancel()
                logger.warning("%s passed the deadline of %g s; answering with %s", model.label, deadline_s,
                               FALLBACK_MODEL)
            reason: Reason = "deadline" if failure is None else "model_error"
            return await self._answer(substitute, model, reason, timeout_s - (time.monotonic() - started))
        finally:
            if not task.done():
                task.cancel()

    async def _prepare(self, prepared: PreparedForecast) -> PreparedForecast | None:
        """The request prepared for the extrapolation, or None where it cannot answer it."""
        forecaster = self.model.forecaster if self.model is not None else None
        if forecaster is None:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: forecaster.prepare(
                    prepared.source, prepared.steps, members=prepared.members, seed=prepared.seed,
                    max_rate_mmh=self._settings.max_rain_rate_mmh))
        except InputError as exc:
            logger.info("no fallback for this request: %s", exc)
            return None

    async def _answer(self, prepared: PreparedForecast, failed: LoadedModel, reason: Reason,
                      timeout_s: float) -> Outcome:
        model, executor = self.model, self._executor
        if model is None or executor is None:
            raise BatcherStoppedError("the service is shutting down")
        self._metrics.fallbacks.labels(reason).inc()
        queued = time.monotonic()
        try:
            frames, started = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(executor, _predict, model, prepared),
                max(timeout_s, 0.001))
        except TimeoutError:
            self._metrics.rejected.labels("timeout").inc()
            raise RequestTimeoutError(f"no forecast within the request timeout of "
                                      f"{self._settings.request_timeout_s:g} s (fallback included)") from None
        finished = time.monotonic()
        result = BatchResult(frames=frames, model=model, batch_size=1, queue_s=started - queued,
                             inference_s=finished - started)
        return Outcome(result, prepared, reason, failed.label)


async def _submit(batcher: MicroBatcher, model: LoadedModel, prepared: PreparedForecast,
                  timeout_s: float) -> BatchResult:
    return await batcher.submit(model, prepared.past, prepared.steps, members=prepared.members,
                                seed=prepared.seed, spacing=prepared.spacing, timeout_s=timeout_s)


def _model_failure(task: asyncio.Task[BatchResult]) -> Exception | None:
    """The model's own failure, if that is how ``task`` ended (None: it answered); bad input, a busy or
    stopping service are raised as they are, they are no reason to fall back."""
    error = task.exception()
    if error is None:
        return None
    if isinstance(error, InputError | ServiceBusyError) or not isinstance(error, Exception):
        raise error
    return error


def _predict(model: LoadedModel, prepared: PreparedForecast) -> tuple[np.ndarray, float]:
    started = time.monotonic()
    frames = model.forecaster.predict(prepared.past[np.newaxis], prepared.steps, spacing=prepared.spacing)[0]
    return np.asarray(frames, dtype=np.float32), started
