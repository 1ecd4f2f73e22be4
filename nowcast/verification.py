"""Verification of rain-rate nowcasts against radar observations, per lead time.

Scores are *accumulated* over many forecasts and only turned into ratios at the end,
so that an evaluation over many start times and events weighs every verified pixel
alike (the contingency tables are summed, never the CSI values averaged):

* categorical scores at ``THRESHOLDS_MMH`` (1, 4, 8 mm/h): hits, misses, false
  alarms and correct negatives, and from their sums CSI, POD, FAR
  (``pysteps.verification.det_cat_fct_*``; an event is ``rate > threshold``);
* the fractions skill score (FSS) at ``FSS_THRESHOLDS_MMH`` (1, 4 mm/h) over
  neighbourhoods of ``FSS_SCALES_KM`` (1, 4, 16, 32 km, turned into pixels with the
  grid's pixel size; an event is ``rate >= threshold``, as in pysteps);
* the mean absolute error and mean error (bias) in mm/h
  (``pysteps.verification.det_cont_fct_*``);
* the radially averaged power spectrum (``pysteps.utils.spectral.rapsd``) of forecast
  and observation at ``SPECTRUM_LEADS_MINUTES`` (+30, +60 min), on a common grid of
  wavelengths in km so that events on different grids can be pooled, with the ratio of
  forecast to observed power at 8, 16, 32 and 64 km: a blurry forecast has a ratio
  well below 1 at the small scales. Power is summed over forecasts before the ratio
  is taken, so forecasts with more rain weigh more; wavelengths a grid does not
  resolve (below two pixels, beyond its size) are left out for that grid;
* the same spectrum of the forecast *matched to the observed distribution* (pysteps'
  ``nonparam_match_empirical_cdf``: every valid pixel keeps its rank in the forecast
  but takes the observed value of that rank, dry stays dry): a texture measure that
  intensity bias does not drive. A forecast with too much rain has more power at every
  scale; matched, what is left is where its rain is, so a blurry forecast still shows
  too little small-scale power and one that only over-forecasts no longer shows too much.

No data is never rain-free. pysteps' categorical accumulator counts a NaN observation
as "no event" (``NaN > thr`` is false), which would turn every pixel outside radar
range into a correct negative or a false alarm; FSS and RAPSD cannot take NaN at all.
So for every lead time the *valid mask* is the set of pixels where the observation and
every forecast being compared are finite, and:

* contingency tables and MAE are computed on the valid pixels only (the fields are
  reduced to those pixels before they reach pysteps);
* FSS and the spectra are computed on fields set to 0 mm/h outside the valid mask,
  in forecast and observation alike. Outside the mask both fields then agree exactly,
  so the excluded pixels add nothing to the FSS numerator (the squared difference of
  the fractions) and nothing to its denominator; near the mask's edge a neighbourhood
  that reaches outside counts the outside as dry in both fields alike. For the spectra
  the edge of the mask adds the same artificial small-scale power to both fields,
  which is why the *ratio* of forecast to observed power is the number to read.

Comparing several methods on the same observations (:func:`accumulate`) uses one
valid mask for all of them, so every method is scored on exactly the same pixels.

Distances are in km on every grid: the caller gives the pixel size in km
(:func:`nowcast.sequence.pixel_size_km`, geodesic on latitude/longitude grids), FSS
windows are the scales in km over it, and a window is capped at ``2 * max(ny, nx) - 1``
pixels (:func:`fss_windows`): from there on every window covers the whole grid, so a
larger one gives the same FSS, only slower. The spectrum is pysteps' ``rapsd`` computed
with its rings grouped once per grid shape (:func:`radial_spectrum`, the same numbers).

Ensembles (``members`` of :func:`accumulate`: the members of a method, its deterministic
forecast being e.g. their probability-matched mean) add, on the same valid pixels (every
member finite):

* the CRPS of the members' empirical distribution, summed over pixels (:func:`crps_sums`;
  not pysteps' ``CRPS_accum``, which drops an interval wherever the observation equals a
  member, as a dry observation equals every dry member, and so scored wet members over
  dry ground too kindly);
* per threshold of ``probability_thresholds_mmh`` the pixels binned by their forecast
  probability (the fraction of members above it, or that fraction neighbourhood-processed
  where ``probability_neighbourhood_km_per_minute`` asks for it, for every ensemble alike),
  with and without the event observed (:class:`ProbabilityCounts`): the Brier score,
  reliability diagram and ROC curve all come from these bins, so they add exactly over
  forecasts and events; the Brier skill against a reference method is
  ``1 - BS / BS_reference`` from the summed Brier scores;
* the rank histogram (:class:`RankHistogram`, pysteps' with its ``X_min``, ties shared
  evenly instead of drawn at random so that a run is reproducible);
* the spread/skill ratio: the spread ``sqrt((M + 1) / M * mean member variance)`` (the
  factor makes a statistically consistent M-member ensemble score 1, Fortin et al. 2014)
  over the RMSE of the ensemble mean;
* the spectra (plain and matched) of the first member, a single realisation to set
  against the smoother deterministic forecast;
* the forecast's maximum (:class:`PeriodScores`): the CRPS of the members' maxima over the
  leads against the observed maximum, and per threshold the probability of rate >
  threshold at some lead of the forecast, the fraction of the members above it at any lead
  (:func:`nowcast.ensemble.period_exceedance_probability`, the published
  ``max_probabilities``), against whether the observation was, on the pixels valid at every
  lead. Binned like the per-lead probabilities, so the Brier score and skill, reliability
  and ROC of "more than 10 mm/h here in the next hour" add up the same way. It is keyed by
  the period's last lead (+60 min for 12 five-minute steps, +72 min for six-minute ones);
* the rain over the period (:class:`PeriodScores` too): each lead's rate times the time it
  falls (:func:`nowcast.ensemble.lead_hours`) summed over the leads, in mm, the members'
  against the observed, on the same pixels: its CRPS, and per threshold of
  ``accumulation_thresholds_mm`` the fraction of the members above it (the published
  ``accumulation_probabilities``) binned like the rest.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.ndimage import uniform_filter

from nowcast.ensemble import (
    ensemble_mean,
    exceedance_probability,
    lead_hours,
    neighbourhood_probability,
    neighbourhood_window_pixels,
    period_accumulation,
    period_exceedance_probability,
)
from nowcast.errors import SequenceError
from nowcast.products import DEFAULT_ACCUMULATION_THRESHOLDS_MM, probability_matched_mean_of
from nowcast.sequence import lead_minutes_of, pixel_size_km

logger = logging.getLogger(__name__)

THRESHOLDS_MMH: tuple[float, ...] = (1.0, 4.0, 8.0)
FSS_THRESHOLDS_MMH: tuple[float, ...] = (1.0, 4.0)
FSS_SCALES_KM: tuple[float, ...] = (1.0, 4.0, 16.0, 32.0)
SPECTRUM_LEADS_MINUTES: tuple[float, ...] = (30.0, 60.0)
SPECTRUM_RATIO_WAVELENGTHS_KM: tuple[float, ...] = (8.0, 16.0, 32.0, 64.0)
# Quarter-octave steps from 2 to 512 km: fine enough to draw the spectrum, and holding
# the ratio wavelengths exactly.
SPECTRUM_WAVELENGTHS_KM: tuple[float, ...] = tuple(float(2.0 ** (k / 4)) for k in range(4, 37))
CATEGORICAL_SCORES: tuple[str, ...] = ("CSI", "POD", "FAR")
#: Rank histogram: pixels where the observation and every member are below this are left out.
RANK_HISTOGRAM_MIN_MMH = 0.1
# CRPS pixels per pass: bounds the sorted (member, pixel) copy on large grids.
_CRPS_CHUNK_PIXELS = 1 << 20


@dataclass(frozen=True)
class ScoreSettings:
    """Which scores to accumulate (thresholds in mm/h, scales and wavelengths in km)."""

    thresholds_mmh: tuple[float, ...] = THRESHOLDS_MMH
    fss_thresholds_mmh: tuple[float, ...] = FSS_THRESHOLDS_MMH
    fss_scales_km: tuple[float, ...] = FSS_SCALES_KM
    spectrum_leads_minutes: tuple[float, ...] = SPECTRUM_LEADS_MINUTES
    spectrum_wavelengths_km: tuple[float, ...] = SPECTRUM_WAVELENGTHS_KM
    spectrum_ratio_wavelengths_km: tuple[float, ...] = SPECTRUM_RATIO_WAVELENGTHS_KM
    probability_thresholds_mmh: tuple[float, ...] = THRESHOLDS_MMH
    #: the rain (mm) over each forecast's leads whose exceedance probabilities are scored
    accumulation_thresholds_mm: tuple[float, ...] = DEFAULT_ACCUMULATION_THRESHOLDS_MM
    rank_histogram_min_mmh: float = RANK_HISTOGRAM_MIN_MMH
    #: Every ensemble's probabilities scored after neighbourhood processing, in a square
    #: window growing this many km per minute of lead (0: the members' own fractions).
    probability_neighbourhood_km_per_minute: float = 0.0

    def __post_init__(self) -> None:
        rate = self.probability_neighbourhood_km_per_minute
        if not (np.isfinite(rate) and rate >= 0):
            raise ValueError(f"the probability neighbourhood grows by a non-negative number of km per minute; "
                             f"got {rate}")
        for given, what in ((self.probability_thresholds_mmh, "probability thresholds must be increasing, "
                                                              "non-negative rain rates (mm/h)"),
                            (self.accumulation_thresholds_mm, "accumulation thresholds must be increasing, "
                                                              "non-negative amounts of rain (mm)")):
            thresholds = np.asarray(given, dtype=np.float64)
            if not (thresholds.size and np.all(np.isfinite(thresholds)) and thresholds[0] >= 0
                    and np.all(np.diff(thresholds) > 0)):
                raise ValueError(f"{what}; got {', '.join(f'{t:g}' for t in thresholds) or 'none'}")

    def ratio_wavelength_indices(self) -> dict[float, int]:
        """Each ratio wavelength's index on the spectrum's wavelength grid (the nearest)."""
        wavelengths = np.asarray(self.spectrum_wavelengths_km)
        return {w: int(np.argmin(np.abs(wavelengths - w))) for w in self.spectrum_ratio_wavelengths_km}

    def to_dict(self) -> dict[str, Any]:
        return {
            "thresholds_mmh": list(self.thresholds_mmh),
            "fss_thresholds_mmh": list(self.fss_thresholds_mmh),
            "fss_scales_km": list(self.fss_scales_km),
            "spectrum_leads_minutes": list(self.spectrum_leads_minutes),
            "spectrum_ratio_wavelengths_km": list(self.spectrum_ratio_wavelengths_km),
        }

    def ensemble_dict(self) -> dict[str, Any]:
        """The settings of the ensemble scores (apart from :meth:`to_dict`, so deterministic reports keep theirs)."""
        return {
            "probability_thresholds_mmh": list(self.probability_thresholds_mmh),
            "accumulation_thresholds_mm": list(self.accumulation_thresholds_mm),
            "rank_histogram_min_mmh": self.rank_histogram_min_mmh,
            "probability_neighbourhood_km_per_minute": self.probability_neighbourhood_km_per_minute,
        }


def scale_in_pixels(scale_km: float, pixel_size_km: float) -> int:
    """The FSS window (odd or even, at least one pixel) closest to ``scale_km``."""
    return max(1, round(scale_km / pixel_size_km))


def fss_windows(scales_km: Iterable[float], pixel_size_km: float, shape: tuple[int, ...]) -> dict[float, int]:
    """The FSS window in pixels of each scale on a grid of ``shape`` (y, x) with pixels of ``pixel_size_km``.

    A window is capped at ``2 * max(ny, nx) - 1`` pixels. A window that wide, centred on
    any pixel, already covers the whole grid, so every fraction is the grid's count of
    events over the window's area in forecast and observation alike, and FSS (a ratio of
    squared fractions) is the same for any larger window; the moving average's cost,
    though, grows with the window.
    """
    check_pixel_size(pixel_size_km)
    cap = 2 * max(shape) - 1
    return {scale: min(scale_in_pixels(scale, pixel_size_km), cap) for scale in scales_km}


def check_pixel_size(pixel_size_km: float) -> None:
    if not (np.isfinite(pixel_size_km) and pixel_size_km > 0):
        raise ValueError(f"pixel size must be a positive number of km; got {pixel_size_km}")


def key(value: float) -> str:
    """The JSON key of a threshold, scale, lead time or wavelength: ``1``, ``2.5``."""
    return f"{value:g}"


class Contingency:
    """The contingency table at one threshold, summed over forecasts: the one place CSI is counted.

    pySTEPS' ``det_cat_fct_*`` (an event is ``rate > threshold``) on the pixels where both
    fields are finite. The evaluation, the training's validation and the benchmarks all
    count with this.
    """

    COUNTS = ("hits", "misses", "false_alarms", "correct_negatives")

    def __init__(self, threshold: float) -> None:
        from pysteps.verification import det_cat_fct_init

        self.threshold = threshold
        self.table = det_cat_fct_init(threshold)
        for count in self.COUNTS:
            self.table[count] = np.int64(0)

    def add(self, forecast: np.ndarray, observed: np.ndarray) -> None:
        """Count one forecast of ``observed`` (same shape, mm/h; non-finite pixels of either are left out)."""
        from pysteps.verification import det_cat_fct_accum

        forecast, observed = np.asarray(forecast), np.asarray(observed)
        valid = np.isfinite(forecast) & np.isfinite(observed)
        det_cat_fct_accum(self.table, forecast[valid], observed[valid])

    def merge(self, other: Contingency) -> None:
        for count in self.COUNTS:
            self.table[count] = self.table[count] + other.table[count]

    def counts(self) -> tuple[int, int, int]:
        """(hits, misses, false alarms)."""
        return int(self.table["hits"]), int(self.table["misses"]), int(self.table["false_alarms"])

    @property
    def csi(self) -> float:
        return float(csi(*self.counts()))

    def scores(self) -> dict[str, Any]:
        """The four counts and CSI, POD, FAR (NaN where undefined)."""
        from pysteps.verification import det_cat_fct_compute

        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = det_cat_fct_compute(self.table, list(CATEGORICAL_SCORES))
        return {**{count: int(self.table[count]) for count in self.COUNTS},
                **{name: float(ratios[name]) for name in CATEGORICAL_SCORES}}


def csi(hits: Any, misses: Any, false_alarms: Any) -> Any:
    """CSI = hits / (hits + misses + false alarms), NaN without any event; works on arrays of counts."""
    hits = np.asarray(hits, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / (hits + np.asarray(misses, dtype=np.float64) + np.asarray(false_alarms, dtype=np.float64))


def _new_continuous() -> dict[str, Any]:
    from pysteps.verification import det_cont_fct_init

    return det_cont_fct_init()


@dataclass
class SpectrumSums:
    """Summed power of observations and forecasts on the common wavelength grid."""

    n_wavelengths: int
    observed: np.ndarray = field(init=False)
    forecast: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)
    n_forecasts: int = 0

    def __post_init__(self) -> None:
        self.observed = np.zeros(self.n_wavelengths)
        self.forecast = np.zeros(self.n_wavelengths)
        self.count = np.zeros(self.n_wavelengths, dtype=np.int64)

    def add(self, observed_power: np.ndarray, forecast_power: np.ndarray) -> None:
        covered = np.isfinite(observed_power) & np.isfinite(forecast_power)
        self.observed[covered] += observed_power[covered]
        self.forecast[covered] += forecast_power[covered]
        self.count[covered] += 1
        self.n_forecasts += 1

    def merge(self, other: SpectrumSums) -> None:
        self.observed += other.observed
        self.forecast += other.forecast
        self.count += other.count
        self.n_forecasts += other.n_forecasts

    def mean_power(self) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.observed / self.count, self.forecast / self.count


class LeadScores:
    """Accumulated scores of one method at one lead time."""

    def __init__(self, settings: ScoreSettings) -> None:
        self.settings = settings
        self.n_forecasts = 0
        self.contingency = {thr: Contingency(thr) for thr in settings.thresholds_mmh}
        # pysteps FSS objects; their "scale" holds km (the pixel window differs per grid)
        from pysteps.verification import fss_init

        self.fss = {(thr, scale): fss_init(thr, scale)
                    for thr in settings.fss_thresholds_mmh for scale in settings.fss_scales_km}
        self.continuous = _new_continuous()

    def merge(self, other: LeadScores) -> None:
        from pysteps.verification import det_cont_fct_merge, fss_merge

        self.n_forecasts += other.n_forecasts
        for thr, table in self.contingency.items():
            table.merge(other.contingency[thr])
        for fss_key in self.fss:
            self.fss[fss_key] = fss_merge(self.fss[fss_key], other.fss[fss_key])
        if other.continuous["n"] is not None:
            if self.continuous["n"] is None:
                self.continuous = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                   for k, v in other.continuous.items()}
            else:
                self.continuous = det_cont_fct_merge(self.continuous, other.continuous)

    def categorical(self, threshold: float) -> dict[str, Any]:
        return self.contingency[threshold].scores()

    def fractions_skill(self, threshold: float, scale_km: float) -> float:
        from pysteps.verification import fss_compute

        sums = self.fss[(threshold, scale_km)]
        if sums["sum_fct_sq"] + sums["sum_obs_sq"] == 0:
            return float("nan")  # no event in any forecast or observation: undefined
        return float(fss_compute(sums))

    @property
    def n_pixels(self) -> int:
        n = self.continuous["n"]
        return 0 if n is None else int(n)

    def continuous_scores(self) -> dict[str, float]:
        from pysteps.verification import det_cont_fct_compute

        if self.continuous["n"] is None:
            return {"MAE": float("nan"), "ME": float("nan")}
        result = det_cont_fct_compute(self.continuous, ["MAE", "ME"])
        return {"MAE": float(result["MAE"]), "ME": float(result["ME"])}

    def to_dict(self, lead_minutes: float) -> dict[str, Any]:
        fss: dict[str, dict[str, Any]] = {}
        for (thr, scale), sums in self.fss.items():
            fss.setdefault(key(thr), {})[key(scale)] = {
                "fss": self.fractions_skill(thr, scale),
                "sum_fct_sq": float(sums["sum_fct_sq"]),
                "sum_fct_obs": float(sums["sum_fct_obs"]),
                "sum_obs_sq": float(sums["sum_obs_sq"]),
            }
        continuous = self.continuous_scores()
        return {
            "lead_minutes": float(lead_minutes),
            "n_forecasts": self.n_forecasts,
            "n_pixels": self.n_pixels,
            "categorical": {key(thr): self.categorical(thr) for thr in self.contingency},
            "fss": fss,
            "mae": continuous["MAE"],
            "mean_error": continuous["ME"],
        }


class ProbabilityCounts:
    """Valid pixels binned by forecast probability, with and without the event.

    There are M + 1 bins, centred on k / M (k = 0 to M). An ensemble's own probabilities,
    the fraction k / M of its members above the threshold, fall on the centres; smoothed
    ones (neighbourhood-processed, :func:`nowcast.ensemble.neighbourhood_probability`) go
    to the nearest. Each bin also sums its probabilities and their squares, so the Brier
    score is exact either way, and all of it adds up over forecasts and events. From the
    bins come the reliability diagram (one point per bin, at its mean probability) and the
    ROC curve (one point per probability threshold k / M, pysteps' ``ROC_curve_compute``).
    An event is ``rate > threshold``, as in :class:`Contingency` and
    :func:`nowcast.ensemble.exceedance_probability`.
    """

    def __init__(self, threshold: float, n_members: int) -> None:
        self.threshold = threshold
        self.n_members = n_members
        self.event = np.zeros(n_members + 1, dtype=np.int64)
        self.no_event = np.zeros(n_members + 1, dtype=np.int64)
        # what the Brier score and the bins' mean probabilities need beyond the counts: the
        # probabilities summed per bin, over the pixels with the event, and their squares over all
        self.probability_sum = np.zeros(n_members + 1)
        self.event_probability_sum = 0.0
        self.square_sum = 0.0

    def add(self, members: np.ndarray, observed: np.ndarray) -> None:
        """Count pixels: ``members`` (member, pixel) and ``observed`` (pixel), all finite."""
        self.add_probabilities(np.count_nonzero(members > self.threshold, axis=0) / self.n_members, observed)

    def add_probabilities(self, probability: np.ndarray, observed: np.ndarray) -> None:
        """Count pixels: forecast ``probability`` in [0, 1] and ``observed`` (pixel), all finite."""
        probability = np.asarray(probability, dtype=np.float64)
        if probability.shape != np.shape(observed):
            raise ValueError(f"probabilities of shape {probability.shape} for observations of {np.shape(observed)}")
        if probability.size and not (probability.min() >= 0.0 and probability.max() <= 1.0):
            raise ValueError("forecast probabilities must lie in [0, 1]")
        bins = np.rint(probability * self.n_members).astype(np.intp)
        event = observed > self.threshold
        size = self.n_members + 1
        self.probability_sum += np.bincount(bins, probability, minlength=size)
        self.event_probability_sum += float(probability[event].sum())
        self.square_sum += float(np.sum(probability**2))
        self.event += np.bincount(bins[event], minlength=size)
        self.no_event += np.bincount(bins[~event], minlength=size)

    def merge(self, other: ProbabilityCounts) -> None:
        self.event += other.event
        self.no_event += other.no_event
        self.probability_sum += other.probability_sum
        self.event_probability_sum += other.event_probability_sum
        self.square_sum += other.square_sum

    @property
    def probabilities(self) -> np.ndarray:
        """The bins' centres, k / M."""
        return np.arange(self.n_members + 1) / self.n_members

    def mean_probabilities(self) -> np.ndarray:
        """Each bin's mean forecast probability (its centre where it is empty)."""
        n_at = self.event + self.no_event
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n_at > 0, self.probability_sum / n_at, self.probabilities)

    @property
    def n_pixels(self) -> int:
        return int(self.event.sum() + self.no_event.sum())

    def brier_sum(self) -> float:
        """The squared probability errors summed over the pixels: sum (1 - p)² with the event, p² without."""
        return float(self.event.sum() - 2.0 * self.event_probability_sum + self.square_sum)

    def brier(self) -> float:
        return self.brier_sum() / self.n_pixels if self.n_pixels else float("nan")

    def roc(self) -> tuple[np.ndarray, np.ndarray, float]:
        """POFD and POD at each probability threshold k / M (k = 0 to M), and the area under the curve."""
        from pysteps.verification import ROC_curve_compute

        # "probability at or above k / M" is "in bin k or above"
        event_at_or_above = np.cumsum(self.event[::-1])[::-1]
        no_event_at_or_above = np.cumsum(self.no_event[::-1])[::-1]
        table = {"X_min": self.threshold, "prob_thrs": self.probabilities, "hits": event_at_or_above,
                 "misses": self.event.sum() - event_at_or_above, "false_alarms": no_event_at_or_above,
                 "corr_neg": self.no_event.sum() - no_event_at_or_above}
        with np.errstate(invalid="ignore", divide="ignore"):
            pofd, pod, area = ROC_curve_compute(table, compute_area=True)
        return np.asarray(pofd, dtype=np.float64), np.asarray(pod, dtype=np.float64), float(area)

    def to_dict(self, reference: ProbabilityCounts | None = None) -> dict[str, Any]:
        pofd, pod, area = self.roc()
        n_at = self.event + self.no_event
        with np.errstate(invalid="ignore", divide="ignore"):
            observed_frequency = self.event / n_at
        result = {
            "brier": self.brier(),
            "brier_sum": self.brier_sum(),
            "n_pixels": self.n_pixels,
            "base_rate": float(self.event.sum() / self.n_pixels) if self.n_pixels else float("nan"),
            "roc_area": area,
            "roc": {"pofd": pofd.tolist(), "pod": pod.tolist()},
            "reliability": {"probability": self.mean_probabilities().tolist(),
                            "observed_frequency": observed_frequency.tolist(),
                            "n_event": self.event.tolist(), "n_no_event": self.no_event.tolist(),
                            "probability_sum": self.probability_sum.tolist()},
        }
        if reference is not None:
            result["brier_skill"] = brier_skill(self.brier(), reference.brier())
        return result


