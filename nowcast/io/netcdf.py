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
from nowcast.files import replaced_atomically
from nowcast.io.locks import NETCDF_LOCK
from nowcast.io.safety import DEFAULT_LIMITS, ReadLimits, check_hdf5, is_hdf5
from nowcast.products import (
    ACCUMULATION_PRODUCTS,
    MEAN_NEIGHBOURHOOD_ATTR,
    MIN_MEMBERS_ATTR,
    PROCESSED_NEIGHBOURHOOD_ATTR,
    ProductRequest,
    ensemble_products,
)
from nowcast.sequence import DIMS, VARIABLE_NAME, make_sequence, time_step
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
    with NETCDF_LOCK:
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
    with NETCDF_LOCK:
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


PROBABILITY_NAME = "probability_of_lwe_precipitation_rate_above_threshold"
#: each ensemble product's variable in a CF file (after the Met Office's IMPROVER)
PRODUCT_VARIABLES = {
    "members": VARIABLE_NAME,
    "probabilities": PROBABILITY_NAME,
    "mean": f"{VARIABLE_NAME}_mean",
    "pm_mean": f"{VARIABLE_NAME}_pm_mean",
    "quantiles": f"{VARIABLE_NAME}_percentile",
    "max_probabilities": "probability_of_lwe_precipitation_rate_max_above_threshold",
    "accumulation_probabilities": "probability_of_lwe_thickness_of_precipitation_amount_above_threshold",
    "accumulation_quantiles": "lwe_thickness_of_precipitation_amount_percentile",
}
# CF-1.8 allows no 64-bit integers; float64 seconds hold any timestamp a sequence can carry
_TIME_ENCODING = {"units": "seconds since 1970-01-01 00:00:00", "dtype": "float64", "_FillValue": None}
_RATE_ATTRS = {"standard_name": "lwe_precipitation_rate", "units": "mm h-1", "grid_mapping": "crs"}


