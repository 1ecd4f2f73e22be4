"""Reading radar files (pysteps importers) and the event catalogue.

Tests marked ``realdata`` read the pysteps example events under NOWCAST_DATA_ROOT; the
others use small files written here (ODIM HDF5, CF-netCDF, a copied archive tree).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyproj
import pytest
import xarray as xr

from nowcast.config import ConfigError
from nowcast.errors import InputError, SequenceError, UnitsError, UnknownNameError, UnreadableFileError
from nowcast.io import catalogue as catalogue_module
from nowcast.io.catalogue import (
    CACHE_DIR_ENV,
    CATALOGUE_ENV,
    Event,
    MissingFramesError,
    find_event_files,
    get_event,
    load_catalogue,
    load_event,
    parse_catalogue,
)
from nowcast.io.importers import (
    guess_importer,
    quiet_pysteps_io,
    rain_rate_from_metadata,
    read_radar_file,
    read_radar_files,
)
from nowcast.io.netcdf import write_netcdf
from nowcast.paths import DATA_ROOT_ENV
from nowcast.sequence import time_step, validate_sequence

# The event table of /work/shared/data/README.md: frames and time step (minutes).
EVENT_TABLE = {
    "knmi-20100826": (92, 5),
    "mch-20150515": (40, 5),
    "mch-20160711": (40, 5),
    "mch-20170131": (40, 5),
    "fmi-20160928": (40, 5),
    "fmi-20170509": (40, 5),
    "bom-20180616": (61, 6),
    "bom-20201031": (144, 10),
}
# Share of the grid outside radar range (NaN) in each network's files.
NO_DATA_SHARE = {"knmi": (0.70, 0.80), "mch": (0.25, 0.35), "fmi": (0.20, 0.30), "bom": (0.0, 0.001)}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test caches into its own folder, never the user's."""
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(CATALOGUE_ENV, raising=False)


def middle_files(event_id: str, root: Path, count: int = 3) -> list[tuple[pd.Timestamp, Path]]:
    files = find_event_files(get_event(event_id), root)
    middle = len(files) // 2
    return files[middle : middle + count]


# --- the shipped catalogue -------------------------------------------------------------------------


def test_shipped_catalogue_holds_the_readme_events():
    events = load_catalogue()
    assert sorted(events) == sorted(EVENT_TABLE)
    for event_id, (frames, step) in EVENT_TABLE.items():
        event = events[event_id]
        assert event.n_frames == frames, event_id
        assert event.timestep == step, event_id
        assert event.importer in ("knmi_hdf5", "mch_gif", "fmi_pgm", "bom_rf3")


def test_unknown_event_lists_the_known_ones():
    with pytest.raises(UnknownNameError) as info:
        get_event("knmi-19990101")
    message = str(info.value)
    assert "knmi-19990101" in message
    assert "bom-20201031" in message and "mch-20150515" in message


@pytest.mark.realdata
@pytest.mark.parametrize("event_id", sorted(EVENT_TABLE))
def test_catalogue_finds_every_frame_of_every_event(event_id, real_data_root):
    event = get_event(event_id)
    files = find_event_files(event, real_data_root)
    frames, step = EVENT_TABLE[event_id]
    assert len(files) == frames
    times = pd.DatetimeIndex([t for t, _ in files])
    assert times[0] == event.start and times[-1] == event.end
    assert (np.diff(times.values) == np.timedelta64(step, "m")).all()
    assert all(path.is_file() for _, path in files)
    # start and end were taken from the files present: no file outside the range
    assert len({path.parent for _, path in files}) == 1


# --- each real format, to mm/h ------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("event_id", sorted(EVENT_TABLE))
def test_real_formats_read_to_rain_rates(event_id, real_data_root):
    files = middle_files(event_id, real_data_root)
    sequence = read_radar_files([p for _, p in files])  # importer guessed, times from the files
    validate_sequence(sequence, min_frames=3)
    assert sequence.attrs["units"] == "mm/h"
    assert list(pd.DatetimeIndex(sequence["time"].values)) == [t for t, _ in files]
    assert time_step(sequence) == pd.Timedelta(minutes=EVENT_TABLE[event_id][1])
    values = sequence.values
    finite = np.isfinite(values)
    low, high = NO_DATA_SHARE[event_id.split("-")[0]]
    assert low <= 1 - finite.mean() <= high
    assert np.nanmin(values) == 0.0
    assert 1.0 < np.nanmax(values) < 300.0
    wet = (values[finite] >= 0.1).mean()
    assert 0.005 < wet < 0.8
    # georeferencing: a projection PROJ understands, cell centres one pixel apart
    crs = pyproj.CRS.from_proj4(sequence.attrs["projection"])
    assert crs.is_projected
    dx = np.diff(sequence["x"].values)
    dy = np.diff(sequence["y"].values)
    assert np.allclose(dx, sequence.attrs["xpixelsize"], rtol=1e-6)
    assert np.allclose(-dy, sequence.attrs["ypixelsize"], rtol=1e-6)  # upper origin: north first
    assert sequence.attrs["yorigin"] == "upper"
    assert sequence.attrs["x1"] < sequence["x"].values[0] < sequence.attrs["x2"]
    assert 200.0 <= sequence.attrs["xpixelsize"] <= 1100.0  # metres, for every network


