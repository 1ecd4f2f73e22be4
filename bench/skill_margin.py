"""Per-lead CSI margin of a model over a baseline, from a ``nowcast evaluate`` scores.json.

    python bench/skill_margin.py runs/eval-heldout/scores.json --model default-gan --baseline extrapolation

Prints, for each threshold, the CSI of both at every lead time, the difference, and
how many lead times the model wins, ties (within ``--tie``) or loses; with the 90 %
interval of the difference from a paired bootstrap over start times
(``nowcast.bootstrap``, ``--bootstrap`` resamples, 0 for none)
and the fraction of resamples where the model is not ahead. Then the spectrum ratio
(forecast power / observed power) at 8–64 km at +30 and +60 min for every method, plain
and with the forecast matched to the observed distribution; with ``--twin NAME``, the
model's ratio minus that method's, with intervals from the same bootstrap (and, for ensembles,
the same of their first members).
When the model was scored as an ensemble (``nowcast evaluate --members``): its CRPS
minus that of ``--reference`` (default: the evaluation's Brier skill reference) and its
Brier skill against it per threshold, with intervals from the same bootstrap; and the same two of
its forecast maximum (the maximum over the leads; rate > threshold at some lead) and of the rain
over the forecast (mm; more than the threshold).
Exit status 0 always: this reports, the reader judges.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nowcast.bootstrap import (
    brier_skill_interval,
    crps_difference_interval,
    csi_difference_interval,
    spectrum_ratio_difference_interval,
)
from nowcast.verification import ensemble_sum_kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--baseline", default="extrapolation")
    parser.add_argument("--tie", type=float, default=0.0005, help="|difference| at most this counts as a tie")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples of the start times (0: none)")
    parser.add_argument("--twin", help="also: the model's spectrum ratio minus this method's, with intervals")
    parser.add_argument("--reference", help="ensembles: CRPS and Brier skill against this ensemble method "
                                            "(default: the evaluation's Brier skill reference)")
    args = parser.parse_args()
    report = json.loads(args.scores.read_text())
    overall = report["overall"]["scores"]
    for name in (args.model, args.baseline):
        if name not in overall:
            raise SystemExit(f"{name!r} is not in {args.scores}; methods there: {', '.join(overall)}")
    model, base = overall[args.model]["leads"], overall[args.baseline]["leads"]
    leads = sorted(set(model) & set(base), key=float)
    thresholds = sorted(model[leads[0]]["categorical"], key=float)
    intervals = (csi_difference_interval(report, args.model, args.baseline, n_resamples=args.bootstrap)
                 if args.bootstrap else {})
    for threshold in thresholds:
        print(f"\nCSI > {threshold} mm/h: lead, n, {args.baseline}, {args.model}, difference"
              + (", 90 % interval, P(not ahead)" if intervals else ""))
        wins = ties = losses = 0
        for lead in leads:
            b = base[lead]["categorical"][threshold]["CSI"]
            m = model[lead]["categorical"][threshold]["CSI"]
            diff = m - b
            wins, ties, losses = (wins + (diff > args.tie), ties + (abs(diff) <= args.tie),
                                  losses + (diff < -args.tie))
            line = f"  {float(lead):5.0f} {model[lead]['n_forecasts']:3d}  {b:.4f}  {m:.4f}  {diff:+.4f}"
            if intervals:
                ci = intervals[lead][threshold]
                line += f"  [{ci['low']:+.4f}, {ci['high']:+.4f}]  {ci['p_not_ahead']:.3f}"
            print(line)
        print(f"  wins {wins}, ties {ties}, losses {losses} of {len(leads)} lead times")
    for kind, title in (("spectrum", "spectrum ratio (forecast / observed power)"),
                        ("spectrum_matched", "spectrum ratio, forecast matched to the observed distribution")):
        print(f"\n{title}")
        for method, scores in overall.items():
            for lead, spectrum in sorted(scores.get(kind, {}).items(), key=lambda kv: float(kv[0])):
                wavelengths = np.asarray(spectrum["wavelength_km"])
                ratio = _floats(spectrum["forecast_power"]) / _floats(spectrum["observed_power"])
                picked = {km: float(np.interp(np.log(km), np.log(wavelengths), ratio)) for km in (8, 16, 32, 64)}
                text = " ".join(f"{km} km {r:.2f}" for km, r in picked.items())
                print(f"  {method:>15} +{float(lead):.0f} min: {text}")
    if args.twin and args.bootstrap:
        records = next(iter(report["events"].values())).get("start_times") or [{}]
        of_members = (False, True) if "spectrum_member" in records[0] else (False,)
        for member, matched in ((member, matched) for member in of_members for matched in (False, True)):
            intervals = spectrum_ratio_difference_interval(report, args.model, args.twin, matched=matched,
                                                           member=member, n_resamples=args.bootstrap)
            print(f"\n{'one member' if member else 'spectrum'} ratio{', matched,' if matched else ''} "
                  f"{args.model} minus {args.twin}: difference [90 % interval] P(not more power)")
            for lead, by_wavelength in sorted(intervals.items(), key=lambda kv: float(kv[0])):
                text = "  ".join(f"{w} km {ci['difference']:+.2f} [{ci['low']:+.2f}, {ci['high']:+.2f}] "
                                 f"{ci['p_not_ahead']:.2f}" for w, ci in by_wavelength.items())
                print(f"  +{float(lead):.0f} min: {text}")
    print_ensemble_margins(report, args.model, args.reference, args.bootstrap)


def _floats(values: list) -> np.ndarray:
    """JSON numbers with None (a wavelength the grid does not resolve) as NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def print_ensemble_margins(report: dict, model: str, reference: str | None, n_resamples: int) -> None:
    """CRPS difference and Brier skill of an ensemble against a reference ensemble, with bootstrap intervals."""
    ensemble_config = report["config"].get("ensemble")
    overall = report["overall"]["scores"]
    reference = reference or (ensemble_config or {}).get("brier_reference")
    if not ensemble_config or "ensemble" not in overall.get(model, {}) or not reference or not n_resamples:
        return
    if reference == model or "ensemble" not in overall.get(reference, {}):
        raise SystemExit(f"--reference {reference!r} must be another method scored as an ensemble")
    crps = crps_difference_interval(report, model, reference, n_resamples=n_resamples)
    print(f"\nCRPS (mm/h): lead, {reference}, {model}, difference [90 % interval] P(CRPS not lower)")
    for lead, ci in sorted(crps.items(), key=lambda kv: float(kv[0])):
        own, other = (overall[m]["ensemble"]["leads"][lead]["crps"] for m in (model, reference))
        print(f"  {float(lead):5.0f}  {other:.4f}  {own:.4f}  {ci['difference']:+.4f} "
              f"[{ci['low']:+.4f}, {ci['high']:+.4f}]  {ci['p_not_ahead']:.3f}")
    skill = brier_skill_interval(report, model, reference, n_resamples=n_resamples)
    print(f"\nBrier skill of {model} against {reference}: lead, per threshold skill [90 % interval] P(not above 0)")
    for lead, by_threshold in sorted(skill.items(), key=lambda kv: float(kv[0])):
        text = "  ".join(f"> {thr} mm/h {ci['skill']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}] "
                         f"{ci['p_not_ahead']:.2f}" for thr, ci in by_threshold.items())
        print(f"  {float(lead):5.0f}  {text}")
    records = next(iter(report["events"].values())).get("start_times") or [{}]
    for period, name, units in (("maximum", "forecast maximum (rate > threshold at some lead)", "mm/h"),
                                ("accumulation", "rain over the forecast (more than the threshold)", "mm")):
        if ensemble_sum_kind("crps", period) in records[0]:  # not in reports written before it was scored
            print_period_margins(report, model, reference, n_resamples, period, name, units)


