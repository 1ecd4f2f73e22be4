"""The evaluation job: forecast methods scored over sliding start times of radar events.

For every event, start times slide through the sequence every ``stride`` frames
wherever ``n_input`` past frames and ``steps`` future frames exist at the event's
regular time step. Each method forecasts from the same past frames and is scored
against the observed future frames with :mod:`nowcast.verification`, all methods on
the same pixels. Scores are accumulated per event and overall (contingency tables and
FSS sums added up, never ratios averaged) and keyed by lead time in minutes, so
events with different time steps pool only equal lead times.

Start times are skipped (logged and counted, by reason) where a past frame has no
data at all, where the past holds no rain (nothing to forecast: every method scores
a perfect or undefined zero there), where the time series has a gap, or where no
future frame has data.

With ``members``, every method that draws ensemble members (``supports_members``)
forecasts that many, with a seed fixed by the run's ``seed``, the event and the start
time (two runs give the same members). Such a method is scored twice over the same
pixels: its probability-matched mean (:func:`nowcast.products.probability_matched_mean_of`)
under its own name, exactly as a deterministic method, and its members as an ensemble
(CRPS, Brier score and skill against ``brier_reference``, reliability, ROC, rank
histogram, spread/skill, first member's spectra; see :mod:`nowcast.verification`).
Deterministic methods are scored as without ``members``.

Each start time is one task: its methods' forecasts and the scores they add, from zero
(:func:`score_start`). The tasks run in this process, or on Dask's distributed scheduler
(``scheduler``: ``"local"`` for a cluster of worker processes on this machine, or the
address of a running scheduler), a few at a time; either way their sums are added up in
start-time order by the same code, so the scores are the same to the last bit. Every
method's non-finite values (NaN, infinite) are counted too (``nonfinite``), since the
scores leave such pixels out.

Output, written into ``out_dir`` file by file (each to a temporary name, then
renamed, and only once every forecast is done): ``scores.json`` (everything),
``scores.md`` (tables), ``csi_vs_lead.png``, ``spectrum.png`` and one
``maps_EVENT.png`` per event (observed and forecast rain at +30 and +60 min for the
start time with the most observed rain at those leads, with each ensemble's
probability of rain above the first probability threshold next to the observation;
axes in km, or in degrees on a latitude/longitude grid); with ensembles also
``reliability.png``, ``rank_histogram.png``, ``reliability_forecast_maximum.png`` (of
the probability of rate > threshold at some lead of the forecast) and
``reliability_accumulation.png`` (of the rain over the forecast's leads > threshold mm).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.ensemble import lead_exceedance_probability
from nowcast.errors import InputError, SequenceError
from nowcast.forecasters import Forecaster, PreparedForecast, get_forecaster
from nowcast.products import probability_matched_mean_of
from nowcast.quiet import quiet_stdout
from nowcast.report import render_markdown
from nowcast.sequence import DIMS, UNITS, _is_geographic, pixel_size_km
from nowcast.verification import (
    ENSEMBLE_SUM_KINDS,
    PeriodScores,
    Scores,
    ScoreSettings,
    accumulate,
    ensemble_sum_kind,
    key,
)

logger = logging.getLogger(__name__)

Loader = Callable[[str], xr.DataArray]

DEFAULT_STRIDE = 6
MIN_RAIN_MMH = 0.1
SCORES_JSON = "scores.json"
SCORES_MARKDOWN = "scores.md"
CSI_PLOT = "csi_vs_lead.png"
SPECTRUM_PLOT = "spectrum.png"
RELIABILITY_PLOT = "reliability.png"
RELIABILITY_MAXIMUM_PLOT = "reliability_forecast_maximum.png"
RELIABILITY_ACCUMULATION_PLOT = "reliability_accumulation.png"
RANK_HISTOGRAM_PLOT = "rank_histogram.png"
#: The Brier skill reference when it is among the methods scored as ensembles.
DEFAULT_BRIER_REFERENCE = "steps"
#: spectrum sums kept per start time: of the forecast, of it matched to the observed distribution, and the same of
#: an ensemble's first member
SPECTRUM_KINDS = ("spectrum", "spectrum_matched", "spectrum_member", "spectrum_member_matched")
# Pixel sizes outside this range (km) are no radar grid: most likely its units were misread.
_PLAUSIBLE_PIXEL_KM = (0.05, 50.0)

SKIP_EMPTY_PAST = "a past frame has no data"
SKIP_DRY_PAST = "no rain in the past frames"
SKIP_TIME_GAP = "gap in the time series"
SKIP_NO_OBSERVATIONS = "no observed data in the future frames"
#: ``scheduler``: a Dask cluster of worker processes on this machine
LOCAL_CLUSTER = "local"
#: how long to wait for a Dask scheduler given by address
CONNECT_TIMEOUT_S = 30.0
# start times in flight per Dask worker thread: enough to keep each busy while one is added up
_TASKS_PER_THREAD = 2
#: times a start time lost with its Dask worker is submitted again
LOST_START_RETRIES = 2


@dataclass
class _Case:
    """The fields of one start time kept for the maps."""

    reference_time: pd.Timestamp
    wet_pixels: int
    observed: dict[float, np.ndarray]
    forecasts: dict[str, dict[float, np.ndarray]]
    probabilities: dict[str, dict[float, np.ndarray]]  # of the ensembles, at the first probability threshold


@dataclass(frozen=True)
class _MapAxes:
    """Where the map pixels lie, in the unit the grid has: km on a projected grid, degrees on a lat/lon one."""

    x: np.ndarray
    y: np.ndarray
    unit: str

    @classmethod
    def of(cls, sequence: xr.DataArray) -> _MapAxes:
        projection = str(sequence.attrs.get("projection", ""))
        x, y = sequence["x"].values.astype(np.float64), sequence["y"].values.astype(np.float64)
        if _is_geographic(projection):
            return cls(x, y, "°")
        to_km = 1.0 if "+units=km" in projection else 1e-3  # projection units, as pixel_size_km reads them
        return cls(x * to_km, y * to_km, "km")


@dataclass(frozen=True)
class _Methods:
    """The forecasters and how each runs: ``members`` members (seeded per start time) for the ``ensembles``."""

    forecasters: dict[str, Forecaster]
    members: int | None
    seed: int
    ensembles: tuple[str, ...]
    brier_reference: str | None

    def new_scores(self, settings: ScoreSettings) -> dict[str, Scores]:
        return {name: Scores(settings, members=self.members if name in self.ensembles else None)
                for name in self.forecasters}

    def start_seed(self, event_id: str, reference: pd.Timestamp) -> int:
        """The seed of the members forecast from ``reference``: the same in every run, whatever else it holds."""
        start = zlib.crc32(f"{event_id} {reference.isoformat()}".encode())
        return int(np.random.SeedSequence([self.seed, start]).generate_state(1)[0])


@dataclass
class _Forecasts:
    """One start time's forecasts: every method's deterministic (lead, y, x), the ensembles' (member, lead, y, x)."""

    deterministic: dict[str, np.ndarray]
    members: dict[str, np.ndarray]


