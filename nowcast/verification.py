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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from scipy.ndimage import uniform_filter

from nowcast.errors import SequenceError
from nowcast.sequence import pixel_size_km

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


@dataclass(frozen=True)
class ScoreSettings:
    """Which scores to accumulate (thresholds in mm/h, scales and wavelengths in km)."""

    thresholds_mmh: tuple[float, ...] = THRESHOLDS_MMH
    fss_thresholds_mmh: tuple[float, ...] = FSS_THRESHOLDS_MMH
    fss_scales_km: tuple[float, ...] = FSS_SCALES_KM
    spectrum_leads_minutes: tuple[float, ...] = SPECTRUM_LEADS_MINUTES
    spectrum_wavelengths_km: tuple[float, ...] = SPECTRUM_WAVELENGTHS_KM
    spectrum_ratio_wavelengths_km: tuple[float, ...] = SPECTRUM_RATIO_WAVELENGTHS_KM

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


def scale_in_pixels(scale_km: float, pixel_size_km: float) -> int:
    """The FSS window (odd or even, at least one pixel) closest to ``scale_km``."""
    return max(1, round(scale_km / pixel_size_km))


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


class Scores:
    """Scores of one method accumulated over many forecasts, keyed by lead time (minutes)."""

    def __init__(self, settings: ScoreSettings | None = None) -> None:
        self.settings = settings or ScoreSettings()
        self.leads: dict[float, LeadScores] = {}
        self.spectra: dict[float, SpectrumSums] = {}
        self.matched_spectra: dict[float, SpectrumSums] = {}

    def lead(self, lead_minutes: float) -> LeadScores:
        lead_minutes = float(lead_minutes)
        if lead_minutes not in self.leads:
            self.leads[lead_minutes] = LeadScores(self.settings)
        return self.leads[lead_minutes]

    def spectrum(self, lead_minutes: float, *, matched: bool = False) -> SpectrumSums:
        """The spectrum sums at a lead time; ``matched``: of the distribution-matched forecasts."""
        spectra = self.matched_spectra if matched else self.spectra
        lead_minutes = float(lead_minutes)
        if lead_minutes not in spectra:
            spectra[lead_minutes] = SpectrumSums(len(self.settings.spectrum_wavelengths_km))
        return spectra[lead_minutes]

    def merge(self, other: Scores) -> Scores:
        """Add ``other``'s sums to these (same settings); returns self."""
        if other.settings != self.settings:
            raise ValueError("cannot merge scores accumulated with different settings")
        for lead_minutes, lead_scores in other.leads.items():
            self.lead(lead_minutes).merge(lead_scores)
        for lead_minutes, sums in other.spectra.items():
            self.spectrum(lead_minutes).merge(sums)
        for lead_minutes, sums in other.matched_spectra.items():
            self.spectrum(lead_minutes, matched=True).merge(sums)
        return self

    def contingency_counts(self) -> dict[float, dict[float, tuple[int, int, int]]]:
        """(hits, misses, false alarms) per lead time and threshold, so far.

        Differences of two snapshots are one forecast's tables: what a bootstrap over
        start times resamples (:mod:`nowcast.bootstrap`).
        """
        return {lead: {thr: table.counts() for thr, table in scores.contingency.items()}
                for lead, scores in self.leads.items()}

    def spectrum_totals(self, *, matched: bool = False) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        """Summed (observed, forecast) power per lead time, so far (copies)."""
        spectra = self.matched_spectra if matched else self.spectra
        return {lead: (sums.observed.copy(), sums.forecast.copy()) for lead, sums in spectra.items()}

    def csi(self, threshold: float) -> dict[float, float]:
        """CSI per lead time (minutes) at ``threshold`` mm/h."""
        return {lead: scores.categorical(threshold)["CSI"] for lead, scores in sorted(self.leads.items())}

    def spectrum_dict(self, lead_minutes: float, *, matched: bool = False) -> dict[str, Any]:
        sums = (self.matched_spectra if matched else self.spectra)[lead_minutes]
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

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN as None): sums and the scores made of them."""
        return _nan_to_none({
            "leads": {key(lead): scores.to_dict(lead) for lead, scores in sorted(self.leads.items())},
            "spectrum": {key(lead): self.spectrum_dict(lead) for lead in sorted(self.spectra)},
            "spectrum_matched": {key(lead): self.spectrum_dict(lead, matched=True)
                                 for lead in sorted(self.matched_spectra)},
        })


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
    """Wavelengths (km, decreasing) and radially averaged power of a NaN-free 2-D field."""
    from pysteps.utils.spectral import rapsd

    power, frequency = rapsd(np.asarray(field, dtype=np.float64), fft_method=np.fft,
                             return_freq=True, d=pixel_size_km)
    # The zero frequency (the field mean) has no wavelength.
    return 1.0 / frequency[1:], power[1:]


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


def accumulate(
    scores: Mapping[str, Scores],
    observed: np.ndarray,
    forecasts: Mapping[str, np.ndarray],
    *,
    lead_minutes: Sequence[float],
    pixel_size_km: float,
) -> None:
    """Add one set of forecasts of the same observations to each method's scores.

    ``observed``: (lead, y, x) mm/h, NaN = no data; ``forecasts``: method -> array of the
    same shape; ``scores``: method -> :class:`Scores` (one per forecast method);
    ``lead_minutes``: the lead time of each frame. All methods are scored on the pixels
    where the observation and every forecast are finite; a lead time with no such pixel
    is left out (and not counted as a forecast).
    """
    from pysteps.verification import det_cont_fct_accum

    observed = np.asarray(observed)
    if observed.ndim != 3 or len(lead_minutes) != observed.shape[0]:
        raise ValueError(f"observed must be (lead, y, x) with {len(lead_minutes)} leads; "
                         f"got {observed.shape}")
    for name, forecast in forecasts.items():
        if np.shape(forecast) != observed.shape:
            raise ValueError(f"forecast {name!r} has shape {np.shape(forecast)}, observed {observed.shape}")
    if not forecasts:
        return
    settings = next(iter(scores[name] for name in forecasts)).settings
    spectrum_leads = {float(lead) for lead in settings.spectrum_leads_minutes}
    windows = {scale: scale_in_pixels(scale, pixel_size_km) for scale in settings.fss_scales_km}

    for i, lead in enumerate(lead_minutes):
        obs = observed[i].astype(np.float64)
        fcs = {name: np.asarray(forecast[i], dtype=np.float64) for name, forecast in forecasts.items()}
        valid = np.isfinite(obs)
        for fc in fcs.values():
            valid &= np.isfinite(fc)
        if not valid.any():
            logger.debug("lead %g min: no pixel with both observation and forecast; left out", lead)
            continue
        obs_valid = obs[valid]
        obs_zeroed = np.where(valid, obs, 0.0)
        obs_fractions = {(thr, scale): fss_fractions(obs_zeroed, thr, windows[scale])
                         for thr in settings.fss_thresholds_mmh for scale in settings.fss_scales_km}
        with_spectrum = float(lead) in spectrum_leads
        obs_spectrum = (spectrum_on_grid(obs_zeroed, pixel_size_km, settings.spectrum_wavelengths_km)
                        if with_spectrum else None)
        for name, fc in fcs.items():
            lead_scores = scores[name].lead(lead)
            lead_scores.n_forecasts += 1
            fc_valid = fc[valid]
            for table in lead_scores.contingency.values():
                table.add(fc_valid, obs_valid)
            det_cont_fct_accum(lead_scores.continuous, fc_valid, obs_valid)
            fc_zeroed = np.where(valid, fc, 0.0)
            for (thr, scale), obs_fraction in obs_fractions.items():
                _fss_add(lead_scores.fss[(thr, scale)], fss_fractions(fc_zeroed, thr, windows[scale]),
                         obs_fraction)
            if obs_spectrum is not None:
                fc_spectrum = spectrum_on_grid(fc_zeroed, pixel_size_km, settings.spectrum_wavelengths_km)
                scores[name].spectrum(lead).add(obs_spectrum, fc_spectrum)
                matched = np.zeros_like(fc_zeroed)
                matched[valid] = matched_to_observed(fc_valid, obs_valid)
                matched_spectrum = spectrum_on_grid(matched, pixel_size_km, settings.spectrum_wavelengths_km)
                scores[name].spectrum(lead, matched=True).add(obs_spectrum, matched_spectrum)


def lead_minutes_of(forecast: xr.DataArray, reference_time: Any | None = None) -> list[float]:
    """Lead time of each forecast frame in minutes after the forecast reference time."""
    reference = reference_time
    if reference is None:
        reference = forecast.attrs.get("forecast_reference_time")
    if reference is None:
        raise SequenceError("forecast has no forecast_reference_time; pass reference_time")
    reference = pd.Timestamp(reference)
    times = pd.DatetimeIndex(forecast["time"].values)
    return [float((t - reference).total_seconds() / 60.0) for t in times]


def verify(forecast: xr.DataArray, observed: xr.DataArray, *, scores: Scores | None = None,
           reference_time: Any | None = None) -> Scores:
    """Score one forecast sequence against the observations at its valid times.

    ``observed`` may hold more frames than the forecast; the ones at the forecast's
    times are used. Adds to ``scores`` when given, so that calling this for many
    forecasts aggregates them. The grid must be the same.
    """
    scores = scores if scores is not None else Scores()
    if forecast.shape[1:] != observed.shape[1:]:
        raise SequenceError(f"forecast grid {forecast.shape[1:]} differs from observed {observed.shape[1:]}")
    missing = np.setdiff1d(forecast["time"].values, observed["time"].values)
    if missing.size:
        raise SequenceError(f"no observation at {', '.join(str(pd.Timestamp(t)) for t in missing[:3])}")
    obs = observed.sel(time=forecast["time"].values).values
    accumulate({"forecast": scores}, obs, {"forecast": forecast.values},
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
