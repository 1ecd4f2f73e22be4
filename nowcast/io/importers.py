"""Real radar files into the sequence form, through pysteps' importers.

Every national format is read by pysteps (``pysteps.io.get_method(name, "importer")``)
and turned into rain rate in mm/h from the file's own metadata:

* ``knmi_hdf5`` (KNMI): 5-min accumulations in mm; the accumulation period is taken
  from the file (``overview/product_datetime_start``/``_end``). Its grid is in km with
  the earth radius in km in the PROJ string; both are converted to metres so that the
  projection is usable by PROJ and all networks share one unit.
* ``mch_gif`` (MeteoSwiss): the product, unit and accumulation period come from the
  file name (``AQC…_00005`` = 5-min accumulation in mm; ``RZC`` = rate in mm/h).
* ``fmi_pgm`` (FMI): reflectivity in dBZ, converted with the Z-R relation pysteps
  reports for the file (FMI's Z = 223·R^1.53), Marshall–Palmer (Z = 200·R^1.6) where
  the metadata give none. Pixels at the "no echo" value (-32 dBZ) are dry.
* ``bom_rf3`` (BOM Rainfields 3): accumulations over the time step (6 or 10 min,
  from ``start_time``/``valid_time`` in the file), read by a whole-array version of
  pysteps' reader (same field and metadata; pysteps' takes a minute for a day of
  files). Pixels the file marks with its ``_FillValue``, and negative flag values,
  become NaN. Rainfields products carry no outside-range mask, and none is invented
  here: the products are mosaics that hold radar data up to the corners of the 256 km
  square (both shipped events have rain in the corners, 180 km from the radar,
  outside the 128 km circle), so a circular mask would throw away real observations.
  Pass ``range_mask_m=`` to mask beyond a radius from the grid centre for
  single-radar products that need it.
* ``odim_hdf5`` (OPERA and the many services writing ODIM): the quantity is chosen
  from what the file holds (RATE, else ACRR, else DBZH) and the accumulation period of
  ACRR is taken from the dataset's start/end times.
* ``.nc`` files that are not Rainfields go to the CF-netCDF reader
  :func:`nowcast.io.netcdf.read_netcdf`.

Every HDF5 file (KNMI, ODIM, Rainfields, netCDF-4) is checked by
:func:`nowcast.io.safety.check_hdf5` before any importer reads it: a file that keeps data
in other files or declares more than the read limits is refused.

No-data stays NaN, never zero. The georeferencing is kept: ``projection`` (PROJ
string), ``xpixelsize``/``ypixelsize`` and ``x1``/``x2``/``y1``/``y2`` (grid edges, in
metres for projected grids) plus ``yorigin`` in ``attrs``, and the cell centres as the
``x``/``y`` coordinates (``y`` follows the row order: decreasing for ``yorigin =
"upper"``).

Frame times are the valid times of the files (the end of the accumulation period for
accumulations), taken from the file's content where the format holds them and from its
name otherwise, or given by the caller.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.errors import InputError, SequenceError, UnitsError, UnknownNameError, UnreadableFileError
from nowcast.io.locks import NETCDF_LOCK
from nowcast.io.safety import check_hdf5, is_hdf5
from nowcast.quiet import quiet_stdout
from nowcast.sequence import make_sequence, time_step
from nowcast.transforms import dbz_to_mmh, to_mmh

logger = logging.getLogger(__name__)

#: Importers this module is tested with; any other pysteps importer name is accepted
#: and converted from its metadata in the same way.
SUPPORTED_IMPORTERS = ("knmi_hdf5", "mch_gif", "fmi_pgm", "bom_rf3", "odim_hdf5")
NETCDF_READER = "netcdf"

_MCH_NAME = re.compile(
    r"^(?P<product>[A-Z]{3})(?P<yy>\d{2})(?P<doy>\d{3})(?P<hhmm>\d{4})\w?_(?P<minutes>\d{5})"
)
_MCH_UNITS = {"AQC": "mm", "CPC": "mm", "AZC": "mm", "RZC": "mm/h"}
# Date-time stamps commonly found in radar file names, most specific first.
_NAME_STAMPS = (
    (re.compile(r"(?<!\d)(\d{8})[_T-]?(\d{6})(?!\d)"), "%Y%m%d%H%M%S"),
    (re.compile(r"(?<!\d)(\d{8})[_T-]?(\d{4})(?!\d)"), "%Y%m%d%H%M"),
)


@dataclass(frozen=True)
class _Frames:
    """Frames read from one file, before they are stacked into a sequence."""

    rate: np.ndarray  # (time, y, x) float32, mm/h
    times: pd.DatetimeIndex
    x: np.ndarray
    y: np.ndarray
    attrs: dict[str, Any]
    path: Path


def read_radar_file(
    path: str | os.PathLike[str],
    importer: str | None = None,
    *,
    timestamp: Any | None = None,
    range_mask_m: float | None = None,
    **importer_kwargs: Any,
) -> xr.DataArray:
    """Read one radar file into a sequence (mm/h, NaN for no data).

    ``importer`` is a pysteps importer name or ``"netcdf"``; without it the importer is
    guessed from the file: ``.gif`` -> ``mch_gif``, ``.pgm``/``.pgm.gz`` -> ``fmi_pgm``,
    ``.h5``/``.hdf5``/``.hdf`` -> ``knmi_hdf5`` or ``odim_hdf5`` by the file's layout,
    ``.nc`` -> ``bom_rf3`` for Rainfields files, else the CF-netCDF reader.
    ``timestamp`` overrides the valid time found in the file or its name;
    ``range_mask_m`` sets pixels farther than that from the grid's origin (the radar,
    for single-radar products) to NaN; ``importer_kwargs`` go to the pysteps importer.
    """
    frames = _read_one(Path(path), importer, timestamp, range_mask_m, importer_kwargs)
    return _to_sequence([frames])


def read_radar_files(
    paths: Iterable[str | os.PathLike[str]],
    importer: str | None = None,
    timestamps: Sequence[Any] | None = None,
    *,
    range_mask_m: float | None = None,
    regular: bool = True,
    **importer_kwargs: Any,
) -> xr.DataArray:
    """Read radar files of one grid into one sequence (mm/h, NaN for no data).

    The frames are put in time order; the times must be distinct and, with
    ``regular`` (the default), evenly spaced. ``timestamps`` (one per file) override
    the valid times found in the files. ``importer`` and ``importer_kwargs`` as in
    :func:`read_radar_file`.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no radar files given")
    if timestamps is not None and len(timestamps) != len(paths):
        raise InputError(f"{len(timestamps)} timestamps given for {len(paths)} files")
    stamps = list(timestamps) if timestamps is not None else [None] * len(paths)
    parts = [
        _read_one(path, importer, stamp, range_mask_m, importer_kwargs)
        for path, stamp in zip(paths, stamps, strict=True)
    ]
    return _to_sequence(parts, regular=regular)