def print_period_margins(report: dict, model: str, reference: str, n_resamples: int, period: str, name: str,
                         units: str) -> None:
    """CRPS difference and Brier skill of an ensemble's maximum or accumulation over each forecast period."""
    overall = report["overall"]["scores"]
    crps = crps_difference_interval(report, model, reference, period=period, n_resamples=n_resamples)
    print(f"\nCRPS of the {name} ({units}): last lead, {reference}, {model}, difference [90 % interval] "
          "P(CRPS not lower)")
    for last, ci in sorted(crps.items(), key=lambda kv: float(kv[0])):
        own, other = (overall[m]["ensemble"][f"period_{period}"][last]["crps"] for m in (model, reference))
        print(f"  to +{float(last):.0f} min  {other:.4f}  {own:.4f}  {ci['difference']:+.4f} "
              f"[{ci['low']:+.4f}, {ci['high']:+.4f}]  {ci['p_not_ahead']:.3f}")
    skill = brier_skill_interval(report, model, reference, period=period, n_resamples=n_resamples)
    print(f"\nBrier skill of {model}'s {name} against {reference}: "
          "last lead, per threshold skill [90 % interval] P(not above 0)")
    for last, by_threshold in sorted(skill.items(), key=lambda kv: float(kv[0])):
        text = "  ".join(f"> {thr} {units} {ci['skill']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}] "
                         f"{ci['p_not_ahead']:.2f}" for thr, ci in by_threshold.items())
        print(f"  to +{float(last):.0f} min  {text}")

if __name__ == "__main__":
    main()
