"""The JSON bodies of the API (requests, answers, errors), as pydantic models.

Frames travel either as nested arrays ``[time][y][x]`` (``null`` = no data) or, for
large grids, base64 of little-endian float32 values in C order with their shape.
Requests are validated strictly: numbers must be JSON numbers (``"1.5"`` and ``true``
are refused), and nested frames are read by :mod:`service.nested`, not by pydantic, so
that a large grid does not become a Python object per value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

NestedFrames = list[list[list[float | None]]]
NestedMembers = list[list[list[list[float | None]]]]
#: what an ensemble answer can carry (:data:`nowcast.products.PRODUCTS`)
ProductName = Literal["members", "probabilities", "mean", "pm_mean", "quantiles", "max_probabilities",
                      "accumulation_probabilities", "accumulation_quantiles"]


class EncodedFrames(BaseModel):
    """Frames as base64 of little-endian float32 in C order (NaN = no data)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    encoding: Literal["base64"] = "base64"
    dtype: Literal["float32"] = "float32"
    byte_order: Literal["little"] = "little"
    shape: list[int] = Field(
        min_length=3, max_length=4, description="(time, y, x); (member, time, y, x) for ensembles"
    )
    data: str = Field(description="base64 of the values")


_EXAMPLE_FRAME = [[0.0, 0.5], [1.2, None]]


