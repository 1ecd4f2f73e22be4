"""How long `nowcast evaluate` takes on a large latitude/longitude grid (MRMS-like: 875x1750 pixels of 0.04°).

    python bench/latlon_evaluation.py                      # persistence, 2 start times
    python bench/latlon_evaluation.py --methods persistence,steps --members 10

Synthetic rain moving east on a 0.04° grid over the central US, 4 past and 12 future
frames of 5 minutes per start time (so that the +30 and +60 min spectra are computed).
Prints the grid's pixel size in km (geodesic), the FSS windows in pixels that makes, and
the wall time of the evaluation (forecasts, scores and report).
Before scales were taken in km on lat/lon grids, the pixel size in degrees was read as
metres: FSS windows of 400,000 pixels, and this run did not end in 50 minutes.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from nowcast.evaluate import evaluate
from nowcast.sequence import make_sequence, pixel_size_km
from nowcast.verification import ScoreSettings, fss_windows


def latlon_event(ny: int, nx: int, frames: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(ny, nx + 3 * frames)), 8.0)
    field = np.clip((field - 0.02) * 400.0, 0.0, 120.0)
    rate = np.stack([field[:, 3 * t: 3 * t + nx] for t in range(frames)])
    lon = -105.0 + 0.04 * np.arange(nx)
    lat = 50.0 - 0.04 * np.arange(ny)
    return make_sequence(rate, pd.date_range("2021-06-01", periods=frames, freq="5min"),
                         projection="+proj=longlat +datum=WGS84 +no_defs", xpixelsize=0.04, ypixelsize=0.04,
                         x=lon, y=lat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ny", type=int, default=875)
    parser.add_argument("--nx", type=int, default=1750)
    parser.add_argument("--start-times", type=int, default=2)
    parser.add_argument("--methods", default="persistence")
    parser.add_argument("--members", type=int, help="ensemble members of the methods that draw them")
    args = parser.parse_args()
    stride = 6
    sequence = latlon_event(args.ny, args.nx, 16 + stride * (args.start_times - 1))
    size = pixel_size_km(sequence)
    windows = fss_windows(ScoreSettings().fss_scales_km, size, (args.ny, args.nx))
    print(f"grid {args.ny}x{args.nx} ({args.ny * args.nx / 1e6:.2f} Mpixels), pixel {size:.2f} km, "
          f"FSS windows (km: pixels) {windows}")
    with tempfile.TemporaryDirectory() as out:
        tic = time.perf_counter()
        report = evaluate(args.methods.split(","), ["mrms"], stride=stride, loader=lambda _: sequence, out_dir=out,
                          progress=False, members=args.members)
        elapsed = time.perf_counter() - tic
    timing = ", ".join(f"{name} {t['mean_seconds_per_forecast']:.2f} s per forecast"
                       for name, t in report["timing"].items())
    print(f"{report['overall']['n_evaluated']} start times evaluated in {elapsed:.1f} s ({timing})")


if __name__ == "__main__":
    main()
