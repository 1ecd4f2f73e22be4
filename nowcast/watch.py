"""``nowcast watch``: forecast a live radar feed as its files land, into a product folder.

A folder (or a tree laid out like a catalogue source's ``path_fmt``) receives the files of
one radar source (:class:`nowcast.io.catalogue.Source`); their valid times come from their
names (the source's ``fn_pattern``). The watcher polls it, reads each complete new file with
the importers (which refuse hostile files), keeps the recent frames by valid time, and makes
a forecast as soon as a new frame completes the model's input window. Each product is written
with :func:`nowcast.feed.write_product` and then listed in the folder's manifest
(:func:`nowcast.feed.write_manifest`), so a reader never sees a partial one; products older than
the retention period (counted back from the newest product, so that a replayed archive keeps
its products) are dropped.

What real feeds do, and what the watcher does about it:

* a file still being written: read only once its modification time is ``settle_s`` old;
* an unreadable file: logged, counted, skipped; read again only if it changes;
* a second file for a valid time already read: a duplicate, skipped;
* a frame older than the newest forecast (out of order): kept for later windows, not forecast;
* a missing frame: the forecast waits up to ``missing_wait_s`` (or until a newer frame comes),
  then, with at most ``max_missing_frames`` missing, falls back to extrapolation from the
  consecutive frames there are, saying so in the product; with more, it is skipped with the
  reason logged; frames on another grid (the grid changed) count as missing;
* the model fails or passes its deadline: the product comes from extrapolation, marked as
  such (``fallback``/``fallback_reason`` in the file and the manifest, a metric). The model runs
  in a worker process of its own (:class:`ModelProcess`), so a hung model is killed and loaded
  afresh rather than blocking the feed.

State lives in the folders: at start the manifest gives the reference times already done (the
newest one decided, product or skip, is kept beside the list), files a killed writer left are
removed, and the input folder is read again; no reference time is forecast twice.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import multiprocessing
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.config import ConfigError, from_dict, read_mapping
from nowcast.errors import InputError
from nowcast.feed import (
    ProductEntry,
    orphan_files,
    product_file_name,
    product_path,
    read_manifest,
    read_manifest_extras,
    write_manifest,
    write_product,
)
from nowcast.files import replaced_atomically
from nowcast.forecasters import FALLBACK_MODEL, default_model
from nowcast.io.catalogue import Event, Source, find_event_files, get_source
from nowcast.products import (
    DEFAULT_ACCUMULATION_THRESHOLDS_MM,
    DEFAULT_THRESHOLDS_MMH,
    ProductRequest,
    ensemble_products,
)

logger = logging.getLogger(__name__)

#: the manifest key (beside the product list) holding the newest reference time decided
LAST_DECIDED_KEY = "last_reference_time"
LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchConfig:
    """One watcher: where files arrive, what they are, what to forecast, where products go.

    ``source`` names a ``[sources.NAME]`` table of the event catalogue (``catalogue``, default:
    ``NOWCAST_EVENT_CATALOGUE`` or the packaged one). ``model``, ``model_version``, ``models_dir``
    and ``device`` default to the service's ``NOWCAST_*`` settings. ``members``: draw an ensemble
    and write its probability-matched mean and exceedance probabilities at ``thresholds`` (mm/h),
    neighbourhood-processed with a window growing ``neighbourhood`` km per minute of lead (0: none;
    left out: the model's fitted one, if it has one), the probabilities of the rate above them at some
    lead (``max_probabilities``) and of the rain over the forecast period above ``accumulation_thresholds``
    (mm, ``accumulation_probabilities``);
    ``write_members``: the members themselves too (a product ``members`` times larger).
    Times in seconds, except ``retention_hours``.
    """

    input_dir: str
    output_dir: str
    source: str
    catalogue: str | None = None
    model: str | None = None
    model_version: str | None = None
    models_dir: str | None = None
    device: str | None = None
    steps: int = 12
    members: int | None = None
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS_MMH
    #: the rain over the forecast period (mm) of the accumulation probabilities, increasing
    accumulation_thresholds: tuple[float, ...] = DEFAULT_ACCUMULATION_THRESHOLDS_MM
    #: the probabilities' square neighbourhood, km per minute of lead (0: none; None: the model's; see
    #: ProductRequest)
    neighbourhood: float | None = None
    write_members: bool = False
    retention_hours: float = 24.0
    poll_interval_s: float = 2.0
    settle_s: float = 2.0
    model_deadline_s: float = 120.0
    model_start_timeout_s: float = 600.0
    max_missing_frames: int = 1
    missing_wait_s: float = 30.0

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, "steps must be at least 1"),
            (self.members is None or self.members >= 2, "members must be at least 2 (or left out)"),
            (self.members is not None or not self.write_members, "write_members needs members"),
            (self.members is not None or self.neighbourhood is None, "neighbourhood needs members"),
            (self.retention_hours > 0, "retention_hours must be positive"),
            (self.poll_interval_s > 0, "poll_interval_s must be positive"),
            (self.settle_s >= 0, "settle_s must not be negative"),
            (self.model_deadline_s > 0, "model_deadline_s must be positive"),
            (self.model_start_timeout_s > 0, "model_start_timeout_s must be positive"),
            (self.max_missing_frames >= 0, "max_missing_frames must not be negative"),
            (self.missing_wait_s >= 0, "missing_wait_s must not be negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        # refuses bad thresholds, accumulation thresholds and neighbourhoods, naming the setting
        ProductRequest(("pm_mean", "probabilities", "accumulation_probabilities"), self.thresholds,
                       neighbourhood=self.neighbourhood, accumulation_thresholds=self.accumulation_thresholds)

    @property
    def retention(self) -> pd.Timedelta:
        return pd.Timedelta(hours=self.retention_hours)

    @property
    def request(self) -> ProductRequest | None:
        """The products made from an ensemble; None for a deterministic model."""
        if self.members is None:
            return None
        products = ("pm_mean", "probabilities", "max_probabilities", "accumulation_probabilities") + (
            ("members",) if self.write_members else ())
        return ProductRequest(products, self.thresholds, neighbourhood=self.neighbourhood,
                              accumulation_thresholds=self.accumulation_thresholds)


def load_watch_config(path: str | os.PathLike[str], **overrides: Any) -> WatchConfig:
    """The config in ``path`` (TOML or JSON; unknown keys refused), paths in it taken from its folder,
    ``overrides`` that are not None applied, then the ``NOWCAST_*`` model settings where it names none."""
    path = Path(path)
    data = read_mapping(path, what="the watch config")
    if isinstance(data, dict):
        data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    config = from_dict(WatchConfig, data, where=str(path))
    relative = {name: str(path.parent / value) for name in ("input_dir", "output_dir", "catalogue", "models_dir")
                if (value := getattr(config, name)) is not None and overrides.get(name) is None
                and not Path(value).is_absolute()}
    return with_environment(dataclasses.replace(config, **relative))


def with_environment(config: WatchConfig) -> WatchConfig:
    """``config`` with the model settings it leaves out taken from ``NOWCAST_MODEL``, ``NOWCAST_MODEL_VERSION``,
    ``NOWCAST_MODELS_DIR`` and ``NOWCAST_DEVICE``; without a model anywhere, the service's default."""
    from nowcast.paths import models_dir

    env = {key: os.environ.get(f"NOWCAST_{key.upper()}") or None
           for key in ("model", "model_version", "models_dir", "device")}
    filled = {key: value for key, value in env.items() if getattr(config, key) is None and value is not None}
    config = dataclasses.replace(config, **filled)
    if config.device == "auto":
        config = dataclasses.replace(config, device=None)
    if config.model is None:
        config = dataclasses.replace(config, model=default_model(models_dir(config.models_dir)))
    return config


# --- file names ------------------------------------------------------------------------------------


_DIRECTIVES = {"Y": r"\d{4}", "y": r"\d{2}", "m": r"\d{2}", "d": r"\d{2}", "j": r"\d{3}", "H": r"\d{2}",
               "M": r"\d{2}", "S": r"\d{2}"}


@dataclass(frozen=True)
class FileNames:
    """Valid times from the names of a source's files: ``fn_pattern`` (strftime directives, ``?`` and
    ``*`` as in :mod:`fnmatch`, the way pysteps' archive reads it) followed by ``.fn_ext``."""

    regex: re.Pattern[str]
    directives: tuple[str, ...]

    @classmethod
    def of(cls, source: Source) -> FileNames:
        parts, directives = [], []
        text = source.fn_pattern
        i = 0
        while i < len(text):
            char = text[i]
            if char == "%" and i + 1 < len(text):
                directive = text[i + 1]
                if directive not in _DIRECTIVES:
                    raise ConfigError(f"source {source.name}: fn_pattern {text!r} uses %{directive}; the watcher "
                                      f"reads times from %{', %'.join(_DIRECTIVES)}")
                parts.append(f"(?P<d{len(directives)}>{_DIRECTIVES[directive]})")
                directives.append(directive)
                i += 2
                continue
            parts.append("." if char == "?" else ".*?" if char == "*" else re.escape(char))
            i += 1
        if not {"Y", "y"} & set(directives) or not {"H", "M"} <= set(directives):
            raise ConfigError(f"source {source.name}: fn_pattern {text!r} does not hold a full date and time")
        regex = re.compile("".join(parts) + re.escape(f".{source.fn_ext}") + r"\Z")
        return cls(regex, tuple(directives))

    def valid_time(self, name: str) -> pd.Timestamp | None:
        """The valid time in file name ``name``; None for a name that is not the source's."""
        match = self.regex.match(name)
        if match is None:
            return None
        values = [match[f"d{k}"] for k in range(len(self.directives))]
        fmt = "".join(f"%{d}" for d in self.directives)
        try:
            return pd.Timestamp(datetime.strptime("".join(values), fmt))
        except ValueError:
            return None


# --- metrics -----------------------------------------------------------------------------------------


class WatchMetrics:
    """The watcher's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.frames = Counter("nowcast_watch_frames_ingested", "Radar frames read from the input folder",
                              registry=self.registry)
        self.skipped_files = Counter("nowcast_watch_skipped_files", "Input files not used, by reason",
                                     ["reason"], registry=self.registry)
        self.forecasts = Counter("nowcast_watch_forecasts_written", "Products written, by the method that made "
                                 "them (model or fallback)", ["kind"], registry=self.registry)
        self.fallbacks = Counter("nowcast_watch_fallbacks", "Products made by the fallback, by reason",
                                 ["reason"], registry=self.registry)
        self.skipped_forecasts = Counter("nowcast_watch_skipped_forecasts", "Reference times not forecast, "
                                         "by reason", ["reason"], registry=self.registry)
        self.latency = Histogram("nowcast_watch_latency_seconds", "From a file's arrival to its product in "
                                 "the manifest", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model_seconds = Histogram("nowcast_watch_model_seconds", "Time of one forecast by the model",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self.last_reference = Gauge("nowcast_watch_last_reference_timestamp_seconds", "Reference time of the "
                                    "newest product (Unix time)", registry=self.registry)
        self.products = Gauge("nowcast_watch_products", "Products listed in the manifest", registry=self.registry)


# --- the model in a process of its own ---------------------------------------------------------


class ModelUnavailableError(RuntimeError):
    """The model gave no forecast: ``reason`` is ``model_error``, ``deadline`` or ``model_unavailable``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _serve_model(factory: Callable[[], Any], conn: Any) -> None:
    """The worker process: load the model, warm it up, then forecast each request until the pipe closes."""
    from nowcast.io.importers import quiet_pysteps_io

    try:
        quiet_pysteps_io()  # pysteps' start-up message is not for the log
        forecaster = factory()
        forecaster.warmup()
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", {"name": forecaster.name, "n_input_frames": int(forecaster.n_input_frames),
                         "supports_members": bool(forecaster.supports_members)}))
    while True:
        try:
            past, steps, members, seed = conn.recv()
        except (EOFError, OSError):  # the watcher is gone
            return
        try:
            answer = ("ok", forecaster.forecast(past, steps, members=members, seed=seed))
        except Exception as exc:
            answer = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(answer)
        except (BrokenPipeError, OSError):
            return


