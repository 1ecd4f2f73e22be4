"""The main job on an embedded default: a shipped model forecasting a real (or made) case.

The input is a window of a real radar event the model never trained on (the first
validation event on its model card), taken in this order from: the local radar archive;
a sample of that event downloaded on first use and cached (:mod:`nowcast.io.samples`);
and, where neither can be had, synthetic rain, which only shows that the pipeline runs
and is labelled so. The job writes the input and the forecast as CF-netCDF, scores the
model, persistence and extrapolation against what was observed, and draws the maps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from nowcast import artifacts
from nowcast.errors import InputError
from nowcast.forecasters import get_forecaster
from nowcast.io.netcdf import write_netcdf
from nowcast.paths import data_root
from nowcast.verification import Scores, verify

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default-gan"
N_PAST = 4
SMOKE_TEST_LABEL = "synthetic rain: a smoke test of the pipeline, not a measure of skill"


class DemoCase(NamedTuple):
    """Past and future frames of one case, what they are, and whether scores on them mean nothing."""

    frames: xr.DataArray
    label: str
    smoke_test: bool


def demo_case(model: str, models_dir: str | Path | None, steps: int, *, download: bool = True) -> DemoCase:
    """The case to forecast: the local archive's held-out event, else its downloaded sample, else synthetic rain.

    ``download=False`` keeps off the network (a sample already in the cache is still used).
    """
    events = held_out_events(model, models_dir)
    case = _archive_case(events, steps) or _sample_case(events, steps, download=download)
    if case is not None:
        return case
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    logger.warning("no real radar event at hand: the demo runs on %s", SMOKE_TEST_LABEL)
    return DemoCase(synthetic_sequence(SyntheticRain(ny=256, nx=256, frames=N_PAST + steps), seed=42),
                    SMOKE_TEST_LABEL, smoke_test=True)


def held_out_events(model: str, models_dir: str | Path | None = None) -> list[str]:
    """Real events ``model`` never trained on, in the order the demo prefers them."""
    from nowcast.io.samples import DEFAULT_EVENT

    name, _, version = model.partition("@")
    if name not in artifacts.list_models(models_dir):
        return [DEFAULT_EVENT]  # persistence and extrapolation learn nothing: every event is held out
    card = artifacts.card(name, version or None, models_dir)
    return list(card.get("training", {}).get("validation_events", []))


def _archive_case(events: list[str], steps: int) -> DemoCase | None:
    if not events or not (data_root() / "radar").is_dir():
        return None
    from nowcast.io.catalogue import MissingFramesError, load_event

    try:
        sequence = load_event(events[0])
    except MissingFramesError as exc:  # an archive without this event: the sample may have it
        logger.warning("%s; trying the downloadable sample", exc)
        return None
    return DemoCase(rainiest_window(sequence, steps), f"real event {events[0]} (held out; local archive)", False)


def _sample_case(events: list[str], steps: int, *, download: bool) -> DemoCase | None:
    from nowcast.io.catalogue import load_event
    from nowcast.io.samples import SampleUnavailableError, available_samples, fetch_sample, load_manifest, sample_event

    event = next((e for e in events if e in available_samples()), None)
    if event is None:
        return None
    try:
        root = fetch_sample(event, offline=None if download else True)
    except SampleUnavailableError as exc:
        logger.warning("the sample of event %s is not available: %s", event, exc)
        return None
    sequence = load_event(sample_event(event), root=root)
    label = f"real event {event} (held out; downloaded sample, {load_manifest(event).credit})"
    return DemoCase(rainiest_window(sequence, steps), label, False)


def rainiest_window(sequence: xr.DataArray, steps: int) -> xr.DataArray:
    """The ``N_PAST + steps`` frames whose last past frame has the most rain above 1 mm/h."""
    n_frames = sequence.sizes["time"]
    if n_frames < N_PAST + steps:
        raise InputError(f"{steps} steps are too many for event {sequence.attrs.get('event_id', '')}: "
                         f"its {n_frames} frames allow at most {n_frames - N_PAST}", field="steps")
    wet = np.nanmean(sequence.values >= 1.0, axis=(1, 2))
    starts = np.arange(N_PAST, n_frames - steps + 1)
    start = int(starts[np.argmax(wet[starts - 1])])
    return sequence.isel(time=slice(start - N_PAST, start + steps))


def run_demo(out_dir: str | Path, *, model: str = DEFAULT_MODEL, models_dir: str | Path | None = None,
             steps: int = 12, download: bool = True) -> dict[str, Any]:
    """Forecast one case with ``model`` and the baselines; write files into ``out_dir``.

    The result's ``case`` says what was forecast, and ``smoke_test`` is true where that was
    synthetic rain (the scores then say nothing about skill). ``download=False`` keeps off
    the network.
    """
    from nowcast.plots import maps_figure, save_figure

    out = Path(out_dir)
    case, origin, smoke_test = demo_case(model, models_dir, steps, download=download)
    n_past = case.sizes["time"] - steps
    past, future = case.isel(time=slice(0, n_past)), case.isel(time=slice(n_past, None))
    write_netcdf(past, out / "input.nc")
    results: dict[str, Any] = {"case": origin, "smoke_test": smoke_test, "grid": list(past.shape[1:]), "methods": {}}
    forecasts = {}
    for name in (model, "persistence", "extrapolation"):
        forecaster = get_forecaster(name, models_dir=models_dir)
        forecast = forecaster.forecast(past, steps)
        forecasts[name] = forecast
        scores = verify(forecast, future, scores=Scores())
        results["methods"][name] = {f"csi_{t:g}mmh": {f"{k:g}": v for k, v in scores.csi(t).items()}
                                    for t in (1.0, 4.0)}
    write_netcdf(forecasts[model], out / "forecast.nc",
                 forecast_reference_time=past["time"].values[-1], attrs={"model": model})
    leads = {30.0: min(5, steps - 1), 60.0: steps - 1}
    figure = maps_figure({lead: future.values[i] for lead, i in leads.items()},
                         {name: {lead: f.values[i] for lead, i in leads.items()} for name, f in forecasts.items()},
                         x_km=past["x"].values / 1000.0, y_km=past["y"].values / 1000.0, title=origin)
    save_figure(figure, out / "maps.png")
    results["files"] = [str(out / f) for f in ("input.nc", "forecast.nc", "maps.png")]
    return results