@dataclass(frozen=True)
class _Start:
    """One start time to forecast and score: everything a worker needs."""

    event_id: str
    reference: pd.Timestamp
    past: xr.DataArray
    observed: np.ndarray
    lead_minutes: list[float]
    pixel_size_km: float
    seed: int | None
    map_leads: list[float]
    map_lead_index: list[int]


@dataclass
class _StartScores:
    """What one start time adds: every method's scores from zero, forecast seconds, non-finite
    counts ([NaN, infinite, values]) and its map case."""

    scores: dict[str, Scores]
    seconds: dict[str, float]
    nonfinite: dict[str, list[int]]
    case: _Case


@dataclass
class _EventResult:
    event_id: str
    n_frames: int
    time_step_minutes: float
    shape: tuple[int, int]
    pixel_size_km: float
    n_start_times: int = 0
    n_evaluated: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_start_times: list[dict[str, str]] = field(default_factory=list)
    start_time_sums: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, Scores] = field(default_factory=dict)
    case: _Case | None = None
    map_axes: _MapAxes | None = None


def evaluate(
    methods: Sequence[str],
    events: Sequence[str],
    *,
    n_input: int = 4,
    steps: int = 12,
    stride: int = DEFAULT_STRIDE,
    loader: Loader | None = None,
    out_dir: str | os.PathLike[str],
    progress: bool = True,
    models_dir: str | os.PathLike[str] | None = None,
    settings: ScoreSettings | None = None,
    min_rain_mmh: float = MIN_RAIN_MMH,
    console: Any | None = None,
    members: int | None = None,
    seed: int = 0,
    brier_reference: str | None = DEFAULT_BRIER_REFERENCE,
    scheduler: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Score ``methods`` on ``events`` and write the report into ``out_dir``.

    ``methods``: forecaster names (see :func:`nowcast.forecasters.get_forecaster`);
    ``events``: event ids handed to ``loader``, which returns the event's sequence
    (default: :func:`nowcast.io.catalogue.load_event`, with all-NaN frames for missing
    files); ``n_input``: past frames given to each forecast; ``steps``: frames
    forecast; ``stride``: frames between consecutive start times; ``min_rain_mmh``:
    the past must have a pixel at least this wet; ``console``: a
    :class:`rich.console.Console` for the progress bar (default: one on stderr);
    ``members``: ensemble members drawn by every method that can (at least 2; None:
    every method forecasts once); ``seed``: the run's seed, from which each start time's
    is derived; ``brier_reference``: the ensemble method the others' Brier skill is
    measured against (the default, ``steps``, only where it is among them; None: none);
    ``scheduler``: None to forecast in this process, ``"local"`` for a Dask cluster of
    ``workers`` processes (default: one per core) on this machine, or a Dask scheduler's
    address (its workers need this package, nothing else: the forecasters travel to them,
    trained models with their weights). Returns the content of ``scores.json``. Lead times
    are ``steps`` times the event's time step, so with 12 steps a 10-min event is scored up
    to +120 min.
    """
    methods, events = list(dict.fromkeys(methods)), list(dict.fromkeys(events))
    out_dir = Path(out_dir)
    _check_arguments(methods, events, n_input=n_input, steps=steps, stride=stride, out_dir=out_dir)
    settings = settings or ScoreSettings()
    _check_ensemble_arguments(members, seed, settings)
    plan = _plan(_forecasters(methods, n_input, models_dir), members, seed, brier_reference)
    if loader is None:
        from nowcast.io.catalogue import load_event

        loader = functools.partial(load_event, on_missing="nan")
    started, started_at = time.perf_counter(), datetime.now(UTC)

    # every start time of every event a task (every method on the same past frames), added up in order
    forecast_seconds: dict[str, list[float]] = {name: [] for name in methods}
    nonfinite: dict[str, list[int]] = {name: [0, 0, 0] for name in methods}
    results: list[_EventResult] = []
    with _progress_bar(progress, console) as bar, _runner(scheduler, workers) as run:
        task = bar.add_task("evaluating", total=None)
        starts = _starts(events, loader, plan, results, n_input=n_input, steps=steps, stride=stride,
                         settings=settings, min_rain_mmh=min_rain_mmh, bar=bar, task=task)
        for result, start, added in run(plan, starts, settings):
            _add_start(result, start, added, settings, forecast_seconds, nonfinite)
            bar.advance(task, len(methods))
    for result in results:
        _log_event(result)

    # the report: the events' sums added up, then the files
    overall = plan.new_scores(settings)
    for result in results:
        for name in methods:
            overall[name].merge(result.scores[name])
    report = _report(plan, results, overall, forecast_seconds, settings=settings, n_input=n_input,
                     steps=steps, stride=stride, min_rain_mmh=min_rain_mmh, started_at=started_at,
                     runtime=time.perf_counter() - started)
    report["nonfinite"] = {name: dict(zip(("nan", "inf", "values"), counts, strict=True))
                           for name, counts in nonfinite.items()}
    _write_outputs(out_dir, report, results, methods, settings)
    logger.info("evaluation done in %.0f s; wrote %s", time.perf_counter() - started, out_dir)
    return report


def _check_arguments(methods: list[str], events: list[str], *, n_input: int, steps: int, stride: int,
                     out_dir: Path) -> None:
    if not methods:
        raise InputError("no forecast method given")
    if not events:
        raise InputError("no event given")
    for name, value in (("n_input", n_input), ("steps", steps), ("stride", stride)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")


def _check_ensemble_arguments(members: int | None, seed: int, settings: ScoreSettings) -> None:
    if members is None and settings.probability_neighbourhood_km_per_minute:
        raise InputError("probability_neighbourhood: given, but no members are drawn (it processes ensemble "
                         "probabilities)", field="probability_neighbourhood")
    if members is not None and members < 2:
        raise InputError(f"members must be at least 2 to score an ensemble, got {members}", field="members")
    if seed < 0:
        raise InputError(f"seed must be 0 or more, got {seed}", field="seed")


def _plan(forecasters: dict[str, Forecaster], members: int | None, seed: int,
          brier_reference: str | None) -> _Methods:
    """Which methods run as ensembles, and the Brier skill reference among them."""
    ensembles = tuple(name for name, f in forecasters.items() if f.supports_members) if members else ()
    if members and not ensembles:
        raise InputError(f"members: none of {', '.join(forecasters)} draws ensemble members", field="members")
    if brier_reference is not None and brier_reference not in ensembles:
        if members and brier_reference != DEFAULT_BRIER_REFERENCE:
            raise InputError(f"Brier skill reference {brier_reference!r} is not among the methods scored as "
                             f"ensembles ({', '.join(ensembles)})", field="brier_reference")
        brier_reference = None
    if ensembles:
        logger.info("%d members of %s; Brier skill against %s", members, ", ".join(ensembles),
                    brier_reference or "no reference")
    return _Methods(forecasters, members if ensembles else None, seed, ensembles, brier_reference)


def _forecasters(methods: list[str], n_input: int,
                 models_dir: str | os.PathLike[str] | None) -> dict[str, Forecaster]:
    forecasters = {name: get_forecaster(name, models_dir=models_dir) for name in methods}
    for name, forecaster in forecasters.items():
        if forecaster.n_input_frames > n_input:
            raise InputError(f"{name} needs {forecaster.n_input_frames} past frames; n_input is {n_input}")
    return forecasters


def event_time_steps(event_id: str, sequence: xr.DataArray) -> tuple[pd.DatetimeIndex, np.ndarray, int]:
    """A loaded event checked (a (time, y, x) DataArray in mm/h with increasing times): its times, the seconds
    between consecutive frames and its regular step (their median)."""
    if not isinstance(sequence, xr.DataArray) or tuple(sequence.dims) != DIMS:
        raise SequenceError(f"event {event_id}: loader must return a (time, y, x) DataArray")
    if sequence.attrs.get("units") != UNITS:
        raise SequenceError(f"event {event_id}: units must be {UNITS!r}, got {sequence.attrs.get('units')!r}")
    times = pd.DatetimeIndex(sequence["time"].values)
    if len(times) < 2:
        raise SequenceError(f"event {event_id}: a single frame has no time step")
    steps_s = np.diff(times.values).astype("timedelta64[s]").astype(np.int64)
    step_s = int(np.median(steps_s))
    if step_s <= 0:
        raise SequenceError(f"event {event_id}: timestamps are not increasing")
    return times, steps_s, step_s


def start_indices(n_frames: int, n_input: int, steps: int, stride: int) -> list[int]:
    """Index of the first past frame of every start time that has past and future frames."""
    return list(range(0, n_frames - n_input - steps + 1, stride))


def scored_start_times(event_id: str, sequence: xr.DataArray, *, n_input: int, steps: int, stride: int, seed: int,
                       min_rain_mmh: float = MIN_RAIN_MMH) -> Iterator[tuple[xr.DataArray, np.ndarray, int]]:
    """(past frames, observed (steps, y, x), ``seed + k``) of the event's k-th start time, for each start time
    this job would score (with rain, without gaps): what the fits that draw members on training events use."""
    times, steps_s, step_s = event_time_steps(event_id, sequence)
    values = sequence.values
    for k, index in enumerate(start_indices(len(times), n_input, steps, stride)):
        stop = index + n_input + steps
        if skip_reason(values[index:index + n_input], values[index + n_input:stop], steps_s[index:stop - 1],
                       step_s, min_rain_mmh) is None:
            yield sequence.isel(time=slice(index, index + n_input)), values[index + n_input:stop], seed + k


@dataclass(frozen=True)
class FittingEvents:
    """The training events a member setting is fitted on, each once and in order, and how their start
    times are taken (:func:`scored_start_times`: with rain, without gaps, start time k seeded ``seed + k``).

    What the fits of a GAN ensemble's member settings share (``nowcast.spread_gain``,
    ``nowcast.rate_map``, ``nowcast.neighbourhood_fit``); :meth:`of` checks the request.
    """

    events: tuple[str, ...]
    loader: Loader
    n_input: int
    steps: int
    stride: int
    seed: int
    min_rain_mmh: float = MIN_RAIN_MMH

    @classmethod
    def of(cls, events: Sequence[str], loader: Loader | None = None, *, n_input: int, steps: int, stride: int,
           seed: int, min_rain_mmh: float = MIN_RAIN_MMH) -> FittingEvents:
        """``loader`` default: :func:`nowcast.io.catalogue.load_event`, all-NaN frames for missing files."""
        if not events:
            raise InputError("no events to fit on", field="events")
        if loader is None:
            from nowcast.io.catalogue import load_event

            loader = functools.partial(load_event, on_missing="nan")
        return cls(tuple(dict.fromkeys(events)), loader, n_input, steps, stride, seed, min_rain_mmh)

    def start_times(self, event: str) -> Iterator[tuple[xr.DataArray, np.ndarray, int]]:
        return scored_start_times(event, self.loader(event), n_input=self.n_input, steps=self.steps,
                                  stride=self.stride, seed=self.seed, min_rain_mmh=self.min_rain_mmh)

    def draws(self, event: str, drawer: Forecaster, members: int,
              ) -> Iterator[tuple[PreparedForecast, np.ndarray, np.ndarray]]:
        """Per start time of ``event``: the prepared request, the members ``drawer`` draws (1, member, lead,
        y, x) mm/h, as its ``predict`` draws them (no product-side processing), and the observed (lead, y, x)."""
        for past, observed, start_seed in self.start_times(event):
            prepared = drawer.prepare(past, self.steps, members=members, seed=start_seed)
            drawn = drawer.predict(prepared.past[None], self.steps, members=members, seed=start_seed,
                                   spacing=prepared.spacing)
            yield prepared, drawn, observed

    def check_counted(self, counted: dict[str, int]) -> None:
        """InputError where no event had a start time to fit on (``counted``: event -> start times)."""
        if not any(counted.values()):
            raise InputError(f"no start time with rain and without gaps in {', '.join(self.events)}",
                             field="events")


def ensemble_forecaster(model: str, models_dir: str | os.PathLike[str] | None, *, needed_for: str,
                        gan_only: bool = True) -> Forecaster:
    """``model`` from the registry, refused by name where it draws no members (with ``gan_only``, where it is
    no GAN ensemble); ``needed_for`` says what the members were wanted for."""
    forecaster = get_forecaster(model, models_dir=models_dir)
    draws = forecaster.supports_members
    if gan_only:
        from nowcast.gan.forecaster import GANForecaster

        draws = draws and isinstance(forecaster, GANForecaster)
    if not draws:
        raise InputError(f"{model} draws no ensemble members: {needed_for}", field="model")
    return forecaster


@dataclass(frozen=True)
class _Clock:
    """An event's times: its regular step, the forecast's lead times and the leads drawn on the maps."""

    times: pd.DatetimeIndex
    steps_s: np.ndarray  # seconds between consecutive frames
    step_s: int
    lead_minutes: list[float]
    map_leads: list[float]
    map_lead_index: list[int]

    @classmethod
    def of(cls, event_id: str, sequence: xr.DataArray, steps: int, settings: ScoreSettings) -> _Clock:
        times, steps_s, step_s = event_time_steps(event_id, sequence)
        lead_minutes = [step_s / 60.0 * (k + 1) for k in range(steps)]
        map_leads = [lead for lead in lead_minutes if lead in settings.spectrum_leads_minutes] or sorted(
            {lead_minutes[(steps - 1) // 2], lead_minutes[-1]})
        return cls(times, steps_s, step_s, lead_minutes, map_leads, [lead_minutes.index(m) for m in map_leads])


def _starts(events: list[str], loader: Loader, plan: _Methods, results: list[_EventResult], *, n_input: int,
            steps: int, stride: int, settings: ScoreSettings, min_rain_mmh: float, bar: Any,
            task: Any) -> Iterator[tuple[_EventResult, _Start]]:
    """Every start time to score, event after event (each loaded when its turn comes); the ones skipped are
    recorded in their event's result here."""
    for event_id in events:
        bar.update(task, description=f"loading {event_id}")
        sequence = loader(event_id)
        clock = _Clock.of(event_id, sequence, steps, settings)
        result = _EventResult(
            event_id=event_id, n_frames=len(clock.times), time_step_minutes=clock.step_s / 60.0,
            shape=(sequence.sizes["y"], sequence.sizes["x"]), pixel_size_km=pixel_size_km(sequence),
            scores=plan.new_scores(settings), map_axes=_MapAxes.of(sequence),
        )
        results.append(result)
        if not _PLAUSIBLE_PIXEL_KM[0] <= result.pixel_size_km <= _PLAUSIBLE_PIXEL_KM[1]:
            logger.warning("event %s: pixels of %.3g km are no radar grid's; check its projection and pixel size "
                           "(FSS windows and spectra are in km)", event_id, result.pixel_size_km)
        indices = start_indices(len(clock.times), n_input, steps, stride)
        result.n_start_times = len(indices)
        if not indices:
            logger.warning("event %s: %d frames are too few for %d past and %d future frames",
                           event_id, len(clock.times), n_input, steps)
        planned = next(t.total for t in bar.tasks if t.id == task) or 0
        bar.update(task, description=event_id, total=planned + len(indices) * len(plan.forecasters))
        values = sequence.values
        for index in indices:
            stop = index + n_input + steps
            reference = clock.times[index + n_input - 1]
            reason = skip_reason(values[index:index + n_input], values[index + n_input:stop],
                                 clock.steps_s[index:stop - 1], clock.step_s, min_rain_mmh)
            if reason is not None:
                logger.info("event %s, start %s: skipped (%s)", event_id, reference, reason)
                result.skipped[reason] += 1
                result.skipped_start_times.append({"time": reference.isoformat(), "reason": reason})
                bar.advance(task, len(plan.forecasters))
                continue
            yield result, _Start(
                event_id=event_id, reference=reference, past=sequence.isel(time=slice(index, index + n_input)),
                observed=values[index + n_input:stop], lead_minutes=clock.lead_minutes,
                pixel_size_km=result.pixel_size_km,
                seed=plan.start_seed(event_id, reference) if plan.ensembles else None,
                map_leads=clock.map_leads, map_lead_index=clock.map_lead_index,
            )


