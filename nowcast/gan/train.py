"""The training job: a plain, ordered loop (after nanoGPT).

One step: ``discriminator_steps`` updates of the per-scale discriminators on generated
futures (detached), then one update of the generator on λ_adv·L_adv + λ_lp·L_p +
λ_gdl·L_gdl (none in the discriminators' warm-up, ``discriminator_warmup_steps``).
Everything a resumed run needs (weights, optimiser states, the step) is in one checkpoint
written atomically; batches depend only on the seed and the step, so a
killed run resumed from its last checkpoint continues exactly where it was.

Run under ``torchrun --nproc_per_node N`` it trains data-parallel with PyTorch's
DistributedDataParallel (gloo on CPU, nccl on GPU): each rank draws its own batches and
gradients are averaged; rank 0 alone logs, validates and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import xarray as xr
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nowcast import config as config_io
from nowcast.files import replaced_atomically, write_text_atomically
from nowcast.gan.config import ExperimentConfig, upgrade_experiment_config
from nowcast.gan.data import Batch, SampleSource, load_events, validation_batches
from nowcast.gan.losses import discriminator_loss, generator_loss
from nowcast.gan.model import Discriminator, Generator
from nowcast.verification import Contingency

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
VALIDATION_THRESHOLDS_MMH = (1.0, 4.0)


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun set up, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    loader: Callable[[str], xr.DataArray] | None = None,
    stop_after: int | None = None,
    fit_minutes: float | None = None,
) -> dict[str, Any]:
    """Train (or resume) into ``out_dir``; returns the last logged metrics.

    ``loader`` replaces the catalogue (tests feed synthetic events); ``stop_after``
    ends the run after that many steps of this call, as a kill would (tests of resume).
    ``fit_minutes``: a new run's ``train.steps`` set so that its loop takes about that long
    here (:func:`fit_steps`); the run folder's config records the steps chosen.
    """
    out = Path(out_dir)
    if fit_minutes is not None and resume:
        raise config_io.ConfigError("fitting the steps to minutes starts a run; a resumed run keeps its config's steps")
    # the processes, the device and the run folder
    ctx, device = _start(cfg, out, resume)
    # the data: training batches drawn from the seed and the step; held-out patches to validate on
    source, val_batches = _load_data(cfg, ctx, loader)
    if fit_minutes is not None:
        cfg = fit_steps(cfg, source, device, ctx, fit_minutes)
        write_text_atomically(out / CONFIG, json.dumps(config_io.to_dict(cfg), indent=2) + "\n")
    tc = cfg.train
    # the models and their optimisers, restored from the checkpoint when resuming
    run = _Models.build(cfg, device, ctx, out / CHECKPOINT, resume)

    # the loop: k discriminator steps, one generator step; logs, validation and checkpoints on rank 0
    last: dict[str, Any] = {}
    bar = _progress(progress and ctx.is_main, run.start_step, tc.steps)
    t0, samples = time.perf_counter(), 0
    end_step = tc.steps if stop_after is None else min(tc.steps, run.start_step + stop_after)
    drawn = step_batches(cfg, source, ctx.rank, run.start_step, end_step)
    for step, batches in zip(range(run.start_step, end_step), drawn, strict=True):
        parts = run.step(step, batches, ctx)
        samples += tc.batch_size * ctx.world_size * (tc.trains_generator(step)
                                                     + (tc.discriminator_steps if cfg.loss.adversarial else 0))
        done = step + 1
        if bar is not None:
            bar.advance(parts)
        if ctx.is_main and (done % tc.log_every == 0 or done == tc.steps):
            elapsed = time.perf_counter() - t0
            last = {"step": done, **parts, "world_size": ctx.world_size, "samples_per_s": samples / max(elapsed, 1e-9),
                    "time": time.time()}
            if done % tc.val_every == 0 or done == tc.steps:
                last.update(validate(_served(run.generator, run.ema), val_batches, cfg, device))
            _append_metrics(out / METRICS, last)
        if ctx.is_main and (done % tc.checkpoint_every == 0 or done == tc.steps):
            run.save(out / CHECKPOINT, done)
    if bar is not None:
        bar.close()
    if ctx.enabled:
        dist.barrier()
    return last


def _load_data(cfg: ExperimentConfig, ctx: DistributedContext, loader: Callable[[str], xr.DataArray] | None,
               ) -> tuple[SampleSource, list[Batch]]:
    """The training events as a source of batches, and (on rank 0) the held-out patches to validate on."""
    logger.info("loading training events %s", ", ".join(cfg.data.train_events))
    source = SampleSource(load_events(cfg.data.train_events, cfg.model, cfg.data, loader), cfg.data, cfg.model,
                          cfg.normalisation, cfg.train.seed)
    val_batches: list[Batch] = []
    if ctx.is_main and cfg.data.val_events:
        val_events = load_events(cfg.data.val_events, cfg.model, cfg.data, loader)
        val_batches = validation_batches(val_events, cfg.data, cfg.model, cfg.normalisation, cfg.train.seed)
    return source, val_batches


#: A step's batches: the discriminators' (one per ``discriminator_steps``) and the generator's (None in the
#: discriminators' warm-up).
StepBatches = tuple[list[Batch], Batch | None]


def draw_step(cfg: ExperimentConfig, source: SampleSource, step: int, rank: int = 0) -> StepBatches:
    """Everything ``step`` trains on, drawn from the seed, the step and the rank alone."""
    tc = cfg.train
    for_d = [source.batch(tc.batch_size, step, rank, substep=sub + 1)
             for sub in range(tc.discriminator_steps if cfg.loss.adversarial else 0)]
    for_g = None
    if tc.trains_generator(step):
        draws = cfg.loss.samples if tc.member_motion else 1
        for_g = source.batch(tc.batch_size, step, rank, substep=0, draws=draws)
    return for_d, for_g


class _DrawnSteps(torch.utils.data.Dataset):
    """Steps ``start``..``end`` - 1 as a dataset, so that worker processes can draw them ahead."""

    def __init__(self, cfg: ExperimentConfig, source: SampleSource, rank: int, start: int, end: int) -> None:
        self.cfg, self.source, self.rank, self.start, self.end = cfg, source, rank, start, end

    def __len__(self) -> int:
        return max(self.end - self.start, 0)

    def __getitem__(self, index: int) -> StepBatches:
        return draw_step(self.cfg, self.source, self.start + index, self.rank)


def _as_drawn(drawn: StepBatches) -> StepBatches:
    return drawn


def step_batches(cfg: ExperimentConfig, source: SampleSource, rank: int, start: int, end: int,
                 ) -> Iterator[StepBatches]:
    """The batches of steps ``start``..``end`` - 1, in order: drawn here, or ``train.workers`` processes
    ahead of the loop (torch's DataLoader); either way the same, since a step's batches depend on
    the seed and the step alone."""
    steps = _DrawnSteps(cfg, source, rank, start, end)
    if cfg.train.workers == 0:
        return (steps[i] for i in range(len(steps)))
    loader = torch.utils.data.DataLoader(steps, batch_size=None, shuffle=False, num_workers=cfg.train.workers,
                                         collate_fn=_as_drawn, prefetch_factor=2)
    return iter(loader)


def fit_steps(cfg: ExperimentConfig, source: SampleSource, device: torch.device, ctx: DistributedContext,
              minutes: float, *, warmup: int = 5, timed: int = 20) -> ExperimentConfig:
    """``cfg`` with ``train.steps`` set so that the training loop takes about ``minutes`` here.

    A throwaway copy of the models runs ``warmup`` steps, then ``timed`` timed ones, and is
    dropped, so the run itself starts from step 0 under the schedule of the steps chosen
    and its saved config reproduces it. With ``train.workers``, the warm-up also drains the
    batches the workers drew ahead (two each), so that the timed steps wait on the workers
    as the run's will. A twentieth of the time is left for checkpoints and validation. The
    steps chosen are at most the config's, and more than the discriminators' warm-up.
    """
    if ctx.enabled:
        raise config_io.ConfigError("fitting the steps to minutes runs on one process, not under torchrun")
    if minutes <= 0:
        raise config_io.ConfigError(f"the minutes to fit the steps to must be positive; got {minutes:g}")
    tc = cfg.train
    probe = _Models.build(cfg, device, ctx, Path(os.devnull), resume=False)
    first = tc.discriminator_warmup_steps  # time steps that train G too
    warmup += 2 * tc.workers
    drawn = step_batches(cfg, source, ctx.rank, first, first + warmup + timed)
    for i, (step, batches) in enumerate(zip(range(first, first + warmup + timed), drawn, strict=True)):
        if i == warmup:
            _synchronise(device)
            t0 = time.perf_counter()
        probe.step(step, batches, ctx)
    _synchronise(device)
    per_step = (time.perf_counter() - t0) / timed
    fitted = int(0.95 * minutes * 60.0 / per_step)
    steps = min(tc.steps, max(fitted, tc.discriminator_warmup_steps + 1))
    logger.info("%.3f s per step here: %d steps fit %g minutes (the config allows %d); training %d",
                per_step, fitted, minutes, tc.steps, steps)
    return dataclasses.replace(cfg, train=dataclasses.replace(tc, steps=steps))


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _start(cfg: ExperimentConfig, out: Path, resume: bool) -> tuple[DistributedContext, torch.device]:
    tc = cfg.train
    device_type = "cuda" if tc.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    ctx = init_distributed(device_type)
    device = pick_device(tc.device, ctx.local_rank)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _check_same_config(out, cfg, resume)
        write_text_atomically(out / CONFIG, json.dumps(config_io.to_dict(cfg), indent=2) + "\n")
    return ctx, device


@dataclass
class _Models:
    """G and D, their optimisers, G's weight average, and their data-parallel wrappers."""

    cfg: ExperimentConfig
    device: torch.device
    generator: Generator
    discriminator: Discriminator
    g_model: nn.Module
    d_model: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    ema: AveragedModel | None
    start_step: int = 0

    @classmethod
    def build(cls, cfg: ExperimentConfig, device: torch.device, ctx: DistributedContext, checkpoint: Path,
              resume: bool) -> _Models:
        tc = cfg.train
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        generator = Generator(cfg.model, scale_db=cfg.normalisation.scale_db).to(device)
        generator.limits_in_training = tc.correction_limits_in_training
        discriminator = Discriminator(cfg.model, leads=cfg.loss.sharpness_leads).to(device)
        opt_g = torch.optim.Adam(generator.parameters(), lr=tc.lr_generator, betas=(0.5, 0.999),
                                 weight_decay=tc.weight_decay)
        opt_d = torch.optim.Adam(discriminator.parameters(), lr=tc.lr_discriminator, betas=(0.5, 0.999))
        if tc.init_from and not (resume and checkpoint.is_file()):
            initialise_from(generator, tc.init_from, extra_std=tc.init_noise_std)
        models = cls(cfg, device, generator, discriminator, generator, discriminator, opt_g, opt_d,
                     _weight_average(generator, tc.ema_decay))
        if resume and checkpoint.is_file():
            models.restore(checkpoint, ctx)
        elif tc.continue_from:
            models.continue_game(Path(tc.continue_from))
        elif resume:
            logger.warning("no checkpoint in %s: starting from scratch", checkpoint.parent)
        if ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            models.g_model = DistributedDataParallel(generator, device_ids=ids)
            models.d_model = DistributedDataParallel(discriminator, device_ids=ids)
        return models

    def restore(self, checkpoint: Path, ctx: DistributedContext) -> None:
        state = torch.load(checkpoint, map_location=self.device, weights_only=True)
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.ema is not None:
            self.ema.load_state_dict(state["generator_ema"])
        self.start_step = int(state["step"])
        logger.info("resumed from %s at step %d", checkpoint, self.start_step)
        if ctx.is_main:
            _truncate_metrics(checkpoint.parent / METRICS, self.start_step)

    def continue_game(self, run: Path) -> None:
        """Start from another run's last checkpoint: G, D and both optimisers, at this run's step 0."""
        checkpoint = run / CHECKPOINT
        if not checkpoint.is_file():
            raise config_io.ConfigError(f"continue_from {run}: no {CHECKPOINT} there (a folder nowcast train wrote)")
        state = torch.load(checkpoint, map_location=self.device, weights_only=True)
        if not isinstance(state, dict):
            raise config_io.ConfigError(f"continue_from {run}: {CHECKPOINT} is not a training checkpoint")
        parts = {"generator": self.generator, "discriminator": self.discriminator, "opt_g": self.opt_g,
                 "opt_d": self.opt_d}
        for key, part in parts.items():
            if key not in state:
                raise config_io.ConfigError(f"continue_from {run}: the checkpoint has no {key}")
            try:
                part.load_state_dict(state[key])
            except (RuntimeError, ValueError, KeyError) as exc:
                raise config_io.ConfigError(f"continue_from {run}: its {key} does not fit this run's "
                                            f"model and loss ({exc})") from exc
        if self.ema is not None:
            self.ema.module.load_state_dict(self.generator.state_dict())
        logger.info("continuing the GAN game of %s (its step %d)", run, int(state.get("step", 0)))

    def save(self, path: Path, step: int) -> None:
        _save_checkpoint(path, step, self.generator, self.discriminator, self.opt_g, self.opt_d, self.ema)

    def step(self, step: int, batches: StepBatches, ctx: DistributedContext) -> dict[str, float]:
        """One training step on its batches (:func:`draw_step`): the learning rates for it, D's updates,
        then G's; the loss parts."""
        tc = self.cfg.train
        self.generator.train()
        self.discriminator.train()
        torch.manual_seed(tc.seed * 1_000_003 + step * ctx.world_size + ctx.rank)  # noise, dropout-free
        # set from the step, not kept as scheduler state: a resumed run gets the same rates
        for optimiser, base_lr in ((self.opt_g, tc.lr_generator), (self.opt_d, tc.lr_discriminator)):
            for group in optimiser.param_groups:
                group["lr"] = base_lr * tc.lr_factor(step)
        for_d, for_g = batches
        parts: dict[str, float] = {}
        for b in for_d:
            parts.update(self._discriminator_step(b))
        if for_g is not None:
            parts.update(self._generator_step(for_g))
        return parts

    def _autocast(self) -> Any:
        if self.cfg.train.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _discriminator_step(self, b: Batch) -> dict[str, float]:
        b = b.to(self.device)
        with torch.no_grad(), self._autocast():
            fake = [p.detach() for p in self.g_model(b.past, b.valid, **b.conditioning())]
        real = _scale_targets(b, self.cfg.model.n_scales)
        with self._autocast():
            # one call on real and fake together: one DDP forward per backward
            both = [torch.cat([r, f]) for r, f in zip(real, fake, strict=True)]
            logits = self.d_model(torch.cat([b.past, b.past]), torch.cat([b.valid, b.valid]), both)
            n = len(b)
            d_loss, parts = discriminator_loss([lg[:n] for lg in logits], [lg[n:] for lg in logits])
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.cfg.train.grad_clip)
        self.opt_d.step()
        return parts

    def _generator_step(self, b: Batch) -> dict[str, float]:
        """G on ``samples`` draws of every input (its noise differs), judged by D one by one.

        ``b``: the inputs once, or already drawn ``samples`` times over on shifted motion
        (``train.member_motion``).
        """
        cfg = self.cfg
        drawn = b.to(self.device)
        if not cfg.train.member_motion:
            drawn = drawn.repeat(cfg.loss.samples)
        n = len(drawn) // cfg.loss.samples
        with self._autocast():
            predictions = self.g_model(drawn.past, drawn.valid, **drawn.conditioning())
            fake_logits = None
            if cfg.loss.adversarial:
                self.discriminator.requires_grad_(False)
                fake_logits = self.discriminator(drawn.past, drawn.valid, predictions)
            g_loss, parts = generator_loss(predictions, drawn.future[:n], drawn.future_mask[:n], cfg.loss, fake_logits,
                                           cfg.normalisation, samples=cfg.loss.samples)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.discriminator.requires_grad_(True)
        nn.utils.clip_grad_norm_(self.generator.parameters(), cfg.train.grad_clip)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.update_parameters(self.generator)
        return parts


