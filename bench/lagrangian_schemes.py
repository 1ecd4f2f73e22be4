"""How much do simple schemes in the Lagrangian frame gain over plain advection, per lead time?

    python bench/lagrangian_schemes.py \\
        --events knmi-20100826,mch-20150515,mch-20170131,fmi-20160928,bom-20201031

For every start time of the events (a start every ``--stride`` frames), estimates the
motion as the GAN does (Lucas–Kanade tracked at full resolution), moves the past frames
along it to the last one (``nowcast.gan.advection.lagrangian_past``) and compares, on CSI
at 1/4/8 mm/h, plain advection of the last frame with:

* ``trend K``: the last frame plus K × lead × its growth over the last step in dB
  (``dBR(last) - dBR(previous frame moved to it)``, clipped to ±5 dB), advected: a
  parcel that grew keeps growing;
* ``mean of N``: the mean rain rate of the last N frames moved to the last one, advected
  (smoothing along the trajectories).

This is the measurement behind ``correction_frame = "lagrangian"``: if a fixed rule on
the past frames lined up in the Lagrangian frame beats advection in the first minutes,
a generator that sees those frames can learn it. Run it on training events only.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from nowcast.gan.advection import along, lagrangian_past, pixel_grid, trajectories
from nowcast.io.catalogue import load_event
from nowcast.motion import lucas_kanade_coarse
from nowcast.verification import Contingency

THRESHOLDS = (1.0, 4.0, 8.0)
MOTION_DOWNSAMPLE = 4


def _dbr(rate: np.ndarray) -> np.ndarray:
    return np.where(rate >= 0.1, 10.0 * np.log10(np.maximum(rate, 0.1)), -15.0)


def schemes(past: np.ndarray, steps: int, trends: list[float], means: list[int]) -> dict[str, np.ndarray]:
    """Forecasts (steps, y, x) in mm/h of every scheme from (time, y, x) past frames."""
    filled = torch.from_numpy(np.nan_to_num(past))[None]
    motion = torch.from_numpy(lucas_kanade_coarse(past, MOTION_DOWNSAMPLE))[None]
    points = pixel_grid(1, *past.shape[1:])
    displacement = trajectories(motion, max(steps, past.shape[0] - 1), points)
    moved = lagrangian_past(filled, displacement, points)[0].numpy()

    def advect(frame: np.ndarray) -> np.ndarray:
        return along(torch.from_numpy(frame.astype(np.float32))[None], displacement[:, :steps], points)[0].numpy()

    advected = advect(moved[-1])
    out = {"advection": advected}
    growth = advect(np.clip(_dbr(moved[-1]) - _dbr(moved[-2]), -5.0, 5.0))
    lead = np.arange(1, steps + 1)[:, None, None]
    wet = advected >= 0.1
    for k in trends:
        trended = 10.0 ** ((_dbr(advected) + k * lead * growth) / 10.0)
        out[f"trend {k:g}"] = np.where(wet, trended, advected)
    for n in means:
        out[f"mean of {n}"] = advect(moved[-n:].mean(axis=0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="comma-separated event ids")
    parser.add_argument("--stride", type=int, default=3, help="frames between start times")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--trends", default="0.15,0.3,0.6", help="growth factors K of the trend schemes")
    parser.add_argument("--means", default="2,3", help="frames N of the mean schemes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    trends = [float(k) for k in args.trends.split(",") if k]
    means = [int(n) for n in args.means.split(",") if n]
    # (scheme, lead step, threshold) -> contingency table
    tables: dict[tuple[str, int, float], Contingency] = {}
    for event in args.events.split(","):
        values = load_event(event, on_missing="nan").values.astype(np.float32)
        used = 0
        for start in range(0, values.shape[0] - 4 - args.steps + 1, args.stride):
            past, observed = values[start:start + 4], values[start + 4:start + 4 + args.steps]
            if not np.isfinite(past).all(axis=0).any() or not np.nanmax(past, initial=0.0) >= 1.0:
                continue
            used += 1
            valid = np.isfinite(past[-1])[None] & np.isfinite(observed)
            for name, forecast in schemes(past, args.steps, trends, means).items():
                for i in range(args.steps):
                    f, o = forecast[i][valid[i]], observed[i][valid[i]]
                    for threshold in THRESHOLDS:
                        tables.setdefault((name, i + 1, threshold), Contingency(threshold)).add(f, o)
        logging.info("%s: %d start times", event, used)

    names = list(dict.fromkeys(key[0] for key in tables))

    def csi(name: str, lead: int, threshold: float) -> float:
        return tables[(name, lead, threshold)].csi

    for threshold in THRESHOLDS:
        print(f"\nCSI > {threshold:g} mm/h: advection, and each scheme's difference from it")
        print(f"{'step':>4} {'advection':>10} " + " ".join(f"{n:>10}" for n in names[1:]))
        for lead in range(1, args.steps + 1):
            base = csi("advection", lead, threshold)
            print(f"{lead:>4} {base:>10.4f} " + " ".join(f"{csi(n, lead, threshold) - base:>+10.4f}"
                                                       for n in names[1:]))


if __name__ == "__main__":
    main()
