"""The GAN on a CUDA device: the same forecasts as on the CPU, in fp32 and half precision.

Every test here is marked ``cuda`` and skips where torch sees no CUDA device (CI, laptops).
``scripts/gpu-check.sh`` runs this file on a lent GPU and records each outcome (docs/gpu-check.md).

Tolerances (mm/h; "+ x%" is of the CPU's fp32 rate at that pixel):

- fp32 on CUDA against fp32 on the CPU, TF32 off: every pixel within 0.05 mm/h + 0.5%, and
  CSI ≥ 0.99 at 1 and 4 mm/h. Motion is estimated on the CPU in both, so what differs is the
  order of floating-point sums in the generator and the advection.
- half precision (the forecaster's own fp16, and bf16 by autocast) against fp32 on CUDA: mean
  |difference| ≤ 0.05 mm/h, at most 0.1% of pixels beyond the service's own bound (0.1 mm/h +
  1%, NOWCAST_HALF_TOLERANCE_MMH), CSI ≥ 0.97 at 1 and 4 mm/h.
- ensemble members: noise is drawn by a generator on the model's device, so CUDA and CPU
  members are different draws; they must agree on where it rains (CSI of the members' mean
  at 1 mm/h ≥ 0.6), and on CUDA the same seed must give the same members, alone or batched
  (within 0.01 mm/h + 0.1%).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest
import torch

from nowcast import artifacts
from nowcast.forecasters import get_forecaster
from nowcast.synthetic import SyntheticRain, synthetic_sequence

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason=f"needs a CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) "
                              "sees none"),
]

MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
SHIPPED = artifacts.list_models(MODELS)
GRID = 128
STEPS = 12
FP32_ABS_MMH, FP32_REL = 0.05, 0.005
HALF_ABS_MMH, HALF_REL = 0.1, 0.01
HALF_MAX_MEAN_ABS_MMH = 0.05
HALF_MAX_FRACTION_BEYOND = 1e-3


def csi(reference: np.ndarray, other: np.ndarray, threshold: float) -> float:
    ref, oth = np.nan_to_num(reference) >= threshold, np.nan_to_num(other) >= threshold
    total = (ref | oth).sum()
    return 1.0 if total == 0 else float((ref & oth).sum() / total)


def beyond(reference: np.ndarray, other: np.ndarray, abs_mmh: float, rel: float) -> np.ndarray:
    """Pixels where ``other`` is further from ``reference`` than the tolerance (NaN where both are NaN)."""
    assert np.array_equal(np.isfinite(reference), np.isfinite(other)), "no-data pixels differ"
    both = np.isfinite(reference)
    return np.abs(other[both] - reference[both]) > abs_mmh + rel * np.abs(reference[both])


def past_frames(grid: int = GRID, seed: int = 0) -> np.ndarray:
    """(1, 4, grid, grid) synthetic rain with a no-data border, mm/h."""
    return synthetic_sequence(SyntheticRain(ny=grid, nx=grid, frames=4, no_data_border=3), seed=seed).values[None]


@contextlib.contextmanager
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class _BF16Generator:
    """The generator under bf16 autocast: the forecaster's own half precision is fp16 only."""

    def __init__(self, generator):
        self.generator = generator

    def __call__(self, *args, **kwargs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return self.generator(*args, **kwargs)


def test_the_forecaster_picks_cuda_by_itself_and_keeps_its_weights_there():
    forecaster = get_forecaster("default-gan", models_dir=MODELS)  # device=None: CUDA where present
    assert forecaster.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in forecaster.generator.parameters())
    assert forecaster.describe()["device"].startswith("cuda")


@pytest.mark.parametrize("name", SHIPPED)
def test_fp32_forecast_on_cuda_matches_the_cpu(name):
    cpu = get_forecaster(name, models_dir=MODELS, device="cpu")
    if cpu.supports_members:
        pytest.skip(f"{name} draws noise on its device: compared by test_ensemble_members_on_cuda")
    past = past_frames()
    expected = cpu.predict(past, STEPS)
    with no_tf32():
        got = get_forecaster(name, models_dir=MODELS, device="cuda").predict(past, STEPS)
    assert got.shape == expected.shape == (1, STEPS, GRID, GRID)
    far = beyond(expected, got, FP32_ABS_MMH, FP32_REL)
    worst = float(np.nanmax(np.abs(got - expected)))
    assert not far.any(), f"{far.sum()} pixels beyond {FP32_ABS_MMH} mm/h + {FP32_REL:.1%}; worst {worst:.4f} mm/h"
    for threshold in (1.0, 4.0):
        assert csi(expected, got, threshold) >= 0.99, threshold