@pytest.mark.realdata
@pytest.mark.parametrize(
    "event_id", ["knmi-20100826", "mch-20150515", "fmi-20160928", "bom-20180616", "bom-20201031"]
)
def test_rates_agree_with_pysteps_conversion(event_id, real_data_root):
    """Same numbers as pysteps' own importer followed by its to_rainrate."""
    from pysteps.utils.conversion import to_rainrate

    event = get_event(event_id)
    (_, path), *_ = middle_files(event_id, real_data_root, 1)
    ours = read_radar_file(path, event.importer, **event.importer_kwargs).values[0]
    importer = quiet_pysteps_io().get_method(event.importer, "importer")
    field, _, metadata = importer(str(path), **event.importer_kwargs)
    field = np.ma.filled(field, np.nan)
    theirs, _ = to_rainrate(field, metadata)
    # negative amounts are producer flags (no data); negative dBZ is weak echo
    flagged = np.isnan(field) | ((field < 0) & (metadata["unit"] != "dBZ"))
    assert (np.isnan(ours) == flagged).all()
    echo = ~flagged & (field > metadata["zerovalue"])
    np.testing.assert_allclose(ours[echo], theirs[echo], rtol=1e-5)
    # pysteps leaves "no echo" (-32 dBZ) as a tiny rate; it is dry here
    assert (ours[~flagged & ~echo] == 0).all()
    assert echo.sum() > 100


@pytest.mark.realdata
def test_knmi_accumulations_and_grid_in_metres(real_data_root):
    (_, path), *_ = middle_files("knmi-20100826", real_data_root, 1)
    sequence = read_radar_file(path)
    with h5py.File(path) as f:
        raw = f["image1/image_data"][...]
        corners = f["geographic"].attrs["geo_product_corners"].reshape(4, 2)  # lon, lat pairs
    expected = np.where(raw == 65535, np.nan, raw / 100.0 * 12.0)  # 0.01 mm per 5 min -> mm/h
    np.testing.assert_allclose(sequence.values[0], expected, rtol=1e-6)
    # km grid and km earth radius turned into metres: the corners land where KNMI says
    to_lonlat = pyproj.Transformer.from_crs(
        pyproj.CRS.from_proj4(sequence.attrs["projection"]), "EPSG:4326", always_xy=True
    )
    attrs = sequence.attrs
    lower_left = to_lonlat.transform(attrs["x1"], attrs["y1"])
    upper_right = to_lonlat.transform(attrs["x2"], attrs["y2"])
    np.testing.assert_allclose(lower_left, corners[0], atol=1e-3)
    np.testing.assert_allclose(upper_right, corners[2], atol=1e-3)
    assert attrs["xpixelsize"] == 1000.0


@pytest.mark.realdata
def test_fmi_reflectivity_uses_the_files_z_r_relation(real_data_root):
    import gzip

    (_, path), *_ = middle_files("fmi-20160928", real_data_root, 1)
    rate = read_radar_file(path).values[0]
    with gzip.open(path) as pgm:
        pixels = pgm.read()[-rate.size :]
    raw = np.frombuffer(pixels, dtype=np.uint8).reshape(rate.shape)
    dbz = raw * 0.5 - 32.0
    echo = (raw > 0) & (raw < 255)
    expected = (10 ** (dbz[echo] / 10) / 223.0) ** (1 / 1.53)  # FMI's Z = 223 R^1.53 (pysteps metadata)
    np.testing.assert_allclose(rate[echo], expected, rtol=1e-5)
    assert (rate[raw == 0] == 0).all()
    assert np.isnan(rate[raw == 255]).all()


