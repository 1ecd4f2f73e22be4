"""CLI commands for the model's life cycle and the service: train, export, demo, serve.

Registered on :data:`nowcast.cli.app` when that module is imported.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from nowcast.cli import app, user_errors

logger = logging.getLogger("nowcast.cli")


@app.command()
@user_errors
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Experiment config (TOML or JSON); unknown keys "
                                                            "are an error."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoint.pt, metrics.jsonl, config.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a multi-scale GAN on real events (the same command runs data-parallel under torchrun)."""
    from nowcast import config as config_io
    from nowcast.gan.config import ExperimentConfig
    from nowcast.gan.train import train as run_training

    experiment = config_io.load(ExperimentConfig, config)
    result = run_training(experiment, out, resume=resume, progress=progress)
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
def serve(
    host: str | None = typer.Option(None, "--host", help="Interface (default $NOWCAST_HOST or 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default $NOWCAST_PORT or 8080)."),
    workers: int | None = typer.Option(None, "--workers", help="uvicorn worker processes."),
    model: str | None = typer.Option(None, "--model", help="Model to serve (default $NOWCAST_MODEL)."),
    model_version: str | None = typer.Option(None, "--model-version", help="Its version (default: latest)."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda or auto."),
    models_dir: Path | None = typer.Option(None, "--models-dir", help="Model registry (default: models/)."),
) -> None:
    """Serve the forecast API (FastAPI + uvicorn); settings also come from NOWCAST_* variables."""
    from service.server import serve as run_server

    run_server(host, port, workers, model=model, model_version=model_version, device=device,
               models_dir=str(models_dir) if models_dir else None)
