"""Hostile files: nothing outside the file is opened, nothing declared beyond the limits is read.

Every reader path is tried: the structure check alone, the CF-netCDF reader on a path and
on bytes (request bodies), the radar-file reader the CLI uses, and the CLI itself.
"""

from __future__ import annotations

import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
from hostile_files import declared, external_link, external_storage, fifo_storage, good, virtual_dataset
from typer.testing import CliRunner

from nowcast.cli import EXIT_USER_ERROR, app
from nowcast.errors import FileTooLargeError, InputError, UnreadableFileError, UnsafeFileError
from nowcast.io.importers import read_radar_files
from nowcast.io.netcdf import read_netcdf, read_netcdf_bytes
from nowcast.io.safety import ReadLimits, check_hdf5, is_hdf5

SECRET = b"TOP-SECRET-" * 200


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET)
    return path


def _hostile(kind: str, folder: Path, secret: Path) -> Path:
    target = folder / f"{kind}.nc"
    if kind == "external storage":
        return external_storage(target, secret)
    if kind == "external link":
        return external_link(target, folder / "other.nc")
    if kind == "virtual dataset":
        return virtual_dataset(target, folder / "source.nc")
    return fifo_storage(target, folder / "fifo")


HOSTILE = {
    "external storage": "keeps its data in an external file",
    "external link": "is an external link, which points outside the file",
    "virtual dataset": "is a virtual dataset assembled from other files",
    "fifo storage": "keeps its data in an external file",
}


def _readers() -> dict[str, Callable[[Path], object]]:
    return {
        "check_hdf5(path)": check_hdf5,
        "check_hdf5(bytes)": lambda path: check_hdf5(path.read_bytes(), name="body"),
        "read_netcdf": read_netcdf,
        "read_netcdf_bytes": lambda path: read_netcdf_bytes(path.read_bytes(), name="body"),
        "read_radar_files": lambda path: read_radar_files([path]),
    }


@pytest.mark.timeout(60)  # a FIFO that was opened would block here for ever
@pytest.mark.parametrize("reader", list(_readers()))
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_files_that_read_other_files_are_refused_before_any_data(
    kind: str, reader: str, tmp_path: Path, secret: Path
) -> None:
    path = _hostile(kind, tmp_path, secret)
    with pytest.raises(UnsafeFileError, match=HOSTILE[kind]) as refused:
        _readers()[reader](path)
    assert "only self-contained files are read" in str(refused.value)


def test_the_same_files_are_read_by_plain_hdf5(tmp_path: Path, secret: Path) -> None:
    """The builders make what they claim: without the check, HDF5 reads the other files' bytes."""
    with h5py.File(external_storage(tmp_path / "e.nc", secret), "r") as f:
        assert f["precipitation_rate"][...].tobytes() == SECRET[: 4 * 8 * 8 * 4]
    with h5py.File(external_link(tmp_path / "l.nc", tmp_path / "o.nc"), "r") as f:
        assert np.isfinite(f["precipitation_rate"][...]).any()
    with h5py.File(virtual_dataset(tmp_path / "v.nc", tmp_path / "s.nc"), "r") as f:
        assert np.isfinite(f["precipitation_rate"][...]).any()


def test_a_fifo_given_as_the_file_is_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.nc"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableFileError, match="not a regular file"):
        read_netcdf(fifo)
    with pytest.raises(UnreadableFileError, match="no such file"):
        read_radar_files([fifo])


def test_a_declared_grid_over_the_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    bomb = declared(tmp_path / "bomb.nc", frames=80, ny=2048, nx=2048)
    assert bomb.stat().st_size < 20_000  # 1.25 GiB of fill values in a few kilobytes
    limits = ReadLimits(max_variable_bytes=100 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(FileTooLargeError, match=r"declares 80x2048x2048 values of 4 bytes \(1.2 GiB\)"):
            read_netcdf_bytes(bomb.read_bytes(), limits=limits, name="body")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20


def test_compressed_zeros_are_refused_by_their_declared_size(tmp_path: Path) -> None:
    bomb = declared(tmp_path / "zeros.nc", frames=40, ny=1024, nx=1024, write_zeros=True)
    assert bomb.stat().st_size < 2 * 2**20  # 160 MiB of zeros
    with pytest.raises(FileTooLargeError, match="declares 40x1024x1024"):
        read_netcdf(bomb, limits=ReadLimits(max_variable_bytes=64 * 2**20))


def test_the_shape_check_runs_before_the_values_are_read(tmp_path: Path) -> None:
    bomb = declared(tmp_path / "bomb.nc", frames=24, ny=2048, nx=2048)
    seen: list[tuple[int, int, int]] = []

    def refuse(n_t: int, n_y: int, n_x: int) -> None:
        seen.append((n_t, n_y, n_x))
        raise FileTooLargeError("grid too large")

    tracemalloc.start()
    try:
        with pytest.raises(FileTooLargeError, match="grid too large"):
            read_netcdf(bomb, check_shape=refuse)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == [(24, 2048, 2048)]
    assert peak < 5 * 2**20


def test_filters_chunks_objects_and_attributes_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4, 4))
        dcpl.set_filter(32004, h5py.h5z.FLAG_OPTIONAL, (0,))  # LZ4: a plugin HDF5 would look for
        space = h5py.h5s.create_simple((4, 4))
        h5py.h5d.create(f.id, b"lz4", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)
    with pytest.raises(UnsafeFileError, match="HDF5 filter 32004"):
        check_hdf5(path)

    with h5py.File(path, "w") as f:
        f.create_dataset("big_chunks", shape=(64, 64), chunks=(64, 64), dtype="f8")
        for i in range(30):
            f.create_group(f"g{i}").attrs["n"] = i
    with pytest.raises(FileTooLargeError, match=r"chunks of 32\.0 KiB"):
        check_hdf5(path, limits=ReadLimits(max_chunk_bytes=16 * 2**10))
    with pytest.raises(FileTooLargeError, match="more than 10 objects"):
        check_hdf5(path, limits=ReadLimits(max_objects=10))
    with pytest.raises(FileTooLargeError, match="more than 20 attributes"):
        check_hdf5(path, limits=ReadLimits(max_attributes=20))
    check_hdf5(path)