@pytest.mark.realdata
def test_bom_fill_values_become_nan_and_the_grid_has_no_range_mask(real_data_root):
    root = real_data_root / "radar/bom/prcp-c10/66/2020/10/31"
    flagged = read_radar_file(root / "66_20201031_004000.prcp-c10.nc")  # 2 fill values, 1 flag of -0.1 mm
    assert np.isnan(flagged.values).sum() == 3
    assert flagged.attrs["institution"].startswith("Commonwealth of Australia")
    # Rainfields products are mosaics: rain is observed beyond the 128 km circle, up to the corners
    event = read_radar_files(sorted((real_data_root / "radar/bom/prcp-cscn/2/2018/06/16").glob("*.nc"))[::4])
    xx, yy = np.meshgrid(event["x"].values, event["y"].values)
    beyond = np.hypot(xx, yy) > 130_000
    assert (event.values[:, beyond] > 0).any(axis=0).mean() > 0.2
    masked = read_radar_file(root / "66_20201031_120000.prcp-c10.nc", range_mask_m=128_000)
    xx, yy = np.meshgrid(masked["x"].values, masked["y"].values)
    assert np.isnan(masked.values[0][np.hypot(xx, yy) > 128_000]).all()
    assert np.isfinite(masked.values[0][np.hypot(xx, yy) < 127_000]).all()


@pytest.mark.realdata
@pytest.mark.parametrize("event_id", ["bom-20180616", "bom-20201031"])
def test_fast_rainfields_reader_matches_pysteps(event_id, real_data_root):
    from nowcast.io.importers import _import_rainfields

    (_, path), *_ = middle_files(event_id, real_data_root, 1)
    ours, _, our_meta = _import_rainfields(str(path))
    theirs, _, their_meta = quiet_pysteps_io().get_method("bom_rf3", "importer")(str(path))
    np.testing.assert_array_equal(ours, np.ma.filled(theirs, np.nan))
    for key in ("x1", "x2", "y1", "y2", "xpixelsize", "ypixelsize", "accutime"):
        assert our_meta[key] == pytest.approx(float(their_meta[key])), key
    assert (our_meta["unit"], our_meta["yorigin"]) == (their_meta["unit"], their_meta["yorigin"])
    # the same projection (pysteps rounds the origin to 0.001 degrees)
    ours_t = pyproj.Transformer.from_crs(our_meta["projection"], "EPSG:4326", always_xy=True)
    theirs_t = pyproj.Transformer.from_crs(their_meta["projection"], "EPSG:4326", always_xy=True)
    np.testing.assert_allclose(
        ours_t.transform(100_000, 50_000), theirs_t.transform(100_000, 50_000), atol=2e-3
    )


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("event_id", "importer"),
    [
        ("knmi-20100826", "knmi_hdf5"),
        ("mch-20150515", "mch_gif"),
        ("fmi-20170509", "fmi_pgm"),
        ("bom-20201031", "bom_rf3"),
    ],
)
def test_importer_is_guessed_from_the_file(event_id, importer, real_data_root):
    (when, path), *_ = middle_files(event_id, real_data_root, 1)
    assert guess_importer(path) == importer
    sequence = read_radar_file(path)
    assert sequence.attrs["importer"] == importer
    assert pd.Timestamp(sequence["time"].values[0]) == when


# --- unreadable files ---------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize("event_id", ["knmi-20100826", "mch-20150515", "fmi-20160928", "bom-20180616"])
def test_truncated_files_are_unreadable(event_id, real_data_root, tmp_path):
    (_, path), *_ = middle_files(event_id, real_data_root, 1)
    truncated = tmp_path / path.name
    data = path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match=truncated.name):
        read_radar_file(truncated)
    with pytest.raises(UnreadableFileError, match=truncated.name):
        read_radar_file(truncated, get_event(event_id).importer)


@pytest.mark.parametrize("name", ["frame.h5", "AQC151351545F_00005.801.gif", "frame.pgm.gz", "frame.nc"])
def test_files_that_are_not_radar_files_are_unreadable(name, tmp_path):
    bogus = tmp_path / name
    bogus.write_text("this is not a radar file\n")
    with pytest.raises(UnreadableFileError, match=name.replace(".", r"\.")):
        read_radar_file(bogus)
    empty = tmp_path / "empty" / name
    empty.parent.mkdir()
    empty.write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="empty/"):
        read_radar_file(empty)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(UnreadableFileError, match="no such file"):
        read_radar_file(tmp_path / "absent.h5")
    odd = tmp_path / "radar.xyz"
    odd.write_bytes(b"\x00" * 16)
    with pytest.raises(UnreadableFileError, match="cannot tell the radar format"):
        read_radar_file(odd)
    with pytest.raises(UnknownNameError, match="unknown radar importer 'nosuch'"):
        read_radar_file(odd, "nosuch")
    with pytest.raises(InputError, match="no radar files"):
        read_radar_files([])


