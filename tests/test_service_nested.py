"""Nested JSON frames read and written without a Python object per value: same as json, less memory."""

from __future__ import annotations

import json
import math
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nowcast.errors import InputError
from service.nested import encode_nested, parse_nested

values = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-1000, 1000),
)


def reference(obj: Any) -> np.ndarray | None:
    """What the parser must accept: a regular [time][y][x] array of numbers and nulls, as float32."""
    if not isinstance(obj, list) or not obj:
        return None
    if not all(isinstance(f, list) and f and all(isinstance(r, list) for r in f) for f in obj):
        return None
    rows = {len(f) for f in obj}
    cols = {len(r) for f in obj for r in f}
    if len(rows) != 1 or len(cols) != 1:
        return None
    flat = [v for f in obj for r in f for v in r]
    if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in flat):
        return None
    return np.array([[[math.nan if v is None else v for v in r] for r in f] for f in obj], dtype=np.float32)


@st.composite
def frames(draw: st.DrawFn) -> Any:
    n_t, n_y, n_x = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(0, 4))
    grid = [[[draw(values) for _ in range(n_x)] for _ in range(n_y)] for _ in range(n_t)]
    # now and then something irregular: a short row, a missing row, a string, a bool, deeper nesting
    mutation = draw(st.sampled_from(["none", "none", "row", "frame", "string", "bool", "deeper", "scalar"]))
    t, r = draw(st.integers(0, n_t - 1)), draw(st.integers(0, n_y - 1))
    if mutation == "row":
        grid[t][r] = grid[t][r] + [1.0]
    elif mutation == "frame":
        grid[t] = grid[t][:-1]
    elif mutation == "string" and n_x:
        grid[t][r][0] = "1.5"
    elif mutation == "bool" and n_x:
        grid[t][r][0] = True
    elif mutation == "deeper" and n_x:
        grid[t][r][0] = [1.0]
    elif mutation == "scalar":
        grid[t][r] = 2.0
    return grid


@settings(max_examples=300, deadline=None)
@given(frames(), st.sampled_from(["", " ", "\n  "]))
def test_parses_exactly_what_a_json_parser_accepts(grid: Any, space: str) -> None:
    text = json.dumps(grid, separators=("," + space, ":")).replace("[", "[" + space).encode()
    expected = reference(grid)
    if expected is None or expected.shape[2] == 0:
        if expected is None:
            with pytest.raises(InputError):
                parse_nested(text)
        return
    np.testing.assert_array_equal(parse_nested(text), expected)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=3, max_dims=4, max_side=5), elements=st.floats(width=32)))
def test_encoding_round_trips_and_matches_json(array: np.ndarray) -> None:
    array = np.where(np.isinf(array), np.float32(1.0), array)  # forecasts are finite
    text = b"".join(encode_nested(array))
    as_json = json.loads(text)
    objects = np.where(np.isnan(array), None, array.astype(np.float64)).tolist()
    assert as_json == objects
    if array.ndim == 3:
        np.testing.assert_array_equal(parse_nested(text), array)


@pytest.mark.parametrize(
    ("grid", "field", "words"),
    [
        ([[[1, 2], [3, 4]], [[1, 2], [3]]], "frames[1][1]", "has 1 columns; frames[0] has 2"),
        ([[[1, 2], [3, 4]], [[1, 2]]], "frames[1]", "has 1 rows; frames[0] has 2"),
        ([[[1, 2], [3, 4]], 5], "frames[1]", "expected nested arrays"),
        ([[[1, "2"]]], "frames", 'found "2"'),
        ([[[1, False]]], "frames", "found false"),
        ([], "frames", "no frames given"),
        ([[1, 2]], "frames", "expected nested arrays [time][y][x]"),
    ],
)
def test_errors_name_the_frame_and_row(grid: Any, field: str, words: str) -> None:
    with pytest.raises(InputError) as refused:
        parse_nested(json.dumps(grid).encode())
    assert refused.value.field == field
    assert words in str(refused.value)


def test_decoding_costs_a_few_times_the_text_not_a_python_object_per_value() -> None:
    text = ("[" + ",".join(["[" + ",".join(["[" + ",".join(["0.125"] * 512) + "]"] * 512) + "]"] * 4) + "]").encode()
    tracemalloc.start()
    try:
        parsed = parse_nested(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parsed.shape == (4, 512, 512) and float(parsed.max()) == 0.125
    # Python floats in lists would take 32 bytes a value, 8 times the float32 array and 5 times the text
    assert peak < 4 * len(text)
