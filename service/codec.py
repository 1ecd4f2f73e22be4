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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeVar

import msgspec
import numpy as np
import pandas as pd
import xarray as xr
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from nowcast.errors import FileTooLargeError, InputError, SequenceError
from nowcast.io.netcdf import read_netcdf_bytes, to_netcdf_bytes
from nowcast.io.safety import ReadLimits
from nowcast.products import (
    MIN_MEMBERS_ATTR,
    PROCESSED_NEIGHBOURHOOD_ATTR,
    QUANTILE_PRODUCTS,
    THRESHOLD_PRODUCTS,
    ProductRequest,
    ensemble_products,
)
from nowcast.sequence import check_rate_bound, make_sequence, time_step
from nowcast.transforms import to_mmh
from service.core.config import Settings
from service.core.errors import ServiceError, TooLargeInputError
from service.inference.models import LoadedModel
from service.nested import encode_nested, parse_nested
from service.schemas import EncodedFrames, NowcastOptions, SwitchModelRequest

JSON_TYPE = "application/json"
NETCDF_TYPE = "application/x-netcdf"
NETCDF_TYPES = (NETCDF_TYPE, "application/netcdf", "application/x-netcdf4")
Encoding = Literal["nested", "base64"]
ModelT = TypeVar("ModelT", bound=BaseModel)
#: ``reserve(nbytes, what)``: hold ``nbytes`` of the request memory budget from now on.
Reserve = Callable[[int, str], None]

# Memory a request holds while it is decoded and answered (measured with tracemalloc and the
# server's resident memory, bench/hostile_input.py): a JSON body up to 6 times its size (a
# dense "0,0,..." array: the text, its numbers and their float32 values and rain rates); a
# netCDF body 3 times its size (ours, the netCDF library's in-memory copy) and then 16 bytes
# per declared value; an answer 4 bytes per forecast value plus the pieces being encoded,
# and 8 more for netCDF (the file written in memory).
JSON_DECODE_FACTOR = 6
NETCDF_DECODE_FACTOR = 3
NETCDF_BYTES_PER_VALUE = 16
ANSWER_BYTES_PER_VALUE = 6
NETCDF_ANSWER_BYTES_PER_VALUE = 8
# Products are made from the members, which are held meanwhile with a sorted copy (quantiles, pm mean).
ENSEMBLE_BYTES_PER_VALUE = 8
DECODE_OVERHEAD_BYTES = 4 * 1024 * 1024

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
    #: what to answer instead of the forecast's frames (ensembles only)
    products: ProductRequest | None = None


# --- requests --------------------------------------------------------------------------------------------


def parse_json_request(body: bytes, settings: Settings) -> ForecastQuery:
    """Decode a JSON body (:class:`~service.schemas.NowcastRequest`) into a query."""
    fields = _json_fields(body)
    frames_text = fields.pop("frames", None)
    request = _validated(NowcastOptions, _json_object(fields), ("body",))
    if frames_text is None:
        raise RequestValidationError([{"loc": ("body", "frames"), "msg": "Field required", "type": "missing"}])
    values, default_encoding = _frames(bytes(frames_text), settings)
    del frames_text
    n_t, n_y, n_x = values.shape
    times = _frame_times(request, n_t)
    step_minutes = (times[1] - times[0]).total_seconds() / 60.0 if n_t > 1 else request.time_step_minutes
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            rate = to_mmh(values, request.units, accumulation_minutes=step_minutes)
    except InputError as exc:
        raise InputError(f"units: {exc}", field="units") from exc
    del values
    _check_rates(rate, "frames", settings.max_rain_rate_mmh)
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
        products=product_request(request.members, request.products, request.thresholds, request.quantile_levels,
                                 request.neighbourhood, request.accumulation_thresholds),
    )