def initialise_from(generator: Generator, source: str, *, extra_std: float = 0.01) -> None:
    """Start ``generator`` from a trained model's weights (``NAME[@VERSION]`` or an artifact folder).

    Every parameter must have the trained one's shape, except convolutions that take more
    input channels (appended last: noise maps), whose extra weights are drawn from
    N(0, ``extra_std``²) so that the new inputs matter from the first step.
    """
    from nowcast import artifacts
    from nowcast.forecasters import resolve

    folder = Path(source)
    if folder.is_dir():
        artifacts.verify(folder)
    else:
        name = resolve(source)
        if not name.trained:
            raise config_io.ConfigError(f"init_from: {source!r} is a built-in method, not a trained model")
        folder = artifacts.verified_folder(name.name, name.version)
    trained = torch.load(folder / artifacts.WEIGHTS_FILE, map_location="cpu", weights_only=True)
    state = generator.state_dict()
    for key, value in state.items():
        if key not in trained:
            raise config_io.ConfigError(f"init_from {source}: the trained model has no {key}")
        old = trained[key]
        if old.shape == value.shape:
            state[key] = old.to(value.dtype)
        elif value.dim() == 4 and old.shape[0] == value.shape[0] and old.shape[2:] == value.shape[2:] \
                and old.shape[1] < value.shape[1]:
            extra = torch.randn(value.shape[0], value.shape[1] - old.shape[1], *value.shape[2:]) * extra_std
            state[key] = torch.cat([old.to(value.dtype), extra.to(value.dtype)], dim=1)
        else:
            raise config_io.ConfigError(f"init_from {source}: {key} has shape {tuple(old.shape)} there and "
                                        f"{tuple(value.shape)} here")
    generator.load_state_dict(state)
    logger.info("generator initialised from %s", folder)


