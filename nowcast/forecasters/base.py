"""The one forecaster interface, shared by the GAN and the baselines.

A forecaster takes the past radar sequence (the product's xarray form, see
:mod:`nowcast.sequence`) and returns the next ``steps`` frames in the same form, on
the same grid, with valid times following the input's time step and the input's
last time as ``forecast_reference_time`` attribute.

Forecasting is three steps, so that a service can stack several requests into one model
call between the first and the last: :meth:`Forecaster.prepare` checks the request and
keeps the frames the method uses (the one preparation step the command line, the
evaluation job and the service share); :meth:`Forecaster.predict`, which subclasses
implement, works on plain arrays of rain rate; :meth:`Forecaster.finish` puts the frames
on the input's grid. :meth:`Forecaster.forecast` runs all three.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.errors import SequenceError
from nowcast.products import MEAN_NEIGHBOURHOOD_ATTR, NEIGHBOURHOOD_ATTR
from nowcast.sequence import MAX_RAIN_RATE_MMH, future_times, like, pixel_size_km, validate_sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spacing:
    """How far apart the frames are: pixel size in km and time step in minutes.

    Methods whose parameters have physical units (STEPS' motion perturbations) need them;
    most ignore them.
    """

    pixel_km: float
    step_minutes: float


#: what :meth:`Forecaster.predict` assumes when it is given no spacing
DEFAULT_SPACING = Spacing(pixel_km=1.0, step_minutes=5.0)


@dataclass(frozen=True)
class PreparedForecast:
    """A checked request: the frames the method uses and where its answer goes."""

    past: np.ndarray  # (n_input_frames, y, x) float32 mm/h, NaN = no data
    valid_times: pd.DatetimeIndex
    source: xr.DataArray  # the past sequence: grid, georeferencing, reference time
    steps: int
    spacing: Spacing
    members: int | None = None
    seed: int | None = None


class Forecaster(abc.ABC):
    """Past frames in, future frames out.

    ``n_input_frames``: how many past frames the method uses (the last ones of the
    input); inputs with fewer frames are refused.
    ``supports_members``: whether :meth:`predict` can draw several ensemble members.
    ``probability_neighbourhood_km_per_minute``: the square neighbourhood its members'
    exceedance probabilities are processed with where a product request does not say
    (:mod:`nowcast.products`): a trained ensemble's fitted value, 0 (none) otherwise.
    ``mean_neighbourhood_km_per_minute``: the window whose mean places its probability-matched
    mean (:func:`nowcast.products.probability_matched_mean_of`): a trained ensemble's chosen
    value, 0 (the ensemble mean's own ranks) otherwise.
    """

    name: ClassVar[str] = "forecaster"
    n_input_frames: int = 2
    supports_members: bool = False
    probability_neighbourhood_km_per_minute: float = 0.0
    mean_neighbourhood_km_per_minute: float = 0.0
    #: where the method runs ("cpu", "cuda", ...)
    device: Any = "cpu"
    #: methods with a half-precision path set this, and the service turns ``half`` on where it is safe
    supports_half: bool = False
    half: bool = False
    #: what ``half`` computes in on the method's device: "float16" (a GPU), "bfloat16" (a CPU with
    #: bfloat16 instructions), None where the device has no fast half precision
    half_precision: str | None = None

    @property
    def batch_invariant(self) -> bool:
        """Whether a sequence's forecast does not depend on the others in its batch.

        A deterministic method is; one that draws noise declares it (its noise drawn per sequence).
        """
        return not self.supports_members

    @abc.abstractmethod
    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None,
                seed: int | None = None, spacing: Spacing | None = None) -> np.ndarray:
        """Forecast from a batch of past sequences.

        ``past``: float32 rain rate in mm/h, shape (batch, time, y, x), NaN = no data,
        exactly ``n_input_frames`` frames; ``spacing``: the batch's pixel size and time
        step (None: 1 km, 5 min).
        Returns float32 mm/h of shape (batch, steps, y, x), or (batch, members, steps,
        y, x) when ``members`` is given. Never negative; NaN only where the method
        cannot say anything.
        """

    def describe(self) -> dict[str, Any]:
        """What the forecaster is, for logs, model cards and the service."""
        described = {"name": self.name, "n_input_frames": self.n_input_frames,
                     "supports_members": self.supports_members}
        if self.supports_members:
            described["probability_neighbourhood_km_per_minute"] = self.probability_neighbourhood_km_per_minute
            described["mean_neighbourhood_km_per_minute"] = self.mean_neighbourhood_km_per_minute
        return described

    def warmup(self, ny: int = 128, nx: int = 128) -> None:
        """Run once on dry input, so that the first real forecast pays no start-up cost."""
        self.predict(np.zeros((1, self.n_input_frames, ny, nx), dtype=np.float32), 1)

    def prepare(self, past: xr.DataArray, steps: int, *, members: int | None = None, seed: int | None = None,
                max_rate_mmh: float = MAX_RAIN_RATE_MMH) -> PreparedForecast:
        """Check a request and keep what :meth:`predict` needs.

        Errors name the part at fault in their ``field``: ``steps``, ``members``, ``frames``
        or ``time_step_minutes`` (a single frame whose sequence does not say its time step).
        """
        if steps < 1:
            raise SequenceError(f"steps must be at least 1, got {steps}", field="steps")
        if members is not None:
            if not self.supports_members:
                raise SequenceError(f"{self.name} gives one forecast, not ensemble members", field="members")
            if members < 1:
                raise SequenceError(f"members must be at least 1, got {members}", field="members")
        if past.sizes.get("time", 0) < self.n_input_frames:
            raise SequenceError(f"{self.name} needs at least {self.n_input_frames} past frames; "
                                f"got {past.sizes.get('time', 0)}", field="frames")
        try:
            validate_sequence(past, min_frames=self.n_input_frames, max_rate_mmh=max_rate_mmh)
        except SequenceError as exc:
            raise SequenceError(str(exc), field=exc.field or "frames") from exc
        used = np.ascontiguousarray(past.values[-self.n_input_frames:], dtype=np.float32)
        times = future_times(past, steps)
        step_minutes = (times[0] - pd.Timestamp(past["time"].values[-1])).total_seconds() / 60.0
        spacing = Spacing(pixel_size_km(past), step_minutes)
        return PreparedForecast(used, times, past, steps, spacing, members, seed)

    def finish(self, prepared: PreparedForecast, frames: np.ndarray) -> xr.DataArray:
        """Predicted frames, (steps, y, x) or (members, steps, y, x), in the sequence form on the input's grid."""
        source = prepared.source
        reference = pd.Timestamp(source["time"].values[-1])
        if prepared.members is None:
            result = like(source, frames, prepared.valid_times)
        else:
            # one member's frames give the grid, times and attributes; the members join them as they are
            first = like(source, frames[0], prepared.valid_times)
            result = xr.DataArray(np.asarray(frames, dtype=np.float32), dims=("member", *first.dims),
                                  coords={**first.coords, "member": np.arange(frames.shape[0])}, attrs=first.attrs,
                                  name=first.name)
        result.attrs["forecast_reference_time"] = str(reference)
        result.attrs["forecast_method"] = self.name
        # this forecaster's neighbourhoods, never ones the input frames carried
        for attr, rate in ((NEIGHBOURHOOD_ATTR, self.probability_neighbourhood_km_per_minute),
                           (MEAN_NEIGHBOURHOOD_ATTR, self.mean_neighbourhood_km_per_minute)):
            result.attrs.pop(attr, None)
            if prepared.members is not None and rate:
                result.attrs[attr] = float(rate)
        return result

    def forecast(self, past: xr.DataArray, steps: int, *, members: int | None = None,
                 seed: int | None = None) -> xr.DataArray:
        """Forecast ``steps`` frames after the end of ``past``.

        Returns the sequence form (time, y, x), or (member, time, y, x) when
        ``members`` is given.
        """
        prepared = self.prepare(past, steps, members=members, seed=seed)
        frames = self.predict(prepared.past[np.newaxis], steps, members=members, seed=seed,
                              spacing=prepared.spacing)[0]
        return self.finish(prepared, frames)
