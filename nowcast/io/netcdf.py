"""CF-netCDF: the product's exchange format, read and written.

Reading accepts any CF-style file with one precipitation variable on (time, y, x) in
a rate (mm/h and friends), an accumulation over the time step (mm) or reflectivity
(dBZ), and returns the product's sequence form (:mod:`nowcast.sequence`). A file is
checked before any of its data is read (:mod:`nowcast.io.safety`), and of its data only
the rain variable and its coordinates are read; bytes (request bodies) are read in
memory, never written to disk.

Writing produces CF-1.8 files: ``precipitation_rate`` with standard_name
``lwe_precipitation_rate`` in ``mm h-1``, a ``forecast_reference_time`` scalar
coordinate for forecasts, the grid and a CF grid mapping, zlib compression. Files are
written to a temporary name beside the target and renamed, so a failed write never
leaves a half-written file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pandas as pd
import xarray as xr

from nowcast.errors import InputError, SequenceError, UnitsError, UnreadableFileError
from nowcast.io.safety import DEFAULT_LIMITS, ReadLimits, check_hdf5, is_hdf5
from nowcast.sequence import VARIABLE_NAME, make_sequence, time_step
from nowcast.transforms import to_mmh

logger = logging.getLogger(__name__)

PRECIP_STANDARD_NAMES = (
    "lwe_precipitation_rate",
    "rainfall_rate",
    "precipitation_flux",
    "rainfall_flux",
    "lwe_thickness_of_precipitation_amount",
    "thickness_of_rainfall_amount",
    "precipitation_amount",
    "rainfall_amount",
    "equivalent_reflectivity_factor",
)
_X_NAMES = ("x", "projection_x_coordinate", "lon", "longitude")
_Y_NAMES = ("y", "projection_y_coordinate", "lat", "latitude")


ShapeCheck = Callable[[int, int, int], None]


def read_netcdf(
    path: str | os.PathLike[str],
    variable: str | None = None,
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    check_shape: ShapeCheck | None = None,
) -> xr.DataArray:
    """Read a CF-netCDF radar file into the sequence form (mm/h, NaN for no data).

    The file is checked before any data is read (:func:`nowcast.io.safety.check_hdf5`:
    nothing stored in other files, declared sizes within ``limits``); ``check_shape`` is
    called with the rain variable's (time, y, x) sizes before its values are read, so a
    caller can refuse a grid before it is in memory.
    """
    path = Path(path)
    if not path.exists():
        raise UnreadableFileError(f"{path}: no such file")
    if not path.is_file():
        raise UnreadableFileError(f"{path}: not a regular file")
    if is_hdf5(path):
        check_hdf5(path, limits=limits)
    try:
        handle = netCDF4.Dataset(path, "r")
    except Exception as exc:  # netCDF4 raises OSError, RuntimeError, ValueError...
        raise UnreadableFileError(f"{path}: not a readable netCDF file ({exc})") from exc
    return _read_open_file(handle, str(path), variable, limits, check_shape)


def read_netcdf_bytes(
    data: bytes,
    variable: str | None = None,
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    check_shape: ShapeCheck | None = None,
    name: str = "file",
) -> xr.DataArray:
    """Read a CF-netCDF file held in memory (an HTTP request body), checked like :func:`read_netcdf`.

    Nothing is written to disk: the bytes are opened in memory, and messages call them ``name``.
    """
    if is_hdf5(data):
        check_hdf5(data, limits=limits, name=name)
    try:
        handle = netCDF4.Dataset(name, "r", memory=bytes(data))
    except Exception as exc:
        raise UnreadableFileError(f"{name}: not a readable netCDF file ({exc})") from exc
    return _read_open_file(handle, name, variable, limits, check_shape)


def _read_open_file(
    handle: netCDF4.Dataset, source: str, variable: str | None, limits: ReadLimits, check_shape: ShapeCheck | None
) -> xr.DataArray:
    """Check every variable's declared size, then read the rain variable and its coordinates only."""
    try:
        for name, declared in _declared_variables(handle):
            limits.check_declared(source, name, declared.shape, getattr(declared.dtype, "itemsize", 8))
        try:
            ds = xr.open_dataset(
                xr.backends.NetCDF4DataStore(handle), mask_and_scale=True, decode_times=True
            )
        except Exception as exc:
            raise UnreadableFileError(f"{source}: not a readable netCDF file ({exc})") from exc
        return dataset_to_sequence(ds, variable=variable, source=source, check_shape=check_shape)
    except InputError:
        raise
    except Exception as exc:  # the netCDF library reports a broken file as RuntimeError, OSError, ...
        raise UnreadableFileError(
            f"{source}: the netCDF file could not be read ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        handle.close()


def _declared_variables(group: netCDF4.Group, prefix: str = "") -> Iterator[tuple[str, netCDF4.Variable]]:
    for name, declared in group.variables.items():
        yield prefix + name, declared
    for name, child in group.groups.items():
        yield from _declared_variables(child, f"{prefix}{name}/")


def dataset_to_sequence(
    ds: xr.Dataset, *, variable: str | None = None, source: str = "dataset", check_shape: ShapeCheck | None = None
) -> xr.DataArray:
    """The sequence held in an opened CF dataset; only the rain variable's values are read."""
    var = _find_variable(ds, variable, source)
    da = ds[var]
    time_dim = next(
        (d for d in da.dims
         if d in ("time", "t") or (d in ds.coords and np.issubdtype(ds[d].dtype, np.datetime64))),
        None,
    )
    if time_dim is None:
        raise SequenceError(f"{source}: variable {var!r} has no time dimension (dims {da.dims})")
    y_dim = next((d for d in da.dims if d in _Y_NAMES), None)
    x_dim = next((d for d in da.dims if d in _X_NAMES), None)
    if y_dim is None or x_dim is None:
        others = [d for d in da.dims if d != time_dim]
        if len(others) != 2:
            raise SequenceError(f"{source}: variable {var!r} must be (time, y, x); dims are {da.dims}")
        y_dim, x_dim = others
    extra = [d for d in da.dims if d not in (time_dim, y_dim, x_dim)]
    for d in extra:
        if da.sizes[d] != 1:
            raise SequenceError(f"{source}: variable {var!r} has extra dimension {d!r} of size {da.sizes[d]}")
        da = da.isel({d: 0})
    da = da.transpose(time_dim, y_dim, x_dim)
    times = pd.DatetimeIndex(da[time_dim].values) if time_dim in da.coords else None
    if times is None or not np.issubdtype(np.asarray(da[time_dim].values).dtype, np.datetime64):
        raise SequenceError(f"{source}: time coordinate {time_dim!r} is missing or not a date")
    if not np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.complexfloating):
        raise SequenceError(f"{source}: variable {var!r} holds {da.dtype} values, not numbers")
    if check_shape is not None:
        check_shape(da.sizes[time_dim], da.sizes[y_dim], da.sizes[x_dim])

    units = str(da.attrs.get("units", "")).strip()
    if not units:
        raise UnitsError(f"{source}: variable {var!r} has no units attribute")
    minutes = None
    if len(times) >= 2:
        tmp = xr.DataArray(np.zeros(len(times)), dims=["time"], coords={"time": times.values})
        minutes = time_step(tmp).total_seconds() / 60.0
    elif "accumulation_minutes" in da.attrs:
        minutes = float(da.attrs["accumulation_minutes"])
    rate = to_mmh(np.asarray(da.values, dtype=np.float32), units, accumulation_minutes=minutes)

    x = np.asarray(da[x_dim].values, dtype=np.float64) if x_dim in da.coords else None
    y = np.asarray(da[y_dim].values, dtype=np.float64) if y_dim in da.coords else None
    attrs = {**ds.attrs, **da.attrs}
    projection = _projection_of(ds, da)
    if not projection and _is_geographic(ds, x_dim, y_dim):
        projection = "+proj=longlat +datum=WGS84 +no_defs"
    xpix = float(attrs.get("xpixelsize", abs(x[1] - x[0]) if x is not None and len(x) > 1 else 1000.0))
    ypix = float(attrs.get("ypixelsize", abs(y[1] - y[0]) if y is not None and len(y) > 1 else 1000.0))
    keep = {k: attrs[k] for k in ("institution", "source") if k in attrs}
    return make_sequence(rate, times, x=x, y=y, projection=projection,
                         xpixelsize=xpix, ypixelsize=ypix, attrs=keep)


