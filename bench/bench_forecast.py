"""Benchmark: one forecast (4 frames in, 12 out) by the GAN and by pySTEPS extrapolation.

Both run in the same process on the same input, so their times compare. Also reports
the GAN's training throughput (samples/s, on the synthetic source) and peak memory.

    python bench/bench_forecast.py --model default-gan --size 512 --repeats 5
    python bench/bench_forecast.py --real mch-20160711   # a real frame window instead of synthetic rain

Prints a JSON record; ``--output FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_forecast(forecaster, past, steps: int, repeats: int) -> dict[str, float]:
    forecaster.forecast(past, steps)  # warm-up: imports, allocations, lazy initialisation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forecaster.forecast(past, steps)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def input_window(args: argparse.Namespace):
    if args.real:
        from nowcast.io.catalogue import load_event

        seq = load_event(args.real)
        seq = seq.isel(time=slice(0, 4))
        if args.size:
            seq = seq.isel(y=slice(0, args.size), x=slice(0, args.size))
        return seq
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    return synthetic_sequence(SyntheticRain(ny=args.size, nx=args.size, frames=4), seed=0)


def training_throughput(model_name: str, steps: int) -> dict[str, float]:
    from nowcast import artifacts
    from nowcast import config as config_io
    from nowcast.gan.config import ExperimentConfig

    name, _, version = model_name.partition("@")  # NAME or NAME@VERSION, as the registry takes it
    spec = artifacts.read_json(artifacts.resolve(name, version or None) / artifacts.CONFIG_FILE)["experiment"]
    cfg = config_io.from_dict(ExperimentConfig, spec)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, event_source="synthetic", train_events=("1", "2"), val_events=()),
        train=dataclasses.replace(cfg.train, steps=steps, log_every=steps, checkpoint_every=10**9),
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        samples_per_s = train_steps(cfg, tmp, steps)
        total = time.perf_counter() - t0
    return {"samples_per_s": samples_per_s, "steps": steps, "wall_s_with_startup": total,
            "batch_size": cfg.train.batch_size, "patch_size": cfg.data.patch_size}


def train_steps(cfg, folder: str, steps: int) -> float:
    """Samples per second of G (and D) updates over ``steps`` steps (the loop alone)."""
    from nowcast.gan.train import train

    result = train(cfg, Path(folder) / "timed", progress=False)
    return float(result["samples_per_s"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default-gan")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real", help="a catalogue event to take the input frames from")
    parser.add_argument("--train-steps", type=int, default=10, help="0 skips the training throughput")
    parser.add_argument("--device", default=None)
    parser.add_argument("--output")
    args = parser.parse_args(argv)

    from nowcast.forecasters import get_forecaster

    past = input_window(args)
    record: dict[str, object] = {
        "grid": list(past.shape[1:]),
        "input_frames": 4,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    gan = get_forecaster(args.model, device=args.device)
    record["device"] = str(getattr(gan, "device", "cpu"))
    if record["device"].startswith("cuda"):
        record["gpu"] = torch.cuda.get_device_name(0)
    record["gan"] = time_forecast(gan, past, args.steps, args.repeats)
    record["extrapolation"] = time_forecast(get_forecaster("extrapolation"), past, args.steps, args.repeats)
    record["gan_speedup"] = record["extrapolation"]["median_s"] / record["gan"]["median_s"]
    record["peak_rss_mb_inference"] = peak_rss_mb()
    if args.train_steps:
        record["training"] = training_throughput(args.model, args.train_steps)
        record["peak_rss_mb_total"] = peak_rss_mb()
    text = json.dumps(record, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
