"""Map frames of a product: one field as a PNG in the colour scales of :mod:`nowcast.plots`.

A frame is drawn on the radar's own grid, one image pixel per grid cell, north up (the row of
the largest ``y`` first), so a map that knows the grid's projection places it exactly by its
cell-edge extent (:func:`image_extent`) without resampling. It is an indexed-colour PNG: a
rain field takes a dozen classes, so one byte per cell before compression, decoded by the
browser's own image decoder. Cells below the first level are transparent, cells without data
(NaN) a grey hatch, so that "no rain" and "no radar" never look alike.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.colors import to_hex, to_rgba
from PIL import Image

from nowcast.errors import InputError
from nowcast.plots import probability_style, rain_style

logger = logging.getLogger(__name__)

#: the two greys of the no-data hatch (RGBA), and its stripe period in pixels
NO_DATA_RGBA = ((160, 160, 160, 70), (100, 100, 100, 130))
HATCH_PERIOD = 6
#: zlib level of the PNGs: 6 is within a few per cent of 9 in size at a third of the time
PNG_COMPRESS_LEVEL = 6


@dataclass(frozen=True)
class ColourScale:
    """Class boundaries and their colours: values in ``[levels[i], levels[i+1])`` get ``colours[i]``;
    values at or above the last level get ``over``; below the first, nothing (transparent)."""

    name: str
    units: str
    levels: tuple[float, ...]
    colours: tuple[str, ...]
    over: str

    def __post_init__(self) -> None:
        if len(self.colours) != len(self.levels) - 1:
            raise InputError(f"colour scale {self.name}: {len(self.levels)} levels need {len(self.levels) - 1} "
                             f"colours, not {len(self.colours)}")
        if list(self.levels) != sorted(set(self.levels)):
            raise InputError(f"colour scale {self.name}: levels must increase strictly")

    def legend(self) -> dict[str, Any]:
        """The scale as JSON, for a map legend."""
        return {"name": self.name, "units": self.units, "levels": list(self.levels),
                "colours": list(self.colours), "over": self.over}

    def palette(self) -> tuple[bytes, bytes]:
        """PNG palette (RGB) and transparency (alpha per index) of :func:`classify`'s classes."""
        rgba = [(0, 0, 0, 0)]
        rgba += [_rgba255(colour) for colour in self.colours]
        rgba += [_rgba255(self.over), *NO_DATA_RGBA]
        return bytes(c for r in rgba for c in r[:3]), bytes(r[3] for r in rgba)


def _rgba255(colour: str) -> tuple[int, int, int, int]:
    return tuple(round(255 * c) for c in to_rgba(colour))  # type: ignore[return-value]


def _from_style(name: str, units: str, style: dict[str, Any], *, over: str | None = None) -> ColourScale:
    cmap, norm = style["cmap"], style["norm"]
    colours = tuple(to_hex(cmap(i)) for i in range(cmap.N))
    return ColourScale(name=name, units=units, levels=tuple(float(b) for b in norm.boundaries),
                       colours=colours, over=over or to_hex(cmap.get_over()))


def rain_scale() -> ColourScale:
    """The rain-rate scale of the project's plots (:func:`nowcast.plots.rain_style`)."""
    return _from_style("rain rate", "mm/h", rain_style())


def probability_scale() -> ColourScale:
    """The probability scale of the plots; a probability of exactly 1 takes the top class."""
    style = probability_style()
    return _from_style("probability", "1", style, over=to_hex(style["cmap"](style["cmap"].N - 1)))


def classify(field: np.ndarray, scale: ColourScale) -> np.ndarray:
    """Class index per cell (uint8), with n the number of levels: 0 below the first level, 1..n-1 the scale's
    classes, n at or over the last level, n+1 and n+2 the two stripes of the no-data hatch."""
    field = np.asarray(field, dtype=np.float32)
    if field.ndim != 2:
        raise InputError(f"a map frame is one 2-D field, not shape {field.shape}")
    with np.errstate(invalid="ignore"):
        classes = np.searchsorted(np.asarray(scale.levels, dtype=np.float32), field, side="right").astype(np.uint8)
    missing = np.isnan(field)
    if missing.any():
        n = len(scale.levels)
        rows, cols = np.nonzero(missing)
        classes[rows, cols] = np.where((rows + cols) % HATCH_PERIOD < 2, n + 2, n + 1)
    return classes


def north_up(field: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``field`` with its first row at the largest ``y``."""
    y = np.asarray(y)
    return field[::-1] if y.size > 1 and y[-1] > y[0] else field


def render_png(field: np.ndarray, y: np.ndarray, scale: ColourScale) -> bytes:
    """One frame as an indexed-colour PNG, north up; see the module's description."""
    classes = classify(north_up(np.asarray(field), y), scale)
    image = Image.fromarray(np.ascontiguousarray(classes), mode="P")
    palette, alpha = scale.palette()
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=alpha, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def image_extent(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """(x_min, y_min, x_max, y_max) of the grid's cell edges, from cell centres on a regular grid."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        raise InputError(f"a map frame needs at least 2x2 cells, not {y.size}x{x.size}")
    dx, dy = abs(x[1] - x[0]), abs(y[1] - y[0])
    return (float(x.min() - dx / 2), float(y.min() - dy / 2), float(x.max() + dx / 2), float(y.max() + dy / 2))


def map_projection(projection: str) -> str:
    """The grid's PROJ string in PROJ's own normal form, which proj4js (the page's map) reads as PROJ does.

    Radar files write PROJ strings PROJ accepts but proj4js misreads: FMI's ``+lon_0=25E +lat_0=90N`` (hemisphere
    letters) and a sphere given by ``+a`` alone. pyproj's form spells degrees as numbers and a sphere as ``+R``.
    "" where there is no projection or PROJ cannot read it: the grid then has no place on a map.
    """
    if not projection:
        return ""
    import pyproj

    try:
        crs = pyproj.CRS.from_user_input(projection)
    except pyproj.exceptions.CRSError as exc:
        logger.warning("projection %r not understood by PROJ (%s): frames without a map", projection, exc)
        return ""
    with warnings.catch_warnings():  # "you will likely lose information": a grid's PROJ string is all there is
        warnings.simplefilter("ignore", UserWarning)
        return crs.to_proj4().replace(" +type=crs", "")
