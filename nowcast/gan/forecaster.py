"""The GAN as a forecaster: the inference pipeline around the generator (after diffusers).

``predict`` takes a batch of past sequences in mm/h, estimates motion (when the model
is conditioned on advection), normalises, pads the grid to what the scales need, runs
one batched forward pass, crops, and returns mm/h between 0 and ``MAX_RAIN_RATE_MMH``,
NaN where the last frame had no data. Longer horizons than the model's ``n_output`` are reached by feeding
predictions back as the past.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from nowcast import config as config_io
from nowcast.forecasters.base import Forecaster, Spacing
from nowcast.gan.advection import along, lagrangian_past, pixel_grid, trajectories
from nowcast.gan.config import ModelConfig, upgrade_model_config
from nowcast.gan.model import Generator
from nowcast.motion import lucas_kanade_coarse
from nowcast.sequence import MAX_RAIN_RATE_MMH
from nowcast.transforms import Normalisation

logger = logging.getLogger(__name__)


class GANForecaster(Forecaster):
    name = "gan"
    supports_half = True
    # noise is drawn per sequence, so a request's forecast does not depend on its batch
    batch_invariant = True  # type: ignore[assignment]

    def __init__(self, generator: Generator, normalisation: Normalisation, *, device: str | None = None,
                 half: bool = False, label: str = "gan", card: dict[str, Any] | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.generator = generator.to(self.device).eval()
        self.model_config: ModelConfig = generator.config
        self.normalisation = normalisation
        self.n_input_frames = self.model_config.n_input
        self.supports_members = self.model_config.noise_channels > 0
        # half precision only where the hardware is built for it
        self.half = half and self.device.type == "cuda"
        self.name = label  # type: ignore[misc]
        self.card = card or {}

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
        if members is not None:
            noise = self._noise_sources(len(past), seed)
            runs = [self._predict(past, steps, noise) for _ in range(members)]
            return np.stack(runs, axis=1)
        noise = self._noise_sources(len(past), seed) if self.supports_members else None
        return self._predict(past, steps, noise)

    def _noise_sources(self, batch: int, seed: int | None) -> list[torch.Generator]:
        """One generator per sequence, all seeded alike: each sample's noise is what it gets alone."""
        sources = []
        for _ in range(batch):
            source = torch.Generator(device=self.device)
            source.manual_seed(0 if seed is None else seed)
            sources.append(source)
        return sources

    def _predict(self, past: np.ndarray, steps: int, noise: list[torch.Generator] | None) -> np.ndarray:
        n_in, n_out = self.model_config.n_input, self.model_config.n_output
        valid = np.isfinite(past[:, -1])
        history = past
        chunks = []
        produced = 0
        while produced < steps:
            window = history[:, -n_in:]
            out = self._forward(window, valid, noise)
            chunks.append(out)
            produced += n_out
            history = np.concatenate([history, out], axis=1)
        result = np.concatenate(chunks, axis=1)[:, :steps]
        return result

    def _forward(self, past: np.ndarray, valid: np.ndarray, noise: list[torch.Generator] | None) -> np.ndarray:
        z, _ = self.forward_normalised(past, valid, noise)
        # bounded like the input, so that a forecast (and what is fed back for longer horizons) stays finite
        rate = torch.clamp(self.normalisation.decode(z), min=0.0, max=MAX_RAIN_RATE_MMH)
        valid_t = torch.from_numpy(valid).to(rate.device)
        rate = torch.where(valid_t[:, None], rate, torch.full_like(rate, math.nan))
        return rate.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def forward_normalised(self, past: np.ndarray, valid: np.ndarray, noise: list[torch.Generator] | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pass of ``n_output`` frames: the forecast and its advection prior, normalised.

        ``past``: (batch, n_input, y, x) in mm/h, NaN for no data; ``valid``: (batch, y, x),
        True where the last frame has data. Returns (batch, n_output, y, x) tensors; the
        prior is None for a model not conditioned on advection.
        """
        cfg = self.model_config
        _batch, _, ny, nx = past.shape
        filled = np.where(np.isfinite(past), past, 0.0).astype(np.float32)
        dev = self.device
        past_t = torch.from_numpy(filled).to(dev)
        valid_t = torch.from_numpy(valid.astype(np.float32)).to(dev)
        conditioning: dict[str, torch.Tensor] = {}
        if cfg.condition_on_advection:
            motion = np.stack([lucas_kanade_coarse(p, cfg.motion_downsample) for p in past])
            points = pixel_grid(len(past), ny, nx, device=dev)
            displacement = trajectories(torch.from_numpy(motion).to(dev), cfg.trajectory_steps, points)
            advected = along(past_t[:, -1], displacement[:, :cfg.n_output], points)
            conditioning["advected"] = self.normalisation.encode(advected * valid_t[:, None]).unsqueeze(2)
            conditioning["displacement"] = displacement[:, :cfg.n_output]
            moved = lagrangian_past(past_t, displacement, points)
            conditioning["lagrangian_past"] = self.normalisation.encode(moved).unsqueeze(2)
        past_z = self.normalisation.encode(past_t).unsqueeze(2)
        valid_z = valid_t[:, None, None]
        multiple = cfg.grid_multiple
        pad_y, pad_x = (-ny) % multiple, (-nx) % multiple
        prior = conditioning["advected"][:, :, 0] if cfg.condition_on_advection else None
        if pad_y or pad_x:
            # padded pixels hold no data: a trajectory from there brings no correction
            past_z, valid_z = _pad(past_z, pad_y, pad_x), _pad(valid_z, pad_y, pad_x)
            conditioning = {k: _pad(v, pad_y, pad_x) for k, v in conditioning.items()}
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
            z = self.generator(past_z, valid_z, noise_generator=noise, **conditioning)[-1]
        return z.float()[:, :, 0, :ny, :nx], prior


def _pad(x: torch.Tensor, pad_y: int, pad_x: int) -> torch.Tensor:
    """Zero-pad the y/x axes of (batch, time, channel, y, x) at the bottom/right."""
    b, t, c, h, w = x.shape
    return F.pad(x.reshape(b, t * c, h, w), (0, pad_x, 0, pad_y)).reshape(b, t, c, h + pad_y, w + pad_x)
