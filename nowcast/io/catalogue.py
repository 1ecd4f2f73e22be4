"""Radar events: where their files are in an archive, and loading them as sequences.

An event is a time range of one radar network in a pysteps-data style archive,
described the way pysteps describes its data sources (``root_path``, ``path_fmt``,
``fn_pattern``, ``fn_ext``, ``importer``, ``timestep``, ``importer_kwargs``; see
``pysteps/pystepsrc``), so that :func:`pysteps.io.archive.find_by_date` finds its files.

The product ships a catalogue of the events of the pysteps example data
(``nowcast/events.toml``). Users with their own archives write a catalogue file in the
same format and pass its path as ``catalogue=`` or set ``NOWCAST_EVENT_CATALOGUE``;
relative ``root_path`` values are taken from the data root (``NOWCAST_DATA_ROOT``).

Loaded events are cached as compressed CF-netCDF under the cache folder
(``NOWCAST_CACHE_DIR``, default ``~/.cache/nowcast``), keyed by the event, the time
range and the names, sizes and modification times of its files, so a changed archive
is read again; training and evaluation load each event many times.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.config import ConfigError, read_mapping
from nowcast.errors import InputError, UnknownNameError, UnreadableFileError
from nowcast.io.importers import quiet_pysteps_io, read_radar_files
from nowcast.io.locks import NETCDF_LOCK
from nowcast.paths import DATA_ROOT_ENV, data_root
from nowcast.sequence import VARIABLE_NAME, make_sequence

logger = logging.getLogger(__name__)

CATALOGUE_ENV = "NOWCAST_EVENT_CATALOGUE"
CACHE_DIR_ENV = "NOWCAST_CACHE_DIR"
#: Bump when the way events are read changes, so that old cache files are not used.
CACHE_FORMAT = 1

_SOURCE_KEYS = ("root_path", "path_fmt", "fn_pattern", "fn_ext", "importer", "timestep", "importer_kwargs")
_EVENT_KEYS = ("source", "start", "end", "description", *_SOURCE_KEYS)


class MissingFramesError(UnreadableFileError):
    """Files of an event's time range that are not in the archive."""

    def __init__(self, message: str, *, missing: list[tuple[pd.Timestamp, Path]] | None = None) -> None:
        super().__init__(message)
        self.missing = missing or []


@dataclass(frozen=True)
class Event:
    """One radar event: a time range of one network's files in an archive.

    ``start`` and ``end`` are the valid times (UTC) of the first and last frame;
    ``timestep`` is in minutes; ``root_path`` is relative to the data root unless
    absolute.
    """

    id: str
    start: pd.Timestamp
    end: pd.Timestamp
    importer: str
    root_path: str
    path_fmt: str
    fn_pattern: str
    fn_ext: str
    timestep: float
    importer_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)
    description: str = ""

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.timestep)

    @property
    def times(self) -> pd.DatetimeIndex:
        """The valid times of all the event's frames."""
        return pd.date_range(self.start, self.end, freq=self.step)

    @property
    def n_frames(self) -> int:
        return len(self.times)

    def root(self, root: str | os.PathLike[str] | None = None) -> Path:
        """The folder that ``path_fmt`` is relative to, for the archive at ``root``."""
        path = Path(self.root_path)
        return path if path.is_absolute() else archive_root(root) / path


@dataclass(frozen=True)
class Source:
    """One radar network's files, as a catalogue's ``[sources.NAME]`` table describes them: what a live
    feed of that network delivers (``timestep`` in minutes)."""

    name: str
    importer: str
    fn_pattern: str
    fn_ext: str
    timestep: float
    root_path: str = ""
    path_fmt: str = ""
    importer_kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def step(self) -> pd.Timedelta:
        return pd.Timedelta(minutes=self.timestep)


def archive_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The radar archive's root folder; a clear error where it does not exist."""
    path = data_root(root)
    if not path.is_dir():
        raise UnreadableFileError(
            f"radar archive not found at {path}: set {DATA_ROOT_ENV} to the root of a "
            "pysteps-data style archive (the folder that holds radar/)"
        )
    return path


