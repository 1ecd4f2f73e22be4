"""The main job on an embedded default: a shipped model forecasting a real (or made) case.

The input is a window of a real radar event the default model never trained on (the
first validation event on its model card) when the archive is present, and synthetic
rain otherwise. The job writes the input and the forecast as CF-netCDF, scores the
model, persistence and extrapolation against what was observed, and draws the maps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from nowcast import artifacts
from nowcast.forecasters import get_forecaster
from nowcast.io.netcdf import write_netcdf
from nowcast.paths import data_root
from nowcast.verification import Scores, verify

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default-gan"


def demo_case(model: str, models_dir: str | Path | None, steps: int) -> tuple[xr.DataArray, str]:
    """Past and future frames of one case, and where they come from."""
    name = model.partition("@")[0]
    held_out: list[str] = []
    if name in artifacts.list_models(models_dir):
        held_out = artifacts.card(name, None, models_dir).get("training", {}).get("validation_events", [])
    if held_out and (data_root() / "radar").is_dir():
        from nowcast.io.catalogue import load_event

        event = held_out[0]
        sequence = load_event(event)
        wet = np.nanmean(sequence.values >= 1.0, axis=(1, 2))
        # the rainiest window that has 4 frames before it and `steps` after
        starts = np.arange(4, sequence.sizes["time"] - steps + 1)
        start = int(starts[np.argmax(wet[starts - 1])])
        return sequence.isel(time=slice(start - 4, start + steps)), f"real event {event} (held out)"
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    return synthetic_sequence(SyntheticRain(ny=256, nx=256, frames=4 + steps), seed=42), "synthetic rain"


def run_demo(out_dir: str | Path, *, model: str = DEFAULT_MODEL, models_dir: str | Path | None = None,
             steps: int = 12) -> dict[str, Any]:
    """Forecast one case with ``model`` and the baselines; write files into ``out_dir``."""
    from nowcast.plots import maps_figure, save_figure

    out = Path(out_dir)
    case, origin = demo_case(model, models_dir, steps)
    n_past = case.sizes["time"] - steps
    past, future = case.isel(time=slice(0, n_past)), case.isel(time=slice(n_past, None))
    write_netcdf(past, out / "input.nc")
    results: dict[str, Any] = {"case": origin, "grid": list(past.shape[1:]), "methods": {}}
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
