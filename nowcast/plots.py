"""Figures of an evaluation: CSI against lead time, power spectra, forecast maps.

Built on :class:`matplotlib.figure.Figure` without pyplot, so nothing here touches
matplotlib's global state (no backend switch, no open-figure registry); PNGs are
rendered with the Agg canvas and written atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

WAVELENGTH_TICKS_KM = (2, 4, 8, 16, 32, 64, 128, 256, 512)
RAIN_LEVELS_MMH = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
OBSERVED_STYLE = {"color": "black", "linewidth": 2.0, "linestyle": "--", "label": "observed"}


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Render ``figure`` as PNG into ``path`` (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def csi_figure(scores: Mapping[str, Mapping[str, Any]], thresholds_mmh: Sequence[float],
               *, title: str = "") -> Figure:
    """CSI against lead time, one panel per threshold, one line per method.

    ``scores``: method -> the JSON form of :class:`nowcast.verification.Scores`.
    """
    figure = Figure(figsize=(4.2 * len(thresholds_mmh), 3.6), layout="constrained")
    axes = figure.subplots(1, len(thresholds_mmh), squeeze=False)[0]
    for ax, threshold in zip(axes, thresholds_mmh, strict=True):
        for method, method_scores in scores.items():
            leads, values = [], []
            for lead in method_scores["leads"].values():
                csi = lead["categorical"][f"{threshold:g}"]["CSI"]
                leads.append(lead["lead_minutes"])
                values.append(np.nan if csi is None else csi)
            ax.plot(leads, values, marker="o", markersize=3, label=method)
        ax.set_title(f"CSI, rain rate > {threshold:g} mm/h")
        ax.set_xlabel("lead time (min)")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("CSI")
    axes[0].legend()
    if title:
        figure.suptitle(title)
    return figure


def spectrum_figure(scores: Mapping[str, Mapping[str, Any]], *, band_km: tuple[float, float] = (8.0, 64.0),
                    title: str = "") -> Figure:
    """Mean radially averaged power spectra (top) and forecast/observed power (bottom).

    One column per lead time that has spectra; the observed spectrum is the one the
    first method was compared with (all methods share the observations' valid mask).
    """
    leads = sorted({lead for s in scores.values() for lead in s["spectrum"]}, key=float)
    figure = Figure(figsize=(4.6 * max(1, len(leads)), 6.4), layout="constrained")
    axes = figure.subplots(2, max(1, len(leads)), squeeze=False, sharex=True)
    for column, lead in enumerate(leads):
        power_ax, ratio_ax = axes[0, column], axes[1, column]
        observed_drawn = False
        for method, method_scores in scores.items():
            spectrum = method_scores["spectrum"].get(lead)
            if spectrum is None:
                continue
            wavelength = np.asarray(spectrum["wavelength_km"])
            observed = _as_float(spectrum["observed_power"])
            forecast = _as_float(spectrum["forecast_power"])
            if not observed_drawn:
                power_ax.plot(wavelength, observed, **OBSERVED_STYLE)
                observed_drawn = True
            power_ax.plot(wavelength, forecast, label=method)
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio_ax.plot(wavelength, forecast / observed, label=method)
        for ax in (power_ax, ratio_ax):
            ax.set_xscale("log")
            ax.axvspan(*band_km, color="0.9", zorder=0)
            ax.grid(alpha=0.3, which="major")
            ax.xaxis.set_major_locator(FixedLocator(WAVELENGTH_TICKS_KM))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_locator(NullLocator())
        power_ax.set_yscale("log")
        power_ax.set_title(f"+{lead} min")
        power_ax.set_ylabel("power")
        ratio_ax.axhline(1.0, color="black", linewidth=0.8)
        ratio_ax.set_ylabel("forecast / observed power")
        ratio_ax.set_xlabel("wavelength (km)")
    if leads:
        axes[0, 0].legend()
    if title:
        figure.suptitle(title)
    return figure


def maps_figure(observed: Mapping[float, np.ndarray], forecasts: Mapping[str, Mapping[float, np.ndarray]],
                *, x_km: np.ndarray, y_km: np.ndarray, title: str = "") -> Figure:
    """Observed and forecast rain maps: one row per lead time, one column per source."""
    leads = sorted(observed)
    columns = ["observed", *forecasts]
    figure = Figure(figsize=(3.4 * len(columns) + 0.8, 3.2 * len(leads) + 0.4), layout="constrained")
    axes = figure.subplots(len(leads), len(columns), squeeze=False, sharex=True, sharey=True)
    colormap = ListedColormap(
        ["#d4e9f7", "#9ccae8", "#5aa5d6", "#2a7fc0", "#3daa4c", "#f2d024", "#f08a24", "#d7301f"]
    ).with_extremes(bad="0.82", under="white", over="#7a0177")
    norm = BoundaryNorm(RAIN_LEVELS_MMH, colormap.N)
    extent = (float(x_km[0]), float(x_km[-1]), float(min(y_km[0], y_km[-1])), float(max(y_km[0], y_km[-1])))
    origin = "lower" if y_km[-1] > y_km[0] else "upper"
    image = None
    for row, lead in enumerate(leads):
        fields = [observed[lead], *(forecasts[m][lead] for m in forecasts)]
        for column, (name, values) in enumerate(zip(columns, fields, strict=True)):
            ax = axes[row, column]
            image = ax.imshow(np.ma.masked_invalid(values), cmap=colormap, norm=norm, origin=origin,
                              extent=extent, interpolation="nearest")
            ax.set_title(f"{name}, +{lead:g} min", fontsize=9)
            ax.tick_params(labelsize=7)
    if image is not None:
        figure.colorbar(image, ax=axes, label="rain rate (mm/h)", extend="max", shrink=0.8)
    if title:
        figure.suptitle(title)
    return figure


def _as_float(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
