"""A byte budget for the memory that requests hold outside the model.

Bodies being read and decoded and answers being encoded can take several times their
size in memory. Each request reserves its estimate before its body is read and resizes
the reservation as it learns more (the grid a netCDF header declares, the size of the
answer); when the budget cannot grant it, the request is answered 503 with
``Retry-After`` at once, having cost nothing. A reservation is given back when its
request is over, or, when the request gave up (timed out) while a worker thread still
decodes for it, when that thread finishes: the memory is in use until then.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from service.core.errors import PayloadTooLargeError, ServiceBusyError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Releasing at least this much hands freed heap pages back to the system.
TRIM_AFTER_BYTES = 16 * 1024 * 1024


class MemoryBudget:
    """Bytes that requests may hold at once, granted without waiting or refused."""

    def __init__(self, capacity_bytes: int, *, retry_after_s: int = 1, on_refusal: Callable[[], None] | None = None):
        self.capacity = capacity_bytes
        self._retry_after_s = retry_after_s
        self._on_refusal = on_refusal
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, nbytes: int, what: str) -> Reservation:
        """A reservation of ``nbytes`` for ``what`` (named in the refusal), or 503 / 413."""
        reservation = Reservation(self)
        reservation.resize(nbytes, what)
        return reservation

    def _change(self, delta: int, what: str) -> None:
        with self._lock:
            if delta > 0 and self._used + delta > self.capacity:
                refused = True
            else:
                refused = False
                self._used += delta
        if refused:
            if self._on_refusal is not None:
                self._on_refusal()
            raise ServiceBusyError(
                f"the service is busy: {what} needs about {_mib(delta)} of memory and "
                f"{_mib(self.capacity - self._used)} is free; retry in {self._retry_after_s} s",
                headers={"Retry-After": str(self._retry_after_s)},
            )


class Reservation:
    """One request's share of a :class:`MemoryBudget`."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._held = 0
        self._work: set[Future[Any]] = set()
        self._closed = False
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        return self._held

    def resize(self, nbytes: int, what: str) -> None:
        """Hold ``nbytes`` from now on (more: 503 when the budget lacks it; less: given back)."""
        if nbytes > self._budget.capacity:
            raise PayloadTooLargeError(
                f"{what} needs about {_mib(nbytes)} of memory, more than this service allows one request "
                f"({_mib(self._budget.capacity)}); send a smaller grid, fewer frames or fewer steps",
                field="body",
            )
        self._budget._change(nbytes - self._held, what)
        released = self._held - nbytes
        self._held = nbytes
        if released >= TRIM_AFTER_BYTES:
            trim_heap()

    async def run(self, executor: Executor, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in ``executor``; the memory stays reserved until it returns, even if we stop waiting."""
        future = executor.submit(function, *args)
        with self._lock:
            self._work.add(future)
        future.add_done_callback(self._work_done)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Give the memory back now, or when the last running function of this request returns."""
        with self._lock:
            self._closed = True
            if any(not future.done() for future in self._work):
                return
        self._release()

    def _work_done(self, future: Future[Any]) -> None:
        with self._lock:
            self._work.discard(future)
            release = self._closed and not self._work
        if release:
            self._release()

    def _release(self) -> None:
        held, self._held = self._held, 0
        if held:
            self._budget._change(-held, "release")
            if held >= TRIM_AFTER_BYTES:
                trim_heap()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB"
