"""Hostile HDF5/netCDF-4 files for the reader and service tests, built with h5py and netCDF4.

Each builder starts from a valid CF-netCDF file of the project (``good``) and rewrites its
rain variable so that its bytes live somewhere else, or writes a tiny file that declares
far more data than it holds. They are what an attacker would upload.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import netCDF4
import numpy as np

from nowcast.io.netcdf import write_netcdf
from nowcast.synthetic import SyntheticRain, synthetic_sequence

RAIN = "precipitation_rate"
DIMS = ("time", "y", "x")


def good(path: Path, *, frames: int = 4, ny: int = 8, nx: int = 8) -> Path:
    """A valid CF-netCDF file of synthetic rain."""
    sequence = synthetic_sequence(SyntheticRain(ny=ny, nx=nx, frames=frames), seed=1)
    return write_netcdf(sequence, path)


def _replace_rain(path: Path, **create: object) -> Path:
    """Recreate the rain dataset of ``path`` with ``create`` (h5py create_dataset options), same attributes."""
    with h5py.File(path, "r+") as f:
        old = f[RAIN]
        shape, dtype = old.shape, old.dtype
        attrs = {k: old.attrs[k] for k in old.attrs if k not in ("DIMENSION_LIST", "_FillValue")}
        del f[RAIN]
        if "layout" in create:
            new = f.create_virtual_dataset(RAIN, create["layout"])
        else:
            new = f.create_dataset(RAIN, shape=shape, dtype=dtype, **create)
        for key, value in attrs.items():
            new.attrs[key] = value
        for axis, name in enumerate(DIMS):
            new.dims[axis].attach_scale(f[name])
    return path


def external_storage(path: Path, target: Path | str) -> Path:
    """The rain variable's bytes are stored in ``target`` (HDF5 external raw storage)."""
    good(path)
    size = 4 * 8 * 8 * 4
    return _replace_rain(path, external=[(str(target), 0, size)])


def external_link(path: Path, target: Path) -> Path:
    """The rain variable is an external link to the same variable in ``target``."""
    good(path)
    good(target)
    with h5py.File(path, "r+") as f:
        del f[RAIN]
        f[RAIN] = h5py.ExternalLink(str(target), f"/{RAIN}")
    return path


def virtual_dataset(path: Path, source: Path) -> Path:
    """The rain variable is a virtual dataset mapped from ``source``."""
    good(path)
    good(source)
    layout = h5py.VirtualLayout(shape=(4, 8, 8), dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), RAIN, shape=(4, 8, 8))
    return _replace_rain(path, layout=layout)


def declared(path: Path, *, frames: int, ny: int, nx: int, write_zeros: bool = False) -> Path:
    """A file whose rain variable declares (frames, ny, nx) float32 values.

    Without ``write_zeros`` no chunk is written: a few kilobytes that read as a full grid of
    fill values. With it, zlib-compressed zeros: about a thousandth of the declared size.
    """
    with netCDF4.Dataset(path, "w", format="NETCDF4") as nc:
        nc.createDimension("time", frames)
        nc.createDimension("y", ny)
        nc.createDimension("x", nx)
        time = nc.createVariable("time", "i8", ("time",))
        time.units = "seconds since 2024-06-01 12:00:00"
        time[:] = np.arange(frames) * 300
        rain = nc.createVariable(RAIN, "f4", DIMS, zlib=True, complevel=9, chunksizes=(1, ny, nx), fill_value=0.0)
        rain.units = "mm h-1"
        rain.standard_name = "lwe_precipitation_rate"
        if write_zeros:
            zeros = np.zeros((ny, nx), dtype=np.float32)
            for t in range(frames):
                rain[t] = zeros
    return path


def fifo_storage(path: Path, fifo: Path) -> Path:
    """The rain variable's bytes are stored in a FIFO, which blocks whoever reads it."""
    import os

    os.mkfifo(fifo)
    return external_storage(path, fifo)


def copy(path: Path, to: Path) -> Path:
    shutil.copyfile(path, to)
    return to