# --- ODIM HDF5 (written here) --------------------------------------------------------------------------

ODIM_PROJ = "+proj=laea +lat_0=52 +lon_0=10 +x_0=0 +y_0=0 +ellps=WGS84 +units=m"


def write_odim(
    path: Path,
    raw: np.ndarray,
    *,
    quantity: str = "RATE",
    gain: float = 0.1,
    offset: float = 0.0,
    nodata: float = 65535,
    undetect: float = 0,
    when: str = "20240601120500",
    accumulation_minutes: int | None = None,
    scale: float = 2000.0,
) -> Path:
    """A minimal ODIM_H5 composite: one dataset of ``quantity``, centred on the projection origin."""
    ny, nx = raw.shape
    half_x, half_y = nx * scale / 2, ny * scale / 2
    to_lonlat = pyproj.Transformer.from_crs(pyproj.CRS.from_proj4(ODIM_PROJ), "EPSG:4326", always_xy=True)
    corners = {
        name: to_lonlat.transform(x, y)
        for name, x, y in (
            ("LL", -half_x, -half_y),
            ("UR", half_x, half_y),
            ("UL", -half_x, half_y),
            ("LR", half_x, -half_y),
        )
    }
    with h5py.File(path, "w") as f:
        f.attrs["Conventions"] = np.bytes_("ODIM_H5/V2_2")
        what = f.create_group("what")
        what.attrs.update(
            {"object": np.bytes_("COMP"), "date": np.bytes_(when[:8]), "time": np.bytes_(when[8:])}
        )
        where = f.create_group("where")
        where.attrs.update(
            {"projdef": np.bytes_(ODIM_PROJ), "xsize": nx, "ysize": ny, "xscale": scale, "yscale": scale}
        )
        for name, (lon, lat) in corners.items():
            where.attrs[f"{name}_lon"] = lon
            where.attrs[f"{name}_lat"] = lat
        dataset = f.create_group("dataset1")
        dataset_what = dataset.create_group("what")
        dataset_what.attrs["product"] = np.bytes_("COMP")
        if accumulation_minutes is not None:
            end = pd.Timestamp(when)
            start = end - pd.Timedelta(minutes=accumulation_minutes)
            dataset_what.attrs.update(
                {
                    "startdate": np.bytes_(f"{start:%Y%m%d}"),
                    "starttime": np.bytes_(f"{start:%H%M%S}"),
                    "enddate": np.bytes_(f"{end:%Y%m%d}"),
                    "endtime": np.bytes_(f"{end:%H%M%S}"),
                }
            )
        data = dataset.create_group("data1")
        data.create_dataset("data", data=raw)
        data_what = data.create_group("what")
        data_what.attrs.update(
            {
                "quantity": np.bytes_(quantity),
                "gain": gain,
                "offset": offset,
                "nodata": nodata,
                "undetect": undetect,
            }
        )
    return path


def odim_raw() -> np.ndarray:
    raw = np.array([[0, 10, 20, 65535], [5, 0, 300, 65535], [1, 2, 3, 4]], dtype=np.uint16)
    return raw


def test_odim_rate_composite(tmp_path):
    path = write_odim(tmp_path / "composite.h5", odim_raw())
    assert guess_importer(path) == "odim_hdf5"
    sequence = read_radar_file(path)
    expected = np.where(odim_raw() == 65535, np.nan, odim_raw() * 0.1)
    np.testing.assert_allclose(sequence.values[0], expected, rtol=1e-6)
    assert pd.Timestamp(sequence["time"].values[0]) == pd.Timestamp("2024-06-01 12:05")
    np.testing.assert_allclose(sequence["x"].values, [-3000, -1000, 1000, 3000], atol=0.5)
    np.testing.assert_allclose(sequence["y"].values, [2000, 0, -2000], atol=0.5)
    assert sequence.attrs["projection"] == ODIM_PROJ


