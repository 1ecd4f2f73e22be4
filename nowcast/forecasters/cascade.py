"""What pySTEPS' cascade methods (S-PROG and STEPS) share here: their input and output.

Both forecast rain in dB (pysteps' examples: ``dB_transform(threshold=0.1, zerovalue=-15)``,
rain below -10 dBR counted as none), on a 6-level cascade with an AR(2) model per level,
fed the last 3 frames and their Lucas–Kanade motion (:func:`nowcast.motion.lucas_kanade`,
the extrapolation baseline's). pysteps wants finite input, so no-data is filled as dry; as
in extrapolation, what the forecast says there is dropped again: the last frame's no-data
mask is kept on every lead time, and so is pysteps' NaN for what flows in from outside.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nowcast.motion import lucas_kanade
from nowcast.quiet import quiet_stdout

DB_THRESHOLD_MMH = 0.1
DB_ZERO_VALUE = -15.0
PRECIP_THRESHOLD_DB = -10.0
N_CASCADE_LEVELS = 6
#: the AR(2) model is fitted on the last 3 frames
N_INPUT_FRAMES = 3


def to_db(past: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """(..., y, x) mm/h (frames, or members) in dBR as pysteps' examples transform it, no-data as dry; with
    pysteps' metadata."""
    with quiet_stdout():
        from pysteps.utils.transformation import dB_transform

    with np.errstate(invalid="ignore"):
        db, metadata = dB_transform(past.astype(np.float64), threshold=DB_THRESHOLD_MMH, zerovalue=DB_ZERO_VALUE)
    db[~np.isfinite(db)] = DB_ZERO_VALUE
    return db, metadata


def to_rate(forecast_db: np.ndarray, metadata: dict[str, Any], last_frame: np.ndarray) -> np.ndarray:
    """dBR forecast frames (..., y, x) back in mm/h: float32, never negative, NaN where the last frame had none."""
    with quiet_stdout():
        from pysteps.utils.transformation import dB_transform

    rate, _ = dB_transform(np.array(forecast_db, dtype=np.float64), metadata, inverse=True)
    rate = np.where(np.isfinite(last_frame), np.maximum(rate, 0.0), np.nan)
    return rate.astype(np.float32)


def motion(past: np.ndarray) -> np.ndarray:
    """The motion of (time, y, x) mm/h frames, as the extrapolation baseline estimates it."""
    with quiet_stdout():
        return lucas_kanade(past, DB_THRESHOLD_MMH)


def run_nowcast(method: str, past_db: np.ndarray, velocity: np.ndarray, steps: int, **options: Any) -> np.ndarray:
    """``pysteps.nowcasts.get_method(method)`` on dBR frames, its prints kept off stdout.

    pysteps' STEPS seeds numpy's global generator (its members draw from their own); that
    generator is put back as it was, so that a forecast leaves no trace on the caller's.
    """
    with quiet_stdout():
        from pysteps import nowcasts

        global_state = np.random.get_state()
        try:
            return nowcasts.get_method(method)(
                past_db, velocity, steps, precip_thr=PRECIP_THRESHOLD_DB, n_cascade_levels=N_CASCADE_LEVELS,
                **options,
            )
        finally:
            np.random.set_state(global_state)