class NowcastOptions(BaseModel):
    """Everything a JSON request holds besides its frames."""

    model_config = ConfigDict(extra="forbid", strict=True)

    units: str = Field(
        default="mm/h",
        max_length=64,
        description="'mm/h' (rate), 'mm' (accumulation over the time step) or 'dBZ'",
    )
    timestamps: list[datetime] | None = Field(
        default=None, description="one per frame, regular steps (UTC when no offset is given)"
    )
    start_time: datetime | None = Field(
        default=None, description="time of the first frame, with time_step_minutes"
    )
    time_step_minutes: float | None = Field(default=None, gt=0, le=1440)
    steps: int = Field(ge=1, description="frames to forecast")
    members: int | None = Field(
        default=None, ge=1, description="ensemble members, where the model draws them"
    )
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description="fixes the ensemble's noise")
    products: list[ProductName] | None = Field(
        default=None,
        min_length=1,
        max_length=len(get_args(ProductName)),
        description="with members: what to answer instead of the members' frames (members, exceedance "
        "probabilities, ensemble mean, probability-matched mean, quantiles, probabilities of the rate above each "
        "threshold at some lead, probabilities of the rain over the forecast period above each accumulation "
        "threshold, quantiles of the members' rain over the period)",
    )
    thresholds: list[Annotated[float, Field(ge=0, le=1000)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="rain rates (mm/h) of the probabilities, increasing (default 1, 4, 8)",
    )
    quantile_levels: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="levels in [0, 1] of the quantiles and of accumulation_quantiles, increasing (default 0.1, 0.5, "
        "0.9)",
    )
    accumulation_thresholds: list[Annotated[float, Field(ge=0, le=1000)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="rain in mm over the forecast period (from the reference time to the last step) of "
        "accumulation_probabilities, increasing (default 1, 5, 10)",
    )
    neighbourhood: float | None = Field(
        default=None,
        ge=0,
        le=10,
        description="with probabilities: each becomes the mean over a square window whose side grows this many km "
        "per minute of lead (IMPROVER's square neighbourhood processing; 0: none; default: the model's fitted "
        "one, none where it has none)",
    )
    projection: str = Field(
        default="", max_length=4096, pattern=r"^[^\x00-\x1f]*$", description="PROJ string of the grid"
    )
    xpixelsize: float | None = Field(default=None, gt=0, le=1e7, description="grid spacing in x (metres)")
    ypixelsize: float | None = Field(default=None, gt=0, le=1e7, description="grid spacing in y (metres)")
    x: list[float] | None = Field(default=None, description="x of the grid-cell centres")
    y: list[float] | None = Field(default=None, description="y of the grid-cell centres, in row order")
    output_encoding: Literal["nested", "base64"] | None = Field(
        default=None, description="how to send the frames back (default: like the input)"
    )


class NowcastRequest(NowcastOptions):
    """The latest radar frames and what to forecast from them."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "frames": [_EXAMPLE_FRAME] * 4,
                    "units": "mm/h",
                    "timestamps": [
                        "2024-06-01T12:00:00Z",
                        "2024-06-01T12:05:00Z",
                        "2024-06-01T12:10:00Z",
                        "2024-06-01T12:15:00Z",
                    ],
                    "steps": 3,
                }
            ]
        },
    )

    frames: NestedFrames | EncodedFrames = Field(
        description="past frames, oldest first: nested [time][y][x] (null = no data) or base64 float32"
    )


class ModelRef(BaseModel):
    name: str
    version: str | None


class Timings(BaseModel):
    decode_ms: float
    queue_ms: float
    inference_ms: float
    encode_ms: float
    total_ms: float


class ProductFrames(BaseModel):
    """One ensemble product: its frames in the request's encoding."""

    shape: list[int] = Field(description="(steps, y, x), or (member | threshold | level, steps, y, x); (threshold | "
                             "level, y, x) for the products of the whole forecast period")
    units: Literal["mm/h", "mm", "1"] = Field(description="mm/h for rates, mm for rain over the forecast period, 1 "
                                                          "for probabilities")
    minimum_members_with_data: int | None = Field(
        default=None, description="probabilities, mean, quantiles and the period's products: null (no data) where "
        "fewer members have data (for the period's products, data at every lead)"
    )
    frames: NestedFrames | NestedMembers | EncodedFrames


class ProbabilityFrames(ProductFrames):
    thresholds: list[float] = Field(description="P(rate > threshold), thresholds in mm/h, one per leading index")
    neighbourhood_km_per_minute: float = Field(
        default=0.0, description="the square neighbourhood the probabilities were processed with (0: none)"
    )


class MaxProbabilityFrames(ProductFrames):
    thresholds: list[float] = Field(
        description="P(rate > threshold at some lead of the forecast), thresholds in mm/h, one per leading index"
    )


class QuantileFrames(ProductFrames):
    levels: list[float] = Field(description="quantile levels in [0, 1], one per leading index")


class AccumulationProbabilityFrames(ProductFrames):
    thresholds: list[float] = Field(
        description="P(rain over the forecast period > threshold), thresholds in mm (not mm/h), one per leading index"
    )


class AccumulationQuantileFrames(ProductFrames):
    levels: list[float] = Field(
        description="quantile levels in [0, 1] of the members' rain over the forecast period (mm), one per leading "
        "index"
    )


class NowcastProducts(BaseModel):
    """The products asked for, made from the ensemble members (nowcast.products)."""

    members: ProductFrames | None = None
    probabilities: ProbabilityFrames | None = None
    mean: ProductFrames | None = None
    pm_mean: ProductFrames | None = Field(default=None, description="probability-matched ensemble mean")
    quantiles: QuantileFrames | None = None
    max_probabilities: MaxProbabilityFrames | None = Field(
        default=None, description="(threshold, y, x): the probability of the rate above each threshold at some lead"
    )
    accumulation_probabilities: AccumulationProbabilityFrames | None = Field(
        default=None, description="(threshold, y, x): the probability of the rain over the forecast period (from the "
        "reference time to the last step) above each threshold in mm"
    )
    accumulation_quantiles: AccumulationQuantileFrames | None = Field(
        default=None, description="(level, y, x): quantiles of the members' rain over the forecast period, in mm"
    )


class NowcastResponse(BaseModel):
    """The forecast frames (or, when products were asked for, the products) and where they come from."""

    request_id: str
    model: ModelRef
    forecast_reference_time: datetime
    valid_times: list[datetime]
    time_step_minutes: float
    units: Literal["mm/h"] = "mm/h"
    shape: list[int] = Field(description="(steps, y, x), or (members, steps, y, x)")
    members: int | None
    frames: NestedFrames | NestedMembers | EncodedFrames | None = Field(
        default=None, description="the forecast, when no products were asked for"
    )
    products: NowcastProducts | None = Field(default=None, description="the products asked for")
    projection: str
    xpixelsize: float
    ypixelsize: float
    batch_size: int = Field(description="requests that shared the model call")
    fallback: bool = Field(
        default=False, description="the forecast is the extrapolation's, because the model failed or was late"
    )
    fallback_reason: Literal["model_error", "deadline"] | None = Field(
        default=None, description="why the fallback answered (also in the X-Nowcast-Fallback header)"
    )
    fallback_from: str | None = Field(default=None, description="the model that should have answered")
    timings_ms: Timings


class ActiveModel(BaseModel):
    name: str
    version: str | None
    kind: Literal["builtin", "trained"]
    device: str
    precision: Literal["float32", "float16", "bfloat16"]
    n_input_frames: int
    supports_members: bool
    loaded_at: datetime
    warmup_seconds: float
    card: dict[str, Any] | None


class ModelVersion(BaseModel):
    version: str
    card: dict[str, Any] | None
    error: str | None = None


class AvailableModel(BaseModel):
    name: str
    kind: Literal["builtin", "trained"]
    versions: list[ModelVersion]
    description: dict[str, Any] | None = None


class ModelsResponse(BaseModel):
    active: ActiveModel
    available: list[AvailableModel]


class SwitchModelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=200, description="NAME or NAME@VERSION")
    version: str | None = Field(default=None, max_length=50, description="default: the latest")


