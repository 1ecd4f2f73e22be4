"""Benchmark: an ensemble of 20 members (4 frames in, 12 out) from the GAN and from pySTEPS STEPS.

Both run in one process, on the same input, with the same number of members and threads,
so their times compare. The GAN estimates the motion once and sends its members through
the generator in batches; STEPS runs its cascade and noise per member. ``gan_products``: the
time to make a watch product from the GAN's members (probability-matched mean and
probabilities at 1/4/8 mm/h), with the model's own probability neighbourhood and without one.

    python bench/bench_ensemble.py --model ensemble-gan --size 512 --members 20
    python bench/bench_ensemble.py --real mch-20160711 --size 512

Prints a JSON record; ``--output FILE`` also writes it there.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np
import torch

from nowcast.files import write_text_atomically


def time_members(forecaster, past, steps: int, members: int, repeats: int) -> dict[str, float]:
    # each call on its own input, as a service's requests come: a forecaster that keeps what it worked out for
    # an input (the GAN's S-PROG field) must not be timed on one it has seen
    forecaster.forecast(shifted(past, repeats), steps, members=2, seed=0)  # warm-up: imports, lazy initialisation
    times = []
    for repeat in range(repeats):
        window = shifted(past, repeat)
        started = time.perf_counter()
        forecaster.forecast(window, steps, members=members, seed=repeat)
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def shifted(past, pixels: int):
    """The input with its rain moved ``pixels`` to the east (wrapping round): the same rain, another input."""
    return past.copy(data=np.roll(past.values, pixels, axis=-1)) if pixels else past


def time_products(forecast, repeats: int) -> dict[str, float]:
    from nowcast.products import ProductRequest, ensemble_products

    timed = {}
    for label, neighbourhood in (("model_neighbourhood_s", None), ("raw_s", 0.0)):
        request = ProductRequest(("pm_mean", "probabilities"), neighbourhood=neighbourhood)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            ensemble_products(forecast, request)
            times.append(time.perf_counter() - started)
        timed[label] = statistics.median(times)
    timed["neighbourhood_km_per_minute"] = float(forecast.attrs.get("probability_neighbourhood_km_per_minute", 0.0))
    return timed


def input_window(real: str | None, size: int):
    if real:
        from nowcast.io.catalogue import load_event

        return load_event(real).isel(time=slice(0, 4), y=slice(0, size), x=slice(0, size))
    from nowcast.synthetic import SyntheticRain, synthetic_sequence

    return synthetic_sequence(SyntheticRain(ny=size, nx=size, frames=4), seed=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ensemble-gan")
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--real", help="a catalogue event to take the input frames from")
    parser.add_argument("--output")
    args = parser.parse_args(argv)

    from nowcast.forecasters import get_forecaster

    past = input_window(args.real, args.size)
    record: dict[str, object] = {"grid": list(past.shape[1:]), "steps": args.steps, "members": args.members,
                                 "threads": torch.get_num_threads(), "torch": torch.__version__}
    gan = get_forecaster(args.model, models_dir=args.models_dir)
    record["gan"] = time_members(gan, past, args.steps, args.members, args.repeats)
    record["gan_products"] = time_products(gan.forecast(past, args.steps, members=args.members, seed=0),
                                           args.repeats)
    record["steps_pysteps"] = time_members(get_forecaster("steps"), past, args.steps, args.members, args.repeats)
    record["gan_speedup"] = record["steps_pysteps"]["median_s"] / record["gan"]["median_s"]
    record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    text = json.dumps(record, indent=2)
    print(text)
    if args.output:
        write_text_atomically(args.output, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
