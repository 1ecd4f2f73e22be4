"""Benchmark: one deterministic forecast (4 frames in, 12 out) by the GAN and by pySTEPS extrapolation.

Both run in the same process on the same input, in turns (so that a slow spell of the
machine slows both), and the ratio is the median of each turn's ratio; the target is
the GAN in at most a quarter of extrapolation's time at 512×512. Cases: square windows
of ``--sizes`` (synthetic rain, or a real event's corner with ``--real``) and the whole
grid of ``--largest`` (the largest grid of the shared archive). Each case's peak memory
is measured in a fresh process: the resident-set peak of one forecast above what the
process held once the model and the input were loaded. Also reports the GAN's training
throughput (samples/s, on the synthetic source).

    python bench/bench_forecast.py --model default-gan --sizes 256,512 --largest fmi-20170509
    python bench/bench_forecast.py --real mch-20160711 --sizes 512 --train-steps 0

Prints a JSON record; ``--output FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nowcast.files import write_text_atomically

#: DGMR's generator, 12 frames at 256×256 on this project's 2-core CPU, as quoted in the issue that set
#: the target (not measured here: DGMR's weights come from a model hub this machine cannot reach)
DGMR_256_REFERENCE_S = 1.7


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_forecast(forecaster, past, steps: int, repeats: int) -> dict[str, float]:
    forecaster.forecast(past, steps)  # warm-up: imports, allocations, lazy initialisation
    times = [_seconds(forecaster, past, steps) for _ in range(repeats)]
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def time_side_by_side(gan, extrapolation, past, steps: int, repeats: int) -> dict[str, object]:
    """Both forecasters timed in turns, so that a slower spell of the machine hits both alike.

    The ratio is the median of the ratios of each turn's two times.
    """
    gan.forecast(past, steps)
    extrapolation.forecast(past, steps)
    pairs = [(_seconds(gan, past, steps), _seconds(extrapolation, past, steps)) for _ in range(repeats)]
    summary = {}
    for name, times in (("gan", [g for g, _ in pairs]), ("extrapolation", [e for _, e in pairs])):
        summary[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    ratios = [g / e for g, e in pairs]
    summary["gan_time_over_extrapolation"] = statistics.median(ratios)
    summary["gan_time_over_extrapolation_range"] = [min(ratios), max(ratios)]
    return summary


def _seconds(forecaster, past, steps: int) -> float:
    t0 = time.perf_counter()
    forecaster.forecast(past, steps)
    return time.perf_counter() - t0


def input_window(case: str, real: str | None):
    """A case's 4 past frames: ``N`` (an N×N window) or ``event:NAME`` (that event's whole grid)."""
    from nowcast.io.catalogue import load_event

    if case.startswith("event:"):
        return load_event(case.removeprefix("event:")).isel(time=slice(0, 4))
    size = int(case)
    if real:
        return load_event(real).isel(time=slice(0, 4), y=slice(0, size), x=slice(0, size))
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    return synthetic_sequence(SyntheticRain(ny=size, nx=size, frames=4), seed=0)


def time_case(case: str, args: argparse.Namespace, gan, extrapolation) -> dict[str, object]:
    past = input_window(case, args.real)
    record: dict[str, object] = {"grid": list(past.shape[1:])}
    record.update(time_side_by_side(gan, extrapolation, past, args.steps, args.repeats))
    if getattr(gan, "half_precision", None):  # the device's half precision (opt-in), timed alongside
        gan.half = True
        try:
            record[f"gan_{gan.half_precision}"] = time_forecast(gan, past, args.steps, args.repeats)
        finally:
            gan.half = False
        record[f"gan_{gan.half_precision}_time_over_extrapolation"] = (
            record[f"gan_{gan.half_precision}"]["median_s"] / record["extrapolation"]["median_s"])
    if args.memory:
        record["peak_memory_mb"] = {name: memory_of_one_forecast(name, case, args)
                                    for name in (args.model, "extrapolation")}
    return record


def memory_of_one_forecast(model: str, case: str, args: argparse.Namespace) -> dict[str, float]:
    """Peak resident memory of one forecast, in a process of its own (the peak only ever grows)."""
    command = [sys.executable, __file__, "--probe-memory", case, "--model", model, "--steps", str(args.steps)]
    if args.real:
        command += ["--real", args.real]
    if args.device:
        command += ["--device", args.device]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def probe_memory(args: argparse.Namespace) -> int:
    """One forecast's resident-set peak, above what loading the model and the input left resident.

    Linux resets a process's peak (VmHWM) when "5" is written to its clear_refs, so loading
    an event (which reads all its frames) does not count; elsewhere the peak includes it.
    """
    import gc

    from nowcast.forecasters import get_forecaster

    forecaster = get_forecaster(args.model, device=args.device)
    past = input_window(args.probe_memory, args.real).copy()
    gc.collect()
    loaded = _resident_mb("VmRSS")
    reset = _reset_peak()
    forecaster.forecast(past, args.steps)
    peak = _resident_mb("VmHWM") if reset else peak_rss_mb()
    print(json.dumps({"loaded_mb": loaded, "peak_mb": peak, "forecast_mb": peak - loaded, "peak_reset": reset}))
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _resident_mb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MB; the lifetime peak where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


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
    parser.add_argument("--sizes", default="256,512", help="square windows, comma-separated")
    parser.add_argument("--largest", default="fmi-20170509",
                        help="a catalogue event whose whole grid is also timed ('' skips it)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real", help="a catalogue event to take the square windows from")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the per-case memory probes")
    parser.add_argument("--train-steps", type=int, default=10, help="0 skips the training throughput")
    parser.add_argument("--device", default=None)
    parser.add_argument("--output")
    parser.add_argument("--probe-memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_memory:
        return probe_memory(args)

    from nowcast.forecasters import get_forecaster
    from nowcast.paths import data_root

    gan = get_forecaster(args.model, device=args.device)
    extrapolation = get_forecaster("extrapolation")
    record: dict[str, object] = {"model": args.model, "input_frames": 4, "steps": args.steps,
                                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                                 "device": str(getattr(gan, "device", "cpu")),
                                 "input": f"real: {args.real}" if args.real else "synthetic rain"}
    if str(record["device"]).startswith("cuda"):
        record["gpu"] = torch.cuda.get_device_name(0)
    cases = [size.strip() for size in args.sizes.split(",") if size.strip()]
    if args.largest and (data_root() / "radar").is_dir():
        cases.append(f"event:{args.largest}")
    record["cases"] = {case: time_case(case, args, gan, extrapolation) for case in cases}
    if "256" in record["cases"]:
        gan_256 = record["cases"]["256"]["gan"]["median_s"]
        record["dgmr_256"] = {"reference_s": DGMR_256_REFERENCE_S, "gan_s": gan_256,
                              "gan_time_over_dgmr": gan_256 / DGMR_256_REFERENCE_S}
    if args.train_steps:
        record["training"] = training_throughput(args.model, args.train_steps)
    text = json.dumps(record, indent=2)
    print(text)
    if args.output:
        write_text_atomically(args.output, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
