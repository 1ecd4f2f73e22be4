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


@pytest.fixture()
def tiny_train_config(tmp_path):
    """Writes a two-step training config on one synthetic event; ``[model]`` lines can be added."""

    def write(name: str, *model_lines: str) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text("\n".join([
            f'name = "{name}"', "[model]", "n_input = 4", "n_output = 3", "generator_channels = [4, 4]",
            "discriminator_channels = [4, 4]", "generator_layers = 2", *model_lines,
            "[data]", 'event_source = "synthetic"', 'train_events = ["1"]', "val_events = []", "patch_size = 32",
            "[train]", "steps = 2", "batch_size = 2", "log_every = 1", "val_every = 100", "checkpoint_every = 1",
        ]) + "\n")
        return path

    return write
