"""Fitting a GAN ensemble's rate map (``ModelConfig.member_rate_map``) to its own members on training events.

The generator's intensity drifts with the lead in a shape of its own: on the events it was
trained on, its members' area above 4 mm/h falls to about 0.7 of the observed in mid-hour and
swells to nearly twice it at +60 min, whatever the motion shift (run 48 in
docs/gan-experiments.md). :func:`fit_rate_map` draws each start time's members as the model
draws them (spread gain and intensity noise on, any earlier map off, and matching and the move
towards S-PROG off unless the map comes after them), and at each
lead finds the members' rate whose pooled exceedance fraction is the observed one's at each
threshold: the members' area above that rate equals the observed area above the threshold.
Fractions are taken per event (its start times' pixels pooled), brought onto every lead of
the table (linear in the lead between the event's own, held outside them: a 10-min event has no
+5 min) and then averaged over the events, so each event weighs the same whatever its size and
time step. The map is then a quantile mapping per
lead from the members' climatology onto the observed one, on the fitting events: fit it on
training events, never on the events it will be scored on.

``nowcast fit-rate-map NAME@VERSION --events …`` runs it, prints the members' area against the
observed per lead and threshold and, with ``--register``, registers the map as the model's next
version (:func:`nowcast.gan.export.retune_version`).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nowcast.ensemble import map_rates
from nowcast.errors import InputError
from nowcast.evaluate import MIN_RAIN_MMH, FittingEvents, Loader, ensemble_forecaster
from nowcast.sequence import MAX_RAIN_RATE_MMH

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS_MMH = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: leads past this many minutes are not fitted: the map holds its last row beyond them
DEFAULT_MAX_MINUTES = 60.0
#: an observed area below this fraction of the pixels is too little rain to fit a threshold on
MIN_FRACTION = 1e-5
#: the rates (mm/h) at which the members' exceedance fractions are counted
_RATE_GRID = np.geomspace(0.01, MAX_RAIN_RATE_MMH, 800)
_NO_MAP = {"member_rate_map": (), "member_rate_map_mmh": (), "member_rate_map_minutes": ()}


def _map_off(model: Any) -> dict[str, Any]:
    """The member settings that draw the members as they reach the map: no map yet, and, for a map
    that does not come last (``ModelConfig.member_rate_map_last``), none of what follows it."""
    if model.member_rate_map_last:
        return dict(_NO_MAP)
    return {**_NO_MAP, "member_matching": "none", "member_sprog_weight_minutes": (), "member_sprog_weight": ()}


@dataclass(frozen=True)
class RateMapFit:
    """The fitted map and what it corrects.

    ``member_rates``: (lead, threshold) the members' rate whose area is the observed one above each
    threshold (the threshold itself where too little rain was observed, where the members never reach
    the observed area, and at the leads they are matched to the last frame); ``area_ratio``: (lead,
    threshold) the members' area above each threshold over the observed one, before the map;
    ``map_last``: whether the model's map comes last (``ModelConfig.member_rate_map_last``), so that
    the fitted members are the final ones but for the map.
    """

    model: str
    events: tuple[str, ...]
    thresholds_mmh: tuple[float, ...]
    minutes: tuple[float, ...]
    member_rates: np.ndarray
    area_ratio: np.ndarray
    start_times: dict[str, int]
    members: int
    map_last: bool

    def settings(self, member_thresholds: Sequence[float] | None = None) -> dict[str, Any]:
        """The ``ModelConfig`` fields that carry this map: the members' at every threshold of the fit; or theirs at
        ``member_thresholds`` (some of the fit's) only, and the probability-matched mean's (``mean_rate_map``) at
        every threshold, from the members' rates as their own map leaves them. A mean map needs a fit of members
        whose map comes last (``ModelConfig.member_rate_map_last``): what it maps is the members' final rates."""
        if member_thresholds is None:
            return _map_settings("member_rate_map", self.thresholds_mmh, self.minutes, self.member_rates)
        if not self.map_last:
            raise InputError(f"{self.model}: its rate map does not come last, so its members' final rates are not "
                             "the mapped ones a mean map starts from; fit one with member_rate_map_last=true",
                             field="member_thresholds")
        columns = self._columns(member_thresholds)
        kept = _map_settings("member_rate_map", tuple(self.thresholds_mmh[i] for i in columns), self.minutes,
                             self.member_rates[:, columns])
        onto = kept["member_rate_map_mmh"]
        final = np.array([map_rates(row, member_row, onto)
                          for row, member_row in zip(self.member_rates, kept["member_rate_map"], strict=True)])
        return {**kept, **_map_settings("mean_rate_map", self.thresholds_mmh, self.minutes, final)}

    def _columns(self, member_thresholds: Sequence[float]) -> list[int]:
        """The fit's columns of ``member_thresholds``; InputError where one is not a threshold of the fit."""
        wanted = checked_thresholds(member_thresholds)
        missing = [t for t in wanted if t not in self.thresholds_mmh]
        if missing or len(wanted) == len(self.thresholds_mmh):
            raise InputError(f"member thresholds {list(wanted)}: give some, not all, of the fit's thresholds "
                             f"{list(self.thresholds_mmh)}", field="member_thresholds")
        return [self.thresholds_mmh.index(t) for t in wanted]

    def to_dict(self, member_thresholds: Sequence[float] | None = None) -> dict[str, Any]:
        return {"model": self.model, "events": list(self.events), "members": self.members,
                "start_times": self.start_times, **self.settings(member_thresholds),
                "area_ratio": [[round(float(v), 4) for v in row] for row in self.area_ratio]}


def _map_settings(name: str, thresholds: Sequence[float], minutes: Sequence[float], rows: np.ndarray,
                  ) -> dict[str, Any]:
    """The ``ModelConfig`` fields of one rate map (``name``: member_rate_map or mean_rate_map)."""
    return {f"{name}_mmh": list(thresholds), f"{name}_minutes": list(minutes),
            name: [[round(float(v), 4) for v in row] for row in rows]}


def fit_rate_map(
    model: str,
    events: Sequence[str],
    *,
    thresholds_mmh: Sequence[float] = DEFAULT_THRESHOLDS_MMH,
    members: int = 20,
    n_input: int = 4,
    steps: int = 12,
    stride: int = 6,
    seed: int = 0,
    max_minutes: float = DEFAULT_MAX_MINUTES,
    loader: Loader | None = None,
    models_dir: str | os.PathLike[str] | None = None,
    min_rain_mmh: float = MIN_RAIN_MMH,
) -> RateMapFit:
    """The rate map of ``model``'s members on ``events`` (start times every ``stride`` frames, those
    without rain or with gaps skipped as ``nowcast evaluate`` does; start time k draws with ``seed + k``)."""
    thresholds = checked_thresholds(thresholds_mmh)
    fitting = FittingEvents.of(events, loader, n_input=n_input, steps=steps, stride=stride, seed=seed,
                               min_rain_mmh=min_rain_mmh)
    forecaster = ensemble_forecaster(model, models_dir, needed_for="the rate map is a GAN ensemble's setting")
    if forecaster.model_config.member_area_mmh:
        raise InputError(f"{model} sets member_area_mmh, which maps the members again after the rate map, per "
                         "forecast: fit the map on a version without it (nowcast retune --set member_area_mmh=[]) "
                         "and set it again after")
    drawer = forecaster.with_member_settings(**_map_off(forecaster.model_config))
    per_event: list[dict[float, tuple[np.ndarray, np.ndarray]]] = []
    counted: dict[str, int] = {}
    for event in fitting.events:
        fractions, counted[event] = _event_fractions(fitting.draws(event, drawer, members), members, thresholds,
                                                     max_minutes)
        per_event.append(fractions)
        logger.info("rate map fit: %s, %d start times", event, counted[event])
    fitting.check_counted(counted)
    minutes = sorted({lead for fractions in per_event for lead in fractions})
    # every event on every lead, so that no row is the mean of other events than its neighbours'
    on_leads = [_on_leads(fractions, minutes) for fractions in per_event if fractions]
    rows = [_lead_row([fractions[i] for fractions in on_leads], thresholds) for i in range(len(minutes))]
    member_rates = np.array([rates for rates, _ in rows])
    # matched members carry the radar's quantised rates, some networks' on the thresholds themselves
    # (bom-20180616: 0.5 mm/h steps), so that a map lifting them by 1 % moved a whole level across a threshold
    # (run 52): where members are matched the map is the identity
    member_rates[np.array([forecaster.model_config.matches_at(lead) for lead in minutes])] = thresholds
    return RateMapFit(model, fitting.events, tuple(thresholds), tuple(minutes), member_rates,
                      np.array([ratio for _, ratio in rows]), counted, members,
                      forecaster.model_config.member_rate_map_last)



def checked_thresholds(thresholds_mmh: Sequence[float]) -> tuple[float, ...]:
    """The map's thresholds as floats; InputError where they are not increasing rain rates."""
    thresholds = tuple(float(t) for t in thresholds_mmh)
    if not thresholds or any(not 0 < t < MAX_RAIN_RATE_MMH for t in thresholds) or any(
            b <= a for a, b in itertools.pairwise(thresholds)):
        raise InputError(f"thresholds {list(thresholds)}: give increasing rain rates between 0 and "
                         f"{MAX_RAIN_RATE_MMH:g} mm/h", field="thresholds")
    return thresholds


def _event_fractions(draws: Any, members: int, thresholds: tuple[float, ...], max_minutes: float,
                     ) -> tuple[dict[float, tuple[np.ndarray, np.ndarray]], int]:
    """Per lead (minutes): the observed fraction above each threshold and the members' above each rate of
    ``_RATE_GRID``, over the valid pixels of the event's start times (``draws``:
    :meth:`FittingEvents.draws`); and the number of start times."""
    counts: dict[float, np.ndarray] = {}
    n_starts = 0
    for prepared, drawn, observed in draws:
        drawn = drawn[0]
        for lead in range(drawn.shape[1]):
            minutes = round((lead + 1) * prepared.spacing.step_minutes, 2)
            if minutes > max_minutes + 1e-6:
                break
            truth, fields = observed[lead], drawn[:, lead]
            valid = np.isfinite(truth) & np.all(np.isfinite(fields), axis=0)
            sums = counts.setdefault(minutes, np.zeros(1 + len(thresholds) + len(_RATE_GRID)))
            sums[0] += valid.sum()
            sums[1:1 + len(thresholds)] += [(truth[valid] > t).sum() for t in thresholds]
            values = np.sort(fields[:, valid].ravel())
            sums[1 + len(thresholds):] += (len(values) - np.searchsorted(values, _RATE_GRID, side="right")) / members
        n_starts += 1
    fractions = {lead: (s[1:1 + len(thresholds)] / s[0], s[1 + len(thresholds):] / s[0])
                 for lead, s in counts.items() if s[0] > 0}
    return fractions, n_starts


def _on_leads(fractions: dict[float, tuple[np.ndarray, np.ndarray]], minutes: list[float],
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """One event's fractions at each of ``minutes``: linear in the lead between its own leads, held outside them."""
    own = sorted(fractions)
    observed = np.array([fractions[lead][0] for lead in own])
    forecast = np.array([fractions[lead][1] for lead in own])
    return [(_interp_rows(lead, own, observed), _interp_rows(lead, own, forecast)) for lead in minutes]


def _interp_rows(lead: float, leads: list[float], rows: np.ndarray) -> np.ndarray:
    return np.array([np.interp(lead, leads, column) for column in rows.T])


def _lead_row(fractions: list[tuple[np.ndarray, np.ndarray]], thresholds: tuple[float, ...],
              ) -> tuple[np.ndarray, np.ndarray]:
    """One lead's members' rates onto ``thresholds`` and area ratio, the events' fractions averaged."""
    observed = np.mean([f[0] for f in fractions], axis=0)
    forecast = np.mean([f[1] for f in fractions], axis=0)  # non-increasing along _RATE_GRID
    logs = np.log(_RATE_GRID)
    at_thresholds = np.interp(np.log(thresholds), logs, forecast)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(observed > 0, at_thresholds / observed, np.nan)
    rates = np.array(thresholds)
    reachable = (observed >= MIN_FRACTION) & (observed < forecast[0])
    # the rate where the members' fraction falls to the observed one: interp needs increasing x
    rates[reachable] = np.exp(np.interp(observed[reachable], forecast[::-1], logs[::-1]))
    for i in range(1, len(rates)):  # increasing, as ModelConfig requires
        rates[i] = max(rates[i], rates[i - 1] * 1.001)
    return rates, ratio