def score_start(plan: _Methods, start: _Start, settings: ScoreSettings) -> _StartScores:
    """One start time's task: every method's forecast from the same past, and the scores they add to zero."""
    import dask

    with quiet_stdout():  # a worker process's first import of pysteps prints its start-up message
        import pysteps  # noqa: F401
    scores = plan.new_scores(settings)
    # pySTEPS parallelises members with dask.compute over closures that fill lists in place: inside a
    # distributed worker that would ship them to other processes, so a task's own dask calls stay in it
    with dask.config.set(scheduler="synchronous"):
        forecasts, seconds, nonfinite = _forecast_all(plan, start.past, len(start.lead_minutes), start.seed)
    accumulate(scores, start.observed, forecasts.deterministic, members=forecasts.members,
               lead_minutes=start.lead_minutes, pixel_size_km=start.pixel_size_km)
    return _StartScores(scores, seconds, nonfinite, _map_case(start, forecasts, settings))


def _forecast_all(plan: _Methods, past: xr.DataArray, steps: int,
                  seed: int | None) -> tuple[_Forecasts, dict[str, float], dict[str, list[int]]]:
    """Every method's forecast from the same past, timed, its non-finite values counted; an ensemble's
    deterministic one is its members' probability-matched mean, placed as its forecaster sets."""
    forecasts, seconds, nonfinite = _Forecasts({}, {}), {}, {}
    for name, forecaster in plan.forecasters.items():
        ensemble = name in plan.ensembles
        tic = time.perf_counter()
        forecast = (forecaster.forecast(past, steps, members=plan.members, seed=seed) if ensemble
                    else forecaster.forecast(past, steps))
        fields = forecast.values
        seconds[name] = time.perf_counter() - tic
        n_nan = int(np.count_nonzero(np.isnan(fields)))
        nonfinite[name] = [n_nan, int(fields.size - n_nan - np.count_nonzero(np.isfinite(fields))), int(fields.size)]
        if ensemble:
            forecasts.members[name] = fields
            forecasts.deterministic[name] = probability_matched_mean_of(forecast)
        else:
            forecasts.deterministic[name] = fields
    return forecasts, seconds, nonfinite


