"""pySTEPS S-PROG (Seed 2003): extrapolation whose small scales fade as fast as they lose skill.

The last frames are split into a cascade of spatial scales; each scale follows its own
AR(2) model in the frame that moves with the rain, so small features, which live briefly,
decay first and the forecast grows smoother with lead time: the expected rain field, not a
plausible one. Run through pysteps itself (:mod:`nowcast.forecasters.cascade`).
"""

from __future__ import annotations

import numpy as np

from nowcast.forecasters import cascade
from nowcast.forecasters.base import Forecaster, Spacing


class SProg(Forecaster):
    name = "sprog"
    n_input_frames = cascade.N_INPUT_FRAMES

    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None,
                seed: int | None = None, spacing: Spacing | None = None) -> np.ndarray:
        out = np.empty((past.shape[0], steps, *past.shape[2:]), dtype=np.float32)
        for i, sequence in enumerate(past):
            past_db, metadata = cascade.to_db(sequence)
            forecast_db = cascade.run_nowcast("sprog", past_db, cascade.motion(sequence), steps)
            out[i] = cascade.to_rate(forecast_db, metadata, sequence[-1])
        return out
