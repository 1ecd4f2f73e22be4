"""Request bodies to radar sequences and forecasts to answer bodies.

Everything here is plain, blocking code (the routes run it in a worker thread). It
turns either body format into the product's sequence form (:mod:`nowcast.sequence`)
with the same library calls the command line uses, and refuses bad input with an
:class:`~nowcast.errors.InputError` that names the field and the problem.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from nowcast.errors import InputError
from nowcast.io.netcdf import read_netcdf_bytes, to_netcdf_bytes
from nowcast.sequence import make_sequence, time_step, validate_sequence
from nowcast.transforms import to_mmh
from service.core.config import Settings
from service.core.errors import TooLargeInputError
from service.inference.models import LoadedModel
from service.schemas import EncodedFrames, NowcastRequest

JSON_TYPE = "application/json"
NETCDF_TYPE = "application/x-netcdf"
NETCDF_TYPES = (NETCDF_TYPE, "application/netcdf", "application/x-netcdf4")
Encoding = Literal["nested", "base64"]

# pandas' nanosecond timestamps cover 1677-09-21 .. 2262-04-11; stay well inside.
_EARLIEST = pd.Timestamp("1700-01-01")
_LATEST = pd.Timestamp("2200-01-01")


@dataclass(frozen=True)
class ForecastQuery:
    """A decoded request: the past sequence and what to forecast from it."""

    sequence: xr.DataArray
    steps: int
    members: int | None
    seed: int | None
    output_encoding: Encoding


# --- requests --------------------------------------------------------------------------------------------


def parse_json_request(body: bytes, settings: Settings) -> ForecastQuery:
    """Decode a JSON body (:class:`~service.schemas.NowcastRequest`) into a query."""
    try:
        request = NowcastRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        ) from None
    if isinstance(request.frames, EncodedFrames):
        values = _decode_base64_frames(request.frames, settings)
        default_encoding: Encoding = "base64"
    else:
        values = _nested_frames(request.frames, settings)
        default_encoding = "nested"
    n_t, n_y, n_x = values.shape
    times = _frame_times(request, n_t)
    step_minutes = (times[1] - times[0]).total_seconds() / 60.0 if n_t > 1 else request.time_step_minutes
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            rate = to_mmh(values, request.units, accumulation_minutes=step_minutes)
    except InputError as exc:
        raise InputError(f"units: {exc}", field="units") from exc
    _check_rates(rate, "frames")
    x = _grid_axis(request.x, n_x, "x")
    y = _grid_axis(request.y, n_y, "y")
    sequence = make_sequence(
        rate,
        times,
        x=x,
        y=y,
        projection=request.projection,
        xpixelsize=request.xpixelsize or _spacing(x, 1000.0),
        ypixelsize=request.ypixelsize or _spacing(y, 1000.0),
    )
    if n_t == 1:
        # One frame has no time step of its own; keep the one the client gave for the valid times.
        sequence.attrs["time_step_minutes"] = float(step_minutes or 0.0)
    return ForecastQuery(
        sequence=sequence,
        steps=request.steps,
        members=request.members,
        seed=request.seed,
        output_encoding=request.output_encoding or default_encoding,
    )


def parse_netcdf_request(
    body: bytes, settings: Settings, *, steps: int | None, members: int | None, seed: int | None
) -> ForecastQuery:
    """Decode a CF-netCDF body (steps, members, seed come from the query string)."""
    if steps is None:
        raise InputError(
            "steps: give the number of frames to forecast as the query parameter ?steps=N", field="steps"
        )
    try:
        sequence = read_netcdf_bytes(body)
    except InputError as exc:
        # the reader names its temporary file; the client knows it as the request body
        message = re.sub(r"^[^\s']*input\.nc:\s*", "", str(exc))
        message = re.sub(r"[^\s']*input\.nc", "body", message)
        raise InputError(f"body: {message}", field="body") from exc
    except Exception as exc:  # a readable file the CF reader cannot interpret is still the client's file
        raise InputError(
            f"body: the netCDF file could not be interpreted ({type(exc).__name__}: {exc})", field="body"
        ) from exc
    _check_grid(sequence.sizes["time"], sequence.sizes["y"], sequence.sizes["x"], settings)
    if sequence.sizes["time"] < 2:
        raise InputError("body: a single frame has no time step; send at least two frames", field="body")
    _check_rates(sequence.values, "body")
    return ForecastQuery(sequence=sequence, steps=steps, members=members, seed=seed, output_encoding="nested")


def check_query(
    query: ForecastQuery, model: LoadedModel, settings: Settings, *, netcdf_answer: bool
) -> np.ndarray:
    """Check ``query`` against the model and the limits; return the frames the model uses."""
    forecaster = model.forecaster
    if query.steps > settings.max_steps:
        raise InputError(
            f"steps: {query.steps} is more than this service's limit of {settings.max_steps}", field="steps"
        )
    if query.members is not None:
        if not forecaster.supports_members:
            raise InputError(
                f"members: {model.label} gives one forecast, not ensemble members", field="members"
            )
        if query.members > settings.max_members:
            raise InputError(
                f"members: {query.members} is more than this service's limit of {settings.max_members}",
                field="members",
            )
        if netcdf_answer:
            raise InputError(
                "members: ensemble members are answered as JSON only; ask for one forecast or "
                "accept application/json",
                field="members",
            )
    n_t, n_y, n_x = query.sequence.shape
    values = (query.members or 1) * query.steps * n_y * n_x
    if values > settings.max_output_values:
        raise TooLargeInputError(
            f"steps: {query.members or 1} member(s) x {query.steps} steps x {n_y}x{n_x} pixels = {values} "
            f"values is more than this service's limit of {settings.max_output_values}",
            field="steps",
        )
    needed = forecaster.n_input_frames
    if n_t < needed:
        raise InputError(
            f"frames: {model.label} needs at least {needed} past frames; got {n_t}", field="frames"
        )
    try:
        validate_sequence(query.sequence, min_frames=needed)
    except InputError as exc:
        raise InputError(f"frames: {exc}", field="frames") from exc
    if n_t == 1 and not query.sequence.attrs.get("time_step_minutes"):
        raise InputError(
            "time_step_minutes: one frame has no time step; give time_step_minutes", field="time_step_minutes"
        )
    return np.ascontiguousarray(query.sequence.values[-needed:], dtype=np.float32)


def _decode_base64_frames(frames: EncodedFrames, settings: Settings) -> np.ndarray:
    if len(frames.shape) != 3 or min(frames.shape) < 1:
        raise InputError(
            f"frames.shape: expected (time, y, x) with every size at least 1; got {frames.shape}",
            field="frames.shape",
        )
    n_t, n_y, n_x = frames.shape
    _check_grid(n_t, n_y, n_x, settings)
    try:
        raw = base64.b64decode(frames.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"frames.data: not valid base64 ({exc})", field="frames.data") from exc
    expected = n_t * n_y * n_x * 4
    if len(raw) != expected:
        raise InputError(
            f"frames.data: holds {len(raw)} bytes; shape {n_t}x{n_y}x{n_x} of float32 needs {expected}",
            field="frames.data",
        )
    return np.frombuffer(raw, dtype="<f4").reshape(n_t, n_y, n_x).astype(np.float32)


def _nested_frames(frames: list[list[list[float | None]]], settings: Settings) -> np.ndarray:
    if not frames:
        raise InputError("frames: no frames given", field="frames")
    n_y = len(frames[0])
    n_x = len(frames[0][0]) if n_y else 0
    _check_grid(len(frames), n_y, n_x, settings)
    for t, frame in enumerate(frames):
        if len(frame) != n_y:
            raise InputError(
                f"frames[{t}]: has {len(frame)} rows; frames[0] has {n_y} (mismatched frame shapes)",
                field=f"frames[{t}]",
            )
        for r, row in enumerate(frame):
            if len(row) != n_x:
                raise InputError(
                    f"frames[{t}][{r}]: has {len(row)} columns; frames[0] has {n_x} "
                    "(mismatched frame shapes)",
                    field=f"frames[{t}][{r}]",
                )
    with np.errstate(over="ignore", invalid="ignore"):
        # null becomes NaN (no data) in the float conversion
        return np.array(frames, dtype=np.float64).astype(np.float32)


def _check_grid(n_t: int, n_y: int, n_x: int, settings: Settings) -> None:
    if n_t > settings.max_input_frames:
        raise TooLargeInputError(
            f"frames: {n_t} frames is more than this service's limit of "
            f"{settings.max_input_frames}; send only the latest ones",
            field="frames",
        )
    if n_y < 2 or n_x < 2:
        raise InputError(f"frames: grid of {n_y}x{n_x} is too small; need at least 2x2", field="frames")
    if max(n_y, n_x) > settings.max_grid_side or n_y * n_x > settings.max_grid_pixels:
        raise TooLargeInputError(
            f"frames: grid of {n_y}x{n_x} is larger than this service's limit (sides up to "
            f"{settings.max_grid_side}, {settings.max_grid_pixels} pixels); split it into tiles",
            field="frames",
        )


def _check_rates(rate: np.ndarray, field: str) -> None:
    infinite = np.isinf(rate)
    if infinite.any():
        t, r, c = (int(i) for i in np.argwhere(infinite)[0])
        raise InputError(
            f"{field}: rain rate is infinite or overflows float32 in frame {t} at row {r}, "
            f"column {c}; use null (NaN) for no data",
            field=field,
        )
    with np.errstate(invalid="ignore"):
        negative = rate < 0
    if negative.any():
        t, r, c = (int(i) for i in np.argwhere(negative)[0])
        raise InputError(
            f"{field}: negative rain rate {float(rate[t, r, c]):g} mm/h in frame {t} at row {r}, column {c}",
            field=field,
        )


def _frame_times(request: NowcastRequest, n_t: int) -> pd.DatetimeIndex:
    if request.timestamps is not None and request.start_time is not None:
        raise InputError(
            "timestamps: give either timestamps or start_time with time_step_minutes, not both",
            field="timestamps",
        )
    if request.timestamps is not None:
        if len(request.timestamps) != n_t:
            raise InputError(
                f"timestamps: {len(request.timestamps)} timestamps for {n_t} frames", field="timestamps"
            )
        times = pd.DatetimeIndex([_utc(t, "timestamps") for t in request.timestamps])
        if n_t > 1:
            probe = xr.DataArray(np.zeros(n_t), dims=["time"], coords={"time": times.values})
            try:
                step = time_step(probe)
            except InputError as exc:
                raise InputError(f"timestamps: {exc}", field="timestamps") from exc
            if (
                request.time_step_minutes is not None
                and abs(step.total_seconds() / 60.0 - request.time_step_minutes) > 1e-6
            ):
                raise InputError(
                    f"time_step_minutes: {request.time_step_minutes:g} disagrees with the "
                    f"timestamps' step of {step.total_seconds() / 60.0:g} minutes",
                    field="time_step_minutes",
                )
        return times
    if request.start_time is None or request.time_step_minutes is None:
        raise InputError(
            "timestamps: give the frames' timestamps, or start_time and time_step_minutes", field="timestamps"
        )
    start = _utc(request.start_time, "start_time")
    step = pd.Timedelta(minutes=request.time_step_minutes)
    if step < pd.Timedelta(seconds=1):
        raise InputError(
            "time_step_minutes: the time step must be at least one second", field="time_step_minutes"
        )
    end = start + step * (n_t - 1)
    if end > _LATEST:
        raise InputError(f"start_time: frames would run past {_LATEST:%Y-%m-%d}", field="start_time")
    return pd.DatetimeIndex([start + step * i for i in range(n_t)])


def _utc(value: datetime, field: str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    if not _EARLIEST <= stamp <= _LATEST:
        raise InputError(f"{field}: {value.isoformat()} is outside {_EARLIEST:%Y}–{_LATEST:%Y}", field=field)
    return stamp


def _grid_axis(values: list[float] | None, size: int, field: str) -> np.ndarray | None:
    if values is None:
        return None
    axis = np.asarray(values, dtype=np.float64)
    if axis.shape != (size,):
        raise InputError(f"{field}: {len(values)} coordinates for {size} grid cells", field=field)
    if not np.isfinite(axis).all():
        raise InputError(f"{field}: coordinates must be finite numbers", field=field)
    return axis


def _spacing(axis: np.ndarray | None, default: float) -> float:
    if axis is None or len(axis) < 2:
        return default
    spacing = float(abs(axis[1] - axis[0]))
    return spacing if spacing > 0 else default


# --- answers ---------------------------------------------------------------------------------------------


def forecast_sequence(query: ForecastQuery, model: LoadedModel, frames: np.ndarray) -> xr.DataArray:
    """The forecast in the product's sequence form, exactly as ``Forecaster.forecast`` builds it."""
    past = query.sequence
    if past.sizes["time"] > 1:
        step = time_step(past)
    else:
        step = pd.Timedelta(minutes=float(past.attrs["time_step_minutes"]))
    last = pd.Timestamp(past["time"].values[-1])
    times = pd.DatetimeIndex([last + step * (i + 1) for i in range(query.steps)])
    return model.forecaster.wrap(past, frames, times, members=query.members)


