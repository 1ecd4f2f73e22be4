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

Output, written into ``out_dir`` file by file (each to a temporary name, then
renamed, and only once every forecast is done): ``scores.json`` (everything),
``scores.md`` (tables), ``csi_vs_lead.png``, ``spectrum.png`` and one
``maps_EVENT.png`` per event (observed and forecast rain at +30 and +60 min for the
start time with the most observed rain at those leads).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.errors import InputError, SequenceError
from nowcast.forecasters import Forecaster, get_forecaster
from nowcast.report import render_markdown
from nowcast.sequence import DIMS, UNITS, pixel_size_km
from nowcast.verification import Scores, ScoreSettings, accumulate, key

logger = logging.getLogger(__name__)

Loader = Callable[[str], xr.DataArray]

DEFAULT_STRIDE = 6
MIN_RAIN_MMH = 0.1
SCORES_JSON = "scores.json"
SCORES_MARKDOWN = "scores.md"
CSI_PLOT = "csi_vs_lead.png"
SPECTRUM_PLOT = "spectrum.png"

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
    x_km: np.ndarray | None = None
    y_km: np.ndarray | None = None


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
) -> dict[str, Any]:
    """Score ``methods`` on ``events`` and write the report into ``out_dir``.

    ``methods``: forecaster names (see :func:`nowcast.forecasters.get_forecaster`);
    ``events``: event ids handed to ``loader``, which returns the event's sequence
    (default: :func:`nowcast.io.catalogue.load_event`, with all-NaN frames for missing
    files); ``n_input``: past frames given to each forecast; ``steps``: frames
    forecast; ``stride``: frames between consecutive start times; ``min_rain_mmh``:
    the past must have a pixel at least this wet; ``console``: a
    :class:`rich.console.Console` for the progress bar (default: one on stderr).
    Returns the content of ``scores.json``. Lead times are ``steps`` times the event's
    time step, so with 12 steps a 10-min event is scored up to +120 min.
    """
    methods, events = list(dict.fromkeys(methods)), list(dict.fromkeys(events))
    out_dir = Path(out_dir)
    _check_arguments(methods, events, n_input=n_input, steps=steps, stride=stride, out_dir=out_dir)
    settings = settings or ScoreSettings()
    forecasters = _forecasters(methods, n_input, models_dir)
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
                event_id, loader(event_id), forecasters, n_input=n_input, steps=steps, stride=stride,
                settings=settings, min_rain_mmh=min_rain_mmh, forecast_seconds=forecast_seconds,
                bar=bar, task=task,
            ))

    # the report: the events' sums added up, then the files
    overall = {name: Scores(settings) for name in methods}
    for result in results:
        for name in methods:
            overall[name].merge(result.scores[name])
    report = _report(methods, results, overall, forecast_seconds, settings=settings, n_input=n_input,
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
    forecasters: dict[str, Forecaster],
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
        scores={name: Scores(settings) for name in forecasters},
        x_km=sequence["x"].values / 1000.0, y_km=sequence["y"].values / 1000.0,
    )
    starts = start_indices(len(clock.times), n_input, steps, stride)
    result.n_start_times = len(starts)
    if not starts:
        logger.warning("event %s: %d frames are too few for %d past and %d future frames",
                       event_id, len(clock.times), n_input, steps)
    planned = next(t.total for t in bar.tasks if t.id == task) or 0
    bar.update(task, description=event_id, total=planned + len(starts) * len(forecasters))
    values = sequence.values
    totals = {name: _totals(result.scores[name]) for name in forecasters}
    for start in starts:
        stop = start + n_input + steps
        reference = clock.times[start + n_input - 1]
        reason = skip_reason(values[start:start + n_input], values[start + n_input:stop],
                             clock.steps_s[start:stop - 1], clock.step_s, min_rain_mmh)
        if reason is not None:
            logger.info("event %s, start %s: skipped (%s)", event_id, reference, reason)
            result.skipped[reason] += 1
            result.skipped_start_times.append({"time": reference.isoformat(), "reason": reason})
            bar.advance(task, len(forecasters))
            continue
        past, observed = sequence.isel(time=slice(start, start + n_input)), values[start + n_input:stop]
        forecasts = _forecast_all(forecasters, past, steps, forecast_seconds, bar, task)
        accumulate(result.scores, observed, forecasts, lead_minutes=clock.lead_minutes,
                   pixel_size_km=result.pixel_size_km)
        after = {name: _totals(result.scores[name]) for name in forecasters}
        result.start_time_sums.append({"time": reference.isoformat(), **_added(totals, after, settings)})
        totals = after
        result.n_evaluated += 1
        _keep_map_case(result, clock, reference, observed, forecasts, settings)
    skipped = sum(result.skipped.values())
    logger.info("event %s: %d start times, %d evaluated, %d skipped%s", event_id, result.n_start_times,
                result.n_evaluated, skipped,
                f" ({', '.join(f'{n} {r}' for r, n in result.skipped.items())})" if skipped else "")
    return result


