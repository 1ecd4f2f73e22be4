"""Shared fixtures: synthetic sequences for core tests, the real archive for `realdata` tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from nowcast.paths import data_root
from nowcast.synthetic import SyntheticRain, synthetic_sequence


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The real radar archive; tests that use it skip where it is absent."""
    root = data_root()
    if not (root / "radar").is_dir():
        pytest.skip(f"real radar archive not found at {root} (set NOWCAST_DATA_ROOT to a pysteps-data tree)")
    return root


@pytest.fixture()
def small_sequence():
    """16 frames of 48x56 synthetic rain at 5-min steps, with a no-data border."""
    return synthetic_sequence(SyntheticRain(ny=48, nx=56, frames=16, no_data_border=2), seed=1)