def product_request(
    members: int | None,
    products: list[str] | None,
    thresholds: list[float] | None,
    quantile_levels: list[float] | None,
    neighbourhood: float | None = None,
    accumulation_thresholds: list[float] | None = None,
) -> ProductRequest | None:
    """The products a request asks for (None: the forecast's frames), checked with the field at fault named."""
    if products is None:
        for given, field in [(thresholds, "thresholds"), (quantile_levels, "quantile_levels"),
                             (neighbourhood, "neighbourhood"), (accumulation_thresholds, "accumulation_thresholds")]:
            if given is not None:
                raise InputError(f"{field}: given without products; ask for products too", field=field)
        return None
    if members is None:
        raise InputError("products: ensemble products are made from members; give members too", field="products")
    return ProductRequest.from_options(products, thresholds, quantile_levels, neighbourhood, accumulation_thresholds)


def query_numbers(text: str | None, field: str) -> list[float] | None:
    """Comma-separated numbers of the query string (None when absent)."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{field}: {text!r} is not a comma-separated list of numbers", field=field) from None


_FIELDS = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _json_fields(body: bytes) -> dict[str, msgspec.Raw]:
    """The body's top-level fields, each as its JSON text; the whole body is checked to be JSON."""
    try:
        return _FIELDS.decode(body)
    except msgspec.ValidationError:
        problem = {"loc": ("body",), "msg": "Input should be a JSON object", "type": "model_type"}
    except msgspec.DecodeError as exc:
        problem = {"loc": ("body",), "msg": f"Invalid JSON: {exc}", "type": "json_invalid"}
    except RecursionError:
        problem = {"loc": ("body",), "msg": "Invalid JSON: nested too deeply", "type": "json_invalid"}
    raise RequestValidationError([problem])


def _json_object(fields: dict[str, msgspec.Raw]) -> bytes:
    return b"{" + b",".join(msgspec.json.encode(key) + b":" + bytes(text) for key, text in fields.items()) + b"}"


def _validated(model: type[ModelT], text: bytes, loc: tuple[str, ...]) -> ModelT:
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": (*loc, *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        ) from None


def _frames(text: bytes, settings: Settings) -> tuple[np.ndarray, Encoding]:
    """The frames of a JSON body: nested arrays or a base64 object."""
    if text.startswith(b"{"):
        return _decode_base64_frames(_validated(EncodedFrames, text, ("body", "frames")), settings), "base64"
    if text.startswith(b"["):
        values = parse_nested(text)
        check_grid(*values.shape, settings)
        return values, "nested"
    raise InputError(
        "frames: expected nested arrays [time][y][x] of numbers, or an object with base64 data", field="frames"
    )


def parse_switch_request(body: bytes) -> SwitchModelRequest:
    """Decode the admin call's body (:class:`~service.schemas.SwitchModelRequest`)."""
    return _validated(SwitchModelRequest, body, ("body",))


def parse_netcdf_request(
    body: bytes,
    settings: Settings,
    *,
    steps: int | None,
    members: int | None,
    seed: int | None,
    reserve: Reserve | None = None,
    products: str | None = None,
    thresholds: str | None = None,
    quantile_levels: str | None = None,
    neighbourhood: float | None = None,
    accumulation_thresholds: str | None = None,
) -> ForecastQuery:
    """Decode a CF-netCDF body (steps, members, seed and the products, comma-separated, come from the query string).

    The body is checked before any of its data is read (nothing stored outside it, the
    grid within the limits); ``reserve(nbytes, what)`` is asked for the memory the
    declared grid needs before it is read.
    """
    if steps is None:
        raise InputError(
            "steps: give the number of frames to forecast as the query parameter ?steps=N", field="steps"
        )
    asked = product_request(
        members,
        [name.strip() for name in products.split(",") if name.strip()] if products is not None else None,
        query_numbers(thresholds, "thresholds"),
        query_numbers(quantile_levels, "quantile_levels"),
        neighbourhood,
        query_numbers(accumulation_thresholds, "accumulation_thresholds"),
    )

    def check_shape(n_t: int, n_y: int, n_x: int) -> None:
        check_grid(n_t, n_y, n_x, settings)
        if reserve is not None:
            needed = decode_estimate(NETCDF_TYPE, len(body)) + n_t * n_y * n_x * NETCDF_BYTES_PER_VALUE
            reserve(needed, f"a netCDF body of {n_t}x{n_y}x{n_x} values")

    try:
        sequence = read_netcdf_bytes(body, limits=read_limits(settings), check_shape=check_shape, name="body")
    except FileTooLargeError as exc:
        raise TooLargeInputError(str(exc), field="body") from exc
    except (TooLargeInputError, ServiceError):
        raise
    except InputError as exc:
        message = str(exc)
        raise InputError(message if message.startswith("body") else f"body: {message}", field="body") from exc
    except Exception as exc:  # a readable file the CF reader cannot interpret is still the client's file
        raise InputError(
            f"body: the netCDF file could not be interpreted ({type(exc).__name__}: {exc})", field="body"
        ) from exc
    _check_rates(sequence.values, "body", settings.max_rain_rate_mmh)
    return ForecastQuery(
        sequence=sequence, steps=steps, members=members, seed=seed, output_encoding="nested", products=asked
    )


