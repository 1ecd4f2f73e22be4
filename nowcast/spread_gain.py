"""Fitting a GAN ensemble's spread gain to its own members on training events.

The spread gain (``ModelConfig.member_spread_gain_start`` / ``_end``) moves each wet member's
log rate about the members' mean by a factor linear in the lead. It corrects the spread of the
members one generator draws, so it is fitted to that generator: a fine-tuned one draws other
members and needs its own. :func:`fit_spread_gain` draws every start time's members once with no
adjustment, applies every candidate (start, end) to those same members with the model's other
adjustments after it, once, as a forecast does (but for any move towards S-PROG), and scores each by
the exact CRPS at each lead; the best
candidate has the lowest CRPS averaged over leads and then over events, so every event weighs
the same whatever its size. Fit it on training events, never on the events it will be scored on.

``nowcast fit-spread-gain NAME@VERSION --events …`` runs it, prints the candidates and, with
``--register``, registers the best as the model's next version (:func:`nowcast.gan.export.retune_version`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from nowcast.errors import InputError
from nowcast.evaluate import MIN_RAIN_MMH, FittingEvents, Loader, ensemble_forecaster
from nowcast.gan.config import MEMBERS_AS_DRAWN, ModelConfig
from nowcast.verification import SpreadSkillSums, crps_sums

logger = logging.getLogger(__name__)

DEFAULT_STARTS = (1.0, 1.1, 1.25)
DEFAULT_ENDS = (0.8, 0.9, 1.0, 1.1, 1.2, 1.35)


@dataclass(frozen=True)
class SpreadGainFit:
    """Every candidate's scores on the fitting events.

    ``crps``: (candidate, event, lead) mean CRPS in mm/h; ``spread_skill``: (candidate, lead), all
    events' pixels pooled; ``score``: (candidate,) the CRPS averaged over leads, then events.
    """

    model: str
    events: tuple[str, ...]
    candidates: tuple[tuple[float, float], ...]
    crps: np.ndarray
    spread_skill: np.ndarray
    start_times: dict[str, int]
    members: int

    @property
    def score(self) -> np.ndarray:
        return np.nanmean(np.nanmean(self.crps, axis=2), axis=1)

    @property
    def best(self) -> tuple[float, float]:
        return self.candidates[int(np.nanargmin(self.score))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "events": list(self.events), "members": self.members,
            "start_times": self.start_times, "best": list(self.best),
            "candidates": [
                {"start": start, "end": end, "crps": float(score),
                 "crps_per_event": dict(zip(self.events, map(float, np.nanmean(per_event, axis=1)), strict=True)),
                 "crps_per_lead": [float(v) for v in np.nanmean(per_event, axis=0)],
                 "crps_per_event_per_lead": {event: [float(v) for v in leads]
                                             for event, leads in zip(self.events, per_event, strict=True)},
                 "spread_skill_per_lead": [float(v) for v in ratios]}
                for (start, end), score, per_event, ratios
                in zip(self.candidates, self.score, self.crps, self.spread_skill, strict=True)
            ],
        }


def fit_spread_gain(
    model: str,
    events: Sequence[str],
    *,
    starts: Sequence[float] = DEFAULT_STARTS,
    ends: Sequence[float] = DEFAULT_ENDS,
    members: int = 20,
    n_input: int = 4,
    steps: int = 12,
    stride: int = 6,
    seed: int = 0,
    loader: Loader | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    min_rain_mmh: float = MIN_RAIN_MMH,
) -> SpreadGainFit:
    """Score every (start, end) gain of ``starts`` × ``ends`` on the members ``model`` draws on ``events``.

    ``loader`` returns an event's sequence (default: :func:`nowcast.io.catalogue.load_event`, NaN
    frames for missing files); start times are every ``stride`` frames with ``n_input`` past and
    ``steps`` future frames, those without rain or with gaps skipped as ``nowcast evaluate`` does;
    the members of start time k of an event are drawn with seed ``seed + k``.
    """
    try:
        candidates = candidate_gains(starts, ends)
    except ValueError as exc:
        raise InputError(str(exc), field="gains") from exc
    if members < 2:
        raise InputError(f"members must be at least 2 to have a spread, got {members}", field="members")
    fitting = FittingEvents.of(events, loader, n_input=n_input, steps=steps, stride=stride, seed=seed,
                               min_rain_mmh=min_rain_mmh)
    forecaster = ensemble_forecaster(model, models_dir, needed_for="the spread gain is a GAN ensemble's setting")
    # the gain is fitted to the members as they are before any move towards S-PROG
    forecaster = forecaster.with_member_settings(member_sprog_weight_minutes=(), member_sprog_weight=())
    # every adjustment is applied per candidate, so the members are drawn with none (not twice)
    drawer = forecaster.with_member_settings(**MEMBERS_AS_DRAWN)
    crps = np.full((len(candidates), len(fitting.events), steps), np.nan)
    spread = [[SpreadSkillSums() for _ in range(steps)] for _ in candidates]
    counted: dict[str, int] = {}
    for e, event in enumerate(fitting.events):
        sums, counted[event] = _fit_event(forecaster, fitting.draws(event, drawer, members), candidates, steps,
                                          spread)
        with np.errstate(invalid="ignore", divide="ignore"):
            crps[:, e] = np.where(sums[..., 1] > 0, sums[..., 0] / sums[..., 1], np.nan)
        logger.info("spread gain fit: %s, %d start times scored", event, counted[event])
    fitting.check_counted(counted)
    ratios = np.array([[sums.scores(members)["spread_skill"] for sums in per_lead] for per_lead in spread])
    return SpreadGainFit(model, fitting.events, tuple(candidates), crps, ratios, counted, members)


def _fit_event(forecaster: Any, draws: Any, candidates: list[tuple[float, float]], steps: int,
               spread: list[list[SpreadSkillSums]]) -> tuple[np.ndarray, int]:
    """One event's CRPS sums (candidate, lead, [sum, pixels]) and its number of start times; the spread sums
    are added to ``spread``. ``draws``: :meth:`FittingEvents.draws` of the members as drawn (no adjustment)."""
    sums = np.zeros((len(candidates), steps, 2))
    n_starts = 0
    for prepared, drawn, observed in draws:
        gains = [replace(forecaster.model_config, **gain_settings(start, end))
                 .member_spread_gains(prepared.spacing.step_minutes, steps) for start, end in candidates]
        _score_start(forecaster, drawn, prepared, observed, gains, sums, spread)
        n_starts += 1
    return sums, n_starts


def gain_settings(start: float, end: float) -> dict[str, Any]:
    """The ``ModelConfig`` settings of the line from ``start`` (0 min) to ``end`` (60 min), any table of gains
    (``member_spread_gain``) cleared: the fitted line replaces it."""
    return {"member_spread_gain_start": float(start), "member_spread_gain_end": float(end),
            "member_spread_gain_minutes": (), "member_spread_gain": ()}


def candidate_gains(starts: Sequence[float], ends: Sequence[float]) -> list[tuple[float, float]]:
    """Every (start, end) of ``starts`` × ``ends``; ValueError where one is no valid ``ModelConfig`` gain."""
    if not starts or not ends:
        raise ValueError("give at least one start and one end gain")
    for gain in (*starts, *ends):
        try:
            ModelConfig(member_spread_gain_start=gain)
        except ValueError as exc:
            raise ValueError(f"spread gain {gain:g}: {exc}") from exc
    return [(float(s), float(e)) for s in dict.fromkeys(starts) for e in dict.fromkeys(ends)]


def _score_start(forecaster: Any, drawn: np.ndarray, prepared: Any, observed: np.ndarray,
                 gains: list[list[float]], sums: np.ndarray, spread: list[list[SpreadSkillSums]]) -> None:
    """Add one start time's CRPS sums (``sums``: candidate, lead, [sum, pixels]) and spread sums.

    Each lead is adjusted once per distinct gain: candidates that share it there share its score.
    """
    past = prepared.past[None]
    forecaster.run_baselines(past, drawn.shape[2])
    for lead in range(drawn.shape[2]):
        observed_lead = observed[lead]
        scored: dict[float, tuple[float, int, SpreadSkillSums]] = {}
        for c, per_lead in enumerate(gains):
            gain = per_lead[lead]
            if gain not in scored:
                fields = drawn[:, :, lead:lead + 1].copy()
                forecaster.adjust_members(fields, past, prepared.spacing, gains=[gain], first_step=lead)
                scored[gain] = _lead_scores(fields[0, :, 0], observed_lead)
            total, pixels, sums_here = scored[gain]
            sums[c, lead] += (total, pixels)
            spread[c][lead].merge(sums_here)


def _lead_scores(members: np.ndarray, observed: np.ndarray) -> tuple[float, int, SpreadSkillSums]:
    """CRPS sum, pixel count and spread sums over the pixels where the observation and every member are valid."""
    valid = np.isfinite(observed) & np.all(np.isfinite(members), axis=0)
    # pixels dry in the observation and every member add nothing but their count: most of a radar domain
    dry = valid & (observed == 0) & np.all(members == 0, axis=0)
    scored = valid & ~dry
    fields, truth = members[:, scored], observed[scored]
    sums = SpreadSkillSums()
    sums.add(fields, truth)
    sums.n_pixels += int(dry.sum())
    return crps_sums(fields, truth), int(valid.sum()), sums