def brier_skill(brier: Any, reference_brier: Any) -> Any:
    """``1 - BS / BS_reference``: 1 is perfect, 0 no better than the reference; NaN where the reference is perfect."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - np.asarray(brier, dtype=np.float64) / np.asarray(reference_brier, dtype=np.float64)


class RankHistogram:
    """Where the observation falls among the sorted members (rank 0 to M), over the valid pixels.

    pysteps' ``rankhist`` with ``X_min``: pixels where the observation and every member are
    below ``min_mmh`` are left out, and values below it count as equal (dry). pysteps
    breaks the ties of an observation with members at random from numpy's global
    generator, which makes two runs differ; here an observation equal to e members gives
    each of the e + 1 ranks it could take an equal share (what the random draw gives on
    average). The pixels are kept as a table of (members below, members equal), integers
    that add up exactly.
    """

    def __init__(self, n_members: int, min_mmh: float) -> None:
        self.n_members = n_members
        self.min_mmh = min_mmh
        self.below_equal = np.zeros((n_members + 1, n_members + 1), dtype=np.int64)

    def add(self, members: np.ndarray, observed: np.ndarray) -> None:
        """Count pixels: ``members`` (member, pixel) and ``observed`` (pixel), all finite."""
        wet = (observed >= self.min_mmh) | np.any(members >= self.min_mmh, axis=0)
        dry_value = self.min_mmh - 1.0
        members = np.where(members[:, wet] < self.min_mmh, dry_value, members[:, wet])
        observed = np.where(observed[wet] < self.min_mmh, dry_value, observed[wet])
        below = np.count_nonzero(members < observed, axis=0)
        equal = np.count_nonzero(members == observed, axis=0)
        size = self.n_members + 1
        self.below_equal += np.bincount(below * size + equal, minlength=size * size).reshape(size, size)

    def merge(self, other: RankHistogram) -> None:
        self.below_equal += other.below_equal

    @property
    def n_pixels(self) -> int:
        return int(self.below_equal.sum())

    def counts(self) -> np.ndarray:
        """Pixels per rank (ties shared out, so not whole numbers)."""
        counts = np.zeros(self.n_members + 1)
        for below, equal in zip(*np.nonzero(self.below_equal), strict=True):
            counts[below:below + equal + 1] += self.below_equal[below, equal] / (equal + 1)
        return counts

    def frequencies(self) -> np.ndarray:
        """Fraction of pixels per rank (pysteps' ``rankhist_compute(normalize=True)``); flat is 1 / (M + 1)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.counts() / self.n_pixels


@dataclass
class SpreadSkillSums:
    """Member variance and squared error of the ensemble mean, summed over pixels."""

    variance: float = 0.0
    squared_error: float = 0.0
    n_pixels: int = 0

    def add(self, members: np.ndarray, observed: np.ndarray) -> None:
        """Add pixels: ``members`` (member, pixel) and ``observed`` (pixel), all finite."""
        self.variance += float(np.sum(np.var(members, axis=0, ddof=1, dtype=np.float64)))
        self.squared_error += float(np.sum((ensemble_mean(members).astype(np.float64) - observed) ** 2))
        self.n_pixels += int(observed.size)

    def merge(self, other: SpreadSkillSums) -> None:
        self.variance += other.variance
        self.squared_error += other.squared_error
        self.n_pixels += other.n_pixels

    def scores(self, n_members: int) -> dict[str, float]:
        """Spread, RMSE of the ensemble mean and their ratio (1 for a consistent ensemble)."""
        if not self.n_pixels:
            return {"spread": float("nan"), "rmse_ensemble_mean": float("nan"), "spread_skill": float("nan")}
        spread = float(np.sqrt((n_members + 1) / n_members * self.variance / self.n_pixels))
        rmse = float(np.sqrt(self.squared_error / self.n_pixels))
        return {"spread": spread, "rmse_ensemble_mean": rmse,
                "spread_skill": spread / rmse if rmse > 0 else float("nan")}


def crps_sums(members: np.ndarray, observed: np.ndarray) -> float:
    """The CRPS of each pixel's ensemble, summed over pixels: ``members`` (member, pixel), ``observed`` (pixel).

    The CRPS of the members' empirical distribution F, the integral of (F(x) - H(x - y))²,
    equals mean|x_i - y| - sum|x_i - x_j| / (2 M²) over all pairs (Gneiting & Raftery 2007),
    and with the members sorted the pair sum is 2 sum (2i - M - 1) x_(i), i = 1..M: exact
    whatever the ties, of which precipitation has many (dry observation, dry members).
    Where the observation and every member are dry the CRPS is exactly 0: such pixels (most
    of a radar image) are left out before sorting.
    """
    wet = (observed != 0.0) | np.any(members != 0.0, axis=0)
    members, observed = members[:, wet], observed[wet]
    total = 0.0
    n_members = members.shape[0]
    weights = (2.0 * np.arange(1, n_members + 1) - n_members - 1)[:, None]
    for start in range(0, observed.size, _CRPS_CHUNK_PIXELS):
        chunk = slice(start, start + _CRPS_CHUNK_PIXELS)
        part = np.asarray(members[:, chunk], dtype=np.float64)
        skill = np.abs(part - np.asarray(observed[chunk], dtype=np.float64)).sum() / n_members
        part.sort(axis=0)
        total += skill - float((weights * part).sum()) / n_members ** 2
    return total


class EnsembleLeadScores:
    """Accumulated ensemble scores of one method at one lead time."""

    def __init__(self, settings: ScoreSettings, n_members: int) -> None:
        self.n_members = n_members
        self.n_forecasts = 0
        self.crps_sum = 0.0
        self.crps_pixels = 0
        self.probability = {thr: ProbabilityCounts(thr, n_members) for thr in settings.probability_thresholds_mmh}
        self.rank_histogram = RankHistogram(n_members, settings.rank_histogram_min_mmh)
        self.spread = SpreadSkillSums()

    def add(self, members: np.ndarray, observed: np.ndarray, *,
            probabilities: Mapping[float, np.ndarray] | None = None) -> None:
        """One forecast's valid pixels: ``members`` (member, pixel) and ``observed`` (pixel), all finite.

        ``probabilities``: threshold -> the forecast probability of each pixel, where it is
        not the members' fraction above the threshold (neighbourhood-processed, say).
        """
        members = np.asarray(members, dtype=np.float64)
        observed = np.asarray(observed, dtype=np.float64)
        self.n_forecasts += 1
        self.crps_pixels += int(observed.size)
        self.crps_sum += crps_sums(members, observed)
        for thr, counts in self.probability.items():
            if probabilities is None:
                counts.add(members, observed)
            else:
                counts.add_probabilities(probabilities[thr], observed)
        self.rank_histogram.add(members, observed)
        self.spread.add(members, observed)

    def merge(self, other: EnsembleLeadScores) -> None:
        self.n_forecasts += other.n_forecasts
        self.crps_sum += other.crps_sum
        self.crps_pixels += other.crps_pixels
        for thr, counts in self.probability.items():
            counts.merge(other.probability[thr])
        self.rank_histogram.merge(other.rank_histogram)
        self.spread.merge(other.spread)

    def crps_score(self) -> float:
        return self.crps_sum / self.crps_pixels if self.crps_pixels else float("nan")

    def to_dict(self, lead_minutes: float, reference: EnsembleLeadScores | None = None) -> dict[str, Any]:
        return {
            "lead_minutes": float(lead_minutes),
            "n_forecasts": self.n_forecasts,
            "n_pixels": self.crps_pixels,
            "crps": self.crps_score(),
            "crps_sum": self.crps_sum,
            **self.spread.scores(self.n_members),
            "rank_histogram": self.rank_histogram.frequencies().tolist(),
            "rank_histogram_pixels": self.rank_histogram.n_pixels,
            "probability": {
                key(thr): counts.to_dict(None if reference is None else reference.probability.get(thr))
                for thr, counts in self.probability.items()
            },
        }


class PeriodScores:
    """Accumulated scores of one ensemble's rain over the leads of its forecasts, from the first to the last: of its
    maximum rate (mm/h, ``statistic`` "maximum") or of the rain it brings (mm, "accumulation")."""

    STATISTICS = ("maximum", "accumulation")

    def __init__(self, settings: ScoreSettings, n_members: int, first_lead_minutes: float,
                 statistic: str = "maximum") -> None:
        if statistic not in self.STATISTICS:
            raise ValueError(f"unknown period statistic {statistic!r}; choose from {', '.join(self.STATISTICS)}")
        self.statistic = statistic
        self.n_members = n_members
        self.first_lead_minutes = float(first_lead_minutes)
        self.n_forecasts = 0
        self.crps_sum = 0.0
        self.crps_pixels = 0
        thresholds = (settings.probability_thresholds_mmh if statistic == "maximum"
                      else settings.accumulation_thresholds_mm)
        self.probability = {thr: ProbabilityCounts(thr, n_members) for thr in thresholds}

    def add(self, members: np.ndarray, observed: np.ndarray, hours: Sequence[float]) -> None:
        """One forecast: ``members`` (member, lead, pixel) and ``observed`` (lead, pixel), all finite, each lead's
        rate falling for ``hours`` (:func:`nowcast.ensemble.lead_hours`).

        Adds the CRPS of the members' statistic against the observed one, which is the Brier score of its
        exceedance probability integrated over every threshold, and per threshold that probability as the
        products publish it (``max_probabilities``, ``accumulation_probabilities``).
        """
        self.n_forecasts += 1
        if self.statistic == "maximum":
            seen, forecast = np.max(observed, axis=0), np.max(members, axis=1)
            probabilities = period_exceedance_probability(members, list(self.probability))
        else:
            seen, forecast = period_accumulation(observed[None], hours)[0], period_accumulation(members, hours)
            probabilities = exceedance_probability(forecast, list(self.probability))
        self.crps_sum += crps_sums(forecast, seen)
        self.crps_pixels += int(seen.size)
        for counts, probability in zip(self.probability.values(), probabilities, strict=True):
            counts.add_probabilities(probability, seen)

    def merge(self, other: PeriodScores) -> None:
        if (other.statistic, other.first_lead_minutes) != (self.statistic, self.first_lead_minutes):
            raise ValueError(f"cannot merge the {other.statistic} from +{other.first_lead_minutes:g} min into the "
                             f"{self.statistic} from +{self.first_lead_minutes:g} min")
        self.n_forecasts += other.n_forecasts
        self.crps_sum += other.crps_sum
        self.crps_pixels += other.crps_pixels
        for thr, counts in self.probability.items():
            counts.merge(other.probability[thr])

    def to_dict(self, last_lead_minutes: float, reference: PeriodScores | None = None) -> dict[str, Any]:
        return {
            "statistic": self.statistic,
            "units": "mm/h" if self.statistic == "maximum" else "mm",
            "first_lead_minutes": self.first_lead_minutes,
            "last_lead_minutes": float(last_lead_minutes),
            "n_forecasts": self.n_forecasts,
            "n_pixels": self.crps_pixels,
            "crps": self.crps_sum / self.crps_pixels if self.crps_pixels else float("nan"),
            "crps_sum": self.crps_sum,
            "probability": {
                key(thr): counts.to_dict(None if reference is None else reference.probability.get(thr))
                for thr, counts in self.probability.items()
            },
        }


#: where a period's sums are kept per start time (``nowcast evaluate``'s records): by its statistic, None per lead
_SUM_PREFIXES = {None: "", "maximum": "period_", "accumulation": "accumulation_"}


def ensemble_sum_kind(score: str, period: str | None = None) -> str:
    """The name of an ensemble's per-start-time sums of ``score`` ("crps", "brier"): per lead (``period`` None),
    or of the forecast's maximum or accumulation (:attr:`PeriodScores.STATISTICS`)."""
    if period not in _SUM_PREFIXES:
        raise ValueError(f"unknown period {period!r}: choose maximum or accumulation (None: per lead)")
    return _SUM_PREFIXES[period] + score


#: an ensemble's sums per start time: CRPS and Brier per lead, of the forecast's maximum and of its accumulation
ENSEMBLE_SUM_KINDS = tuple(ensemble_sum_kind(score, period) for period in _SUM_PREFIXES for score in ("crps", "brier"))


class Scores:
    """Scores of one method accumulated over many forecasts, keyed by lead time (minutes).

    ``members``: the method's ensemble size, for a method scored as an ensemble (its
    deterministic forecast in :attr:`leads` and the spectra, its members in
    :attr:`ensemble` and the member spectra); None for a deterministic method.
    """

    def __init__(self, settings: ScoreSettings | None = None, *, members: int | None = None) -> None:
        if members is not None and members < 2:
            raise ValueError(f"an ensemble has at least 2 members; got {members}")
        self.settings = settings or ScoreSettings()
        self.members = members
        self.leads: dict[float, LeadScores] = {}
        self.spectra: dict[float, SpectrumSums] = {}
        self.matched_spectra: dict[float, SpectrumSums] = {}
        self.ensemble: dict[float, EnsembleLeadScores] = {}
        # keyed by the period's last lead
        self.period: dict[float, PeriodScores] = {}
        self.accumulation: dict[float, PeriodScores] = {}
        self.member_spectra: dict[float, SpectrumSums] = {}
        self.member_matched_spectra: dict[float, SpectrumSums] = {}

    def lead(self, lead_minutes: float) -> LeadScores:
        lead_minutes = float(lead_minutes)
        if lead_minutes not in self.leads:
            self.leads[lead_minutes] = LeadScores(self.settings)
        return self.leads[lead_minutes]

    def ensemble_lead(self, lead_minutes: float) -> EnsembleLeadScores:
        if self.members is None:
            raise ValueError("these scores are of a deterministic method; give Scores(members=...) for an ensemble")
        lead_minutes = float(lead_minutes)
        if lead_minutes not in self.ensemble:
            self.ensemble[lead_minutes] = EnsembleLeadScores(self.settings, self.members)
        return self.ensemble[lead_minutes]

    def period_maximum(self, first_lead_minutes: float, last_lead_minutes: float) -> PeriodScores:
        """The scores of the ensemble's maximum over the leads from ``first_lead_minutes`` to ``last_lead_minutes``."""
        return self.period_scores("maximum", first_lead_minutes, last_lead_minutes)

    def period_accumulation(self, first_lead_minutes: float, last_lead_minutes: float) -> PeriodScores:
        """The scores of the rain the ensemble brings over the leads from ``first_lead_minutes`` to
        ``last_lead_minutes``."""
        return self.period_scores("accumulation", first_lead_minutes, last_lead_minutes)

    def _periods(self, statistic: str) -> dict[float, PeriodScores]:
        return self.period if statistic == "maximum" else self.accumulation

    def period_scores(self, statistic: str, first_lead_minutes: float, last_lead_minutes: float) -> PeriodScores:
        """The scores of the ensemble's ``statistic`` (:attr:`PeriodScores.STATISTICS`) over the leads from
        ``first_lead_minutes`` to ``last_lead_minutes``."""
        if self.members is None:
            raise ValueError("these scores are of a deterministic method; give Scores(members=...) for an ensemble")
        periods, last_lead_minutes = self._periods(statistic), float(last_lead_minutes)
        if last_lead_minutes not in periods:
            periods[last_lead_minutes] = PeriodScores(self.settings, self.members, first_lead_minutes, statistic)
        return periods[last_lead_minutes]

    def _spectra(self, *, matched: bool, member: bool) -> dict[float, SpectrumSums]:
        if member:
            return self.member_matched_spectra if matched else self.member_spectra
        return self.matched_spectra if matched else self.spectra

    def spectrum(self, lead_minutes: float, *, matched: bool = False, member: bool = False) -> SpectrumSums:
        """The spectrum sums at a lead time; ``matched``: of the distribution-matched forecasts;
        ``member``: of an ensemble's first member."""
        spectra = self._spectra(matched=matched, member=member)
        lead_minutes = float(lead_minutes)
        if lead_minutes not in spectra:
            spectra[lead_minutes] = SpectrumSums(len(self.settings.spectrum_wavelengths_km))
        return spectra[lead_minutes]

    def merge(self, other: Scores) -> Scores:
        """Add ``other``'s sums to these (same settings); returns self."""
        if other.settings != self.settings:
            raise ValueError("cannot merge scores accumulated with different settings")
        if other.members != self.members:
            raise ValueError(f"cannot merge scores of {other.members} members into scores of {self.members}")
        for lead_minutes, lead_scores in other.leads.items():
            self.lead(lead_minutes).merge(lead_scores)
        for lead_minutes, ensemble_scores in other.ensemble.items():
            self.ensemble_lead(lead_minutes).merge(ensemble_scores)
        for periods in (other.period, other.accumulation):
            for last_lead, theirs in periods.items():
                self.period_scores(theirs.statistic, theirs.first_lead_minutes, last_lead).merge(theirs)
        for matched in (False, True):
            for member in (False, True):
                for lead_minutes, sums in other._spectra(matched=matched, member=member).items():
                    self.spectrum(lead_minutes, matched=matched, member=member).merge(sums)
        return self

    def contingency_counts(self) -> dict[float, dict[float, tuple[int, int, int]]]:
        """(hits, misses, false alarms) per lead time and threshold, so far.

        Differences of two snapshots are one forecast's tables: what a bootstrap over
        start times resamples (:mod:`nowcast.bootstrap`).
        """
        return {lead: {thr: table.counts() for thr, table in scores.contingency.items()}
                for lead, scores in self.leads.items()}

    def spectrum_totals(self, *, matched: bool = False,
                        member: bool = False) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """Summed (observed, forecast) power per lead time, so far (copies); ``member``: an ensemble's first
        member's."""
        spectra = self._spectra(matched=matched, member=member)
        return {lead: (sums.observed.copy(), sums.forecast.copy()) for lead, sums in spectra.items()}

    def crps_totals(self) -> dict[float, tuple[float, int]]:
        """(CRPS summed over pixels, pixels) per lead time, so far; empty for a deterministic method."""
        return {lead: (scores.crps_sum, scores.crps_pixels) for lead, scores in self.ensemble.items()}

    def brier_totals(self) -> dict[float, dict[float, tuple[float, int]]]:
        """(Brier score summed over pixels, pixels) per lead time and threshold, so far."""
        return {lead: {thr: (counts.brier_sum(), counts.n_pixels) for thr, counts in scores.probability.items()}
                for lead, scores in self.ensemble.items()}

    def period_crps_totals(self, statistic: str = "maximum") -> dict[float, tuple[float, int]]:
        """(CRPS of the forecast's maximum, or of its accumulation, summed over pixels, pixels) per period (its
        last lead), so far."""
        return {last: (scores.crps_sum, scores.crps_pixels) for last, scores in self._periods(statistic).items()}

    def period_brier_totals(self, statistic: str = "maximum") -> dict[float, dict[float, tuple[float, int]]]:
        """(Brier score summed over pixels, pixels) of the forecast's maximum, or of its accumulation, per period
        (its last lead) and threshold, so far."""
        return {last: {thr: (counts.brier_sum(), counts.n_pixels) for thr, counts in scores.probability.items()}
                for last, scores in self._periods(statistic).items()}

    def csi(self, threshold: float) -> dict[float, float]:
        """CSI per lead time (minutes) at ``threshold`` mm/h."""
        return {lead: scores.categorical(threshold)["CSI"] for lead, scores in sorted(self.leads.items())}

    def spectrum_dict(self, lead_minutes: float, *, matched: bool = False, member: bool = False) -> dict[str, Any]:
        sums = self._spectra(matched=matched, member=member)[lead_minutes]
        observed, forecast = sums.mean_power()
        wavelengths = np.asarray(self.settings.spectrum_wavelengths_km)
        ratio = {}
        for wavelength, i in self.settings.ratio_wavelength_indices().items():
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio[key(wavelength)] = _json_float(forecast[i] / observed[i])
        return {
            "lead_minutes": float(lead_minutes),
            "n_forecasts": sums.n_forecasts,
            "wavelength_km": [float(w) for w in wavelengths],
            "observed_power": [_json_float(p) for p in observed],
            "forecast_power": [_json_float(p) for p in forecast],
            "power_ratio": ratio,
        }

    def to_dict(self, reference: Scores | None = None) -> dict[str, Any]:
        """Everything, JSON-ready (NaN as None): sums and the scores made of them.

        An ensemble adds ``ensemble`` (its probabilistic scores per lead time and, under
        ``period_maximum``, of its maximum over each forecast period, with the Brier skill
        against ``reference``'s ensemble where one is given) and the spectra of
        its first member, ``spectrum_member`` and ``spectrum_member_matched``.
        """
        result = {
            "leads": {key(lead): scores.to_dict(lead) for lead, scores in sorted(self.leads.items())},
            "spectrum": {key(lead): self.spectrum_dict(lead) for lead in sorted(self.spectra)},
            "spectrum_matched": {key(lead): self.spectrum_dict(lead, matched=True)
                                 for lead in sorted(self.matched_spectra)},
        }
        if self.members is not None:
            result["ensemble"] = self._ensemble_dict(reference)
            for name, matched in (("spectrum_member", False), ("spectrum_member_matched", True)):
                result[name] = {key(lead): self.spectrum_dict(lead, matched=matched, member=True)
                                for lead in sorted(self._spectra(matched=matched, member=True))}
        return _nan_to_none(result)

    def _ensemble_dict(self, reference: Scores | None) -> dict[str, Any]:
        if reference is not None and reference.members is None:
            raise ValueError("the Brier skill reference must be scored as an ensemble")
        leads = {}
        for lead, scores in sorted(self.ensemble.items()):
            reference_lead = None
            if reference is not None:  # a lead the reference lacks gets no skill (NaN), not none at all
                reference_lead = reference.ensemble.get(lead) or EnsembleLeadScores(self.settings, reference.members)
            leads[key(lead)] = scores.to_dict(lead, reference_lead)
        result = {"members": self.members, "leads": leads}
        for statistic in PeriodScores.STATISTICS:
            periods = {}
            for last, scores in sorted(self._periods(statistic).items()):
                reference_period = None
                if reference is not None:
                    reference_period = reference._periods(statistic).get(last) or PeriodScores(
                        self.settings, reference.members, scores.first_lead_minutes, statistic)
                periods[key(last)] = scores.to_dict(last, reference_period)
            result[f"period_{statistic}"] = periods
        return result


def fss_fractions(field: np.ndarray, threshold: float, scale_pixels: int) -> np.ndarray:
    """The fraction of pixels at or above ``threshold`` in a square window (NaN-free field).

    The same binarisation and moving average as ``pysteps.verification.fss_accum``.
    """
    exceed = (field >= threshold).astype(np.float64)
    if scale_pixels > 1:
        return uniform_filter(exceed, size=scale_pixels, mode="constant", cval=0.0)
    return exceed


def _fss_add(sums: dict[str, Any], forecast_fraction: np.ndarray, observed_fraction: np.ndarray) -> None:
    # What pysteps.verification.fss_accum adds, with the observed fractions computed
    # once per observation instead of once per method compared against it.
    sums["sum_obs_sq"] += float(np.sum(observed_fraction**2))
    sums["sum_fct_obs"] += float(np.sum(forecast_fraction * observed_fraction))
    sums["sum_fct_sq"] += float(np.sum(forecast_fraction**2))


def radial_spectrum(field: np.ndarray, pixel_size_km: float) -> tuple[np.ndarray, np.ndarray]:
    """Wavelengths (km, decreasing) and radially averaged power of a NaN-free 2-D field.

    The numbers of ``pysteps.utils.spectral.rapsd(field, fft_method=np.fft, d=pixel_size_km)``
    (every ring's mean over the same values in the same order), with the rings found
    once per grid shape: pysteps compares the whole grid with every ring's radius, which
    on a 875x1750 grid costs half a second per field.
    """
    field = np.asarray(field, dtype=np.float64)
    if field.ndim != 2 or np.isnan(field).any():
        raise ValueError(f"the spectrum needs a NaN-free 2-D field; got shape {field.shape}")
    power_2d = np.fft.fftshift(np.fft.fft2(field))
    power_2d = np.abs(power_2d) ** 2 / power_2d.size
    order, bounds = _spectrum_rings(field.shape)
    by_ring = power_2d.ravel()[order]
    power = np.array([np.mean(by_ring[start:stop]) for start, stop in itertools.pairwise(bounds)])
    frequency = np.fft.fftfreq(max(field.shape), d=pixel_size_km)[:len(power)]
    # The zero frequency (the field mean) has no wavelength.
    return 1.0 / frequency[1:], power[1:]


@functools.lru_cache(maxsize=8)
def _spectrum_rings(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """rapsd's rings of a grid: the pixels' order, ring after ring (row-major within one), and the rings' bounds."""
    from pysteps.utils.arrays import compute_centred_coord_array

    yc, xc = compute_centred_coord_array(*shape)
    radius = np.sqrt(xc * xc + yc * yc).round().ravel()
    longest = max(shape)
    n_rings = longest // 2 + 1 if longest % 2 == 1 else longest // 2
    order = np.argsort(radius, kind="stable")
    # radii are whole numbers: ring r holds the sorted radii between r - 0.5 and r + 0.5
    bounds = np.searchsorted(radius[order], np.arange(n_rings + 1) - 0.5)
    return order, bounds


def spectrum_on_grid(field: np.ndarray, pixel_size_km: float,
                     wavelengths_km: Sequence[float] = SPECTRUM_WAVELENGTHS_KM) -> np.ndarray:
    """The field's RAPSD interpolated onto ``wavelengths_km``; NaN outside what the grid resolves."""
    wavelengths, power = radial_spectrum(field, pixel_size_km)
    log_wl = np.log(wavelengths[::-1])
    target = np.log(np.asarray(wavelengths_km, dtype=np.float64))
    out = np.interp(target, log_wl, power[::-1])
    out[(target < log_wl[0] - 1e-9) | (target > log_wl[-1] + 1e-9)] = np.nan
    return out


def matched_to_observed(forecast: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """``forecast``'s values replaced by ``observed``'s of the same rank (same size, NaN-free).

    pysteps' ``nonparam_match_empirical_cdf``: the forecast's driest values stay dry, and
    where the forecast is wet over a smaller area than the observation, the observation's
    weakest rain becomes dry so that the areas agree.
    """
    from pysteps.postprocessing.probmatching import nonparam_match_empirical_cdf

    return nonparam_match_empirical_cdf(forecast, observed)


@dataclass(frozen=True)
class _Observed:
    """One lead time's observation as every forecast of it is compared: on the valid pixels."""

    valid: np.ndarray  # (y, x) bool: observation and every forecast and member finite
    values: np.ndarray  # the observation at the valid pixels
    fractions: dict[tuple[float, float], np.ndarray]  # (threshold, scale km) -> FSS fractions
    spectrum: np.ndarray | None  # on the wavelength grid, at the spectrum leads only

    @classmethod
    def of(cls, observed: np.ndarray, valid: np.ndarray, settings: ScoreSettings, windows: dict[float, int],
           pixel_size_km: float, *, with_spectrum: bool) -> _Observed:
        zeroed = np.where(valid, observed, 0.0)
        fractions = {(thr, scale): fss_fractions(zeroed, thr, windows[scale])
                     for thr in settings.fss_thresholds_mmh for scale in settings.fss_scales_km}
        spectrum = (spectrum_on_grid(zeroed, pixel_size_km, settings.spectrum_wavelengths_km)
                    if with_spectrum else None)
        return cls(valid, observed[valid], fractions, spectrum)


def accumulate(
    scores: Mapping[str, Scores],
    observed: np.ndarray,
    forecasts: Mapping[str, np.ndarray],
    *,
    lead_minutes: Sequence[float],
    pixel_size_km: float,
    members: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Add one set of forecasts of the same observations to each method's scores.

    ``observed``: (lead, y, x) mm/h, NaN = no data; ``forecasts``: method -> array of the
    same shape; ``scores``: method -> :class:`Scores` (one per forecast method);
    ``lead_minutes``: the lead time of each frame; ``members``: method -> (member, lead,
    y, x) for the methods scored as ensembles (their :class:`Scores` have ``members``),
    whose ``forecasts`` entry is their deterministic forecast (the probability-matched
    mean, say). All methods are scored on the pixels where the observation, every
    forecast and every member are finite; a lead time with no such pixel is left out (and
    not counted as a forecast). The ensembles' maximum over all ``lead_minutes`` is scored
    on the pixels valid at every lead, if there is one.
    """
    members = members or {}
    observed = np.asarray(observed)
    _check_shapes(scores, observed, forecasts, members, lead_minutes)
    if not forecasts:
        return
    settings = next(iter(scores[name] for name in forecasts)).settings
    spectrum_leads = {float(lead) for lead in settings.spectrum_leads_minutes}
    windows = fss_windows(settings.fss_scales_km, pixel_size_km, observed.shape[1:])

    valid_at_every_lead = np.ones(observed.shape[1:], dtype=bool)
    for i, lead in enumerate(lead_minutes):
        obs = observed[i].astype(np.float64)
        fcs = {name: np.asarray(forecast[i], dtype=np.float64) for name, forecast in forecasts.items()}
        ensembles = {name: np.asarray(fields[:, i], dtype=np.float64) for name, fields in members.items()}
        valid = np.isfinite(obs)
        for fields in (*fcs.values(), *ensembles.values()):
            valid &= np.all(np.isfinite(fields.reshape(-1, *obs.shape)), axis=0)
        valid_at_every_lead &= valid
        if not valid.any():
            logger.debug("lead %g min: no pixel with both observation and forecast; left out", lead)
            continue
        reference = _Observed.of(obs, valid, settings, windows, pixel_size_km,
                                 with_spectrum=float(lead) in spectrum_leads)
        for name, fc in fcs.items():
            _add_deterministic(scores[name], lead, fc, reference, windows, pixel_size_km)
        for name, fields in ensembles.items():
            _add_ensemble(scores[name], lead, fields, reference, pixel_size_km)
    if members and valid_at_every_lead.any():
        hours = lead_hours(lead_minutes)
        for name, fields in members.items():
            for statistic in PeriodScores.STATISTICS:
                scores[name].period_scores(statistic, lead_minutes[0], lead_minutes[-1]).add(
                    fields[:, :, valid_at_every_lead], observed[:, valid_at_every_lead], hours)
    elif members:
        logger.debug("no pixel valid at every lead: the forecast's maximum and accumulation are left out")


def _check_shapes(scores: Mapping[str, Scores], observed: np.ndarray, forecasts: Mapping[str, np.ndarray],
                  members: Mapping[str, np.ndarray], lead_minutes: Sequence[float]) -> None:
    if observed.ndim != 3 or len(lead_minutes) != observed.shape[0]:
        raise ValueError(f"observed must be (lead, y, x) with {len(lead_minutes)} leads; "
                         f"got {observed.shape}")
    for name, forecast in forecasts.items():
        if np.shape(forecast) != observed.shape:
            raise ValueError(f"forecast {name!r} has shape {np.shape(forecast)}, observed {observed.shape}")
    for name in members:
        if name not in forecasts:
            raise ValueError(f"members of {name!r} come without its deterministic forecast")
    for name in forecasts:
        n_members = scores[name].members
        if n_members is None and name in members:
            raise ValueError(f"{name!r} has members but deterministic scores; give Scores(members=...)")
        if n_members is not None and np.shape(members.get(name)) != (n_members, *observed.shape):
            raise ValueError(f"{name!r} is scored as an ensemble of {n_members} members: its members must have "
                             f"shape {(n_members, *observed.shape)}, got {np.shape(members.get(name))}")


def _add_deterministic(scores: Scores, lead: float, forecast: np.ndarray, observed: _Observed,
                       windows: dict[float, int], pixel_size_km: float) -> None:
    from pysteps.verification import det_cont_fct_accum

    lead_scores = scores.lead(lead)
    lead_scores.n_forecasts += 1
    fc_valid = forecast[observed.valid]
    for table in lead_scores.contingency.values():
        table.add(fc_valid, observed.values)
    det_cont_fct_accum(lead_scores.continuous, fc_valid, observed.values)
    fc_zeroed = np.where(observed.valid, forecast, 0.0)
    for (thr, scale), obs_fraction in observed.fractions.items():
        _fss_add(lead_scores.fss[(thr, scale)], fss_fractions(fc_zeroed, thr, windows[scale]), obs_fraction)
    if observed.spectrum is not None:
        _add_spectra(scores, lead, forecast, observed, pixel_size_km, member=False)


def _add_ensemble(scores: Scores, lead: float, members: np.ndarray, observed: _Observed,
                  pixel_size_km: float) -> None:
    rate = scores.settings.probability_neighbourhood_km_per_minute
    probabilities = None  # the members' own fractions, counted from the members
    if rate:
        probabilities = valid_pixel_probabilities(members, observed.valid, scores.settings.probability_thresholds_mmh,
                                                  neighbourhood_window_pixels(lead, rate, pixel_size_km))
    scores.ensemble_lead(lead).add(members[:, observed.valid], observed.values, probabilities=probabilities)
    if observed.spectrum is not None:
        _add_spectra(scores, lead, members[0], observed, pixel_size_km, member=True)


def valid_pixel_probabilities(members: np.ndarray, valid: np.ndarray, thresholds: Iterable[float],
                              window_pixels: int) -> dict[float, np.ndarray]:
    """Each threshold's forecast probability at the ``valid`` pixels of ``members`` (member, y, x): the
    members' fraction above it, averaged over the ``window_pixels`` square of valid pixels around
    each pixel (1: the fraction itself)."""
    result = {}
    for thr in thresholds:
        fraction = np.where(valid, np.count_nonzero(members > thr, axis=0) / members.shape[0], np.nan)
        result[thr] = neighbourhood_probability(fraction, window_pixels)[valid]
    return result


def _add_spectra(scores: Scores, lead: float, forecast: np.ndarray, observed: _Observed, pixel_size_km: float, *,
                 member: bool) -> None:
    """The forecast's spectrum, plain and matched to the observed distribution (0 mm/h outside the valid mask)."""
    wavelengths = scores.settings.spectrum_wavelengths_km
    zeroed = np.where(observed.valid, forecast, 0.0)
    scores.spectrum(lead, member=member).add(observed.spectrum, spectrum_on_grid(zeroed, pixel_size_km, wavelengths))
    matched = np.zeros_like(zeroed)
    matched[observed.valid] = matched_to_observed(forecast[observed.valid], observed.values)
    scores.spectrum(lead, matched=True, member=member).add(observed.spectrum,
                                                           spectrum_on_grid(matched, pixel_size_km, wavelengths))


def verify(forecast: xr.DataArray, observed: xr.DataArray, *, scores: Scores | None = None,
           reference_time: Any | None = None) -> Scores:
    """Score one forecast sequence against the observations at its valid times.

    ``observed`` may hold more frames than the forecast; the ones at the forecast's
    times are used. Adds to ``scores`` when given, so that calling this for many
    forecasts aggregates them. The grid must be the same. An ensemble forecast (a
    ``member`` dimension first) is scored as one, its probability-matched mean as its
    deterministic forecast; ``scores`` then has its number of members.
    """
    n_members = forecast.sizes["member"] if "member" in forecast.dims else None
    scores = scores if scores is not None else Scores(members=n_members)
    if forecast.shape[-2:] != observed.shape[1:]:
        raise SequenceError(f"forecast grid {forecast.shape[-2:]} differs from observed {observed.shape[1:]}")
    missing = np.setdiff1d(forecast["time"].values, observed["time"].values)
    if missing.size:
        raise SequenceError(f"no observation at {', '.join(str(pd.Timestamp(t)) for t in missing[:3])}")
    obs = observed.sel(time=forecast["time"].values).values
    if n_members is None:
        deterministic, members = forecast.values, None
    else:
        ordered = forecast.transpose("member", "time", "y", "x")
        members = {"forecast": ordered.values}
        deterministic = probability_matched_mean_of(ordered)
    accumulate({"forecast": scores}, obs, {"forecast": deterministic}, members=members,
               lead_minutes=lead_minutes_of(forecast, reference_time),
               pixel_size_km=pixel_size_km(observed))
    return scores


def _json_float(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return _json_float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