def _add_start(result: _EventResult, start: _Start, added: _StartScores, settings: ScoreSettings,
               forecast_seconds: dict[str, list[float]], nonfinite: dict[str, list[int]]) -> None:
    """Add one start time's scores to its event's, keep what it added (for the bootstrap) and its map case."""
    for name, scores in added.scores.items():
        result.scores[name].merge(scores)
        forecast_seconds[name].append(added.seconds[name])
        nonfinite[name] = [a + b for a, b in zip(nonfinite[name], added.nonfinite[name], strict=True)]
    zero: dict[str, Any] = {"categorical": {}, **{kind: {} for kind in SPECTRUM_KINDS},
                            **{kind: {} for kind in ENSEMBLE_SUM_KINDS}}
    totals = {name: _totals(scores) for name, scores in added.scores.items()}
    record: dict[str, Any] = {"time": start.reference.isoformat(),
                              **_added(dict.fromkeys(totals, zero), totals, settings)}
    for name in totals:  # a lead no pixel could score still counts, as a start time that added nothing
        by_lead = record["categorical"].setdefault(name, {})
        for lead in start.lead_minutes:
            by_lead.setdefault(key(lead), {key(thr): [0, 0, 0] for thr in settings.thresholds_mmh})
    if start.seed is not None:
        record["seed"] = start.seed
        record.update(_added_ensemble(dict.fromkeys(totals, zero), totals))
    result.start_time_sums.append(record)
    result.n_evaluated += 1
    if result.case is None or added.case.wet_pixels > result.case.wet_pixels:
        result.case = added.case


