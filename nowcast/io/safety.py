"""Checks on a file's structure before any of its data is read.

A netCDF-4 file is an HDF5 file, and HDF5 lets a dataset keep its bytes elsewhere:
external raw storage (any file on the reader's disk, a FIFO included), external links
to datasets in other files, and virtual datasets assembled from other files. A file
can also declare far more data than it holds (unwritten chunks read as fill values,
compressed chunks inflate a thousandfold). Files come from users and from HTTP
requests, so every reader of the package calls :func:`check_hdf5` before HDF5 or
netCDF is asked for data: it walks the file's links and objects with h5py's low-level
API, which reads only metadata and follows no link, and refuses what would make the
reader open another file or allocate more than :class:`ReadLimits` allow.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from nowcast.errors import FileTooLargeError, UnreadableFileError, UnsafeFileError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# Filters whose decoding is built into HDF5 (deflate, shuffle, fletcher32, szip, nbit,
# scaleoffset) or is the netCDF-C default set (zstd, bzip2, blosc); anything else would
# make HDF5 look for a plugin.
SAFE_FILTERS = {
    1: "deflate",
    2: "shuffle",
    3: "fletcher32",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
    307: "bzip2",
    32001: "blosc",
    32015: "zstd",
}

_LINK_KINDS = {64: "an external link"}
_LAYOUTS = {0: "compact", 1: "contiguous", 2: "chunked", 3: "virtual"}


@dataclass(frozen=True)
class ReadLimits:
    """What a file may declare before the readers refuse it, checked before any data is read.

    ``max_variable_bytes``: uncompressed size of any one variable (dataset).
    ``max_chunk_bytes``: size of one chunk, which HDF5 inflates whole to read any part of it.
    ``max_objects``: links in the file (groups, datasets, attributes' owners).
    ``max_attributes``: attributes over all objects.
    """

    max_variable_bytes: int = 4 * 2**30
    max_chunk_bytes: int = 256 * 2**20
    max_objects: int = 10_000
    max_attributes: int = 100_000

    def check_declared(self, source: str, variable: str, shape: tuple[int, ...], itemsize: int) -> None:
        """Refuse a variable whose declared size is over ``max_variable_bytes``."""
        size = math.prod(shape) * itemsize
        if size > self.max_variable_bytes:
            dims = "x".join(str(n) for n in shape)
            raise FileTooLargeError(
                f"{source}: variable {variable!r} declares {dims} values of {itemsize} bytes "
                f"({_size(size)}), more than the limit of {_size(self.max_variable_bytes)}"
            )


DEFAULT_LIMITS = ReadLimits()


def is_hdf5(source: bytes | memoryview | str | os.PathLike[str]) -> bool:
    """Whether ``source`` (bytes or a path) is an HDF5 file: the signature where HDF5 looks for it.

    HDF5 finds the superblock at byte 0 or after a user block of 512, 1024, 2048... bytes.
    """
    if isinstance(source, bytes | memoryview):
        data = memoryview(source)
        return any(bytes(data[offset:offset + 8]) == HDF5_SIGNATURE for offset in _superblock_offsets(len(data)))
    path = Path(source)
    size = path.stat().st_size
    with path.open("rb") as handle:
        for offset in _superblock_offsets(size):
            handle.seek(offset)
            if handle.read(8) == HDF5_SIGNATURE:
                return True
    return False


def _superblock_offsets(size: int) -> list[int]:
    offsets, offset = [0], 512
    while offset + 8 <= size:
        offsets.append(offset)
        offset *= 2
    return offsets


def check_hdf5(
    source: bytes | memoryview | str | os.PathLike[str],
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    name: str | None = None,
) -> None:
    """Refuse an HDF5 file that reads other files or declares too much; read no data.

    ``source`` is the file's bytes or its path; ``name`` is how messages call it. Raises
    :class:`UnsafeFileError` for external storage, external or user-defined links, virtual
    datasets and filters outside :data:`SAFE_FILTERS`; :class:`FileTooLargeError` when a
    variable, a chunk or the number of objects is over ``limits``.
    """
    import h5py

    label = name or (str(source) if not isinstance(source, bytes | memoryview) else "file")
    try:
        if isinstance(source, bytes | memoryview):
            handle = h5py.File(io.BytesIO(source), "r")
        else:
            handle = h5py.File(source, "r", locking=False)
    except OSError as exc:
        raise UnreadableFileError(f"{label}: not a readable netCDF-4/HDF5 file ({exc})") from exc
    with handle:
        _check_links(handle.id, label, limits)
        _check_objects(handle.id, label, limits)


def _check_links(file_id: object, label: str, limits: ReadLimits) -> None:
    """Every link is hard or soft (inside the file); H5Lvisit follows none of them."""
    import h5py

    root = h5py.h5g.open(file_id, b"/")
    count = 0

    # h5py cannot pass an exception out of a visit callback: a non-None return stops the visit
    def visit(path: bytes, info: h5py.h5l.LinkInfo) -> UnsafeFileError | None:
        nonlocal count
        count += 1
        if count > limits.max_objects:
            return FileTooLargeError(f"{label}: more than {limits.max_objects} objects")
        if info.type not in (h5py.h5l.TYPE_HARD, h5py.h5l.TYPE_SOFT):
            kind = _LINK_KINDS.get(info.type, f"a user-defined link (type {info.type})")
            return UnsafeFileError(
                f"{label}: {_name(path)!r} is {kind}, which points outside the file; only self-contained "
                "files are read"
            )
        return None

    problem = root.links.visit(visit, info=True)
    if problem is not None:
        raise problem


def _check_objects(file_id: object, label: str, limits: ReadLimits) -> None:
    """Every dataset keeps its bytes in this file, with known filters and sizes within limits."""
    import h5py

    attributes = 0

    def visit(path: bytes, info: h5py.h5o.ObjInfo) -> UnsafeFileError | None:
        nonlocal attributes
        attributes += info.num_attrs
        if attributes > limits.max_attributes:
            return FileTooLargeError(f"{label}: more than {limits.max_attributes} attributes")
        if info.type != h5py.h5o.TYPE_DATASET:
            return None
        dataset = h5py.h5d.open(file_id, path)
        try:
            _check_dataset(dataset, _name(path), label, limits)
        except UnsafeFileError as exc:
            return exc
        finally:
            dataset.close()
        return None

    problem = h5py.h5o.visit(file_id, visit, info=True)
    if problem is not None:
        raise problem


def _check_dataset(dataset: object, variable: str, label: str, limits: ReadLimits) -> None:
    import h5py

    plist = dataset.get_create_plist()  # type: ignore[attr-defined]
    layout = plist.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        raise UnsafeFileError(
            f"{label}: variable {variable!r} is a virtual dataset assembled from other files; "
            "only self-contained files are read"
        )
    if plist.get_external_count() > 0:
        raise UnsafeFileError(
            f"{label}: variable {variable!r} keeps its data in an external file; only self-contained "
            "files are read"
        )
    if layout not in _LAYOUTS:
        raise UnsafeFileError(f"{label}: variable {variable!r} has an unknown storage layout ({layout})")
    for index in range(plist.get_nfilters()):
        code = plist.get_filter(index)[0]
        if code not in SAFE_FILTERS:
            raise UnsafeFileError(
                f"{label}: variable {variable!r} is compressed with HDF5 filter {code}, which this "
                f"reader does not decode (known: {', '.join(sorted(SAFE_FILTERS.values()))})"
            )
    space = dataset.get_space()  # type: ignore[attr-defined]
    shape = tuple(int(n) for n in space.get_simple_extent_dims())
    itemsize = int(dataset.get_type().get_size())  # type: ignore[attr-defined]
    limits.check_declared(label, variable, shape, itemsize)
    if layout == h5py.h5d.CHUNKED:
        chunk = tuple(int(n) for n in plist.get_chunk())
        chunk_bytes = math.prod(chunk) * itemsize
        if chunk_bytes > limits.max_chunk_bytes:
            raise FileTooLargeError(
                f"{label}: variable {variable!r} is stored in chunks of {_size(chunk_bytes)}, more than "
                f"the limit of {_size(limits.max_chunk_bytes)}"
            )


def _name(path: bytes | str) -> str:
    text = path.decode("utf-8", "replace") if isinstance(path, bytes) else path
    return text.lstrip("/") or "/"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
