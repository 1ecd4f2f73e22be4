"""Dynamic micro-batching: concurrent requests of one shape share one model call.

Requests wait in a bounded queue. A dispatcher takes the oldest one as soon as an
inference thread is free, waits at most ``window`` (counted from that request's
arrival) for others with the same key (model, grid shape, steps, members) to join, and
runs up to ``max_batch`` of them, and no more than ``max_pixels`` pixels in all (the
model's working memory grows with them; a larger grid runs alone), as one ``predict``
call in a worker thread, so the
event loop keeps answering while the model runs. While the model is busy the queue
fills up, so the next batch is as large as the load makes it: batching costs a lone
request at most the window.

Only forecasters whose answer for one sequence does not depend on the others in its
batch are batched: a deterministic model (no ensemble members) is, a model that draws
noise is not unless it says so with ``batch_invariant = True`` (its noise drawn per
sequence, e.g. from per-sequence seeds). Otherwise every request runs alone, so that the
service gives the same forecast as the command line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from nowcast.forecasters import Spacing
from service.core.errors import BatcherStoppedError, QueueFullError, RequestTimeoutError
from service.core.metrics import ServiceMetrics
from service.inference.models import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batched model call."""

    frames: np.ndarray
    model: LoadedModel
    batch_size: int
    queue_s: float
    inference_s: float


