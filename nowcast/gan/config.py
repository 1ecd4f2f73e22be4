"""Frozen configs of the multi-scale GAN and its training job.

``ExperimentConfig`` is what ``nowcast train --config FILE`` reads (TOML or JSON,
unknown keys rejected); ``ModelConfig`` and ``Normalisation`` travel with the weights
into every exported artifact, so a model rebuilds itself without outside knowledge.
The defaults are the recipe of the shipped ``default-gan`` (``configs/default-gan.toml``
spells it out, and a test keeps the two equal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nowcast.config import ConfigError
from nowcast.ensemble import MAX_NEIGHBOURHOOD_KM_PER_MINUTE
from nowcast.transforms import Normalisation

#: ``ModelConfig.member_matching``: no matching, each member on its own, all members together
MEMBER_MATCHING = ("none", "each", "pooled")
#: the member settings under which ``GANForecaster.adjust_members`` leaves the members as the generator drew them
#: (a fit that applies the adjustments itself draws with these)
MEMBERS_AS_DRAWN = {"member_spread_gain_start": 1.0, "member_spread_gain_end": 1.0, "member_spread_gain_minutes": (),
                    "member_spread_gain": (), "member_matching": "none",
                    "member_rate_map_mmh": (), "member_rate_map_minutes": (), "member_rate_map": (),
                    "member_rate_map_last": False, "member_sprog_weight_minutes": (), "member_sprog_weight": (),
                    "member_sprog_keeps_rates": False, "member_area_mmh": (), "member_area_ceiling": False}


@dataclass(frozen=True)
class ModelConfig:
    """The generator and discriminators; the defaults build the shipped ``default-gan``.

    ``generator_channels``/``discriminator_channels``: width per scale, coarsest first;
    their length is the number of scales K (scale k works at 1/2^(K-1-k) resolution).
    ``condition_on_advection``: refine the semi-Lagrangian advection of the last frame
    (Lucas–Kanade motion, as the extrapolation baseline) in the frame of reference that
    moves with the rain (L-CNN, Ritvanen et al. 2023): the past frames are first moved
    along the motion to where their air is at the last observation, so that every pixel
    of the input follows one air parcel through time and growth and decay are differences
    in place; the generator predicts the correction of each parcel's last rain rate per
    lead time, and that correction is carried along the back-trajectories onto the
    advected forecast (a parcel without data at the last observation gets none, and where a
    parcel comes from off the grid or from no data the forecast is no data, as extrapolation's). False:
    predict from the past frames alone, as in Mathieu et al.
    ``noise_channels``: Gaussian noise maps added to every scale's input, so that the
    same past can give several futures (ensemble members); 0 for the paper's model.
    ``motion_downsample``: the dense motion field is interpolated on a grid this many
    times coarser than the frames (:func:`nowcast.motion.lucas_kanade_coarse`).
    ``envelope_db``/``envelope_radius``: when ``envelope_db`` > 0 (and the model is
    conditioned on advection), no forecast pixel may exceed the strongest advected rain
    within ``envelope_radius`` full-resolution pixels by more than ``envelope_db``.
    Rain can still grow tenfold (10 dB) and spread next to existing rain, but a model
    fed a situation unlike its training data cannot invent hundreds of mm/h out of light
    rain, which an unbounded correction did on a held-out event.
    ``correction_deadzone_db``/``correction_db_per_step``: limits on the learnt correction
    of advection (conditioned models only), applied at every scale. A correction smaller
    than ``correction_deadzone_db`` is set to zero and larger ones are shrunk by it, so the
    forecast is exactly the advection wherever the model has nothing confident to add
    (training passes gradients straight through, or a zero-initialised model could not
    start learning). ``correction_db_per_step`` bounds the correction smoothly to ±that many
    dB times the lead (in steps): the first frames of a nowcast are where advection is
    hardest to beat, and growth and decay build up with time. 0 turns either off.
    ``member_motion_sigma``: when members are drawn, each member's motion field is shifted
    by its own constant vector drawn from N(0, sigma²) per component (pixels per step), so
    that members differ in where the rain goes as well as in how it grows (position
    uncertainty, as STEPS perturbs its motion). 0: every member shares the estimated motion.
    ``member_motion_kmh``: the same shift with its standard deviation in km/h, turned into
    pixels per step with each forecast's pixel size and time step, so that members spread
    as far on a 500 m, 6-min grid as on a 1 km, 5-min one (6 km/h is 0.5 px per step on the
    latter and 1.2 on the former). At most one of the two is set.
    ``member_motion_growth``: how the displacement a member's shift causes grows with the
    lead t: as t^growth, equal to the constant shift's at one hour. 1 is a constant shift
    (displacement proportional to the lead); below 1 members part sooner and the shift
    slows after the first steps, above 1 they part later. (Run 30 in docs/gan-experiments.md:
    0.7 lowered the CRPS on training events and raised it on held-out ones; run 63: 1.3 at 20
    km/h lowered it late in the hour and raised the Brier score at 1 mm/h.)
    ``member_shift_moves_past``: whether a member's past frames are moved to the last one
    along its shifted motion (True) or along the estimated motion all members share (False).
    The shift is a guess about the future; the past was observed, and its parcels moved
    with the estimated motion.
    ``member_intensity_db``: when members are drawn, each member's rain rates are multiplied
    by its own random field, log-normal with this standard deviation in dB and mean 1, so
    that members differ in how strong the rain is where the generator's noise barely acts:
    early in the hour, where a nowcast's error is in intensity more than in position (run 35
    in docs/gan-experiments.md). ``member_intensity_km``: the field's correlation length (a
    Gaussian filter of that standard deviation over white noise), and
    ``member_intensity_minutes``: the e-folding time of its correlation from one lead to the
    next (an AR(1) process). 0 dB: no such perturbation. Dry pixels stay dry.
    ``member_spread_gain_start``/``member_spread_gain_end``: when members are drawn, at each
    pixel every wet member's log rain rate is moved away from (gain above 1) or towards
    (below 1) the mean log rate of the wet members there, by a gain linear in the lead time
    from the first value at 0 min to the second at 60 min (and held after). An ensemble
    that is too narrow early and too wide late in the hour is calibrated that way without
    retraining, and a member's intensity, not its position or wet area, is what changes:
    dry members stay dry, wet ones wet. Unlike every other member setting this makes a member depend on the others drawn
    with it (their mean), so 10 members are not the first 10 of 20. 1 and 1: off.
    ``member_spread_gain_minutes`` / ``member_spread_gain``: the same gain read from a table by lead
    instead of the line (linear between its leads, held beyond them), for a gain the line cannot
    draw: the first lead, whose members are matched to the last frame and scored against rain
    still close to it, wants less spread than the next (run 55 in docs/gan-experiments.md). Empty:
    the line; the line and a table are not set together.
    ``member_matching``: when members are drawn, after the settings above, at each lead the
    wet pixels of each member ("each", as STEPS matches its members' distribution) or of
    all members together ("pooled") take the observed rain rate of the same exceedance
    fraction in the last observed frame: the k-th wettest of n valid pixels takes the
    observed rate exceeded by a fraction k/n of the observed pixels. The forecast wet
    area can shrink (its weakest pixels take dry values) but never grows, and the
    observed rain's distribution replaces the generator's, whose domain rain drifts with
    the lead. "pooled" leaves members their differences from one another (a member wetter
    than another stays so) and fits only their ensemble to the observed distribution;
    like the spread gain it makes a member depend on the others drawn with it. "none": off.
    (Run 37 in docs/gan-experiments.md: matched at every lead, the members lost on the training
    events; the generator's growth and decay were worth more than the observed distribution.)
    ``member_matching_minutes``: match only the leads up to this many minutes, where the last
    observed frame's distribution is still the rain's and the generator has not yet grown or
    decayed it (run 44: the first 10 minutes); 0 matches every lead.
    ``member_rate_map_mmh`` / ``member_rate_map_minutes`` / ``member_rate_map``: when members
    are drawn, after the spread gain and before matching, each wet member's rate at a lead
    maps onto the rates ``member_rate_map_mmh`` (increasing), piecewise linearly in log rate
    from that lead's row of ``member_rate_map`` (the members' rates, one row per lead time of
    ``member_rate_map_minutes``, rows interpolated between those leads and held beyond them),
    at the nearest pair's ratio outside it. Fitted on training events by ``nowcast
    fit-rate-map`` so that the members' pooled area above each threshold at each lead is the
    observed one: the generator's intensity drifts with the lead in a shape of its own (too
    little heavy rain in mid-hour, too much at the end, on the events it was trained on). Wet
    members stay wet and dry ones dry; the fit leaves the leads where members are matched to the last
    frame unmapped (their rates are the radar's quantised ones there). Empty: no map.
    ``member_rate_map_last``: the map comes after matching and the move towards S-PROG instead of
    before them, and ``nowcast fit-rate-map`` fits it on members drawn with both, so that it is
    the members' final area above each threshold that is the observed one: the move blends in
    S-PROG's smooth field and so adds light rain that a map before it leaves in (run 51 in
    docs/gan-experiments.md).
    ``member_sprog_weight_minutes`` / ``member_sprog_weight``: when members are drawn, after
    everything above but a map that comes last, each member's dBR (pySTEPS' transform: rates below
    0.1 mm/h at -15 dBR) moves by ``w`` times S-PROG's dBR less the members' mean dBR at each pixel,
    ``w`` read from the table at the lead (linear between its leads, held beyond them; 0 where
    S-PROG has no value), and rates below 0.1 mm/h become dry. At ``w`` = 1 the members' mean dBR is
    S-PROG's (Seed 2003: the cascade whose small scales fade as they lose skill), and the members
    keep their differences from one another: where S-PROG places the rain better than the members'
    mean, early in the hour, the whole ensemble moves there. It makes a member depend on the others
    drawn with it, and runs pySTEPS' S-PROG on the last 3 frames. Empty: off.
    ``member_sprog_keeps_rates``: the move towards S-PROG places the rain only: each member then
    takes back the rain rates it had before the move, its k-th wettest pixel after the move the
    k-th highest rate before it. The move's dBR shift is S-PROG's less the members' mean, and
    where some members are dry that mean sits near the dry value, so the wet ones move up by
    several dB: on bom-20180616 the move took the members' area above 1 / 4 / 8 mm/h at +6 min
    from 0.98 / 0.95 / 0.95 of the observed (as matched to the last frame) to 1.12 / 1.08 / 1.07
    (run 51). False: the moved rates.
    ``member_area_mmh``: when members are drawn, last of all, at each lead after those matched to the
    last frame, one map for all members of a forecast (piecewise linear in log rate, the identity from
    twice the highest of these rates up) sets the members' pooled area above each of these rates (mm/h)
    to the area above it of the last frame advected to that lead (the extrapolation baseline's, over
    the pixels where both have values). The generator grows and decays light rain with little skill,
    and differently on each event, so a map fitted on other events (``member_rate_map``) leaves the
    area off where this forecast's own advected rain is the better guess of it; heavier rain keeps the
    generator's growth and decay (run 53 in docs/gan-experiments.md). Wet members stay wet and dry
    ones dry, so the area cannot grow past the members' wet area. Empty: off.
    ``member_area_ceiling``: ``member_area_mmh``'s areas are ceilings only: a rate where the members
    have no more area above it than the extrapolation is left out of the map, so the step only takes
    back light rain the generator grew past the advected rain's, never adds what it decayed (the
    members' decay of rain is often right where the advected rain keeps it). False: the area is set
    either way.
    ``probability_neighbourhood_km_per_minute``: the square neighbourhood, growing this many
    km per minute of lead, that the members' exceedance probabilities are processed with
    where a product request does not name one (:mod:`nowcast.products`); fitted on training
    events by ``nowcast fit-neighbourhood``. The members themselves do not change. 0: none.
    ``mean_neighbourhood_km_per_minute``: the probability-matched mean takes its ranks from
    the ensemble mean's mean over a square window growing this many km per minute of lead
    (its values are still the members'); 0: the ensemble mean's own ranks. Run 45 in
    docs/gan-experiments.md: 0.3 raised its CSI at 1 mm/h on every training and held-out event.
    ``mean_sprog_weight_minutes`` / ``mean_sprog_weight``: the probability-matched mean takes its
    ranks from the members moved towards S-PROG by these weights (read as ``member_sprog_weight``
    is, on top of any move of the members themselves): their mean places it, the members' values
    fill it. No member changes; the forecast carries the placement (:mod:`nowcast.products`).
    Empty: the ensemble mean places it.
    ``mean_outline_sprog_weight_minutes`` / ``mean_outline_sprog_weight`` / ``mean_core_mmh``: the
    probability-matched mean keeps the placement above ``mean_core_mmh`` (its core), and its lighter
    rain around it takes its ranks from the members moved towards S-PROG by these weights instead
    (:func:`nowcast.ensemble.core_and_outline`): S-PROG's smooth field places the edge of a wide rain
    area better than the members do, while the members place heavy rain better than it (run 55 in
    docs/gan-experiments.md). The same values, so the same area above every threshold. No member
    changes. Empty: one placement for all rates.
    ``mean_outline_probability_mmh`` / ``mean_outline_probability_weight_minutes`` /
    ``mean_outline_probability_weight``: the outline's order blends (by rank, these weights per lead) the moved
    members' mean with their probability of rain above this rate, each over the mean's window
    (:func:`nowcast.ensemble.blended_order`): of two pixels as wet on average, the one more members rain on
    is more likely wet, which the mean does not weigh where one member's heavy cell lifts it. Empty: the
    moved mean's order.
    ``mean_core_probability_weight_minutes`` / ``mean_core_probability_weight``: which pixels make the
    probability-matched mean's core (its values from ``mean_core_mmh`` up) is decided by an order that blends
    (by rank, these weights per lead) its placement with the placing members' (moved by ``mean_sprog_weight``)
    probability of rain above ``mean_core_mmh``, each over the mean's window; within the core the placement
    still puts the heaviest rain. The outline's blend, for the heavy rain's extent (run 57 in
    docs/gan-experiments.md). Empty: the placement's order alone.
    ``mean_rate_map_mmh`` / ``mean_rate_map_minutes`` / ``mean_rate_map``: the probability-matched
    mean's rates mapped per lead as ``member_rate_map`` maps the members' (rows of the members'
    final rates that map onto ``mean_rate_map_mmh``), so that its area above each threshold is the
    observed one on the fitting events where the members' own map matches only some thresholds
    (``nowcast fit-rate-map --member-thresholds``). The members' values set its distribution; a
    map that is monotonic in the rate keeps its ranks, so it is the probability-matched mean of
    the members mapped this way. Calibrated members and a mean with the observed heavy-rain area
    pull apart (run 51: the map at every threshold raised the mean's CSI at 4 and 8 mm/h and the
    members' CRPS with it). No member changes; the forecast carries the mapped mean
    (:mod:`nowcast.products`). Empty: the members' values as they are.
    ``lead_basis``: when > 0, what each scale adds is projected onto polynomials of that
    many degrees of freedom in the lead time (3: quadratic), so that a parcel's growth or
    decay is a smooth curve over the hour. 0 leaves one free output per lead time, and
    fine-tuning on small batches then let neighbouring leads drift apart: ensemble-gan v2's
    domain-mean rain fell by a third from +30 to +45 min and rose back by +60 min on every
    held-out event, where the observed rain changed smoothly.
    """

    n_input: int = 4
    n_output: int = 12
    generator_channels: tuple[int, ...] = (32, 32, 24, 16)
    generator_layers: int = 4
    discriminator_channels: tuple[int, ...] = (16, 16, 16, 16)
    condition_on_advection: bool = True
    noise_channels: int = 0
    motion_downsample: int = 4
    envelope_db: float = 10.0
    envelope_radius: int = 8
    correction_deadzone_db: float = 0.5
    correction_db_per_step: float = 0.5
    member_motion_sigma: float = 0.0
    member_motion_kmh: float = 0.0
    member_motion_growth: float = 1.0
    member_shift_moves_past: bool = True
    member_intensity_db: float = 0.0
    member_intensity_km: float = 2.0
    member_intensity_minutes: float = 45.0
    member_spread_gain_start: float = 1.0
    member_spread_gain_end: float = 1.0
    member_spread_gain_minutes: tuple[float, ...] = ()
    member_spread_gain: tuple[float, ...] = ()
    member_matching: str = "none"
    member_matching_minutes: float = 0.0
    member_rate_map_mmh: tuple[float, ...] = ()
    member_rate_map_minutes: tuple[float, ...] = ()
    member_rate_map: tuple[tuple[float, ...], ...] = ()
    member_rate_map_last: bool = False
    member_sprog_weight_minutes: tuple[float, ...] = ()
    member_sprog_weight: tuple[float, ...] = ()
    member_sprog_keeps_rates: bool = False
    member_area_mmh: tuple[float, ...] = ()
    member_area_ceiling: bool = False
    probability_neighbourhood_km_per_minute: float = 0.0
    mean_neighbourhood_km_per_minute: float = 0.0
    mean_sprog_weight_minutes: tuple[float, ...] = ()
    mean_sprog_weight: tuple[float, ...] = ()
    mean_outline_sprog_weight_minutes: tuple[float, ...] = ()
    mean_outline_sprog_weight: tuple[float, ...] = ()
    mean_core_mmh: float = 0.0
    mean_core_probability_weight_minutes: tuple[float, ...] = ()
    mean_core_probability_weight: tuple[float, ...] = ()
    mean_outline_probability_mmh: float = 0.0
    mean_outline_probability_weight_minutes: tuple[float, ...] = ()
    mean_outline_probability_weight: tuple[float, ...] = ()
    mean_rate_map_mmh: tuple[float, ...] = ()
    mean_rate_map_minutes: tuple[float, ...] = ()
    mean_rate_map: tuple[tuple[float, ...], ...] = ()
    lead_basis: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.lead_basis <= self.n_output:
            raise ValueError(f"lead_basis must be between 0 (off) and n_output ({self.n_output})")
        for name in ("member_motion_sigma", "member_motion_kmh"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
            if getattr(self, name) > 0 and not self.condition_on_advection:
                raise ValueError(f"{name} needs condition_on_advection: it perturbs the advection's motion")
        if not 0.0 < self.member_motion_growth <= 2.0:
            raise ValueError("member_motion_growth must be in (0, 2]: the displacement grows as lead^growth")
        if self.member_intensity_db < 0:
            raise ValueError("member_intensity_db must not be negative")
        if self.member_intensity_km <= 0 or self.member_intensity_minutes <= 0:
            raise ValueError("member_intensity_km and member_intensity_minutes must be positive")
        for name in ("member_spread_gain_start", "member_spread_gain_end"):
            if not 0.0 < getattr(self, name) <= 3.0:
                raise ValueError(f"{name} must be in (0, 3]: a gain on the members' log rain rates around their mean")
        self._check_spread_gain_table()
        for name in ("probability_neighbourhood_km_per_minute", "mean_neighbourhood_km_per_minute"):
            if not 0.0 <= getattr(self, name) <= MAX_NEIGHBOURHOOD_KM_PER_MINUTE:
                raise ValueError(f"{name} must be in [0, {MAX_NEIGHBOURHOOD_KM_PER_MINUTE:g}] km per minute of lead")
        if self.member_matching not in MEMBER_MATCHING:
            raise ValueError(f"member_matching {self.member_matching!r}: one of {', '.join(MEMBER_MATCHING)}")
        if not (math.isfinite(self.member_matching_minutes) and self.member_matching_minutes >= 0):
            raise ValueError("member_matching_minutes must be a non-negative number of minutes (0: every lead)")
        self._check_rate_map()
        self._check_sprog_weight()
        if self.member_motion_sigma > 0 and self.member_motion_kmh > 0:
            raise ValueError("set member_motion_sigma (pixels per step) or member_motion_kmh (km/h), not both")
        if self.motion_downsample < 1:
            raise ValueError("motion_downsample >= 1")
        if self.envelope_db < 0 or self.envelope_radius < 0:
            raise ValueError("envelope_db and envelope_radius must not be negative")
        if self.envelope_db > 0 and not self.condition_on_advection:
            raise ValueError("envelope_db needs condition_on_advection: the envelope is the advected rain's")
        if self.correction_deadzone_db < 0 or self.correction_db_per_step < 0:
            raise ValueError("correction_deadzone_db and correction_db_per_step must not be negative")
        if (self.correction_deadzone_db > 0 or self.correction_db_per_step > 0) and not self.condition_on_advection:
            raise ValueError("correction_deadzone_db and correction_db_per_step need condition_on_advection: "
                             "they limit the correction of the advection (set them to 0)")
        if len(self.generator_channels) != len(self.discriminator_channels):
            raise ValueError("generator_channels and discriminator_channels need one entry per scale")
        if not 1 <= len(self.generator_channels) <= 6:
            raise ValueError("between 1 and 6 scales")
        if self.n_input < 2 or self.n_output < 1:
            raise ValueError("n_input >= 2 and n_output >= 1")
        if self.generator_layers < 2:
            raise ValueError("generator_layers >= 2")

    def _check_rate_map(self) -> None:
        for name in ("member_rate_map", "mean_rate_map"):
            rows, rates, minutes = getattr(self, name), getattr(self, f"{name}_mmh"), getattr(self, f"{name}_minutes")
            if not (rows or rates or minutes):
                continue
            if not _increasing(rates) or not _increasing(minutes):
                raise ValueError(f"{name}_mmh and {name}_minutes must be positive and increasing")
            if len(rows) != len(minutes) or any(len(row) != len(rates) for row in rows):
                raise ValueError(f"{name} needs one row per lead of {name}_minutes ({len(minutes)}), "
                                 f"each with one rate per threshold of {name}_mmh ({len(rates)})")
            if not all(_increasing(row) for row in rows):
                raise ValueError(f"each row of {name} must be positive, finite and increasing: "
                                 "the rates that map onto the increasing thresholds")
        if self.member_area_mmh and not _increasing(self.member_area_mmh):
            raise ValueError("member_area_mmh must be positive, finite and increasing rates (mm/h)")
        if self.member_area_ceiling and not self.member_area_mmh:
            raise ValueError("member_area_ceiling needs the rates it caps the members' area above: member_area_mmh")

    def _check_spread_gain_table(self) -> None:
        minutes, gains = self.member_spread_gain_minutes, self.member_spread_gain
        if not (minutes or gains):
            return
        if not _increasing(minutes) or len(gains) != len(minutes):
            raise ValueError("member_spread_gain_minutes must be positive and increasing, with one gain in "
                             "member_spread_gain per lead")
        if not all(math.isfinite(g) and 0.0 < g <= 3.0 for g in gains):
            raise ValueError("member_spread_gain: each gain must be in (0, 3]")
        if self.member_spread_gain_start != 1.0 or self.member_spread_gain_end != 1.0:
            raise ValueError("member_spread_gain (a table) replaces member_spread_gain_start / _end (a line): "
                             "set one of them")

    def _check_sprog_weight(self) -> None:
        for name in ("member_sprog_weight", "mean_sprog_weight", "mean_outline_sprog_weight"):
            minutes, weights = getattr(self, f"{name}_minutes"), getattr(self, name)
            if not (minutes or weights):
                continue
            if not _increasing(minutes) or len(weights) != len(minutes):
                raise ValueError(f"{name}_minutes must be positive and increasing, with one weight in {name} "
                                 "per lead")
            if self.n_input < 3:
                raise ValueError(f"{name} needs n_input >= 3: S-PROG's AR(2) model is fitted on the last 3 frames")
            if not all(math.isfinite(w) and 0.0 <= w <= 1.0 for w in weights):
                raise ValueError(f"{name}: each weight must be in [0, 1] (1: the members' mean dBR is S-PROG's)")
        if not (math.isfinite(self.mean_core_mmh) and self.mean_core_mmh >= 0):
            raise ValueError("mean_core_mmh must be a non-negative rain rate (mm/h)")
        if bool(self.mean_outline_sprog_weight) != (self.mean_core_mmh > 0):
            raise ValueError("mean_outline_sprog_weight and mean_core_mmh go together: the outline's placement is "
                             "for the probability-matched mean's rain up to the core's rate")
        self._check_outline_probability()
        self._check_core_probability()

    def _check_core_probability(self) -> None:
        if not (self.mean_core_probability_weight_minutes or self.mean_core_probability_weight):
            return
        if not self.mean_core_mmh > 0:
            raise ValueError("mean_core_probability_weight blends in the members' probability of rain above "
                             "mean_core_mmh: set the core's rate")
        self._check_blend_table("mean_core_probability_weight", "0: the placement's")

    def _check_outline_probability(self) -> None:
        minutes, weights = self.mean_outline_probability_weight_minutes, self.mean_outline_probability_weight
        rate = self.mean_outline_probability_mmh
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError("mean_outline_probability_mmh must be a non-negative rain rate (mm/h)")
        if not (minutes or weights or rate):
            return
        if not (weights and rate > 0):
            raise ValueError("mean_outline_probability_weight and mean_outline_probability_mmh go together: the "
                             "weight blends in the members' probability of rain above that rate")
        if not self.mean_outline_sprog_weight or rate >= self.mean_core_mmh:
            raise ValueError("mean_outline_probability_mmh orders the outline (mean_outline_sprog_weight): it must "
                             "lie below mean_core_mmh")
        self._check_blend_table("mean_outline_probability_weight", "0: the moved mean's")

    def _check_blend_table(self, name: str, zero_means: str) -> None:
        """A table of rank-blend weights ``name`` by lead (``name``_minutes): one weight per lead, each in [0, 1]."""
        minutes, weights = getattr(self, f"{name}_minutes"), getattr(self, name)
        if not _increasing(minutes) or len(weights) != len(minutes):
            raise ValueError(f"{name}_minutes must be positive and increasing, with one weight in {name} per lead")
        if not all(math.isfinite(w) and 0.0 <= w <= 1.0 for w in weights):
            raise ValueError(f"{name}: each weight must be in [0, 1] (1: the probability's order, {zero_means})")

    def member_sprog_weights(self, step_minutes: float, steps: int) -> list[float] | None:
        """The weight towards S-PROG at each of ``steps`` leads; None where no lead has one."""
        return _lead_weights(self.member_sprog_weight_minutes, self.member_sprog_weight, step_minutes, steps)

    def mean_sprog_weights(self, step_minutes: float, steps: int) -> list[float] | None:
        """The weight towards S-PROG of the probability-matched mean's placement at each of ``steps`` leads;
        None where no lead has one."""
        return _lead_weights(self.mean_sprog_weight_minutes, self.mean_sprog_weight, step_minutes, steps)

    def mean_outline_sprog_weights(self, step_minutes: float, steps: int) -> list[float] | None:
        """The weight towards S-PROG of the placement of the probability-matched mean's rain up to
        ``mean_core_mmh`` at each of ``steps`` leads (0: the ensemble mean places it); None without a table."""
        if not self.mean_outline_sprog_weight:
            return None
        return _read_weights(self.mean_outline_sprog_weight_minutes, self.mean_outline_sprog_weight, step_minutes,
                             steps)

    def mean_core_probability_weights(self, step_minutes: float, steps: int) -> list[float] | None:
        """The weight of the members' probability of rain above ``mean_core_mmh`` in the probability-matched
        mean's order at each of ``steps`` leads; None where no lead has one."""
        return _lead_weights(self.mean_core_probability_weight_minutes, self.mean_core_probability_weight,
                             step_minutes, steps)

    def mean_outline_probability_weights(self, step_minutes: float, steps: int) -> list[float] | None:
        """The weight of the members' probability of rain above ``mean_outline_probability_mmh`` in the outline's
        order at each of ``steps`` leads; None where no lead has one."""
        return _lead_weights(self.mean_outline_probability_weight_minutes, self.mean_outline_probability_weight,
                             step_minutes, steps)

    def member_rate_maps(self, step_minutes: float, steps: int, first_step: int = 0) -> list[np.ndarray] | None:
        """Per lead of ``steps`` (the first ``first_step`` steps into the forecast), the members' rates
        (mm/h) that ``member_rate_map_mmh`` maps onto: the table's rows interpolated linearly in log rate
        between its leads and held beyond them. None without a map."""
        return _lead_rate_maps(self.member_rate_map, self.member_rate_map_minutes, step_minutes, steps, first_step)

    def mean_rate_maps(self, step_minutes: float, steps: int) -> list[np.ndarray] | None:
        """Per lead of ``steps``, the probability-matched mean's rates (mm/h) that ``mean_rate_map_mmh`` maps
        onto, read from the table as :meth:`member_rate_maps` reads its own. None without a map."""
        return _lead_rate_maps(self.mean_rate_map, self.mean_rate_map_minutes, step_minutes, steps, 0)

    def member_motion_pixels(self, pixel_km: float, step_minutes: float) -> float:
        """The standard deviation of a member's motion shift on a grid, in pixels per step."""
        if self.member_motion_kmh > 0:
            return self.member_motion_kmh * step_minutes / 60.0 / pixel_km
        return self.member_motion_sigma

    def member_motion_profile(self, step_minutes: float, steps: int, first_step: int = 0) -> np.ndarray:
        """(steps,) multipliers of a member's motion shift in each step from ``first_step`` on.

        After n steps the member has drifted by the shift times K·(n/K)^growth, K the steps in
        an hour: all ones for a constant shift (growth 1).
        """
        if self.member_motion_growth == 1.0:
            return np.ones(steps, dtype=np.float32)
        per_hour = 60.0 / step_minutes
        elapsed = np.arange(first_step, first_step + steps + 1, dtype=np.float64)
        return np.diff(per_hour * (elapsed / per_hour) ** self.member_motion_growth).astype(np.float32)

    def matched_leads(self, step_minutes: float, steps: int, first_step: int = 0) -> list[int]:
        """Which of ``steps`` leads, the first ``first_step`` steps into the forecast, ``member_matching`` matches."""
        return [lead for lead in range(steps) if self.matches_at((first_step + lead + 1) * step_minutes)]

    def matches_at(self, lead_minutes: float) -> bool:
        """Whether ``member_matching`` matches the members at this lead (minutes)."""
        if self.member_matching == "none":
            return False
        until = self.member_matching_minutes or math.inf
        # a small tolerance: 10 minutes of 5-min steps is two leads whatever the float rounding
        return lead_minutes <= until + 1e-6

    @property
    def spreads_members(self) -> bool:
        """Whether members are drawn with a spread gain other than 1 at some lead."""
        return (self.member_spread_gain_start != 1.0 or self.member_spread_gain_end != 1.0
                or any(g != 1.0 for g in self.member_spread_gain))

    def member_spread_gains(self, step_minutes: float, steps: int) -> list[float]:
        """The spread gain at each of ``steps`` lead times: read from ``member_spread_gain``'s table where there is
        one, else linear from start (0 min) to end (60 min), then held."""
        if self.member_spread_gain:
            return _read_weights(self.member_spread_gain_minutes, self.member_spread_gain, step_minutes, steps)
        start, end = self.member_spread_gain_start, self.member_spread_gain_end
        return [start + (end - start) * min(step * step_minutes / 60.0, 1.0) for step in range(1, steps + 1)]

    @property
    def trajectory_steps(self) -> int:
        """Steps of back-trajectories the model needs: its lead times, and the past frames' ages."""
        return max(self.n_output, self.n_input - 1)

    @property
    def n_scales(self) -> int:
        return len(self.generator_channels)

    @property
    def grid_multiple(self) -> int:
        """Grid sides are padded to a multiple of this."""
        return 2 ** (self.n_scales - 1)


def _lead_rate_maps(rows: Sequence[Sequence[float]], minutes: Sequence[float], step_minutes: float, steps: int,
                    first_step: int) -> list[np.ndarray] | None:
    """A rate map's rows read at each of ``steps`` leads from ``first_step`` on: linear in log rate between the
    table's leads, held beyond them. None for an empty table."""
    if not rows:
        return None
    logs = np.log(np.asarray(rows, dtype=np.float64))
    table_minutes = np.asarray(minutes, dtype=np.float64)
    leads = (first_step + np.arange(1, steps + 1)) * step_minutes
    return [np.exp([np.interp(lead, table_minutes, column) for column in logs.T]) for lead in leads]


def _lead_weights(minutes: Sequence[float], weights: Sequence[float], step_minutes: float,
                  steps: int) -> list[float] | None:
    """A table of weights read at each of ``steps`` leads (linear between its leads, held beyond them);
    None where it is empty or 0 at every lead."""
    if not weights:
        return None
    read = _read_weights(minutes, weights, step_minutes, steps)
    return read if any(w > 0 for w in read) else None


def _read_weights(minutes: Sequence[float], weights: Sequence[float], step_minutes: float, steps: int) -> list[float]:
    """A table of weights read at each of ``steps`` leads: linear between its leads, held beyond them."""
    return [float(w) for w in np.interp(np.arange(1, steps + 1) * step_minutes, minutes, weights)]


def _increasing(values: tuple[float, ...]) -> bool:
    array = np.asarray(values, dtype=np.float64)
    return bool(array.size and np.all(np.isfinite(array)) and array[0] > 0 and np.all(np.diff(array) > 0))


#: Keys of models written by earlier versions, with the one value this version still builds.
EVENT_SOURCES = ("catalogue", "synthetic")
_SETTLED_MODEL_KEYS = {"correction_frame": "lagrangian", "motion_estimation": "full_resolution"}


def upgrade_model_config(data: dict[str, Any], *, where: str) -> dict[str, Any]:
    """A model config as earlier versions wrote it, in today's keys.

    ``correction_frame`` and ``motion_estimation`` are gone: every conditioned model works
    in the Lagrangian frame with full-resolution motion. A model that needs the Eulerian
    generator or downsampled-frames motion (default-gan v1-v5, lp-only v1-v4) cannot be
    built any more; its numbers are in docs/gan-experiments.md.
    """
    upgraded = dict(data)
    for key, settled in _SETTLED_MODEL_KEYS.items():
        value = upgraded.pop(key, settled)
        if value != settled and upgraded.get("condition_on_advection", True):
            raise ConfigError(
                f"{where}: {key} = {value!r} was removed (only {settled!r} is built); this model comes from an "
                "earlier version, see docs/gan-experiments.md"
            )
    return upgraded


def upgrade_experiment_config(data: dict[str, Any], *, where: str) -> dict[str, Any]:
    """An experiment config (a run's or an artifact's ``config.json``) in today's keys."""
    if not isinstance(data.get("model"), dict):
        return data
    return {**data, "model": upgrade_model_config(data["model"], where=f"{where}:model")}


@dataclass(frozen=True)
class LossConfig:
    """G minimises lambda_adv·L_adv + lambda_lp·L_p + lambda_gdl·L_gdl over scales.

    ``rain_weight_thresholds_mmh``/``rain_weights``: the L_p error of a pixel is weighted
    by ``rain_weights[i]`` where the observed rate reaches ``rain_weight_thresholds_mmh[i]``
    (1 below the first), as in the balanced losses of Shi et al. (NeurIPS 2017). A plain
    L_p regresses to a central value of the uncertain future, which in log-rain space
    dries out uncertain rain; the weights make missing heavy rain cost more than a false
    alarm. Empty for the paper's unweighted loss.
    ``lambda_csi``: weight of a soft critical success index loss at full resolution,
    1 - CSI per lead time and threshold (``csi_thresholds_mmh``); the forecast's
    exceedance is made differentiable by a sigmoid ``csi_temperature_db`` wide, the
    observed one is "above the threshold" as verification counts it (Lagerquist &
    Ebert-Uphoff 2022 train networks on such score-based losses). Lp is minimised by a central value
    of the uncertain future, which is not what maximises CSI; this term asks for the
    forecast that the verification rewards. 0 for the paper's losses.
    ``samples``: futures G draws per input in a training step (its noise differs; DGMR
    draws 6). With more than one, ``lambda_crps`` weighs the fair CRPS of those samples
    against the observation (Ferro 2014: the ensemble's mean distance to the observation
    minus half its mean distance between members, unbiased for the ensemble size), at
    every scale like L_p; the adversarial, GDL and soft-CSI terms act on every sample.
    A proper score on the samples rewards spread where the future is uncertain, which
    L_p on each sample would collapse.
    ``lambda_crps_rate``: weight of the same fair CRPS on the finest scale's samples decoded
    to rain rate in mm/h, the unit verification scores. The normalised (dB) CRPS weighs an
    error of a factor two alike in drizzle and in a storm core; in mm/h the heavy rain, where
    held-out CRPS and the Brier scores at 4 and 8 mm/h are decided, counts in proportion.
    ``lambda_wet_area``: weight of a fair CRPS of the samples' wet fraction (rate above each of
    ``wet_area_thresholds_mmh``, soft as in the CSI term) in squares of ``wet_area_window``
    pixels at the finest scale. The per-pixel CRPS scores each pixel alone; trained on it, v6's
    members' area at 1 mm/h grew to 1.2-1.8 times the observed by +60 min on its own training
    events (run 40), which the Brier score at 1 mm/h punishes. This term scores the area.
    ``lambda_sample_mean``: weight of the L1 error of the samples' mean (normalised units, finest
    scale) over the first ``sample_mean_leads`` lead times (0: all), DGMR's grid-cell regulariser
    (Ravuri et al. 2021). The fair CRPS fixes each pixel's spread and centre together; this term
    asks where the ensemble as a whole puts the rain, which is what the probability-matched mean
    ranks by: S-PROG placed it better than the members' mean at every held-out lead (run 45).
    ``sharpness_leads``: the adversarial and GDL terms judge only the first that many lead
    times (0: all). After them the proper score alone shapes the members: the GAN's spread
    swelled late in the hour where its CRPS-only twin's did not (run 32).
    """

    lambda_adv: float = 0.5
    lambda_lp: float = 1.0
    lambda_gdl: float = 1.0
    p: int = 1
    alpha: float = 1.0
    rain_weight_thresholds_mmh: tuple[float, ...] = ()
    rain_weights: tuple[float, ...] = ()
    lambda_csi: float = 6.0
    csi_thresholds_mmh: tuple[float, ...] = (1.0, 4.0, 8.0)
    csi_temperature_db: float = 1.0
    samples: int = 1
    lambda_crps: float = 0.0
    lambda_crps_rate: float = 0.0
    lambda_wet_area: float = 0.0
    wet_area_thresholds_mmh: tuple[float, ...] = (1.0,)
    wet_area_window: int = 32
    lambda_sample_mean: float = 0.0
    sample_mean_leads: int = 0
    sharpness_leads: int = 0

    def __post_init__(self) -> None:
        if self.sharpness_leads < 0:
            raise ValueError("sharpness_leads must be 0 (every lead) or positive")
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.sample_mean_leads < 0:
            raise ValueError("sample_mean_leads must be 0 (every lead) or positive")
        for name in ("lambda_crps", "lambda_crps_rate", "lambda_wet_area", "lambda_sample_mean"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
            if getattr(self, name) > 0 and self.samples < 2:
                raise ValueError(f"{name} needs samples >= 2: the CRPS of one sample is its L1 error (lambda_lp)")
        if self.p not in (1, 2):
            raise ValueError("p must be 1 or 2")
        if min(self.lambda_adv, self.lambda_lp, self.lambda_gdl, self.lambda_csi) < 0:
            raise ValueError("loss weights must not be negative")
        if len(self.rain_weight_thresholds_mmh) != len(self.rain_weights):
            raise ValueError("rain_weight_thresholds_mmh and rain_weights need the same length")
        if list(self.rain_weight_thresholds_mmh) != sorted(self.rain_weight_thresholds_mmh):
            raise ValueError("rain_weight_thresholds_mmh must increase")
        if any(w <= 0 for w in self.rain_weights):
            raise ValueError("rain_weights must be positive")
        if self.lambda_csi > 0 and not self.csi_thresholds_mmh:
            raise ValueError("lambda_csi > 0 needs csi_thresholds_mmh")
        if any(t <= 0 for t in self.csi_thresholds_mmh):
            raise ValueError("csi_thresholds_mmh must be positive")
        if self.lambda_wet_area > 0 and not self.wet_area_thresholds_mmh:
            raise ValueError("lambda_wet_area > 0 needs wet_area_thresholds_mmh")
        if any(t <= 0 for t in self.wet_area_thresholds_mmh):
            raise ValueError("wet_area_thresholds_mmh must be positive")
        if self.wet_area_window < 1:
            raise ValueError("wet_area_window must be at least 1 pixel")
        if self.csi_temperature_db <= 0:
            raise ValueError("csi_temperature_db must be positive")

    @property
    def adversarial(self) -> bool:
        return self.lambda_adv > 0


@dataclass(frozen=True)
class DataConfig:
    """Which events feed training and validation, and how samples are cut.

    ``event_source``: ``"catalogue"`` (real events by catalogue id, the default) or
    ``"synthetic"`` (generated events named by their seed, for smoke tests).
    """

    train_events: tuple[str, ...] = ("knmi-20100826", "mch-20150515", "mch-20170131", "fmi-20160928", "bom-20201031")
    val_events: tuple[str, ...] = ("mch-20160711", "fmi-20170509", "bom-20180616")
    event_source: str = "catalogue"
    catalogue: str | None = None
    data_root: str | None = None
    patch_size: int = 96
    min_wet_fraction: float = 0.05
    augment: bool = True
    val_patches_per_event: int = 8
    val_patch_size: int = 192

    def __post_init__(self) -> None:
        if self.event_source not in EVENT_SOURCES:
            raise ValueError(f"unknown event_source {self.event_source!r}; valid: {', '.join(EVENT_SOURCES)}")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation.

    ``lr_schedule``: ``"constant"``, or ``"cosine"``: both learning rates follow a half
    cosine from their value at step 0 to 0 at ``steps``, so that the last weights are not
    one noisy step of a constant-rate GAN game.
    ``correction_limits_in_training``: whether the model's ``correction_deadzone_db`` and
    ``correction_db_per_step`` act while it trains (gradients pass the dead zone straight
    through) or only in eval mode: validation, export and inference. Trained inside the
    limits, the shipped recipe learnt to push its corrections through the dead zone and
    lost more CSI in the first minutes than the same model trained free and limited after.
    ``init_from``: a trained model (``NAME``, ``NAME@VERSION`` or an artifact folder) whose
    generator weights start this run (fine-tuning); input channels the new model has and
    that one lacks (noise) start with small random weights, so that different noise gives
    different futures from the first step. None: a fresh generator.
    ``init_noise_std``: the standard deviation of those new noise weights; the larger, the
    more the members differ before the ensemble loss has shaped them.
    ``member_motion``: each of the loss's ``samples`` of an input is drawn on its own
    advection, its motion shifted as a member's is at inference (``member_motion_kmh`` or
    ``member_motion_sigma`` of the model), so that G learns its correction on the displaced
    advection the members will use. False: the samples share the estimated motion and differ
    only by G's noise.
    ``ema_decay``: 0 (off), or the decay of an exponential moving average of G's weights
    (``torch.optim.swa_utils``, one update per G step) that validation, export and
    inference use instead of the last step's weights; 0.99 averages over about the last
    100 steps of the GAN game (Yazıcı et al., ICLR 2019).
    ``continue_from``: a training run's folder (``nowcast train --out``) whose last checkpoint
    starts this run whole: the generator, the discriminators and both optimisers' moments, so
    that a fine-tune continues the GAN game rather than restarting it against new
    discriminators (a fine-tune from an artifact, which keeps only the generator, lost about 70 %
    of a member's late small-scale power within 700 generator steps; continued, about 40 %, and
    at a tenth of the rates about 6 %: runs 46–47). The model and loss must build the same
    networks; the step count and learning-rate schedule are this run's. Not with ``init_from``.
    ``workers``: processes that draw the batches of the coming steps while the models train
    (torch's DataLoader), so that a GPU is not kept waiting on the CPU's advection of every
    sample; 0 draws them in the training process. The batches are the same either way: a
    step's depend on the seed and the step alone.
    ``discriminator_warmup_steps``: the run's first steps update the discriminators alone,
    against the generator as ``init_from`` left it, and the learning-rate schedule starts
    after them, so that a fine-tune's first generator steps are judged by discriminators
    that have already seen its output (a fresh one judged at chance for all 500 steps of
    run 39; warmed up 1000 steps in run 40 it reached 65 % and the members blurred alike).
    """

    steps: int = 1000
    batch_size: int = 8
    lr_generator: float = 1e-4
    lr_discriminator: float = 2e-4
    discriminator_steps: int = 1
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    seed: int = 0
    log_every: int = 25
    val_every: int = 100
    checkpoint_every: int = 100
    amp: bool = True
    device: str = "auto"
    threads: int = 1
    lr_schedule: str = "cosine"
    correction_limits_in_training: bool = False
    ema_decay: float = 0.0
    init_from: str | None = None
    init_noise_std: float = 0.01
    continue_from: str | None = None
    member_motion: bool = False
    discriminator_warmup_steps: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.workers <= 64:
            raise ValueError(f"workers must be in [0, 64]; got {self.workers}")
        if self.init_noise_std < 0:
            raise ValueError(f"init_noise_std must not be negative; got {self.init_noise_std}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1); got {self.ema_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if self.init_from and self.continue_from:
            raise ValueError("init_from and continue_from exclude each other: a run starts from one model")
        if not 0 <= self.discriminator_warmup_steps < self.steps:
            raise ValueError(f"discriminator_warmup_steps must be in [0, steps); got {self.discriminator_warmup_steps}")

    def lr_factor(self, step: int) -> float:
        """The learning rates' multiplier at ``step`` (0-based): 1 in the warm-up, then the schedule."""
        if self.lr_schedule == "cosine":
            into, length = step - self.discriminator_warmup_steps, self.steps - self.discriminator_warmup_steps
            return 0.5 * (1.0 + math.cos(math.pi * min(max(into, 0), length) / length))
        return 1.0

    def trains_generator(self, step: int) -> bool:
        """Whether ``step`` (0-based) updates the generator, not the discriminators alone."""
        return step >= self.discriminator_warmup_steps


LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class ExperimentConfig:
    """A training job: by default, the one that made the shipped ``default-gan``."""

    name: str = "default-gan"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    normalisation: Normalisation = field(default_factory=Normalisation)

    def __post_init__(self) -> None:
        if self.loss.sharpness_leads > self.model.n_output:
            raise ValueError(f"loss.sharpness_leads ({self.loss.sharpness_leads}) exceeds model.n_output "
                             f"({self.model.n_output})")
        if self.train.member_motion:
            if self.loss.samples < 2:
                raise ValueError("train.member_motion needs loss.samples >= 2: it shifts the motion of each sample")
            if not (self.model.member_motion_kmh > 0 or self.model.member_motion_sigma > 0):
                raise ValueError("train.member_motion needs model.member_motion_kmh (or member_motion_sigma) > 0")
        if self.train.discriminator_warmup_steps and not self.loss.adversarial:
            raise ValueError("train.discriminator_warmup_steps needs an adversarial term (loss.lambda_adv > 0)")
