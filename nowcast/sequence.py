"""The one in-memory form of a radar sequence.

A sequence is an :class:`xarray.DataArray` named ``precipitation_rate`` holding rain
rate in mm/h with dims ``(time, y, x)``:

* ``time`` is ``datetime64[ns]`` (UTC, no time zone), strictly increasing;
* ``y`` and ``x`` are the grid-cell centres in the projection's units (metres for
  the national composites); ``y`` follows the row order of the data;
* ``attrs`` carry the georeferencing: ``projection`` (a PROJ string, may be empty when
  unknown), ``xpixelsize`` and ``ypixelsize`` (projection units), ``institution`` and
  ``source`` where known; a single frame may carry its ``time_step_minutes``;
* no-data (outside radar range, missing scans) is NaN, never zero;
* rates lie between 0 and :data:`MAX_RAIN_RATE_MMH` (forecasters refuse anything above:
  no radar composite measures more, and a model fed more can overflow).

Models work on tensors laid out ``(batch, time, channel, y, x)``; the conversion lives
in :mod:`nowcast.transforms`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.errors import SequenceError

VARIABLE_NAME = "precipitation_rate"
UNITS = "mm/h"
DIMS = ("time", "y", "x")
GEO_ATTRS = ("projection", "xpixelsize", "ypixelsize", "institution", "source")
#: The highest rain rate a sequence may hold. The heaviest rain ever gauged, over a
#: minute, is near 2000 mm/h; 5-minute radar composites peak at a few hundred.
MAX_RAIN_RATE_MMH = 1000.0


def make_sequence(
    rate: np.ndarray,
    times: Sequence[Any] | np.ndarray | pd.DatetimeIndex,
    *,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    projection: str = "",
    xpixelsize: float = 1000.0,
    ypixelsize: float = 1000.0,
    attrs: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Build a sequence from an array of rain rates in mm/h, shape (time, y, x).

    Without ``x``/``y`` the grid is numbered in pixel units from the centre of the
    first cell (``xpixelsize * (i + 0.5)``).
    """
    rate = np.asarray(rate, dtype=np.float32)
    if rate.ndim == 2:
        rate = rate[np.newaxis]
    if rate.ndim != 3:
        raise SequenceError(f"rain rate must be 3-D (time, y, x); got shape {rate.shape}")
    n_t, n_y, n_x = rate.shape
    time_index = pd.DatetimeIndex(pd.to_datetime(np.asarray(times)))
    if time_index.tz is not None:
        time_index = time_index.tz_convert("UTC").tz_localize(None)
    if len(time_index) != n_t:
        raise SequenceError(f"{len(time_index)} timestamps for {n_t} frames")
    if x is None:
        x = (np.arange(n_x) + 0.5) * xpixelsize
    if y is None:
        y = (np.arange(n_y) + 0.5) * ypixelsize
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != (n_x,) or y.shape != (n_y,):
        raise SequenceError(
            f"grid coordinates x{x.shape}, y{y.shape} do not match frames of {n_y}x{n_x}"
        )
    all_attrs: dict[str, Any] = {
        "units": UNITS,
        "long_name": "rain rate",
        "projection": projection or "",
        "xpixelsize": float(xpixelsize),
        "ypixelsize": float(ypixelsize),
    }
    all_attrs.update(attrs or {})
    all_attrs["units"] = UNITS
    return xr.DataArray(
        rate,
        dims=DIMS,
        coords={"time": time_index.values.astype("datetime64[ns]"), "y": y, "x": x},
        name=VARIABLE_NAME,
        attrs=all_attrs,
    )


def time_step(sequence: xr.DataArray) -> pd.Timedelta:
    """The sequence's regular time step; raises if the steps are irregular.

    A single frame has the step its ``time_step_minutes`` attribute gives, if any.
    """
    times = pd.DatetimeIndex(sequence["time"].values)
    if len(times) < 2:
        minutes = float(sequence.attrs.get("time_step_minutes") or 0.0)
        if minutes > 0:
            return pd.Timedelta(minutes=minutes)
        raise SequenceError(
            "a single frame has no time step: give two frames or more, or its time step (time_step_minutes)",
            field="time_step_minutes",
        )
    steps = np.diff(times.values).astype("timedelta64[s]").astype(np.int64)
    if np.any(steps <= 0):
        raise SequenceError("timestamps must be strictly increasing")
    if np.any(steps != steps[0]):
        uniq = sorted({int(s) for s in steps})
        raise SequenceError(
            f"irregular time steps: found steps of {', '.join(f'{s}s' for s in uniq)}"
        )
    return pd.Timedelta(seconds=int(steps[0]))