class ModelProcess:
    """A forecaster in a worker process (spawned, so no thread or device state is inherited): a forecast past
    its deadline is stopped by killing the worker, and a new one loads the model in the background."""

    def __init__(self, factory: Callable[[], Any], *, start_timeout_s: float) -> None:
        self.factory = factory
        self.start_timeout_s = start_timeout_s
        self.info: dict[str, Any] | None = None
        self._process: Any = None
        self._conn: Any = None
        self._started = 0.0

    def start(self, *, wait: bool = True) -> dict[str, Any] | None:
        """Start a worker; with ``wait``, until its model is loaded (a model that cannot load is an InputError)."""
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_model, args=(self.factory, child), daemon=True,
                                        name="nowcast-watch-model")
        self._process.start()
        child.close()  # so that the worker's death reads as the end of the pipe
        self._started = time.monotonic()
        self.info = None
        if wait:
            try:
                self._wait_ready(self.start_timeout_s)
            except ModelUnavailableError as exc:
                self.close()
                raise InputError(f"the model could not be loaded: {exc}") from None
        return self.info

    def forecast(self, past: xr.DataArray, steps: int, *, members: int | None, seed: int | None,
                 deadline_s: float) -> xr.DataArray:
        """The model's forecast; ModelUnavailableError when it fails, is not loaded or passes ``deadline_s``."""
        start = time.monotonic()
        if self._process is None:
            self.start(wait=False)
        if self.info is None:
            self._wait_ready(deadline_s)
        try:
            self._conn.send((past, steps, members, seed))
        except (BrokenPipeError, OSError) as exc:
            self._restart()
            raise ModelUnavailableError("model_unavailable", f"the model's worker is gone ({exc})") from None
        status, payload = self._receive(max(deadline_s - (time.monotonic() - start), 0.0), what="forecast")
        if status != "ok":
            raise ModelUnavailableError("model_error", str(payload))
        return payload

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.kill()
            self._process.join(timeout=10)
        self._process = self._conn = None

    def _wait_ready(self, timeout_s: float) -> None:
        loading_for = time.monotonic() - self._started
        status, payload = self._receive(timeout_s, what="model load",
                                        kill=loading_for + timeout_s >= self.start_timeout_s)
        if status != "ready":
            self._restart(wait=False)
            raise ModelUnavailableError("model_unavailable", f"the model failed to load: {payload}")
        self.info = payload

    def _receive(self, timeout_s: float, *, what: str, kill: bool = True) -> tuple[str, Any]:
        """The worker's next message; past ``timeout_s`` the worker is killed and restarted (when ``kill``)."""
        try:
            if self._conn.poll(timeout_s):
                return self._conn.recv()
        except (EOFError, OSError):
            self._restart()
            raise ModelUnavailableError("model_error", f"the model's worker died during the {what}") from None
        if kill:
            self._restart()
            raise ModelUnavailableError("deadline", f"no {what} within {timeout_s:.0f} s; the worker was killed")
        raise ModelUnavailableError("model_unavailable", f"the model is still loading ({what})")

    def _restart(self, *, wait: bool = False) -> None:
        self.close()
        self.start(wait=wait)