def _log_event(result: _EventResult) -> None:
    skipped = sum(result.skipped.values())
    logger.info("event %s: %d start times, %d evaluated, %d skipped%s", result.event_id, result.n_start_times,
                result.n_evaluated, skipped,
                f" ({', '.join(f'{n} {r}' for r, n in result.skipped.items())})" if skipped else "")


def _map_case(start: _Start, forecasts: _Forecasts, settings: ScoreSettings) -> _Case:
    """The fields at the map leads, and how much rain was observed there (the wettest start time is drawn)."""
    observed = start.observed
    wet = int(sum(np.count_nonzero(observed[i] >= settings.thresholds_mmh[0]) for i in start.map_lead_index))
    pairs = list(zip(start.map_leads, start.map_lead_index, strict=True))
    threshold = settings.probability_thresholds_mmh[:1]
    rate = settings.probability_neighbourhood_km_per_minute  # the maps show probabilities as they are scored
    return _Case(
        reference_time=start.reference, wet_pixels=wet,
        observed={lead: observed[i].copy() for lead, i in pairs},
        forecasts={name: {lead: fc[i].copy() for lead, i in pairs} for name, fc in forecasts.deterministic.items()},
        probabilities={name: {lead: lead_exceedance_probability(members[:, i], threshold, lead, rate,
                                                                start.pixel_size_km)[0]
                              for lead, i in pairs}
                       for name, members in forecasts.members.items()},
    )


