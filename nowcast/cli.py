"""The ``nowcast`` command line: the batch jobs of the library.

    nowcast forecast INPUT... --model NAME --steps N --output OUT.nc
    nowcast evaluate --methods persistence,extrapolation --events all --out DIR
    nowcast train --config configs/default-gan.toml --out runs/default-gan
    nowcast export runs/default-gan --name default-gan --evaluation runs/eval/scores.json
    nowcast demo --out demo-output
    nowcast models
    nowcast retrain --config configs/retrain/default-gan.toml --out runs/retrain-1
    nowcast promote default-gan@v9 --reason "..."   /   nowcast rollback default-gan --reason "..."
    nowcast watch watch.toml --metrics-port 9108
    nowcast replay fmi-20170509 --to feed/ --interval 5

(The web service is not a command of the library: ``python -m service``.)

Every problem the user can cause (a missing or unreadable file, an unknown model or
event, too few frames...) ends the command with a one-line message on stderr naming
the problem and exit code 2, and leaves no half-written output behind. A command is a
function here decorated with ``@app.command()`` and ``@user_errors``, which turns
:class:`InputError` and :class:`UnknownNameError` into that message and exit code;
logging is already set up by the app's callback.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from nowcast import __version__
from nowcast.errors import InputError, UnknownNameError

logger = logging.getLogger("nowcast.cli")

EXIT_USER_ERROR = 2

app = typer.Typer(
    name="nowcast",
    help="Precipitation nowcasting: forecast radar rain with a GAN or the pySTEPS baselines, and score them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def stderr_console() -> Console:
    """The console for logs and progress bars (stderr, so stdout stays for results)."""
    return Console(stderr=True)


def user_errors(command: F) -> F:
    """Report user-caused errors as one line on stderr and exit with code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (InputError, UnknownNameError) as exc:
            logger.debug("user error", exc_info=True)
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(verbosity: int) -> None:
    """Log the package's messages to stderr: -1 warnings only, 0 info, 1+ debug.

    Replaces only the handler it installed before, so that it can run once per
    command in one process (tests) without touching other handlers.
    """
    from rich.logging import RichHandler

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "nowcast_cli", False)]:
        root.removeHandler(handler)
    handler = RichHandler(console=stderr_console(), show_path=False, rich_tracebacks=False,
                          log_time_format="[%X]")
    handler.nowcast_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.getLogger("nowcast").setLevel(level)
    logging.getLogger("service").setLevel(level)
    # Dask's scheduler and workers (the evaluation's local cluster) narrate every connection at info; dask reads
    # this when it is imported, here and in the worker processes
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning" if verbosity < 1 else "info")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nowcast {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log messages (-vv for debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Precipitation nowcasting with a multi-scale GAN and the pySTEPS baselines."""
    setup_logging(-1 if quiet else verbose)


