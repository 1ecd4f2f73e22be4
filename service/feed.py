"""The products of a live feed as the service answers them: the newest one, its grid, one place in it.

The product folder (:mod:`nowcast.feed`, written by ``nowcast watch``) is read through its
manifest only, so a product is never seen half-written, and nothing of a request becomes a
path: a product is asked for by reference time and found in the manifest. The manifest is
read again only when it changes (its inode, size and time), a product file once per
version (name, inode, size and time), and both in worker threads, so that point requests
cost a lookup in arrays already in memory and never hold up the event loop. Two products are kept
in memory: the newest and the one asked for before it (an older product a page shows).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nowcast.errors import InputError, UnreadableFileError
from nowcast.feed import MANIFEST, ProductEntry, ProductFields, product_path, read_manifest, read_product
from nowcast.products import PROCESSED_NEIGHBOURHOOD_ATTR
from nowcast.sequence import pixel_size_km
from service.core.errors import NotReadyError

logger = logging.getLogger(__name__)

REFERENCE_FORMAT = "%Y%m%dT%H%MZ"
#: points per side of the grid's outline when it is turned into longitude/latitude bounds
_OUTLINE_POINTS = 65


def reference_label(moment: datetime) -> str:
    """A reference time as the routes spell it: ``20170509T1205Z``."""
    return f"{moment.astimezone(UTC):{REFERENCE_FORMAT}}"


def parse_reference_label(text: str) -> datetime:
    """``20170509T1205Z`` as a UTC time; anything else is an :class:`InputError` naming the field."""
    try:
        if len(text) != 14:
            raise ValueError
        return datetime.strptime(text, REFERENCE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise InputError(
            f"reference_time: {text[:40]!r} is not a reference time of the form YYYYMMDDTHHMMZ "
            "(e.g. 20170509T1205Z)",
            field="reference_time",
        ) from None


@dataclass(frozen=True)
class Location:
    """The grid cell nearest to a place, and where that cell's centre is."""

    row: int
    col: int
    x: float
    y: float
    lat: float | None
    lon: float | None


class Grid:
    """A product's grid: cell centres in projection units and the transforms to and from longitude/latitude."""

    def __init__(self, x: np.ndarray, y: np.ndarray, projection: str, pixel_size_m: float) -> None:
        self.x = np.asarray(x, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        self.projection = projection
        self.pixel_size_m = pixel_size_m
        self._to_grid, self._to_lonlat = _transformers(projection)
        # cell edges: half a cell beyond the outer centres
        self.x_edges = _edges(self.x)
        self.y_edges = _edges(self.y)

    @classmethod
    def of(cls, fields: ProductFields) -> Grid:
        forecast = fields.forecast
        return cls(forecast["x"].values, forecast["y"].values, str(forecast.attrs.get("projection", "")),
                   pixel_size_km(forecast) * 1e3)

    @property
    def georeferenced(self) -> bool:
        return self._to_grid is not None

    def locate(self, *, lat: float | None = None, lon: float | None = None,
               x: float | None = None, y: float | None = None) -> Location:
        """The cell nearest to ``lat``/``lon`` or to ``x``/``y`` (projection units); outside the grid: InputError."""
        if lat is not None and lon is not None:
            if self._to_grid is None:
                raise InputError("lat: this product's grid has no projection, so it has no latitude and "
                                 "longitude; ask by x and y", field="lat")
            x, y = (float(v) for v in self._to_grid.transform(lon, lat))
            field, asked = "lat", f"lat={lat:g}, lon={lon:g}"
        else:
            assert x is not None and y is not None
            field, asked = "x", f"x={x:g}, y={y:g}"
        if not (np.isfinite(x) and np.isfinite(y) and _within(x, self.x_edges) and _within(y, self.y_edges)):
            raise InputError(f"{field}: {asked} is outside the product's grid ({self.extent_text()})", field=field)
        row = int(np.argmin(np.abs(self.y - y)))
        col = int(np.argmin(np.abs(self.x - x)))
        centre_lon, centre_lat = self.lonlat(float(self.x[col]), float(self.y[row]))
        return Location(row, col, float(self.x[col]), float(self.y[row]), centre_lat, centre_lon)

    def lonlat(self, x: float, y: float) -> tuple[float | None, float | None]:
        if self._to_lonlat is None:
            return None, None
        lon, lat = self._to_lonlat.transform(x, y)
        return float(lon), float(lat)

    def extent_text(self) -> str:
        text = (f"x from {self.x_edges[0]:.6g} to {self.x_edges[1]:.6g}, "
                f"y from {self.y_edges[0]:.6g} to {self.y_edges[1]:.6g} in projection units")
        bounds = self.bounds_lonlat()
        if bounds is not None:
            (lon_min, lat_min), (lon_max, lat_max) = bounds
            text += (f"; within longitude {lon_min:.4f} to {lon_max:.4f}, latitude {lat_min:.4f} to {lat_max:.4f}, "
                     "not every point of which is on the grid")
        return text

    def corners(self) -> list[tuple[float, float]]:
        """The outline's corners in projection units, clockwise from the top left (top: largest y)."""
        (x0, x1), (y0, y1) = self.x_edges, self.y_edges
        return [(x0, y1), (x1, y1), (x1, y0), (x0, y0)]

    def corners_lonlat(self) -> list[list[float]] | None:
        if self._to_lonlat is None:
            return None
        return [list(self.lonlat(cx, cy)) for cx, cy in self.corners()]  # type: ignore[arg-type]

    def bounds_lonlat(self) -> list[list[float]] | None:
        """[[lon_min, lat_min], [lon_max, lat_max]] of the outline, followed along its edges (a projected
        grid's edges are curves in longitude and latitude)."""
        if self._to_lonlat is None:
            return None
        corners = self.corners()
        xs, ys = [], []
        for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1], strict=True):
            xs.append(np.linspace(ax, bx, _OUTLINE_POINTS))
            ys.append(np.linspace(ay, by, _OUTLINE_POINTS))
        lon, lat = self._to_lonlat.transform(np.concatenate(xs), np.concatenate(ys))
        return [[float(np.nanmin(lon)), float(np.nanmin(lat))], [float(np.nanmax(lon)), float(np.nanmax(lat))]]

    def describe(self) -> dict[str, Any]:
        return {
            "ny": int(self.y.size),
            "nx": int(self.x.size),
            "projection": self.projection,
            "x": [float(self.x[0]), float(self.x[-1])],
            "y": [float(self.y[0]), float(self.y[-1])],
            "pixel_size_m": round(float(self.pixel_size_m), 3),
            "bounds_lonlat": self.bounds_lonlat(),
            "corners_lonlat": self.corners_lonlat(),
        }


