"""How sure a difference between two methods of one evaluation is: a paired bootstrap.

``nowcast evaluate`` writes, for every evaluated start time, what that forecast added
to each method's sums (``scores.json``: ``events.ID.start_times``). A resample draws
each event's start times with replacement, so that the mix of events stays, adds up
both methods' sums over the drawn start times and computes the score of each from
them, exactly as the evaluation does over all start times; the spread of the
resampled differences gives an interval.

Start times of one event are not independent (the same rain moves on from one to
the next) and three events are few, so the intervals are a lower bound on the
uncertainty, not a significance test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nowcast.errors import InputError
from nowcast.verification import csi

Statistic = Callable[[np.ndarray], np.ndarray]


def csi_difference_interval(report: dict[str, Any], model: str, baseline: str, *, n_resamples: int = 2000,
                            level: float = 0.9, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """CSI of ``model`` minus ``baseline`` per lead time and threshold, with its interval.

    Returns ``{lead: {threshold: {"difference", "low", "high", "p_not_ahead"}}}``: the
    difference over all start times, the ``level`` interval of the resampled differences,
    and the fraction of resamples in which the model is not ahead.
    """
    samples = _samples(report, "categorical", model, baseline)
    return _intervals(samples, _csi, n_resamples=n_resamples, level=level, seed=seed)


def spectrum_ratio_difference_interval(report: dict[str, Any], model: str, other: str, *, matched: bool = False,
                                       n_resamples: int = 2000, level: float = 0.9,
                                       seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Forecast/observed power of ``model`` minus that of ``other``, per lead and wavelength.

    ``matched``: of the forecasts matched to the observed distribution. Returns
    ``{lead: {wavelength_km: {"difference", "low", "high", "p_not_ahead"}}}``, where
    "ahead" means more power than ``other``.
    """
    kind = "spectrum_matched" if matched else "spectrum"
    return _intervals(_samples(report, kind, model, other), _power_ratio, n_resamples=n_resamples, level=level,
                      seed=seed)


def _samples(report: dict[str, Any], kind: str, model: str, other: str) -> dict[tuple[str, str], list[np.ndarray]]:
    """Per (lead, threshold or wavelength) one array per event: (start time, method, sums)."""
    samples: dict[tuple[str, str], list[np.ndarray]] = {}
    for event_id, event in report["events"].items():
        records = event.get("start_times")
        if records is None or (records and kind not in records[0]):
            raise InputError(f"event {event_id}: the report has no per-start-time {kind} sums (written before "
                             "they were); run nowcast evaluate again")
        if not records:
            continue
        methods = records[0][kind]
        for name in (model, other):
            if name not in methods:
                raise InputError(f"method {name!r} is not in the report; methods there: {', '.join(methods)}")
        for lead, by_key in methods[model].items():
            for sub in by_key:
                rows = [[r[kind][name].get(lead, {}).get(sub) for name in (model, other)] for r in records]
                if any(v is None for row in rows for v in row):
                    continue  # a lead some start time left out: not pooled here
                samples.setdefault((lead, sub), []).append(np.asarray(rows, dtype=np.float64))
    return samples


def _intervals(samples: dict[tuple[str, str], list[np.ndarray]], statistic: Statistic, *, n_resamples: int,
               level: float, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1); got {level}")
    rng = np.random.default_rng(seed)
    tail = (1.0 - level) / 2.0
    result: dict[str, dict[str, dict[str, float]]] = {}
    for (lead, sub), events in samples.items():
        total = sum(counts.sum(axis=0) for counts in events)
        resampled = sum(counts[rng.integers(0, len(counts), (n_resamples, len(counts)))].sum(axis=1)
                        for counts in events)  # (resample, method, ...)
        difference = statistic(total[0]) - statistic(total[1])
        differences = statistic(resampled[:, 0]) - statistic(resampled[:, 1])
        low, high = np.nanquantile(differences, [tail, 1.0 - tail])
        result.setdefault(lead, {})[sub] = {
            "difference": float(difference), "low": float(low), "high": float(high),
            "p_not_ahead": float(np.mean(~(differences > 0))),
        }
    return result


def _csi(tables: np.ndarray) -> np.ndarray:
    return csi(*np.moveaxis(tables, -1, 0))


def _power_ratio(power: np.ndarray) -> np.ndarray:
    observed, forecast = np.moveaxis(power, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return forecast / observed
