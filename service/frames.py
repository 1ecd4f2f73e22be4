"""Map frames of products for the forecasters' page, each rendered once and kept.

The fields come from whoever holds the product (:class:`service.feed.ProductStore` for the feed,
:class:`AdhocProducts` for forecasts of dropped files); the PNGs rendered from them are kept
under the product's identity (its file and when it was written, or an ad-hoc handle) within a
byte budget, least recently used out first.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from nowcast.errors import InputError
from nowcast.feed import ProductFields
from nowcast.products import MIN_MEMBERS_ATTR, PROCESSED_NEIGHBOURHOOD_ATTR
from nowcast.render import image_extent, map_projection, probability_scale, rain_scale, render_png
from service.core.errors import NotFoundError

Kind = Literal["observed", "forecast", "probability", "max_probability", "accumulation_probability"]
KINDS: tuple[Kind, ...] = ("observed", "forecast", "probability", "max_probability", "accumulation_probability")
#: the kinds of frame drawn at a threshold (in URLs: .../{kind}/{threshold}/{index}.png); mm/h, but mm for
#: ``accumulation_probability``
THRESHOLD_KINDS: tuple[Kind, ...] = ("probability", "max_probability", "accumulation_probability")


class FrameStore:
    """Rendered frames of recently shown products (thread-safe; rendering runs outside the lock, so two
    requests for one new frame may both render it, and the first one kept wins)."""

    def __init__(self, *, max_bytes: int = 64 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._pngs: OrderedDict[tuple[Hashable, str, str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def png(self, product: Hashable, fields: ProductFields, kind: str, index: int, threshold: str = "") -> bytes:
        """Frame ``index`` of ``kind`` (``observed``, ``forecast``, or at ``threshold`` mm/h ``probability`` or
        ``max_probability``, or at ``threshold`` mm ``accumulation_probability``; the last two have one frame, the
        whole forecast's) of the product known as ``product``, whose fields are ``fields``."""
        key = (product, kind, threshold, index)
        with self._lock:
            if key in self._pngs:
                self._pngs.move_to_end(key)
                return self._pngs[key]
        field, scale = _frame(fields, kind, index, threshold)
        png = render_png(field, fields.forecast["y"].values, scale)
        with self._lock:
            if key not in self._pngs:
                self._pngs[key] = png
                self._bytes += len(png)
            while self._bytes > self.max_bytes and len(self._pngs) > 1:
                self._bytes -= len(self._pngs.popitem(last=False)[1])
        return png

    @property
    def size_bytes(self) -> int:
        return self._bytes


@dataclass(frozen=True)
class AdhocProduct:
    """The forecast of a file a user dropped on the page, kept for a while under an unguessable handle."""

    handle: str
    fields: ProductFields
    model: str
    fallback: bool
    fallback_reason: str
    members: int | None
    created: float


class AdhocProducts:
    """A few ad-hoc forecasts, the oldest dropped first, each for at most ``ttl_s`` seconds."""

    def __init__(self, *, max_products: int = 2, ttl_s: float = 1800.0) -> None:
        self.max_products = max_products
        self.ttl_s = ttl_s
        self._products: OrderedDict[str, AdhocProduct] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, fields: ProductFields, *, model: str, fallback: bool = False, fallback_reason: str = "",
            members: int | None = None) -> AdhocProduct:
        product = AdhocProduct(secrets.token_urlsafe(18), fields, model, fallback, fallback_reason, members,
                               time.monotonic())
        with self._lock:
            self._expire()
            self._products[product.handle] = product
            while len(self._products) > self.max_products:
                self._products.popitem(last=False)
        return product

    def get(self, handle: str) -> AdhocProduct:
        with self._lock:
            self._expire()
            product = self._products.get(handle)
        if product is None:
            raise NotFoundError("this ad-hoc forecast has expired or was never made; drop the file again",
                                field="handle")
        return product

    def _expire(self) -> None:
        now = time.monotonic()
        for handle in [h for h, p in self._products.items() if now - p.created > self.ttl_s]:
            del self._products[handle]


def threshold_label(value: float) -> str:
    """How a threshold is written in frame URLs and JSON keys (``1``, ``0.5``)."""
    return f"{float(value):g}"


def _frame(fields: ProductFields, kind: str, index: int, threshold: str) -> tuple[np.ndarray, Any]:
    if kind == "observed":
        frames, scale = fields.observed, rain_scale()
    elif kind == "forecast":
        frames, scale = fields.forecast, rain_scale()
    elif kind == "probability":
        if fields.probabilities is None:
            raise NotFoundError("this product has no probabilities (it was made without ensemble members)")
        frames = fields.probabilities[_threshold_index(fields.probabilities, threshold, "probabilities")]
        scale = probability_scale()
    elif kind == "max_probability":
        return _max_probability_frame(fields, index, threshold), probability_scale()
    elif kind == "accumulation_probability":
        return _accumulation_probability_frame(fields, index, threshold), probability_scale()
    else:
        raise NotFoundError(f"no frames of kind {kind!r}; the kinds are {', '.join(KINDS)}")
    if not 0 <= index < frames.sizes["time"]:
        raise NotFoundError(f"no {kind} frame {index}: the product has {frames.sizes['time']}")
    return frames.values[index], scale