@dataclass(eq=False)
class NowcastJob:
    key: Hashable
    model: LoadedModel
    past: np.ndarray
    steps: int
    members: int | None
    seed: int | None
    spacing: Spacing | None
    future: asyncio.Future[BatchResult]
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Queue, group and run forecast requests; see the module docstring."""

    def __init__(
        self,
        *,
        window_s: float,
        max_batch: int,
        max_queue: int,
        threads: int,
        metrics: ServiceMetrics,
        max_pixels: int | None = None,
    ) -> None:
        self._window_s = window_s
        self._max_batch = max_batch
        self._max_pixels = max_pixels
        self._max_queue = max_queue
        self._threads = threads
        self._metrics = metrics
        self._pending: list[NowcastJob] = []
        self._arrived: asyncio.Event | None = None
        self._free_threads: asyncio.Semaphore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._batch_started: dict[int, float] = {}
        metrics.queue_depth.set_function(lambda: len(self._pending))
        metrics.batches_running.set_function(lambda: len(self._running))

    @property
    def alive(self) -> bool:
        return self._dispatcher is not None and not self._dispatcher.done()

    @property
    def depth(self) -> int:
        return len(self._pending)

    def stalled_for(self, seconds: float) -> bool:
        """Whether every inference thread has been running one model call for more than ``seconds`` (a model
        that hangs holds them all)."""
        now = time.monotonic()
        started = list(self._batch_started.values())
        return len(started) >= self._threads and all(now - t > seconds for t in started)

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._free_threads = asyncio.Semaphore(self._threads)
        self._executor = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="nowcast-inference")
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="nowcast-batcher")

    async def stop(self) -> None:
        """Finish the batches already running, refuse what still waits."""
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(BatcherStoppedError("the service is shutting down"))
        self._pending.clear()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(
        self,
        model: LoadedModel,
        past: np.ndarray,
        steps: int,
        *,
        members: int | None = None,
        seed: int | None = None,
        spacing: Spacing | None = None,
        timeout_s: float,
    ) -> BatchResult:
        """Queue one forecast of ``past`` (time, y, x) and wait for its result."""
        if not self.alive or self._arrived is None:
            raise BatcherStoppedError("the service is not running")
        if len(self._pending) >= self._max_queue:
            self._metrics.rejected.labels("queue_full").inc()
            raise QueueFullError(f"{len(self._pending)} requests are already waiting")
        # A unique object in the key keeps the job alone in its batch (see module docstring).
        alone: Hashable = None if model.forecaster.batch_invariant else object()
        key = (model.generation, past.shape, steps, members, seed, spacing, alone)
        job = NowcastJob(
            key=key,
            model=model,
            past=past,
            steps=steps,
            members=members,
            seed=seed,
            spacing=spacing,
            future=asyncio.get_running_loop().create_future(),
        )
        self._pending.append(job)
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except TimeoutError:
            self._metrics.rejected.labels("timeout").inc()
            raise RequestTimeoutError(f"no forecast within {timeout_s:g} s") from None
        finally:
            # A request that gave up (timeout, client gone) leaves the queue; if its batch already runs,
            # the result is dropped.
            if not job.future.done():
                job.future.cancel()
            if job in self._pending:
                self._pending.remove(job)

    async def _dispatch_forever(self) -> None:
        assert self._free_threads is not None
        while True:
            await self._free_threads.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._free_threads.release()
                raise
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[NowcastJob]:
        assert self._arrived is not None
        while True:
            self._pending = [job for job in self._pending if not job.future.done()]
            if self._pending:
                first = self._pending[0]
                deadline = first.enqueued + self._window_s
                limit = self._batch_limit(first)
                while sum(job.key == first.key for job in self._pending) < limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except TimeoutError:
                        break
                batch = [job for job in self._pending if job.key == first.key and not job.future.done()][:limit]
                if batch:
                    taken = set(map(id, batch))
                    self._pending = [job for job in self._pending if id(job) not in taken]
                    return batch
                continue
            self._arrived.clear()
            await self._arrived.wait()

    def _batch_limit(self, job: NowcastJob) -> int:
        """How many requests like ``job`` one model call takes."""
        if self._max_pixels is None:
            return self._max_batch
        pixels = int(job.past.shape[-2] * job.past.shape[-1])
        return max(1, min(self._max_batch, self._max_pixels // pixels))

    async def _run(self, batch: list[NowcastJob]) -> None:
        assert self._free_threads is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        self._batch_started[id(batch)] = started
        try:
            outputs = await loop.run_in_executor(self._executor, _predict_batch, batch)
        except Exception as exc:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            self._batch_started.pop(id(batch), None)
            self._free_threads.release()
        inference_s = time.monotonic() - started
        self._metrics.batch_size.observe(len(batch))
        self._metrics.inference.observe(inference_s)
        for job, output in zip(batch, outputs, strict=True):
            queue_s = started - job.enqueued
            self._metrics.queue_wait.observe(queue_s)
            if job.future.done():
                continue
            if isinstance(output, BaseException):
                job.future.set_exception(output)
            else:
                job.future.set_result(
                    BatchResult(
                        frames=output,
                        model=job.model,
                        batch_size=len(batch),
                        queue_s=queue_s,
                        inference_s=inference_s,
                    )
                )


def _predict_batch(batch: list[NowcastJob]) -> list[np.ndarray | Exception]:
    """Run the batch as one model call; if that fails, run each request alone.

    Requests are validated before they are queued, so a failing batch is unexpected; running
    the requests one by one keeps one bad input from failing the requests it was batched with.
    """
    if len(batch) > 1:
        try:
            return list(_predict(batch[0], np.stack([job.past for job in batch]), len(batch)))
        except Exception:
            logger.exception("batch of %d failed; running its requests one by one", len(batch))
    outputs: list[np.ndarray | Exception] = []
    for job in batch:
        try:
            outputs.append(_predict(job, job.past[np.newaxis], 1)[0])
        except Exception as exc:
            outputs.append(exc)
    return outputs


def _predict(job: NowcastJob, past: np.ndarray, size: int) -> list[np.ndarray]:
    out = np.asarray(
        job.model.forecaster.predict(past, job.steps, members=job.members, seed=job.seed, spacing=job.spacing)
    )
    expected = (size, job.members, job.steps) if job.members is not None else (size, job.steps)
    if out.shape[: len(expected)] != expected or out.shape[-2:] != past.shape[-2:]:
        raise RuntimeError(
            f"{job.model.label} returned shape {out.shape} for input {past.shape}, "
            f"steps={job.steps}, members={job.members}"
        )
    return list(out.astype(np.float32, copy=False))