Run = Callable[[_Methods, Iterator[tuple[_EventResult, _Start]], ScoreSettings],
               Iterator[tuple[_EventResult, _Start, _StartScores]]]


@contextlib.contextmanager
def _runner(scheduler: str | None, workers: int | None) -> Iterator[Run]:
    """How the start times run: here, one after another, or on a Dask cluster; results come in order."""
    if scheduler is None:
        yield _run_here
        return
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}", field="workers")
    with _dask_client(scheduler, workers) as client:
        yield functools.partial(_run_on_dask, client)


def _run_here(plan: _Methods, starts: Iterator[tuple[_EventResult, _Start]],
              settings: ScoreSettings) -> Iterator[tuple[_EventResult, _Start, _StartScores]]:
    for result, start in starts:
        yield result, start, score_start(plan, start, settings)


def _run_on_dask(client: Any, plan: _Methods, starts: Iterator[tuple[_EventResult, _Start]],
                 settings: ScoreSettings) -> Iterator[tuple[_EventResult, _Start, _StartScores]]:
    """Submit a few start times per worker thread ahead; wait for them in order, submitting the next as each
    one is taken (the events are cut into start times here, so a worker holds one start time's frames).

    A start time whose worker died (Dask restarts a worker past its memory budget) is lost with the frames
    scattered to it: it is submitted again, up to :data:`LOST_START_RETRIES` times, so that one worker's
    death does not end the whole evaluation.
    """
    tasks = _DaskTasks(client, plan, settings)
    window = _TASKS_PER_THREAD * max(1, sum(client.nthreads().values()))
    pending: deque[tuple[_EventResult, _Start, Any]] = deque()

    def submit_next() -> None:
        item = next(starts, None)
        if item is not None:
            pending.append((*item, tasks.submit(item[1])))

    for _ in range(window):
        submit_next()
    try:
        while pending:
            result, start, future = pending.popleft()
            added = tasks.result(future, start)
            submit_next()
            yield result, start, added
    finally:
        for *_, future in pending:
            future.cancel()


class _DaskTasks:
    """Start times scored on Dask workers: the forecasters scattered once to every worker, each start time's
    frames straight to one worker (not through the scheduler's task graph)."""

    def __init__(self, client: Any, plan: _Methods, settings: ScoreSettings) -> None:
        self.client, self.plan, self.settings = client, plan, settings
        self.shared = client.scatter(plan, broadcast=True, hash=False)

    def submit(self, start: _Start) -> Any:
        frames = self.client.scatter(start, hash=False)
        return self.client.submit(score_start, self.shared, frames, self.settings, pure=False)

    def result(self, future: Any, start: _Start) -> _StartScores:
        """The start time's scores, submitting it again where its worker died under it."""
        from distributed import KilledWorker

        lost = 0
        while True:
            try:
                added = future.result()
                future.release()
                return added
            except (CancelledError, KilledWorker) as exc:
                lost += 1
                if lost > LOST_START_RETRIES:
                    raise InputError(
                        f"event {start.event_id}, start time {start.reference}: lost with its Dask worker {lost} "
                        f"times ({type(exc).__name__}); Dask restarts a worker past its memory budget: run with "
                        "fewer workers (each then has more memory), or without Dask", field="workers") from exc
                logger.warning("event %s, start time %s: lost with its Dask worker (%s); submitting it again",
                               start.event_id, start.reference, type(exc).__name__)
                # the forecasters may have gone with every worker that held them
                self.shared = self.client.scatter(self.plan, broadcast=True, hash=False)
                future = self.submit(start)


