"""The evaluation in one process and on a local Dask cluster: the speed-up, and the proof that the scores agree.

    python bench/evaluate_dask.py --events mch-20160711 --methods persistence,extrapolation,default-gan
    python bench/evaluate_dask.py --events mch-20160711 --models-dir runs/retrain-1/registry \\
        --methods candidate,live,persistence,extrapolation --workers 2

Runs the same evaluation twice (catalogue events, as `nowcast evaluate` reads them): in this
process, then with each start time a task on a local cluster of ``--workers`` single-threaded
processes. Prints both wall times, the speed-up and whether every score, count and
per-start-time sum of the two reports is identical (it must be: the same code adds them up in
the same order). Each run loads the events itself (from the catalogue's cache when warm).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from nowcast.evaluate import LOCAL_CLUSTER, evaluate
from nowcast.io.catalogue import load_catalogue, load_event

# what two runs of the same evaluation may differ in: when and how fast
_RUN_KEYS = ("started", "runtime_seconds", "timing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default="mch-20160711")
    parser.add_argument("--methods", default="persistence,extrapolation")
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--stride", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=None)
    args = parser.parse_args()
    catalogue = load_catalogue()

    def loader(event_id: str) -> Any:
        return load_event(catalogue[event_id], root=args.data_root, on_missing="nan")

    methods, events = args.methods.split(","), args.events.split(",")
    reports, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, scheduler in (("one process", None), (f"local cluster, {args.workers} workers", LOCAL_CLUSTER)):
            tic = time.perf_counter()
            reports[label] = evaluate(methods, events, stride=args.stride, loader=loader, models_dir=args.models_dir,
                                      out_dir=Path(tmp) / label.replace(" ", "-"), progress=False,
                                      scheduler=scheduler, workers=args.workers)
            seconds[label] = time.perf_counter() - tic
    first, second = reports.values()
    same = _scores(first) == _scores(second)
    print(f"{first['overall']['n_evaluated']} start times of {', '.join(events)}; methods {', '.join(methods)}")
    for label, wall in seconds.items():
        per_method = ", ".join(f"{name} {t['mean_seconds_per_forecast']:.2f}"
                               for name, t in reports[label]["timing"].items() if t["mean_seconds_per_forecast"])
        print(f"{label:<28} {wall:7.1f} s   (mean s per forecast: {per_method})")
    one, many = seconds.values()
    print(f"speed-up {one / many:.2f}x; scores identical: {same}")
    if not same:
        raise SystemExit("the two reports differ")


def _scores(report: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in report.items() if k not in _RUN_KEYS}, sort_keys=True)


if __name__ == "__main__":
    main()