def _transformers(projection: str) -> tuple[Any, Any]:
    """(lon/lat -> grid, grid -> lon/lat), or (None, None) for a grid without a projection pyproj reads."""
    if not projection:
        return None, None
    import pyproj

    try:
        crs = pyproj.CRS.from_user_input(projection)
        return (pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True),
                pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True))
    except pyproj.exceptions.CRSError as exc:
        logger.warning("projection %r not understood by pyproj (%s): points by x/y only", projection, exc)
        return None, None


def _edges(centres: np.ndarray) -> tuple[float, float]:
    half = abs(float(centres[-1] - centres[0])) / (centres.size - 1) / 2.0 if centres.size > 1 else 0.5
    return float(centres.min()) - half, float(centres.max()) + half


def _within(value: float, edges: tuple[float, float]) -> bool:
    return edges[0] <= value <= edges[1]


@dataclass(frozen=True)
class Product:
    """One product, read: its manifest entry, its fields and its grid."""

    entry: ProductEntry
    fields: ProductFields
    grid: Grid

    def point(self, location: Location) -> dict[str, Any]:
        """The observed and forecast rates (and exceedance probabilities) at one cell; NaN is null, never a number."""
        row, col = location.row, location.col
        observed = self.fields.observed
        forecast = self.fields.forecast
        rates = forecast.values[:, row, col]
        reference = self.fields.reference_time
        probabilities = neighbourhood = None
        if self.fields.probabilities is not None:
            probabilities = self.fields.probabilities.values[:, :, row, col]  # (threshold, time)
            thresholds = [str(float(t)) for t in self.fields.probabilities["threshold"].values]
            neighbourhood = float(self.fields.probabilities.attrs.get(PROCESSED_NEIGHBOURHOOD_ATTR, 0.0))
        steps = []
        for index, (time, rate) in enumerate(zip(pd.DatetimeIndex(forecast["time"].values), rates, strict=True)):
            probability = None
            if probabilities is not None:
                probability = {label: (_number(p) if np.isfinite(rate) else None)
                               for label, p in zip(thresholds, probabilities[:, index], strict=True)}
            steps.append({"time": iso(time), "lead_min": round((time - reference).total_seconds() / 60.0, 3),
                          "rate_mmh": _number(rate), "probabilities": probability})
        return {
            "observed": [{"time": iso(t), "rate_mmh": _number(v)}
                         for t, v in zip(pd.DatetimeIndex(observed["time"].values), observed.values[:, row, col],
                                         strict=True)],
            "forecast": steps,
            "probability_neighbourhood_km_per_minute": neighbourhood,
            "max_probabilities": _by_threshold(self.fields.max_probabilities, "threshold", row, col),
            "accumulation_probabilities": _by_threshold(self.fields.accumulation_probabilities,
                                                        "accumulation_threshold", row, col),
            "no_data": not bool(np.isfinite(rates).any()),
        }


def _by_threshold(field: Any, axis: str, row: int, col: int) -> dict[str, float | None] | None:
    """A probability of the whole forecast period at one cell, by threshold on ``axis`` (``max_probabilities``:
    P(rate > threshold in mm/h at some time of the forecast); ``accumulation_probabilities``: P(rain over the
    forecast period > threshold in mm)); None where the product has none."""
    if field is None:
        return None
    return {str(float(t)): _number(p) for t, p in zip(field[axis].values, field.values[:, row, col], strict=True)}


