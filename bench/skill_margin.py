"""Per-lead CSI margin of a model over a baseline, from a ``nowcast evaluate`` scores.json.

    python bench/skill_margin.py runs/eval-heldout/scores.json --model default-gan --baseline extrapolation

Prints, for each threshold, the CSI of both at every lead time, the difference, and
how many lead times the model wins, ties (within ``--tie``) or loses; then the spectrum
ratio (forecast power / observed power) at 8–64 km at +30 and +60 min for every method.
Exit status 0 always: this reports, the reader judges.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--baseline", default="extrapolation")
    parser.add_argument("--tie", type=float, default=0.0005, help="|difference| at most this counts as a tie")
    args = parser.parse_args()
    overall = json.loads(args.scores.read_text())["overall"]["scores"]
    for name in (args.model, args.baseline):
        if name not in overall:
            raise SystemExit(f"{name!r} is not in {args.scores}; methods there: {', '.join(overall)}")
    model, base = overall[args.model]["leads"], overall[args.baseline]["leads"]
    leads = sorted(set(model) & set(base), key=float)
    thresholds = sorted(model[leads[0]]["categorical"], key=float)
    for threshold in thresholds:
        print(f"\nCSI > {threshold} mm/h: lead, n, {args.baseline}, {args.model}, difference")
        wins = ties = losses = 0
        for lead in leads:
            b = base[lead]["categorical"][threshold]["CSI"]
            m = model[lead]["categorical"][threshold]["CSI"]
            diff = m - b
            wins, ties, losses = (wins + (diff > args.tie), ties + (abs(diff) <= args.tie),
                                  losses + (diff < -args.tie))
            print(f"  {float(lead):5.0f} {model[lead]['n_forecasts']:3d}  {b:.4f}  {m:.4f}  {diff:+.4f}")
        print(f"  wins {wins}, ties {ties}, losses {losses} of {len(leads)} lead times")
    print("\nspectrum ratio (forecast / observed power)")
    for method, scores in overall.items():
        for lead, spectrum in sorted(scores.get("spectrum", {}).items(), key=lambda kv: float(kv[0])):
            wavelengths = np.asarray(spectrum["wavelength_km"])
            ratio = np.asarray(spectrum["forecast_power"]) / np.asarray(spectrum["observed_power"])
            picked = {km: float(np.interp(np.log(km), np.log(wavelengths), ratio)) for km in (8, 16, 32, 64)}
            text = " ".join(f"{km} km {r:.2f}" for km, r in picked.items())
            print(f"  {method:>15} +{float(lead):.0f} min: {text}")


if __name__ == "__main__":
    main()