def read_limits(settings: Settings) -> ReadLimits:
    """What a netCDF body may declare: no variable larger than the largest grid the service takes."""
    largest = settings.max_input_frames * settings.max_grid_pixels * 8
    return ReadLimits(
        max_variable_bytes=largest,
        max_chunk_bytes=min(largest, ReadLimits().max_chunk_bytes),
        max_objects=1_000,
        max_attributes=10_000,
    )


def decode_estimate(body_type: str, body_bytes: int) -> int:
    """Memory to reserve for reading and decoding a body of ``body_bytes`` before it arrives."""
    factor = JSON_DECODE_FACTOR if body_type == JSON_TYPE else NETCDF_DECODE_FACTOR
    return DECODE_OVERHEAD_BYTES + factor * body_bytes


def forecast_values(query: ForecastQuery) -> int:
    """Values the forecaster gives: members x steps x pixels."""
    return (query.members or 1) * query.steps * query.sequence.sizes["y"] * query.sequence.sizes["x"]


def output_values(query: ForecastQuery) -> int:
    """Values the answer holds: every value of every product asked for, else the forecast's."""
    if query.products is None:
        return forecast_values(query)
    fields = query.products.fields(query.members or 1, query.steps)
    return fields * query.sequence.sizes["y"] * query.sequence.sizes["x"]


def answer_estimate(query: ForecastQuery, *, netcdf_answer: bool) -> int:
    """Memory a query holds from decoding to the end of its answer: its frames, the forecast, the encoding.

    With products, the members they are made from are held too, beside every product value.
    """
    past = query.sequence.nbytes
    per_value = ANSWER_BYTES_PER_VALUE + (NETCDF_ANSWER_BYTES_PER_VALUE if netcdf_answer else 0)
    ensemble = ENSEMBLE_BYTES_PER_VALUE * forecast_values(query) if query.products is not None else 0
    return DECODE_OVERHEAD_BYTES + 2 * past + per_value * output_values(query) + ensemble


def check_limits(query: ForecastQuery, settings: Settings) -> None:
    """The service's own limits on a decoded query (what the forecaster checks, it checks itself)."""
    if query.steps > settings.max_steps:
        raise InputError(
            f"steps: {query.steps} is more than this service's limit of {settings.max_steps}", field="steps"
        )
    if query.members is not None and query.members > settings.max_members:
        raise InputError(
            f"members: {query.members} is more than this service's limit of {settings.max_members}",
            field="members",
        )
    _, n_y, n_x = query.sequence.shape
    values = output_values(query)
    if values <= settings.max_output_values:
        return
    if query.products is None:
        raise TooLargeInputError(
            f"steps: {query.members or 1} member(s) x {query.steps} steps x {n_y}x{n_x} pixels = {values} "
            f"values is more than this service's limit of {settings.max_output_values}",
            field="steps",
        )
    fields = query.products.fields(query.members or 1, query.steps)
    raise TooLargeInputError(
        f"products: {', '.join(query.products.products)} of {query.members} members over {query.steps} steps are "
        f"{fields} fields x {n_y}x{n_x} pixels = {values} values, more than this service's limit of "
        f"{settings.max_output_values}; ask for fewer products (probabilities or quantiles instead of members), "
        "fewer steps or a smaller tile",
        field="products",
    )


