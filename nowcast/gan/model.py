"""The multi-scale generator and discriminators (after Mathieu, Couprie & LeCun, 2016).

Tensors are laid out ``(batch, time, channel, y, x)`` everywhere in this package; rain
has one channel. Fields are in the normalised space of :mod:`nowcast.transforms` (dry =
0), with no-data filled with 0 and carried as a separate validity mask.

Scale k of K works at 1/2^(K-1-k) of the full resolution, coarsest first, and refines
what the coarser scale predicted.

Conditioned on advection (the shipped models), the scales work in the frame that moves
with the rain: their input is the past frames moved to where their air is at the last
observation, their output the correction of each parcel's last rain rate per lead time
(the coarser scale's correction, upsampled, plus their own), and that correction is
carried along the back-trajectories onto the advected frames before any loss or
discriminator sees it. An untrained generator (zero-initialised heads) is exactly the
extrapolation; training learns growth, decay and what motion alone misses.

Without advection (the paper's model), scale k sees the past frames, the validity mask,
the upsampled prediction of scale k-1 (at the coarsest scale: the last frame repeated)
and optionally noise, and predicts a correction of that upsampled prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nowcast.gan.advection import warp
from nowcast.gan.config import ModelConfig


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool the y/x axes of a (batch, time, channel, y, x) tensor by ``factor``."""
    if factor == 1:
        return x
    b, t, c, h, w = x.shape
    pooled = F.avg_pool2d(x.reshape(b, t * c, h, w), factor)
    return pooled.reshape(b, t, c, h // factor, w // factor)


def downsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """A coarse pixel is valid only if every fine pixel under it is."""
    if factor == 1:
        return mask
    return (downsample(mask, factor) > 0.999).to(mask.dtype)


def pyramid(x: torch.Tensor, factors: Sequence[int]) -> dict[int, torch.Tensor]:
    """``downsample(x, f)`` for every power-of-two factor f, each level pooled from the next finer one."""
    levels = {1: x}
    for factor in sorted(factors):
        if factor not in levels:
            finer = factor // 2
            levels[factor] = downsample(levels[finer], 2) if finer in levels else downsample(x, factor)
    return levels


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, t, c, h, w = x.shape
    up = F.interpolate(x.reshape(b, t * c, h, w), size=size, mode="bilinear", align_corners=False)
    return up.reshape(b, t, c, *size)


def _features(inputs: list[torch.Tensor]) -> torch.Tensor:
    """(batch, channel, y, x) maps stacked along channels; in inference straight into channels-last memory."""
    if torch.is_grad_enabled():
        return torch.cat(inputs, dim=1)
    batch, _, ny, nx = inputs[0].shape
    out = torch.empty((batch, sum(x.shape[1] for x in inputs), ny, nx), dtype=inputs[0].dtype,
                      device=inputs[0].device, memory_format=torch.channels_last)
    return torch.cat(inputs, dim=1, out=out)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(batch, time, channel, y, x) -> (batch, time·channel, y, x) for 2-D convolutions."""
    b, t, c, h, w = x.shape
    return x.reshape(b, t * c, h, w)


def limit_correction(correction: torch.Tensor, deadzone: float, per_step: float) -> torch.Tensor:
    """A (batch, time, ...) correction of advection with a dead zone and a per-lead bound.

    Both in normalised units (0 turns either off): magnitudes under ``deadzone`` become 0
    and larger ones shrink by it; the result is bounded smoothly to ±``per_step`` × lead,
    lead = 1 for the first frame. See ``ModelConfig.correction_deadzone_db``.
    """
    if deadzone > 0:
        shrunk = F.softshrink(correction, deadzone)
        # straight-through: the dead zone's zero slope would freeze zero-initialised heads
        correction = correction + (shrunk - correction).detach() if correction.requires_grad else shrunk
    if per_step > 0:
        lead = torch.arange(1, correction.shape[1] + 1, device=correction.device, dtype=correction.dtype)
        bound = per_step * lead.view(1, -1, *([1] * (correction.dim() - 2)))
        if correction.requires_grad:
            correction = bound * torch.tanh(correction / bound)
        else:  # inference: the same arithmetic without the temporaries
            correction = (correction / bound).tanh_().mul_(bound)
    return correction


def lead_projection(n_output: int, degrees_of_freedom: int) -> torch.Tensor:
    """(n_output, n_output): the least-squares projection of values per lead onto polynomials in the lead.

    ``degrees_of_freedom`` polynomials (degree ``degrees_of_freedom`` - 1), orthonormalised
    on the leads 1 … ``n_output`` (Legendre-like, well conditioned at any degree).
    """
    lead = torch.linspace(-1.0, 1.0, n_output, dtype=torch.float64)
    vandermonde = torch.stack([lead ** k for k in range(degrees_of_freedom)], dim=1)
    basis, _ = torch.linalg.qr(vandermonde)
    return (basis @ basis.T).to(torch.float32)


def sliding_max(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Maximum over a window of 2·radius + 1 centred on each element along ``dim`` (-1 or -2).

    What max-pooling with stride 1 and ``radius`` of padding gives, by doubling windows:
    log2(window) elementwise maxima instead of a window's worth of comparisons per element.
    """
    if radius == 0:
        return x
    n, width = x.shape[dim], 2 * radius + 1
    padding = (radius, radius) if dim == -1 else (0, 0, radius, radius)
    window = F.pad(x, padding, value=-math.inf)
    span = 1  # window[i] holds the maximum of the padded values i .. i + span - 1
    while 2 * span <= width:
        length = window.shape[dim] - span
        window = torch.maximum(window.narrow(dim, 0, length), window.narrow(dim, span, length))
        span *= 2
    rest = width - span  # two overlapping windows of `span` cover the whole width
    return torch.maximum(window.narrow(dim, 0, n), window.narrow(dim, rest, n))


class ScaleGenerator(nn.Module):
    """One scale's refinement network: a plain stack of convolutions, fully convolutional."""

    def __init__(self, in_channels: int, width: int, layers: int, out_frames: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 5, padding=2), nn.LeakyReLU(0.2)]
        for i in range(layers - 2):
            dilation = 2 ** (i % 3)
            blocks += [nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv2d(width, out_frames, 3, padding=1)
        # Start as the identity refinement: an untrained model returns its prior
        # (advection or persistence) instead of noise.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # channels-last: oneDNN's convolutions of few channels run about twice as fast on the CPU
        features = features.contiguous(memory_format=torch.channels_last)
        return self.head(self.body(features)).contiguous()


class Generator(nn.Module):
    """Coarse-to-fine generator: past (+ advection) in, ``n_output`` future frames out per scale."""

    def __init__(self, config: ModelConfig, scale_db: float = 15.0) -> None:
        """``scale_db``: dB per normalised unit (the normalisation's), for ``envelope_db``."""
        super().__init__()
        self.config = config
        self.scale_db = scale_db
        # False: the correction limits act in eval mode only (see TrainConfig)
        self.limits_in_training = True
        n_in, n_out = config.n_input, config.n_output
        in_channels = n_in + 1 + n_out + config.noise_channels
        self.scales = nn.ModuleList(
            ScaleGenerator(in_channels, width, config.generator_layers, n_out)
            for width in config.generator_channels
        )
        # derived from the config, so not saved with the weights
        projection = lead_projection(n_out, config.lead_basis) if config.lead_basis else None
        self.register_buffer("lead_projection", projection, persistent=False)

    def factors(self) -> list[int]:
        k = self.config.n_scales
        return [2 ** (k - 1 - i) for i in range(k)]

    def forward(
        self,
        past: torch.Tensor,
        valid: torch.Tensor,
        advected: torch.Tensor | None = None,
        noise_generator: torch.Generator | Sequence[torch.Generator] | None = None,
        *,
        displacement: torch.Tensor | None = None,
        lagrangian_past: torch.Tensor | None = None,
        finest_only: bool = False,
    ) -> list[torch.Tensor]:
        """Predictions at every scale, coarsest first, each (batch, n_output, 1, y_k, x_k).

        ``past``: (batch, n_input, 1, y, x), normalised, no-data filled with 0;
        ``valid``: (batch, 1, 1, y, x), 1 where the last frame has data;
        ``advected``: (batch, n_output, 1, y, x), normalised advected last frame
        (required when the model is conditioned on advection);
        ``noise_generator``: where noise comes from: one generator for the batch, or one
        per sample, so that a sample's noise does not depend on what it is batched with;
        ``displacement``: (batch, n_output, 2, y, x), the back-trajectories of the advection
        in pixels (x, y), and ``lagrangian_past``: (batch, n_input, 1, y, x), the past moved
        to the last observation (normalised): both required with ``advected``;
        ``finest_only``: return the finest scale's prediction alone (inference). Coarser
        scales then pass on their corrections without turning them into forecasts: the
        finest prediction is the same, for a third less interpolation.
        """
        cfg = self.config
        if cfg.condition_on_advection and (advected is None or displacement is None or lagrangian_past is None):
            raise ValueError("this generator is conditioned on advection: pass `advected`, `displacement` and "
                             "`lagrangian_past`")
        limit = ((cfg.correction_deadzone_db > 0 or cfg.correction_db_per_step > 0)
                 and (self.limits_in_training or not self.training))
        factors = self.factors()
        # every scale's inputs pooled from the next finer scale's: the same averages, a fraction of the work
        valid_share = pyramid(valid, factors)
        if cfg.condition_on_advection:
            # only the scales that make a forecast need the advection and trajectories at their resolution
            forecast_factors = factors[-1:] if finest_only else factors
            past_k = pyramid(lagrangian_past, factors)
            advected_k, displacement_k = pyramid(advected, forecast_factors), pyramid(displacement, forecast_factors)
        else:
            past_k = pyramid(past, factors)
        predictions: list[torch.Tensor] = []
        previous: torch.Tensor | None = None
        for factor, scale in zip(factors, self.scales, strict=True):
            valid_k = valid if factor == 1 else (valid_share[factor] > 0.999).to(valid.dtype)
            if cfg.condition_on_advection:
                previous = self._lagrangian_correction(scale, valid_k, past_k[factor], previous, limit,
                                                       noise_generator)
                if factor in advected_k:
                    predictions.append(self._lagrangian_forecast(
                        previous, factor, valid_k, advected_k[factor], displacement_k[factor] / factor))
            else:
                previous = self._plain_scale(scale, past_k[factor], valid_k, previous, noise_generator)
                predictions.append(previous)
        return predictions[-1:] if finest_only else predictions

    def _plain_scale(self, scale: ScaleGenerator, past_k: torch.Tensor, valid_k: torch.Tensor,
                     coarser: torch.Tensor | None,
                     noise_generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
        """One scale of the paper's model: the coarser prediction (or the last frame) plus a correction."""
        size = past_k.shape[-2:]
        if coarser is not None:
            prior = upsample(coarser, size)
        else:
            prior = past_k[:, -1:].expand(-1, self.config.n_output, -1, -1, -1)
        inputs = [_flat(past_k), _flat(valid_k), _flat(prior)]
        if self.config.noise_channels:
            inputs.append(self._noise(past_k, size, noise_generator))
        return prior + self._refine(scale, inputs).unsqueeze(2)

    def _lagrangian_correction(self, scale: ScaleGenerator, valid_k: torch.Tensor, past_k: torch.Tensor,
                               coarser: torch.Tensor | None, limit: bool,
                               noise_generator: torch.Generator | Sequence[torch.Generator] | None,
                               ) -> torch.Tensor:
        """One scale's correction per parcel in the Lagrangian frame: the coarser scale's (upsampled) plus its own.

        ``coarser``: the coarser scale's correction per parcel, or None at the coarsest.
        """
        cfg = self.config
        size = past_k.shape[-2:]
        last = past_k[:, -1:]
        if coarser is not None:
            correction = upsample(coarser, size)
        else:
            correction = torch.zeros((past_k.shape[0], cfg.n_output, 1, *size), dtype=past_k.dtype,
                                     device=past_k.device)
        inputs = [_flat(past_k), _flat(valid_k), _flat(last + correction)]
        if cfg.noise_channels:
            inputs.append(self._noise(past_k, size, noise_generator))
        correction = correction + self._refine(scale, inputs).unsqueeze(2)
        return self._limit_correction(correction) if limit else correction

    def _refine(self, scale: ScaleGenerator, inputs: list[torch.Tensor]) -> torch.Tensor:
        """A scale's output per lead (batch, n_output, y, x), smooth in the lead with ``lead_basis``."""
        out = scale(_features(inputs))
        if self.lead_projection is None:
            return out
        return F.conv2d(out, self.lead_projection.to(out.dtype)[:, :, None, None])

    def _lagrangian_forecast(self, correction: torch.Tensor, factor: int, valid_k: torch.Tensor,
                             advected_k: torch.Tensor, displacement_k: torch.Tensor) -> torch.Tensor:
        """A scale's forecast on the grid: its correction carried along the trajectories onto the advection."""
        # a parcel with no data at the last observation has no rain to correct
        # correction and validity travel in one interpolation pass
        moved = warp(torch.cat([correction, valid_k.expand_as(correction)], dim=2), displacement_k)
        source_valid = moved[:, :, 1:] > 0.999
        prediction = advected_k + moved[:, :, :1] * source_valid
        if self.config.envelope_db > 0:
            prediction = torch.minimum(prediction, self._envelope(advected_k, factor))
        return prediction

    def _limit_correction(self, correction: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        return limit_correction(correction, cfg.correction_deadzone_db / self.scale_db,
                                cfg.correction_db_per_step / self.scale_db)

    def _envelope(self, advected: torch.Tensor, factor: int) -> torch.Tensor:
        """Upper bound of a scale's forecast: the local maximum of its advection plus ``envelope_db``."""
        cfg = self.config
        radius = -(-cfg.envelope_radius // factor)  # ceil: the bound is never tighter at coarse scales
        batch, frames = advected.shape[:2]
        flat = advected.reshape(batch * frames, 1, *advected.shape[-2:])
        # a square maximum is a maximum along x then along y: the same values, far fewer comparisons
        local_max = sliding_max(sliding_max(flat, radius, dim=-1), radius, dim=-2)
        return local_max.reshape(advected.shape) + cfg.envelope_db / self.scale_db

    def _noise(self, past: torch.Tensor, size: torch.Size,
               source: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
        shape = (self.config.noise_channels, *size)
        if isinstance(source, Sequence):
            return torch.stack([torch.randn(shape, generator=g, device=past.device, dtype=past.dtype)
                                for g in source])
        return torch.randn((past.shape[0], *shape), generator=source, device=past.device, dtype=past.dtype)


class ScaleDiscriminator(nn.Module):
    """Judges one scale: past and a future (real or generated) in, one logit per sample."""

    def __init__(self, in_channels: int, width: int, downsamplings: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(downsamplings):
            layers += [nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels *= 2
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # patch scores averaged: a fully convolutional judge works on any patch size
        return self.net(features).mean(dim=(1, 2, 3))


class Discriminator(nn.Module):
    """One discriminator per scale, judging the past and the first ``leads`` future frames (0: all)."""

    def __init__(self, config: ModelConfig, leads: int = 0) -> None:
        super().__init__()
        self.config = config
        self.leads = leads or config.n_output
        in_channels = config.n_input + self.leads + 1
        k = config.n_scales
        self.scales = nn.ModuleList(
            ScaleDiscriminator(in_channels, width, downsamplings=min(k - 1 - i, 2) + 1)
            for i, width in enumerate(config.discriminator_channels)
        )

    def forward(self, past: torch.Tensor, valid: torch.Tensor, futures: list[torch.Tensor]) -> list[torch.Tensor]:
        """Logits per scale, for futures given coarsest first as the generator returns them."""
        k = self.config.n_scales
        logits = []
        for i, (scale, future) in enumerate(zip(self.scales, futures, strict=True)):
            factor = 2 ** (k - 1 - i)
            valid_k = downsample_mask(valid, factor)
            judged = future[:, :self.leads] * valid_k
            features = torch.cat([_flat(downsample(past, factor)), _flat(judged), _flat(valid_k)], 1)
            logits.append(scale(features))
        return logits
