"""Training and validation samples cut from whole radar events.

Events are loaded once, and the motion of every start time is estimated on the whole
grid with the same Lucas–Kanade the forecaster uses. A patch's back-trajectories are
traced through that whole-grid motion and its advected frames (and, for the Lagrangian
frame, its past frames moved to the last observation) are read from the whole grid,
exactly as at inference. (Advecting a cut-out patch instead would bring dry air in from
the patch's edges, and the model would learn to paint rain into it.) Every batch is then
a pure function of ``(seed, step, rank, substep)``: a resumed run sees exactly the
batches an uninterrupted one would, and data-parallel ranks see different ones.

Patches are biased towards rain (rejection sampling on the wet fraction of the last
past frame) and randomly flipped and rotated by 90°. A batch can hold several draws of
every patch, each traced through the event's motion shifted by its own constant vector,
as ensemble members are at inference.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from nowcast.gan.advection import conditioning_fields, known_at_source, pixel_grid, trajectories
from nowcast.gan.config import DataConfig, ModelConfig
from nowcast.motion import lucas_kanade_coarse
from nowcast.sequence import pixel_size_km, time_step
from nowcast.transforms import Normalisation

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Model-ready tensors, (batch, time, channel, y, x), normalised space."""

    past: torch.Tensor  # (b, n_input, 1, y, x), no-data filled with 0
    valid: torch.Tensor  # (b, 1, 1, y, x), last past frame has data
    future: torch.Tensor  # (b, n_output, 1, y, x), no-data filled with 0
    future_mask: torch.Tensor  # (b, n_output, 1, y, x), 1 where observed and valid
    advected: torch.Tensor  # (b, n_output, 1, y, x), advected last frame
    displacement: torch.Tensor  # (b, n_output, 2, y, x), back-trajectories in pixels (x, y)
    lagrangian_past: torch.Tensor  # (b, n_input, 1, y, x), past moved to the last frame, no-data as 0

    FIELDS = ("past", "valid", "future", "future_mask", "advected", "displacement", "lagrangian_past")

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in self.FIELDS))

    def conditioning(self) -> dict[str, torch.Tensor]:
        """The generator's inputs besides ``past`` and ``valid``, as keyword arguments."""
        return {"advected": self.advected, "displacement": self.displacement,
                "lagrangian_past": self.lagrangian_past}

    def __len__(self) -> int:
        return self.past.shape[0]

    def repeat(self, samples: int) -> Batch:
        """The batch ``samples`` times over, sample-major (every input once, then again...)."""
        if samples == 1:
            return self
        return Batch(*(getattr(self, f).repeat(samples, *([1] * (getattr(self, f).dim() - 1)))
                       for f in self.FIELDS))