def cache_dir() -> Path:
    """Where loaded events are cached: ``NOWCAST_CACHE_DIR``, else ``~/.cache/nowcast``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nowcast"


# --- the catalogue file ------------------------------------------------------------------------


def load_catalogue(path: str | os.PathLike[str] | None = None) -> dict[str, Event]:
    """The events of a catalogue file (TOML or JSON), by id.

    Without ``path``: the file named by ``NOWCAST_EVENT_CATALOGUE``, else the catalogue
    shipped with the product (the pysteps example events).
    """
    data, where = _catalogue_content(path)
    return parse_catalogue(data, where=where)


def load_sources(path: str | os.PathLike[str] | None = None) -> dict[str, Source]:
    """The radar sources of a catalogue file (its ``[sources.NAME]`` tables), by name; the file is
    found as in :func:`load_catalogue` and may hold sources only."""
    data, where = _catalogue_content(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("sources", {}), Mapping):
        raise ConfigError(f"{where}: expected a table with a 'sources' table")
    sources = data.get("sources", {})
    _check_sources(sources, where)
    return {name: _parse_source(name, entry, f"{where}: sources.{name}") for name, entry in sources.items()}


def get_source(name: str, catalogue: str | os.PathLike[str] | None = None) -> Source:
    """The source ``name`` of the catalogue file ``catalogue`` (default as in :func:`load_catalogue`)."""
    sources = load_sources(catalogue)
    try:
        return sources[name]
    except KeyError:
        raise UnknownNameError(f"unknown radar source {name!r}; the catalogue's sources are: "
                               f"{', '.join(sorted(sources)) or 'none'}") from None


def _catalogue_content(path: str | os.PathLike[str] | None) -> tuple[Any, str]:
    if path is None and os.environ.get(CATALOGUE_ENV):
        path = os.environ[CATALOGUE_ENV]
    if path is None:
        text = resources.files("nowcast").joinpath("events.toml").read_text()
        return tomllib.loads(text), "nowcast/events.toml"
    return read_mapping(path, what="the event catalogue"), str(path)


def _parse_source(name: str, entry: Mapping[str, Any], where: str) -> Source:
    missing = [k for k in ("fn_pattern", "fn_ext", "importer", "timestep") if k not in entry]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    for key in ("root_path", "path_fmt", "fn_pattern", "fn_ext", "importer"):
        if not isinstance(entry.get(key, ""), str):
            raise ConfigError(f"{where}.{key}: expected a string, got {entry[key]!r}")
    timestep = entry["timestep"]
    if isinstance(timestep, bool) or not isinstance(timestep, int | float) or not timestep > 0:
        raise ConfigError(f"{where}.timestep: expected positive minutes, got {timestep!r}")
    kwargs = entry.get("importer_kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{where}.importer_kwargs must be a table")
    return Source(name=str(name), importer=entry["importer"], root_path=entry.get("root_path", ""),
                  path_fmt=entry.get("path_fmt", ""), fn_pattern=entry["fn_pattern"], fn_ext=entry["fn_ext"],
                  timestep=float(timestep), importer_kwargs=dict(kwargs))


def parse_catalogue(data: Mapping[str, Any], *, where: str = "catalogue") -> dict[str, Event]:
    """Events from a catalogue's content: ``sources`` and ``events`` tables."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table with 'sources' and 'events'")
    unknown = sorted(set(data) - {"sources", "events"})
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {unknown}; expected 'sources' and 'events'")
    sources = data.get("sources", {})
    events = data.get("events", {})
    if not isinstance(sources, Mapping) or not isinstance(events, Mapping):
        raise ConfigError(f"{where}: 'sources' and 'events' must be tables")
    if not events:
        raise ConfigError(f"{where}: no events")
    _check_sources(sources, where)
    return {event_id: _parse_event(event_id, entry, sources, f"{where}: events.{event_id}")
            for event_id, entry in events.items()}