def guess_importer(path: str | os.PathLike[str]) -> str:
    """The importer for ``path`` from its name and, for HDF5 and netCDF, its layout."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise UnreadableFileError(f"{path}: no such file")
    if name.endswith(".gif"):
        return "mch_gif"
    if name.endswith((".pgm", ".pgm.gz")):
        return "fmi_pgm"
    if name.endswith((".h5", ".hdf5", ".hdf")):
        return _hdf5_layout(path)
    if name.endswith(".nc"):
        return "bom_rf3" if _is_rainfields(path) else NETCDF_READER
    raise UnreadableFileError(
        f"{path}: cannot tell the radar format from the file name; pass importer= "
        f"(one of {', '.join((*SUPPORTED_IMPORTERS, NETCDF_READER))})"
    )


def mask_outside_range(rate: np.ndarray, x: np.ndarray, y: np.ndarray, radius_m: float,
                       centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``rate`` (…, y, x) with NaN beyond ``radius_m`` from ``centre`` (x, y)."""
    if radius_m <= 0:
        raise InputError(f"range radius must be positive, got {radius_m}")
    xx, yy = np.meshgrid(x - centre[0], y - centre[1])
    outside = np.hypot(xx, yy) > radius_m
    out = np.array(rate, dtype=np.float32, copy=True)
    out[..., outside] = np.nan
    return out