class EventSamples:
    """One event's frames (mm/h) and, per start time, the motion of its past frames."""

    def __init__(self, name: str, sequence: xr.DataArray, model: ModelConfig) -> None:
        self.name = name
        self.model = model
        self.rate = sequence.values.astype(np.float32)
        self.filled = np.nan_to_num(self.rate, nan=0.0)
        n_frames = self.rate.shape[0]
        window = model.n_input + model.n_output
        self.starts = np.arange(0, n_frames - window + 1)
        if len(self.starts) == 0:
            raise ValueError(f"event {name}: {n_frames} frames, fewer than {window} needed for one sample")
        self.motion = np.empty((len(self.starts), 2, *self.rate.shape[1:]), dtype=np.float32)
        # OpenCV's tracking and NumPy's interpolation release the GIL: threads share the start times
        # (1.6 times faster on two cores, the fields the same)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            fields = pool.map(lambda start: lucas_kanade_coarse(self.rate[start:start + model.n_input],
                                                                model.motion_downsample), self.starts)
            for i, motion in enumerate(fields):
                self.motion[i] = motion
        last = self.rate[self.starts + model.n_input - 1]
        self.wet_fraction = np.nanmean(last >= 1.0, axis=(1, 2))
        self.step_minutes = time_step(sequence).total_seconds() / 60.0
        #: a member's motion shift on this grid, pixels per step (0 without member motion)
        self.member_motion_pixels = model.member_motion_pixels(pixel_size_km(sequence), self.step_minutes)
        logger.info("event %s: %d frames, %d start times, grid %s", name, n_frames, len(self.starts),
                    self.rate.shape[1:])

    @property
    def shape(self) -> tuple[int, int]:
        return self.rate.shape[1], self.rate.shape[2]

    def moved(self, index: int, y0: int, x0: int, ny: int, nx: int, shift: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A patch's (advected last frame, back-trajectories, past moved to the last frame), mm/h.

        Traced and read on the whole grid: (n_output, ny, nx), (n_output, 2, ny, nx), (n_input, ny, nx).
        ``shift``: a member's motion shift (2,), pixels per step, drifting in time as the model's
        ``member_motion_growth`` says; or None.
        """
        m = self.model
        start = self.starts[index]
        points = pixel_grid(1, ny, nx, origin=(y0, x0))
        velocity = torch.from_numpy(self.motion[index])[None]
        drift = None
        if shift is not None:
            profile = m.member_motion_profile(self.step_minutes, m.trajectory_steps)
            drift = torch.from_numpy(np.asarray(shift, dtype=np.float32)[None, None] * profile[None, :, None])
        past = torch.from_numpy(self.filled[start:start + m.n_input])[None]
        advected, displacement, moved_past = conditioning_fields(
            past, velocity, points, steps=m.trajectory_steps, n_output=m.n_output, drift=drift,
            drift_moves_past=m.member_shift_moves_past)
        return advected[0].numpy(), displacement[0].numpy(), moved_past[0].numpy()

    def known(self, index: int, y0: int, x0: int, ny: int, nx: int) -> np.ndarray:
        """(n_output, ny, nx): where the back-trajectories of a patch (corner ``y0``, ``x0``) through the
        estimated motion end on data of the last past frame of the whole grid
        (:func:`nowcast.gan.advection.known_at_source`): the pixels a forecast gives a value. Without a
        member's shift, so that every draw of a patch is scored on the same pixels."""
        last = self.starts[index] + self.model.n_input - 1
        valid = torch.from_numpy(np.isfinite(self.rate[last]))[None]
        points = pixel_grid(1, ny, nx, origin=(y0, x0))
        displacement = trajectories(torch.from_numpy(self.motion[index])[None], self.model.n_output, points)
        return known_at_source(valid, displacement, points)[0].numpy()


class SampleSource:
    """Deterministic batches from a set of events."""

    def __init__(self, events: Sequence[EventSamples], data: DataConfig, model: ModelConfig,
                 normalisation: Normalisation, seed: int) -> None:
        if not events:
            raise ValueError("no events to draw samples from")
        self.events = list(events)
        self.data = data
        self.model = model
        self.normalisation = normalisation
        self.seed = seed
        weights = np.array([len(e.starts) for e in self.events], dtype=np.float64)
        self.event_weights = weights / weights.sum()
        for e in self.events:
            if min(e.shape) < data.patch_size:
                raise ValueError(f"event {e.name}: grid {e.shape} smaller than a patch ({data.patch_size})")

    def batch(self, batch_size: int, step: int, rank: int = 0, substep: int = 0, draws: int = 1) -> Batch:
        """``batch_size`` patches; with ``draws`` > 1, every patch ``draws`` times, sample-major
        (as :meth:`Batch.repeat`), each draw advected along the motion shifted by its own vector."""
        rng = np.random.default_rng([self.seed, step, rank, substep])
        places = [self._place(rng) for _ in range(batch_size)]
        if draws == 1:
            return self.assemble([self._cut(place) for place in places], rng if self.data.augment else None)
        # the same rng calls as for draws=1, so the patches and their turns are the same; the
        # shifts come from a stream of their own
        turns = random_turns(rng, len(places)) if self.data.augment else [(0, False)] * len(places)
        shift_rng = np.random.default_rng([self.seed, step, rank, substep, draws])
        drawn = [self._cut(place, shift_rng.normal(0.0, place[0].member_motion_pixels, size=2)).augmented(*turn)
                 for _ in range(draws) for place, turn in zip(places, turns, strict=True)]
        return make_batch(drawn, self.model, self.normalisation)

    def _cut(self, place: tuple[EventSamples, int, int, int], shift: np.ndarray | None = None) -> Crop:
        event, index, y0, x0 = place
        size = self.data.patch_size
        start = event.starts[index]
        n_in = self.model.n_input
        window = event.rate[start:start + n_in + self.model.n_output, y0:y0 + size, x0:x0 + size].copy()
        # no loss where the rain came from off the grid or from no data: a forecast says nothing there
        window[n_in:][~event.known(index, y0, x0, size, size)] = np.nan
        return Crop(window, *event.moved(index, y0, x0, size, size, shift))

    def _place(self, rng: np.random.Generator) -> tuple[EventSamples, int, int, int]:
        """An event, a start time and a patch corner: rainy ones preferred."""
        cfg, m = self.data, self.model
        event = self.events[rng.choice(len(self.events), p=self.event_weights)]
        # prefer rainy start times and rainy places, without ever excluding dry ones
        start_weights = event.wet_fraction + 0.02
        index = rng.choice(len(event.starts), p=start_weights / start_weights.sum())
        start = event.starts[index]
        size = cfg.patch_size
        ny, nx = event.shape
        frames = event.rate[start:start + m.n_input + m.n_output]
        best = None
        for _ in range(20):
            y0, x0 = rng.integers(0, ny - size + 1), rng.integers(0, nx - size + 1)
            inner = frames[m.n_input - 1, y0:y0 + size, x0:x0 + size]
            valid = np.isfinite(inner)
            wet = float(np.mean(inner[valid] >= 1.0)) if valid.mean() > 0.5 else -1.0
            if best is None or wet > best[0]:
                best = (wet, y0, x0)
            if wet >= cfg.min_wet_fraction:
                break
        _, y0, x0 = best
        return event, index, int(y0), int(x0)

    def assemble(self, crops: list[Crop], rng: np.random.Generator | None) -> Batch:
        """Augment and normalise a list of crops."""
        return make_batch(crops, self.model, self.normalisation, rng)


@dataclass
class Crop:
    """One sample in mm/h: frames (n_input + n_output, y, x) as observed, NaN = no data (in the future
    frames also where the rain came from off the grid or from no data, which no forecast can know), and what
    advection makes of them: ``advected`` (n_output, y, x), ``displacement`` (n_output, 2, y, x)
    in pixels (x, y), ``lagrangian_past`` (n_input, y, x)."""

    frames: np.ndarray
    advected: np.ndarray
    displacement: np.ndarray
    lagrangian_past: np.ndarray

    def augmented(self, k: int, flip: bool) -> Crop:
        """Rotated k times by 90° and optionally flipped along x, displacement vectors with it."""
        return Crop(_augment(self.frames, k, flip), _augment(self.advected, k, flip),
                    _augment_vectors(self.displacement, k, flip), _augment(self.lagrangian_past, k, flip))


def make_batch(crops: Sequence[Crop], model: ModelConfig, normalisation: Normalisation,
               rng: np.random.Generator | None = None) -> Batch:
    """Tensors from crops, each randomly rotated and flipped when ``rng`` is given."""
    if rng is not None:
        crops = [c.augmented(*turn) for c, turn in zip(crops, random_turns(rng, len(crops)), strict=True)]
    frames = np.stack([c.frames for c in crops])
    n_in = model.n_input
    past, future = frames[:, :n_in], frames[:, n_in:]
    valid = np.isfinite(past[:, -1:])
    future_mask = np.isfinite(future) & valid
    # advected rain outside the radar's range is unknown, not dry
    advected = np.where(valid, np.stack([c.advected for c in crops]), np.nan)

    def encode(x: np.ndarray) -> torch.Tensor:
        z = np.nan_to_num(normalisation.encode(x), nan=0.0)
        return torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).unsqueeze(2)

    return Batch(
        past=encode(past),
        valid=torch.from_numpy(valid.astype(np.float32)).unsqueeze(2),
        future=encode(future),
        future_mask=torch.from_numpy(future_mask.astype(np.float32)).unsqueeze(2),
        advected=encode(advected),
        displacement=torch.from_numpy(np.stack([c.displacement for c in crops]).astype(np.float32)),
        lagrangian_past=encode(np.stack([c.lagrangian_past for c in crops])),
    )