def _scale_targets(b: Batch, n_scales: int) -> list[torch.Tensor]:
    from nowcast.gan.losses import scale_targets

    return [t * m for t, m in scale_targets(b.future, b.future_mask, n_scales)]


@torch.no_grad()
def validate(generator: Generator, batches: list[Batch], cfg: ExperimentConfig,
             device: torch.device) -> dict[str, float]:
    """CSI at 1 and 4 mm/h (counted as the evaluation counts, :class:`nowcast.verification.Contingency`)
    of G, persistence and advection on the held-out patches, all leads; and G's L1 error."""
    if not batches:
        return {}
    generator.eval()
    norm = cfg.normalisation
    tables = {(name, threshold): Contingency(threshold)
              for name in ("gan", "persistence", "advection") for threshold in VALIDATION_THRESHOLDS_MMH}
    l1 = []
    for b in batches:
        b = b.to(device)
        prediction = generator(b.past, b.valid, **b.conditioning())[-1]
        l1.append(float(((prediction - b.future).abs() * b.future_mask).sum() / b.future_mask.sum().clamp(min=1)))
        mask = b.future_mask.bool()
        observed = norm.decode(b.future)[mask].cpu().numpy()
        fields = {"gan": prediction, "persistence": b.past[:, -1:].expand_as(b.future), "advection": b.advected}
        for (name, _), table in tables.items():
            table.add(norm.decode(fields[name])[mask].cpu().numpy(), observed)
    scores = {f"val_csi_{name}@{threshold:g}": table.csi for (name, threshold), table in tables.items()}
    scores["val_l1"] = float(np.mean(l1))
    return scores