@contextlib.contextmanager
def _dask_client(scheduler: str, workers: int | None) -> Iterator[Any]:
    """A client of a local cluster (``"local"``: ``workers`` single-threaded processes) or of the scheduler at
    that address."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise InputError(f"scheduler {scheduler!r}: dask's distributed scheduler is not installed ({exc})") from exc
    if scheduler == LOCAL_CLUSTER:
        import dask

        n_workers = workers or os.cpu_count() or 1
        # Dask starts workers with MALLOC_TRIM_THRESHOLD_ set, which also stops glibc from raising its mmap
        # threshold: every large array is then fresh pages from the kernel, and scoring a start time took
        # twice as long as in this process. The workers get glibc's own behaviour (and one thread each).
        environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                   if key != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
                LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                             silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
            logger.info("evaluating on a local Dask cluster of %d worker processes", n_workers)
            yield client
        return
    try:
        client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"scheduler {scheduler!r}: cannot connect ({exc}); give 'local' or a Dask scheduler's "
                         "address such as tcp://host:8786", field="scheduler") from exc
    with client:
        logger.info("evaluating on the Dask scheduler at %s (%d worker threads)", scheduler,
                    sum(client.nthreads().values()))
        yield client


def _totals(scores: Scores) -> dict[str, Any]:
    totals = {"categorical": scores.contingency_counts(), "spectrum": scores.spectrum_totals(),
              "spectrum_matched": scores.spectrum_totals(matched=True)}
    if scores.members is not None:
        totals.update(crps=scores.crps_totals(), brier=scores.brier_totals(),
                      spectrum_member=scores.spectrum_totals(member=True),
                      spectrum_member_matched=scores.spectrum_totals(matched=True, member=True))
        for period in PeriodScores.STATISTICS:
            totals[ensemble_sum_kind("crps", period)] = scores.period_crps_totals(period)
            totals[ensemble_sum_kind("brier", period)] = scores.period_brier_totals(period)
    return totals


def _added(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
           settings: ScoreSettings) -> dict[str, Any]:
    """What one start time added to each method's sums, for resampling (:mod:`nowcast.bootstrap`).

    ``categorical``: method -> lead -> threshold -> [hits, misses, false alarms];
    ``spectrum`` and ``spectrum_matched``: method -> lead -> ratio wavelength -> [observed,
    forecast] power (0 where the grid does not resolve the wavelength); ``spectrum_member``
    and ``spectrum_member_matched``: the same of an ensemble's first member (ensembles only).
    """
    ratio_index = settings.ratio_wavelength_indices()
    added: dict[str, Any] = {"categorical": {}, "spectrum": {}, "spectrum_matched": {}}  # member kinds as they come
    for name, now in after.items():
        prior = before[name]
        for lead, by_threshold in now["categorical"].items():
            for thr, counts in by_threshold.items():
                old = prior["categorical"].get(lead, {}).get(thr, (0, 0, 0))
                added["categorical"].setdefault(name, {}).setdefault(key(lead), {})[key(thr)] = [
                    a - b for a, b in zip(counts, old, strict=True)]
        for kind in SPECTRUM_KINDS:
            for lead, (observed, forecast) in now.get(kind, {}).items():
                old_observed, old_forecast = prior[kind].get(lead, (0.0, 0.0))
                added_observed, added_forecast = observed - old_observed, forecast - old_forecast
                added.setdefault(kind, {}).setdefault(name, {})[key(lead)] = {
                    key(w): [float(added_observed[i]), float(added_forecast[i])] for w, i in ratio_index.items()}
    return added


def _added_ensemble(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What one start time added to the ensembles' sums: ``crps``: method -> lead -> [CRPS sum, pixels];
    ``brier``: method -> lead -> threshold -> [Brier sum, pixels]; ``period_crps`` and ``period_brier``: the
    same of the forecast's maximum, ``accumulation_crps`` and ``accumulation_brier`` of the rain it brings (thresholds
    in mm), each keyed by the period's last lead (deterministic methods have none)."""
    added: dict[str, Any] = {kind: {} for kind in ENSEMBLE_SUM_KINDS}
    for name, now in after.items():
        if "crps" not in now:
            continue
        prior = before[name]
        for kind in (ensemble_sum_kind("crps", period) for period in (None, *PeriodScores.STATISTICS)):
            added[kind][name] = {key(lead): _difference(sums, prior[kind].get(lead, (0.0, 0)))
                                 for lead, sums in now[kind].items()}
        for kind in (ensemble_sum_kind("brier", period) for period in (None, *PeriodScores.STATISTICS)):
            added[kind][name] = {
                key(lead): {key(thr): _difference(sums, prior[kind].get(lead, {}).get(thr, (0.0, 0)))
                            for thr, sums in by_threshold.items()}
                for lead, by_threshold in now[kind].items()}
    return added


def _difference(after: tuple[float, int], before: tuple[float, int]) -> list[float]:
    return [float(after[0] - before[0]), int(after[1] - before[1])]


