"""A handful of radar files sent as one: an uncompressed tar archive of HDF5 radar files (ODIM_H5, KNMI).

A browser or an HTTP client sends the few frames a forecast starts from in one body; each file is
checked by :func:`nowcast.io.safety.check_hdf5` before it touches the disk, written under a name of
our own into a temporary folder, and read with :func:`nowcast.io.importers.read_radar_files` (times
from the files, the importer from their layout). Nothing of the archive but the files' bytes and
their suffixes is used: no names, links, modes or folders.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import xarray as xr

from nowcast.errors import InputError, UnreadableFileError
from nowcast.io.importers import read_radar_files
from nowcast.io.safety import DEFAULT_LIMITS, ReadLimits, check_hdf5

TAR_TYPE = "application/x-tar"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def read_radar_bundle(data: bytes, *, max_files: int, limits: ReadLimits = DEFAULT_LIMITS,
                      name: str = "bundle") -> xr.DataArray:
    """The radar files of the tar archive ``data`` as one sequence (at most ``max_files`` plain HDF5 files)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive, \
                tempfile.TemporaryDirectory(prefix="nowcast-bundle-") as folder:
            paths = [_written(archive, member, Path(folder) / f"frame{index:03d}", limits, name)
                     for index, member in enumerate(_checked_members(archive, data, max_files, name))]
            return read_radar_files(paths).load()
    except tarfile.TarError as exc:
        raise UnreadableFileError(f"{name}: not an uncompressed tar archive of radar files ({exc})") from exc


def _written(archive: tarfile.TarFile, member: tarfile.TarInfo, stem: Path, limits: ReadLimits, name: str) -> Path:
    """``member``'s bytes, checked, at ``stem`` with the member's suffix."""
    content = archive.extractfile(member).read()  # type: ignore[union-attr]  # plain files only
    check_hdf5(content, limits=limits, name=f"{name}: {member.name[:100]!r}")
    path = stem.with_suffix(Path(member.name).suffix.lower())
    path.write_bytes(content)
    return path


def _checked_members(archive: tarfile.TarFile, data: bytes, max_files: int, name: str) -> list[tarfile.TarInfo]:
    members = archive.getmembers()
    if not members:
        raise InputError(f"{name}: the archive holds no radar file")
    if len(members) > max_files:
        raise InputError(f"{name}: {len(members)} files is more than the limit of {max_files} frames; "
                         "send only the latest ones")
    for member in members:
        if not member.isfile() or member.issparse():
            raise InputError(f"{name}: {member.name[:100]!r} is not a plain file; send radar files only")
        if member.size > len(data):
            # a header may declare any size; a plain file's bytes lie in the archive itself
            raise InputError(f"{name}: {member.name[:100]!r} declares {member.size} bytes, more than the archive holds")
        if Path(member.name).suffix.lower() not in HDF5_SUFFIXES:
            raise InputError(f"{name}: {member.name[:100]!r} is not an HDF5 radar file "
                             f"({', '.join(HDF5_SUFFIXES)}); send CF-netCDF on its own")
    return members