def sequence_to_dataset(
    sequence: xr.DataArray, *, forecast_reference_time: Any | None = None,
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """A CF-1.8 dataset for ``sequence`` (a forecast when a reference time is given).

    Ensemble members, (member, time, y, x), lie on a ``realization`` axis as in :func:`products_to_dataset`.
    """
    if "member" in sequence.dims:
        members = ensemble_products(sequence.transpose("member", *DIMS), ProductRequest(("members",)))
        return products_to_dataset(members, forecast_reference_time=forecast_reference_time, attrs=attrs)
    values = sequence.transpose(*DIMS).values.astype(np.float32)
    variables = {VARIABLE_NAME: xr.Variable(DIMS, values, {**_RATE_ATTRS, "long_name": "rain rate"})}
    return _cf_dataset(variables, {}, sequence, forecast_reference_time, attrs)


def products_to_dataset(
    products: xr.Dataset, *, forecast_reference_time: Any | None = None, attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """A CF-1.8 dataset of ensemble products (:func:`nowcast.products.ensemble_products`), as IMPROVER writes them.

    Variables are named in :data:`PRODUCT_VARIABLES`: members on a ``realization`` axis;
    probabilities (units 1) on a ``threshold`` coordinate whose standard_name is
    ``lwe_precipitation_rate`` (mm h-1, ``spp__relative_to_threshold = "greater_than"``,
    pysteps' and the verification's ``rate > threshold``); the mean (``cell_methods:
    realization: mean``) and the probability-matched mean as rain rates; quantiles on a
    ``percentile`` coordinate (%); the probabilities of the forecast period's maximum
    (``probability_of_lwe_precipitation_rate_max_above_threshold``, ``cell_methods: time: maximum``)
    on the same thresholds, with no time axis. The rain over the forecast period (``cell_methods: time: sum``,
    no time axis, a comment naming the period): its probabilities
    (``probability_of_lwe_thickness_of_precipitation_amount_above_threshold``, units 1) on an
    ``accumulation_threshold`` coordinate whose standard_name is ``lwe_thickness_of_precipitation_amount`` (mm,
    ``greater_than``), its quantiles (``lwe_thickness_of_precipitation_amount_percentile``, mm) on the
    ``percentile`` coordinate.
    """
    variables: dict[str, xr.Variable] = {}
    coords: dict[str, Any] = {}
    for product in products.data_vars:
        name, variable, coord = _product_variable(str(product), products)
        variables[name] = variable
        coords.update(coord)
    title = f"nowcast precipitation ensemble forecast, {products.attrs.get('ensemble_members', '?')} members"
    return _cf_dataset(variables, coords, products, forecast_reference_time, {"title": title, **(attrs or {})})


def _product_variable(product: str, products: xr.Dataset) -> tuple[str, xr.Variable, dict[str, Any]]:
    """One product's CF variable and its leading coordinate, if it has one."""
    data = products[product]
    name = PRODUCT_VARIABLES[product]
    if product == "max_probabilities":
        return name, _period_maximum_variable(data, products), _threshold_coord(products)
    if product in ACCUMULATION_PRODUCTS:
        return name, *_accumulation_variable(product, data, products)
    values = data.transpose(*data.dims[:-3], *DIMS).values.astype(np.float32)
    if product == "members":
        realization = np.arange(values.shape[0], dtype=np.int32)
        coord = {"realization": ("realization", realization,
                                 {"standard_name": "realization", "units": "1", "long_name": "ensemble member"})}
        return name, xr.Variable(("realization", *DIMS), values, {**_RATE_ATTRS, "long_name": "rain rate"}), coord
    if product == "probabilities":
        coord = _threshold_coord(products)
        attrs = {"long_name": "probability of rain rate above threshold", "units": "1", "grid_mapping": "crs"}
        neighbourhood = data.attrs.get(PROCESSED_NEIGHBOURHOOD_ATTR)
        if neighbourhood:
            attrs[PROCESSED_NEIGHBOURHOOD_ATTR] = float(neighbourhood)
            attrs["comment"] = (f"neighbourhood-processed: each probability is the mean over a square window whose "
                                f"side grows {neighbourhood:g} km per minute of lead")
        return name, xr.Variable(("threshold", *DIMS), values, _with_member_minimum(attrs, data)), coord
    if product == "quantiles":
        percentiles = (100.0 * products["quantile"].values).astype(np.float32)
        coord = {"percentile": ("percentile", percentiles, {"long_name": "percentile", "units": "%"})}
        attrs = {**_RATE_ATTRS, "long_name": "rain rate percentile of the ensemble members"}
        return name, xr.Variable(("percentile", *DIMS), values, _with_member_minimum(attrs, data)), {**coord}
    if product == "mean":
        attrs = {**_RATE_ATTRS, "long_name": "ensemble mean rain rate", "cell_methods": "realization: mean"}
        return name, xr.Variable(DIMS, values, _with_member_minimum(attrs, data)), {}
    # CF has no cell method for probability matching: the long name says what it is
    attrs = {**_RATE_ATTRS, "long_name": "probability-matched ensemble mean rain rate (Ebert 2001)"}
    window = data.attrs.get(MEAN_NEIGHBOURHOOD_ATTR)
    if window:
        attrs[MEAN_NEIGHBOURHOOD_ATTR] = float(window)
        attrs["comment"] = (f"placed by the ensemble mean's mean over a square window whose side grows {window:g} km "
                            f"per minute of lead; values from the pooled members")
    return name, xr.Variable(DIMS, values, attrs), {}


def _threshold_coord(products: xr.Dataset) -> dict[str, Any]:
    """The probabilities' threshold coordinate, as IMPROVER writes it (``rate > threshold``)."""
    thresholds = products["threshold"].values.astype(np.float32)
    return {"threshold": ("threshold", thresholds, {
        "standard_name": "lwe_precipitation_rate", "long_name": "rain rate threshold", "units": "mm h-1",
        "spp__relative_to_threshold": "greater_than"})}


def _period_maximum_variable(data: xr.DataArray, products: xr.Dataset) -> xr.Variable:
    """P(rate > threshold at some time of the forecast): IMPROVER's ``rate_max`` probability over the period of
    the products' valid times."""
    times = pd.DatetimeIndex(products["time"].values)
    values = data.transpose("threshold", "y", "x").values.astype(np.float32)
    attrs = {"long_name": "probability of rain rate above threshold at some time of the forecast period",
             "units": "1", "grid_mapping": "crs", "cell_methods": "time: maximum",
             "comment": f"the maximum over the forecasts valid from {times[0].isoformat()} to {times[-1].isoformat()}"}
    return xr.Variable(("threshold", "y", "x"), values, _with_member_minimum(attrs, data))


def _accumulation_variable(product: str, data: xr.DataArray,
                           products: xr.Dataset) -> tuple[xr.Variable, dict[str, Any]]:
    """The rain over the forecast period (IMPROVER's ``lwe_thickness_of_precipitation_amount``, ``time: sum``): its
    probabilities above thresholds in mm or its percentiles, with that axis' coordinate."""
    period = {"grid_mapping": "crs", "cell_methods": "time: sum",
              "comment": f"the rain over the forecast period {_period_of(products)}"}
    if product == "accumulation_probabilities":
        thresholds = products["accumulation_threshold"].values.astype(np.float32)
        coord = {"accumulation_threshold": ("accumulation_threshold", thresholds, {
            "standard_name": "lwe_thickness_of_precipitation_amount", "units": "mm",
            "long_name": "threshold of the rain over the forecast period",
            "spp__relative_to_threshold": "greater_than"})}
        attrs = {"long_name": "probability of the rain over the forecast period above threshold", "units": "1",
                 **period}
        dims = ("accumulation_threshold", "y", "x")
    else:
        percentiles = (100.0 * products["quantile"].values).astype(np.float32)
        coord = {"percentile": ("percentile", percentiles, {"long_name": "percentile", "units": "%"})}
        attrs = {"standard_name": "lwe_thickness_of_precipitation_amount", "units": "mm",
                 "long_name": "rain over the forecast period, percentile of the ensemble members", **period}
        dims = ("percentile", "y", "x")
    values = data.transpose(data.dims[0], "y", "x").values.astype(np.float32)
    return xr.Variable(dims, values, _with_member_minimum(attrs, data)), coord


def _period_of(products: xr.Dataset) -> str:
    """The forecast period, as words: from its reference time (the products', else the first valid time less the
    time step) to the last valid time."""
    times = pd.DatetimeIndex(products["time"].values)
    reference = products.attrs.get("forecast_reference_time")
    if reference is not None:
        start = pd.Timestamp(reference)
    elif len(times) > 1:
        start = times[0] - (times[1] - times[0])
    else:
        return f"ending {times[-1].isoformat()}"
    return f"from {start.isoformat()} to {times[-1].isoformat()}"


def _with_member_minimum(attrs: dict[str, Any], data: xr.DataArray) -> dict[str, Any]:
    """``attrs`` with the product's minimum of members with data, and a comment that says what it means."""
    needed = data.attrs.get(MIN_MEMBERS_ATTR)
    if needed is None:
        return attrs
    note = f"missing where fewer than {int(needed)} members have data"
    comment = f"{attrs['comment']}; {note}" if "comment" in attrs else note
    return {**attrs, MIN_MEMBERS_ATTR: np.int32(needed), "comment": comment}


def _cf_dataset(
    variables: dict[str, xr.Variable], coords: dict[str, Any], grid: xr.DataArray | xr.Dataset,
    forecast_reference_time: Any | None, attrs: dict[str, Any] | None,
) -> xr.Dataset:
    """``variables`` on ``grid``'s times and cells, with the CF coordinates, grid mapping and global attributes."""
    projection = str(grid.attrs.get("projection", ""))
    crs = _pyproj_crs(projection)
    coords = {**_grid_coords(grid, crs), **coords}
    if forecast_reference_time is not None:
        frt = np.datetime64(pd.Timestamp(forecast_reference_time).to_datetime64(), "ns")
        coords["forecast_reference_time"] = ((), frt, {"standard_name": "forecast_reference_time"})
        lead = (grid["time"].values - frt).astype("timedelta64[s]").astype(np.int64) / 60.0
        coords["forecast_period"] = ("time", lead, {"standard_name": "forecast_period", "units": "minutes"})
        for variable in variables.values():
            variable.attrs["coordinates"] = ("forecast_reference_time forecast_period" if "time" in variable.dims
                                             else "forecast_reference_time")
    data_vars: dict[str, Any] = dict(variables)
    if crs is not None:
        data_vars["crs"] = xr.Variable((), np.int32(0), _grid_mapping_attrs(projection, crs))
    else:
        # CF requires a grid_mapping_name on a grid mapping: without a known projection there is none
        for variable in variables.values():
            variable.attrs.pop("grid_mapping", None)
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs = {
        "Conventions": "CF-1.8",
        "title": "nowcast precipitation" + (" forecast" if forecast_reference_time is not None else ""),
        "xpixelsize": float(grid.attrs.get("xpixelsize", 1000.0)),
        "ypixelsize": float(grid.attrs.get("ypixelsize", 1000.0)),
        "projection": projection,
    }
    for key in ("institution", "source"):
        if key in grid.attrs:
            ds.attrs[key] = str(grid.attrs[key])
    ds.attrs.update(attrs or {})
    return ds


def _grid_coords(grid: xr.DataArray | xr.Dataset, crs: Any) -> dict[str, Any]:
    """time, y and x with their CF attributes (latitude and longitude on a geographic grid)."""
    if crs is not None and crs.is_geographic:
        y_attrs = {"standard_name": "latitude", "axis": "Y", "units": "degrees_north"}
        x_attrs = {"standard_name": "longitude", "axis": "X", "units": "degrees_east"}
    else:
        y_attrs = {"standard_name": "projection_y_coordinate", "axis": "Y", "units": "m"}
        x_attrs = {"standard_name": "projection_x_coordinate", "axis": "X", "units": "m"}
    return {
        "time": ("time", grid["time"].values, {"standard_name": "time", "axis": "T"}),
        "y": ("y", grid["y"].values, y_attrs),
        "x": ("x", grid["x"].values, x_attrs),
    }


def _grid_mapping_attrs(projection: str, crs: Any) -> dict[str, Any]:
    """The CF grid mapping of ``crs``, with the PROJ string (what the reader uses) in ``proj4_params``."""
    with warnings.catch_warnings():
        # e.g. MeteoSwiss' oblique Mercator: the CF attributes are partial, the
        # PROJ string kept in proj4_params is complete and is what the reader uses
        warnings.simplefilter("ignore", UserWarning)
        attrs = {"proj4_params": projection, **crs.to_cf()}
    if attrs.get("grid_mapping_name") == "polar_stereographic" and "latitude_of_projection_origin" not in attrs:
        # pyproj leaves out the pole when a standard parallel is given (KNMI's, FMI's grids), whose side it is on
        attrs["latitude_of_projection_origin"] = 90.0 if float(attrs.get("standard_parallel", 90.0)) >= 0 else -90.0
    return attrs


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
    forecast: xr.DataArray | xr.Dataset,
    path: str | os.PathLike[str],
    *,
    forecast_reference_time: Any | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write a sequence, ensemble members or ensemble products as CF-netCDF atomically (temporary file, then rename).

    ``forecast``: a sequence (time, y, x), members (member, time, y, x), or the products of
    :func:`nowcast.products.ensemble_products` (see :func:`products_to_dataset`).
    """
    return write_dataset(_forecast_dataset(forecast, forecast_reference_time, attrs), path)


def _forecast_dataset(forecast: xr.DataArray | xr.Dataset, forecast_reference_time: Any | None,
                      attrs: dict[str, Any] | None) -> xr.Dataset:
    if isinstance(forecast, xr.Dataset):
        return products_to_dataset(forecast, forecast_reference_time=forecast_reference_time, attrs=attrs)
    return sequence_to_dataset(forecast, forecast_reference_time=forecast_reference_time, attrs=attrs)


def write_dataset(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write a CF dataset made here (:func:`sequence_to_dataset`, :func:`products_to_dataset`) atomically."""
    path = Path(path)
    with replaced_atomically(path) as tmp:
        _to_netcdf(ds, tmp)
    logger.info("wrote %s (%d frames)", path, ds.sizes["time"])
    return path


def _to_netcdf(ds: xr.Dataset, path: Path) -> None:
    with NETCDF_LOCK:
        ds.to_netcdf(path, engine="netcdf4", format="NETCDF4", encoding=_encoding(ds))


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """Compressed float32 fields, NaN for no data, a field per chunk; times in float64 seconds; no fill values on
    coordinates (CF forbids them)."""
    encoding: dict[str, dict[str, Any]] = {}
    for name, variable in ds.variables.items():
        if np.issubdtype(variable.dtype, np.datetime64):
            encoding[str(name)] = dict(_TIME_ENCODING)
        elif name in ds.data_vars and variable.ndim >= 3:
            encoding[str(name)] = {"zlib": True, "complevel": 4, "dtype": "float32", "_FillValue": np.float32(np.nan),
                                   "chunksizes": (*[1] * (variable.ndim - 2), *variable.shape[-2:])}
        elif np.issubdtype(variable.dtype, np.floating):
            encoding[str(name)] = {"_FillValue": None}
    return encoding


def to_netcdf_bytes(forecast: xr.DataArray | xr.Dataset, *, forecast_reference_time: Any | None = None,
                    attrs: dict[str, Any] | None = None) -> bytes:
    """The CF-netCDF file of ``forecast`` (see :func:`write_netcdf`) as bytes (for HTTP responses).

    Written into a private scratch folder and read back: nothing is published, so nothing is
    renamed or flushed to disk on the request path.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "forecast.nc"
        _to_netcdf(_forecast_dataset(forecast, forecast_reference_time, attrs), path)
        return path.read_bytes()
