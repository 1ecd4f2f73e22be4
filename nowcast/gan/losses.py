"""Losses of the multi-scale GAN, every one masked to pixels that have data.

G: lambda_adv·L_adv + lambda_lp·L_p + lambda_gdl·L_gdl, summed over scales (Mathieu et
al., eqs. 2, 6 and 11), plus optionally lambda_csi·(1 - soft CSI) at full resolution and,
when G draws several samples per input, lambda_crps·fair CRPS of those samples,
lambda_wet_area·fair CRPS of their wet fractions in windows and lambda_sample_mean·L1 of
their mean.
D: binary cross-entropy of real vs generated, summed over scales.

Several samples per input lie on the batch axis as blocks, sample-major: ``(samples·batch,
...)``, sample ``s`` of input ``b`` at ``s·batch + b``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nowcast.gan.config import LossConfig
from nowcast.gan.model import downsample, downsample_mask
from nowcast.transforms import Normalisation


def lp_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, p: int,
            weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |pred - target|^p over valid pixels, optionally weighted per pixel."""
    err = (pred - target).abs().pow(p) * mask
    if weights is not None:
        err = err * weights
    return err.sum() / (mask.expand_as(err).sum() + 1e-6)


def rain_weights(target: torch.Tensor, config: LossConfig, normalisation: Normalisation) -> torch.Tensor | None:
    """Per-pixel weights from the observed rate (normalised ``target``), or None when unweighted."""
    if not config.rain_weights:
        return None
    weights = torch.ones_like(target)
    for threshold, weight in zip(config.rain_weight_thresholds_mmh, config.rain_weights, strict=True):
        z = float(normalisation.encode(np.float64(threshold)))
        weights = torch.where(target >= z, torch.full_like(target, weight), weights)
    return weights


def gdl_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """Gradient difference loss: | |∇target| - |∇pred| |^alpha along y and x, valid pairs only."""
    total = pred.new_zeros(())
    count = pred.new_zeros(())
    for dim in (-2, -1):
        n = pred.shape[dim]
        grad_p = (pred.narrow(dim, 1, n - 1) - pred.narrow(dim, 0, n - 1)).abs()
        grad_t = (target.narrow(dim, 1, n - 1) - target.narrow(dim, 0, n - 1)).abs()
        pair_mask = mask.narrow(dim, 1, n - 1) * mask.narrow(dim, 0, n - 1)
        diff = (grad_t - grad_p).abs().pow(alpha) * pair_mask
        total = total + diff.sum()
        count = count + pair_mask.expand_as(diff).sum()
    return total / (count + 1e-6)


def soft_csi_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, thresholds_z: list[float],
                  temperature: float) -> torch.Tensor:
    """Mean over lead times and thresholds of 1 - CSI, with a sigmoid for "forecast ≥ threshold".

    ``pred``/``target``/``mask``: (batch, time, channel, y, x), normalised. Hits, forecasts
    and observations are summed over the batch before the ratio, as verification adds
    contingency tables over forecasts; a lead time without observed exceedance in the
    batch has no CSI and is left out.
    """
    terms = []
    dims = [d for d in range(pred.dim()) if d != 1]
    mask = mask.expand_as(pred)
    for z in thresholds_z:
        forecast = torch.sigmoid((pred - z) / temperature) * mask
        # strictly above, as verification counts exceedance (pysteps' contingency tables)
        observed = (target > z).to(pred.dtype) * mask
        hits = (forecast * observed).sum(dims)
        n_observed = observed.sum(dims)
        csi = hits / (forecast.sum(dims) + n_observed - hits + 1e-6)
        terms.append((1.0 - csi)[n_observed > 0])
    scores = torch.cat(terms)
    return scores.mean() if scores.numel() else pred.sum() * 0.0


def fair_crps(samples: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean fair CRPS of an ensemble over valid pixels (Ferro 2014).

    ``samples``: (K, batch, ...) with K >= 2; ``target``, ``mask``: (batch, ...). Per pixel,
    the mean |x_k - y| minus the sum of |x_i - x_j| over ordered pairs / (2 K (K - 1)): a proper
    score whose expectation does not depend on K, so a K-member training ensemble is not
    pushed to be narrower than the truth.
    """
    k = samples.shape[0]
    skill = (samples - target.unsqueeze(0)).abs().mean(0)
    spread = (samples.unsqueeze(0) - samples.unsqueeze(1)).abs().sum((0, 1)) / (2 * k * (k - 1))
    crps = (skill - spread) * mask
    return crps.sum() / (mask.expand_as(crps).sum() + 1e-6)


def rate_crps(finest: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: Normalisation,
              samples: int) -> torch.Tensor:
    """The fair CRPS in mm/h of ``samples`` normalised forecasts per input (sample-major on the batch axis).

    Decoded in float32: under autocast a bfloat16 power of ten keeps 2-3 significant digits.
    """
    rates = norm.decode(finest.float()).reshape(samples, -1, *finest.shape[1:])
    return fair_crps(rates, norm.decode(target.float()), mask)


def wet_fraction_crps(finest: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, thresholds_z: list[float],
                      temperature: float, window: int, samples: int) -> torch.Tensor:
    """The fair CRPS of the samples' wet fraction in ``window``-pixel squares, per lead and threshold.

    ``finest``: ``samples`` normalised forecasts per input of ``target`` (sample-major on the
    batch axis). A sample's wet fraction is its soft exceedance (a sigmoid ``temperature``
    wide, as the soft CSI) averaged over a square's valid pixels; the observed one counts
    "above the threshold" as verification does. Squares without a valid pixel are left out.
    """
    def pooled(x: torch.Tensor) -> torch.Tensor:
        n, t, c, h, w = x.shape
        return F.avg_pool2d(x.reshape(n, t * c, h, w), window, ceil_mode=True)

    # the same divisor serves both fractions, so squares cut by the edge need no care
    valid_share = pooled(mask.expand_as(target))
    valid = (valid_share > 0).to(finest.dtype)
    divisor = valid_share.clamp_min(1e-6)
    repeated = mask.repeat(samples, 1, 1, 1, 1)
    terms = []
    for z in thresholds_z:
        forecast = pooled(torch.sigmoid((finest - z) / temperature) * repeated) / divisor.repeat(samples, 1, 1, 1)
        observed = pooled((target > z).to(finest.dtype) * mask) / divisor
        terms.append(fair_crps(forecast.reshape(samples, *observed.shape), observed, valid))
    return torch.stack(terms).mean()


def sample_mean_error(finest: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, samples: int,
                      leads: int) -> torch.Tensor:
    """L1 of the mean of ``samples`` forecasts per input (sample-major on the batch axis) against
    ``target``, over the first ``leads`` lead times (0: all): DGMR's grid-cell regulariser."""
    kept = slice(0, leads or None)
    mean = finest.reshape(samples, -1, *finest.shape[1:]).mean(0)
    return lp_loss(mean[:, kept], target[:, kept], mask[:, kept], 1)