@pytest.mark.parametrize("precision", ["fp16-forecaster", "bf16-autocast"])
def test_half_precision_stays_close_to_fp32_on_cuda(precision):
    forecaster = get_forecaster("default-gan", models_dir=MODELS, device="cuda")
    past = past_frames(seed=3)
    full = forecaster.predict(past, STEPS)
    if precision == "fp16-forecaster":
        assert forecaster.supports_half
        forecaster.half = True  # what the service sets with NOWCAST_HALF_PRECISION=on/auto
        half = forecaster.predict(past, STEPS)
    else:
        original = forecaster.generator
        forecaster.generator = _BF16Generator(original)
        try:
            half = forecaster.predict(past, STEPS)
        finally:
            forecaster.generator = original
    finite = half[np.isfinite(half)]
    assert finite.min() >= 0.0
    far = beyond(full, half, HALF_ABS_MMH, HALF_REL)
    mean_abs = float(np.nanmean(np.abs(half - full)))
    assert mean_abs <= HALF_MAX_MEAN_ABS_MMH, mean_abs
    assert far.mean() <= HALF_MAX_FRACTION_BEYOND, (
        f"{far.mean():.2%} of pixels beyond {HALF_ABS_MMH} mm/h + {HALF_REL:.0%} "
        f"(worst {float(np.nanmax(np.abs(half - full))):.3f} mm/h)")
    for threshold in (1.0, 4.0):
        assert csi(full, half, threshold) >= 0.97, threshold


def test_ensemble_members_on_cuda():
    name = "ensemble-gan" if "ensemble-gan" in SHIPPED else next(
        (n for n in SHIPPED if get_forecaster(n, models_dir=MODELS, device="cpu").supports_members), None)
    if name is None:
        pytest.skip("no shipped model draws ensemble members")
    cuda = get_forecaster(name, models_dir=MODELS, device="cuda")
    past = past_frames(seed=5)
    members = cuda.predict(past, STEPS, members=4, seed=3)
    assert members.shape == (1, 4, STEPS, GRID, GRID)
    has_data = np.isfinite(past[0, -1])
    assert np.isfinite(members[..., has_data]).all() and members[..., has_data].min() >= 0.0
    assert np.nanmax(np.abs(members[0, 0] - members[0, 1])) > 0.01, "members do not differ"
    again = cuda.predict(past, STEPS, members=4, seed=3)
    assert not beyond(members, again, 0.01, 0.001).any(), "the same seed gave other members on CUDA"
    # batched with another sequence, as the service does: the first sequence's members stay
    batched = cuda.predict(np.concatenate([past, past_frames(seed=6)]), STEPS, members=4, seed=3)
    assert not beyond(members[0], batched[0], 0.01, 0.001).any(), "members depend on their batch on CUDA"
    on_cpu = get_forecaster(name, models_dir=MODELS, device="cpu").predict(past, STEPS, members=4, seed=3)
    assert csi(on_cpu[0].mean(axis=0), members[0].mean(axis=0), 1.0) >= 0.6


def test_an_ensemble_trains_on_cuda_with_its_batches_drawn_by_workers(tmp_path):
    """What scripts/gpu-train.sh runs, at a tiny size: bf16 autocast, samples on shifted motion, worker
    processes forked after CUDA is up (they draw on the CPU), the steps fitted to a time."""
    import json

    from nowcast.gan.config import DataConfig, ExperimentConfig, LossConfig, ModelConfig, TrainConfig
    from nowcast.gan.train import CHECKPOINT, CONFIG, train

    events = {f"syn{i}": synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=14, no_data_border=2), seed=i)
              for i in range(2)}
    cfg = ExperimentConfig(
        name="tiny-cuda",
        model=ModelConfig(n_input=4, n_output=5, generator_channels=(8, 8, 8), generator_layers=2,
                          discriminator_channels=(4, 4, 4), noise_channels=2, member_motion_kmh=6.0),
        loss=LossConfig(lambda_lp=0.0, lambda_csi=0.0, samples=3, lambda_crps=1.0),
        data=DataConfig(train_events=("syn0", "syn1"), val_events=(), patch_size=32),
        train=TrainConfig(steps=1000, batch_size=2, log_every=1, checkpoint_every=1, device="cuda", amp=True,
                          member_motion=True, workers=2),
    )
    last = train(cfg, tmp_path, loader=events.__getitem__, progress=False, fit_minutes=0.05)
    steps = json.loads((tmp_path / CONFIG).read_text())["train"]["steps"]
    assert 1 <= steps < 1000 and last["step"] == steps
    assert np.isfinite(last["g_crps"]) and np.isfinite(last["d_loss"])
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True, map_location="cpu")
    assert all(torch.isfinite(w).all() for w in state["generator"].values())