class _ProgressBar:
    """The training job's progress bar (rich, on stderr), with the latest losses beside it."""

    SHOWN = ("g_lp", "g_gdl", "g_adv", "g_csi", "d_loss")

    def __init__(self, start: int, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[losses]}"), console=Console(stderr=True))
        self.task = self.progress.add_task("train", total=total, completed=start, losses="")
        self.progress.start()

    def advance(self, parts: dict[str, float]) -> None:
        losses = " ".join(f"{k}={parts[k]:.3f}" for k in self.SHOWN if k in parts)
        self.progress.update(self.task, advance=1, losses=losses)

    def close(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, start: int, total: int) -> _ProgressBar | None:
    return _ProgressBar(start, total) if enabled else None


def _weight_average(generator: Generator, decay: float) -> AveragedModel | None:
    """The moving average of G's weights (buffers too), or None when ``decay`` is 0."""
    if decay <= 0:
        return None
    return AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _served(generator: Generator, ema: AveragedModel | None) -> Generator:
    """The weights that validation and export use: the average when there is one."""
    return generator if ema is None else ema.module


def _save_checkpoint(path: Path, step: int, generator: Generator, discriminator: Discriminator,
                     opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                     ema: AveragedModel | None = None) -> None:
    state = {"step": step, "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
             "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()}
    if ema is not None:
        # the whole AveragedModel (with its count of updates), so a resumed run averages on exactly
        state["generator_ema"] = ema.state_dict()
    with replaced_atomically(path) as tmp:
        torch.save(state, tmp)


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    write_text_atomically(path, "".join(line + "\n" for line in kept))


def _check_same_config(out: Path, cfg: ExperimentConfig, resume: bool) -> None:
    saved = out / CONFIG
    if not saved.is_file():
        return
    if resume and json.loads(saved.read_text()) != config_io.to_dict(cfg):
        raise config_io.ConfigError(f"{saved}: the run was started with another config; resume needs the same one")
    if not resume and (out / CHECKPOINT).is_file():
        raise FileExistsError(f"{out} holds a run already: pass --resume to continue it, or pick another --out")


def load_generator(run_dir: str | Path, device: str = "cpu") -> tuple[Generator, ExperimentConfig, int]:
    """The generator of a run's last checkpoint, its config and its step.

    With ``ema_decay`` on, that is the moving average of the weights, not the last step's.
    """
    run = Path(run_dir)
    saved = upgrade_experiment_config(json.loads((run / CONFIG).read_text()), where=str(run / CONFIG))
    cfg = config_io.from_dict(ExperimentConfig, saved, where=str(run / CONFIG))
    state = torch.load(run / CHECKPOINT, map_location=device, weights_only=True)
    generator = Generator(cfg.model, scale_db=cfg.normalisation.scale_db)
    ema = _weight_average(generator, cfg.train.ema_decay)
    if ema is None:
        generator.load_state_dict(state["generator"])
    else:
        ema.load_state_dict(state["generator_ema"])
        generator = ema.module
    return generator.eval(), cfg, int(state["step"])