def test_odim_accumulation_uses_the_files_period(tmp_path):
    path = write_odim(tmp_path / "acrr.h5", odim_raw(), quantity="ACRR", gain=0.01, accumulation_minutes=15)
    rate = read_radar_file(path).values[0]
    expected = np.where(odim_raw() == 65535, np.nan, odim_raw() * 0.01 * 4.0)  # 15-min mm -> mm/h
    np.testing.assert_allclose(rate, expected, rtol=1e-6)
    no_period = write_odim(tmp_path / "acrr-no-period.h5", odim_raw(), quantity="ACRR", gain=0.01)
    with pytest.raises(UnitsError, match="accutime"):
        read_radar_file(no_period)
    given = read_radar_file(no_period, accutime=5.0).values[0]
    np.testing.assert_allclose(
        given, np.where(odim_raw() == 65535, np.nan, odim_raw() * 0.01 * 12.0), rtol=1e-6
    )


def test_odim_reflectivity_is_converted_with_marshall_palmer(tmp_path):
    raw = np.array([[0, 110, 150], [200, 255, 0]], dtype=np.uint8)
    path = write_odim(
        tmp_path / "dbzh.h5", raw, quantity="DBZH", gain=0.5, offset=-32.0, nodata=255, undetect=0
    )
    rate = read_radar_file(path).values[0]
    dbz = raw * 0.5 - 32.0
    expected = (10 ** (dbz / 10) / 200.0) ** (1 / 1.6)
    assert rate[0, 0] == 0.0 and rate[1, 2] == 0.0  # undetect: dry
    assert np.isnan(rate[1, 1])
    np.testing.assert_allclose(rate[[0, 0, 1], [1, 2, 0]], expected[[0, 0, 1], [1, 2, 0]], rtol=1e-5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("radar_20240601_1205.h5", "2024-06-01 12:05"),
        ("T_PAAH21_C_EUOC_20240601120530.h5", "2024-06-01 12:05:30"),
        ("202406011205_composite.h5", "2024-06-01 12:05"),
    ],
)
def test_valid_time_from_the_name_when_the_file_has_none(tmp_path, name, expected):
    path = write_odim(tmp_path / name, odim_raw())
    with h5py.File(path, "r+") as f:
        del f["what"].attrs["date"]
    assert pd.Timestamp(read_radar_file(path)["time"].values[0]) == pd.Timestamp(expected)
    anonymous = write_odim(tmp_path / "composite.h5", odim_raw())
    with h5py.File(anonymous, "r+") as f:
        del f["what"].attrs["time"]
    with pytest.raises(InputError, match="cannot tell the file's valid time"):
        read_radar_file(anonymous)
    assert pd.Timestamp(read_radar_file(anonymous, timestamp="2024-01-01")["time"].values[0]).year == 2024


def test_odim_without_a_precipitation_quantity(tmp_path):
    path = write_odim(tmp_path / "wind.h5", odim_raw(), quantity="VRADH")
    with pytest.raises(UnitsError, match="no RATE, ACRR or DBZH"):
        read_radar_file(path)