def rain_rate_from_metadata(values: np.ndarray, metadata: Mapping[str, Any], *, source: str = "data"
                            ) -> np.ndarray:
    """Rain rate in mm/h from a pysteps field and its metadata (NaN stays NaN).

    Understands ``unit`` (mm/h, mm, dBZ), ``transform`` (None or dB), ``accutime``
    (minutes, for accumulations), ``zr_a``/``zr_b`` (for dBZ) and ``zerovalue``
    (values at or below it are dry for dB fields). Negative values are not rain but
    flags of the producer: they become NaN.
    """
    unit = metadata.get("unit")
    transform = metadata.get("transform")
    data = np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan)
    if not unit:
        raise UnitsError(f"{source}: the importer reports no unit")
    if transform not in (None, "dB"):
        raise UnitsError(f"{source}: cannot undo the {transform!r} transform (only none or dB)")
    dry = np.zeros(data.shape, dtype=bool)
    if transform == "dB" or unit == "dBZ":
        zerovalue = metadata.get("zerovalue")
        if zerovalue is not None and np.isfinite(zerovalue):
            with np.errstate(invalid="ignore"):
                dry = data <= float(zerovalue)
    if transform == "dB" and unit != "dBZ":
        data = np.power(10.0, data / 10.0)
    if unit == "dBZ":
        a = float(metadata.get("zr_a") or 200.0)
        b = float(metadata.get("zr_b") or 1.6)
        rate = dbz_to_mmh(data, a=a, b=b)
    else:
        accutime = metadata.get("accutime")
        rate = to_mmh(data, str(unit), accumulation_minutes=float(accutime) if accutime else None)
    rate = np.asarray(rate, dtype=np.float32)
    rate[dry] = 0.0
    with np.errstate(invalid="ignore"):
        negative = rate < 0
    if negative.any():
        # Not rain: flag values of the producer (Rainfields writes a few -0.1 mm pixels).
        logger.debug("%s: %d negative values taken as no data", source, int(negative.sum()))
        rate[negative] = np.nan
    return rate


# --- reading one file -------------------------------------------------------------------------


def _read_one(path: Path, importer: str | None, timestamp: Any | None, range_mask_m: float | None,
              importer_kwargs: Mapping[str, Any]) -> _Frames:
    if not path.is_file():
        raise UnreadableFileError(f"{path}: no such file")
    if is_hdf5(path):
        # before any reader (ours, pysteps', h5py's) is asked for data: nothing stored in other files
        check_hdf5(path)
    name = importer or guess_importer(path)
    if name == NETCDF_READER:
        frames = _read_cf_netcdf(path, timestamp)
    else:
        frames = _read_with_pysteps(path, name, timestamp, dict(importer_kwargs))
    if range_mask_m is not None:
        frames = _Frames(mask_outside_range(frames.rate, frames.x, frames.y, range_mask_m),
                         frames.times, frames.x, frames.y, frames.attrs, frames.path)
    return frames


def _read_cf_netcdf(path: Path, timestamp: Any | None) -> _Frames:
    from nowcast.io.netcdf import read_netcdf

    seq = read_netcdf(path)
    times = pd.DatetimeIndex(seq["time"].values)
    if timestamp is not None:
        if len(times) != 1:
            raise InputError(f"{path}: one timestamp given for a file of {len(times)} frames")
        times = _timestamps([timestamp], path)
    return _Frames(seq.values, times, seq["x"].values, seq["y"].values, dict(seq.attrs), path)


def _read_with_pysteps(path: Path, importer: str, timestamp: Any | None,
                       user_kwargs: dict[str, Any]) -> _Frames:
    import_method = _import_rainfields if importer == "bom_rf3" else _pysteps_importer(importer)
    kwargs = _default_kwargs(path, importer, user_kwargs)
    try:
        with NETCDF_LOCK:
            data, _quality, metadata = import_method(str(path), **kwargs)
    except InputError:
        raise
    except Exception as exc:  # h5py, PIL, gzip, netCDF4 and pysteps raise many types
        raise UnreadableFileError(
            f"{path}: not a readable {importer} file ({type(exc).__name__}: {exc})"
        ) from exc
    data = np.ma.filled(np.ma.asarray(data, dtype=np.float64), np.nan)
    if data.ndim != 2:
        raise UnreadableFileError(f"{path}: expected one 2-D field from {importer}, got shape {data.shape}")
    rate = rain_rate_from_metadata(data, metadata, source=str(path))
    x, y, geo = _grid(metadata, data.shape, str(path))
    if timestamp is not None:
        when = _timestamps([timestamp], path)
    elif "valid_time" in metadata:
        when = _timestamps([metadata["valid_time"]], path)
    else:
        when = _file_time(path, importer)
    attrs = {
        **geo,
        "institution": str(metadata.get("institution") or ""),
        "source": f"radar file read with importer {importer}",
        "importer": importer,
    }
    return _Frames(rate[np.newaxis], when, x, y, attrs, path)


