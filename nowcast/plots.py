"""Figures of an evaluation: CSI against lead time, power spectra, forecast maps, and for
ensembles the reliability diagram and the rank histogram.

Built on :class:`matplotlib.figure.Figure` without pyplot, so nothing here touches
matplotlib's global state (no backend switch, no open-figure registry); PNGs are
rendered with the Agg canvas and written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator

from nowcast.files import replaced_atomically

WAVELENGTH_TICKS_KM = (2, 4, 8, 16, 32, 64, 128, 256, 512)
RAIN_LEVELS_MMH = (0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
PROBABILITY_LEVELS = (0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0)
OBSERVED_STYLE = {"color": "black", "linewidth": 2.0, "linestyle": "--", "label": "observed"}
MEMBER_STYLE = {"linestyle": ":", "linewidth": 1.2}
AXIS_NAMES = {"km": ("x (km)", "y (km)"), "°": ("longitude (°)", "latitude (°)")}


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = 110) -> Path:
    """Render ``figure`` as PNG into ``path`` (temporary file, then rename)."""
    path = Path(path)
    FigureCanvasAgg(figure)
    with replaced_atomically(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
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
            line = power_ax.plot(wavelength, forecast, label=method)[0]
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio_ax.plot(wavelength, forecast / observed, label=method, color=line.get_color())
            member = method_scores.get("spectrum_member", {}).get(lead)
            if member is not None:  # one realisation of an ensemble, next to its (smoother) deterministic forecast
                member_power = _as_float(member["forecast_power"])
                style = {**MEMBER_STYLE, "color": line.get_color(), "label": f"{method}, member 1"}
                power_ax.plot(wavelength, member_power, **style)
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratio_ax.plot(wavelength, member_power / observed, **style)
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
                *, x_km: np.ndarray, y_km: np.ndarray, axis_unit: str = "km",
                probabilities: Mapping[str, Mapping[float, np.ndarray]] | None = None,
                probability_threshold_mmh: float = 1.0, title: str = "") -> Figure:
    """Observed and forecast rain maps: one row per lead time, one column per source.

    ``x_km``, ``y_km``: the pixel centres in ``axis_unit`` ("km", or "°" on a latitude/longitude
    grid); ``probabilities``: ensemble method -> lead -> P(rate > ``probability_threshold_mmh``),
    drawn next to the observation.
    """
    probabilities = probabilities or {}
    leads = sorted(observed)
    columns = [("observed", "rain", observed),
               *((f"{m} P(>{probability_threshold_mmh:g} mm/h)", "probability", p) for m, p in probabilities.items()),
               *((m, "rain", f) for m, f in forecasts.items())]
    figure = Figure(figsize=(3.4 * len(columns) + 0.8 + 0.8 * bool(probabilities), 3.2 * len(leads) + 0.4),
                    layout="constrained")
    axes = figure.subplots(len(leads), len(columns), squeeze=False, sharex=True, sharey=True)
    styles = {"rain": rain_style(), "probability": probability_style()}
    extent = (float(x_km[0]), float(x_km[-1]), float(min(y_km[0], y_km[-1])), float(max(y_km[0], y_km[-1])))
    origin = "lower" if y_km[-1] > y_km[0] else "upper"
    images: dict[str, Any] = {}
    for row, lead in enumerate(leads):
        for column, (name, kind, fields) in enumerate(columns):
            ax = axes[row, column]
            images[kind] = ax.imshow(np.ma.masked_invalid(fields[lead]), **styles[kind], origin=origin,
                                     extent=extent, interpolation="nearest")
            ax.set_title(f"{name}, +{lead:g} min", fontsize=9)
            ax.tick_params(labelsize=7)
    x_name, y_name = AXIS_NAMES.get(axis_unit, (f"x ({axis_unit})", f"y ({axis_unit})"))
    for ax in axes[-1]:
        ax.set_xlabel(x_name, fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(y_name, fontsize=8)
    kinds = [kind for _, kind, _ in columns]
    if "rain" in images:
        rain_axes = [axes[r, c] for r in range(len(leads)) for c, kind in enumerate(kinds) if kind == "rain"]
        figure.colorbar(images["rain"], ax=rain_axes, label="rain rate (mm/h)", extend="max", shrink=0.8)
    if "probability" in images:
        probability_axes = [axes[r, c] for r in range(len(leads)) for c, kind in enumerate(kinds)
                            if kind == "probability"]
        figure.colorbar(images["probability"], ax=probability_axes, label="probability", shrink=0.8,
                        location="left")
    if title:
        figure.suptitle(title)
    return figure


def rain_style() -> dict[str, Any]:
    """The project's rain-rate colour scale (``cmap`` and ``norm`` for imshow), shared with the map frames of
    :mod:`nowcast.render`."""
    colormap = ListedColormap(
        ["#d4e9f7", "#9ccae8", "#5aa5d6", "#2a7fc0", "#3daa4c", "#f2d024", "#f08a24", "#d7301f"]
    ).with_extremes(bad="0.82", under="white", over="#7a0177")
    return {"cmap": colormap, "norm": BoundaryNorm(RAIN_LEVELS_MMH, colormap.N)}


def probability_style() -> dict[str, Any]:
    """The exceedance-probability colour scale, shared like :func:`rain_style`."""
    colormap = ListedColormap(["#fde0c5", "#facba6", "#f59e72", "#f2855d", "#ef6a4c", "#b3213b"]).with_extremes(
        bad="0.82", under="white")
    return {"cmap": colormap, "norm": BoundaryNorm(PROBABILITY_LEVELS, colormap.N)}


def _reliability_title(threshold: str, period: str | None) -> str:
    if period == "accumulation":
        return f"rain over the forecast > {threshold} mm"
    return f"rain rate > {threshold} mm/h" + (" at some lead" if period == "maximum" else "")


def reliability_figure(scores: Mapping[str, Mapping[str, Any]], *, title: str = "",
                       period: str | None = None) -> Figure:
    """Observed frequency against forecast probability, one panel per threshold, one line per ensemble method.

    The pixels of every lead time are pooled; the marker area grows with the pixels behind a point.
    ``period``: "maximum" for the probability of rate > threshold at some lead of the forecast,
    "accumulation" for that of the rain over the leads > threshold (mm); every forecast period pooled.
    """
    by = f"period_{period}" if period else "leads"
    ensembles = {m: {"leads": s["ensemble"][by]} for m, s in scores.items() if s.get("ensemble", {}).get(by)}
    thresholds = sorted({t for e in ensembles.values() for lead in e["leads"].values() for t in lead["probability"]},
                        key=float)
    figure = Figure(figsize=(4.0 * max(1, len(thresholds)), 4.0), layout="constrained")
    axes = figure.subplots(1, max(1, len(thresholds)), squeeze=False)[0]
    for ax, threshold in zip(axes, thresholds, strict=False):
        for method, ensemble in ensembles.items():
            event, no_event, probability = _pooled_reliability(ensemble, threshold)
            with np.errstate(invalid="ignore", divide="ignore"):
                frequency = event / (event + no_event)
            line = ax.plot(probability, frequency, label=method)[0]
            size = 60.0 * (event + no_event) / max(1, (event + no_event).max())
            ax.scatter(probability, frequency, s=size, color=line.get_color())
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8)
        ax.set_title(_reliability_title(threshold, period))
        ax.set_xlabel("forecast probability")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.0)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("observed frequency")
    if ensembles:
        axes[0].legend()
    if title:
        figure.suptitle(f"Reliability, {title}")
    return figure


def _pooled_reliability(ensemble: Mapping[str, Any], threshold: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    reliabilities = [lead["probability"][threshold]["reliability"] for lead in ensemble["leads"].values()]
    event = np.sum([r["n_event"] for r in reliabilities], axis=0).astype(np.float64)
    no_event = np.sum([r["n_no_event"] for r in reliabilities], axis=0).astype(np.float64)
    # each bin at the mean probability of its pixels over all leads (smoothed probabilities fill a bin unevenly)
    probability_sum = np.sum([r["probability_sum"] for r in reliabilities], axis=0)
    n_at = event + no_event
    with np.errstate(invalid="ignore", divide="ignore"):
        probability = np.where(n_at > 0, probability_sum / n_at, np.asarray(reliabilities[0]["probability"]))
    return event, no_event, probability


def rank_histogram_figure(scores: Mapping[str, Mapping[str, Any]], *, title: str = "") -> Figure:
    """Rank histogram of each ensemble method (every lead time's pixels pooled); flat is reliable."""
    ensembles = {m: s["ensemble"] for m, s in scores.items() if s.get("ensemble", {}).get("leads")}
    figure = Figure(figsize=(4.0 * max(1, len(ensembles)), 3.4), layout="constrained")
    axes = figure.subplots(1, max(1, len(ensembles)), squeeze=False)[0]
    for ax, (method, ensemble) in zip(axes, ensembles.items(), strict=False):
        leads = list(ensemble["leads"].values())
        pixels = np.array([lead["rank_histogram_pixels"] for lead in leads], dtype=np.float64)
        frequencies = np.array([_as_float(lead["rank_histogram"]) for lead in leads])
        weighted = np.nansum(frequencies * pixels[:, np.newaxis], axis=0) / max(1.0, pixels.sum())
        ranks = np.arange(len(weighted))
        ax.bar(ranks, weighted, width=0.9)
        ax.axhline(1.0 / len(weighted), color="black", linewidth=0.8, linestyle="--")
        ax.set_title(f"{method} ({ensemble['members']} members)")
        ax.set_xlabel("rank of the observation among the members")
    axes[0].set_ylabel("fraction of pixels")
    if title:
        figure.suptitle(f"Rank histogram, {title}")
    return figure


def _as_float(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