def test_hdf5_in_an_unknown_layout(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("field", data=np.zeros((3, 3)))
    with pytest.raises(UnreadableFileError, match="neither the KNMI nor the ODIM layout"):
        read_radar_file(path)


# --- several files into one sequence ------------------------------------------------------------------


def odim_series(folder: Path, minutes: list[int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    start = pd.Timestamp("2024-06-01 12:00")
    return [
        write_odim(
            folder / f"c{i}.h5", odim_raw() + i, when=f"{start + pd.Timedelta(minutes=m):%Y%m%d%H%M%S}"
        )
        for i, m in enumerate(minutes)
    ]


def test_files_are_stacked_in_time_order(tmp_path):
    paths = odim_series(tmp_path, [0, 5, 10])
    sequence = read_radar_files(list(reversed(paths)))
    assert time_step(sequence) == pd.Timedelta(minutes=5)
    np.testing.assert_allclose(sequence.values[:, 0, 1], [1.0, 1.1, 1.2], rtol=1e-6)
    given = read_radar_files(
        paths, timestamps=["2024-01-01T00:00Z", "2024-01-01T00:10Z", "2024-01-01T00:20Z"]
    )
    assert time_step(given) == pd.Timedelta(minutes=10)
    assert pd.Timestamp(given["time"].values[0]) == pd.Timestamp("2024-01-01")


def test_irregular_duplicate_and_mismatched_frames_are_refused(tmp_path):
    with pytest.raises(SequenceError, match="irregular time steps"):
        read_radar_files(odim_series(tmp_path / "irregular", [0, 5, 15]))
    paths = odim_series(tmp_path, [0, 5])
    with pytest.raises(SequenceError, match="more than one frame"):
        read_radar_files(paths, timestamps=["2024-01-01 00:00", "2024-01-01 00:00"])
    with pytest.raises(InputError, match="2 timestamps given for 1 files"):
        read_radar_files(paths[:1], timestamps=["2024-01-01", "2024-01-02"])
    other = write_odim(tmp_path / "big.h5", np.zeros((4, 4), dtype=np.uint16), when="20240601121000")
    with pytest.raises(SequenceError, match="grid of 4x4 differs"):
        read_radar_files([*paths, other])


def test_cf_netcdf_goes_to_the_netcdf_reader(tmp_path, small_sequence):
    path = write_netcdf(small_sequence, tmp_path / "sequence.nc")
    assert guess_importer(path) == "netcdf"
    again = read_radar_file(path)
    np.testing.assert_array_equal(again.values, small_sequence.values)
    both = read_radar_files([path])
    assert both.sizes["time"] == small_sequence.sizes["time"]


# --- converting pysteps fields -------------------------------------------------------------------------


def test_rain_rate_from_metadata_units():
    field = np.array([[0.0, 0.5, np.nan, 2.0]])
    np.testing.assert_allclose(
        rain_rate_from_metadata(field, {"unit": "mm", "accutime": 5}), [[0, 6, np.nan, 24]]
    )
    np.testing.assert_allclose(
        rain_rate_from_metadata(field, {"unit": "mm", "accutime": 10}), [[0, 3, np.nan, 12]]
    )
    np.testing.assert_allclose(
        rain_rate_from_metadata(field, {"unit": "mm/h", "transform": None}), [[0, 0.5, np.nan, 2]]
    )
    dbr = np.array([[-15.0, 0.0, 10.0]])
    np.testing.assert_allclose(
        rain_rate_from_metadata(dbr, {"unit": "mm/h", "transform": "dB", "zerovalue": -15.0}),
        [[0.0, 1.0, 10.0]],
    )
    dbz = np.array([[-32.0, 10 * np.log10(200.0), 40.0]])
    np.testing.assert_allclose(
        rain_rate_from_metadata(dbz, {"unit": "dBZ", "transform": "dB", "zerovalue": -32.0}),
        [[0.0, 1.0, (1e4 / 200) ** (1 / 1.6)]],
        rtol=1e-6,
    )
    masked = np.ma.masked_array([1.0, 2.0], mask=[False, True])
    np.testing.assert_allclose(rain_rate_from_metadata(masked, {"unit": "mm/h"}), [1.0, np.nan])
    # negative amounts are producer flags, not rain
    np.testing.assert_allclose(
        rain_rate_from_metadata(np.array([-0.1, 1.0]), {"unit": "mm", "accutime": 6}), [np.nan, 10.0]
    )


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"unit": "furlongs"}, "unknown units 'furlongs'"),
        ({"unit": "mm"}, "accumulation period"),
        ({}, "no unit"),
        ({"unit": "mm/h", "transform": "BoxCox"}, "cannot undo the 'BoxCox' transform"),
    ],
)
def test_rain_rate_from_metadata_refuses(metadata, message):
    with pytest.raises(UnitsError, match=message):
        rain_rate_from_metadata(np.ones((2, 2)), metadata, source="frame.x")


# --- catalogue files and loading events -----------------------------------------------------------------


def tiny_archive(tmp_path: Path, real_data_root: Path, frames: int = 4) -> tuple[Path, Path]:
    """The first ``frames`` MeteoSwiss files of 2015-05-15 in a new archive, and a catalogue for it."""
    source = real_data_root / "radar/mch/20150515"
    target = tmp_path / "archive/radar/mch/20150515"
    target.mkdir(parents=True)
    for path in sorted(source.glob("*.gif"))[:frames]:
        shutil.copy(path, target / path.name)
    catalogue = tmp_path / "events.toml"
    catalogue.write_text(f"""
[sources.swiss]
root_path = "radar/mch"
path_fmt = "%Y%m%d"
fn_pattern = "AQC%y%j%H%M?_00005.801"
fn_ext = "gif"
importer = "mch_gif"
timestep = 5

[events.mine]
source = "swiss"
start = 2015-05-15T15:45:00
end = 2015-05-15T{15 + (45 + 5 * (frames - 1)) // 60:02d}:{(45 + 5 * (frames - 1)) % 60:02d}:00
description = "a copy of four frames"
""")
    return tmp_path / "archive", catalogue