def skip_reason(past: np.ndarray, future: np.ndarray, window_steps_s: np.ndarray, step_s: int,
                 min_rain_mmh: float) -> str | None:
    if np.any(window_steps_s != step_s):
        return SKIP_TIME_GAP
    finite = np.isfinite(past)
    if not finite.reshape(len(past), -1).any(axis=1).all():
        return SKIP_EMPTY_PAST
    if not np.any(past[finite] >= min_rain_mmh):
        return SKIP_DRY_PAST
    if not np.isfinite(future).any():
        return SKIP_NO_OBSERVATIONS
    return None


def _progress_bar(enabled: bool, console: Any | None) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("forecasts"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console or Console(stderr=True), disable=not enabled,
    )


def _report(plan: _Methods, results: list[_EventResult], overall: dict[str, Scores],
            forecast_seconds: dict[str, list[float]], *, settings: ScoreSettings, n_input: int, steps: int,
            stride: int, min_rain_mmh: float, started_at: datetime, runtime: float) -> dict[str, Any]:
    methods = list(plan.forecasters)
    skipped_total: Counter[str] = Counter()
    for result in results:
        skipped_total.update(result.skipped)

    def scores_of(scores: dict[str, Scores]) -> dict[str, Any]:
        reference = scores[plan.brier_reference] if plan.brier_reference else None
        return {name: scores[name].to_dict(reference=reference) for name in methods}

    config: dict[str, Any] = {
        "methods": methods,
        "events": [r.event_id for r in results],
        "n_input": n_input,
        "steps": steps,
        "stride": stride,
        "min_rain_mmh": min_rain_mmh,
        **settings.to_dict(),
    }
    if plan.ensembles:  # only then, so that a deterministic report stays as it was
        config["ensemble"] = {"members": plan.members, "seed": plan.seed, "methods": list(plan.ensembles),
                              "brier_reference": plan.brier_reference, **settings.ensemble_dict()}
    return {
        "config": config,
        "started": started_at.isoformat(timespec="seconds"),
        "runtime_seconds": round(runtime, 2),
        "timing": {
            name: {
                "n_forecasts": len(seconds),
                "total_seconds": float(np.sum(seconds)) if seconds else 0.0,
                "mean_seconds_per_forecast": float(np.mean(seconds)) if seconds else None,
            }
            for name, seconds in forecast_seconds.items()
        },
        "events": {
            r.event_id: {
                "n_frames": r.n_frames,
                "time_step_minutes": r.time_step_minutes,
                "grid": {"ny": r.shape[0], "nx": r.shape[1], "pixel_size_km": r.pixel_size_km},
                "n_start_times": r.n_start_times,
                "n_evaluated": r.n_evaluated,
                "skipped": dict(r.skipped),
                "skipped_start_times": r.skipped_start_times,
                # what every evaluated start time added to the sums, for nowcast.bootstrap
                "start_times": r.start_time_sums,
                "map_case": r.case.reference_time.isoformat() if r.case else None,
                "scores": scores_of(r.scores),
            }
            for r in results
        },
        "overall": {
            "n_start_times": sum(r.n_start_times for r in results),
            "n_evaluated": sum(r.n_evaluated for r in results),
            "skipped": dict(skipped_total),
            "scores": scores_of(overall),
        },
    }


def _write_outputs(out_dir: Path, report: dict[str, Any], results: list[_EventResult], methods: list[str],
                   settings: ScoreSettings) -> None:
    """Render every file into a staging folder first, then move them into ``out_dir``.

    A failure while rendering leaves ``out_dir`` as it was; each move is a rename.
    """
    from nowcast import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_dir))
    try:
        overall_scores = report["overall"]["scores"]
        plots.save_figure(plots.csi_figure(overall_scores, settings.thresholds_mmh, title="all events"),
                          staging / CSI_PLOT)
        plots.save_figure(plots.spectrum_figure(overall_scores, title="all events"), staging / SPECTRUM_PLOT)
        if "ensemble" in report["config"]:
            plots.save_figure(plots.reliability_figure(overall_scores, title="all events, all lead times"),
                              staging / RELIABILITY_PLOT)
            plots.save_figure(plots.rank_histogram_figure(overall_scores, title="all events, all lead times"),
                              staging / RANK_HISTOGRAM_PLOT)
            plots.save_figure(plots.reliability_figure(overall_scores, title="the forecast's maximum, all events",
                                                       period="maximum"),
                              staging / RELIABILITY_MAXIMUM_PLOT)
            plots.save_figure(plots.reliability_figure(overall_scores, title="the rain over the forecast, all events",
                                                       period="accumulation"),
                              staging / RELIABILITY_ACCUMULATION_PLOT)
        for result in results:
            if result.case is None or result.map_axes is None:
                continue
            title = f"{result.event_id}, forecast from {result.case.reference_time:%Y-%m-%d %H:%M}"
            figure = plots.maps_figure(result.case.observed, result.case.forecasts,
                                       x_km=result.map_axes.x, y_km=result.map_axes.y, axis_unit=result.map_axes.unit,
                                       probabilities=result.case.probabilities,
                                       probability_threshold_mmh=settings.probability_thresholds_mmh[0], title=title)
            plots.save_figure(figure, staging / f"maps_{_safe_name(result.event_id)}.png")
        (staging / SCORES_MARKDOWN).write_text(render_markdown(report), encoding="utf-8")
        # scores.json last: its presence means the rest of the report is in place
        (staging / SCORES_JSON).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n",
                                           encoding="utf-8")
        names = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
        for name in sorted(names, key=lambda n: n == SCORES_JSON):
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
