"""Keep other libraries' prints off stdout: pysteps prints its start-up message and tables there.

Library code logs, never prints, and the ``nowcast`` command keeps stdout for its results,
so what pysteps prints inside :func:`quiet_stdout` is taken from it and logged at debug level.

Only the calling thread is silenced. :func:`contextlib.redirect_stdout` alone would swallow
what every other thread prints meanwhile, and two threads that overlap (the service's
inference threads) could leave ``sys.stdout`` pointing at a buffer for good; here one
filter stands in for ``sys.stdout`` while any thread is quiet, and is taken away by the last.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

logger = logging.getLogger(__name__)


class _ThreadFilter:
    """Writes of quiet threads go to their buffer, every other thread's to the real stdout."""

    def __init__(self, real: TextIO) -> None:
        self.real = real
        self.buffers = threading.local()

    def write(self, text: str) -> int:
        buffer = getattr(self.buffers, "current", None)
        return buffer.write(text) if buffer is not None else self.real.write(text)

    def flush(self) -> None:
        if getattr(self.buffers, "current", None) is None:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


_lock = threading.Lock()
_filter: _ThreadFilter | None = None
_quiet_threads = 0


@contextlib.contextmanager
def quiet_stdout(source: str = "pysteps") -> Iterator[io.StringIO]:
    """Nothing the calling thread prints inside reaches stdout; it is logged (debug) as ``source``."""
    global _filter, _quiet_threads
    with _lock:
        if _quiet_threads == 0:
            _filter = _ThreadFilter(sys.stdout)
            sys.stdout = _filter  # type: ignore[assignment]
        _quiet_threads += 1
        active = _filter
    assert active is not None
    printed = io.StringIO()
    outer = getattr(active.buffers, "current", None)
    active.buffers.current = printed
    try:
        yield printed
    finally:
        active.buffers.current = outer
        with _lock:
            _quiet_threads -= 1
            if _quiet_threads == 0:
                # someone else may have replaced stdout meanwhile (a test's capture): leave theirs
                if sys.stdout is active:
                    sys.stdout = active.real
                _filter = None
        if printed.getvalue().strip():
            logger.debug("%s printed: %s", source, printed.getvalue().strip())