def _is_geographic(ds: xr.Dataset, x_dim: str, y_dim: str) -> bool:
    """Whether the grid axes are longitude and latitude (by units or standard name)."""
    if x_dim not in ds.coords or y_dim not in ds.coords:
        return x_dim in ("lon", "longitude") and y_dim in ("lat", "latitude")
    x_attrs, y_attrs = ds[x_dim].attrs, ds[y_dim].attrs
    return ((str(x_attrs.get("units", "")).startswith("degree") and str(y_attrs.get("units", "")).startswith("degree"))
            or (x_attrs.get("standard_name") == "longitude" and y_attrs.get("standard_name") == "latitude"))


def _find_variable(ds: xr.Dataset, variable: str | None, source: str) -> str:
    if variable is not None:
        if variable not in ds.data_vars:
            raise SequenceError(f"{source}: no variable {variable!r}; variables are {sorted(ds.data_vars)}")
        return variable
    candidates = [
        name for name, v in ds.data_vars.items()
        if v.ndim >= 3 and (v.attrs.get("standard_name") in PRECIP_STANDARD_NAMES
                            or name in (VARIABLE_NAME, "precipitation", "precip", "rainrate", "rain_rate",
                                        "precipitation_rate", "dbz", "DBZ", "reflectivity"))
    ]
    if not candidates:
        candidates = [name for name, v in ds.data_vars.items() if v.ndim >= 3 and "units" in v.attrs]
    if len(candidates) != 1:
        raise SequenceError(
            f"{source}: expected one precipitation variable on (time, y, x); "
            f"found {candidates or 'none'} among {sorted(ds.data_vars)}"
        )
    return candidates[0]


