"""The retraining job: one command from an event catalogue to a gated, versioned, possibly live model.

``nowcast retrain --config FILE --out WORK`` reads as its phases:

1. **split**: the catalogue's events into training, validation and test sets, checked for
   overlap *by event* (no frame of one radar in two sets) or *by day* (no day of one radar
   in two sets), each event loaded (the catalogue's cache is reused) and its data checksummed;
   written down in ``WORK/split.json``.
2. **train**: the candidate, with :func:`nowcast.gan.train.train` (resumable, exact on
   resume; data-parallel under torchrun), by default fine-tuned from the live model.
3. **evaluate**: the candidate, the live model and the baselines on the same held-out start
   times (:func:`nowcast.evaluate.evaluate`, on Dask's distributed scheduler); with
   ``[spread_gain] fit = true`` an ensemble candidate first gets its own spread gain, fitted on
   the training events (``WORK/spread_gain.json``), and is scored and exported with it; with
   ``[rate_map] fit = true`` then its rate map, fitted the same way (``WORK/rate_map.json``); with
   ``[neighbourhood] fit = true`` it also gets the neighbourhood its probability products are
   processed with, fitted on the training events (``WORK/neighbourhood.json``) and exported
   with it (the evaluation scores every ensemble's raw probabilities alike).
4. **gate**: the criteria of the config, each with the paired bootstrap of
   :mod:`nowcast.bootstrap`: passed or failed, by how much, with the interval.
5. **export**: the candidate as the next version of its name, whatever the decision, its card
   holding the gate report and what reproduces it (catalogue, split, config, seed, version of
   this package, data checksums).
6. **promote**: only a candidate that passed every criterion, and only while the live version
   is still the one it was compared with (:func:`nowcast.artifacts.promote`).

Training runs data-parallel when the job is launched by torchrun, on one machine or several::

    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HEAD:29400 \\
        --rdzv_id retrain-7 -m nowcast.cli retrain --config FILE --out /shared/runs/retrain-7 \\
        --models-dir /shared/models

Every rank trains; rank 0 alone splits, evaluates, exports and promotes. ``WORK`` and the
registry must be one folder that every node sees (the other ranks read the plan, the
checkpoint they resume from and the live weights they start from there).

Every phase leaves its result in ``WORK`` and a resumed job (``resume=True``) takes up at the
first phase not done; the job's config and the live version it started from are pinned in
``WORK/retrain.json``, so a resumed job trains from the same weights and compares with the same
model.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from nowcast import artifacts
from nowcast import config as config_io
from nowcast.bootstrap import crps_difference_interval, csi_difference_interval
from nowcast.config import ConfigError
from nowcast.errors import InputError
from nowcast.files import write_text_atomically
from nowcast.gan.config import ExperimentConfig
from nowcast.neighbourhood_fit import DEFAULT_RATES, candidate_rates
from nowcast.paths import models_dir as default_models_dir
from nowcast.rate_map import DEFAULT_THRESHOLDS_MMH, checked_thresholds
from nowcast.spread_gain import DEFAULT_ENDS, DEFAULT_STARTS, candidate_gains, gain_settings
from nowcast.verification import key

logger = logging.getLogger(__name__)

Loader = Callable[[str], xr.DataArray]

STATE_FILE = "retrain.json"
SPLIT_FILE = "split.json"
RUN_DIR = "run"
STAGING_DIR = "registry"
EVALUATION_DIR = "evaluation"
GATE_FILE = "gate.json"
SPREAD_GAIN_FILE = "spread_gain.json"
RATE_MAP_FILE = "rate_map.json"
NEIGHBOURHOOD_FILE = "neighbourhood.json"
REPORT_FILE = "report.md"
RESULT_FILE = "result.json"
#: the names the candidate and the live model are scored under
CANDIDATE = "candidate"
LIVE = "live"
SPLIT_MODES = ("event", "day")
PROMOTED, REFUSED = "promote", "refuse"


# --- the config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitConfig:
    """Which events train, validate (during training) and test (the gate); ``by``: the unit kept apart."""

    by: str = "event"
    train: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    test: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.by not in SPLIT_MODES:
            raise ValueError(f"split.by must be one of {', '.join(SPLIT_MODES)}; got {self.by!r}")
        if not self.train or not self.test:
            raise ValueError("split.train and split.test need at least one event each")
        seen: dict[str, str] = {}
        for role in ("train", "validation", "test"):
            for name in getattr(self, role):
                if name in seen:
                    raise ValueError(f"split: event {name!r} is in both {seen[name]} and {role}")
                seen[name] = role

    @property
    def sets(self) -> dict[str, tuple[str, ...]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


@dataclass(frozen=True)
class EvaluationConfig:
    """The held-out evaluation: the baselines scored beside the candidate and the live model, and how.

    ``scheduler``: ``"local"`` (a Dask cluster of ``workers`` processes here), ``"none"`` (in
    this process) or a Dask scheduler's address. ``members``: score every method that draws
    members as an ensemble of that many (the CRPS criterion then applies).
    """

    baselines: tuple[str, ...] = ("persistence", "extrapolation")
    n_input: int = 4
    steps: int = 12
    stride: int = 6
    members: int | None = None
    scheduler: str = "local"
    workers: int | None = None

    def __post_init__(self) -> None:
        if min(self.n_input, self.steps, self.stride) < 1:
            raise ValueError("evaluation n_input, steps and stride must be at least 1")
        if {CANDIDATE, LIVE} & set(self.baselines):
            raise ValueError(f"evaluation.baselines: {CANDIDATE!r} and {LIVE!r} are the models compared")


@dataclass(frozen=True)
class GateConfig:
    """What a candidate must show to be promoted.

    CSI at each of ``csi_thresholds_mmh``: at no lead time may the ``level`` interval of the
    candidate's CSI minus the live model's lie wholly below ``-csi_tolerance``. CRPS (with
    ensembles): at no lead may the interval of its CRPS minus the live one's lie wholly above
    ``crps_tolerance_mmh``. No infinite value, and no more NaN than the live model (its no-data
    pixels), unless ``allow_nonfinite``. The mean forecast time at most ``max_time_factor`` times
    the live model's.
    """

    csi_thresholds_mmh: tuple[float, ...] = (1.0, 4.0, 8.0)
    csi_tolerance: float = 0.0
    crps_tolerance_mmh: float = 0.0
    level: float = 0.9
    n_resamples: int = 2000
    max_time_factor: float = 2.0
    allow_nonfinite: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"gate.level must be in (0, 1); got {self.level}")
        if self.n_resamples < 100:
            raise ValueError("gate.n_resamples must be at least 100")
        if self.csi_tolerance < 0 or self.crps_tolerance_mmh < 0:
            raise ValueError("gate tolerances must not be negative")
        if self.max_time_factor <= 0:
            raise ValueError("gate.max_time_factor must be positive")


@dataclass(frozen=True)
class SpreadGainConfig:
    """Fit the candidate's spread gain to its own members on the training events before it is scored.

    The gain (``ModelConfig.member_spread_gain_start``/``_end``) corrects the spread of the members
    one generator draws; a fine-tuned generator draws others, and scored with the gain fitted to
    the one it started from it is scored with the wrong one. With ``fit``, every (start, end) of
    ``starts`` × ``ends`` is tried on ``members`` members per start time of the training events
    (:func:`nowcast.spread_gain.fit_spread_gain`) and the best goes with the candidate into the
    evaluation and the registry. Only for a model that draws members.
    """

    fit: bool = False
    starts: tuple[float, ...] = DEFAULT_STARTS
    ends: tuple[float, ...] = DEFAULT_ENDS
    members: int = 20

    def __post_init__(self) -> None:
        if self.members < 2:
            raise ValueError("spread_gain.members must be at least 2")
        try:
            candidate_gains(self.starts, self.ends)
        except ValueError as exc:
            raise ValueError(f"spread_gain.starts/ends: {exc}") from exc


@dataclass(frozen=True)
class RateMapConfig:
    """Fit the candidate's rate map to its own members on the training events, after its spread gain.

    The map (``ModelConfig.member_rate_map``) takes each lead's members from the generator's own rain
    climatology onto the observed one; the drift it corrects is the generator's, so a retrained
    generator gets its own. With ``fit``, :func:`nowcast.rate_map.fit_rate_map` counts ``members``
    members per start time of the training events against the observed rain above each of
    ``thresholds_mmh``, and the map goes with the candidate into the evaluation and the registry
    (rates above the last threshold take its ratio). Only for a model that draws members.
    """

    fit: bool = False
    thresholds_mmh: tuple[float, ...] = DEFAULT_THRESHOLDS_MMH
    members: int = 20

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError("rate_map.members must be at least 1")
        try:
            checked_thresholds(self.thresholds_mmh)
        except InputError as exc:
            raise ValueError(f"rate_map.thresholds_mmh: {exc}") from exc


@dataclass(frozen=True)
class NeighbourhoodConfig:
    """Fit the neighbourhood of the candidate's probability products on the training events.

    A model carries the neighbourhood (``ModelConfig.probability_neighbourhood_km_per_minute``)
    its exceedance probabilities are processed with where a request names none; it depends on
    how far the generator's members miss the rain, so a retrained generator gets its own. With
    ``fit``, every rate of ``rates`` (and none) is scored by the Brier score on ``members``
    members per start time of the training events (:func:`nowcast.neighbourhood_fit.fit_neighbourhood`)
    and the best is exported with the candidate. Only for a model that draws members.
    """

    fit: bool = False
    rates: tuple[float, ...] = DEFAULT_RATES
    members: int = 20

    def __post_init__(self) -> None:
        if self.members < 2:
            raise ValueError("neighbourhood.members must be at least 2")
        try:
            candidate_rates(self.rates)
        except InputError as exc:
            raise ValueError(f"neighbourhood.rates: {exc}") from exc


@dataclass(frozen=True)
class RetrainConfig:
    """A retraining job (``nowcast retrain --config FILE``); unknown keys are an error.

    ``name``: the registry name the candidate becomes a version of, and whose live version it is
    compared with. ``seed``: the one seed of the job (training, ensembles, bootstrap).
    ``init_from_live``: fine-tune from the live version (else ``experiment.train.init_from``).
    ``catalogue``/``data_root``: the event catalogue and archive (default: the packaged one and
    ``NOWCAST_DATA_ROOT``). ``experiment``: the training recipe (``nowcast train``'s config);
    its events and seed come from ``split`` and ``seed``. ``spread_gain``: an ensemble's spread
    gain fitted after training; ``rate_map``: its rate map, fitted after the gain;
    ``neighbourhood``: its probability products' neighbourhood, fitted last.
    """

    split: SplitConfig
    name: str = "default-gan"
    seed: int = 0
    init_from_live: bool = True
    promote: bool = True
    catalogue: str | None = None
    data_root: str | None = None
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    spread_gain: SpreadGainConfig = field(default_factory=SpreadGainConfig)
    rate_map: RateMapConfig = field(default_factory=RateMapConfig)
    neighbourhood: NeighbourhoodConfig = field(default_factory=NeighbourhoodConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def __post_init__(self) -> None:
        if not artifacts.NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '_', '.', '-'")
        if self.seed < 0:
            raise ValueError("seed must not be negative")
        for fitted in ("spread_gain", "rate_map", "neighbourhood"):
            if getattr(self, fitted).fit and self.experiment.model.noise_channels == 0:
                raise ValueError(f"{fitted}.fit needs a model that draws members "
                                 "(experiment.model.noise_channels > 0)")

    def training(self, init_from: str | None) -> ExperimentConfig:
        """The experiment the job trains: the split's events, the job's seed and data, ``init_from``."""
        exp = self.experiment
        data = replace(exp.data, train_events=self.split.train, val_events=self.split.validation,
                       catalogue=self.catalogue if self.catalogue is not None else exp.data.catalogue,
                       data_root=self.data_root if self.data_root is not None else exp.data.data_root)
        return replace(exp, name=self.name, data=data, train=replace(exp.train, seed=self.seed, init_from=init_from))


def load_config(path: str | Path) -> RetrainConfig:
    """A retrain config file (TOML or JSON); its ``catalogue`` relative to the file's folder."""
    path = Path(path)
    data = config_io.read_mapping(path, what="retrain config")
    if not isinstance(data, dict) or "split" not in data:
        raise ConfigError(f"{path}: a retrain config needs a [split] table (train, validation, test events)")
    if isinstance(data.get("catalogue"), str) and not Path(data["catalogue"]).is_absolute():
        data["catalogue"] = str((path.parent / data["catalogue"]).resolve())
    return config_io.from_dict(RetrainConfig, data, where=str(path))


# --- the job ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What the job pins when it starts: its id, config, the live version it compares with."""

    id: str
    config: dict[str, Any]
    live_version: str | None
    started: str
    nowcast_version: str


def retrain(
    cfg: RetrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    models_dir: str | Path | None = None,
    progress: bool = True,
    loader: Loader | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    stop_after: int | None = None,
    by: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the job in folder ``out``; returns ``result.json``'s content.

    ``loader`` replaces the catalogue (tests feed synthetic events); ``scheduler``/``workers``
    override the config's evaluation scheduler; ``stop_after`` ends training after that many
    steps of this call, as a kill would; ``by``: who runs it (default: the user). Under torchrun,
    every rank trains and rank 0 alone does the rest.
    """
    work = Path(out)
    root = default_models_dir(models_dir)
    main = int(os.environ.get("RANK", "0")) == 0
    plan = _plan_phase(cfg, work, root, resume=resume, write=main)
    load = loader or _catalogue_loader(cfg)
    split = _split_phase(cfg, work, load) if main else None
    finished = _train_phase(cfg, plan, work, root, loader, progress=progress, stop_after=stop_after)
    if not main or not finished:
        return {"id": plan.id, "phase": "train", "finished": False}
    assert split is not None
    report = _evaluate_phase(cfg, plan, work, root, load, progress=progress,
                             scheduler=scheduler, workers=workers)
    gate = _gate_phase(cfg, plan, work, report)
    by = by or _user()
    _pin_live(cfg, plan, root, by=by)
    version = _export_phase(cfg, plan, work, root, gate, split)
    promotion = _promote_phase(cfg, plan, root, version, gate, by=by)
    result = {"id": plan.id, "name": cfg.name, "version": version, "decision": gate["decision"],
              "promoted": promotion["promoted"], "live_version": _live_version(cfg.name, root),
              "compared_with": plan.live_version, "promotion": promotion, "finished": True,
              "finished_at": _now()}
    _write_json(work / RESULT_FILE, result)
    write_text_atomically(work / REPORT_FILE, render_report(cfg, plan, split, gate, result))
    logger.info("retrain %s: %s@%s %s%s", plan.id, cfg.name, version, gate["decision"],
                "" if promotion["promoted"] else f" (not promoted: {promotion['why']})")
    return result


def _plan_phase(cfg: RetrainConfig, work: Path, root: Path, *, resume: bool, write: bool) -> _Plan:
    """A new job's plan (the live version now), or a resumed one's as it was written."""
    state = work / STATE_FILE
    config = config_io.to_dict(cfg)
    if state.is_file():
        if not resume and write:  # the other torchrun ranks may find the plan rank 0 just wrote
            raise InputError(f"{work} holds a retrain already: pass --resume to continue it, or pick another --out")
        saved = artifacts.read_json(state)
        if saved.get("config") != config:
            raise ConfigError(f"{state}: the retrain was started with another config; resume needs the same one")
        return _Plan(saved["id"], config, saved["live_version"], saved["started"], saved["nowcast_version"])
    if work.exists() and (not work.is_dir() or any(work.iterdir())) and write:
        raise InputError(f"{work}: exists and is not an empty folder; pick another --out")
    live = _live_version(cfg.name, root)
    plan = _Plan(uuid.uuid4().hex[:12], config, live, _now(), _package_version())
    if write:
        work.mkdir(parents=True, exist_ok=True)
        _write_json(state, {"id": plan.id, "config": config, "live_version": live, "started": plan.started,
                            "nowcast_version": plan.nowcast_version, "models_dir": str(root)})
    logger.info("retrain %s of %s: compared with %s", plan.id, cfg.name,
                f"{cfg.name}@{live}" if live else f"no live version (the first baseline, {cfg.evaluation.baselines})")
    return plan


def _live_version(name: str, root: Path) -> str | None:
    """The version a candidate is compared with: the live one, else the latest; None for a new name."""
    if not artifacts.list_versions(name, root):
        return None
    return artifacts.default_version(name, root)


# --- split --------------------------------------------------------------------------------------


def _split_phase(cfg: RetrainConfig, work: Path, load: Loader) -> dict[str, Any]:
    """The split, checked for overlap, with every event's data checksum; the same on a resumed job."""
    sets = cfg.split.sets
    catalogue = _catalogue(cfg)
    extents = {name: _catalogue_extent(catalogue, name) for names in sets.values() for name in names}
    events: dict[str, dict[str, Any]] = {}
    for role, names in sets.items():
        for name in names:
            sequence = load(name)
            extents[name] = extents[name] or (f"{cfg.experiment.data.event_source}:{name}",
                                              pd.DatetimeIndex(sequence["time"].values))
            events[name] = {"set": role, **_describe(extents[name], sequence)}
    _check_no_overlap(events, extents, cfg.split.by)
    split = {"by": cfg.split.by, "sets": {role: list(names) for role, names in sets.items()}, "events": events,
             "catalogue": cfg.catalogue or ("packaged" if catalogue is not None else cfg.experiment.data.event_source),
             "data_root": cfg.data_root}
    path = work / SPLIT_FILE
    if path.is_file():
        saved = artifacts.read_json(path)
        if saved != json.loads(json.dumps(split)):
            changed = [n for n in events if saved.get("events", {}).get(n, {}).get("sha256") != events[n]["sha256"]]
            raise InputError(f"{path}: the split or the events' data changed since the retrain started"
                             f"{' (' + ', '.join(changed) + ')' if changed else ''}; start a new retrain")
        return saved
    _write_json(path, split)
    logger.info("split by %s: %s", cfg.split.by, "; ".join(f"{r} {', '.join(n) or '-'}" for r, n in sets.items()))
    return split


_Extent = tuple[str, pd.DatetimeIndex]  # (radar, frame times)


def _catalogue(cfg: RetrainConfig) -> dict[str, Any] | None:
    if cfg.experiment.data.event_source != "catalogue":
        return None
    from nowcast.io.catalogue import load_catalogue

    return load_catalogue(cfg.catalogue)


def _catalogue_extent(catalogue: dict[str, Any] | None, name: str) -> _Extent | None:
    """An event's radar (its archive folder and format) and frame times, from the catalogue alone."""
    if catalogue is None:
        return None
    if name not in catalogue:
        raise InputError(f"split: event {name!r} is not in the catalogue; events there: {', '.join(catalogue)}")
    event = catalogue[name]
    return f"{event.importer}:{event.root_path}", event.times


def _describe(extent: _Extent, sequence: xr.DataArray) -> dict[str, Any]:
    """What the split records of an event: its radar, times, grid and the checksum of the data it holds."""
    radar, times = extent
    digest = hashlib.sha256()
    digest.update(sequence["time"].values.astype("datetime64[s]").astype(np.int64).tobytes())
    digest.update(np.ascontiguousarray(sequence.values, dtype=np.float32).tobytes())
    return {"radar": radar, "first": times[0].isoformat(), "last": times[-1].isoformat(), "n_frames": len(times),
            "grid": [int(sequence.sizes["y"]), int(sequence.sizes["x"])],
            "days": sorted({t.strftime("%Y-%m-%d") for t in times}), "sha256": digest.hexdigest()}


def _check_no_overlap(events: dict[str, dict[str, Any]], extents: dict[str, _Extent | None], by: str) -> None:
    """No radar frame (``by="event"``) or radar day (``by="day"``) in two sets."""
    owners: dict[tuple[str, str], str] = {}
    for name, event in events.items():
        radar, times = extents[name]  # type: ignore[misc]
        units = event["days"] if by == "day" else [t.isoformat() for t in times]
        for unit in units:
            owner = owners.setdefault((radar, unit), name)
            if events[owner]["set"] != event["set"]:
                what = f"day {unit}" if by == "day" else f"frame at {unit}"
                raise InputError(f"split by {by}: {owner} ({events[owner]['set']}) and {name} ({event['set']}) "
                                 f"share the {what} of {radar}; a held-out set must not see training data")


def _catalogue_loader(cfg: RetrainConfig) -> Loader:
    """The events of the job's catalogue; a missing file is an all-NaN frame, as the evaluation job reads them."""
    if cfg.experiment.data.event_source != "catalogue":
        from nowcast.gan.data import EVENT_SOURCES

        return EVENT_SOURCES[cfg.experiment.data.event_source](cfg.training(None).data)
    from nowcast.io.catalogue import load_catalogue, load_event

    events = load_catalogue(cfg.catalogue)

    def load(name: str) -> xr.DataArray:
        if name not in events:
            raise InputError(f"event {name!r} is not in the catalogue; events there: {', '.join(events)}")
        return load_event(events[name], root=cfg.data_root, on_missing="nan")

    return load


# --- train --------------------------------------------------------------------------------------


def _train_phase(cfg: RetrainConfig, plan: _Plan, work: Path, root: Path, loader: Loader | None, *,
                 progress: bool, stop_after: int | None) -> bool:
    """Train (or go on training) the candidate; whether it has all its steps."""
    from nowcast.gan.train import CHECKPOINT, train

    experiment = cfg.training(_init_from(cfg, plan, root))
    run = work / RUN_DIR
    if _checkpoint_step(run / CHECKPOINT) >= experiment.train.steps:
        return True
    train(experiment, run, resume=(run / CHECKPOINT).is_file(), progress=progress, loader=loader,
          stop_after=stop_after)
    return _checkpoint_step(run / CHECKPOINT) >= experiment.train.steps


def _init_from(cfg: RetrainConfig, plan: _Plan, root: Path) -> str | None:
    """The weights the candidate starts from: the pinned live version's folder, or the experiment's own."""
    if cfg.init_from_live and plan.live_version:
        return str(artifacts.resolve(cfg.name, plan.live_version, root))
    return cfg.experiment.train.init_from


def _checkpoint_step(path: Path) -> int:
    if not path.is_file():
        return 0
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


# --- evaluate -----------------------------------------------------------------------------------


def _evaluate_phase(cfg: RetrainConfig, plan: _Plan, work: Path, root: Path, load: Loader, *, progress: bool,
                    scheduler: str | None, workers: int | None) -> dict[str, Any]:
    """The candidate, the live model and the baselines on the test events (a report already written is kept)."""
    from nowcast.evaluate import SCORES_JSON, evaluate

    ev = cfg.evaluation
    staging = _stage_models(cfg, plan, work, root)
    _spread_gain_phase(cfg, work, staging, load)
    _rate_map_phase(cfg, work, staging, load)
    _neighbourhood_phase(cfg, work, staging, load)
    methods = [CANDIDATE, *([LIVE] if plan.live_version else []), *ev.baselines]
    out = work / EVALUATION_DIR
    if (out / SCORES_JSON).is_file():
        report = artifacts.read_json(out / SCORES_JSON)
        if report["config"]["methods"] == methods and report["config"]["events"] == list(cfg.split.test):
            logger.info("evaluation found in %s", out)
            return report
    chosen = scheduler or ev.scheduler
    return evaluate(methods, list(cfg.split.test), n_input=ev.n_input, steps=ev.steps, stride=ev.stride,
                    loader=load, out_dir=out, progress=progress, models_dir=staging, members=ev.members,
                    seed=cfg.seed, scheduler=None if chosen == "none" else chosen,
                    workers=workers if workers is not None else ev.workers)


def _stage_models(cfg: RetrainConfig, plan: _Plan, work: Path, root: Path) -> Path:
    """A registry of the two models compared, under the names they are scored by: the candidate exported from
    the run, the live version copied (both checked)."""
    from nowcast.gan.export import export_run

    staging = work / STAGING_DIR
    if not artifacts.list_versions(CANDIDATE, staging):
        export_run(work / RUN_DIR, CANDIDATE, version="v1", models_dir=staging,
                   description=f"candidate of retrain {plan.id}")
    if plan.live_version and not artifacts.list_versions(LIVE, staging):
        source = artifacts.verified_folder(cfg.name, plan.live_version, root)
        tmp = Path(tempfile.mkdtemp(prefix=".live.", dir=staging))
        try:
            shutil.copytree(source, tmp / "v1")
            os.replace(tmp / "v1", _mkdir(staging / LIVE) / "v1")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for name in (CANDIDATE, *([LIVE] if plan.live_version else [])):
        artifacts.verified_folder(name, "v1", staging)
    return staging


def _spread_gain_phase(cfg: RetrainConfig, work: Path, staging: Path, load: Loader) -> None:
    """With ``spread_gain.fit``: the staged candidate's gain fitted on the training events (a fit already
    written is kept), registered in the staging registry as the candidate's next version, which the evaluation
    then scores and the export phase exports."""
    if not cfg.spread_gain.fit:
        return
    from nowcast.gan.export import retune_version
    from nowcast.spread_gain import fit_spread_gain

    path = work / SPREAD_GAIN_FILE
    if path.is_file():
        fitted = artifacts.read_json(path)
    else:
        sg, ev = cfg.spread_gain, cfg.evaluation
        fit = fit_spread_gain(f"{CANDIDATE}@v1", list(cfg.split.train), starts=sg.starts, ends=sg.ends,
                              members=sg.members, n_input=ev.n_input, steps=ev.steps, stride=ev.stride,
                              seed=cfg.seed, loader=load, models_dir=staging)
        fitted = fit.to_dict()
        _write_json(path, fitted)
        logger.info("spread gain fitted on %s: %g -> %g", ", ".join(fit.events), *fit.best)
    if artifacts.list_versions(CANDIDATE, staging) == ["v1"]:
        retune_version(f"{CANDIDATE}@v1", gain_settings(*fitted["best"]), version="v2", models_dir=staging,
                       description="the candidate with its fitted spread gain")


def _rate_map_phase(cfg: RetrainConfig, work: Path, staging: Path, load: Loader) -> None:
    """With ``rate_map.fit``: the rate map of the staged candidate (with its spread gain, where one was fitted)
    fitted on the training events (a fit already written is kept) and registered in the staging registry as
    the candidate's next version, which the evaluation then scores and the export phase exports."""
    if not cfg.rate_map.fit:
        return
    from nowcast.gan.export import retune_version
    from nowcast.rate_map import fit_rate_map

    path = work / RATE_MAP_FILE
    # the staged candidate as the spread-gain phase left it, and the version the map makes of it
    gained_version, mapped_version = ("v2", "v3") if cfg.spread_gain.fit else ("v1", "v2")
    gained = f"{CANDIDATE}@{gained_version}"
    if path.is_file():
        fitted = artifacts.read_json(path)
    else:
        rm, ev = cfg.rate_map, cfg.evaluation
        fit = fit_rate_map(gained, list(cfg.split.train), thresholds_mmh=rm.thresholds_mmh, members=rm.members,
                           n_input=ev.n_input, steps=ev.steps, stride=ev.stride, seed=cfg.seed, loader=load,
                           models_dir=staging)
        fitted = fit.to_dict()
        _write_json(path, fitted)
        logger.info("rate map fitted on %s: %d leads", ", ".join(fit.events), len(fit.minutes))
    if artifacts.list_versions(CANDIDATE, staging)[-1] == gained_version:
        retune_version(gained, _rate_map_settings(fitted), version=mapped_version, models_dir=staging,
                       description="the candidate with its fitted rate map")


def _rate_map_settings(fitted: dict[str, Any]) -> dict[str, Any]:
    return {key: fitted[key] for key in ("member_rate_map_mmh", "member_rate_map_minutes", "member_rate_map")}


def _neighbourhood_phase(cfg: RetrainConfig, work: Path, staging: Path, load: Loader) -> None:
    """With ``neighbourhood.fit``: the probability neighbourhood of the staged candidate (with its spread gain,
    where one was fitted) fitted on the training events, for the export phase (a fit already written is kept)."""
    path = work / NEIGHBOURHOOD_FILE
    if not cfg.neighbourhood.fit or path.is_file():
        return
    from nowcast.neighbourhood_fit import fit_neighbourhood

    nb, ev = cfg.neighbourhood, cfg.evaluation
    candidate = f"{CANDIDATE}@{artifacts.list_versions(CANDIDATE, staging)[-1]}"
    fit = fit_neighbourhood(candidate, list(cfg.split.train), rates=nb.rates, members=nb.members,
                            n_input=ev.n_input, steps=ev.steps, stride=ev.stride, seed=cfg.seed, loader=load,
                            models_dir=staging)
    _write_json(path, fit.to_dict())
    logger.info("probability neighbourhood fitted on %s: %g km per minute of lead", ", ".join(fit.events), fit.best)


def _member_settings(cfg: RetrainConfig, work: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fitted member settings the candidate is exported with, and the fits for its card."""
    settings: dict[str, Any] = {}
    fits: dict[str, Any] = {}
    if cfg.spread_gain.fit:
        fitted = artifacts.read_json(work / SPREAD_GAIN_FILE)
        settings.update(gain_settings(*fitted["best"]))
        fits["spread_gain_fit"] = {key: fitted[key] for key in ("events", "members", "start_times", "best")}
    if cfg.rate_map.fit:
        fitted = artifacts.read_json(work / RATE_MAP_FILE)
        settings.update(_rate_map_settings(fitted))
        fits["rate_map_fit"] = {key: fitted[key] for key in ("events", "members", "start_times", "area_ratio",
                                                             *_rate_map_settings(fitted))}
    if cfg.neighbourhood.fit:
        fitted = artifacts.read_json(work / NEIGHBOURHOOD_FILE)
        settings["probability_neighbourhood_km_per_minute"] = fitted["best"]
        fits["neighbourhood_fit"] = {key: fitted[key] for key in ("events", "members", "start_times", "best")}
    return settings, fits


# --- gate ---------------------------------------------------------------------------------------


def _gate_phase(cfg: RetrainConfig, plan: _Plan, work: Path, report: dict[str, Any]) -> dict[str, Any]:
    reference = LIVE if plan.live_version else cfg.evaluation.baselines[0]
    gate = evaluate_gate(report, cfg.gate, reference=reference, seed=cfg.seed,
                         compare_time=bool(plan.live_version))
    gate["compared_with"] = f"{cfg.name}@{plan.live_version}" if plan.live_version else reference
    _write_json(work / GATE_FILE, gate)
    for criterion in gate["criteria"]:
        logger.info("gate: %s %s: %s", criterion["name"], "passed" if criterion["passed"] else "FAILED",
                    criterion["summary"])
    return gate


def evaluate_gate(report: dict[str, Any], gate: GateConfig, *, reference: str, seed: int = 0,
                  compare_time: bool = True) -> dict[str, Any]:
    """Every criterion of ``gate`` on an evaluation that scored ``candidate`` and ``reference``; the decision.

    Each criterion: ``passed``, ``margin`` (how far inside its limit, negative when outside),
    ``summary`` (one line) and its details (per lead time: difference and interval).
    """
    criteria = [_finite_criterion(report, reference, gate)]
    criteria += [_csi_criterion(report, reference, gate, threshold, seed) for threshold in gate.csi_thresholds_mmh]
    if "ensemble" in report["config"] and CANDIDATE in report["config"]["ensemble"]["methods"] \
            and reference in report["config"]["ensemble"]["methods"]:
        criteria.append(_crps_criterion(report, reference, gate, seed))
    if compare_time:
        criteria.append(_time_criterion(report, reference, gate))
    passed = all(c["passed"] for c in criteria)
    return {"decision": PROMOTED if passed else REFUSED, "reference": reference, "level": gate.level,
            "n_resamples": gate.n_resamples, "seed": seed, "settings": config_io.to_dict(gate),
            "n_start_times": report["overall"]["n_evaluated"], "events": report["config"]["events"],
            "criteria": criteria}


def _finite_criterion(report: dict[str, Any], reference: str, gate: GateConfig) -> dict[str, Any]:
    counts = report["nonfinite"]
    candidate, allowed = counts[CANDIDATE], counts[reference]["nan"]
    extra_nan = candidate["nan"] - allowed
    passed = gate.allow_nonfinite or (candidate["inf"] == 0 and extra_nan <= 0)
    excess = max(extra_nan, 0) + candidate["inf"]
    return {"name": "finite values", "passed": passed, "margin": -float(excess) if excess else 0.0,
            "candidate": candidate, "reference": counts[reference],
            "summary": f"{candidate['inf']} infinite, {candidate['nan']} NaN of {candidate['values']} values "
                       f"({reference}: {allowed} NaN, its no-data pixels)"}


def _csi_criterion(report: dict[str, Any], reference: str, gate: GateConfig, threshold: float,
                   seed: int) -> dict[str, Any]:
    """Not worse than the reference at any lead beyond the interval: fails where the whole interval of
    the CSI difference lies below ``-csi_tolerance``."""
    with warnings.catch_warnings():  # a lead without rain at the threshold has no CSI: handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        intervals = csi_difference_interval(report, CANDIDATE, reference, n_resamples=gate.n_resamples,
                                            level=gate.level, seed=seed)
    leads = {lead: by_threshold[key(threshold)] for lead, by_threshold in intervals.items()
             if key(threshold) in by_threshold}
    assessed = {lead: v for lead, v in leads.items() if np.isfinite(v["high"])}
    name = f"CSI at {threshold:g} mm/h"
    if not assessed:
        return {"name": name, "passed": True, "assessed": False, "margin": None, "leads": leads,
                "summary": f"not assessed: no rain at {threshold:g} mm/h in the test start times"}
    worst_lead = min(assessed, key=lambda lead: assessed[lead]["high"])
    worst = assessed[worst_lead]
    margin = worst["high"] + gate.csi_tolerance
    return {"name": name, "passed": bool(margin >= 0), "assessed": True, "margin": float(margin),
            "worst_lead_minutes": float(worst_lead), "leads": leads,
            "summary": f"worst at +{float(worst_lead):g} min: {worst['difference']:+.3f} "
                       f"[{worst['low']:+.3f}, {worst['high']:+.3f}] against {reference} "
                       f"(tolerance {gate.csi_tolerance:g}); {len(assessed)} leads assessed"}


def _crps_criterion(report: dict[str, Any], reference: str, gate: GateConfig, seed: int) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        intervals = crps_difference_interval(report, CANDIDATE, reference, n_resamples=gate.n_resamples,
                                             level=gate.level, seed=seed)
    assessed = {lead: v for lead, v in intervals.items() if np.isfinite(v["low"])}
    if not assessed:
        return {"name": "CRPS", "passed": True, "assessed": False, "margin": None, "leads": intervals,
                "summary": "not assessed: no lead with scored pixels"}
    worst_lead = max(assessed, key=lambda lead: assessed[lead]["low"])
    worst = assessed[worst_lead]
    margin = gate.crps_tolerance_mmh - worst["low"]
    return {"name": "CRPS", "passed": bool(margin >= 0), "assessed": True, "margin": float(margin),
            "worst_lead_minutes": float(worst_lead), "leads": intervals,
            "summary": f"worst at +{float(worst_lead):g} min: {worst['difference']:+.4f} mm/h "
                       f"[{worst['low']:+.4f}, {worst['high']:+.4f}] against {reference} "
                       f"(tolerance {gate.crps_tolerance_mmh:g})"}


def _time_criterion(report: dict[str, Any], reference: str, gate: GateConfig) -> dict[str, Any]:
    candidate = report["timing"][CANDIDATE]["mean_seconds_per_forecast"]
    other = report["timing"][reference]["mean_seconds_per_forecast"]
    if not candidate or not other:
        return {"name": "forecast time", "passed": False, "assessed": False, "margin": None,
                "summary": "no forecast was timed"}
    factor = candidate / other
    return {"name": "forecast time", "passed": bool(factor <= gate.max_time_factor), "assessed": True,
            "margin": float(gate.max_time_factor - factor), "factor": float(factor),
            "candidate_seconds": float(candidate), "reference_seconds": float(other),
            "summary": f"{candidate:.3f} s per forecast, {factor:.2f}× {reference}'s {other:.3f} s "
                       f"(at most {gate.max_time_factor:g}×)"}


# --- export and promote -------------------------------------------------------------------------


def _pin_live(cfg: RetrainConfig, plan: _Plan, root: Path, *, by: str) -> None:
    """Record the version served until now as live where no pointer says so: without one, the name would
    mean the highest version, which the candidate is about to become, passed or not."""
    if plan.live_version is None or artifacts.live_record(cfg.name, root) is not None:
        return
    artifacts.promote(cfg.name, plan.live_version, by=by, models_dir=root,
                      reason=f"recorded by retrain {plan.id} before it exported a candidate: the version served "
                             "until then (the latest; no live version had been recorded)")


def _export_phase(cfg: RetrainConfig, plan: _Plan, work: Path, root: Path, gate: dict[str, Any],
                  split: dict[str, Any]) -> str:
    """The candidate as the next version of ``cfg.name``, whatever the decision (once, even when resumed)."""
    from nowcast.evaluate import SCORES_JSON
    from nowcast.gan.export import export_run

    state = artifacts.read_json(work / STATE_FILE)
    version = state.get("exported_version")
    if version and version in artifacts.list_versions(cfg.name, root):
        card = artifacts.card(cfg.name, version, root)
        if card.get("retrain", {}).get("id") != plan.id:
            raise InputError(f"{cfg.name}@{version} was written by another job than retrain {plan.id}")
        return str(version)
    version = version or artifacts.next_version(cfg.name, root)
    _write_json(work / STATE_FILE, {**state, "exported_version": version})  # reserved before it is written
    record = {"id": plan.id, "decision": gate["decision"], "gate": gate, "reproduce": _reproduce(cfg, plan, split),
              "work_folder": str(work.resolve())}
    member_settings, fits = _member_settings(cfg, work)
    record.update(fits)
    export_run(work / RUN_DIR, cfg.name, version=version, models_dir=root, evaluation=work / EVALUATION_DIR /
               SCORES_JSON, evaluated_as=CANDIDATE, card_extra={"retrain": _plain(record)},
               description=f"{cfg.name} retrained by job {plan.id} ({gate['decision']} by its gate)",
               extra_markdown=gate_markdown(gate),
               member_settings=member_settings or None)
    return str(version)


def _reproduce(cfg: RetrainConfig, plan: _Plan, split: dict[str, Any]) -> dict[str, Any]:
    return {"config": plan.config, "seed": cfg.seed, "nowcast_version": plan.nowcast_version,
            "catalogue": split["catalogue"], "split": {"by": split["by"], **split["sets"]},
            "data_sha256": {name: event["sha256"] for name, event in split["events"].items()},
            "initialised_from": f"{cfg.name}@{plan.live_version}" if cfg.init_from_live and plan.live_version
            else cfg.experiment.train.init_from, "started": plan.started}


def _promote_phase(cfg: RetrainConfig, plan: _Plan, root: Path, version: str, gate: dict[str, Any], *,
                   by: str) -> dict[str, Any]:
    """Make the candidate live when it passed, promotion is on and the live version is still the one compared."""
    live_now = artifacts.live_version(cfg.name, root)
    if live_now == version:
        return {"promoted": True, "why": "live already"}
    if gate["decision"] != PROMOTED:
        failed = ", ".join(c["name"] for c in gate["criteria"] if not c["passed"])
        return {"promoted": False, "why": f"failed the gate ({failed})"}
    if not cfg.promote:
        return {"promoted": False, "why": "passed the gate; promotion is off in the config"}
    current = _live_version(cfg.name, root) if live_now is None else live_now
    if plan.live_version and current != plan.live_version:
        return {"promoted": False, "why": f"the live version moved from {plan.live_version} to {current} during "
                                          "the job; its gate compared with the old one"}
    artifacts.promote(cfg.name, version, by=by, reason=f"retrain {plan.id}: passed every gate criterion against "
                      f"{gate['compared_with']}", gate_report=gate_summary(gate, version), models_dir=root)
    return {"promoted": True, "why": "passed the gate"}


def gate_summary(gate: dict[str, Any], version: str) -> dict[str, Any]:
    """What the live pointer keeps of a gate report (the card holds all of it)."""
    return {"version": version, "decision": gate["decision"], "compared_with": gate["compared_with"],
            "criteria": [{"name": c["name"], "passed": c["passed"], "summary": c["summary"]}
                         for c in gate["criteria"]]}


# --- reports ------------------------------------------------------------------------------------


def gate_markdown(gate: dict[str, Any]) -> str:
    lines = [f"## Gate: {gate['decision']} (against {gate['compared_with']}, {gate['n_start_times']} start times "
             f"of {', '.join(gate['events'])}, {gate['level']:.0%} intervals of {gate['n_resamples']} paired "
             "bootstrap resamples)", "", "| criterion | result | margin | details |", "|---|---|---|---|"]
    for c in gate["criteria"]:
        result = ("passed" if c["passed"] else "FAILED") + ("" if c.get("assessed", True) else " (not assessed)")
        margin = "–" if c.get("margin") is None else f"{c['margin']:+.3g}"
        lines.append(f"| {c['name']} | {result} | {margin} | {c['summary']} |")
    return "\n".join(lines) + "\n"


def render_report(cfg: RetrainConfig, plan: _Plan, split: dict[str, Any], gate: dict[str, Any],
                  result: dict[str, Any]) -> str:
    promotion = result["promotion"]
    lines = [f"# Retrain {plan.id}: {cfg.name}@{result['version']}", "",
             f"- Decision: **{gate['decision']}**; promoted: {'yes' if promotion['promoted'] else 'no'} "
             f"({promotion['why']}); live now: {cfg.name}@{result['live_version']}",
             f"- Compared with: {gate['compared_with']}; started {plan.started}, finished {result['finished_at']}",
             f"- Split by {split['by']} (catalogue: {split['catalogue']}): "
             + "; ".join(f"{role}: {', '.join(names) or '–'}" for role, names in split["sets"].items()),
             f"- Seed {cfg.seed}; nowcast {plan.nowcast_version}", "", gate_markdown(gate), "## Data checksums", "",
             "| event | set | radar | frames | first | last | sha256 |", "|---|---|---|---|---|---|---|"]
    for name, event in split["events"].items():
        lines.append(f"| {name} | {event['set']} | {event['radar']} | {event['n_frames']} | {event['first']} | "
                     f"{event['last']} | {event['sha256'][:16]}… |")
    return "\n".join(lines) + "\n"


# --- files --------------------------------------------------------------------------------------


def _write_json(path: Path, data: Any) -> None:
    write_text_atomically(path, json.dumps(_plain(data), indent=1, sort_keys=True, allow_nan=False) + "\n")


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python's, NaN (an undefined score) as None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_version() -> str:
    """This package's version, as installed (the report records it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("nowcast")
    except PackageNotFoundError:
        installed = "unknown (not installed)"
    revision = _source_revision()
    return f"{installed} ({revision})" if revision else installed


def _source_revision() -> str | None:
    """The commit of the source tree this runs from, when it is a git checkout (a "+" when it has changes)."""
    import subprocess

    from nowcast.paths import PROJECT_ROOT

    if not (PROJECT_ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"git {head}{'+' if dirty else ''}"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return f"nowcast retrain ({getpass.getuser()})"
    except (KeyError, OSError):
        return "nowcast retrain"
