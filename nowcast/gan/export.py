"""Export a training run into the model registry, with its model card."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from nowcast import artifacts
from nowcast import config as config_io
from nowcast.errors import InputError
from nowcast.gan.config import ModelConfig, upgrade_model_config
from nowcast.gan.train import METRICS, load_generator
from nowcast.report import card_evaluation, card_tables

logger = logging.getLogger(__name__)

#: member settings that act on the generator's output only, never in training
MEMBER_POSTPROCESSING = ("member_intensity_db", "member_intensity_km", "member_intensity_minutes",
                         "member_spread_gain_start", "member_spread_gain_end", "member_spread_gain_minutes",
                         "member_spread_gain", "member_matching",
                         "member_matching_minutes", "member_rate_map_mmh", "member_rate_map_minutes",
                         "member_rate_map", "member_rate_map_last", "member_sprog_weight_minutes",
                         "member_sprog_weight", "member_sprog_keeps_rates", "member_area_mmh",
                         "member_area_ceiling")
#: settings of the products made from the members, which never change the members: a version that changes only
#: these keeps its source's evaluation (``nowcast evaluate`` scores the members and their own probabilities)
PRODUCT_SETTINGS = ("probability_neighbourhood_km_per_minute",)
#: settings that place the members' probability-matched mean or map its rates: no member changes, but the mean's
#: scores do
MEAN_SETTINGS = ("mean_neighbourhood_km_per_minute", "mean_sprog_weight_minutes", "mean_sprog_weight",
                 "mean_outline_sprog_weight_minutes", "mean_outline_sprog_weight", "mean_core_mmh",
                 "mean_core_probability_weight_minutes", "mean_core_probability_weight",
                 "mean_outline_probability_mmh", "mean_outline_probability_weight_minutes",
                 "mean_outline_probability_weight", "mean_rate_map_mmh", "mean_rate_map_minutes", "mean_rate_map")
#: model settings that act only where members are drawn: a new version may change them on the same weights
MEMBER_SETTINGS = ("member_motion_kmh", "member_motion_sigma", "member_motion_growth", *MEMBER_POSTPROCESSING,
                   *MEAN_SETTINGS, *PRODUCT_SETTINGS)


def export_run(
    run_dir: str | Path,
    name: str,
    *,
    version: str | None = None,
    models_dir: str | Path | None = None,
    evaluation: str | Path | None = None,
    description: str = "",
    evaluated_as: str | None = None,
    card_extra: dict[str, Any] | None = None,
    extra_markdown: str = "",
    member_settings: dict[str, float | str] | None = None,
) -> Path:
    """Write the run's generator as ``models/NAME/VERSION`` and return that folder.

    ``evaluation``: a ``scores.json`` from ``nowcast evaluate`` whose scores (held-out
    events, against the baselines) go into the model card; ``evaluated_as``: the name the
    model was scored under there (default: ``name``). ``card_extra``: more entries of the
    card (the retrain job's gate report), ``extra_markdown``: a section of its README.
    ``member_settings``: ``MEMBER_SETTINGS`` to export with other values than the run's.
    """
    run = Path(run_dir)
    generator, cfg, step = load_generator(run)
    if member_settings:
        _check_member_settings(member_settings)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **member_settings))
    metrics = _read_metrics(run / METRICS)
    validation = next((m for m in reversed(metrics) if any(k.startswith("val_") for k in m)), {})
    eval_summary = _evaluation_summary(Path(evaluation), evaluated_as or name, name) if evaluation else None
    n_params = sum(p.numel() for p in generator.parameters())
    card: dict[str, Any] = {
        "description": description or _default_description(cfg),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "architecture": "multi-scale GAN generator (Mathieu, Couprie & LeCun, ICLR 2016)"
        + (", conditioned on Lucas-Kanade semi-Lagrangian advection" if cfg.model.condition_on_advection else ""),
        "parameters": n_params,
        "inputs": {"frames": cfg.model.n_input, "units": "mm/h", "layout": "(batch, time, channel, y, x)"},
        "outputs": {"frames": cfg.model.n_output, "units": "mm/h"},
        "training": {
            "run": run.name,
            "steps": step,
            "train_events": list(cfg.data.train_events),
            "validation_events": list(cfg.data.val_events),
            "patch_size": cfg.data.patch_size,
            "batch_size": cfg.train.batch_size,
            "loss": config_io.to_dict(cfg.loss),
            "seed": cfg.train.seed,
        },
        "validation_during_training": validation,
        "evaluation": eval_summary,
        **(card_extra or {}),
    }
    spec = {
        "model": config_io.to_dict(cfg.model),
        "normalisation": cfg.normalisation.to_dict(),
        "experiment": config_io.to_dict(cfg),
    }
    folder = artifacts.write_artifact(
        name,
        config=spec,
        weights_writer=lambda path: torch.save(generator.state_dict(), path),
        card_data=card,
        card_markdown=card_markdown(name, card) + (f"\n{extra_markdown.strip()}\n" if extra_markdown else ""),
        models_dir=models_dir,
        version=version,
    )
    return folder


def retune_version(
    source: str,
    settings: dict[str, float | str],
    *,
    version: str | None = None,
    models_dir: str | Path | None = None,
    evaluation: str | Path | None = None,
    description: str = "",
) -> Path:
    """A new version of the model ``source`` (NAME@VERSION) with its weights and other ``MEMBER_SETTINGS``.

    The card keeps the source's training record and description and says what changed
    (``retuned_from``, and in the description, followed by ``description``: why, or how it
    was found). ``evaluation`` (a ``scores.json`` that scored the retuned model as
    NAME@VERSION) goes into the card; without one, the source's evaluation carries over only
    where every change is one of ``PRODUCT_SETTINGS`` (the members, and so every score, stay
    the same), marked ``carried_from`` the source.
    """
    name, _, source_version = source.partition("@")
    if not source_version:
        raise InputError(f"retune needs NAME@VERSION, got {source!r}", field="source")
    _check_member_settings(settings)
    folder = artifacts.verified_folder(name, source_version, models_dir)
    spec = artifacts.read_json(folder / artifacts.CONFIG_FILE)
    # the source's values as it runs, defaults filled in for settings older artifacts do not spell out
    current = config_io.to_dict(config_io.from_dict(ModelConfig, upgrade_model_config(spec["model"], where=source),
                                                    where=source))
    before = {key: current[key] for key in settings}
    model = config_io.from_dict(ModelConfig, {**current, **settings}, where=f"{source} retuned")
    spec = {**spec, "model": config_io.to_dict(model)}
    if isinstance(spec.get("experiment"), dict):
        spec["experiment"] = {**spec["experiment"], "model": spec["model"]}
    version = version or artifacts.next_version(name, models_dir)
    source_card = artifacts.read_json(folder / artifacts.CARD_FILE)
    card = {key: value for key, value in source_card.items() if key not in ("name", "version", "evaluation")}
    if evaluation:
        scored = _evaluation_summary(Path(evaluation), f"{name}@{version}", name)
    elif source_card.get("evaluation") and set(settings) <= set(PRODUCT_SETTINGS):
        scored = {**source_card["evaluation"], "carried_from": source}
    else:
        scored = None
    changes = ", ".join(f"{key} {_setting_text(before[key])} -> {_setting_text(value)}"
                        for key, value in settings.items())
    card.update(
        description=f"{card.get('description', name)}; retuned from {source}: {changes}"
                    + (f" ({description})" if description else ""),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        retuned_from={"model": source, "settings": {key: [before[key], value] for key, value in settings.items()}},
        evaluation=scored,
    )
    return artifacts.write_artifact(
        name, config=spec, weights_writer=lambda path: shutil.copyfile(folder / artifacts.WEIGHTS_FILE, path),
        card_data=card, card_markdown=card_markdown(name, {**card, "version": version}),
        models_dir=models_dir, version=version,
    )


def _check_member_settings(settings: dict[str, float | str]) -> None:
    unknown = sorted(set(settings) - set(MEMBER_SETTINGS))
    if unknown or not settings:
        raise InputError(f"settings {unknown or 'none'}: give one or more of {', '.join(MEMBER_SETTINGS)} "
                         "(the others change what the weights were trained for)", field="settings")


def _setting_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], (list, tuple)):
            return f"a table of {len(value)} rows"
        return "[" + ", ".join(_setting_text(v) for v in value) + "]"
    return value if isinstance(value, str) else format(value, "g")


def _default_description(cfg: Any) -> str:
    losses = []
    if cfg.loss.lambda_adv:
        losses.append(f"adversarial (λ={cfg.loss.lambda_adv:g})")
    if cfg.loss.lambda_lp:
        losses.append(f"L{cfg.loss.p} (λ={cfg.loss.lambda_lp:g})")
    if cfg.loss.lambda_gdl:
        losses.append(f"gradient difference (λ={cfg.loss.lambda_gdl:g}, α={cfg.loss.alpha:g})")
    if cfg.loss.lambda_crps:
        losses.append(f"fair CRPS of {cfg.loss.samples} samples per input (λ={cfg.loss.lambda_crps:g})")
    if cfg.loss.lambda_crps_rate:
        losses.append(f"fair CRPS in mm/h at the finest scale (λ={cfg.loss.lambda_crps_rate:g})")
    if cfg.loss.lambda_wet_area:
        thresholds = "/".join(f"{t:g}" for t in cfg.loss.wet_area_thresholds_mmh)
        losses.append(f"fair CRPS of the wet fraction above {thresholds} mm/h in {cfg.loss.wet_area_window}-px "
                      f"squares (λ={cfg.loss.lambda_wet_area:g})")
    if cfg.loss.lambda_sample_mean:
        leads = f"the first {cfg.loss.sample_mean_leads} leads" if cfg.loss.sample_mean_leads else "every lead"
        losses.append(f"L1 of the samples' mean at {leads} (λ={cfg.loss.lambda_sample_mean:g})")
    if cfg.loss.lambda_csi:
        thresholds = "/".join(f"{t:g}" for t in cfg.loss.csi_thresholds_mmh)
        losses.append(f"soft CSI at {thresholds} mm/h (λ={cfg.loss.lambda_csi:g})")
    text = f"{cfg.name}: {cfg.model.n_scales}-scale generator trained with " + " + ".join(losses)
    if cfg.model.condition_on_advection:
        text += (f"; refines Lucas-Kanade advection (dense motion interpolated every {cfg.model.motion_downsample} px) "
                 "in the Lagrangian frame (past moved with the rain, corrections carried along it)")
    if cfg.model.noise_channels:
        text += f"; draws ensemble members from {cfg.model.noise_channels} noise maps per scale"
        if cfg.model.member_motion_sigma:
            text += f" and a motion shift per member (N(0, {cfg.model.member_motion_sigma:g}²) px per step)"
        elif cfg.model.member_motion_kmh:
            text += f" and a motion shift per member (N(0, {cfg.model.member_motion_kmh:g}²) km/h)"
        if (cfg.model.member_motion_sigma or cfg.model.member_motion_kmh) and cfg.model.member_motion_growth != 1.0:
            text += f", its displacement growing as lead^{cfg.model.member_motion_growth:g}"
        if (cfg.model.member_motion_sigma or cfg.model.member_motion_kmh) and not cfg.model.member_shift_moves_past:
            text += " (the past frames moved along the estimated motion, not the shifted one)"
        if cfg.model.member_intensity_db:
            text += (f", each member's rain times a log-normal field of {cfg.model.member_intensity_db:g} dB "
                     f"({cfg.model.member_intensity_km:g} km, {cfg.model.member_intensity_minutes:g} min)")
        if cfg.model.spreads_members:
            if cfg.model.member_spread_gain:
                table = _weight_table(cfg.model.member_spread_gain_minutes, cfg.model.member_spread_gain)
                text += f", wet members' log rain rates spread about their mean by {table}"
            else:
                start, end = cfg.model.member_spread_gain_start, cfg.model.member_spread_gain_end
                text += (f", wet members' log rain rates spread about their mean by {start:g} (0 min) to {end:g} "
                         "(60 min)")
        if cfg.model.member_rate_map and not cfg.model.member_rate_map_last:
            text += _rate_map_text(cfg.model)
        if cfg.model.member_matching != "none":
            whose = "each member's" if cfg.model.member_matching == "each" else "the members' pooled"
            text += f", {whose} wet rain rates matched to the last observed frame's distribution"
            if cfg.model.member_matching_minutes:
                text += f" over the first {cfg.model.member_matching_minutes:g} min"
        if cfg.model.member_sprog_weight:
            table = _weight_table(cfg.model.member_sprog_weight_minutes, cfg.model.member_sprog_weight)
            text += f", then each member's dBR moved towards S-PROG's by the members' mean's distance to it ({table})"
            if cfg.model.member_sprog_keeps_rates:
                text += ", each member keeping its rain rates (placed in the moved field's order)"
        if cfg.model.member_rate_map and cfg.model.member_rate_map_last:
            text += _rate_map_text(cfg.model) + " (after everything above)"
        if cfg.model.member_area_mmh:
            rates = "/".join(f"{t:g}" for t in cfg.model.member_area_mmh)
            capped = " capped at" if cfg.model.member_area_ceiling else " set to"
            text += (f", and last, at the leads not matched to the last frame, the members' pooled area above "
                     f"{rates} mm/h{capped} the extrapolated last frame's by one map of their rates")
        if cfg.model.probability_neighbourhood_km_per_minute:
            text += (f"; exceedance probabilities neighbourhood-processed in a square growing "
                     f"{cfg.model.probability_neighbourhood_km_per_minute:g} km per minute of lead")
        text += _mean_placement_text(cfg.model)
    if cfg.model.envelope_db:
        text += (f"; capped at the advected maximum within {cfg.model.envelope_radius} px "
                 f"+ {cfg.model.envelope_db:g} dB")
    if cfg.model.correction_deadzone_db:
        text += f"; corrections of advection under {cfg.model.correction_deadzone_db:g} dB set to zero"
    if cfg.model.correction_db_per_step:
        text += f"; corrections bounded to ±{cfg.model.correction_db_per_step:g} dB per lead step"
    return text


def _rate_map_text(model: ModelConfig) -> str:
    """The rate map, for the card."""
    thresholds = "/".join(f"{t:g}" for t in model.member_rate_map_mmh)
    return (f", wet members' rates mapped per lead so that their area above {thresholds} mm/h is the observed one "
            "on the fitting events")


def _mean_placement_text(model: ModelConfig) -> str:
    """What places the probability-matched mean and maps its rates, for the card ("" where the ensemble mean's
    own ranks place it and the members' rates fill it)."""
    mapped = ""
    if model.mean_rate_map:
        thresholds = "/".join(f"{t:g}" for t in model.mean_rate_map_mmh)
        mapped = (f"; the probability-matched mean's rates mapped per lead so that its area above {thresholds} "
                  "mm/h is the observed one on the fitting events")
    if not (model.mean_sprog_weight or model.mean_neighbourhood_km_per_minute or model.mean_outline_sprog_weight):
        return mapped
    placed_by = "the ensemble mean"
    if model.mean_sprog_weight:
        table = _weight_table(model.mean_sprog_weight_minutes, model.mean_sprog_weight)
        placed_by = f"the mean of the members moved further towards S-PROG ({table})"
    if model.mean_neighbourhood_km_per_minute:
        placed_by += (f", averaged over a square growing {model.mean_neighbourhood_km_per_minute:g} km per "
                      "minute of lead")
    if model.mean_core_probability_weight:
        table = _weight_table(model.mean_core_probability_weight_minutes, model.mean_core_probability_weight)
        placed_by += (f" (which pixels lie above {model.mean_core_mmh:g} mm/h blended by rank with their probability "
                      f"of rain above it: {table})")
    if model.mean_outline_sprog_weight:
        table = _weight_table(model.mean_outline_sprog_weight_minutes, model.mean_outline_sprog_weight)
        placed_by += (f" above {model.mean_core_mmh:g} mm/h, and its lighter rain by the members' mean moved towards "
                      f"S-PROG ({table})")
    if model.mean_outline_probability_weight:
        table = _weight_table(model.mean_outline_probability_weight_minutes, model.mean_outline_probability_weight)
        placed_by += (f", in an order blended with their probability of rain above "
                      f"{model.mean_outline_probability_mmh:g} mm/h ({table})")
    return f"; the probability-matched mean placed by {placed_by}" + mapped


def _weight_table(minutes: tuple[float, ...], weights: tuple[float, ...]) -> str:
    """A table of weights by lead, for the card: "0.5 at 5 min, 0.3 at 20 min"."""
    return ", ".join(f"{w:g} at {m:g} min" for m, w in zip(minutes, weights, strict=True))


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _evaluation_summary(path: Path, method: str, name: str) -> dict[str, Any]:
    """The model's and the baselines' scores from a ``nowcast evaluate`` report that scored it as ``method``,
    under the model's ``name``."""
    report = json.loads(path.read_text())
    try:
        summary = card_evaluation(report, method, source=path.name)
    except KeyError as exc:
        raise InputError(f"{path}: {exc.args[0]}; evaluate the model under the name it is exported as") from exc
    if method != name:
        summary["method"] = name
        summary["scores"] = {name if m == method else m: v for m, v in summary["scores"].items()}
    return summary


def card_markdown(name: str, card: dict[str, Any]) -> str:
    tr = card["training"]
    lines = [
        f"# Model card: {name} {card.get('version', '')}".rstrip(),
        "",
        card["description"],
        "",
        f"- Architecture: {card['architecture']}; {card['parameters']:,} parameters",
        f"- Input: last {card['inputs']['frames']} frames of rain rate (mm/h); "
        f"output: next {card['outputs']['frames']} frames (mm/h)",
        f"- Trained for {tr['steps']} steps (batch {tr['batch_size']}, patches {tr['patch_size']}px, "
        f"seed {tr['seed']}) on events: {', '.join(tr['train_events'])}",
        f"- Held out for validation (never trained on): {', '.join(tr['validation_events']) or 'none'}",
        f"- Loss weights: {tr['loss']}",
        "",
    ]
    if card.get("evaluation"):
        lines += ["## Evaluation on the held-out events, against the baselines", "",
                  card_tables(card["evaluation"]), ""]
    val = card.get("validation_during_training") or {}
    if val:
        lines += ["## Last validation during training (held-out patches, all leads)", ""]
        lines += [f"- {k}: {v:.4f}" for k, v in sorted(val.items()) if k.startswith("val_")]
        lines.append("")
    return "\n".join(lines)