def _import_rainfields(filename: str, **_ignored: Any) -> tuple[np.ndarray, None, dict[str, Any]]:
    """pysteps' ``bom_rf3`` importer, made fast; same field and metadata.

    pysteps finds the grid corners with Python's ``min()`` over the netCDF coordinate
    variables, one read per element: half a second a file for the 10-min product, over a
    minute for a day of frames. This reads the same variables with whole-array reads and
    also returns the valid time. The projection comes from the file's CF grid mapping at
    full precision (pysteps rounds the origin to 0.001°, about 100 m).
    """
    import netCDF4

    with netCDF4.Dataset(filename) as ds:
        variables = ds.variables
        if "precipitation" not in variables or "valid_time" not in variables:
            raise UnreadableFileError(f"{filename}: not a Rainfields file (no precipitation or valid_time)")
        precip = variables["precipitation"]
        units = str(getattr(precip, "units", ""))
        field = np.ma.filled(np.ma.asarray(precip[:], dtype=np.float64), np.nan)
        x = np.asarray(variables["x"][:], dtype=np.float64)
        y = np.asarray(variables["y"][:], dtype=np.float64)
        scale = 1000.0 if str(getattr(variables["x"], "units", "m")) == "km" else 1.0
        valid = _netcdf_time(variables["valid_time"], filename)
        start = _netcdf_time(variables["start_time"], filename) if "start_time" in variables else None
        grid_mapping = {k: _plain(variables["proj"].getncattr(k)) for k in variables["proj"].ncattrs()} \
            if "proj" in variables else {}
    if units not in ("kg m-2", "mm"):
        raise UnitsError(f"{filename}: Rainfields precipitation in {units!r}; expected kg m-2 or mm")
    metadata: dict[str, Any] = {
        "projection": _cf_projection(tuple(sorted(grid_mapping.items()))),
        "x1": float(x.min()) * scale,
        "x2": float(x.max()) * scale,
        "y1": float(y.min()) * scale,
        "y2": float(y.max()) * scale,
        "xpixelsize": abs(float(x[1] - x[0])) * scale,
        "ypixelsize": abs(float(y[1] - y[0])) * scale,
        "cartesian_unit": "m",
        "yorigin": "upper" if y[0] > y[-1] else "lower",
        "accutime": (valid - start).total_seconds() / 60.0 if start is not None else None,
        "unit": "mm",
        "transform": None,
        "zerovalue": 0.0,
        "institution": "Commonwealth of Australia, Bureau of Meteorology",
        "valid_time": valid,
    }
    return field, None, metadata


def _netcdf_time(var: Any, filename: str) -> pd.Timestamp:
    unit = str(getattr(var, "units", "")).replace(" UTC", "")
    if not unit.startswith("seconds since"):
        raise UnreadableFileError(f"{filename}: {var.name} in {unit!r}; expected seconds since an epoch")
    epoch = pd.Timestamp(unit.removeprefix("seconds since").strip())
    return epoch + pd.Timedelta(seconds=int(np.asarray(var[:]).item()))


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return tuple(float(v) for v in value.reshape(-1))
    if isinstance(value, np.generic):
        return value.item()
    return value


@functools.lru_cache(maxsize=64)
def _cf_projection(grid_mapping: tuple[tuple[str, Any], ...]) -> str:
    if not grid_mapping:
        return ""
    import pyproj

    attrs = {k: list(v) if isinstance(v, tuple) else v for k, v in grid_mapping}
    try:
        with warnings.catch_warnings():
            # PROJ strings lose datum details; they are what pysteps and the sequence use
            warnings.simplefilter("ignore", UserWarning)
            return str(pyproj.CRS.from_cf(attrs).to_proj4())
    except pyproj.exceptions.CRSError as exc:
        logger.warning("grid mapping %s not understood by pyproj (%s); no projection kept", attrs, exc)
        return ""