def _split_names(text: str, what: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InputError(f"no {what} given")
    return list(dict.fromkeys(names))


@app.command()
@user_errors
def forecast(
    inputs: list[Path] = typer.Argument(
        ..., metavar="INPUT...", show_default=False,
        help="A CF-netCDF file holding the past frames, or radar files (one frame each, any format "
             "the importers read), in any order.",
    ),
    model: str = typer.Option(
        ..., "--model", "-m",
        help="Forecaster: persistence, extrapolation, sprog, steps or a trained model (NAME or NAME@VERSION); "
             "see `nowcast models`.",
    ),
    steps: int = typer.Option(12, "--steps", "-n", min=1, help="Number of frames to forecast."),
    output: Path = typer.Option(..., "--output", "-o", help="The forecast, written as CF-netCDF."),
    members: int | None = typer.Option(None, "--members", min=1,
                                       help="Ensemble members (models that draw several futures, e.g. steps)."),
    products: str | None = typer.Option(
        None, "--products",
        help="With --members: what to write, comma-separated from members, probabilities, mean, pm_mean, "
             "quantiles, max_probabilities (P(rate > threshold at some lead)), accumulation_probabilities "
             "(P(rain over the forecast period > threshold in mm)), accumulation_quantiles (the members' rain over "
             "the period, mm) (default: members,probabilities).",
    ),
    thresholds: str | None = typer.Option(
        None, "--thresholds", help="Rain rates (mm/h) of the exceedance probabilities and of max_probabilities "
                                   "(default: 1,4,8).",
    ),
    accumulation_thresholds: str | None = typer.Option(
        None, "--accumulation-thresholds",
        help="Rain (mm) over the forecast period of accumulation_probabilities (default: 1,5,10).",
    ),
    quantiles: str | None = typer.Option(
        None, "--quantiles", help="Quantile levels in [0, 1] of the members, and of accumulation_quantiles "
                                  "(default: 0.1,0.5,0.9).",
    ),
    neighbourhood: float | None = typer.Option(
        None, "--neighbourhood",
        help="Neighbourhood-process the probabilities: each becomes the mean over a square window whose side "
             "grows this many km per minute of lead (IMPROVER's square neighbourhood; 0: none; default: the "
             "model's fitted one, none where it has none).",
    ),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed of the ensemble's noise (same seed, same "
                                                                "members)."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry (default: models/ or "
                                                                      "$NOWCAST_MODELS_DIR)."),
    importer: str | None = typer.Option(
        None, "--importer",
        help="Radar format (pysteps importer name or 'netcdf'); guessed from the files if omitted.",
    ),
    device: str | None = typer.Option(None, "--device", help="Torch device for trained models (cpu, cuda)."),
) -> None:
    """Forecast the next frames after the last ones of INPUT and write them as CF-netCDF.

    With --members, the file holds the ensemble products asked for (members on a CF
    realization axis, exceedance probabilities, means, quantiles, the rain over the period).
    """
    from nowcast.forecasters import get_forecaster
    from nowcast.io.importers import quiet_pysteps_io, read_radar_files
    from nowcast.io.netcdf import write_netcdf
    from nowcast.products import ensemble_products

    quiet_pysteps_io()
    if output.is_dir():
        raise InputError(f"{output}: is a folder; give the name of the netCDF file to write")
    request = _product_request(members, products, thresholds, quantiles, neighbourhood, accumulation_thresholds)
    forecaster = get_forecaster(model, models_dir=models_dir, device=device)
    past = read_radar_files(inputs, importer=importer)
    logger.info("read %d frames of %dx%d from %d file(s)", past.sizes["time"], past.sizes["y"],
                past.sizes["x"], len(inputs))
    tic = time.perf_counter()
    result = forecaster.forecast(past, steps, members=members, seed=seed)
    logger.info("%s forecast of %d steps took %.2f s", model, steps, time.perf_counter() - tic)
    if request is not None:
        result = ensemble_products(result, request)
    reference = past["time"].values[-1]
    write_netcdf(result, output, forecast_reference_time=reference,
                 attrs={"forecast_method": model, "history": f"nowcast {__version__}: forecast"})
    typer.echo(str(output))


def _product_request(members: int | None, products: str | None, thresholds: str | None,
                     quantiles: str | None, neighbourhood: float | None,
                     accumulation_thresholds: str | None = None) -> Any:
    """The products the forecast command writes (a :class:`~nowcast.products.ProductRequest`), None for a single
    forecast."""
    from nowcast.products import ProductRequest

    if members is None:
        for value, option in [(products, "--products"), (thresholds, "--thresholds"), (quantiles, "--quantiles"),
                              (neighbourhood, "--neighbourhood"),
                              (accumulation_thresholds, "--accumulation-thresholds")]:
            if value is not None:
                raise InputError(f"{option}: ensemble products are made from members; give --members N too",
                                 field="members")
        return None
    return ProductRequest.from_options(
        _split_names(products, "product") if products is not None else None,
        _split_numbers(thresholds, "thresholds") if thresholds is not None else None,
        _split_numbers(quantiles, "quantile_levels") if quantiles is not None else None,
        neighbourhood,
        _split_numbers(accumulation_thresholds, "accumulation_thresholds") if accumulation_thresholds is not None
        else None,
    )


def _split_numbers(text: str, field: str) -> list[float]:
    numbers = []
    for part in _split_names(text, field):
        try:
            numbers.append(float(part))
        except ValueError:
            raise InputError(f"{field}: {part!r} is not a number", field=field) from None
    return numbers


@app.command()
@user_errors
def evaluate(
    methods: str = typer.Option("persistence,extrapolation", "--methods",
                                help="Comma-separated forecasters to score."),
    events: str = typer.Option("all", "--events",
                               help="'all' or comma-separated event ids of the catalogue."),
    out: Path = typer.Option(..., "--out", help="Folder for scores.json, scores.md and the plots."),
    steps: int = typer.Option(12, "--steps", min=1, help="Frames forecast from each start time."),
    stride: int = typer.Option(6, "--stride", min=1, help="Frames between consecutive start times."),
    n_input: int = typer.Option(4, "--n-input", min=1, help="Past frames given to each forecast."),
    data_root: Path | None = typer.Option(
        None, "--data-root",
        help="Radar archive (default: $NOWCAST_DATA_ROOT or ../shared/data/pysteps-data).",
    ),
    catalogue: Path | None = typer.Option(None, "--catalogue", help="Event catalogue file (default: the "
                                                                     "packaged one)."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry for trained models."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    members: int | None = typer.Option(
        None, "--members", min=2,
        help="Score every method that draws ensemble members (e.g. steps) as an ensemble of N members: CRPS, "
             "Brier skill, reliability, ROC, rank histogram, spread/skill, per lead and (CRPS, Brier, ROC, "
             "reliability) of the forecast's maximum; its probability-matched mean gets the deterministic scores.",
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="With --members: the run's seed; each start time's "
                                                       "members are drawn from a seed derived from it."),
    brier_reference: str = typer.Option(
        "steps", "--brier-reference",
        help="With --members: the ensemble method the Brier skill is measured against ('none': no skill; "
             "the default, steps, only where it is among the methods).",
    ),
    scheduler: str = typer.Option(
        "local", "--scheduler",
        help="Where the start times are forecast: 'local' (a Dask cluster of --workers processes here), 'none' "
             "(in this process) or a Dask scheduler's address (tcp://host:8786). The scores are the same.",
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="With --scheduler local: worker processes "
                                                                       "(default: one per core)."),
    probability_neighbourhood: float = typer.Option(
        0.0, "--probability-neighbourhood", min=0.0,
        help="With --members: score every ensemble's probabilities neighbourhood-processed, in a square window "
             "growing this many km per minute of lead (0: the members' own fractions).",
    ),
    probability_thresholds: str = typer.Option(
        "1,4,8", "--probability-thresholds",
        help="With --members: comma-separated increasing rain rates (mm/h) of the scored exceedance probabilities, "
             "per lead and of the forecast's maximum.",
    ),
    accumulation_thresholds: str = typer.Option(
        "1,5,10", "--accumulation-thresholds",
        help="With --members: comma-separated increasing amounts of rain (mm) over each forecast's leads whose "
             "exceedance probabilities are scored (as accumulation_probabilities publishes them).",
    ),
) -> None:
    """Score forecasters over sliding start times of catalogue events; write tables and plots."""
    from nowcast.evaluate import evaluate as run_evaluation
    from nowcast.io.importers import quiet_pysteps_io

    quiet_pysteps_io()
    method_names = _split_names(methods, "method")
    event_ids, loader = _catalogue_events(events, catalogue, data_root, allow_all=True)
    reference = None if brier_reference.strip().lower() in ("", "none") else brier_reference.strip()
    settings = _score_settings(probability_neighbourhood,
                               _split_numbers(probability_thresholds, "probability_thresholds"),
                               _split_numbers(accumulation_thresholds, "accumulation_thresholds"))
    report = run_evaluation(method_names, event_ids, n_input=n_input, steps=steps, stride=stride,
                            loader=loader, out_dir=out, progress=progress, models_dir=models_dir,
                            console=stderr_console(), members=members, seed=seed, brier_reference=reference,
                            scheduler=_scheduler(scheduler), workers=workers,
                            settings=settings)
    timing = ", ".join(f"{name} {t['mean_seconds_per_forecast']:.2f} s"
                       for name, t in report["timing"].items() if t["mean_seconds_per_forecast"] is not None)
    logger.info("%d start times evaluated in %.0f s (mean per forecast: %s)",
                report["overall"]["n_evaluated"], report["runtime_seconds"], timing or "none")
    typer.echo(str(out / "scores.md"))


def _score_settings(probability_neighbourhood: float, probability_thresholds: list[float],
                    accumulation_thresholds: list[float]) -> Any:
    from nowcast.verification import ScoreSettings

    try:
        return ScoreSettings(probability_neighbourhood_km_per_minute=probability_neighbourhood,
                             probability_thresholds_mmh=tuple(probability_thresholds),
                             accumulation_thresholds_mm=tuple(accumulation_thresholds))
    except ValueError as exc:
        field = "accumulation_thresholds" if "accumulation" in str(exc) else "probability_thresholds"
        raise InputError(str(exc), field=field) from None


def _scheduler(text: str) -> str | None:
    return None if text.strip().lower() in ("", "none") else text.strip()


@app.command()
@user_errors
def models(
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry (default: models/ or "
                                                                      "$NOWCAST_MODELS_DIR)."),
) -> None:
    """List the forecasters: the baselines and the trained models with their versions, which one is live and
    why (promoted by whom, and its gate report)."""
    from nowcast import artifacts
    from nowcast.forecasters import builtin_names

    table = Table("name", "kind", "versions", "live")
    for name in builtin_names():
        table.add_row(name, "baseline", "–", "–")
    for name in artifacts.list_models(models_dir):
        versions = [_version_text(name, version, models_dir) for version in artifacts.list_versions(name, models_dir)]
        table.add_row(name, "trained", "\n".join(versions),
                      _live_text(artifacts.live_record(name, models_dir), artifacts.default_version(name, models_dir)))
    Console().print(table)


def _version_text(name: str, version: str, models_dir: Path | None) -> str:
    """A version, with its retrain gate's decision where a retrain made it."""
    from nowcast import artifacts
    from nowcast.errors import UnreadableFileError

    try:
        decision = (artifacts.card(name, version, models_dir).get("retrain") or {}).get("decision")
    except UnreadableFileError:
        return f"{version} (unreadable card)"
    return f"{version} (gate: {decision})" if decision else version


def _live_text(record: dict[str, Any] | None, served: str) -> str:
    """Which version is live and why, in a few lines."""
    if record is None:
        return f"{served} (latest; none promoted)"
    lines = [f"{record['version']}: {record['action']} by {record['by']} at {record['promoted_at']}",
             f"reason: {record['reason']}"]
    gate = record.get("gate_report")
    if gate:
        lines.append(f"gate: {gate.get('decision')} against {gate.get('compared_with')}")
        lines += [f"  {'✓' if c.get('passed') else '✗'} {c.get('name')}: {c.get('summary')}"
                  for c in gate.get("criteria", [])]
    return "\n".join(lines)


@app.command()
@user_errors
def retrain(
    config: Path = typer.Option(..., "--config", "-c", help="Retrain config (TOML or JSON): name, split, "
                                                            "experiment, evaluation, gate; unknown keys are an error."),
    out: Path = typer.Option(..., "--out", help="Work folder: split.json, run/, evaluation/, gate.json, report.md, "
                                                "result.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue the job in --out where it stopped."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry (default: models/ or "
                                                                      "$NOWCAST_MODELS_DIR)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Evaluation on 'local' (a Dask cluster here), "
                                         "'none' (this process) or a Dask scheduler's address (default: the "
                                         "config's)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="With a local cluster: worker processes."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Retrain a model: split, train, evaluate against the live version and the baselines, gate, export as a new
    version and promote it only when it passed (runs data-parallel under torchrun too)."""
    from nowcast.io.importers import quiet_pysteps_io
    from nowcast.retrain import load_config
    from nowcast.retrain import retrain as run_retrain

    quiet_pysteps_io()
    result = run_retrain(load_config(config), out, resume=resume, models_dir=models_dir, progress=progress,
                         scheduler=scheduler, workers=workers)
    if not result["finished"]:
        return  # a torchrun rank other than 0: rank 0 reports
    typer.echo(json.dumps({k: result[k] for k in ("name", "version", "decision", "promoted", "live_version")}))
    typer.echo(str(out / "report.md"))


@app.command()
@user_errors
def promote(
    model: str = typer.Argument(..., metavar="NAME@VERSION", help="The version to make live."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the live pointer's history)."),
    by: str | None = typer.Option(None, "--by", help="Who (default: the user name)."),
    force: bool = typer.Option(False, "--force", help="Promote a version whose retrain gate refused it."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry (default: models/ or "
                                                                      "$NOWCAST_MODELS_DIR)."),
) -> None:
    """Make a version the live one of its name; the service follows (SIGHUP, admin call or its poll)."""
    from nowcast import artifacts

    name, _, version = model.partition("@")
    if not version:
        raise InputError(f"{model!r}: give the version to promote, as NAME@VERSION")
    card = artifacts.card(name, version, models_dir)
    gate = (card.get("retrain") or {}).get("gate")
    if gate and gate.get("decision") != "promote" and not force:
        failed = ", ".join(c["name"] for c in gate.get("criteria", []) if not c.get("passed"))
        raise InputError(f"{model} failed its retrain gate ({failed}); pass --force to promote it anyway")
    summary = None
    if gate:
        from nowcast.retrain import gate_summary

        summary = gate_summary(gate, version)
    record = artifacts.promote(name, version, by=by or _user_name(), reason=reason, gate_report=summary,
                               models_dir=models_dir)
    typer.echo(f"{name}@{record['version']} is live")


@app.command()
@user_errors
def rollback(
    name: str = typer.Argument(..., help="The model whose previous live version comes back."),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the live pointer's history)."),
    by: str | None = typer.Option(None, "--by", help="Who (default: the user name)."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry (default: models/ or "
                                                                      "$NOWCAST_MODELS_DIR)."),
) -> None:
    """Make the version that was live before the current one live again."""
    from nowcast import artifacts

    record = artifacts.rollback(name, by=by or _user_name(), reason=reason, models_dir=models_dir)
    typer.echo(f"{name}@{record['version']} is live")


def _user_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@app.command()
@user_errors
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Experiment config (TOML or JSON); unknown keys "
                                                            "are an error."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint.pt, metrics.jsonl, config.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    fit_minutes: float | None = typer.Option(
        None, "--fit-minutes", min=0.1,
        help="Set a new run's train.steps (at most the config's) so that its loop takes about this many minutes "
             "on this machine, timed on a throwaway copy of the models first; the run's config.json records the "
             "steps chosen (resume with --config RUN/config.json). For a machine lent for a fixed time."),
) -> None:
    """Train a multi-scale GAN on real events (the same command runs data-parallel under torchrun)."""
    from nowcast import config as config_io
    from nowcast.gan.config import ExperimentConfig
    from nowcast.gan.train import train as run_training

    experiment = config_io.load(ExperimentConfig, config)
    result = run_training(experiment, out, resume=resume, progress=progress, fit_minutes=fit_minutes)
    if result:
        typer.echo(json.dumps(result))


@app.command()
@user_errors
def export(
    run: Path = typer.Argument(..., help="A training run folder (from `nowcast train`)."),
    name: str = typer.Option(..., "--name", help="Model name in the registry, e.g. default-gan."),
    version: str | None = typer.Option(None, "--version", help="v1, v2, ... (default: the next one)."),
    evaluation: Path | None = typer.Option(None, "--evaluation",
                                           help="scores.json of `nowcast evaluate` to put in the model card."),
    description: str = typer.Option("", "--description", help="One line for the model card."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry (default: models/)."),
) -> None:
    """Write a run's generator into the versioned model registry with its model card."""
    from nowcast.errors import UnreadableFileError
    from nowcast.gan.export import export_run
    from nowcast.gan.train import CHECKPOINT

    if not (run / CHECKPOINT).is_file():
        raise UnreadableFileError(f"{run}: no {CHECKPOINT}; is it a `nowcast train` run folder?")
    if evaluation is not None and not evaluation.is_file():
        raise UnreadableFileError(f"{evaluation}: no such file")
    folder = export_run(run, name, version=version, models_dir=models_dir, evaluation=evaluation,
                        description=description)
    typer.echo(str(folder))


@app.command()
@user_errors
def retune(
    source: str = typer.Argument(..., help="The registered model to start from, NAME@VERSION."),
    settings: list[str] = typer.Option(..., "--set", help="KEY=VALUE of a member setting (repeatable), e.g. "
                                                           "member_intensity_db=1.0, member_matching=pooled or "
                                                           "member_rate_map_mmh=[1,4] (a JSON list)."),
    version: str | None = typer.Option(None, "--version", help="v1, v2, ... (default: the next one)."),
    evaluation: Path | None = typer.Option(None, "--evaluation", help="scores.json of `nowcast evaluate` that "
                                                                      "scored the retuned model as NAME@VERSION."),
    description: str = typer.Option("", "--description", help="Why, in a few words: added to the card's "
                                                              "description after the source's and the change."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry (default: models/)."),
) -> None:
    """Register a new version of a model with its weights and other member settings (no retraining)."""
    from nowcast.errors import InputError, UnreadableFileError
    from nowcast.gan.export import retune_version

    values: dict[str, Any] = {}
    for item in settings:
        key, separator, value = item.partition("=")
        if not separator or not value.strip():
            raise InputError(f"--set {item!r}: expected KEY=VALUE", field="settings")
        values[key.strip()] = _setting_value(item, value.strip())
    if evaluation is not None and not evaluation.is_file():
        raise UnreadableFileError(f"{evaluation}: no such file")
    folder = retune_version(source, values, version=version, models_dir=models_dir, evaluation=evaluation,
                            description=description)
    typer.echo(str(folder))


def _setting_value(item: str, value: str) -> Any:
    """A number, true or false, a JSON list (a table, e.g. member_rate_map=[[1.1, 4.3], [1.0, 4.1]]) or a
    named choice."""
    from nowcast.errors import InputError

    if value in ("true", "false"):
        return value == "true"
    if value.startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise InputError(f"--set {item!r}: not a valid JSON list ({exc})", field="settings") from exc
    try:
        return float(value)
    except ValueError:
        return value  # a named choice, e.g. member_matching=pooled


# the options of the fits on training events (fit-spread-gain, fit-neighbourhood)
FitEvents = Annotated[str, typer.Option("--events", help="Comma-separated event ids of the catalogue to fit on: "
                                                         "training events, not the ones it will be scored on.")]
FitMembers = Annotated[int, typer.Option("--members", min=2, help="Members drawn per start time.")]
FitSteps = Annotated[int, typer.Option("--steps", min=1, help="Frames forecast from each start time.")]
FitStride = Annotated[int, typer.Option("--stride", min=1, help="Frames between consecutive start times.")]
FitSeed = Annotated[int, typer.Option("--seed", min=0, help="Start time k of an event draws from seed + k.")]
FitVersion = Annotated[str | None, typer.Option("--version", help="With --register: v1, v2, ... (default: the "
                                                                  "next one).")]
FitOut = Annotated[Path | None, typer.Option("--out", help="Write every candidate's scores to this JSON file.")]
FitDataRoot = Annotated[Path | None, typer.Option("--data-root", help="Radar archive (default: $NOWCAST_DATA_ROOT "
                                                                      "or ../shared/data/pysteps-data).")]
FitCatalogue = Annotated[Path | None, typer.Option("--catalogue", help="Event catalogue file (default: the "
                                                                       "packaged one).")]
FitModelsDir = Annotated[Path | None, typer.Option("--models-dir", help="Model registry (default: models/).")]


@app.command("fit-spread-gain")
@user_errors
def fit_spread_gain(
    model: Annotated[str, typer.Argument(help="The registered GAN ensemble, NAME@VERSION.")],
    events: FitEvents,
    starts: str | None = typer.Option(None, "--starts", help="Comma-separated candidate gains at 0 min "
                                                              "(default: 1, 1.1, 1.25)."),
    ends: str | None = typer.Option(None, "--ends", help="Comma-separated candidate gains at 60 min and after "
                                                          "(default: 0.8, 0.9, 1, 1.1, 1.2, 1.35)."),
    members: FitMembers = 20,
    steps: FitSteps = 12,
    stride: FitStride = 6,
    seed: FitSeed = 0,
    register: bool = typer.Option(False, "--register", help="Register the best gains as the model's next "
                                                            "version (see `nowcast retune`)."),
    version: FitVersion = None,
    out: FitOut = None,
    data_root: FitDataRoot = None,
    catalogue: FitCatalogue = None,
    models_dir: FitModelsDir = None,
) -> None:
    """Fit a GAN ensemble's spread gain (start, end) to its own members on training events by the CRPS."""
    from nowcast.files import write_text_atomically
    from nowcast.gan.export import retune_version
    from nowcast.io.importers import quiet_pysteps_io
    from nowcast.spread_gain import DEFAULT_ENDS, DEFAULT_STARTS, gain_settings
    from nowcast.spread_gain import fit_spread_gain as run_fit

    quiet_pysteps_io()
    event_ids, loader = _catalogue_events(events, catalogue, data_root)
    fit = run_fit(model, event_ids, starts=_gain_list(starts, "--starts") if starts else DEFAULT_STARTS,
                  ends=_gain_list(ends, "--ends") if ends else DEFAULT_ENDS,
                  members=members, steps=steps, stride=stride, seed=seed, models_dir=models_dir, loader=loader)
    if out is not None:
        write_text_atomically(out, json.dumps(fit.to_dict(), indent=1))
    _print_whole(_gain_table(fit))
    if register:
        start, end = fit.best
        off = fit.candidates.index((1.0, 1.0)) if (1.0, 1.0) in fit.candidates else None
        against = f"; off (1 -> 1): {fit.score[off]:.4f}" if off is not None else ""
        description = (f"spread gain {start:g} -> {end:g} fitted on {', '.join(fit.events)} "
                       f"({members} members, mean CRPS {fit.score.min():.4f}{against})")
        folder = retune_version(model, gain_settings(start, end),
                                version=version, models_dir=models_dir, description=description)
        typer.echo(str(folder))


@app.command("fit-rate-map")
@user_errors
def fit_rate_map(
    model: Annotated[str, typer.Argument(help="The registered GAN ensemble, NAME@VERSION.")],
    events: FitEvents,
    thresholds: str | None = typer.Option(None, "--thresholds", help="Comma-separated increasing rain rates "
                                                                      "(mm/h) the map matches the observed "
                                                                      "area above (default: 0.5,1,2,4,8,16)."),
    member_thresholds: str | None = typer.Option(None, "--member-thresholds", help="Comma-separated thresholds, "
                                                 "some of --thresholds, that the members' own map keeps; the "
                                                 "probability-matched mean is then mapped at all of them "
                                                 "(mean_rate_map). Default: the members take them all."),
    members: FitMembers = 20,
    steps: FitSteps = 12,
    stride: FitStride = 6,
    seed: FitSeed = 0,
    register: bool = typer.Option(False, "--register", help="Register the map as the model's next version "
                                                            "(see `nowcast retune`)."),
    version: FitVersion = None,
    out: Path | None = typer.Option(None, "--out", help="Write the map and the areas it corrects to this JSON "
                                                         "file."),
    data_root: FitDataRoot = None,
    catalogue: FitCatalogue = None,
    models_dir: FitModelsDir = None,
) -> None:
    """Fit a GAN ensemble's rate map per lead to its own members on training events: the members' area above
    each threshold made the observed one."""
    from nowcast.files import write_text_atomically
    from nowcast.gan.export import retune_version
    from nowcast.io.importers import quiet_pysteps_io
    from nowcast.rate_map import DEFAULT_THRESHOLDS_MMH
    from nowcast.rate_map import fit_rate_map as run_fit

    quiet_pysteps_io()
    event_ids, loader = _catalogue_events(events, catalogue, data_root)
    fit = run_fit(model, event_ids, thresholds_mmh=_gain_list(thresholds, "--thresholds") if thresholds
                  else DEFAULT_THRESHOLDS_MMH, members=members, steps=steps, stride=stride, seed=seed,
                  models_dir=models_dir, loader=loader)
    kept = _gain_list(member_thresholds, "--member-thresholds") if member_thresholds else None
    settings = fit.settings(kept)
    if out is not None:
        write_text_atomically(out, json.dumps(fit.to_dict(kept), indent=1))
    _print_whole(_rate_map_table(fit))
    if register:
        description = (f"rate map fitted on {', '.join(fit.events)} ({members} members, "
                       f"{sum(fit.start_times.values())} start times)")
        if kept:
            description += f"; the members' at {'/'.join(f'{t:g}' for t in kept)} mm/h, the mean's at all"
        folder = retune_version(model, settings, version=version, models_dir=models_dir, description=description)
        typer.echo(str(folder))


@app.command("fit-neighbourhood")
@user_errors
def fit_neighbourhood(
    model: Annotated[str, typer.Argument(help="A forecaster that draws members: a GAN ensemble (NAME@VERSION), "
                                              "steps.")],
    events: FitEvents,
    rates: str | None = typer.Option(None, "--rates", help="Comma-separated candidate km per minute of lead "
                                                            "(default: 0.2, 0.4, 0.6, 0.8, 1, 1.3; 0 is always one)."),
    thresholds: str | None = typer.Option(None, "--thresholds", help="Rain rates (mm/h) of the probabilities "
                                                                      "scored (default: 1,4,8)."),
    members: FitMembers = 20,
    steps: FitSteps = 12,
    stride: FitStride = 6,
    seed: FitSeed = 0,
    register: bool = typer.Option(False, "--register", help="Register the best as the GAN ensemble's next "
                                                            "version, whose probability products then use it "
                                                            "where a request does not name one."),
    version: FitVersion = None,
    out: FitOut = None,
    data_root: FitDataRoot = None,
    catalogue: FitCatalogue = None,
    models_dir: FitModelsDir = None,
) -> None:
    """Fit the probabilities' neighbourhood (km per minute of lead) to an ensemble on training events by the
    Brier skill against none."""
    from nowcast.files import write_text_atomically
    from nowcast.gan.export import retune_version
    from nowcast.io.importers import quiet_pysteps_io
    from nowcast.neighbourhood_fit import DEFAULT_RATES
    from nowcast.neighbourhood_fit import fit_neighbourhood as run_fit
    from nowcast.verification import THRESHOLDS_MMH

    quiet_pysteps_io()
    if register and "@" not in model:
        raise InputError(f"--register: {model} is no registered GAN ensemble (NAME@VERSION)", field="model")
    event_ids, loader = _catalogue_events(events, catalogue, data_root)
    fit = run_fit(model, event_ids, rates=_split_numbers(rates, "rates") if rates else DEFAULT_RATES,
                  thresholds=_split_numbers(thresholds, "thresholds") if thresholds else THRESHOLDS_MMH,
                  members=members, steps=steps, stride=stride, seed=seed, models_dir=models_dir, loader=loader)
    if out is not None:
        write_text_atomically(out, json.dumps(fit.to_dict(), indent=1))
    _print_whole(_neighbourhood_table(fit))
    typer.echo(f"best: {fit.best:g} km per minute of lead")
    if register:
        description = (f"probability neighbourhood {fit.best:g} km per minute of lead fitted on "
                       f"{', '.join(fit.events)} ({members} members, Brier skill against none "
                       f"{fit.skill[fit.rates.index(fit.best)]:+.4f})")
        folder = retune_version(model, {"probability_neighbourhood_km_per_minute": fit.best}, version=version,
                                models_dir=models_dir, description=description)
        typer.echo(str(folder))


def _catalogue_events(events: str, catalogue: Path | None, data_root: Path | None, *,
                      allow_all: bool = False) -> tuple[list[str], Callable[[str], Any]]:
    """The catalogue's ids of the comma-separated ``events`` ("all": every event, where allowed) and a loader of
    their frames."""
    from nowcast.io.catalogue import get_event, load_catalogue, load_event

    known = load_catalogue(catalogue)
    if allow_all and events.strip().lower() == "all":
        event_ids = list(known)
    else:
        event_ids = [get_event(event_id, known).id for event_id in _split_names(events, "event")]
    if not event_ids:
        raise InputError("the catalogue holds no event")

    def loader(event_id: str) -> Any:
        # missing files become all-NaN frames: only the start times that need them are skipped, not the event
        return load_event(known[event_id], root=data_root, on_missing="nan")

    return event_ids, loader


def _print_whole(table: Any) -> None:
    """Print a table; read from a log or a pipe it is still whole (rich's 80 columns there would cut it)."""
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)


def _neighbourhood_table(fit: Any) -> Any:
    """The candidates, best first: Brier skill against none, per event, and mean Brier per threshold."""
    import numpy as np

    table = Table("km/min", "skill", *fit.events, *(f"Brier >{t:g}" for t in fit.thresholds),
                  title=f"{fit.model}: neighbourhood candidates ({sum(fit.start_times.values())} start times)")
    per_event = fit.skill_per_event()
    mean_brier = np.nanmean(fit.brier, axis=(1, 2))  # (rate, threshold)
    for r in np.argsort(-fit.skill):
        table.add_row(f"{fit.rates[r]:g}", f"{fit.skill[r]:+.4f}", *(f"{v:+.4f}" for v in per_event[r]),
                      *(f"{v:.5f}" for v in mean_brier[r]))
    return table


def _gain_list(text: str, option: str) -> list[float]:
    try:
        return [float(item) for item in _split_names(text, "gain")]
    except ValueError as exc:
        raise InputError(f"{option} {text!r}: expected comma-separated numbers", field=option) from exc


def _rate_map_table(fit: Any) -> Any:
    """Per lead: the members' area above each threshold over the observed one, and the rate mapped onto it."""
    table = Table("lead (min)", *(f">{t:g} mm/h" for t in fit.thresholds_mmh),
                  title=f"{fit.model}: members' area / observed, and the members' rate mapped onto each threshold "
                        f"({sum(fit.start_times.values())} start times)")
    for minutes, ratios, rates in zip(fit.minutes, fit.area_ratio, fit.member_rates, strict=True):
        table.add_row(f"{minutes:g}", *(f"{r:.2f} ({u:.3g})" for r, u in zip(ratios, rates, strict=True)))
    return table


def _gain_table(fit: Any) -> Any:
    """The candidates, best first: mean CRPS, per event, and spread/skill at the first, middle and last lead."""
    import numpy as np

    leads = sorted({0, (fit.spread_skill.shape[1] - 1) // 2, fit.spread_skill.shape[1] - 1})
    table = Table("start", "end", "CRPS", *fit.events, *(f"s/s lead {k + 1}" for k in leads),
                  title=f"{fit.model}: spread gain candidates ({sum(fit.start_times.values())} start times)")
    per_event = np.nanmean(fit.crps, axis=2)
    for c in np.argsort(fit.score):
        start, end = fit.candidates[c]
        table.add_row(f"{start:g}", f"{end:g}", f"{fit.score[c]:.4f}", *(f"{v:.4f}" for v in per_event[c]),
                      *(f"{fit.spread_skill[c, k]:.2f}" for k in leads))
    return table


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for input.nc, forecast.nc, maps.png."),
    model: str = typer.Option("default-gan", "--model", help="The model to run (NAME or NAME@VERSION)."),
    steps: int = typer.Option(12, "--steps", min=1, help="Frames to forecast."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry (default: models/)."),
) -> None:
    """The main job on the embedded default: the shipped model on a held-out real case."""
    from nowcast.demo import run_demo

    result = run_demo(out, model=model, models_dir=models_dir, steps=steps)
    typer.echo(f"case: {result['case']}, grid {result['grid'][0]}x{result['grid'][1]}")
    typer.echo("CSI at 1 / 4 mm/h at +30 and +60 min:")
    for name, scores in result["methods"].items():
        c1, c4 = scores["csi_1mmh"], scores["csi_4mmh"]
        typer.echo(f"  {name:<16} +30: {c1.get('30', float('nan')):.3f} / {c4.get('30', float('nan')):.3f}"
                   f"   +60: {c1.get('60', float('nan')):.3f} / {c4.get('60', float('nan')):.3f}")
    for path in result["files"]:
        typer.echo(path)


@app.command()
@user_errors
def watch(
    config: Path = typer.Argument(..., help="Watch config (TOML or JSON; see docs/operations.md)."),
    input_dir: Path | None = typer.Option(None, "--input", help="Folder the radar files arrive in (overrides "
                                                               "input_dir)."),
    output_dir: Path | None = typer.Option(None, "--output", help="Product folder (overrides output_dir)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Forecaster (overrides model and "
                                                                 "$NOWCAST_MODEL)."),
    once: bool = typer.Option(False, "--once", help="Process the files there are, then exit."),
    metrics_port: int | None = typer.Option(None, "--metrics-port", min=0, max=65535,
                                            help="Serve Prometheus metrics on this port."),
) -> None:
    """Forecast a live radar feed: follow a folder, write a product per new frame into an output folder."""
    import signal
    import threading

    from nowcast.watch import Watcher, load_watch_config

    if not stderr_console().is_terminal:
        _plain_log_lines()
    overrides = {"input_dir": str(input_dir) if input_dir else None,
                 "output_dir": str(output_dir) if output_dir else None, "model": model}
    watcher = Watcher(load_watch_config(config, **overrides))
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, registry=watcher.metrics.registry)
        logger.info("metrics on port %d", metrics_port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    watcher.run(stop, once=once)


def _plain_log_lines() -> None:
    """One unwrapped line per record, for a journal or a container's log rather than a terminal."""
    import sys

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "nowcast_cli", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.nowcast_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)


@app.command()
@user_errors
def replay(
    event: str = typer.Argument(..., help="Event id of the catalogue, e.g. fmi-20170509."),
    to: Path = typer.Option(..., "--to", help="Folder to copy the files into (in the source's folder layout)."),
    interval: float = typer.Option(5.0, "--interval", min=0.0, help="Seconds between two files."),
    frames: int | None = typer.Option(None, "--frames", min=1, help="Copy only the first N files."),
    start: str | None = typer.Option(None, "--start", help="Valid time of the first file (default: the event's "
                                                           "start)."),
    write_seconds: float = typer.Option(0.0, "--write-seconds", min=0.0,
                                        help="Write each file under its final name over this many seconds, as a "
                                             "slow writer does (default: temporary name, then rename)."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Radar archive (default: $NOWCAST_DATA_ROOT or ../shared/data/pysteps-data).",
    ),
    catalogue: Path | None = typer.Option(None, "--catalogue", help="Event catalogue file."),
) -> None:
    """Replay an archived event into a folder, file by file, as a live feed delivers it (for tests and demos)."""
    from nowcast.io.catalogue import get_event
    from nowcast.watch import replay_event

    written = replay_event(get_event(event, catalogue), to, interval_s=interval, root=data_root, start=start,
                           frames=frames, write_seconds=write_seconds)
    typer.echo(f"{len(written)} files replayed into {to}")


if __name__ == "__main__":  # python -m nowcast.cli (e.g. under torchrun)
    app()