def _decode_base64_frames(frames: EncodedFrames, settings: Settings) -> np.ndarray:
    if len(frames.shape) != 3 or min(frames.shape) < 1:
        raise InputError(
            f"frames.shape: expected (time, y, x) with every size at least 1; got {frames.shape}",
            field="frames.shape",
        )
    n_t, n_y, n_x = frames.shape
    check_grid(n_t, n_y, n_x, settings)
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
    values = np.frombuffer(raw, dtype="<f4").reshape(n_t, n_y, n_x).astype(np.float32)
    del raw
    return values


def check_grid(n_t: int, n_y: int, n_x: int, settings: Settings) -> None:
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


def _check_rates(rate: np.ndarray, field: str, max_rate_mmh: float) -> None:
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
    try:
        check_rate_bound(rate, max_rate_mmh)
    except SequenceError as exc:
        raise InputError(f"{field}: {exc} (configurable: NOWCAST_MAX_RAIN_RATE_MMH)", field=field) from exc


def _frame_times(request: NowcastOptions, n_t: int) -> pd.DatetimeIndex:
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


def answer_of(query: ForecastQuery, forecast: xr.DataArray) -> xr.DataArray | xr.Dataset:
    """What is sent back: the forecast, or the products asked for made from its members."""
    return forecast if query.products is None else ensemble_products(forecast, query.products)


@dataclass(frozen=True)
class FallbackNote:
    """Why the fallback answered instead of ``failed`` (``reason`` None: the model itself answered)."""

    reason: str | None = None
    failed: str | None = None

    def fields(self) -> dict[str, object]:
        return {"fallback": self.reason is not None, "fallback_reason": self.reason, "fallback_from": self.failed}

    def attrs(self) -> dict[str, object]:
        """Global attributes of a netCDF answer (netCDF has no booleans: 1 or 0)."""
        attrs: dict[str, object] = {"fallback": np.int8(self.reason is not None), "fallback_reason": self.reason or ""}
        if self.failed:
            attrs["fallback_from"] = self.failed
        return attrs


def netcdf_answer(
    forecast: xr.DataArray | xr.Dataset, model: LoadedModel, request_id: str, fallback: FallbackNote | None = None
) -> bytes:
    """The CF-netCDF file of a forecast or of its products (:func:`nowcast.io.netcdf.write_netcdf`)."""
    return to_netcdf_bytes(
        forecast,
        forecast_reference_time=forecast.attrs["forecast_reference_time"],
        attrs={"nowcast_model": model.label, "nowcast_request_id": request_id, **(fallback or FallbackNote()).attrs()},
    )


def json_answer(
    query: ForecastQuery,
    forecast: xr.DataArray | xr.Dataset,
    model: LoadedModel,
    *,
    request_id: str,
    batch_size: int,
    timings_ms: dict[str, float],
    started: float,
    fallback: FallbackNote | None = None,
) -> Iterator[bytes]:
    """The JSON answer as chunks of text, a frame at a time (a long forecast is never held as one text).

    ``forecast`` is what :func:`answer_of` gives: the forecast's frames go in ``frames``, products
    (a dataset) in ``products``, each with its shape, units, thresholds or levels and frames.

    ``timings_ms`` are the request's timings so far; ``encode_ms`` and ``total_ms`` (from
    ``started``, a ``time.perf_counter()`` value) are added at the end, so the timings
    come after the frames.
    """
    encoding_started = time.perf_counter()
    times = pd.DatetimeIndex(forecast["time"].values)
    reference = pd.Timestamp(forecast.attrs["forecast_reference_time"])
    step = (times[1] - times[0]) if len(times) > 1 else times[0] - reference
    head = {
        "request_id": request_id,
        "model": {"name": model.name, "version": model.version},
        "forecast_reference_time": _iso(reference),
        "valid_times": [_iso(t) for t in times],
        "time_step_minutes": step.total_seconds() / 60.0,
        "units": "mm/h",
        "shape": [*([query.members] if query.members is not None else []), len(times), *query.sequence.shape[1:]],
        "members": query.members,
        "projection": str(forecast.attrs.get("projection", "")),
        "xpixelsize": float(forecast.attrs.get("xpixelsize", 1000.0)),
        "ypixelsize": float(forecast.attrs.get("ypixelsize", 1000.0)),
        "batch_size": batch_size,
        **(fallback or FallbackNote()).fields(),
    }
    head_text = json.dumps(head, separators=(",", ":"), allow_nan=False).encode()[:-1]
    if isinstance(forecast, xr.Dataset):
        yield head_text + b',"products":{'
        yield from _products_text(forecast, query.output_encoding)
        yield b"}"
    else:
        yield head_text + b',"frames":'
        yield from _frames_text(np.ascontiguousarray(forecast.values, dtype="<f4"), query.output_encoding)
    finished = time.perf_counter()
    timings = {**timings_ms, "encode_ms": (finished - encoding_started) * 1e3, "total_ms": (finished - started) * 1e3}
    yield b',"timings_ms":' + json.dumps({k: round(v, 3) for k, v in timings.items()}).encode() + b"}"