def registry_factory(config: WatchConfig) -> Callable[[], Any]:
    """What the worker calls to build ``config``'s forecaster (picklable: the registry's own function)."""
    from nowcast.forecasters import get_forecaster

    return functools.partial(get_forecaster, str(config.model), config.model_version,
                             models_dir=config.models_dir, device=config.device)


# --- the watcher ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One frame read from the input: its sequence (one time), the file and when it arrived (Unix time)."""

    time: pd.Timestamp
    data: xr.DataArray
    path: Path
    arrived: float

    @property
    def grid(self) -> tuple[Any, ...]:
        x, y = self.data["x"].values, self.data["y"].values
        return (x.size, y.size, round(float(x[0]), 3), round(float(x[-1]), 3), round(float(y[0]), 3),
                round(float(y[-1]), 3), str(self.data.attrs.get("projection", "")))


@dataclass(frozen=True)
class Decision:
    """What became of one reference time: a product (``entry``) or a skip with its ``reason``."""

    reference_time: pd.Timestamp
    entry: ProductEntry | None = None
    reason: str = ""




class Watcher:
    """The watch loop over one input folder and one product folder (see the module's docstring).

    ``model_factory`` builds the forecaster in the worker process (default: ``config.model`` from the
    registry); ``clock`` gives Unix time (tests move it on).
    """

    def __init__(self, config: WatchConfig, *, model_factory: Callable[[], Any] | None = None,
                 metrics: WatchMetrics | None = None, clock: Callable[[], float] = time.time) -> None:
        from nowcast.forecasters import get_forecaster, resolve
        from nowcast.io.importers import quiet_pysteps_io

        quiet_pysteps_io()
        self.config = config
        self.clock = clock
        self.metrics = metrics or WatchMetrics()
        self.source = get_source(config.source, config.catalogue)
        self.names = FileNames.of(self.source)
        self.input_dir = Path(config.input_dir)
        self.output_dir = Path(config.output_dir)
        if self.input_dir.exists() and not self.input_dir.is_dir():
            raise InputError(f"input folder {self.input_dir} is not a folder")
        self.model_label = resolve(str(config.model), config.model_version, models_dir=config.models_dir).label \
            if model_factory is None else str(config.model)
        get_forecaster(FALLBACK_MODEL)  # fails now, not at the first fallback, if pysteps is broken
        self.model = ModelProcess(model_factory or registry_factory(config),
                                  start_timeout_s=config.model_start_timeout_s)
        self.frames: dict[pd.Timestamp, Frame] = {}
        #: reference times waiting for their forecast, with when their frame was read (clock time)
        self.pending: dict[pd.Timestamp, float] = {}
        #: files still being written at the last poll
        self.unsettled = 0
        self._handled: dict[Path, tuple[int, int]] = {}
        self._first_seen: dict[Path, float] = {}
        self._observed: dict[Path, tuple[tuple[int, int], float]] = {}
        self.entries: list[ProductEntry] = []
        self.last_decided: pd.Timestamp | None = None
        self.n_input = 0
        self._started = False
        self._first_poll = True

    # -- start and stop

    def start(self) -> None:
        """Rebuild the state from the product folder, tidy what a killed run left, load the model."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.entries = read_manifest(self.output_dir)
        extras = read_manifest_extras(self.output_dir)
        if extras.get("source") not in (None, self.source.name):
            raise InputError(f"{self.output_dir} holds products of source {extras['source']!r}, not "
                             f"{self.source.name!r}; give each source its own output folder")
        decided = [pd.Timestamp(e.reference_time).tz_convert(None) for e in self.entries]
        if extras.get(LAST_DECIDED_KEY):
            decided.append(pd.Timestamp(extras[LAST_DECIDED_KEY]).tz_convert(None))
        self.last_decided = max(decided) if decided else None
        for path in orphan_files(self.output_dir, self.entries):
            logger.warning("removing %s, left by a run that was stopped while writing", path.name)
            path.unlink(missing_ok=True)
        info = self.model.start(wait=True) or {}
        self.n_input = int(info["n_input_frames"])
        if self.config.members is not None and not info["supports_members"]:
            self.model.close()
            raise InputError(f"model {self.model_label} gives one forecast, not ensemble members; "
                             "leave members out of the config")
        self._update_gauges()
        self._started = True
        if not self.input_dir.is_dir():  # a mount that comes later, a feed not started yet
            logger.warning("input folder %s does not exist (yet); waiting for it", self.input_dir)
        logger.info("watching %s for %s files (%s), model %s (%d input frames), products in %s%s",
                    self.input_dir, self.source.name, self.source.importer, self.model_label, self.n_input,
                    self.output_dir, f"; last reference time {self.last_decided}" if self.last_decided else "")

    def close(self) -> None:
        self.model.close()

    def run(self, stop: threading.Event | None = None, *, once: bool = False) -> None:
        """Poll until ``stop`` is set; ``once``: process what the folder holds (waiting for files being
        written to settle) and return."""
        stop = stop or threading.Event()
        if once and not self.input_dir.is_dir():
            raise InputError(f"input folder {self.input_dir} does not exist")
        if not self._started:
            self.start()
        try:
            while not stop.is_set():
                self.poll_once(final=once)
                if once and not self.unsettled:
                    return
                stop.wait(self.config.poll_interval_s if not once else max(self.config.settle_s / 2, 0.05))
        finally:
            self.close()

    # -- one poll

    def poll_once(self, *, final: bool = False) -> list[Decision]:
        """Read the new complete files, then forecast what they complete; what became of each reference time
        decided. ``final``: do not wait for missing frames."""
        unsettled = 0
        for when, path in self._candidates():
            try:
                unsettled += self._consider(when, path)
            except Exception:  # one bad file must not stop the feed
                logger.exception("%s: unexpected error; skipped", path)
                self._skip_file("error")
        self.unsettled = unsettled
        self._first_poll = False
        return self._decide_pending(final=final)

    def _candidates(self) -> list[tuple[pd.Timestamp, Path]]:
        """The source's files not handled yet and young enough to matter, oldest valid time first."""
        found = []
        for path in _walk(self.input_dir):
            when = self.names.valid_time(path.name)
            if when is not None:
                found.append((when, path))
        if not found:
            return []
        newest = max(when for when, _ in found)
        oldest_useful = newest - self.config.retention - self.n_input * self.source.step
        if self.last_decided is not None:
            oldest_useful = max(oldest_useful, self.last_decided - (self.n_input - 1) * self.source.step)
        return sorted((w, p) for w, p in found if w >= oldest_useful)

    def _consider(self, when: pd.Timestamp, path: Path) -> int:
        """Handle one file: 1 while it is still being written, else 0."""
        try:
            stat = path.stat()
        except FileNotFoundError:  # taken away between the listing and now
            return 0
        key = (stat.st_size, stat.st_mtime_ns)
        if self._handled.get(path) == key:
            return 0
        now = self.clock()
        self._first_seen.setdefault(path, now)
        if not self._settled(path, key, stat.st_mtime, now):
            return 1
        self._handled[path] = key
        if when in self.frames:
            kept = self.frames[when].path
            logger.warning("%s: a second file for %s (already read from %s); skipped as a duplicate",
                           path.relative_to(self.input_dir), when,
                           kept.relative_to(self.input_dir) if kept != path else "this file before it changed")
            self._skip_file("duplicate")
            return 0
        frame = self._read(when, path, stat.st_mtime)
        if frame is None:
            return 0
        if self.last_decided is not None and when <= self.last_decided and not self._first_poll:
            logger.warning("%s: frame %s arrived after the forecast of %s; kept for later windows, not forecast",
                           path.name, when, self.last_decided)
            self.metrics.skipped_forecasts.labels(reason="late").inc()
        self.frames[when] = frame
        self.metrics.frames.inc()
        if self.last_decided is None or when > self.last_decided:
            self.pending.setdefault(when, now)
        self._prune()
        return 0

    def _settled(self, path: Path, key: tuple[int, int], mtime: float, now: float) -> bool:
        """Whether the file has stopped changing: its modification time ``settle_s`` old, or, for a time in the
        future (a clock ahead of ours), the same size and time seen for ``settle_s``."""
        seen_key, since = self._observed.get(path, (None, now))
        if seen_key != key:
            self._observed[path] = (key, now)
            since = now
        if mtime > now + 1:
            return now - since >= self.config.settle_s
        return now - mtime >= self.config.settle_s

    def _read(self, when: pd.Timestamp, path: Path, mtime: float) -> Frame | None:
        from nowcast.io.importers import read_radar_file

        try:
            data = read_radar_file(path, self.source.importer, timestamp=when, **dict(self.source.importer_kwargs))
        except Exception as exc:  # importers raise InputError for bad files, and anything for hostile ones
            logger.warning("%s: unreadable, skipped (%s)", path.name, exc)
            self._skip_file("unreadable")
            return None
        if not np.isfinite(data.values).any():
            logger.warning("%s: no radar data in the frame (all no-data); skipped", path.name)
            self._skip_file("no_data")
            return None
        first_seen = self._first_seen.get(path, mtime)
        # the file's own time when it is plausible (a copy keeping an old time is not an arrival)
        arrived = mtime if first_seen - 2 * self.config.poll_interval_s - self.config.settle_s - 60 <= mtime \
            <= first_seen + 1 else first_seen
        return Frame(when, data, path, arrived)

    def _skip_file(self, reason: str) -> None:
        self.metrics.skipped_files.labels(reason=reason).inc()

    def _prune(self) -> None:
        if not self.frames:
            return
        newest = max(self.frames)
        horizon = newest - self.config.retention - (self.n_input + self.config.max_missing_frames) * self.source.step
        if self.last_decided is not None:
            horizon = max(horizon, self.last_decided - (self.n_input - 1) * self.source.step)
        for when in [w for w in self.frames if w < horizon]:
            del self.frames[when]
        if len(self._first_seen) > 2_000:  # forget files too old to be candidates again
            def young(path: Path) -> bool:
                when = self.names.valid_time(path.name)
                return when is not None and when >= horizon - self.source.step

            self._handled = {p: k for p, k in self._handled.items() if young(p)}
            self._first_seen = {p: t for p, t in self._first_seen.items() if young(p)}
            self._observed = {p: o for p, o in self._observed.items() if young(p)}

    # -- forecasting

    def _decide_pending(self, *, final: bool) -> list[Decision]:
        decisions = []
        for when in sorted(self.pending):
            if not self._ready(when, final=final):
                break  # reference times are decided in order
            del self.pending[when]
            try:
                decision = self._forecast(when)
            except Exception as exc:  # nothing may stop the feed; the reference time is given up
                logger.exception("frame %s: forecast failed", when)
                decision = self._skipped(when, "error", f"{type(exc).__name__}: {exc}")
            if decision.entry is None:
                self._record_skip(decision)
            decisions.append(decision)
        return decisions

    def _ready(self, when: pd.Timestamp, *, final: bool) -> bool:
        if final or when not in self.frames or when < max(self.frames) or not self._window(when)[0]:
            return True
        return self.clock() - self.pending[when] >= self.config.missing_wait_s

    def _window(self, when: pd.Timestamp) -> tuple[list[pd.Timestamp], list[Frame]]:
        """The model's input times for reference time ``when``: those missing (or on another grid), the frames."""
        grid = self.frames[when].grid
        missing, frames = [], []
        for k in range(self.n_input - 1, -1, -1):
            t = when - k * self.source.step
            frame = self.frames.get(t)
            if frame is None or frame.grid != grid:
                missing.append(t)
            else:
                frames.append(frame)
        return missing, frames

    def _forecast(self, when: pd.Timestamp) -> Decision:
        newest = max(self.frames)
        if when not in self.frames or newest - when > self.config.retention:
            return self._skipped(when, "stale", f"older than the retention ({self.config.retention}) before the "
                                                f"newest frame {newest}")
        missing, frames = self._window(when)
        other_grid = [t for t in missing if t in self.frames]
        if len(missing) > self.config.max_missing_frames:
            return self._skipped(when, "grid_change" if other_grid else "missing_frames",
                                 f"{_missing_text(missing, other_grid, self.n_input)}; more than "
                                 f"max_missing_frames={self.config.max_missing_frames}")
        # one grid (checked above): the first frame's coordinates, not a union of float-rounded ones
        observed = xr.concat([f.data for f in frames], dim="time", join="override", combine_attrs="override")
        tic = time.monotonic()
        if missing:
            past = _consecutive_tail(observed, self.source.step)
            if past.sizes["time"] < 2:
                return self._skipped(when, "missing_frames", f"{_missing_text(missing, other_grid, self.n_input)} "
                                                             "and fewer than 2 consecutive frames to extrapolate")
            reason = f"{self.model_label} needs {self.n_input} consecutive frames: " \
                     f"{_missing_text(missing, other_grid, self.n_input)}"
            result, ensemble = self._fallback(past), None
            fallback = ("missing_frames", reason)
        else:
            try:
                result, ensemble = self._run_model(observed, when)
                fallback = None
                self.metrics.model_seconds.observe(time.monotonic() - tic)
            except ModelUnavailableError as exc:
                logger.warning("%s: %s (%s); falling back to %s", when, self.model_label, exc, FALLBACK_MODEL)
                result, ensemble = self._fallback(observed), None
                fallback = (exc.reason, f"{self.model_label}: {exc}")
        return self._publish(when, observed, result, ensemble, fallback, len(missing),
                             time.monotonic() - tic)

    def _run_model(self, observed: xr.DataArray, when: pd.Timestamp) -> tuple[xr.DataArray, xr.Dataset | None]:
        """The deterministic forecast and, for an ensemble, its products (probabilities, and members if kept)."""
        members = self.config.members
        seed = None if members is None else int(when.timestamp() // 60) % (2**31)
        result = self.model.forecast(observed, self.config.steps, members=members, seed=seed,
                                     deadline_s=self.config.model_deadline_s)
        request = self.config.request
        if request is None:
            return result, None
        products = ensemble_products(result, request)
        return products["pm_mean"], products.drop_vars("pm_mean")

    def _fallback(self, past: xr.DataArray) -> xr.DataArray:
        from nowcast.forecasters import get_forecaster

        method = get_forecaster(FALLBACK_MODEL)
        if past.sizes["time"] < method.n_input_frames:
            method = get_forecaster(FALLBACK_MODEL, n_input_frames=int(past.sizes["time"]))
        return method.forecast(past, self.config.steps)

    def _publish(self, when: pd.Timestamp, observed: xr.DataArray, forecast: xr.DataArray,
                 ensemble: xr.Dataset | None, fallback: tuple[str, str] | None, n_missing: int,
                 seconds: float) -> Decision:
        frame = self.frames[when]
        arrived = datetime.fromtimestamp(frame.arrived, UTC)
        made_by = FALLBACK_MODEL if fallback else self.model_label
        reason = fallback[1] if fallback else ""
        reference = when.to_pydatetime().replace(tzinfo=UTC)
        entry = ProductEntry(
            file=product_file_name(reference), reference_time=reference,
            valid_times=tuple(pd.Timestamp(t).to_pydatetime().replace(tzinfo=UTC)
                              for t in forecast["time"].values),
            model=made_by, fallback=fallback is not None, fallback_reason=reason,
            members=self.config.members if ensemble is not None else None,
            thresholds=self.config.thresholds if ensemble is not None else (),
            missing_frames=n_missing, frame_arrived_at=arrived,
        )
        attrs = {"model": made_by, "fallback": int(fallback is not None), "fallback_reason": reason,
                 "missing_frames": n_missing, "configured_model": self.model_label, "radar_source": self.source.name,
                 "frame_arrived_at": arrived.isoformat().replace("+00:00", "Z"),
                 "history": "nowcast watch"}
        write_product(product_path(self.output_dir, entry), observed, forecast,
                      probabilities=None if ensemble is None else ensemble["probabilities"],
                      max_probabilities=None if ensemble is None else ensemble["max_probabilities"],
                      accumulation_probabilities=None if ensemble is None else ensemble["accumulation_probabilities"],
                      members=None if ensemble is None or "members" not in ensemble else ensemble["members"],
                      attrs=attrs)
        dropped = self._record(entry, when)
        latency = self.clock() - frame.arrived
        self.metrics.latency.observe(max(latency, 0.0))
        kind = "fallback" if fallback else "model"
        self.metrics.forecasts.labels(kind=kind).inc()
        if fallback:
            self.metrics.fallbacks.labels(reason=fallback[0]).inc()
        logger.info("frame %s: %s by %s%s in %.1f s, %.1f s after the file arrived%s", when, entry.file, made_by,
                    f" (fallback: {reason})" if fallback else "", seconds, latency,
                    f"; {dropped} old product(s) removed" if dropped else "")
        return Decision(when, entry=entry)

    def _skipped(self, when: pd.Timestamp, label: str, text: str) -> Decision:
        self.metrics.skipped_forecasts.labels(reason=label).inc()
        return Decision(when, reason=f"{label}: {text}")

    def _record_skip(self, decision: Decision) -> None:
        logger.warning("frame %s: no product (%s)", decision.reference_time, decision.reason)
        self._record(None, decision.reference_time)

    def _record(self, entry: ProductEntry | None, when: pd.Timestamp) -> int:
        """List ``entry`` (the product file is written) and the reference time decided, apply the retention:
        manifest first, then the files it no longer names. Returns how many products were removed."""
        entries = [e for e in self.entries if entry is None or e.file != entry.file]
        if entry is not None:
            entries.append(entry)
        if entries:
            newest = max(e.reference_time for e in entries)
            keep = [e for e in entries if newest - e.reference_time <= self.config.retention.to_pytimedelta()]
        else:
            keep = []
        self.last_decided = when if self.last_decided is None else max(self.last_decided, when)
        write_manifest(self.output_dir, keep, source=self.source.name,
                       **{LAST_DECIDED_KEY: self.last_decided.isoformat() + "Z"})
        kept = {e.file for e in keep}
        dropped = [e for e in entries if e.file not in kept]
        for old in dropped:
            product_path(self.output_dir, old).unlink(missing_ok=True)
        self.entries = keep
        self._update_gauges()
        return len(dropped)

    def _update_gauges(self) -> None:
        self.metrics.products.set(len(self.entries))
        if self.entries:
            self.metrics.last_reference.set(self.entries[-1].reference_time.timestamp())


def _walk(root: Path) -> Iterator[Path]:
    """The files under ``root``, hidden ones (temporary names of writers) and hidden folders left out."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(folder) / name


def _consecutive_tail(observed: xr.DataArray, step: pd.Timedelta) -> xr.DataArray:
    """The frames of ``observed`` that follow each other at ``step`` up to its last one."""
    times = pd.DatetimeIndex(observed["time"].values)
    start = len(times) - 1
    while start > 0 and times[start] - times[start - 1] == step:
        start -= 1
    return observed.isel(time=slice(start, None))


def _missing_text(missing: list[pd.Timestamp], other_grid: list[pd.Timestamp], n_input: int) -> str:
    shown = ", ".join(f"{t:%H:%M}" for t in missing)
    grid = f", {len(other_grid)} of them on another grid (the grid changed)" if other_grid else ""
    return f"{len(missing)} of {n_input} input frames missing ({shown}{grid})"


# --- replaying an archive ------------------------------------------------------------------------


def replay_event(event: Event, to: str | os.PathLike[str], *, interval_s: float, root: str | os.PathLike[str] |
                 None = None, start: Any | None = None, frames: int | None = None, write_seconds: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep) -> list[Path]:
    """Copy an event's files into ``to`` one by one, ``interval_s`` apart, in the source's layout (``path_fmt``
    folders), each under a temporary name and renamed; ``write_seconds`` > 0 writes each under its final name
    over that many seconds instead, the way a slow writer does. Returns the files written."""
    if interval_s < 0 or write_seconds < 0:
        raise InputError("interval and write time must not be negative")
    files = find_event_files(event, root, start=start, allow_missing=True)
    if frames is not None:
        files = files[:frames]
    written = []
    for k, (when, source) in enumerate(files):
        if k:
            sleep(interval_s)
        folder = Path(to) / when.strftime(event.path_fmt) if event.path_fmt else Path(to)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / source.name
        if write_seconds > 0:
            _write_slowly(source, target, write_seconds, sleep)
        else:
            with replaced_atomically(target, suffix=".part") as tmp:
                shutil.copyfile(source, tmp)
        logger.info("replayed %s (%s)", target, when)
        written.append(target)
    return written


def _write_slowly(source: Path, target: Path, seconds: float, sleep: Callable[[float], None]) -> None:
    data = source.read_bytes()
    chunks = 8
    size = math.ceil(len(data) / chunks) or 1
    with open(target, "wb") as out:
        for k in range(0, len(data), size):
            out.write(data[k:k + size])
            out.flush()
            sleep(seconds / chunks)
