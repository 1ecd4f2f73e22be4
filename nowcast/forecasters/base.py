"""The one forecaster interface, shared by the GAN and the baselines.

A forecaster takes the past radar sequence (the product's xarray form, see
:mod:`nowcast.sequence`) and returns the next ``steps`` frames in the same form, on
the same grid, with valid times following the input's time step and the input's
last time as ``forecast_reference_time`` attribute.

Subclasses implement :meth:`Forecaster.predict`, which works on plain arrays of rain
rate so that a service can stack several requests into one call; the xarray wrapping,
validation and metadata live here once.
"""

from __future__ import annotations

import abc
import logging
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.errors import SequenceError
from nowcast.sequence import future_times, like, validate_sequence

logger = logging.getLogger(__name__)


class Forecaster(abc.ABC):
    """Past frames in, future frames out.

    ``n_input_frames``: how many past frames the method uses (the last ones of the
    input); inputs with fewer frames are refused.
    ``supports_members``: whether :meth:`predict` can draw several ensemble members.
    """

    name: ClassVar[str] = "forecaster"
    n_input_frames: int = 2
    supports_members: bool = False

    @abc.abstractmethod
    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None,
                seed: int | None = None) -> np.ndarray:
        """Forecast from a batch of past sequences.

        ``past``: float32 rain rate in mm/h, shape (batch, time, y, x), NaN = no data,
        exactly ``n_input_frames`` frames.
        Returns float32 mm/h of shape (batch, steps, y, x), or (batch, members, steps,
        y, x) when ``members`` is given. Never negative; NaN only where the method
        cannot say anything.
        """

    def describe(self) -> dict[str, Any]:
        """What the forecaster is, for logs, model cards and the service."""
        return {"name": self.name, "n_input_frames": self.n_input_frames,
                "supports_members": self.supports_members}

    def check_past(self, past: xr.DataArray) -> xr.DataArray:
        """Validate a past sequence and keep the frames the method uses."""
        validate_sequence(past, min_frames=self.n_input_frames)
        return past.isel(time=slice(-self.n_input_frames, None))

    def forecast(self, past: xr.DataArray, steps: int, *, members: int | None = None,
                 seed: int | None = None) -> xr.DataArray:
        """Forecast ``steps`` frames after the end of ``past``.

        Returns the sequence form (time, y, x), or (member, time, y, x) when
        ``members`` is given.
        """
        if steps < 1:
            raise SequenceError(f"steps must be at least 1, got {steps}")
        if members is not None:
            if not self.supports_members:
                raise SequenceError(f"{self.name} does not produce ensemble members")
            if members < 1:
                raise SequenceError(f"members must be at least 1, got {members}")
        used = self.check_past(past)
        times = future_times(past, steps)
        out = self.predict(used.values[np.newaxis].astype(np.float32), steps, members=members, seed=seed)[0]
        return self.wrap(past, out, times, members=members)

    def wrap(self, past: xr.DataArray, frames: np.ndarray, times: pd.DatetimeIndex,
             *, members: int | None = None) -> xr.DataArray:
        """Put predicted frames into the sequence form on ``past``'s grid."""
        reference = pd.Timestamp(past["time"].values[-1])
        if members is None:
            result = like(past, frames, times)
        else:
            stacked = [like(past, frames[m], times) for m in range(frames.shape[0])]
            result = xr.concat(stacked, dim="member").assign_coords(member=np.arange(frames.shape[0]))
            result.attrs = stacked[0].attrs
        result.attrs["forecast_reference_time"] = str(reference)
        result.attrs["forecast_method"] = self.name
        return result