class SwitchModelResponse(BaseModel):
    active: ActiveModel
    previous: ActiveModel | None


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class FeedReadiness(BaseModel):
    newest_reference_time: datetime | None
    age_s: float | None = Field(description="seconds from the newest product's reference time to now")
    stale: bool = Field(description="older than NOWCAST_STALE_AFTER_S, or no product at all")
    error: str | None = None


class ReadyResponse(BaseModel):
    ready: bool
    model: str | None = None
    reason: str | None = None
    feed: FeedReadiness | None = Field(default=None, description="with a product folder: how old its newest product is")


class GridInfo(BaseModel):
    ny: int
    nx: int
    projection: str = Field(description="PROJ string; empty when the grid has none")
    x: list[float] = Field(description="first and last cell centre in x (projection units)")
    y: list[float] = Field(description="first and last cell centre in y, in row order")
    pixel_size_m: float
    bounds_lonlat: list[list[float]] | None = Field(
        description="[[lon_min, lat_min], [lon_max, lat_max]] of the grid's outline; null without a projection"
    )
    corners_lonlat: list[list[float]] | None = Field(
        description="[lon, lat] of the outline's corners, clockwise from the top left (top: the largest y)"
    )


class ProductLinks(BaseModel):
    self: str
    file: str = Field(description="this product's CF-netCDF file")
    point: str = Field(description="point forecasts of the latest product: add ?lat=..&lon=.. or ?x=..&y=..")


class LatestProduct(BaseModel):
    """The newest product of the feed."""

    reference_time: datetime
    model: str
    fallback: bool
    fallback_reason: str | None
    members: int | None
    thresholds_mmh: list[float]
    valid_times: list[datetime]
    lead_times_min: list[float]
    observed_times: list[datetime]
    missing_frames: int
    written_at: datetime
    age_s: float
    stale: bool
    grid: GridInfo
    links: ProductLinks


class PointLocation(BaseModel):
    lat: float | None = Field(description="of the cell's centre (null without a projection)")
    lon: float | None
    x: float = Field(description="of the cell's centre, projection units")
    y: float
    row: int
    col: int


class ObservedRate(BaseModel):
    time: datetime
    rate_mmh: float | None = Field(description="null: no data")


class ForecastRate(BaseModel):
    time: datetime
    lead_min: float
    rate_mmh: float | None = Field(description="null: no data")
    probabilities: dict[str, float | None] | None = Field(
        description="P(rate > threshold) by threshold in mm/h (ensemble products only)"
    )


class PointForecast(BaseModel):
    """The latest product at the grid cell nearest to one place."""

    reference_time: datetime
    model: str
    fallback: bool
    location: PointLocation
    observed: list[ObservedRate]
    forecast: list[ForecastRate]
    probability_neighbourhood_km_per_minute: float | None = Field(
        default=None, description="the square neighbourhood the probabilities were processed with, growing this "
        "many km per minute of lead: a probability of rain within about half a window of here (0: the members' own "
        "fractions; null: no probabilities)")
    max_probabilities: dict[str, float | None] | None = Field(
        default=None, description="P(rate > threshold at some time of the forecast) by threshold in mm/h (null: "
        "not in this product)")
    accumulation_probabilities: dict[str, float | None] | None = Field(
        default=None, description="P(rain over the forecast period, from the reference time to the last step, > "
        "threshold) by threshold in mm (not mm/h) over the forecast period (null: not in this product; a null "
        "value: no data at this cell)")
    no_data: bool = Field(description="no forecast value at this cell (outside radar range): nothing to say")


class ErrorResponse(BaseModel):
    detail: str
    field: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None
