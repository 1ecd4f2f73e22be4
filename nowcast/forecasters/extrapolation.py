"""pySTEPS extrapolation: Lucas–Kanade motion + semi-Lagrangian advection.

This is what many operational centres run, and the baseline the GAN has to beat.
Motion is estimated on the dBR-transformed past frames (the way pysteps' own examples
do it); the last observed rain rate is then advected along that field. What flows in from
outside the domain is unknown to the method, so it is no-data (NaN, as in pysteps),
not dry; the last frame's no-data mask is kept on every lead time. Verification scores
every method on the pixels where all of them (and the observation) have data.
"""

from __future__ import annotations

import logging

import numpy as np

from nowcast.forecasters.base import Forecaster, Spacing
from nowcast.motion import lucas_kanade

logger = logging.getLogger(__name__)


def advect(frame: np.ndarray, velocity: np.ndarray, steps: int) -> np.ndarray:
    """Semi-Lagrangian advection of one (y, x) frame along ``velocity`` for ``steps`` steps."""
    from pysteps import extrapolation

    # no-data inside the domain is filled so that it does not spread along trajectories
    filled = np.where(np.isfinite(frame), frame, 0.0)
    out = extrapolation.get_method("semilagrangian")(filled, velocity, steps, outval=np.nan)
    out = np.where(np.isfinite(frame)[np.newaxis], out, np.nan)
    return np.where(np.isnan(out), np.nan, np.maximum(out, 0.0)).astype(np.float32)


class Extrapolation(Forecaster):
    name = "extrapolation"

    def __init__(self, n_input_frames: int = 4, threshold_mmh: float = 0.1) -> None:
        if n_input_frames < 2:
            raise ValueError("Lucas–Kanade motion needs at least 2 frames")
        self.n_input_frames = n_input_frames
        self.threshold_mmh = threshold_mmh

    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None,
                seed: int | None = None, spacing: Spacing | None = None) -> np.ndarray:
        out = np.empty((past.shape[0], steps, *past.shape[2:]), dtype=np.float32)
        for i, sequence in enumerate(past):
            velocity = lucas_kanade(sequence, self.threshold_mmh)
            out[i] = advect(sequence[-1], velocity, steps)
        return out