def random_turns(rng: np.random.Generator, n: int) -> list[tuple[int, bool]]:
    """``n`` random (quarter turns, flip) pairs for :meth:`Crop.augmented`, drawn crop by crop."""
    return [(int(rng.integers(4)), bool(rng.integers(2))) for _ in range(n)]


def _augment(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    x = np.rot90(x, k, axes=(-2, -1))
    if flip:
        x = x[..., ::-1]
    return np.ascontiguousarray(x)


def _augment_vectors(vectors: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """:func:`_augment` of a (..., 2, y, x) field of (x, y) vectors: positions and directions turn."""
    vectors = _augment(vectors, k, flip)
    vx, vy = vectors[..., 0, :, :], vectors[..., 1, :, :]
    for _ in range(k % 4):
        # np.rot90 sends pixel (row r, column c) to (nx - 1 - c, r): x becomes y, y becomes -x
        vx, vy = vy, -vx
    if flip:
        vx = -vx
    return np.stack([vx, vy], axis=-3)


def validation_batches(events: Sequence[EventSamples], data: DataConfig, model: ModelConfig,
                       normalisation: Normalisation, seed: int) -> list[Batch]:
    """A fixed set of larger, rain-biased patches per held-out event (no augmentation)."""
    patched = DataConfig(**{**data.__dict__, "patch_size": data.val_patch_size, "augment": False})
    out = []
    for e in events:
        if min(e.shape) < patched.patch_size:
            logger.warning("validation event %s is smaller than a validation patch; skipped", e.name)
            continue
        source = SampleSource([e], patched, model, normalisation, seed)
        out.append(source.batch(data.val_patches_per_event, step=0, rank=0, substep=99))
    return out


def load_events(names: Sequence[str], model: ModelConfig, data: DataConfig,
                loader: Callable[[str], xr.DataArray] | None = None) -> list[EventSamples]:
    """Load named events (from ``data.event_source``, or through ``loader``) and estimate their motion."""
    if loader is None:
        loader = EVENT_SOURCES[data.event_source](data)
    return [EventSamples(name, loader(name), model) for name in names]


def _catalogue_loader(data: DataConfig) -> Callable[[str], xr.DataArray]:
    """Real events by catalogue id (the packaged catalogue, or ``data.catalogue``)."""
    from nowcast.io.catalogue import get_event, load_catalogue, load_event

    def loader(name: str) -> xr.DataArray:
        event = load_catalogue(data.catalogue)[name] if data.catalogue else get_event(name)
        return load_event(event, root=data.data_root)

    return loader


def _synthetic_loader(data: DataConfig) -> Callable[[str], xr.DataArray]:
    """Generated events, named by their seed: smoke tests and the DDP check need no files."""
    from nowcast.config import ConfigError
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    def loader(name: str) -> xr.DataArray:
        if not name.isdigit():
            raise ConfigError(f"synthetic event {name!r}: name synthetic events by their seed, e.g. \"1\"")
        size = data.patch_size + 16
        return synthetic_sequence(SyntheticRain(ny=size, nx=size, frames=24), seed=int(name))

    return loader


#: Where training events come from (``DataConfig.event_source``).
EVENT_SOURCES: dict[str, Callable[[DataConfig], Callable[[str], xr.DataArray]]] = {
    "catalogue": _catalogue_loader,
    "synthetic": _synthetic_loader,
}
