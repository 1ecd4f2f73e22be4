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
pixels: its probability-matched mean (:func:`nowcast.ensemble.probability_matched_mean`)
under its own name, exactly as a deterministic method, and its members as an ensemble
(CRPS, Brier score and skill against ``brier_reference``, reliability, ROC, rank
histogram, spread/skill, first member's spectra; see :mod:`nowcast.verification`).
Deterministic methods are scored as without ``members``.

Output, written into ``out_dir`` file by file (each to a temporary name, then
renamed, and only once every forecast is done): ``scores.json`` (everything),
``scores.md`` (tables), ``csi_vs_lead.png``, ``spectrum.png`` and one
``maps_EVENT.png`` per event (observed and forecast rain at +30 and +60 min for the
start time with the most observed rain at those leads, with each ensemble's
probability of rain above the first probability threshold next to the observation;
axes in km, or in degrees on a latitude/longitude grid); with ensembles also
``reliability.png`` and ``rank_histogram.png``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.ensemble import exceedance_probability, probability_matched_mean
from nowcast.errors import InputError, SequenceError
from nowcast.forecasters import Forecaster, get_forecaster
from nowcast.report import render_markdown
from nowcast.sequence import DIMS, UNITS, _is_geographic, pixel_size_km
from nowcast.verification import Scores, ScoreSettings, accumulate, key

logger = logging.getLogger(__name__)

Loader = Callable[[str], xr.DataArray]

DEFAULT_STRIDE = 6
MIN_RAIN_MMH = 0.1
SCORES_JSON = "scores.json"
SCORES_MARKDOWN = "scores.md"
CSI_PLOT = "csi_vs_lead.png"
SPECTRUM_PLOT = "spectrum.png"
RELIABILITY_PLOT = "reliability.png"
RANK_HISTOGRAM_PLOT = "rank_histogram.png"
#: The Brier skill reference when it is among the methods scored as ensembles.
DEFAULT_BRIER_REFERENCE = "steps"
# Pixel sizes outside this range (km) are no radar grid: most likely its units were misread.
_PLAUSIBLE_PIXEL_KM = (0.05, 50.0)

SKIP_EMPTY_PAST = "a past frame has no data"
SKIP_DRY_PAST = "no rain in the past frames"
SKIP_TIME_GAP = "gap in the time series"
SKIP_NO_OBSERVATIONS = "no observed data in the future frames"


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
    measured against (the default, ``steps``, only where it is among them; None: none).
    Returns the content of ``scores.json``. Lead times are ``steps`` times the event's
    time step, so with 12 steps a 10-min event is scored up to +120 min.
    """
    methods, events = list(dict.fromkeys(methods)), list(dict.fromkeys(events))
    out_dir = Path(out_dir)
    _check_arguments(methods, events, n_input=n_input, steps=steps, stride=stride, out_dir=out_dir)
    _check_ensemble_arguments(members, seed)
    settings = settings or ScoreSettings()
    plan = _plan(_forecasters(methods, n_input, models_dir), members, seed, brier_reference)
    if loader is None:
        from nowcast.io.catalogue import load_event

        loader = functools.partial(load_event, on_missing="nan")
    started, started_at = time.perf_counter(), datetime.now(UTC)

    # every event, one start time after another, every method on the same past frames
    forecast_seconds: dict[str, list[float]] = {name: [] for name in methods}
    results: list[_EventResult] = []
    with _progress_bar(progress, console) as bar:
        task = bar.add_task("evaluating", total=None)
        for event_id in events:
            bar.update(task, description=f"loading {event_id}")
            results.append(_evaluate_event(
                event_id, loader(event_id), plan, n_input=n_input, steps=steps, stride=stride,
                settings=settings, min_rain_mmh=min_rain_mmh, forecast_seconds=forecast_seconds,
                bar=bar, task=task,
            ))

    # the report: the events' sums added up, then the files
    overall = plan.new_scores(settings)
    for result in results:
        for name in methods:
            overall[name].merge(result.scores[name])
    report = _report(plan, results, overall, forecast_seconds, settings=settings, n_input=n_input,
                     steps=steps, stride=stride, min_rain_mmh=min_rain_mmh, started_at=started_at,
                     runtime=time.perf_counter() - started)
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


def _check_ensemble_arguments(members: int | None, seed: int) -> None:
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


def start_indices(n_frames: int, n_input: int, steps: int, stride: int) -> list[int]:
    """Index of the first past frame of every start time that has past and future frames."""
    return list(range(0, n_frames - n_input - steps + 1, stride))


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
        lead_minutes = [step_s / 60.0 * (k + 1) for k in range(steps)]
        map_leads = [lead for lead in lead_minutes if lead in settings.spectrum_leads_minutes] or sorted(
            {lead_minutes[(steps - 1) // 2], lead_minutes[-1]})
        return cls(times, steps_s, step_s, lead_minutes, map_leads, [lead_minutes.index(m) for m in map_leads])


def _evaluate_event(
    event_id: str,
    sequence: xr.DataArray,
    plan: _Methods,
    *,
    n_input: int,
    steps: int,
    stride: int,
    settings: ScoreSettings,
    min_rain_mmh: float,
    forecast_seconds: dict[str, list[float]],
    bar: Any,
    task: Any,
) -> _EventResult:
    clock = _Clock.of(event_id, sequence, steps, settings)
    result = _EventResult(
        event_id=event_id, n_frames=len(clock.times), time_step_minutes=clock.step_s / 60.0,
        shape=(sequence.sizes["y"], sequence.sizes["x"]), pixel_size_km=pixel_size_km(sequence),
        scores=plan.new_scores(settings), map_axes=_MapAxes.of(sequence),
    )
    if not _PLAUSIBLE_PIXEL_KM[0] <= result.pixel_size_km <= _PLAUSIBLE_PIXEL_KM[1]:
        logger.warning("event %s: pixels of %.3g km are no radar grid's; check its projection and pixel size "
                       "(FSS windows and spectra are in km)", event_id, result.pixel_size_km)
    starts = start_indices(len(clock.times), n_input, steps, stride)
    result.n_start_times = len(starts)
    if not starts:
        logger.warning("event %s: %d frames are too few for %d past and %d future frames",
                       event_id, len(clock.times), n_input, steps)
    n_methods = len(plan.forecasters)
    planned = next(t.total for t in bar.tasks if t.id == task) or 0
    bar.update(task, description=event_id, total=planned + len(starts) * n_methods)
    values = sequence.values
    totals = {name: _totals(scores) for name, scores in result.scores.items()}
    for start in starts:
        stop = start + n_input + steps
        reference = clock.times[start + n_input - 1]
        reason = skip_reason(values[start:start + n_input], values[start + n_input:stop],
                             clock.steps_s[start:stop - 1], clock.step_s, min_rain_mmh)
        if reason is not None:
            logger.info("event %s, start %s: skipped (%s)", event_id, reference, reason)
            result.skipped[reason] += 1
            result.skipped_start_times.append({"time": reference.isoformat(), "reason": reason})
            bar.advance(task, n_methods)
            continue
        past, observed = sequence.isel(time=slice(start, start + n_input)), values[start + n_input:stop]
        seed = plan.start_seed(event_id, reference) if plan.ensembles else None
        forecasts = _forecast_all(plan, past, steps, seed, forecast_seconds, bar, task)
        accumulate(result.scores, observed, forecasts.deterministic, members=forecasts.members,
                   lead_minutes=clock.lead_minutes, pixel_size_km=result.pixel_size_km)
        totals = _record_start_time(result, totals, reference, seed, settings)
        _keep_map_case(result, clock, reference, observed, forecasts, settings)
    skipped = sum(result.skipped.values())
    logger.info("event %s: %d start times, %d evaluated, %d skipped%s", event_id, result.n_start_times,
                result.n_evaluated, skipped,
                f" ({', '.join(f'{n} {r}' for r, n in result.skipped.items())})" if skipped else "")
    return result


def _forecast_all(plan: _Methods, past: xr.DataArray, steps: int, seed: int | None,
                  forecast_seconds: dict[str, list[float]], bar: Any, task: Any) -> _Forecasts:
    """Every method's forecast from the same past, timed; an ensemble's deterministic one is its members'
    probability-matched mean."""
    forecasts = _Forecasts({}, {})
    for name, forecaster in plan.forecasters.items():
        ensemble = name in plan.ensembles
        tic = time.perf_counter()
        fields = (forecaster.forecast(past, steps, members=plan.members, seed=seed) if ensemble
                  else forecaster.forecast(past, steps)).values
        forecast_seconds[name].append(time.perf_counter() - tic)
        if ensemble:
            forecasts.members[name] = fields
            forecasts.deterministic[name] = probability_matched_mean(fields)
        else:
            forecasts.deterministic[name] = fields
        bar.advance(task)
    return forecasts


def _record_start_time(result: _EventResult, totals: dict[str, dict[str, Any]], reference: pd.Timestamp,
                       seed: int | None, settings: ScoreSettings) -> dict[str, dict[str, Any]]:
    """Keep what this start time added to the sums (for the bootstrap); returns the totals after it."""
    after = {name: _totals(scores) for name, scores in result.scores.items()}
    record: dict[str, Any] = {"time": reference.isoformat(), **_added(totals, after, settings)}
    if seed is not None:
        record["seed"] = seed
        record.update(_added_ensemble(totals, after))
    result.start_time_sums.append(record)
    result.n_evaluated += 1
    return after


def _keep_map_case(result: _EventResult, clock: _Clock, reference: pd.Timestamp, observed: np.ndarray,
                   forecasts: _Forecasts, settings: ScoreSettings) -> None:
    """Keep the fields of the start time with the most observed rain at the map leads."""
    wet = int(sum(np.count_nonzero(observed[i] >= settings.thresholds_mmh[0]) for i in clock.map_lead_index))
    if result.case is not None and wet <= result.case.wet_pixels:
        return
    pairs = list(zip(clock.map_leads, clock.map_lead_index, strict=True))
    threshold = settings.probability_thresholds_mmh[:1]
    result.case = _Case(
        reference_time=reference, wet_pixels=wet,
        observed={lead: observed[i].copy() for lead, i in pairs},
        forecasts={name: {lead: fc[i].copy() for lead, i in pairs} for name, fc in forecasts.deterministic.items()},
        probabilities={name: {lead: exceedance_probability(members[:, i], threshold)[0] for lead, i in pairs}
                       for name, members in forecasts.members.items()},
    )


def _totals(scores: Scores) -> dict[str, Any]:
    totals = {"categorical": scores.contingency_counts(), "spectrum": scores.spectrum_totals(),
              "spectrum_matched": scores.spectrum_totals(matched=True)}
    if scores.members is not None:
        totals.update(crps=scores.crps_totals(), brier=scores.brier_totals())
    return totals


def _added(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
           settings: ScoreSettings) -> dict[str, Any]:
    """What one start time added to each method's sums, for resampling (:mod:`nowcast.bootstrap`).

    ``categorical``: method -> lead -> threshold -> [hits, misses, false alarms];
    ``spectrum`` and ``spectrum_matched``: method -> lead -> ratio wavelength -> [observed,
    forecast] power (0 where the grid does not resolve the wavelength).
    """
    ratio_index = settings.ratio_wavelength_indices()
    added: dict[str, Any] = {"categorical": {}, "spectrum": {}, "spectrum_matched": {}}
    for name, now in after.items():
        prior = before[name]
        for lead, by_threshold in now["categorical"].items():
            for thr, counts in by_threshold.items():
                old = prior["categorical"].get(lead, {}).get(thr, (0, 0, 0))
                added["categorical"].setdefault(name, {}).setdefault(key(lead), {})[key(thr)] = [
                    a - b for a, b in zip(counts, old, strict=True)]
        for kind in ("spectrum", "spectrum_matched"):
            for lead, (observed, forecast) in now[kind].items():
                old_observed, old_forecast = prior[kind].get(lead, (0.0, 0.0))
                added_observed, added_forecast = observed - old_observed, forecast - old_forecast
                added[kind].setdefault(name, {})[key(lead)] = {
                    key(w): [float(added_observed[i]), float(added_forecast[i])] for w, i in ratio_index.items()}
    return added


def _added_ensemble(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What one start time added to the ensembles' sums: ``crps``: method -> lead -> [CRPS sum, pixels];
    ``brier``: method -> lead -> threshold -> [Brier sum, pixels] (deterministic methods have none)."""
    added: dict[str, Any] = {"crps": {}, "brier": {}}
    for name, now in after.items():
        if "crps" not in now:
            continue
        prior = before[name]
        added["crps"][name] = {key(lead): _difference(sums, prior["crps"].get(lead, (0.0, 0)))
                               for lead, sums in now["crps"].items()}
        added["brier"][name] = {
            key(lead): {key(thr): _difference(sums, prior["brier"].get(lead, {}).get(thr, (0.0, 0)))
                        for thr, sums in by_threshold.items()}
            for lead, by_threshold in now["brier"].items()}
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
