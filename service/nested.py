"""Nested JSON arrays of numbers to float32 arrays and back, without a Python object per value.

A request may carry 24 frames of 1024x1024 values as ``[time][y][x]`` arrays. Parsed
into Python lists that is a float object and a list slot per value, over a gigabyte for
a 64 MiB body; here the array's text is read with bytes operations and numpy's text
parser, so decoding costs a few times the body. The text handed in must already be
valid JSON (the caller's JSON parser checked it): what is left to check is that it holds
only numbers and ``null`` (no data), nested to one regular shape.

Answers go out the same way: one frame at a time, so that encoding a long forecast
never holds its whole text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import numpy as np

from nowcast.errors import InputError

_WHITESPACE = b" \t\r\n"
_NUMBER = b"0123456789.eE+-"
_BRACKETS_TO_SPACE = bytes.maketrans(b"[]", b"  ")
_NOT_A_NUMBER = re.compile(rb'"(?:[^"\\]|\\.)*"|true|false|\{')


def parse_nested(text: bytes, field: str = "frames") -> np.ndarray:
    """``[time][y][x]`` numbers (``null`` = no data) as float32 of shape (time, y, x)."""
    if any(space in text for space in (b" ", b"\t", b"\r", b"\n")):
        text = text.translate(None, _WHITESPACE)
    _check_values_are_numbers(text, field)
    skeleton = text.translate(None, _NUMBER + b"nul")
    shape = _first_shape(text, skeleton, field)
    if skeleton != _skeleton(shape):
        raise _shape_error(skeleton, shape, field)
    del skeleton
    # a row of one value and an empty row have the same skeleton
    if shape[2] and b"[]" in text:
        raise _empty_row_error(text, text.index(b"[]"), shape[2], field)
    if not shape[2]:
        if text.translate(None, b"[],"):
            raise InputError(f"{field}: rows of different lengths (frames[0][0] is empty)", field=field)
        return np.empty(shape, dtype=np.float32)
    values = _read_numbers(text.translate(_BRACKETS_TO_SPACE).replace(b"null", b"nan"), shape[0] * shape[1] * shape[2])
    if values is None:
        raise InputError(f"{field}: could not read every value as a number", field=field)
    return values.reshape(shape)


def _read_numbers(text: bytes, count: int, piece_bytes: int = 1 << 20) -> np.ndarray | None:
    """``count`` comma-separated numbers as float32 (None if the text holds another number of them).

    Read a piece at a time: numpy holds the GIL while it parses, and the service's event
    loop needs it back every few milliseconds.
    """
    values = np.empty(count, dtype=np.float32)
    filled, start = 0, 0
    while start < len(text):
        end = text.find(b",", start + piece_bytes)
        end = len(text) if end < 0 else end
        with np.errstate(over="ignore"):
            piece = np.fromstring(text[start:end], dtype=np.float32, sep=",")
        if filled + piece.size > count:
            return None
        values[filled:filled + piece.size] = piece
        filled += piece.size
        start = end + 1
    return values if filled == count else None


def _check_values_are_numbers(text: bytes, field: str) -> None:
    if not text.replace(b"null", b"").translate(None, _NUMBER + b"[],"):
        return
    found = _NOT_A_NUMBER.search(text)
    token = found.group().decode("utf-8", "replace") if found else "a value that is not a number"
    if len(token) > 40:
        token = token[:37] + "..."
    raise InputError(f"{field}: values must be numbers or null (no data); found {token}", field=field)


def _first_shape(text: bytes, skeleton: bytes, field: str) -> tuple[int, int, int]:
    """(time, y, x) as the first frame and first row have it; the rest must agree."""
    if skeleton in (b"[]", b""):
        raise InputError(f"{field}: no frames given", field=field)
    if not skeleton.startswith(b"[[["):
        raise InputError(f"{field}: expected nested arrays [time][y][x] of numbers", field=field)
    row_end = skeleton.index(b"]")
    n_x = 0 if text.startswith(b"[[[]") else skeleton.count(b",", 3, row_end) + 1
    frame_end = skeleton.find(b"]]")
    n_y = skeleton.count(b"],[", 2, frame_end) + 1
    n_t = skeleton.count(b"]],[[") + 1
    return n_t, n_y, n_x


def _skeleton(shape: tuple[int, int, int]) -> bytes:
    """The brackets and commas of a regular array of ``shape``."""
    n_t, n_y, n_x = shape
    row = b"[" + b"," * max(n_x - 1, 0) + b"]"
    frame = b"[" + b",".join([row] * n_y) + b"]"
    return b"[" + b",".join([frame] * n_t) + b"]"


def _shape_error(skeleton: bytes, shape: tuple[int, int, int], field: str) -> InputError:
    """Name the first frame or row that differs from ``shape`` (the first frame's)."""
    expected = _skeleton(shape)
    at = _first_difference(skeleton, expected)
    depth = expected.count(b"[", 0, at) - expected.count(b"]", 0, at)
    got, wanted = skeleton[at:at + 1], expected[at:at + 1]
    t = expected.count(b",[[", 0, at + 2)  # frames are the only arrays that open right after a comma
    frame_start = skeleton.rfind(b"]],[[", 0, at) + 3 if t else 1
    _, n_y, n_x = shape
    if depth == 3 and got in (b",", b"]"):
        r = skeleton.count(b"],[", frame_start, at)
        row_start = skeleton.rfind(b"[", 0, at)
        columns = skeleton.count(b",", row_start, skeleton.find(b"]", at)) + 1
        return InputError(
            f"{field}[{t}][{r}]: has {columns} columns; {field}[0] has {n_x} (mismatched frame shapes)",
            field=f"{field}[{t}][{r}]",
        )
    if depth == 2 and got in (b",", b"]") and wanted in (b",", b"]"):
        rows = skeleton.count(b"],[", frame_start, skeleton.find(b"]]", frame_start)) + 1
        return InputError(
            f"{field}[{t}]: has {rows} rows; {field}[0] has {n_y} (mismatched frame shapes)",
            field=f"{field}[{t}]",
        )
    # a comma where the outer array should close starts the element at fault
    t = _top_level_index(skeleton, at) + (depth == 1 and got == b",")
    return InputError(
        f"{field}[{t}]: expected nested arrays [time][y][x] of numbers, every frame {n_y}x{n_x} "
        "(mismatched frame shapes)",
        field=f"{field}[{t}]",
    )


def _empty_row_error(text: bytes, at: int, n_x: int, field: str) -> InputError:
    t = _top_level_index(text, at)
    frame_start = text.rfind(b"]],[[", 0, at) + 3 if t else 1
    r = text.count(b"],[", frame_start, at)
    return InputError(
        f"{field}[{t}][{r}]: has 0 columns; {field}[0] has {n_x} (mismatched frame shapes)",
        field=f"{field}[{t}][{r}]",
    )


_INNERMOST_ARRAY = re.compile(rb"\[[^\[\]]*\]")


def _top_level_index(skeleton: bytes, at: int) -> int:
    """Which element of the outer array position ``at`` lies in."""
    prefix = skeleton[:at]
    while True:
        reduced = _INNERMOST_ARRAY.sub(b"", prefix)
        if reduced == prefix:
            # what is left are the arrays still open at ``at``: "[" commas "[" commas ...
            return prefix[1:].split(b"[", 1)[0].count(b",")
        prefix = reduced


def _first_difference(a: bytes, b: bytes, block: int = 1 << 16) -> int:
    start = 0
    while a[start:start + block] == b[start:start + block]:
        start += block
    while a[start:start + 1] == b[start:start + 1]:
        start += 1
    return start


def encode_nested(values: np.ndarray) -> Iterator[bytes]:
    """JSON text of ``values`` (any number of leading axes over (y, x)), one frame per chunk.

    NaN goes out as ``null``; numbers as Python writes a float (the float32 value exactly).
    """
    if values.ndim == 2:
        yield from _frame_text(values)
        return
    yield b"["
    for index in range(values.shape[0]):
        if index:
            yield b","
        yield from encode_nested(values[index])
    yield b"]"


def _frame_text(frame: np.ndarray, piece_values: int = 1 << 15) -> Iterator[bytes]:
    """One frame's text in pieces of whole rows, each written while holding the GIL only briefly."""
    rows = max(1, piece_values // max(frame.shape[1], 1))
    yield b"["
    for start in range(0, frame.shape[0], rows):
        text = json.dumps(frame[start:start + rows].astype(np.float64).tolist(), separators=(",", ":"))
        yield (b"," if start else b"") + text[1:-1].replace("NaN", "null").encode()
    yield b"]"