def _projection_of(ds: xr.Dataset, da: xr.DataArray) -> str:
    for key in ("projection", "proj4", "proj4_params"):
        if key in da.attrs:
            return str(da.attrs[key])
    gm_name = da.attrs.get("grid_mapping")
    if gm_name and gm_name in ds.variables:
        gm = ds[gm_name].attrs
        for key in ("proj4", "proj4_params", "proj4text"):
            if key in gm:
                return str(gm[key])
        try:
            import pyproj

            return pyproj.CRS.from_cf(dict(gm)).to_proj4()
        except Exception:  # an incomplete grid mapping: keep going without projection
            logger.warning("could not interpret grid mapping %r", gm_name)
    return str(ds.attrs.get("projection", ""))


def sequence_to_dataset(
    sequence: xr.DataArray, *, forecast_reference_time: Any | None = None,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """A CF-1.8 dataset for ``sequence`` (a forecast when a reference time is given)."""
    # An ensemble forecast carries a leading "member" dimension (CF: realization).
    dims = ("member", "time", "y", "x") if "member" in sequence.dims else ("time", "y", "x")
    values = sequence.transpose(*dims).values.astype(np.float32)
    var = xr.Variable(
        dims,
        values,
        attrs={
            "standard_name": "lwe_precipitation_rate",
            "long_name": "rain rate",
            "units": "mm h-1",
            "grid_mapping": "crs",
        },
    )
    projection = str(sequence.attrs.get("projection", ""))
    crs = _pyproj_crs(projection)
    if crs is not None and crs.is_geographic:
        y_attrs = {"standard_name": "latitude", "axis": "Y", "units": "degrees_north"}
        x_attrs = {"standard_name": "longitude", "axis": "X", "units": "degrees_east"}
    else:
        y_attrs = {"standard_name": "projection_y_coordinate", "axis": "Y", "units": "m"}
        x_attrs = {"standard_name": "projection_x_coordinate", "axis": "X", "units": "m"}
    coords: dict[str, Any] = {
        "time": ("time", sequence["time"].values, {"standard_name": "time", "axis": "T"}),
        "y": ("y", sequence["y"].values, y_attrs),
        "x": ("x", sequence["x"].values, x_attrs),
    }
    if "member" in sequence.dims:
        coords["member"] = ("member", np.arange(sequence.sizes["member"], dtype=np.int32),
                            {"standard_name": "realization", "long_name": "ensemble member"})
    if forecast_reference_time is not None:
        frt = np.datetime64(pd.Timestamp(forecast_reference_time).to_datetime64(), "ns")
        coords["forecast_reference_time"] = ((), frt, {"standard_name": "forecast_reference_time"})
        lead = (sequence["time"].values - frt).astype("timedelta64[s]").astype(np.int64) / 60.0
        coords["forecast_period"] = ("time", lead, {"standard_name": "forecast_period", "units": "minutes"})
        var.attrs["coordinates"] = "forecast_reference_time forecast_period"
    data_vars: dict[str, Any] = {VARIABLE_NAME: var}
    if crs is not None:
        with warnings.catch_warnings():
            # e.g. MeteoSwiss' oblique Mercator: the CF attributes are partial, the
            # PROJ string kept in proj4_params is complete and is what the reader uses
            warnings.simplefilter("ignore", UserWarning)
            crs_attrs = {"proj4_params": projection, **crs.to_cf()}
        data_vars["crs"] = xr.Variable((), np.int32(0), crs_attrs)
    else:
        # CF requires a grid_mapping_name on a grid mapping: without a known projection there is none
        del var.attrs["grid_mapping"]
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": "nowcast precipitation" + (" forecast" if forecast_reference_time is not None else ""),
        "xpixelsize": float(sequence.attrs.get("xpixelsize", 1000.0)),
        "ypixelsize": float(sequence.attrs.get("ypixelsize", 1000.0)),
        "projection": projection,
    }
    for key in ("institution", "source"):
        if key in sequence.attrs:
            ds.attrs[key] = str(sequence.attrs[key])
    ds.attrs.update(attrs or {})
    return ds


