"""Fitting the probabilities' neighbourhood to an ensemble on training events.

Neighbourhood processing (:func:`nowcast.ensemble.neighbourhood_probability`) turns each
exceedance probability into its mean over a square window whose side grows a number of km
per minute of lead. Too narrow a window leaves the members' position errors in the
probabilities; too wide a one spreads rain where none can fall. The best width depends on the
ensemble and the radar, so it is fitted: :func:`fit_neighbourhood` draws every start time's
members once, as the forecaster forecasts, and scores the probabilities of every candidate
rate by the Brier score at each threshold and lead. The best rate has the highest Brier skill
against no neighbourhood, averaged over thresholds, leads and then events (every event weighs
the same whatever its size). Fit it on training events, never on the events it will be scored on.

``nowcast fit-neighbourhood NAME --events …`` runs it and prints the candidates; the rate it
finds is what ``--neighbourhood`` (forecast, watch, service) and ``--probability-neighbourhood``
(evaluate) take. With ``--register`` it becomes a GAN ensemble's next version
(``ModelConfig.probability_neighbourhood_km_per_minute``), whose probability products then use
it where a request names no neighbourhood; the retraining job fits it with ``[neighbourhood]``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nowcast.ensemble import MAX_NEIGHBOURHOOD_KM_PER_MINUTE, neighbourhood_window_pixels
from nowcast.errors import InputError
from nowcast.evaluate import MIN_RAIN_MMH, FittingEvents, Loader, ensemble_forecaster
from nowcast.sequence import lead_minutes_of, pixel_size_km
from nowcast.verification import THRESHOLDS_MMH, brier_skill, valid_pixel_probabilities

logger = logging.getLogger(__name__)

DEFAULT_RATES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3)


@dataclass(frozen=True)
class NeighbourhoodFit:
    """Every candidate rate's Brier scores on the fitting events.

    ``brier``: (rate, event, lead, threshold) the Brier score over the event's valid pixels;
    ``rates[0]`` is 0, no neighbourhood, against which ``skill`` is measured: (rate,) the Brier
    skill averaged over thresholds and leads, then events (leads where the unprocessed Brier is
    0, a threshold never reached nor forecast, are left out).
    """

    model: str
    events: tuple[str, ...]
    rates: tuple[float, ...]
    thresholds: tuple[float, ...]
    brier: np.ndarray
    start_times: dict[str, int]
    members: int

    def skill_per_event(self) -> np.ndarray:
        """(rate, event) Brier skill against no neighbourhood, averaged over thresholds and leads."""
        with np.errstate(invalid="ignore", divide="ignore"):
            skill = brier_skill(self.brier, np.where(self.brier[:1] > 0, self.brier[:1], np.nan))
        return np.nanmean(skill, axis=(2, 3))

    @property
    def skill(self) -> np.ndarray:
        return np.nanmean(self.skill_per_event(), axis=1)

    @property
    def best(self) -> float:
        return self.rates[int(np.nanargmax(self.skill))]

    def to_dict(self) -> dict[str, Any]:
        mean_brier = np.nanmean(self.brier, axis=1)  # (rate, lead, threshold) over events
        return {
            "model": self.model, "events": list(self.events), "members": self.members,
            "start_times": self.start_times, "thresholds_mmh": list(self.thresholds), "best": self.best,
            "candidates": [
                {"km_per_minute": rate, "brier_skill": float(skill),
                 "brier_skill_per_event": dict(zip(self.events, map(float, per_event), strict=True)),
                 "brier_per_lead": {f"{t:g}": [float(v) for v in per_lead[:, i]]
                                    for i, t in enumerate(self.thresholds)}}
                for rate, skill, per_event, per_lead
                in zip(self.rates, self.skill, self.skill_per_event(), mean_brier, strict=True)
            ],
        }


def fit_neighbourhood(
    model: str,
    events: Sequence[str],
    *,
    rates: Sequence[float] = DEFAULT_RATES,
    thresholds: Sequence[float] = THRESHOLDS_MMH,
    members: int = 20,
    n_input: int = 4,
    steps: int = 12,
    stride: int = 6,
    seed: int = 0,
    loader: Loader | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    min_rain_mmh: float = MIN_RAIN_MMH,
) -> NeighbourhoodFit:
    """Score every neighbourhood of ``rates`` (km per minute of lead) on the members ``model`` draws on ``events``.

    ``model``: any forecaster that draws members (a GAN ensemble, ``steps``); start times and
    their seeds as in :func:`nowcast.spread_gain.fit_spread_gain`. 0 (no neighbourhood) is
    always a candidate, the reference of the skill.
    """
    candidates = candidate_rates(rates)
    if members < 2:
        raise InputError(f"members must be at least 2 to give probabilities, got {members}", field="members")
    if not thresholds:
        raise InputError("give at least one threshold", field="thresholds")
    fitting = FittingEvents.of(events, loader, n_input=n_input, steps=steps, stride=stride, seed=seed,
                               min_rain_mmh=min_rain_mmh)
    forecaster = ensemble_forecaster(model, models_dir, needed_for="it has no probabilities to process",
                                     gan_only=False)
    brier = np.full((len(candidates), len(fitting.events), steps, len(thresholds)), np.nan)
    counted: dict[str, int] = {}
    for e, event in enumerate(fitting.events):
        sums = np.zeros((len(candidates), steps, len(thresholds), 2))
        counted[event] = 0
        for past, observed, start_seed in fitting.start_times(event):
            forecast = forecaster.forecast(past, steps, members=members, seed=start_seed)
            _add_brier_sums(sums, np.asarray(forecast.values), observed, lead_minutes_of(forecast),
                            pixel_size_km(past), candidates, thresholds)
            counted[event] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            brier[:, e] = np.where(sums[..., 1] > 0, sums[..., 0] / sums[..., 1], np.nan)
        logger.info("neighbourhood fit: %s, %d start times scored", event, counted[event])
    fitting.check_counted(counted)
    return NeighbourhoodFit(model, fitting.events, tuple(candidates), tuple(float(t) for t in thresholds), brier,
                            counted, members)


def candidate_rates(rates: Sequence[float]) -> list[float]:
    """0 then the distinct ``rates`` in order; InputError where one is no valid neighbourhood."""
    for rate in rates:
        if not (np.isfinite(rate) and 0.0 <= rate <= MAX_NEIGHBOURHOOD_KM_PER_MINUTE):
            raise InputError(f"neighbourhood rate {rate:g}: outside [0, {MAX_NEIGHBOURHOOD_KM_PER_MINUTE:g}] km "
                             "per minute", field="rates")
    return list(dict.fromkeys([0.0, *(float(rate) for rate in rates)]))


def _add_brier_sums(sums: np.ndarray, members: np.ndarray, observed: np.ndarray, leads: Sequence[float],
                    size_km: float, rates: Sequence[float], thresholds: Sequence[float]) -> None:
    """Add one start time's squared errors and pixel counts: ``sums`` (rate, lead, threshold, [sum, pixels]).

    ``members`` (member, lead, y, x); the pixels scored, and averaged over, are those where the
    observation and every member are valid, as ``nowcast evaluate`` scores them.
    """
    for i, lead in enumerate(leads):
        valid = np.isfinite(observed[i]) & np.all(np.isfinite(members[:, i]), axis=0)
        if not valid.any():
            continue
        events = {thr: observed[i][valid] > thr for thr in thresholds}
        by_window: dict[int, list[float]] = {}  # rates that give the same window share its scores
        for r, rate in enumerate(rates):
            window = neighbourhood_window_pixels(lead, rate, size_km)
            if window not in by_window:
                probabilities = valid_pixel_probabilities(members[:, i], valid, thresholds, window)
                by_window[window] = [float(np.sum((probabilities[thr] - events[thr]) ** 2)) for thr in thresholds]
            sums[r, i, :, 0] += by_window[window]
            sums[r, i, :, 1] += int(valid.sum())
