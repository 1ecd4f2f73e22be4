"""Exceptions raised on bad input.

Every error the user can cause is an :class:`InputError` whose message names the
problem, so the CLI can exit non-zero with that message and the service can answer
4xx with it.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input data or arguments that the product cannot use."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnreadableFileError(InputError):
    """A file that is missing, truncated or not in the expected format."""


class UnitsError(InputError):
    """Units the product does not know how to turn into mm/h."""


class SequenceError(InputError):
    """A radar sequence that cannot be forecast from (frames, times, grid)."""


class UnknownNameError(KeyError):
    """A name looked up in a registry that does not hold it."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class UnsafeFileError(UnreadableFileError):
    """A file that would make the reader open other files (external storage, links, virtual datasets)."""


class FileTooLargeError(UnsafeFileError):
    """A file that declares more data, chunks or objects than the reader's limits allow."""