def validate_sequence(
    sequence: xr.DataArray, *, min_frames: int = 1, max_rate_mmh: float = MAX_RAIN_RATE_MMH
) -> xr.DataArray:
    """Check that ``sequence`` is in the product's form and fit to forecast from.

    Returns it unchanged; raises :class:`SequenceError` naming the first problem.
    """
    if not isinstance(sequence, xr.DataArray):
        raise SequenceError(f"expected an xarray.DataArray, got {type(sequence).__name__}")
    if tuple(sequence.dims) != DIMS:
        raise SequenceError(f"dims must be {DIMS}; got {tuple(sequence.dims)}")
    if sequence.attrs.get("units") != UNITS:
        raise SequenceError(f"units must be {UNITS!r}; got {sequence.attrs.get('units')!r}")
    n_t = sequence.sizes["time"]
    if n_t < min_frames:
        raise SequenceError(f"too few frames: need at least {min_frames}, got {n_t}")
    if sequence.sizes["y"] < 2 or sequence.sizes["x"] < 2:
        raise SequenceError(f"grid too small: {sequence.sizes['y']}x{sequence.sizes['x']}")
    if n_t >= 2:
        time_step(sequence)
    values = sequence.values
    finite = np.isfinite(values)
    if np.isinf(values).any():
        raise SequenceError("rain rates contain infinite values")
    empty = [i for i in range(n_t) if not finite[i].any()]
    if empty:
        stamps = ", ".join(str(pd.Timestamp(sequence["time"].values[i])) for i in empty)
        raise SequenceError(f"all-NaN frame(s) at {stamps}: no radar data to forecast from")
    if (values[finite] < 0).any():
        raise SequenceError("rain rates must not be negative")
    check_rate_bound(values, max_rate_mmh)
    return sequence


def check_rate_bound(rate: np.ndarray, max_rate_mmh: float = MAX_RAIN_RATE_MMH) -> None:
    """Refuse rates above ``max_rate_mmh`` (time, y, x), naming the first one."""
    with np.errstate(invalid="ignore"):
        above = rate > max_rate_mmh
    if above.any():
        t, r, c = (int(i) for i in np.argwhere(above)[0])
        raise SequenceError(
            f"rain rate {float(rate[t, r, c]):.4g} mm/h in frame {t} at row {r}, column {c} is above "
            f"the physical bound of {max_rate_mmh:g} mm/h"
        )


def pixel_size_km(sequence: xr.DataArray) -> float:
    """The grid's mean pixel size in km, from its geometry.

    Projected grids give ``xpixelsize``/``ypixelsize`` in projection units (metres for
    every projection the product reads; a ``+units=km`` projection is taken as km). A
    latitude/longitude grid gives them in degrees: the size is the geodesic distance
    between neighbouring cell centres at the grid's centre (pyproj, WGS84).
    """
    xsize = abs(float(sequence.attrs.get("xpixelsize", 1000.0)))
    ysize = abs(float(sequence.attrs.get("ypixelsize", xsize)))
    projection = str(sequence.attrs.get("projection", ""))
    if _is_geographic(projection):
        return _geodesic_pixel_km(sequence, xsize, ysize)
    scale = 1.0 if "+units=km" in projection else 1e-3
    return (xsize + ysize) / 2.0 * scale


def _is_geographic(projection: str) -> bool:
    if not projection:
        return False
    if "+proj=longlat" in projection or "+proj=latlong" in projection:
        return True
    try:
        import pyproj

        return bool(pyproj.CRS.from_user_input(projection).is_geographic)
    except Exception:  # a projection pyproj does not read is not a lat/lon grid we can measure
        return False


def _geodesic_pixel_km(sequence: xr.DataArray, xsize_deg: float, ysize_deg: float) -> float:
    import pyproj

    lat = float(np.mean(sequence["y"].values)) if "y" in sequence.coords else 0.0
    lon = float(np.mean(sequence["x"].values)) if "x" in sequence.coords else 0.0
    geod = pyproj.Geod(ellps="WGS84")
    _, _, dx = geod.inv(lon, lat, lon + xsize_deg, lat)
    _, _, dy = geod.inv(lon, lat, lon, lat + ysize_deg)
    return (abs(dx) + abs(dy)) / 2.0 / 1000.0


def future_times(sequence: xr.DataArray, steps: int) -> pd.DatetimeIndex:
    """The valid times of ``steps`` frames after the last one of ``sequence``."""
    step = time_step(sequence)
    last = pd.Timestamp(sequence["time"].values[-1])
    return pd.DatetimeIndex([last + step * (i + 1) for i in range(steps)])


def like(sequence: xr.DataArray, rate: np.ndarray, times: pd.DatetimeIndex) -> xr.DataArray:
    """A new sequence on ``sequence``'s grid and georeferencing with other frames."""
    geo = {k: v for k, v in sequence.attrs.items() if k != "units"}
    return make_sequence(
        rate,
        times,
        x=sequence["x"].values,
        y=sequence["y"].values,
        projection=str(sequence.attrs.get("projection", "")),
        xpixelsize=float(sequence.attrs.get("xpixelsize", 1000.0)),
        ypixelsize=float(sequence.attrs.get("ypixelsize", 1000.0)),
        attrs=geo,
    )


def lead_minutes_of(forecast: xr.DataArray, reference_time: Any | None = None) -> list[float]:
    """Lead time of each forecast frame in minutes after the forecast reference time."""
    reference = reference_time
    if reference is None:
        reference = forecast.attrs.get("forecast_reference_time")
    if reference is None:
        raise SequenceError("forecast has no forecast_reference_time; pass reference_time")
    reference = pd.Timestamp(reference)
    times = pd.DatetimeIndex(forecast["time"].values)
    return [float((t - reference).total_seconds() / 60.0) for t in times]