def _forecast_all(forecasters: dict[str, Forecaster], past: xr.DataArray, steps: int,
                  forecast_seconds: dict[str, list[float]], bar: Any, task: Any) -> dict[str, np.ndarray]:
    """Every method's forecast from the same past, timed."""
    forecasts = {}
    for name, forecaster in forecasters.items():
        tic = time.perf_counter()
        forecasts[name] = forecaster.forecast(past, steps).values
        forecast_seconds[name].append(time.perf_counter() - tic)
        bar.advance(task)
    return forecasts


def _keep_map_case(result: _EventResult, clock: _Clock, reference: pd.Timestamp, observed: np.ndarray,
                   forecasts: dict[str, np.ndarray], settings: ScoreSettings) -> None:
    """Keep the fields of the start time with the most observed rain at the map leads."""
    wet = int(sum(np.count_nonzero(observed[i] >= settings.thresholds_mmh[0]) for i in clock.map_lead_index))
    if result.case is not None and wet <= result.case.wet_pixels:
        return
    pairs = list(zip(clock.map_leads, clock.map_lead_index, strict=True))
    result.case = _Case(
        reference_time=reference, wet_pixels=wet,
        observed={lead: observed[i].copy() for lead, i in pairs},
        forecasts={name: {lead: fc[i].copy() for lead, i in pairs} for name, fc in forecasts.items()},
    )


def _totals(scores: Scores) -> dict[str, Any]:
    return {"categorical": scores.contingency_counts(), "spectrum": scores.spectrum_totals(),
            "spectrum_matched": scores.spectrum_totals(matched=True)}


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


def _report(methods: list[str], results: list[_EventResult], overall: dict[str, Scores],
            forecast_seconds: dict[str, list[float]], *, settings: ScoreSettings, n_input: int, steps: int,
            stride: int, min_rain_mmh: float, started_at: datetime, runtime: float) -> dict[str, Any]:
    skipped_total: Counter[str] = Counter()
    for result in results:
        skipped_total.update(result.skipped)
    return {
        "config": {
            "methods": methods,
            "events": [r.event_id for r in results],
            "n_input": n_input,
            "steps": steps,
            "stride": stride,
            "min_rain_mmh": min_rain_mmh,
            **settings.to_dict(),
        },
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
                "scores": {name: r.scores[name].to_dict() for name in methods},
            }
            for r in results
        },
        "overall": {
            "n_start_times": sum(r.n_start_times for r in results),
            "n_evaluated": sum(r.n_evaluated for r in results),
            "skipped": dict(skipped_total),
            "scores": {name: overall[name].to_dict() for name in methods},
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
        for result in results:
            if result.case is None or result.x_km is None or result.y_km is None:
                continue
            title = f"{result.event_id}, forecast from {result.case.reference_time:%Y-%m-%d %H:%M}"
            figure = plots.maps_figure(result.case.observed, result.case.forecasts,
                                       x_km=result.x_km, y_km=result.y_km, title=title)
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
