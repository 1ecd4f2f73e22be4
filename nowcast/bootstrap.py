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

Ensembles (``nowcast evaluate --members``) add per start time the CRPS and Brier score
sums of every method scored as an ensemble (per lead, and of the forecast's maximum), so
the same resampling gives intervals on a CRPS difference and on the Brier skill of one
ensemble against another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nowcast.errors import InputError
from nowcast.verification import ENSEMBLE_SUM_KINDS, brier_skill, csi, ensemble_sum_kind

#: (model's sums, other's sums) -> the compared value, both (..., sums) arrays
Comparison = Callable[[np.ndarray, np.ndarray], np.ndarray]


def csi_difference_interval(report: dict[str, Any], model: str, baseline: str, *, n_resamples: int = 2000,
                            level: float = 0.9, seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """CSI of ``model`` minus ``baseline`` per lead time and threshold, with its interval.

    Returns ``{lead: {threshold: {"difference", "low", "high", "p_not_ahead"}}}``: the
    difference over all start times, the ``level`` interval of the resampled differences,
    and the fraction of resamples in which the model is not ahead.
    """
    samples = _samples(report, "categorical", model, baseline)
    return _intervals(samples, _difference_of(_csi), n_resamples=n_resamples, level=level, seed=seed)


def spectrum_ratio_difference_interval(report: dict[str, Any], model: str, other: str, *, matched: bool = False,
                                       member: bool = False, n_resamples: int = 2000, level: float = 0.9,
                                       seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Forecast/observed power of ``model`` minus that of ``other``, per lead and wavelength.

    ``matched``: of the forecasts matched to the observed distribution; ``member``: of the first
    member of ensembles (both scored with ``nowcast evaluate --members``). Returns
    ``{lead: {wavelength_km: {"difference", "low", "high", "p_not_ahead"}}}``, where
    "ahead" means more power than ``other``.
    """
    kind = "spectrum" + ("_member" if member else "") + ("_matched" if matched else "")
    return _intervals(_samples(report, kind, model, other), _difference_of(_power_ratio), n_resamples=n_resamples,
                      level=level, seed=seed)


def crps_difference_interval(report: dict[str, Any], model: str, other: str, *, period: str | None = None,
                             n_resamples: int = 2000, level: float = 0.9, seed: int = 0) -> dict[str, dict[str, float]]:
    """CRPS of ``model`` minus that of ``other`` per lead time, with its interval (both scored as ensembles).

    Returns ``{lead: {"difference", "low", "high", "p_not_ahead"}}``, where "ahead" means a
    lower CRPS than ``other``. ``period``: "maximum" for the maximum over the leads of the
    forecast, "accumulation" for the rain over them (mm), keyed by the period's last lead.
    """
    kind = ensemble_sum_kind("crps", period)
    intervals = _intervals(_samples(report, kind, model, other), _difference_of(_mean), n_resamples=n_resamples,
                           level=level, seed=seed, model_ahead=lambda difference: difference < 0)
    return {lead: by_key[_WHOLE_LEAD] for lead, by_key in intervals.items()}


def brier_skill_interval(report: dict[str, Any], model: str, reference: str, *, period: str | None = None,
                         n_resamples: int = 2000, level: float = 0.9,
                         seed: int = 0) -> dict[str, dict[str, dict[str, float]]]:
    """Brier skill of ``model`` against ``reference``, ``1 - BS / BS_reference``, per lead time and threshold.

    Returns ``{lead: {threshold: {"skill", "low", "high", "p_not_ahead"}}}``: the skill over
    all start times, its ``level`` interval, and the fraction of resamples in which the
    skill is not above 0 (the model's Brier score not below the reference's).
    ``period``: "maximum" for the probability of the rate being above the threshold at some lead of the
    forecast, "accumulation" for the rain over the leads being above it (mm), keyed by the period's last lead.
    """
    kind = ensemble_sum_kind("brier", period)
    return _intervals(_samples(report, kind, model, reference), _brier_skill, n_resamples=n_resamples,
                      level=level, seed=seed, name="skill")


_ENSEMBLE_KINDS = (*ENSEMBLE_SUM_KINDS, "spectrum_member", "spectrum_member_matched")
# the key of sums kept per lead time only (the CRPS), as if they were per threshold
_WHOLE_LEAD = ""


def _samples(report: dict[str, Any], kind: str, model: str, other: str) -> dict[tuple[str, str], list[np.ndarray]]:
    """Per (lead, threshold or wavelength) one array per event: (start time, method, sums)."""
    samples: dict[tuple[str, str], list[np.ndarray]] = {}
    for event_id, event in report["events"].items():
        records = event.get("start_times")
        if records is None or (records and kind not in records[0]):
            if kind in _ENSEMBLE_KINDS and records is not None and "crps" not in records[0]:
                raise InputError(f"event {event_id}: no method was scored as an ensemble; run nowcast evaluate "
                                 "with --members")
            raise InputError(f"event {event_id}: the report has no per-start-time {kind} sums (written before "
                             "they were); run nowcast evaluate again")
        if not records:
            continue
        methods = records[0][kind]
        for name in (model, other):
            if name not in methods:
                _unknown_method(report, kind, name, methods)
        for lead, by_key in methods[model].items():
            for sub in _by_key(by_key):
                rows = [[_by_key(r[kind][name].get(lead, {})).get(sub) for name in (model, other)] for r in records]
                if any(v is None for row in rows for v in row):
                    continue  # a lead some start time left out: not pooled here
                samples.setdefault((lead, sub), []).append(np.asarray(rows, dtype=np.float64))
    return samples


def _by_key(sums: dict[str, Any] | list[float]) -> dict[str, Any]:
    return sums if isinstance(sums, dict) else {_WHOLE_LEAD: sums}


def _unknown_method(report: dict[str, Any], kind: str, name: str, methods: dict[str, Any]) -> None:
    if kind in _ENSEMBLE_KINDS and name in report["config"]["methods"]:
        raise InputError(f"method {name!r} was not scored as an ensemble; ensembles there: {', '.join(methods)}")
    raise InputError(f"method {name!r} is not in the report; methods there: {', '.join(methods)}")


def _intervals(samples: dict[tuple[str, str], list[np.ndarray]], compare: Comparison, *, n_resamples: int,
               level: float, seed: int, model_ahead: Callable[[np.ndarray], np.ndarray] = lambda value: value > 0,
               name: str = "difference") -> dict[str, dict[str, dict[str, float]]]:
    """The compared value of the two methods over all start times, and its interval over resampled start times.

    ``model_ahead``: whether a value means the model is ahead of the other method.
    """
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
        value = compare(total[0], total[1])
        values = compare(resampled[:, 0], resampled[:, 1])
        low, high = np.nanquantile(values, [tail, 1.0 - tail])
        result.setdefault(lead, {})[sub] = {
            name: float(value), "low": float(low), "high": float(high),
            "p_not_ahead": float(np.mean(~model_ahead(values))),
        }
    return result


def _difference_of(statistic: Callable[[np.ndarray], np.ndarray]) -> Comparison:
    return lambda model, other: statistic(model) - statistic(other)


def _csi(tables: np.ndarray) -> np.ndarray:
    return csi(*np.moveaxis(tables, -1, 0))


def _mean(sums: np.ndarray) -> np.ndarray:
    """Sum over pixels and pixels -> the mean (CRPS, Brier score)."""
    total, n = np.moveaxis(sums, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / n


def _brier_skill(model: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return brier_skill(_mean(model), _mean(reference))


def _power_ratio(power: np.ndarray) -> np.ndarray:
    observed, forecast = np.moveaxis(power, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return forecast / observed