@pytest.mark.realdata
def test_user_catalogue_and_archive(tmp_path, real_data_root, monkeypatch):
    root, catalogue = tiny_archive(tmp_path, real_data_root)
    sequence = load_event("mine", root, catalogue=catalogue)
    assert sequence.shape == (4, 640, 710)
    assert sequence.attrs["event_id"] == "mine"
    assert time_step(sequence) == pd.Timedelta(minutes=5)
    part = load_event("mine", root, start="2015-05-15 15:50", end="2015-05-15 15:55", catalogue=catalogue)
    np.testing.assert_array_equal(part.values, sequence.values[1:3])
    monkeypatch.setenv(CATALOGUE_ENV, str(catalogue))
    monkeypatch.setenv(DATA_ROOT_ENV, str(root))
    assert sorted(load_catalogue()) == ["mine"]
    assert load_event("mine").shape == sequence.shape
    with pytest.raises(InputError, match="outside event mine"):
        load_event("mine", start="2015-05-15 15:40")
    with pytest.raises(InputError, match="not on event mine's 5-min time grid"):
        load_event("mine", end="2015-05-15 15:52")


@pytest.mark.realdata
def test_missing_files_are_an_error_or_nan_frames(tmp_path, real_data_root):
    root, catalogue = tiny_archive(tmp_path, real_data_root)
    gone = sorted((root / "radar/mch/20150515").glob("*.gif"))[1]
    gone.unlink()
    with pytest.raises(MissingFramesError, match=r"1 of 4 files missing: 2015-05-15 15:50") as info:
        load_event("mine", root, catalogue=catalogue)
    assert len(info.value.missing) == 1
    event = get_event("mine", catalogue)
    assert len(find_event_files(event, root, allow_missing=True)) == 3
    sequence = load_event(event, root, on_missing="nan")
    assert time_step(sequence) == pd.Timedelta(minutes=5)
    assert np.isnan(sequence.values[1]).all()
    assert np.isfinite(sequence.values[[0, 2, 3]]).any(axis=(1, 2)).all()
    with pytest.raises(InputError, match="on_missing"):
        load_event(event, root, on_missing="zero")
    (tmp_path / "empty-archive").mkdir()
    with pytest.raises(MissingFramesError, match="none of its 4 files"):
        load_event(event, tmp_path / "empty-archive")


@pytest.mark.realdata
def test_loaded_events_are_cached_and_refreshed(tmp_path, real_data_root, monkeypatch):
    root, catalogue = tiny_archive(tmp_path, real_data_root, frames=3)
    event = get_event("mine", catalogue)
    first = load_event(event, root)
    cached = list((tmp_path / "cache/events").glob("mine-*.nc"))
    assert len(cached) == 1

    def no_reading(*args, **kwargs):
        raise AssertionError("read the archive instead of the cache")

    monkeypatch.setattr(catalogue_module, "read_radar_files", no_reading)
    again = load_event(event, root)
    xr.testing.assert_identical(again, first)
    # a changed file is read again (and the stale cache file replaced)
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    changed = sorted((root / "radar/mch/20150515").glob("*.gif"))[0]
    changed.touch()
    stamp = changed.stat().st_mtime_ns
    import os

    os.utime(changed, ns=(stamp + 10**9, stamp + 10**9))
    refreshed = load_event(event, root)
    xr.testing.assert_identical(refreshed, first)
    assert len(list((tmp_path / "cache/events").glob("mine-*.nc"))) == 1
    assert list((tmp_path / "cache/events").glob("mine-*.nc")) != cached
    # a damaged cache file is ignored and rewritten
    damaged = next((tmp_path / "cache/events").glob("mine-*.nc"))
    damaged.write_bytes(b"garbage")
    xr.testing.assert_identical(load_event(event, root), first)
    assert damaged.stat().st_size > 1000
    uncached = load_event(event, root, cache=False)
    xr.testing.assert_identical(uncached, first)


def test_missing_archive_names_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "no-archive"))
    with pytest.raises(UnreadableFileError, match=DATA_ROOT_ENV):
        load_event("knmi-20100826")
    with pytest.raises(UnreadableFileError, match="no-archive"):
        find_event_files(get_event("mch-20150515"))