def scale_targets(target: torch.Tensor, mask: torch.Tensor, n_scales: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The target and its mask at every scale, coarsest first."""
    out = []
    for i in range(n_scales):
        factor = 2 ** (n_scales - 1 - i)
        out.append((downsample(target, factor), downsample_mask(mask, factor)))
    return out


def generator_loss(
    predictions: list[torch.Tensor],
    target: torch.Tensor,
    mask: torch.Tensor,
    config: LossConfig,
    fake_logits: list[torch.Tensor] | None = None,
    normalisation: Normalisation | None = None,
    samples: int = 1,
) -> tuple[torch.Tensor, dict[str, float]]:
    """G's total loss and its parts (as floats for logging).

    With ``samples`` > 1 the predictions hold that many samples of every input of ``target``
    (sample-major on the batch axis): the CRPS term compares them with the observation as an
    ensemble, every other term compares each sample with it.
    """
    norm = normalisation or Normalisation()
    def encoded(thresholds_mmh: tuple[float, ...]) -> list[float]:
        return [float(norm.encode(np.float64(t))) for t in thresholds_mmh]

    # the terms that score a draw's samples together, against the one observation
    ensemble_parts: dict[str, float] = {}
    ensemble_total: torch.Tensor | float = 0.0
    if samples > 1:
        targets = scale_targets(target, mask, len(predictions))
        crps = sum(fair_crps(p.reshape(samples, -1, *p.shape[1:]), t, m)
                   for p, (t, m) in zip(predictions, targets, strict=True))
        ensemble_total, ensemble_parts = config.lambda_crps * crps, {"g_crps": crps.item()}
        if config.lambda_crps_rate > 0:
            crps_rate = rate_crps(predictions[-1], target, mask, norm, samples)
            ensemble_total = ensemble_total + config.lambda_crps_rate * crps_rate
            ensemble_parts["g_crps_rate"] = crps_rate.item()
        if config.lambda_wet_area > 0:
            wet = wet_fraction_crps(predictions[-1], target, mask, encoded(config.wet_area_thresholds_mmh),
                                    config.csi_temperature_db / norm.scale_db, config.wet_area_window, samples)
            ensemble_total = ensemble_total + config.lambda_wet_area * wet
            ensemble_parts["g_wet_area"] = wet.item()
        if config.lambda_sample_mean > 0:
            mean_error = sample_mean_error(predictions[-1], target, mask, samples, config.sample_mean_leads)
            ensemble_total = ensemble_total + config.lambda_sample_mean * mean_error
            ensemble_parts["g_sample_mean"] = mean_error.item()
        target, mask = target.repeat(samples, 1, 1, 1, 1), mask.repeat(samples, 1, 1, 1, 1)
    targets = scale_targets(target, mask, len(predictions))
    lp = sum(lp_loss(p, t, m, config.p, rain_weights(t, config, norm))
             for p, (t, m) in zip(predictions, targets, strict=True))
    leads = slice(0, config.sharpness_leads or None)
    gdl = sum(gdl_loss(p[:, leads], t[:, leads], m[:, leads], config.alpha)
              for p, (t, m) in zip(predictions, targets, strict=True))
    total = config.lambda_lp * lp + config.lambda_gdl * gdl + ensemble_total
    parts = {"g_lp": lp.item(), "g_gdl": gdl.item(), **ensemble_parts}
    if config.lambda_csi > 0:
        finest, (t_fine, m_fine) = predictions[-1], targets[-1]
        csi = soft_csi_loss(finest, t_fine, m_fine, encoded(config.csi_thresholds_mmh),
                            config.csi_temperature_db / norm.scale_db)
        total = total + config.lambda_csi * csi
        parts["g_csi"] = csi.item()
    if config.adversarial and fake_logits is not None:
        adv = sum(F.binary_cross_entropy_with_logits(f, torch.ones_like(f)) for f in fake_logits)
        total = total + config.lambda_adv * adv
        parts["g_adv"] = adv.item()
    parts["g_total"] = total.item()
    return total, parts


def discriminator_loss(
    real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """D's loss: classify real futures as 1 and generated ones as 0, at every scale."""
    loss = sum(
        F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
        + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
        for r, f in zip(real_logits, fake_logits, strict=True)
    )
    with torch.no_grad():
        accuracy = sum(((r > 0).float().mean() + (f < 0).float().mean()) / 2
                       for r, f in zip(real_logits, fake_logits, strict=True)) / len(real_logits)
    return loss, {"d_loss": loss.item(), "d_acc": float(accuracy)}