def _pyproj_crs(projection: str) -> Any:
    """The pyproj CRS of a PROJ string, or None when it is empty or not understood."""
    if not projection:
        return None
    try:
        import pyproj

        return pyproj.CRS.from_proj4(projection)
    except Exception:
        logger.warning("projection %r is not understood by pyproj; kept as text only", projection)
        return None


def write_netcdf(
    sequence: xr.DataArray,
    path: str | os.PathLike[str],
    *,
    forecast_reference_time: Any | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write ``sequence`` as CF-netCDF atomically (temporary file, then rename)."""
    path = Path(path)
    ds = sequence_to_dataset(sequence, forecast_reference_time=forecast_reference_time, attrs=attrs)
    encoding = {
        VARIABLE_NAME: {"zlib": True, "complevel": 4, "dtype": "float32", "_FillValue": np.float32(np.nan),
                        "chunksizes": (*([1] if "member" in sequence.dims else []), 1,
                                       sequence.sizes["y"], sequence.sizes["x"])},
        "time": {"units": "seconds since 1970-01-01 00:00:00", "dtype": "int64"},
    }
    if "forecast_reference_time" in ds.coords:
        encoding["forecast_reference_time"] = {"units": "seconds since 1970-01-01 00:00:00", "dtype": "int64"}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("wrote %s (%d frames)", path, sequence.sizes["time"])
    return path


def to_netcdf_bytes(sequence: xr.DataArray, **kwargs: Any) -> bytes:
    """The CF-netCDF file for ``sequence`` as bytes (for HTTP responses)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = write_netcdf(sequence, Path(tmp) / "forecast.nc", **kwargs)
        return out.read_bytes()