BASE_SOURCE = {
    "root_path": "radar/x",
    "path_fmt": "%Y",
    "fn_pattern": "f%H%M",
    "fn_ext": "h5",
    "importer": "odim_hdf5",
    "timestep": 5,
}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            {"source": "x", "start": "2020-01-01 00:00", "end": "2020-01-01 01:00", "colour": "red"},
            r"unknown key\(s\) \['colour'\]",
        ),
        ({"source": "y", "start": "2020-01-01 00:00", "end": "2020-01-01 01:00"}, "unknown source 'y'"),
        ({"source": "x", "start": "2020-01-01 01:00", "end": "2020-01-01 00:00"}, "before start"),
        (
            {"source": "x", "start": "2020-01-01 00:00", "end": "2020-01-01 00:07"},
            "whole number of 5-min steps",
        ),
        ({"source": "x", "start": "yesterday", "end": "2020-01-01 00:00"}, "not a date-time"),
        ({"source": "x", "end": "2020-01-01 00:00"}, r"missing key\(s\) \['start'\]"),
        (
            {"source": "x", "start": "2020-01-01 00:00", "end": "2020-01-01 00:00", "timestep": -5},
            "must be positive",
        ),
    ],
)
def test_bad_catalogue_entries_are_named(event, message):
    with pytest.raises(ConfigError, match=message):
        parse_catalogue({"sources": {"x": BASE_SOURCE}, "events": {"e1": event}}, where="my.toml")


def test_catalogue_files_toml_and_json(tmp_path):
    toml_file = tmp_path / "cat.toml"
    toml_file.write_text(
        "[events.solo]\nstart = 2020-01-01T00:00:00Z\nend = 2020-01-01T00:10:00Z\n"
        'root_path = "/data/radar"\npath_fmt = ""\nfn_pattern = "r%H%M"\nfn_ext = "h5"\n'
        'importer = "odim_hdf5"\ntimestep = 5\n'
    )
    event = load_catalogue(toml_file)["solo"]
    assert isinstance(event, Event)
    assert event.n_frames == 3 and event.start == pd.Timestamp("2020-01-01")  # UTC, naive
    assert event.root(tmp_path) == Path("/data/radar")  # absolute root_path wins over the data root
    json_file = tmp_path / "cat.json"
    json_file.write_text(
        '{"sources": {"x": {"root_path": "r", "path_fmt": "", "fn_pattern": "a", "fn_ext": "b",'
        ' "importer": "odim_hdf5", "timestep": 10}}, "events": {"e": {"source": "x", '
        '"start": "2020-01-01 00:00", "end": "2020-01-01 01:00"}}}'
    )
    assert load_catalogue(json_file)["e"].n_frames == 7
    bad = tmp_path / "bad.toml"
    bad.write_text("[events\n")
    with pytest.raises(ConfigError, match="not a valid TOML"):
        load_catalogue(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalogue(tmp_path / "absent.toml")


@pytest.mark.slow
@pytest.mark.realdata
def test_whole_day_of_bom_frames_loads_fast(real_data_root):
    started = time.perf_counter()
    sequence = load_event("bom-20201031", real_data_root)
    uncached = time.perf_counter() - started
    assert sequence.shape == (144, 512, 512)
    assert time_step(sequence) == pd.Timedelta(minutes=10)
    started = time.perf_counter()
    cached = load_event("bom-20201031", real_data_root)
    from_cache = time.perf_counter() - started
    xr.testing.assert_identical(cached, sequence)
    # pysteps' own Rainfields reader took over a minute for this day; the budget is 20 s
    assert uncached < 40.0, f"uncached load took {uncached:.1f}s"
    assert from_cache < uncached


def test_events_built_in_code_are_loadable_from_a_synthetic_archive(tmp_path):
    """An ODIM archive of the user's own, catalogued in code, with no real data."""
    folder = tmp_path / "odim/2024"
    folder.mkdir(parents=True)
    start = pd.Timestamp("2024-06-01 12:00")
    for i in range(3):
        when = start + pd.Timedelta(minutes=5 * i)
        write_odim(folder / f"comp_{when:%Y%m%d%H%M}.h5", odim_raw() + i, when=f"{when:%Y%m%d%H%M%S}")
    event = parse_catalogue(
        {
            "events": {
                "odim-test": {
                    "root_path": str(tmp_path / "odim"),
                    "path_fmt": "%Y",
                    "fn_pattern": "comp_%Y%m%d%H%M",
                    "fn_ext": "h5",
                    "importer": "odim_hdf5",
                    "timestep": 5,
                    "start": "2024-06-01 12:00",
                    "end": "2024-06-01 12:10",
                }
            }
        }
    )["odim-test"]
    sequence = load_event(event)
    assert sequence.shape == (3, 3, 4)
    np.testing.assert_allclose(sequence.values[:, 2, 0], [0.1, 0.2, 0.3], rtol=1e-6)
    assert sequence.attrs["event_id"] == "odim-test"