def _max_probability_frame(fields: ProductFields, index: int, threshold: str) -> np.ndarray:
    """The one frame of the probability of the rate above ``threshold`` at some lead of the forecast."""
    if fields.max_probabilities is None:
        raise NotFoundError("this product has no probabilities of the forecast's maximum")
    at = _threshold_index(fields.max_probabilities, threshold, "probabilities of the maximum")
    if index != 0:
        raise NotFoundError(f"no max_probability frame {index}: the forecast's maximum is one frame, 0")
    return fields.max_probabilities.values[at]


def _accumulation_probability_frame(fields: ProductFields, index: int, threshold: str) -> np.ndarray:
    """The one frame of the probability of the rain over the forecast period above ``threshold`` mm."""
    if fields.accumulation_probabilities is None:
        raise NotFoundError("this product has no probabilities of the rain over the forecast period")
    at = _threshold_index(fields.accumulation_probabilities, threshold, "probabilities of the rain over the period",
                          axis="accumulation_threshold", units="mm")
    if index != 0:
        raise NotFoundError(f"no accumulation_probability frame {index}: the rain over the forecast period is one "
                            "frame, 0")
    return fields.accumulation_probabilities.values[at]


def _threshold_index(field: Any, threshold: str, what: str, *, axis: str = "threshold", units: str = "mm/h") -> int:
    """Where ``threshold`` (as written in URLs) lies on ``field``'s threshold ``axis``; 404 naming the ones it has."""
    labels = [threshold_label(t) for t in field[axis].values]
    if threshold not in labels:
        raise NotFoundError(f"no {what} at {threshold!r} {units} in this product; it has {', '.join(labels)}")
    return labels.index(threshold)


def frame_index(fields: ProductFields, url: Callable[[str, int, str], str]) -> dict[str, Any]:
    """What the page needs to show a product: its grid's placement (``projection``: the PROJ string for the map, see
    :func:`nowcast.render.map_projection`; ``extent``: cell edges), times, frame URLs and colour scales.

    ``url(kind, index, threshold)`` makes a frame's URL. ``probabilities`` lists the mm/h thresholds, each with its
    frames and its ``max_frame`` (null where the product has no maximum); ``accumulation_probabilities`` the mm
    thresholds of the rain over the forecast period, each with its one ``frame`` (empty where the product has none).
    """
    forecast = fields.forecast
    reference = fields.reference_time
    source_projection = str(forecast.attrs.get("projection", "") or "")
    try:
        extent = image_extent(forecast["x"].values, forecast["y"].values)
    except InputError as exc:
        raise InputError(f"product: {exc}") from exc
    observed_times = pd.DatetimeIndex(fields.observed["time"].values)
    valid_times = pd.DatetimeIndex(forecast["time"].values)
    probabilities = []
    if fields.probabilities is not None:
        neighbourhood = float(fields.probabilities.attrs.get(PROCESSED_NEIGHBOURHOOD_ATTR, 0.0))
        needed = fields.probabilities.attrs.get(MIN_MEMBERS_ATTR)
        maxima = set() if fields.max_probabilities is None else {
            threshold_label(t) for t in fields.max_probabilities["threshold"].values}
        for value in fields.probabilities["threshold"].values:
            label = threshold_label(value)
            probabilities.append({"threshold_mmh": float(value),
                                  "neighbourhood_km_per_minute": neighbourhood,
                                  MIN_MEMBERS_ATTR: None if needed is None else int(needed),
                                  "frames": [url("probability", i, label) for i in range(len(valid_times))],
                                  "max_frame": url("max_probability", 0, label) if label in maxima else None})
    return {
        "reference_time": _iso(reference),
        "projection": map_projection(source_projection),
        "source_projection": source_projection,
        "extent": list(extent),
        "shape": [int(forecast.sizes["y"]), int(forecast.sizes["x"])],
        "observed": [{"time": _iso(t), "lead_min": _minutes(t - reference), "url": url("observed", i, "")}
                     for i, t in enumerate(observed_times)],
        "forecast": [{"time": _iso(t), "lead_min": _minutes(t - reference), "url": url("forecast", i, "")}
                     for i, t in enumerate(valid_times)],
        "probabilities": probabilities,
        "accumulation_probabilities": _accumulation_index(fields, url),
        "scales": {"rain": rain_scale().legend(), "probability": probability_scale().legend()},
    }


def _accumulation_index(fields: ProductFields, url: Callable[[str, int, str], str]) -> list[dict[str, Any]]:
    """Each mm threshold of the probabilities of the rain over the forecast period, with its one frame's URL."""
    accumulations = fields.accumulation_probabilities
    if accumulations is None:
        return []
    needed = accumulations.attrs.get(MIN_MEMBERS_ATTR)
    return [{"threshold_mm": float(value), MIN_MEMBERS_ATTR: None if needed is None else int(needed),
             "frame": url("accumulation_probability", 0, threshold_label(value))}
            for value in accumulations["accumulation_threshold"].values]


def _iso(moment: Any) -> str:
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.isoformat().replace("+00:00", "Z")


def _minutes(delta: pd.Timedelta) -> float:
    return round(delta.total_seconds() / 60.0, 3)
