"""Sweep limits on a trained GAN's correction of advection, scored against its own prior.

    python bench/correction_limits.py --model default-gan@v3 \\
        --events knmi-20100826,mch-20150515,mch-20170131,fmi-20160928,bom-20201031

For every start time of the events (as ``nowcast evaluate`` picks them), runs the
generator once and keeps its full-resolution forecast ``z`` and its advection prior
``a`` (both in the normalised dB space). Each variant then replaces the correction
``d = z - a`` by a shrunk one: a dead zone of ``D`` dB (``sign(d)·max(|d| - D, 0)``)
and a smooth bound of ``C`` dB per lead step (``b·tanh(d/b)``, ``b = C·lead``), as
``ModelConfig.correction_deadzone_db``/``correction_db_per_step`` do. Here they are
applied to the finest output only, after the fact, so one forward pass serves every
variant; built into a model they act at every scale, which the evaluate job measures.

Prints, per variant, at each CSI threshold: the lead times where it beats the prior
(by more than 0.0005), its worst and mean CSI difference from the prior over lead
times, and the mean error (mm/h) at +60 min and at the last lead; with ``--per-lead``,
every variant's difference at every lead time as well. The prior equals
pySTEPS extrapolation to within 0.0005 CSI for models with full-resolution motion.
Pick limits on training events; confirm on held-out ones with ``nowcast evaluate``.
"""

from __future__ import annotations

import argparse
import logging
from collections import defaultdict

import numpy as np
import pandas as pd
import torch

from nowcast.evaluate import DEFAULT_STRIDE, MIN_RAIN_MMH, skip_reason, start_indices
from nowcast.forecasters import get_forecaster
from nowcast.gan.forecaster import GANForecaster
from nowcast.gan.model import limit_correction
from nowcast.io.catalogue import load_event
from nowcast.verification import Contingency

THRESHOLDS = (1.0, 4.0, 8.0)
TIE = 0.0005


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a registry name, e.g. default-gan@v3")
    parser.add_argument("--events", required=True, help="comma-separated event ids")
    parser.add_argument("--deadzones-db", default="0,0.25,0.5,1")
    parser.add_argument("--per-step-db", default="0,0.25,0.5,1", help="bounds in dB per lead step; 0: none")
    parser.add_argument("--models-dir", default=None)
    parser.add_argument("--per-lead", action="store_true",
                        help="also print every variant's CSI difference from the prior at every lead time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    forecaster = get_forecaster(args.model, models_dir=args.models_dir)
    if not isinstance(forecaster, GANForecaster) or not forecaster.model_config.condition_on_advection:
        raise SystemExit(f"{args.model} is not a GAN conditioned on advection: it has no correction to limit")
    scale_db = forecaster.normalisation.scale_db
    variants = {"model": (0.0, 0.0), "prior": None}
    for deadzone in map(float, args.deadzones_db.split(",")):
        for per_step in map(float, args.per_step_db.split(",")):
            if deadzone or per_step:
                variants[f"deadzone {deadzone:g} dB, {per_step:g} dB/step"] = (deadzone, per_step)
    n_out = forecaster.model_config.n_output
    # (variant, lead minutes, threshold) -> contingency table; (variant, lead) -> [error sum, n]
    tables: dict[tuple[str, float, float], Contingency] = {}
    errors: dict[tuple[str, float], list[float]] = defaultdict(lambda: [0.0, 0])
    for event in args.events.split(","):
        sequence = load_event(event, on_missing="nan")
        times = pd.DatetimeIndex(sequence["time"].values)
        steps_s = np.diff(times.values).astype("timedelta64[s]").astype(np.int64)
        step_s = int(np.median(steps_s))
        values = sequence.values
        used = 0
        for start in start_indices(len(times), forecaster.n_input_frames, n_out, DEFAULT_STRIDE):
            stop = start + forecaster.n_input_frames + n_out
            past, observed = values[start:start + forecaster.n_input_frames], values[stop - n_out:stop]
            if skip_reason(past, observed, steps_s[start:stop - 1], step_s, MIN_RAIN_MMH):
                continue
            used += 1
            valid = np.isfinite(past[-1])
            z, prior = forecaster.forward_normalised(past[None], valid[None])
            for name, limits in variants.items():
                zz = prior if limits is None else prior + limit_correction(z - prior, limits[0] / scale_db,
                                                                           limits[1] / scale_db)
                rate = torch.clamp(forecaster.normalisation.decode(zz[0]), min=0).cpu().numpy()
                rate = np.where(valid, rate, np.nan)
                for k in range(n_out):
                    lead = round(step_s / 60 * (k + 1), 1)
                    ok = np.isfinite(observed[k]) & np.isfinite(rate[k])
                    f, o = rate[k][ok], observed[k][ok]
                    error = errors[(name, lead)]
                    error[0] += float(np.sum(f - o))
                    error[1] += f.size
                    for threshold in THRESHOLDS:
                        tables.setdefault((name, lead, threshold), Contingency(threshold)).add(f, o)
        logging.info("%s: %d start times", event, used)

    leads = sorted({key[1] for key in errors})
    lead_60 = min(leads, key=lambda lead: abs(lead - 60))

    def csi(name: str, lead: float, threshold: float) -> float:
        return tables[(name, lead, threshold)].csi

    def mean_error(name: str, lead: float) -> float:
        total, n = errors[(name, lead)]
        return total / n if n else float("nan")

    header = " ".join(f"{'wins>' + format(t, 'g'):>8} {'worst':>7} {'mean':>7}" for t in THRESHOLDS)
    print(f"{len(leads)} lead times; CSI difference from the prior (advection)")
    print(f"{'variant':<34} {header}  {'ME+' + format(lead_60, 'g'):>7} {'ME+' + format(leads[-1], 'g'):>7}")
    for name in variants:
        cells = []
        for threshold in THRESHOLDS:
            diffs = [csi(name, lead, threshold) - csi("prior", lead, threshold) for lead in leads]
            cells.append(f"{sum(d > TIE for d in diffs):>8d} {min(diffs):+7.4f} {np.nanmean(diffs):+7.4f}")
        print(f"{name:<34} {' '.join(cells)}  {mean_error(name, lead_60):+7.3f} {mean_error(name, leads[-1]):+7.3f}")
    if args.per_lead:
        for name in variants:
            print(f"\n{name}: CSI difference from the prior per lead time (min) at " +
                  ", ".join(f"{t:g}" for t in THRESHOLDS) + " mm/h")
            for lead in leads:
                diffs = [csi(name, lead, t) - csi("prior", lead, t) for t in THRESHOLDS]
                print(f"{lead:>6g} " + " ".join(f"{d:+8.4f}" for d in diffs))


if __name__ == "__main__":
    main()