def _products_text(products: xr.Dataset, encoding: Encoding) -> Iterator[bytes]:
    """Each product as ``"name": {"shape", "units", "thresholds" | "levels", "frames"}``, a frame at a time."""
    for index, name in enumerate(products.data_vars):
        values = np.ascontiguousarray(products[name].values, dtype="<f4")
        described: dict[str, object] = {"shape": list(values.shape), "units": _PRODUCT_UNITS.get(str(name), "mm/h")}
        if name in THRESHOLD_PRODUCTS:
            described["thresholds"] = products["threshold"].values.tolist()
        elif name == "accumulation_probabilities":  # mm over the forecast period
            described["thresholds"] = products["accumulation_threshold"].values.tolist()
        if name == "probabilities":
            neighbourhood = products[name].attrs.get(PROCESSED_NEIGHBOURHOOD_ATTR, 0.0)
            described["neighbourhood_km_per_minute"] = float(neighbourhood)
        elif name in QUANTILE_PRODUCTS:
            described["levels"] = products["quantile"].values.tolist()
        if MIN_MEMBERS_ATTR in products[name].attrs:
            described[MIN_MEMBERS_ATTR] = int(products[name].attrs[MIN_MEMBERS_ATTR])
        key = (b"," if index else b"") + json.dumps(str(name)).encode() + b":"
        yield key + json.dumps(described, separators=(",", ":")).encode()[:-1] + b',"frames":'
        yield from _frames_text(values, encoding)
        yield b"}"


#: the units of the products in a JSON answer that are not rates (mm/h): probabilities, rain over the period
_PRODUCT_UNITS = {**dict.fromkeys(THRESHOLD_PRODUCTS, "1"), "accumulation_probabilities": "1",
                  "accumulation_quantiles": "mm"}


def _frames_text(values: np.ndarray, encoding: Encoding) -> Iterator[bytes]:
    return _base64_frames(values) if encoding == "base64" else encode_nested(values)


def _base64_frames(values: np.ndarray, chunk_bytes: int = 3 * 2**20) -> Iterator[bytes]:
    """The base64 frames object, its data encoded in pieces (a multiple of 3 bytes each, so they join)."""
    described = {"encoding": "base64", "dtype": "float32", "byte_order": "little", "shape": list(values.shape)}
    yield json.dumps(described, separators=(",", ":")).encode()[:-1] + b',"data":"'
    raw = memoryview(values).cast("B")
    for start in range(0, len(raw), chunk_bytes):
        yield base64.b64encode(raw[start:start + chunk_bytes])
    yield b'"}'


def _iso(stamp: pd.Timestamp) -> str:
    return (
        stamp.strftime("%Y-%m-%dT%H:%M:%S")
        + ("" if stamp.microsecond == 0 else f".{stamp.microsecond:06d}")
        + "Z"
    )