def _check_sources(sources: Mapping[str, Any], where: str) -> None:
    for name, source in sources.items():
        if not isinstance(source, Mapping):
            raise ConfigError(f"{where}: sources.{name} must be a table")
        bad = sorted(set(source) - set(_SOURCE_KEYS))
        if bad:
            raise ConfigError(
                f"{where}: sources.{name}: unknown key(s) {bad}; valid keys are {list(_SOURCE_KEYS)}"
            )


def _parse_event(event_id: str, entry: Any, sources: Mapping[str, Any], where: str) -> Event:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a table")
    bad = sorted(set(entry) - set(_EVENT_KEYS))
    if bad:
        raise ConfigError(f"{where}: unknown key(s) {bad}; valid keys are {list(_EVENT_KEYS)}")
    merged: dict[str, Any] = {}
    if "source" in entry:
        if entry["source"] not in sources:
            raise ConfigError(f"{where}: unknown source {entry['source']!r}; sources are {sorted(sources)}")
        merged.update(sources[entry["source"]])
    merged.update({k: v for k, v in entry.items() if k != "source"})
    missing = [k for k in ("start", "end", *_SOURCE_KEYS) if k not in merged and k != "importer_kwargs"]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    start, end = _time(merged["start"], f"{where}.start"), _time(merged["end"], f"{where}.end")
    try:
        timestep = float(merged["timestep"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}.timestep: expected minutes, got {merged['timestep']!r}") from exc
    if timestep <= 0:
        raise ConfigError(f"{where}.timestep must be positive, got {timestep}")
    if end < start:
        raise ConfigError(f"{where}: end {end} is before start {start}")
    if (end - start) % pd.Timedelta(minutes=timestep) != pd.Timedelta(0):
        raise ConfigError(
            f"{where}: end - start ({end - start}) is not a whole number of {timestep:g}-min steps"
        )
    kwargs = merged.get("importer_kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{where}.importer_kwargs must be a table")
    for key in ("root_path", "path_fmt", "fn_pattern", "fn_ext", "importer"):
        if not isinstance(merged[key], str):
            raise ConfigError(f"{where}.{key}: expected a string, got {merged[key]!r}")
    return Event(
        id=str(event_id), start=start, end=end, importer=merged["importer"], root_path=merged["root_path"],
        path_fmt=merged["path_fmt"], fn_pattern=merged["fn_pattern"], fn_ext=merged["fn_ext"],
        timestep=timestep, importer_kwargs=dict(kwargs), description=str(merged.get("description", "")),
    )


def _time(value: Any, where: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: not a date-time: {value!r}") from exc
    if pd.isna(stamp):
        raise ConfigError(f"{where}: not a date-time: {value!r}")
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


def get_event(event_id: str, catalogue: Mapping[str, Event] | str | os.PathLike[str] | None = None) -> Event:
    """The event ``event_id`` of ``catalogue`` (a loaded catalogue or a file's path)."""
    events = catalogue if isinstance(catalogue, Mapping) else load_catalogue(catalogue)
    try:
        return events[event_id]
    except KeyError:
        known = ", ".join(sorted(events))
        raise UnknownNameError(f"unknown event {event_id!r}; known events: {known}") from None


# --- files and loading ---------------------------------------------------------------------------


def find_event_files(
    event: Event,
    root: str | os.PathLike[str] | None = None,
    *,
    start: Any | None = None,
    end: Any | None = None,
    allow_missing: bool = False,
) -> list[tuple[pd.Timestamp, Path]]:
    """The event's files from ``start`` to ``end`` (default: the whole event), in time order.

    Found with :func:`pysteps.io.archive.find_by_date`. A file missing from the range is
    a :class:`MissingFramesError` naming it, unless ``allow_missing`` (then it is left
    out of the list).
    """
    times = _time_range(event, start, end)
    event_root = event.root(root)
    find_by_date = quiet_pysteps_io().archive.find_by_date
    try:
        paths, stamps = find_by_date(
            times[-1].to_pydatetime(), str(event_root), event.path_fmt, event.fn_pattern, event.fn_ext,
            event.timestep, num_prev_files=len(times) - 1, silent=True,
        )
    except OSError as exc:  # find_by_date raises IOError when it finds no file at all
        raise MissingFramesError(
            f"event {event.id}: none of its {len(times)} files found under {event_root} "
            f"(path_fmt {event.path_fmt!r}, fn_pattern {event.fn_pattern!r}.{event.fn_ext})"
        ) from exc
    found = [(pd.Timestamp(t), Path(p)) for t, p in zip(stamps, paths, strict=True) if p is not None]
    missing = [(pd.Timestamp(t), _expected_path(event, event_root, t))
               for t, p in zip(stamps, paths, strict=True) if p is None]
    if missing and not allow_missing:
        shown = ", ".join(f"{t:%Y-%m-%d %H:%M} ({p})" for t, p in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise MissingFramesError(
            f"event {event.id}: {len(missing)} of {len(times)} files missing: {shown}{more}",
            missing=missing,
        )
    return found


def _expected_path(event: Event, event_root: Path, when: Any) -> Path:
    return event_root / when.strftime(event.path_fmt) / f"{when.strftime(event.fn_pattern)}.{event.fn_ext}"


def load_event(
    event: Event | str,
    root: str | os.PathLike[str] | None = None,
    start: Any | None = None,
    end: Any | None = None,
    *,
    catalogue: Mapping[str, Event] | str | os.PathLike[str] | None = None,
    on_missing: Literal["error", "nan"] = "error",
    cache: bool = True,
) -> xr.DataArray:
    """The event's frames from ``start`` to ``end`` as a sequence in mm/h.

    The sequence always has the event's regular time step: a missing file is a
    :class:`MissingFramesError` (``on_missing="error"``) or an all-NaN frame
    (``on_missing="nan"``, for callers that skip windows with gaps). With ``cache``,
    the sequence is read from (or written to) the cache folder, see :func:`cache_dir`.
    """
    if on_missing not in ("error", "nan"):
        raise InputError(f"on_missing must be 'error' or 'nan', got {on_missing!r}")
    if isinstance(event, str):
        event = get_event(event, catalogue)
    times = _time_range(event, start, end)
    files = find_event_files(event, root, start=times[0], end=times[-1], allow_missing=on_missing == "nan")
    if not files:
        raise MissingFramesError(f"event {event.id}: no files between {times[0]} and {times[-1]}")
    key = _cache_key(event, times, files)
    span = f"{times[0]:%Y%m%d%H%M}-{times[-1]:%Y%m%d%H%M}"
    cache_path = cache_dir() / "events" / f"{event.id}-{span}-{key[:16]}.nc"
    if cache:
        cached = _read_cache(cache_path, key)
        if cached is not None:
            return cached
    complete = len(files) == len(times)
    sequence = _read_files(event, files) if complete else _with_gaps(event, times, files)
    sequence.attrs["event_id"] = event.id
    if cache:
        _write_cache(sequence, cache_path, key)
    return sequence


def _time_range(event: Event, start: Any | None, end: Any | None) -> pd.DatetimeIndex:
    first = event.start if start is None else _time(start, "start")
    last = event.end if end is None else _time(end, "end")
    for name, stamp in (("start", first), ("end", last)):
        if not event.start <= stamp <= event.end:
            raise InputError(f"{name} {stamp} is outside event {event.id} ({event.start} to {event.end})")
        if (stamp - event.start) % event.step != pd.Timedelta(0):
            raise InputError(f"{name} {stamp} is not on event {event.id}'s {event.timestep:g}-min time grid")
    if last < first:
        raise InputError(f"end {last} is before start {first}")
    return pd.date_range(first, last, freq=event.step)


def _with_gaps(event: Event, times: pd.DatetimeIndex, files: list[tuple[pd.Timestamp, Path]]) -> xr.DataArray:
    """The frames found, with all-NaN frames where files are missing."""
    found = _read_files(event, files, regular=False)
    full = np.full((len(times), found.sizes["y"], found.sizes["x"]), np.nan, dtype=np.float32)
    index = times.get_indexer(pd.DatetimeIndex(found["time"].values))
    full[index] = found.values
    logger.warning("event %s: %d of %d frames missing, left as NaN",
                   event.id, len(times) - len(files), len(times))
    attrs = {k: v for k, v in found.attrs.items() if k not in ("units", "long_name")}
    return make_sequence(
        full, times, x=found["x"].values, y=found["y"].values, projection=str(attrs.pop("projection", "")),
        xpixelsize=float(attrs.pop("xpixelsize")), ypixelsize=float(attrs.pop("ypixelsize")), attrs=attrs,
    )


def _read_files(event: Event, files: list[tuple[pd.Timestamp, Path]], *,
                regular: bool = True) -> xr.DataArray:
    return read_radar_files([p for _, p in files], event.importer, timestamps=[t for t, _ in files],
                            regular=regular, **dict(event.importer_kwargs))


def _cache_key(event: Event, times: pd.DatetimeIndex, files: list[tuple[pd.Timestamp, Path]]) -> str:
    described = {
        "format": CACHE_FORMAT,
        "event": {k: (str(v) if isinstance(v, pd.Timestamp) else v)
                  for k, v in dataclasses.asdict(event).items() if k != "description"},
        "times": [times[0].isoformat(), times[-1].isoformat()],
        "files": [(t.isoformat(), str(p.resolve()), *_size_and_mtime(p)) for t, p in files],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def _size_and_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _read_cache(path: Path, key: str) -> xr.DataArray | None:
    """The cached sequence, or None where there is none for ``key``.

    Read with netCDF4 rather than through the CF reader: the file is our own, in mm/h,
    and skipping the generic checks and copies halves the time of a load.
    """
    if not path.is_file():
        return None
    import netCDF4

    try:
        with NETCDF_LOCK, netCDF4.Dataset(path) as ds:
            if ds.getncattr("nowcast_cache_key") != key:
                return None
            rate = ds.variables[VARIABLE_NAME]
            rate.set_auto_mask(False)  # NaN is the fill value: keep it as NaN
            values = rate[:]
            epoch = pd.Timestamp(ds.variables["time"].units.removeprefix("seconds since").strip())
            times = epoch + pd.to_timedelta(np.asarray(ds.variables["time"][:], dtype=np.int64), unit="s")
            x = np.asarray(ds.variables["x"][:], dtype=np.float64)
            y = np.asarray(ds.variables["y"][:], dtype=np.float64)
            attrs = json.loads(ds.getncattr("nowcast_attrs"))
        sequence = make_sequence(
            values, times, x=x, y=y, projection=str(attrs.pop("projection", "")),
            xpixelsize=float(attrs.pop("xpixelsize")), ypixelsize=float(attrs.pop("ypixelsize")), attrs=attrs,
        )
    except Exception as exc:  # a damaged cache file is read again from the archive
        logger.warning("ignoring unreadable cache file %s (%s)", path, exc)
        path.unlink(missing_ok=True)
        return None
    logger.debug("read %s from cache %s", sequence.attrs.get("event_id"), path)
    return sequence


def _write_cache(sequence: xr.DataArray, path: Path, key: str) -> None:
    from nowcast.io.netcdf import write_netcdf

    attrs = {k: v for k, v in sequence.attrs.items() if k not in ("units", "long_name")}
    try:
        write_netcdf(sequence, path, attrs={"nowcast_cache_key": key, "nowcast_attrs": json.dumps(attrs)})
    except OSError as exc:  # an unwritable cache costs time, not correctness
        logger.warning("could not write cache file %s (%s)", path, exc)
        return
    stem = path.name.rsplit("-", 1)[0]
    for stale in path.parent.glob(f"{stem}-*.nc"):
        if stale != path:
            stale.unlink(missing_ok=True)
