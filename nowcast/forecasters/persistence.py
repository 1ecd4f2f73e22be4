"""Persistence: the last observed frame, repeated. The floor every method must beat."""

from __future__ import annotations

import numpy as np

from nowcast.forecasters.base import Forecaster, Spacing


class Persistence(Forecaster):
    name = "persistence"
    n_input_frames = 1

    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None,
                seed: int | None = None, spacing: Spacing | None = None) -> np.ndarray:
        last = past[:, -1:]
        return np.repeat(last, steps, axis=1).astype(np.float32)