def _number(value: Any) -> float | None:
    value = float(value)
    return round(value, 4) if np.isfinite(value) else None


def iso(moment: datetime | pd.Timestamp) -> str:
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class FeedStatus:
    newest_reference_time: datetime | None
    age_s: float | None
    stale: bool
    error: str | None = None


class ProductStore:
    """The product folder, its manifest and its newest product kept in memory; see the module docstring."""

    def __init__(self, folder: Path, stale_after_s: float, *, kept_products: int = 2) -> None:
        self.folder = folder
        self.stale_after_s = stale_after_s
        self._manifest_lock = threading.Lock()
        self._manifest_key: tuple[int, int, int] | None = None
        self._entries: list[ProductEntry] = []
        # the newest product and one other (an older one a page shows), least recently used out first
        self._kept = kept_products
        self._products: OrderedDict[tuple[ProductEntry, tuple[str, int, int, int]], Product] = OrderedDict()
        self._product_lock = asyncio.Lock()

    # --- the manifest (blocking: run in a thread) -------------------------------------------------------

    def entries(self) -> list[ProductEntry]:
        """The manifest's products, oldest first, read again only when the manifest changed."""
        path = self.folder / MANIFEST
        with self._manifest_lock:
            try:
                info = path.stat()
            except FileNotFoundError:
                self._manifest_key, self._entries = None, []
                return []
            key = (info.st_ino, info.st_size, info.st_mtime_ns)
            if key != self._manifest_key:
                self._entries = read_manifest(self.folder)
                self._manifest_key = key
            return self._entries

    def newest_reference_time(self) -> datetime | None:
        entries = self.entries()
        return entries[-1].reference_time if entries else None

    # --- for the routes ---------------------------------------------------------------------------------

    async def latest_entry(self) -> ProductEntry | None:
        entries = await self._entries_or_503()
        return entries[-1] if entries else None

    async def entry_at(self, reference_time: datetime) -> ProductEntry | None:
        entries = await self._entries_or_503()
        return next((e for e in entries if e.reference_time == reference_time), None)

    async def product(self, entry: ProductEntry) -> Product:
        """``entry``'s fields, read from its file once per version of the file."""
        path = product_path(self.folder, entry)
        async with self._product_lock:
            try:
                key = (entry, await asyncio.to_thread(_file_key, path))
                product = self._products.get(key)
                if product is None:
                    fields = await asyncio.to_thread(read_product, path)
                    product = Product(entry, fields, await asyncio.to_thread(Grid.of, fields))
                    logger.info("product %s read (%s)", entry.file, reference_label(entry.reference_time))
            except (OSError, UnreadableFileError) as exc:
                logger.error("product %s of the feed cannot be read: %s", path, exc)
                raise NotReadyError(f"the product of {reference_label(entry.reference_time)} cannot be read now; "
                                    "the service's log says why", headers={"Retry-After": "5"}) from None
            self._products[key] = product
            self._products.move_to_end(key)
            while len(self._products) > self._kept:
                self._products.popitem(last=False)
            return product

    def open_file(self, entry: ProductEntry) -> tuple[Any, int]:
        """``entry``'s file, open (blocking): a file being replaced or removed meanwhile is still sent whole."""
        path = product_path(self.folder, entry)
        try:
            handle = path.open("rb")
        except OSError as exc:
            logger.error("product %s of the feed cannot be opened: %s", path, exc)
            raise NotReadyError(f"the product of {reference_label(entry.reference_time)} cannot be read now; "
                                "the service's log says why", headers={"Retry-After": "5"}) from None
        return handle, os.fstat(handle.fileno()).st_size

    async def status(self) -> FeedStatus:
        """How old the newest product is (for /readyz)."""
        try:
            newest = await asyncio.to_thread(self.newest_reference_time)
        except (OSError, UnreadableFileError) as exc:
            logger.error("the feed's manifest cannot be read: %s", exc)
            return FeedStatus(None, None, True, "the product manifest cannot be read")
        if newest is None:
            return FeedStatus(None, None, True, "no product yet")
        age = self.age_s(newest)
        return FeedStatus(newest, age, age > self.stale_after_s)

    @staticmethod
    def age_s(reference_time: datetime) -> float:
        return (datetime.now(UTC) - reference_time).total_seconds()

    async def _entries_or_503(self) -> list[ProductEntry]:
        try:
            return await asyncio.to_thread(self.entries)
        except (OSError, UnreadableFileError) as exc:
            logger.error("the feed's manifest cannot be read: %s", exc)
            raise NotReadyError("the product manifest cannot be read now; the service's log says why",
                                headers={"Retry-After": "5"}) from None


def _file_key(path: Path) -> tuple[str, int, int, int]:
    info = path.stat()
    return (path.name, info.st_ino, info.st_size, info.st_mtime_ns)