def netcdf_answer(forecast: xr.DataArray, model: LoadedModel, request_id: str) -> bytes:
    return to_netcdf_bytes(
        forecast,
        forecast_reference_time=forecast.attrs["forecast_reference_time"],
        attrs={"nowcast_model": model.label, "nowcast_request_id": request_id},
    )


def json_answer(
    query: ForecastQuery,
    forecast: xr.DataArray,
    model: LoadedModel,
    *,
    request_id: str,
    batch_size: int,
    timings_ms: dict[str, float],
) -> bytes:
    values = np.ascontiguousarray(forecast.values, dtype="<f4")
    encoded: bytes | None = None
    if query.output_encoding == "base64":
        # Spliced into the JSON text below: base64 needs no escaping, and json.dumps of megabytes of
        # text costs more than the forecast itself for a fast model.
        encoded = base64.b64encode(values.data)
        frames: Any = {
            "encoding": "base64",
            "dtype": "float32",
            "byte_order": "little",
            "shape": list(values.shape),
            "data": _DATA_PLACEHOLDER,
        }
    else:
        frames = _nested(values)
    times = pd.DatetimeIndex(forecast["time"].values)
    step = (
        (times[1] - times[0])
        if len(times) > 1
        else times[0] - pd.Timestamp(forecast.attrs["forecast_reference_time"])
    )
    payload = {
        "request_id": request_id,
        "model": {"name": model.name, "version": model.version},
        "forecast_reference_time": _iso(pd.Timestamp(forecast.attrs["forecast_reference_time"])),
        "valid_times": [_iso(t) for t in times],
        "time_step_minutes": step.total_seconds() / 60.0,
        "units": "mm/h",
        "shape": list(values.shape),
        "members": query.members,
        "frames": frames,
        "projection": str(forecast.attrs.get("projection", "")),
        "xpixelsize": float(forecast.attrs.get("xpixelsize", 1000.0)),
        "ypixelsize": float(forecast.attrs.get("ypixelsize", 1000.0)),
        "batch_size": batch_size,
        "timings_ms": {k: round(v, 3) for k, v in timings_ms.items()},
    }
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    if encoded is None:
        return text
    head, tail = text.split(f'"{_DATA_PLACEHOLDER}"'.encode(), 1)
    return b"".join((head, b'"', encoded, b'"', tail))


_DATA_PLACEHOLDER = "@@frames@@"


def _nested(values: np.ndarray) -> list[Any]:
    missing = np.isnan(values)
    if not missing.any():
        return values.tolist()
    # JSON has no NaN: no-data goes out as null
    as_objects = values.astype(object)
    as_objects[missing] = None
    return as_objects.tolist()


def _iso(stamp: pd.Timestamp) -> str:
    return (
        stamp.strftime("%Y-%m-%dT%H:%M:%S")
        + ("" if stamp.microsecond == 0 else f".{stamp.microsecond:06d}")
        + "Z"
    )