def test_links_inside_the_file_and_a_user_block_are_fine(tmp_path: Path, secret: Path) -> None:
    path = good(tmp_path / "soft.nc")
    with h5py.File(path, "r+") as f:
        f["alias"] = h5py.SoftLink("/precipitation_rate")
    check_hdf5(path)
    assert read_netcdf(path, variable="precipitation_rate").sizes["time"] == 4

    # HDF5 also finds a file after a user block: the check must find it there too
    blocked = tmp_path / "userblock.h5"
    with h5py.File(blocked, "w", userblock_size=512) as f:
        f.create_dataset("stolen", shape=(16,), dtype="u1", external=[(str(secret), 0, 16)])
    assert blocked.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n"
    assert is_hdf5(blocked) and is_hdf5(blocked.read_bytes())
    with pytest.raises(UnsafeFileError, match="external file"):
        check_hdf5(blocked)


def test_classic_netcdf_declared_sizes_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "classic.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as nc:
        nc.createDimension("time", 3)
        nc.createDimension("y", 64)
        nc.createDimension("x", 64)
        time = nc.createVariable("time", "f8", ("time",))
        time.units = "seconds since 2024-06-01 12:00:00"
        time[:] = [0, 300, 600]
        rain = nc.createVariable("rain", "f4", ("time", "y", "x"))
        rain.units = "mm h-1"
        rain[:] = 1.0
    assert read_netcdf(path).shape == (3, 64, 64)
    with pytest.raises(FileTooLargeError, match="'rain' declares 3x64x64"):
        read_netcdf(path, limits=ReadLimits(max_variable_bytes=16 * 2**10))
    with pytest.raises(UnreadableFileError, match="could not be read"):
        read_netcdf_bytes(path.read_bytes()[:2000])


def test_the_cli_refuses_hostile_files(tmp_path: Path, secret: Path) -> None:
    for kind, words in HOSTILE.items():
        folder = tmp_path / kind.replace(" ", "-")
        folder.mkdir()
        hostile = _hostile(kind, folder, secret)
        out = folder / "forecast.nc"
        result = CliRunner().invoke(
            app, ["-q", "forecast", str(hostile), "--model", "persistence", "--steps", "2", "--output", str(out)]
        )
        assert result.exit_code == EXIT_USER_ERROR, (kind, result.output)
        assert words in result.output, (kind, result.output)
        assert not out.exists()


@pytest.mark.realdata
def test_every_real_hdf5_file_passes_the_check(real_data_root: Path) -> None:
    files = [p for p in sorted((real_data_root / "radar").rglob("*")) if p.is_file() and is_hdf5(p)]
    assert len(files) > 100
    for path in files:
        check_hdf5(path)


def _gnu_sparse_member(name: str, real_size: int) -> bytes:
    """A GNU sparse tar member: one stored byte that the header expands to ``real_size`` bytes of holes."""
    header = bytearray(512)
    header[0:len(name)] = name.encode()
    for offset, width, value in [(100, 8, 0o644), (108, 8, 0), (116, 8, 0), (124, 12, 512), (136, 12, 0)]:
        header[offset:offset + width] = f"{value:0{width - 1}o}\0".encode()
    header[156:157] = b"S"
    header[257:265] = b"ustar  \0"
    header[386:398] = f"{real_size - 1:011o}\0".encode()  # the one data byte sits at the very end
    header[398:410] = f"{1:011o}\0".encode()
    header[483:495] = f"{real_size:011o}\0".encode()
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header) + b"\x01" + bytes(511)


def test_a_tar_member_that_declares_more_than_the_archive_holds_is_refused() -> None:
    import tarfile

    from nowcast.io.bundle import read_radar_bundle

    sparse = _gnu_sparse_member("frame.h5", 8 * 2**30) + bytes(1024)
    with tarfile.open(fileobj=io.BytesIO(sparse)) as archive:
        assert archive.getmembers()[0].size == 8 * 2**30  # what the header claims, not what is there
    with pytest.raises(InputError, match="is not a plain file"):
        read_radar_bundle(sparse, max_files=4)
