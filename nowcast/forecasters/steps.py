"""pySTEPS STEPS (Bowler, Pierce & Seed 2006): S-PROG plus noise, an ensemble of plausible futures.

Each member is S-PROG's cascade forecast with stochastic noise put back at the scales it
has lost (pysteps' ``nonparametric`` noise, shaped like the last frames' spectrum) and its
motion perturbed (``bps``, whose parameters are in km and minutes: from the frames'
spacing). Run through pysteps itself (:mod:`nowcast.forecasters.cascade`).
"""

from __future__ import annotations

import numpy as np

from nowcast.ensemble import probability_matched_mean
from nowcast.forecasters import cascade
from nowcast.forecasters.base import DEFAULT_SPACING, Forecaster, Spacing

#: members drawn for the one forecast STEPS gives when no members are asked for
DEFAULT_MEMBERS = 20
NOISE_METHOD = "nonparametric"
MOTION_PERTURBATION = "bps"


class Steps(Forecaster):
    """STEPS ensembles: ``members`` members, reproducible for a given ``seed``.

    Without ``members``, one forecast: the probability-matched mean
    (:func:`nowcast.ensemble.probability_matched_mean`) of :data:`DEFAULT_MEMBERS` members.
    """

    name = "steps"
    n_input_frames = cascade.N_INPUT_FRAMES
    supports_members = True

    @property
    def batch_invariant(self) -> bool:
        """Each sequence of a batch is forecast alone with the same seed: its members never depend on the others."""
        return True

    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None,
                seed: int | None = None, spacing: Spacing | None = None) -> np.ndarray:
        spacing = spacing or DEFAULT_SPACING
        draws = members or DEFAULT_MEMBERS
        out = np.empty((past.shape[0], draws, steps, *past.shape[2:]), dtype=np.float32)
        for i, sequence in enumerate(past):
            out[i] = self._members(sequence, steps, draws, seed, spacing)
        if members is None:
            return np.stack([probability_matched_mean(ensemble) for ensemble in out])
        return out

    def _members(self, sequence: np.ndarray, steps: int, members: int, seed: int | None,
                 spacing: Spacing) -> np.ndarray:
        """(members, steps, y, x) mm/h from one (time, y, x) sequence."""
        past_db, metadata = cascade.to_db(sequence)
        forecast_db = cascade.run_nowcast(
            "steps", past_db, cascade.motion(sequence), steps,
            n_ens_members=members, kmperpixel=spacing.pixel_km, timestep=spacing.step_minutes,
            noise_method=NOISE_METHOD, vel_pert_method=MOTION_PERTURBATION, seed=seed,
        )
        return cascade.to_rate(forecast_db, metadata, sequence[-1])
