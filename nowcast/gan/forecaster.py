"""The GAN as a forecaster: the inference pipeline around the generator (after diffusers).

``predict`` takes a batch of past sequences in mm/h, estimates motion (when the model
is conditioned on advection), normalises, pads the grid to what the scales need, runs
one batched forward pass, crops, and returns mm/h between 0 and ``MAX_RAIN_RATE_MMH``,
NaN where the last frame had no data. Longer horizons than the model's ``n_output`` are reached by feeding
predictions back as the past.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from nowcast import config as config_io
from nowcast.ensemble import (
    area_matching_map,
    blended_order,
    core_and_outline,
    core_in_order,
    ensemble_mean,
    exceedance_probability,
    map_rates,
    neighbourhood_window_pixels,
    placed_in_order,
    window_mean,
)
from nowcast.forecasters import cascade
from nowcast.forecasters.base import DEFAULT_SPACING, Forecaster, PreparedForecast, Spacing
from nowcast.forecasters.extrapolation import Extrapolation
from nowcast.gan.advection import conditioning_fields, known_at_source, pixel_grid
from nowcast.gan.config import ModelConfig, upgrade_model_config
from nowcast.gan.model import Generator
from nowcast.motion import lucas_kanade_coarse
from nowcast.products import MEAN_COORD, PLACEMENT_COORD, probability_matched_mean_of
from nowcast.sequence import MAX_RAIN_RATE_MMH, lead_minutes_of, pixel_size_km
from nowcast.transforms import Normalisation

logger = logging.getLogger(__name__)


class GANForecaster(Forecaster):
    name = "gan"
    supports_half = True
    #: pixels of (sequences × draws) per generator call: members of large grids go through in chunks
    max_call_pixels = 2 * 1024 * 1024
    # noise is drawn per sequence, so a request's forecast does not depend on its batch
    batch_invariant = True  # type: ignore[assignment]

    def __init__(self, generator: Generator, normalisation: Normalisation, *, device: str | None = None,
                 half: bool = False, label: str = "gan", card: dict[str, Any] | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # channels-last weights to match the channels-last activations of ScaleGenerator
        self.generator = generator.to(self.device, memory_format=torch.channels_last).eval()
        self.model_config: ModelConfig = generator.config
        self.normalisation = normalisation
        self.n_input_frames = self.model_config.n_input
        self.supports_members = self.model_config.noise_channels > 0
        # half precision only where the hardware is built for it
        self.half_precision = native_half_precision(self.device)
        self.half = half and self.half_precision is not None
        self.name = label  # type: ignore[misc]
        self.card = card or {}
        self._sprog = RecentSprog()
        self._extrapolated = RecentExtrapolation()

    @classmethod
    def from_artifact(cls, folder: str | Path, *, device: str | None = None, half: bool = False) -> GANForecaster:
        folder = Path(folder)
        spec = json.loads((folder / "config.json").read_text())
        where = f"{folder}/config.json:model"
        model_cfg = config_io.from_dict(ModelConfig, upgrade_model_config(spec["model"], where=where), where=where)
        norm = Normalisation.from_dict(spec["normalisation"])
        generator = Generator(model_cfg, scale_db=norm.scale_db)
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        generator.load_state_dict(state)
        card_path = folder / "card.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        label = f"{folder.parent.name}@{folder.name}"
        return cls(generator, norm, device=device, half=half, label=label, card=card)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": str(self.device), "half": self.half,
                "n_output": self.model_config.n_output,
                "condition_on_advection": self.model_config.condition_on_advection}

    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None,
                seed: int | None = None, spacing: Spacing | None = None) -> np.ndarray:
        past = np.asarray(past, dtype=np.float32)
        draws = members or 1
        noise = self._noise_sources(len(past), draws, seed) if self.supports_members else None
        # members, and only members, go where their own shifted motion takes them
        spacing = spacing or DEFAULT_SPACING
        sigma = self.member_motion_pixels(spacing)
        offsets = self._motion_offsets(noise, sigma) if members is not None and sigma > 0 else None
        out = self._predict(past, steps, draws, noise, offsets, spacing.step_minutes)
        if members is None:
            return out[:, 0]
        if noise is not None and self.model_config.member_intensity_db > 0:
            self._perturb_intensity(out, noise, spacing)
        if noise is not None:
            self.adjust_members(out, past, spacing)
        return out

    def finish(self, prepared: PreparedForecast, frames: np.ndarray) -> xr.DataArray:
        """The base form, and for members under ``ModelConfig.mean_sprog_weight`` the placement of their
        probability-matched mean as the ``mean_placement`` coordinate; under ``ModelConfig.mean_outline_sprog_weight``,
        ``ModelConfig.mean_core_probability_weight`` or ``ModelConfig.mean_rate_map`` the mean itself (its order
        and its outline's may blend in the members' probability of rain, its light rain placed by the outline, its
        rates mapped) as the ``probability_matched_mean`` coordinate (:mod:`nowcast.products`)."""
        result = super().finish(prepared, frames)
        if prepared.members is None:
            return result
        cfg, step_minutes, steps = self.model_config, prepared.spacing.step_minutes, prepared.steps
        core_blend = cfg.mean_core_probability_weights(step_minutes, steps)
        weights = cfg.mean_sprog_weights(step_minutes, steps)
        if weights is None and core_blend is not None:
            weights = [0.0] * steps  # the unmoved members' mean places it, as without a table
        outline_weights = cfg.mean_outline_sprog_weights(step_minutes, steps)
        blend = cfg.mean_outline_probability_weights(step_minutes, steps) if outline_weights else None
        tables = [(weights, cfg.mean_core_mmh if core_blend else 0.0),
                  (outline_weights, cfg.mean_outline_probability_mmh if blend else 0.0)]
        placements, wet = self._mean_placements(prepared, frames, [(t, r) for t, r in tables if t is not None])
        if weights is not None:
            result = self._placed(result, placements[0])
        maps = cfg.mean_rate_maps(step_minutes, steps)
        if outline_weights is None and maps is None and core_blend is None:
            return result
        mean = self._mapped_mean(result, maps)
        if core_blend is not None:
            # the blend decides which pixels make the core; within it the heaviest rain goes where the placement is
            blended, placed = self._blended_order(result, placements[0], wet[0], core_blend)
            mean = core_in_order(placed_in_order(mean, blended), placed, cfg.mean_core_mmh)
        if outline_weights is not None:
            # joined in the final rates, so that the core is all the mean has above mean_core_mmh
            if blend is None:
                outline = self._mapped_mean(self._placed(result, placements[-1]), maps)
            else:
                outline, _ = self._blended_order(result, placements[-1], wet[-1], blend)
            mean = core_and_outline(mean, outline, cfg.mean_core_mmh)
        return result.assign_coords({MEAN_COORD: (result.dims[1:], mean, {"units": "mm h-1"})})

    def _blended_order(self, result: xr.DataArray, placement: np.ndarray, wet: np.ndarray,
                       blend: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """An order (time, y, x): per lead, the moved members' mean ``placement`` and their probability of rain
        ``wet``, each over the probability-matched mean's window, blended by rank; and the placement over the
        window (the probability-matched mean's own order)."""
        pixel_km = pixel_size_km(result)
        order, placed = np.empty(placement.shape, dtype=np.float64), np.empty(placement.shape, dtype=np.float32)
        for lead, (minutes, weight) in enumerate(zip(lead_minutes_of(result), blend, strict=True)):
            window = neighbourhood_window_pixels(minutes, self.model_config.mean_neighbourhood_km_per_minute,
                                                 pixel_km)
            placed[lead] = window_mean(placement[lead], window)
            order[lead] = blended_order(window_mean(wet[lead], window), placed[lead], weight)
        return order, placed

    def _mapped_mean(self, result: xr.DataArray, maps: Sequence[np.ndarray] | None) -> np.ndarray:
        """The probability-matched mean of a forecast as its placement places it, its rates mapped by ``maps``."""
        mean = probability_matched_mean_of(result)
        if maps is not None:
            self._map_rates(mean[None, None], maps, self.model_config.mean_rate_map_mmh)
        return mean

    def _mean_placements(
        self, prepared: PreparedForecast, frames: np.ndarray, tables: Sequence[tuple[Sequence[float], float]]
    ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """For each table of weights per lead, the mean (time, y, x) mm/h of the members (member, time, y, x) moved
        towards S-PROG by them (:meth:`_move_towards_sprog`'s move, on copies): where the probability-matched
        mean's rain goes; and where the table's rate is > 0 the fraction (time, y, x) of those moved members with
        rain above it (NaN where none has data), else None. Each lead's members are converted to dBR once for
        every table."""
        placements = [np.empty(frames.shape[1:], dtype=np.float32) for _ in tables]
        wet = [np.empty(frames.shape[1:], dtype=np.float32) if rate > 0 else None for _, rate in tables]
        if not tables:
            return placements, wet
        sprog_db = self._sprog.field(prepared.past, prepared.steps) if any(any(t) for t, _ in tables) else None
        for lead in range(frames.shape[1]):
            rates = np.asarray(frames[:, lead], dtype=np.float32)
            lead_weights = [table[lead] for table, _ in tables]
            if any(lead_weights):
                members_db, metadata = _members_db(rates)
                shift = _sprog_shift(members_db, sprog_db[lead])
            for placement, fraction, weight, (_, rate) in zip(placements, wet, lead_weights, tables, strict=True):
                moved = _moved_rates(rates, members_db, metadata, weight * shift) if weight else rates
                placement[lead] = ensemble_mean(moved)
                if fraction is not None:
                    fraction[lead] = exceedance_probability(moved, [rate])[0]
        return placements, wet

    @staticmethod
    def _placed(result: xr.DataArray, placement: np.ndarray) -> xr.DataArray:
        return result.assign_coords({PLACEMENT_COORD: (result.dims[1:], placement, {"units": "mm h-1"})})

    @property
    def probability_neighbourhood_km_per_minute(self) -> float:  # type: ignore[override]
        return self.model_config.probability_neighbourhood_km_per_minute

    @property
    def mean_neighbourhood_km_per_minute(self) -> float:  # type: ignore[override]
        return self.model_config.mean_neighbourhood_km_per_minute

    def with_member_settings(self, **settings: Any) -> GANForecaster:
        """The same generator under other member settings (``ModelConfig`` fields the weights do not depend on)."""
        other = copy.copy(self)
        other.model_config = dataclasses.replace(self.model_config, **settings)
        return other

    def run_baselines(self, past: np.ndarray, steps: int) -> None:
        """Run the baselines that the member settings take (S-PROG, the extrapolation) for ``steps`` leads of each
        (batch, time, y, x) mm/h input, once: a caller that then adjusts members a lead at a time (a fit) takes
        each lead from these runs instead of a run per lead."""
        cfg = self.model_config
        for frames in past:
            if cfg.member_sprog_weight:
                self._sprog.field(frames, steps)
            if cfg.member_area_mmh:
                self._extrapolated.field(frames, steps)

    def adjust_members(self, members: np.ndarray, past: np.ndarray, spacing: Spacing,
                       gains: Sequence[float] | None = None, first_step: int = 0) -> None:
        """What follows the draw, in place: the spread gain at each lead (``gains``, default the model's
        ``member_spread_gain``), the rate map (``member_rate_map``), matching to the last frame's
        rates (``member_matching`` at the leads ``member_matching_minutes`` names), then the move towards
        S-PROG (``member_sprog_weight``), the rate map here instead under ``member_rate_map_last``, and last
        the extrapolation's area at the leads not matched (``member_area_mmh``). ``members``: (batch, draws,
        steps, y, x) mm/h, their first step ``first_step`` steps into the forecast; ``past``: (batch, time, y,
        x) mm/h, the input."""
        cfg, steps = self.model_config, members.shape[2]
        if gains is None:
            gains = cfg.member_spread_gains(spacing.step_minutes, steps)
        self._gain_spread(members, gains)
        maps = cfg.member_rate_maps(spacing.step_minutes, steps, first_step)
        if maps is not None and not cfg.member_rate_map_last:
            self._map_rates(members, maps, cfg.member_rate_map_mmh)
        matched = cfg.matched_leads(spacing.step_minutes, steps, first_step)
        if matched:
            self._match_observed(members, past[:, -1], matched)
        weights = cfg.member_sprog_weights(spacing.step_minutes, first_step + steps)
        if weights is not None and any(weights[first_step:]):
            self._move_towards_sprog(members, past, weights[first_step:], first_step,
                                     keep_rates=cfg.member_sprog_keeps_rates)
        if maps is not None and cfg.member_rate_map_last:
            self._map_rates(members, maps, cfg.member_rate_map_mmh)
        if cfg.member_area_mmh:
            unmatched = [lead for lead in range(steps) if lead not in matched]
            self._match_extrapolated_area(members, past, unmatched, first_step)

    def _noise_sources(self, batch: int, draws: int, seed: int | None) -> list[torch.Generator]:
        """One generator per sequence and member, sequence-major, seeded from (seed, member).

        A member's noise is then the same whatever it is batched or chunked with, and the
        same seed gives the same members.
        """
        sources = []
        for _ in range(batch):
            for member in range(draws):
                source = torch.Generator(device=self.device)
                source.manual_seed(int(np.random.SeedSequence([0 if seed is None else seed, member])
                                       .generate_state(1, dtype=np.uint64)[0] >> 1))
                sources.append(source)
        return sources

    def _predict(self, past: np.ndarray, steps: int, draws: int, noise: list[torch.Generator] | None,
                 offsets: torch.Tensor | None, step_minutes: float) -> np.ndarray:
        """(batch, draws, steps, y, x): one pass of ``n_output`` frames, then the draws fed back as the past."""
        n_in, n_out = self.model_config.n_input, self.model_config.n_output
        batch, grid = len(past), past.shape[2:]
        valid = np.isfinite(past[:, -1])
        chunks = [self._forward(past, valid, noise, draws, self._drift(offsets, step_minutes, 0))]
        produced = n_out
        if produced < steps:
            history = np.concatenate([np.repeat(past[:, None], draws, axis=1), chunks[0]], axis=2)
            while produced < steps:
                window = history[:, :, -n_in:].reshape(batch * draws, n_in, *grid)
                drift = self._drift(offsets, step_minutes, produced)
                # what the last pass could not say (no data, rain from off the grid) stays unsaid
                out = self._forward(window, np.isfinite(window[:, -1]), noise, 1, drift).reshape(
                    batch, draws, n_out, *grid)
                chunks.append(out)
                history = np.concatenate([history, out], axis=2)
                produced += n_out
        return (np.concatenate(chunks, axis=2) if len(chunks) > 1 else chunks[0])[:, :, :steps]

    def _forward(self, past: np.ndarray, valid: np.ndarray, noise: list[torch.Generator] | None,
                 draws: int, drift: torch.Tensor | None = None) -> np.ndarray:
        """(batch, draws, n_output, y, x) mm/h from (batch, n_input, y, x)."""
        z, _ = self.forward_normalised(past, valid, noise, draws, drift)
        # bounded like the input, so that a forecast (and what is fed back for longer horizons) stays finite
        rate = torch.clamp(self.normalisation.decode(z), min=0.0, max=MAX_RAIN_RATE_MMH)
        valid_t = torch.from_numpy(np.repeat(valid, draws, axis=0)).to(rate.device)
        rate = torch.where(valid_t[:, None], rate, torch.full_like(rate, math.nan))
        return rate.cpu().numpy().reshape(len(past), draws, *rate.shape[1:])

    @torch.no_grad()
    def forward_normalised(self, past: np.ndarray, valid: np.ndarray, noise: list[torch.Generator] | None = None,
                           draws: int = 1, drift: torch.Tensor | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n_output`` frames of ``draws`` futures per sequence, and the advection prior, normalised.

        ``past``: (batch, n_input, y, x) in mm/h, NaN for no data; ``valid``: (batch, y, x),
        True where the last frame has data; ``noise``: one generator per sequence and draw,
        sequence-major; ``drift``: (batch·draws, trajectory steps, 2) each draw's motion shift in
        each step, pixels per step, or None. Motion is estimated once per sequence; draws
        without a drift share its advection.
        Returns (batch·draws, n_output, y, x) tensors, sequence-major; the prior is None for a
        model not conditioned on advection. A conditioned model's frames are NaN where a lead's
        back-trajectory ends outside the grid or where the last frame had no data
        (:func:`nowcast.gan.advection.known_at_source`): rain carried in from there was never seen.
        """
        cfg = self.model_config
        ny, nx = past.shape[2:]
        if drift is not None:
            inputs, prior = self._conditioning(past, valid, draws, drift)
            known = self._known_at_source(valid, inputs, prior, draws)
        else:  # draws that share the motion share the advection too: computed once, repeated
            inputs, prior = self._conditioning(past, valid)
            known = self._known_at_source(valid, inputs, prior, 1)
            if draws > 1:
                inputs = {k: v.repeat_interleave(draws, dim=0) for k, v in inputs.items()}
                prior = prior.repeat_interleave(draws, dim=0) if prior is not None else None
                known = known.repeat_interleave(draws, dim=0) if known is not None else None
        multiple = cfg.grid_multiple
        pad_y, pad_x = (-ny) % multiple, (-nx) % multiple
        if pad_y or pad_x:
            # padded pixels hold no data: a trajectory from there brings no correction
            inputs = {k: _pad(v, pad_y, pad_x) for k, v in inputs.items()}
        rows = len(past) * draws
        per_call = max(1, self.max_call_pixels // ((ny + pad_y) * (nx + pad_x)))
        outputs = []
        for start in range(0, rows, per_call):
            part = {k: v[start:start + per_call] for k, v in inputs.items()}
            part_noise = noise[start:start + per_call] if noise is not None else None
            with torch.autocast(self.device.type, dtype=getattr(torch, self.half_precision or "float32"),
                                enabled=self.half):
                z = self.generator(part.pop("past"), part.pop("valid"), noise_generator=part_noise, finest_only=True,
                                   **part)[-1]
            outputs.append(z.float()[:, :, 0, :ny, :nx])
        z = torch.cat(outputs)
        if known is not None:
            z = torch.where(known, z, torch.full_like(z, math.nan))
        return z, prior

    def _known_at_source(self, valid: np.ndarray, inputs: dict[str, torch.Tensor], prior: torch.Tensor | None,
                         draws: int) -> torch.Tensor | None:
        """(rows, n_output, y, x): where the rows' back-trajectories end on data; None for a model not conditioned
        on advection. ``valid`` (batch, y, x) per sequence, ``draws`` rows of ``inputs`` each."""
        if prior is None:
            return None
        rows_valid = torch.from_numpy(valid).to(self.device).repeat_interleave(draws, dim=0)
        return known_at_source(rows_valid, inputs["displacement"])

    def member_motion_pixels(self, spacing: Spacing) -> float:
        """The standard deviation of a member's motion shift on a grid of ``spacing``, pixels per step."""
        return self.model_config.member_motion_pixels(spacing.pixel_km, spacing.step_minutes)

    def _motion_offsets(self, noise: list[torch.Generator] | None, sigma: float) -> torch.Tensor | None:
        """A constant motion shift per sequence and draw, (rows, 2) pixels per step, each from its draw's noise."""
        if noise is None:
            return None
        return torch.stack([torch.randn(2, generator=g, device=self.device) for g in noise]) * sigma

    def _perturb_intensity(self, members: np.ndarray, noise: list[torch.Generator], spacing: Spacing) -> None:
        """Multiply each member (in place) by its own log-normal field of mean 1 (``ModelConfig.member_intensity_db``).

        ``members``: (batch, draws, steps, y, x) mm/h; ``noise``: their generators, sequence-major,
        so that a member's field, like its noise maps, does not depend on what it is batched with.
        """
        cfg = self.model_config
        _, draws, steps, ny, nx = members.shape
        sigma = cfg.member_intensity_db * math.log(10.0) / 10.0
        kernel = _gaussian_kernel(cfg.member_intensity_km / spacing.pixel_km, self.device)
        # white noise filtered by the kernel has variance (sum of its squares)^2: divided out
        unit = float((kernel ** 2).sum())
        rho = math.exp(-spacing.step_minutes / cfg.member_intensity_minutes)
        radius = len(kernel) // 2
        for row, source in enumerate(noise):
            # white noise on a margin as wide as the kernel: the filtered field is stationary to the edges
            white = torch.randn((steps, 1, ny + 2 * radius, nx + 2 * radius), generator=source, device=self.device)
            fields = _separable_filter(white, kernel) / unit
            for lead in range(1, steps):  # an AR(1) process in the lead: the field evolves, it does not jump
                fields[lead] = rho * fields[lead - 1] + math.sqrt(1.0 - rho ** 2) * fields[lead]
            factor = torch.exp(sigma * fields[:, 0] - sigma ** 2 / 2).cpu().numpy()
            member = members[row // draws, row % draws]
            np.minimum(member * factor, MAX_RAIN_RATE_MMH, out=member)

    def _gain_spread(self, members: np.ndarray, gains: Sequence[float]) -> None:
        """Scale (in place) each wet member's log rate about the wet members' mean log rate at each pixel,
        by ``gains[lead]``; ``members``: (batch, draws, steps, y, x) mm/h."""
        wet_from = self.normalisation.threshold_mmh

        def spread_lead(rates: np.ndarray, gain: float) -> None:
            if gain == 1.0:
                return
            wet = rates >= wet_from  # NaN compares False: no data stays no data
            logs = np.log(np.where(wet, rates, 1.0))
            n_wet = wet.sum(axis=0)
            centre = np.where(n_wet > 0, logs.sum(axis=0) / np.maximum(n_wet, 1), 0.0)
            spread = np.clip(np.exp(centre + gain * (logs - centre)), wet_from, MAX_RAIN_RATE_MMH)
            np.copyto(rates, spread.astype(rates.dtype), where=wet)

        for sequence in members:
            # the leads are independent: each on a thread of its own, (member, y, x) at a time
            _each_member(spread_lead, np.moveaxis(sequence[:, :len(gains)], 1, 0), np.asarray(gains, dtype=float))

    def _map_rates(self, members: np.ndarray, maps: Sequence[np.ndarray], onto: Sequence[float]) -> None:
        """Map (in place) each wet member's rate at each lead from ``maps[lead]`` onto ``onto``
        (``ModelConfig.member_rate_map`` and ``member_rate_map_mmh``, or the mean's); ``members``: (batch,
        draws, steps, y, x)."""
        for lead, member_rates in enumerate(maps):
            mapping = functools.partial(_map_wet_rates, from_mmh=member_rates, to_mmh=onto,
                                        wet_from=self.normalisation.threshold_mmh)
            for sequence in members:
                _each_member(mapping, sequence[:, lead])

    def _match_extrapolated_area(self, members: np.ndarray, past: np.ndarray, leads: Sequence[int],
                                 first_step: int) -> None:
        """Map (in place) the wet rates of all members of a sequence at each of ``leads`` so that their pooled
        area above each ``ModelConfig.member_area_mmh`` rate is the extrapolation baseline's there (at most that,
        under ``member_area_ceiling``).
        ``members``: (batch, draws, steps, y, x), their first step ``first_step`` steps into the forecast."""
        cfg, wet_from = self.model_config, self.normalisation.threshold_mmh
        for sequence, frames in zip(members, past, strict=True):
            advected = self._extrapolated.field(frames, first_step + sequence.shape[1])[first_step:]
            for lead in leads:
                rates = sequence[:, lead]
                from_mmh, to_mmh = area_matching_map(rates, advected[lead], cfg.member_area_mmh, wet_from,
                                                     ceiling=cfg.member_area_ceiling)
                if from_mmh:
                    _each_member(functools.partial(_map_wet_rates, from_mmh=from_mmh, to_mmh=to_mmh, wet_from=wet_from),
                                 rates)

    def _move_towards_sprog(self, members: np.ndarray, past: np.ndarray, weights: Sequence[float],
                            first_step: int, keep_rates: bool = False) -> None:
        """Move (in place) each member's dBR by ``weights[lead]`` times S-PROG's dBR less the members' mean
        dBR (``ModelConfig.member_sprog_weight``); with ``keep_rates`` each member then takes back its own
        rates, in the moved field's order (``member_sprog_keeps_rates``). ``members``: (batch, draws, steps,
        y, x) mm/h."""
        for sequence, frames in zip(members, past, strict=True):
            sprog_db = self._sprog.field(frames, first_step + len(weights))[first_step:]
            for lead, weight in enumerate(weights):
                if weight == 0:
                    continue
                rates = sequence[:, lead]
                members_db, metadata = _members_db(rates)
                shift = _sprog_shift(members_db, sprog_db[lead])
                if keep_rates:
                    _each_member(_reorder_rates, rates, members_db + weight * shift)
                    continue
                rates[...] = _moved_rates(rates, members_db, metadata, weight * shift)

    def _match_observed(self, members: np.ndarray, last: np.ndarray, leads: Sequence[int]) -> None:
        """Give (in place) the members' wet pixels at ``leads`` the last frame's rain rates of the same
        exceedance fraction (``ModelConfig.member_matching``); ``members``: (batch, draws, steps, y, x),
        ``last``: (batch, y, x) mm/h."""
        wet_from = self.normalisation.threshold_mmh
        pooled = self.model_config.member_matching == "pooled"
        for sequence, observed in zip(members, last, strict=True):
            seen = observed[np.isfinite(observed)]
            if seen.size == 0:
                continue
            descending = -np.sort(-seen)
            for lead in leads:
                if pooled:
                    _match_exceedance(sequence[:, lead], descending, wet_from)
                else:
                    match = functools.partial(_match_exceedance, descending=descending, wet_from=wet_from)
                    _each_member(match, sequence[:, lead:lead + 1])  # each member (1, y, x) on its own

    def _drift(self, offsets: torch.Tensor | None, step_minutes: float, first_step: int) -> torch.Tensor | None:
        """(rows, trajectory steps, 2): each draw's motion shift in each step of a pass that starts
        ``first_step`` steps into the forecast (``ModelConfig.member_motion_growth``), or None."""
        if offsets is None:
            return None
        cfg = self.model_config
        profile = cfg.member_motion_profile(step_minutes, cfg.trajectory_steps, first_step)
        if first_step > 0:
            # a later pass estimates motion from the member's own frames, which already moved with
            # its shift: only what the shift has changed since is added (nothing for a constant one)
            # (the window's steps before the forecast began are observed frames: they did not move)
            window_start = max(first_step - cfg.n_input + 1, 0)
            moved = cfg.member_motion_profile(step_minutes, first_step - window_start, window_start)
            profile = profile - moved.sum() / (cfg.n_input - 1)
            if not profile.any():
                return None
        return offsets[:, None, :] * torch.from_numpy(profile).to(offsets.device)[None, :, None]

    def _conditioning(self, past: np.ndarray, valid: np.ndarray, draws: int = 1, drift: torch.Tensor | None = None,
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The generator's inputs for each sequence and draw (sequence-major, normalised) and the advected prior.

        Motion is estimated once per sequence; with ``drift`` each draw's trajectories are
        traced through the motion shifted by its own vector in each step.
        """
        cfg = self.model_config
        _, _, ny, nx = past.shape
        dev = self.device
        past_t = torch.from_numpy(np.where(np.isfinite(past), past, 0.0).astype(np.float32)).to(dev)
        valid_t = torch.from_numpy(valid.astype(np.float32)).to(dev)
        if draws > 1:
            past_t, valid_t = past_t.repeat_interleave(draws, dim=0), valid_t.repeat_interleave(draws, dim=0)
        inputs = {"past": self.normalisation.encode(past_t).unsqueeze(2), "valid": valid_t[:, None, None]}
        if not cfg.condition_on_advection:
            return inputs, None
        motion = torch.from_numpy(np.stack([lucas_kanade_coarse(p, cfg.motion_downsample) for p in past])).to(dev)
        if draws > 1:
            motion = motion.repeat_interleave(draws, dim=0)
        points = pixel_grid(len(past_t), ny, nx, device=dev)
        advected, displacement, moved = conditioning_fields(
            past_t, motion, points, steps=cfg.trajectory_steps, n_output=cfg.n_output, drift=drift,
            drift_moves_past=cfg.member_shift_moves_past)
        inputs["advected"] = self.normalisation.encode(advected * valid_t[:, None]).unsqueeze(2)
        inputs["displacement"] = displacement
        inputs["lagrangian_past"] = self.normalisation.encode(moved).unsqueeze(2)
        return inputs, inputs["advected"][:, :, 0]


class RecentFields:
    """A baseline's forecast of the last inputs a forecaster saw, run once for each: the members' settings in
    ``predict``, the mean's in ``finish`` and a fit's leads one by one all take the same field.
    A subclass's ``compute`` gives it from the last ``n_frames`` (time, y, x) mm/h frames (None: all).
    Keeps at most ``max_bytes`` of fields, the oldest dropped first; safe across threads (the service's
    batches)."""

    n_frames: int | None = None

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._fields: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.runs = 0

    def __getstate__(self) -> dict[str, Any]:
        # a forecaster sent to another process (a Dask worker) starts there with none kept: a lock does not travel
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])  # type: ignore[misc]

    def field(self, past: np.ndarray, steps: int) -> np.ndarray:
        """(steps, y, x), read-only, for (time, y, x) mm/h frames. A baseline steps forward one lead at a time,
        so fewer steps of the same frames are the first leads of a longer field already kept."""
        frames = np.ascontiguousarray(past[-self.n_frames:] if self.n_frames else past, dtype=np.float32)
        key = (frames.shape, hashlib.blake2b(frames.tobytes(), digest_size=16).digest())
        with self._lock:
            if key in self._fields and len(self._fields[key]) >= steps:
                self._fields.move_to_end(key)
                return self._fields[key][:steps]
        field = self.compute(frames, steps)
        field.flags.writeable = False
        with self._lock:
            self.runs += 1
            self._fields[key] = field
            self._fields.move_to_end(key)
            while sum(kept.nbytes for kept in self._fields.values()) > self.max_bytes and len(self._fields) > 1:
                self._fields.popitem(last=False)
        return field

    def compute(self, frames: np.ndarray, steps: int) -> np.ndarray:
        """(steps, y, x) from (time, y, x) mm/h frames."""
        raise NotImplementedError


def _sprog_db(past: np.ndarray, steps: int) -> np.ndarray:
    """pySTEPS' S-PROG of (time, y, x) mm/h frames, (steps, y, x) dBR: NaN where it says nothing (the last
    frame's no-data and what flows in from outside)."""
    frames = past[-cascade.N_INPUT_FRAMES:]
    past_db, _ = cascade.to_db(frames)
    forecast_db = np.array(cascade.run_nowcast("sprog", past_db, cascade.motion(frames), steps), dtype=np.float64)
    return np.where(np.isfinite(frames[-1]), forecast_db, np.nan)


class RecentSprog(RecentFields):
    """pySTEPS' S-PROG (:func:`_sprog_db`, dBR) of the last inputs, from their last 3 frames."""

    n_frames = cascade.N_INPUT_FRAMES

    def compute(self, frames: np.ndarray, steps: int) -> np.ndarray:
        return _sprog_db(frames, steps)


class RecentExtrapolation(RecentFields):
    """The extrapolation baseline (the ``extrapolation`` forecaster, mm/h; NaN where it says nothing) of the
    last inputs, from all of them."""

    def compute(self, frames: np.ndarray, steps: int) -> np.ndarray:
        return Extrapolation().predict(frames[None], steps)[0]


def _map_wet_rates(rates: np.ndarray, from_mmh: Sequence[float], to_mmh: Sequence[float], wet_from: float) -> None:
    """Map (in place) the wet ``rates`` (from ``wet_from`` mm/h) from ``from_mmh`` onto ``to_mmh``
    (:func:`nowcast.ensemble.map_rates`), kept wet and bounded; dry pixels and no data as they were."""
    wet = rates >= wet_from  # NaN compares False: no data stays no data
    mapped = np.clip(map_rates(np.where(wet, rates, 1.0), from_mmh, to_mmh), wet_from, MAX_RAIN_RATE_MMH)
    np.copyto(rates, mapped, where=wet)


def _sprog_shift(members_db: np.ndarray, sprog_db: np.ndarray) -> np.ndarray:
    """S-PROG's dBR (y, x) less the members' (member, y, x) mean dBR; 0 where S-PROG says nothing."""
    return np.where(np.isfinite(sprog_db), sprog_db - members_db.mean(axis=0), 0.0)


def _members_db(rates: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`nowcast.forecasters.cascade.to_db` of ``rates`` (member, y, x) mm/h, each member on a thread of its
    own (the transform is pixel by pixel, so the result is the whole array's; its metadata does not depend on
    the rates)."""
    members_db = np.empty(rates.shape, dtype=np.float64)
    metadata: list[dict[str, Any]] = []

    def convert(out: np.ndarray, member: np.ndarray) -> None:
        out[...], member_metadata = cascade.to_db(member)
        metadata.append(member_metadata)

    _each_member(convert, members_db, rates)
    return members_db, metadata[0]


def _moved_rates(rates: np.ndarray, members_db: np.ndarray, metadata: Any, shift_db: np.ndarray) -> np.ndarray:
    """``rates`` (member, y, x) mm/h, whose dBR is ``members_db``, with ``shift_db`` added to it: a copy, capped,
    no data kept (where the first member has none, as in every member). Each member on a thread of its own."""
    moved = np.empty_like(rates)

    def move(out: np.ndarray, member_rates: np.ndarray, member_db: np.ndarray) -> None:
        rate = np.minimum(cascade.to_rate(member_db + shift_db, metadata, rates[0]), MAX_RAIN_RATE_MMH)
        out[...] = np.where(np.isfinite(member_rates), rate.astype(rates.dtype, copy=False), member_rates)

    _each_member(move, moved, rates, members_db)
    return moved


def _each_member(work: Callable[..., None], *arrays: np.ndarray) -> None:
    """``work`` on each member's slices of ``arrays`` (their first axis), on as many threads as torch computes
    with: the members are independent, and numpy's sorts let go of the GIL while they run."""
    workers = min(torch.get_num_threads(), len(arrays[0]))
    if workers <= 1:
        for slices in zip(*arrays, strict=True):
            work(*slices)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, *arrays))  # list(): a worker's exception is raised here


def _reorder_rates(rates: np.ndarray, order_by: np.ndarray) -> None:
    """Give (in place) ``rates``' valid pixels their own values again, sorted into the order of ``order_by``
    (the highest rate where ``order_by`` is highest; ties broken by the rates' own order, so that a tied
    stretch of dry field does not fill row by row)."""
    valid = np.isfinite(rates)
    values = rates[valid]
    order = np.lexsort((values, order_by[valid]))
    placed = np.empty_like(values)
    placed[order] = np.sort(values)
    rates[valid] = placed


def native_half_precision(device: torch.device) -> str | None:
    """The half precision ``device`` computes natively: float16 on a GPU, bfloat16 on a CPU built for it."""
    if device.type == "cuda":
        return "float16"
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bfloat16"
    return None


def _match_exceedance(fields: np.ndarray, descending: np.ndarray, wet_from: float) -> None:
    """Set (in place) the k-th largest of the n valid values of ``fields`` at or above ``wet_from``
    to ``descending``'s value at the fraction (k + 1/2)/n of its length; NaN and dry values stay."""
    wet = fields >= wet_from  # NaN compares False
    n_valid = int(np.isfinite(fields).sum())
    values = fields[wet]
    if values.size == 0:
        return
    order = np.argsort(-values, kind="stable")
    index = ((np.arange(values.size) + 0.5) / n_valid * descending.size).astype(np.int64)
    matched = np.empty_like(values)
    matched[order] = descending[np.minimum(index, descending.size - 1)]
    fields[wet] = matched


def _gaussian_kernel(sigma_pixels: float, device: torch.device) -> torch.Tensor:
    """A normalised 1-D Gaussian kernel, three standard deviations each side."""
    radius = max(1, math.ceil(3 * sigma_pixels))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-x ** 2 / (2 * max(sigma_pixels, 1e-3) ** 2))
    return kernel / kernel.sum()


def _separable_filter(fields: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``fields`` (n, 1, y, x) filtered by ``kernel`` along x, then along y: smaller by the kernel's length - 1
    (``conv2d``'s valid correlation). Summed as shifted slices: a one-channel ``conv2d`` with a short kernel
    runs about ten times slower on a CPU."""
    length = len(kernel)
    weights = [float(w) for w in kernel]
    along_x = fields[..., :, :fields.shape[-1] - length + 1] * weights[0]
    for shift, weight in enumerate(weights[1:], start=1):
        along_x.add_(fields[..., :, shift:shift + along_x.shape[-1]], alpha=weight)
    along_y = along_x[..., :along_x.shape[-2] - length + 1, :] * weights[0]
    for shift, weight in enumerate(weights[1:], start=1):
        along_y.add_(along_x[..., shift:shift + along_y.shape[-2], :], alpha=weight)
    return along_y


def _pad(x: torch.Tensor, pad_y: int, pad_x: int) -> torch.Tensor:
    """Zero-pad the y/x axes of (batch, time, channel, y, x) at the bottom/right."""
    b, t, c, h, w = x.shape
    return F.pad(x.reshape(b, t * c, h, w), (0, pad_x, 0, pad_y)).reshape(b, t, c, h + pad_y, w + pad_x)