def quiet_pysteps_io() -> Any:
    """``pysteps.io``, imported without pysteps' start-up message on stdout.

    pysteps prints where it found its configuration on first import; command-line tools
    that write data to stdout must not get it mixed in.
    """
    with quiet_stdout():
        import pysteps.io
        import pysteps.io.archive  # a submodule that pysteps.io does not import itself
    return pysteps.io


def _pysteps_importer(name: str) -> Any:
    try:
        return quiet_pysteps_io().get_method(name, "importer")
    except ValueError as exc:
        raise UnknownNameError(
            f"unknown radar importer {name!r}; supported: "
            f"{', '.join((*SUPPORTED_IMPORTERS, NETCDF_READER))} (or another pysteps importer)"
        ) from exc


def _default_kwargs(path: Path, importer: str, user_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The importer's keyword arguments, filling in what the file itself tells."""
    kwargs = dict(user_kwargs)
    if importer == "mch_gif" and not {"product", "unit", "accutime"} <= set(kwargs):
        match = _MCH_NAME.match(path.name)
        if match is None:
            raise InputError(
                f"{path}: not a MeteoSwiss file name (PPPyyjjjHHMM?_MMMMM...), so product, unit and "
                "accutime cannot be told; pass them as importer arguments"
            )
        product = match["product"]
        if product not in _MCH_UNITS:
            raise UnreadableFileError(f"{path}: unknown MeteoSwiss product {product!r}")
        kwargs.setdefault("product", product)
        kwargs.setdefault("unit", _MCH_UNITS[product])
        kwargs.setdefault("accutime", float(int(match["minutes"])) if product != "RZC" else 5.0)
    elif importer == "fmi_pgm":
        kwargs.setdefault("gzipped", path.name.lower().endswith(".gz"))
    elif importer == "knmi_hdf5" and kwargs.get("qty", "ACRR") == "ACRR" and "accutime" not in kwargs:
        start, end = _knmi_product_times(path)
        kwargs["accutime"] = (end - start).total_seconds() / 60.0
    elif importer == "odim_hdf5":
        _odim_defaults(path, kwargs)
    elif importer == "bom_rf3":
        # The Rainfields reader ignores it, but the pysteps data source passes it.
        kwargs.pop("gzipped", None)
    return kwargs


def _grid(metadata: Mapping[str, Any], shape: tuple[int, int], source: str
          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Cell-centre coordinates and georeferencing attributes from pysteps metadata."""
    n_y, n_x = shape
    try:
        x1, x2 = float(metadata["x1"]), float(metadata["x2"])
        y1, y2 = float(metadata["y1"]), float(metadata["y2"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableFileError(f"{source}: the importer gives no grid corners x1/x2/y1/y2") from exc
    xpix = _pixel_size(metadata.get("xpixelsize"), x1, x2, n_x)
    ypix = _pixel_size(metadata.get("ypixelsize"), y1, y2, n_y)
    projection = str(metadata.get("projection") or "")
    scale = 1000.0 if str(metadata.get("cartesian_unit", "m")).lower() == "km" else 1.0
    if scale != 1.0:
        x1, x2, y1, y2, xpix, ypix = (v * scale for v in (x1, x2, y1, y2, xpix, ypix))
        projection = _proj_km_to_m(projection)
    x_left = _left_edge(x1, x2, n_x, xpix)
    y_low = _left_edge(y1, y2, n_y, ypix)
    x = x_left + (np.arange(n_x) + 0.5) * xpix
    y_up = y_low + (np.arange(n_y) + 0.5) * ypix
    yorigin = str(metadata.get("yorigin", "upper"))
    y = y_up[::-1] if yorigin == "upper" else y_up
    geo = {
        "projection": projection,
        "xpixelsize": float(xpix),
        "ypixelsize": float(ypix),
        "x1": float(x_left),
        "x2": float(x_left + n_x * xpix),
        "y1": float(y_low),
        "y2": float(y_low + n_y * ypix),
        "yorigin": yorigin,
        "cartesian_unit": "m" if scale != 1.0 else str(metadata.get("cartesian_unit", "m")),
    }
    return x, y, geo


def _pixel_size(reported: Any, low: float, high: float, n: int) -> float:
    if reported is not None and float(reported) > 0:
        return abs(float(reported))
    return abs(high - low) / n


def _left_edge(low: float, high: float, n: int, pixel: float) -> float:
    """The grid's lower edge: pysteps gives edges for most formats, cell centres for some."""
    span = abs(high - low)
    low = min(low, high)
    if math.isclose(span, n * pixel, rel_tol=1e-3):
        return low
    if math.isclose(span, (n - 1) * pixel, rel_tol=1e-3):
        # bom_rf3 reports the first and last cell centres
        return low - pixel / 2.0
    logger.warning("grid corners span %.1f for %d cells of %.1f; taking them as edges", span, n, pixel)
    return low


def _proj_km_to_m(projection: str) -> str:
    """A PROJ string whose lengths (earth radius, false origin) are in km, in metres.

    PROJ takes ``+a``/``+b``/``+R`` in metres; KNMI writes them in km to get a km grid,
    which modern PROJ rejects as a non-Earth body.
    """
    def scale(match: re.Match[str]) -> str:
        return f"+{match['key']}={float(match['value']) * 1000.0:.12g}"

    return re.sub(r"\+(?P<key>a|b|R|x_0|y_0)=(?P<value>[-+0-9.eE]+)", scale, projection)


# --- valid times --------------------------------------------------------------------------------


def _timestamps(values: Sequence[Any], source: Path) -> pd.DatetimeIndex:
    try:
        times = pd.DatetimeIndex(pd.to_datetime(list(values)))
    except (ValueError, TypeError) as exc:
        raise InputError(f"{source}: not a date-time: {values!r}") from exc
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
    return times


def _file_time(path: Path, importer: str) -> pd.DatetimeIndex:
    when: pd.Timestamp | None = None
    try:
        if importer == "knmi_hdf5":
            when = _knmi_product_times(path)[1]
        elif importer == "odim_hdf5":
            when = _odim_time(path)
        elif importer == "fmi_pgm":
            when = _pgm_obstime(path)
        elif importer == "mch_gif":
            match = _MCH_NAME.match(path.name)
            if match:
                when = pd.to_datetime(f"{match['yy']}{match['doy']}{match['hhmm']}", format="%y%j%H%M")
    except (OSError, EOFError, KeyError, ValueError) as exc:
        logger.debug("%s: no valid time in the file (%s); trying its name", path, exc)
    if when is None:
        when = _time_from_name(path.name)
    if when is None:
        raise InputError(
            f"{path}: cannot tell the file's valid time from its content or name; pass timestamps="
        )
    return _timestamps([when], path)


def _time_from_name(name: str) -> pd.Timestamp | None:
    for pattern, fmt in _NAME_STAMPS:
        match = pattern.search(name)
        if match:
            try:
                return pd.to_datetime("".join(match.groups()), format=fmt)
            except ValueError:
                continue
    return None


def _knmi_product_times(path: Path) -> tuple[pd.Timestamp, pd.Timestamp]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            overview = f["overview"].attrs
            start = _first_text(overview["product_datetime_start"])
            end = _first_text(overview["product_datetime_end"])
    except (OSError, KeyError) as exc:
        raise UnreadableFileError(f"{path}: not a readable KNMI HDF5 file ({exc})") from exc
    fmt = "%d-%b-%Y;%H:%M:%S.%f"
    return pd.to_datetime(start, format=fmt), pd.to_datetime(end, format=fmt)


def _first_text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    return value.decode() if isinstance(value, bytes | np.bytes_) else str(value)


def _odim_time(path: Path) -> pd.Timestamp:
    import h5py

    with h5py.File(path, "r") as f:
        return _odim_datetime(f["what"].attrs, "date", "time")


def _odim_datetime(what: Mapping[str, Any], date_key: str, time_key: str) -> pd.Timestamp:
    return pd.to_datetime(_first_text(what[date_key]) + _first_text(what[time_key]), format="%Y%m%d%H%M%S")


def _odim_defaults(path: Path, kwargs: dict[str, Any]) -> None:
    """Choose the ODIM quantity, and the accumulation period of ACRR, from the file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            found: dict[str, Any] = {}
            for name, group in f.items():
                if not name.startswith("dataset"):
                    continue
                dataset_what = group["what"].attrs if "what" in group else {}
                for sub_name, sub in group.items():
                    if sub_name.startswith("data") and "what" in sub and "quantity" in sub["what"].attrs:
                        found.setdefault(_first_text(sub["what"].attrs["quantity"]), dataset_what)
                if "quantity" in dataset_what:
                    found.setdefault(_first_text(dataset_what["quantity"]), dataset_what)
            if "qty" not in kwargs:
                chosen = next((q for q in ("RATE", "ACRR", "DBZH") if q in found), None)
                if chosen is None:
                    raise UnitsError(
                        f"{path}: no RATE, ACRR or DBZH quantity in the ODIM file (found {sorted(found)})"
                    )
                kwargs["qty"] = chosen
            if kwargs["qty"] == "ACRR" and "accutime" not in kwargs:
                what = dict(found.get("ACRR", {}))
                if "what" in f:
                    what = {**dict(f["what"].attrs), **what}
                kwargs["accutime"] = _odim_accumulation_minutes(what, path)
    except OSError as exc:
        raise UnreadableFileError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _odim_accumulation_minutes(what: Mapping[str, Any], path: Path) -> float:
    try:
        start = _odim_datetime(what, "startdate", "starttime")
        end = _odim_datetime(what, "enddate", "endtime")
    except (KeyError, ValueError) as exc:
        raise UnitsError(
            f"{path}: ACRR accumulation without start/end times in the file; pass accutime= (minutes)"
        ) from exc
    minutes = (end - start).total_seconds() / 60.0
    if minutes <= 0:
        raise UnitsError(f"{path}: accumulation period from {start} to {end} is not positive")
    return minutes


def _pgm_obstime(path: Path) -> pd.Timestamp | None:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(4096)
    match = re.search(rb"#\s*obstime\s+(\d{12})", header)
    return pd.to_datetime(match.group(1).decode(), format="%Y%m%d%H%M") if match else None


def _hdf5_layout(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "image1" in f and "geographic" in f:
                return "knmi_hdf5"
            conventions = _first_text(f.attrs["Conventions"]) if "Conventions" in f.attrs else ""
            if conventions.upper().startswith("ODIM") or ("what" in f and "where" in f and "dataset1" in f):
                return "odim_hdf5"
    except OSError as exc:
        raise UnreadableFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    raise UnreadableFileError(f"{path}: an HDF5 file in neither the KNMI nor the ODIM layout")


def _is_rainfields(path: Path) -> bool:
    import netCDF4

    try:
        with NETCDF_LOCK, netCDF4.Dataset(path) as ds:
            var = ds.variables.get("precipitation")
            return (var is not None and var.ndim == 2
                    and "valid_time" in ds.variables and "proj" in ds.variables)
    except OSError as exc:
        raise UnreadableFileError(f"{path}: not a readable netCDF file ({exc})") from exc


# --- stacking ---------------------------------------------------------------------------------------


def _to_sequence(parts: Sequence[_Frames], *, regular: bool = True) -> xr.DataArray:
    first = parts[0]
    for part in parts[1:]:
        if part.rate.shape[1:] != first.rate.shape[1:]:
            raise SequenceError(
                f"{part.path}: grid of {part.rate.shape[1]}x{part.rate.shape[2]} differs from "
                f"{first.path}'s {first.rate.shape[1]}x{first.rate.shape[2]}"
            )
        if not (np.allclose(part.x, first.x) and np.allclose(part.y, first.y)):
            raise SequenceError(f"{part.path}: grid coordinates differ from those of {first.path}")
        if part.attrs.get("projection", "") != first.attrs.get("projection", ""):
            raise SequenceError(f"{part.path}: projection differs from that of {first.path}")
    times = pd.DatetimeIndex(np.concatenate([p.times.values for p in parts]))
    rate = parts[0].rate if len(parts) == 1 else np.concatenate([p.rate for p in parts], axis=0)
    order = np.argsort(times.values, kind="stable")
    times, rate = times[order], rate[order]
    duplicated = times[times.duplicated()]
    if len(duplicated):
        raise SequenceError(f"more than one frame for {', '.join(str(t) for t in duplicated.unique()[:5])}")
    attrs = {k: v for k, v in first.attrs.items() if k not in ("units", "long_name")}
    sequence = make_sequence(
        rate, times, x=first.x, y=first.y,
        projection=str(attrs.pop("projection", "")),
        xpixelsize=float(attrs.pop("xpixelsize", 1000.0)),
        ypixelsize=float(attrs.pop("ypixelsize", 1000.0)),
        attrs=attrs,
    )
    if regular and len(times) >= 2:
        time_step(sequence)  # irregular steps are an error: gaps must be explicit
    return sequence
