"""The evaluation report as markdown: the tables of ``scores.md`` and of the model cards.

Everything is rendered from the content of ``scores.json`` (:func:`nowcast.evaluate.evaluate`),
so a report can be redrawn, or cut down to some of its methods, without forecasting again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nowcast.verification import key


def render_markdown(report: dict[str, Any]) -> str:
    """The markdown report of an evaluation (from the content of ``scores.json``)."""
    config = report["config"]
    methods = config["methods"]
    lines = [
        "# Evaluation",
        "",
        f"Methods: {', '.join(methods)}. Events: {', '.join(config['events'])}.",
        f"{config['n_input']} past frames, {config['steps']} forecast frames, a start time every "
        f"{config['stride']} frames; started {report['started']}, ran {report['runtime_seconds']:.0f} s.",
        f"Start times: {report['overall']['n_start_times']}, evaluated {report['overall']['n_evaluated']}"
        + _skipped_text(report["overall"]["skipped"]) + ".",
        "",
        "Contingency tables and FSS sums are added over all forecasts before the scores are "
        "computed; pixels without observation or forecast are left out (never counted as dry). "
        "Lead times are in minutes, so events with different time steps add to different rows "
        "(a 10-min event to 10, 20, … min); `n` is the number of forecasts verified at that lead. "
        "The best value of each row is in bold.",
        "",
        "## Forecast time",
        "",
        "| method | forecasts | mean s per forecast |",
        "|---|---:|---:|",
    ]
    for name, timing in report["timing"].items():
        mean = timing["mean_seconds_per_forecast"]
        lines.append(f"| {name} | {timing['n_forecasts']} | {'–' if mean is None else f'{mean:.3f}'} |")
    lines += ["", "## All events", ""]
    lines += score_tables(report["overall"]["scores"], methods, config, heading="###")
    lines += ["", "## Per event", ""]
    for event_id, event in report["events"].items():
        lines += [
            f"### {event_id}",
            "",
            f"{event['n_frames']} frames every {event['time_step_minutes']:g} min on "
            f"{event['grid']['ny']}×{event['grid']['nx']} pixels of {event['grid']['pixel_size_km']:g} km; "
            f"{event['n_start_times']} start times, {event['n_evaluated']} evaluated"
            + _skipped_text(event["skipped"]) + ".",
            "",
        ]
        if event["n_evaluated"]:
            lines += _csi_table(event["scores"], methods, config["thresholds_mmh"])
            for statistic in PERIOD_STATISTICS:
                lines += _event_period_skill(event["scores"], methods, config, statistic)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


#: what is scored over each forecast's whole period, and how the tables name it
PERIOD_STATISTICS = {"maximum": "the forecast's maximum", "accumulation": "the rain over the forecast"}


def _event_period_skill(scores: dict[str, Any], methods: list[str], config: dict[str, Any],
                        statistic: str) -> list[str]:
    """The Brier skill of the event's forecast maximum or accumulation (the reference's Brier score where no other
    ensemble has skill to show)."""
    views = _period_views(scores, methods, statistic)
    if not views:
        return []
    ensembles, thresholds = list(views), _probability_thresholds(views)
    reference = config.get("ensemble", {}).get("brier_reference")
    skilled = [m for m in ensembles if m != reference]
    name, units = PERIOD_STATISTICS[statistic], _period_units(statistic)
    if reference in ensembles and skilled:
        return ["", f"Brier skill of {name} ({units}) against {reference}:", "",
                *_threshold_table(views, skilled, thresholds, "brier_skill", best=max, row_heading="last lead (min)")]
    return ["", f"Brier score of {name} ({units}):", "",
            *_threshold_table(views, ensembles, thresholds, "brier", best=min, row_heading="last lead (min)")]


def _period_views(scores: dict[str, Any], methods: list[str], statistic: str) -> dict[str, Any]:
    """The scores of each method's forecast maximum or accumulation, by period, as "leads" for the tables (none in a
    report written before that was scored)."""
    return {m: {"leads": scores[m]["ensemble"][f"period_{statistic}"]} for m in methods
            if scores[m].get("ensemble", {}).get(f"period_{statistic}")}


def _period_units(statistic: str) -> str:
    return "mm/h" if statistic == "maximum" else "mm"


def _probability_thresholds(views: dict[str, Any]) -> list[str]:
    return sorted({t for v in views.values() for lead in v["leads"].values() for t in lead["probability"]}, key=float)


def _skipped_text(skipped: dict[str, int]) -> str:
    if not skipped:
        return ""
    return " (skipped: " + ", ".join(f"{n} with {reason}" for reason, n in skipped.items()) + ")"


def score_tables(scores: dict[str, Any], methods: list[str], config: dict[str, Any],
                  heading: str) -> list[str]:
    if not any(scores[m]["leads"] for m in methods):
        return ["No start time could be evaluated."]
    lines: list[str] = []
    for threshold in config["thresholds_mmh"]:
        lines += [f"{heading} CSI, rain rate > {threshold:g} mm/h", ""]
        csi = {m: (lambda lead, t=threshold: lead["categorical"][key(t)]["CSI"]) for m in methods}
        lines += _lead_table(scores, methods, csi, best=max)
        lines.append("")
    for threshold in config["fss_thresholds_mmh"]:
        lines += [f"{heading} FSS, rain rate ≥ {threshold:g} mm/h", ""]
        columns = {
            f"{m} {scale:g} km": (lambda lead, t=threshold, s=scale: lead["fss"][key(t)][key(s)]["fss"])
            for scale in config["fss_scales_km"] for m in methods
        }
        owners = {f"{m} {scale:g} km": m for scale in config["fss_scales_km"] for m in methods}
        lines += _lead_table(scores, methods, columns, owners=owners, best=max,
                             groups=[[f"{m} {s:g} km" for m in methods] for s in config["fss_scales_km"]])
        lines.append("")
    lines += [f"{heading} Mean absolute error (mm/h)", ""]
    lines += _lead_table(scores, methods, {m: (lambda lead: lead["mae"]) for m in methods}, best=min)
    lines.append("")
    lines += [f"{heading} Power spectrum: forecast / observed power", "",
              "Mean radially averaged power spectra of forecast and observation (no data set to 0 in "
              "both), ratio at each wavelength; below 1 means smoother than observed.", ""]
    lines += _spectrum_table(scores, methods, config, "spectrum")
    lines += ["", f"{heading} Power spectrum of the forecast matched to the observed distribution", "",
              "The same ratio with every forecast's values replaced by the observed values of the same "
              "rank (pysteps' nonparam_match_empirical_cdf), so that too much or too little rain does "
              "not count as texture: below 1 means smoother than observed.", ""]
    lines += _spectrum_table(scores, methods, config, "spectrum_matched")
    lines += ensemble_tables(scores, methods, config, heading)
    return lines


def _spectrum_table(scores: dict[str, Any], methods: list[str], config: dict[str, Any], kind: str) -> list[str]:
    wavelengths = [key(w) for w in config["spectrum_ratio_wavelengths_km"]]
    lines = ["| method | lead (min) | n | " + " | ".join(f"{w} km" for w in wavelengths) + " |",
             "|---|---:|---:|" + "---:|" * len(wavelengths)]
    member_kind = kind.replace("spectrum", "spectrum_member", 1)  # an ensemble's first member, after it
    for method in methods:
        for label, spectra in ((method, scores[method].get(kind, {})),
                               (f"{method}, member 1", scores[method].get(member_kind, {}))):
            for lead, spectrum in spectra.items():
                ratios = [_fmt(spectrum["power_ratio"].get(w)) for w in wavelengths]
                lines.append(f"| {label} | {lead} | {spectrum['n_forecasts']} | " + " | ".join(ratios) + " |")
    return lines


def ensemble_tables(scores: dict[str, Any], methods: list[str], config: dict[str, Any], heading: str) -> list[str]:
    """CRPS, Brier score and skill, spread/skill and ROC area per lead time of the methods scored as ensembles."""
    ensembles = [m for m in methods if scores[m].get("ensemble", {}).get("leads")]
    if not ensembles:
        return []
    views = {m: scores[m]["ensemble"] for m in ensembles}  # "leads" as _lead_table reads them
    thresholds = _probability_thresholds(views)
    reference = config.get("ensemble", {}).get("brier_reference")
    neighbourhood = config.get("ensemble", {}).get("probability_neighbourhood_km_per_minute") or 0.0
    sizes = ", ".join(f"{m} {views[m]['members']}" for m in ensembles)
    probabilities = ("Probabilities are the fraction of members above the threshold (an event is rate > "
                     "threshold)")
    if neighbourhood:
        probabilities += (f", then the mean of that fraction over a square window (valid pixels only) whose side "
                          f"grows {neighbourhood:g} km per minute of lead, for every ensemble alike; the CRPS, "
                          "rank histogram and spread/skill score the members themselves")
    lines = ["", f"{heading} Ensembles", "",
             f"Members: {sizes}. The tables above score each ensemble's probability-matched mean under its "
             f"name; these score its members, on the same pixels. {probabilities}.", "",
             f"{heading} CRPS (mm/h)", ""]
    lines += _lead_table(views, ensembles, {m: (lambda lead: lead["crps"]) for m in ensembles}, best=min)
    lines += ["", f"{heading} Brier score", ""]
    lines += _threshold_table(views, ensembles, thresholds, "brier", best=min)
    skilled = [m for m in ensembles if m != reference]  # the reference's own skill is 0 by definition
    if reference and skilled:
        lines += ["", f"{heading} Brier skill against {reference}", "",
                  f"1 - BS / BS({reference}), from the Brier scores summed over all pixels; above 0 is better.", ""]
        lines += _threshold_table(views, skilled, thresholds, "brier_skill", best=max)
    lines += ["", f"{heading} Spread / skill", "",
              "Spread: sqrt((M + 1) / M × mean member variance); RMSE of the ensemble mean; their ratio is 1 "
              "for a reliable ensemble, below 1 for an under-dispersive one.", ""]
    columns: dict[str, Callable[[dict], Any]] = {}
    owners: dict[str, str] = {}
    for m in ensembles:
        for label, field in (("spread", "spread"), ("RMSE", "rmse_ensemble_mean"), ("ratio", "spread_skill")):
            columns[f"{m} {label}"] = lambda lead, f=field: lead[f]
            owners[f"{m} {label}"] = m
    lines += _lead_table(views, ensembles, columns, owners=owners, groups=[[f"{m} ratio" for m in ensembles]],
                         best=lambda values: min(values, key=lambda v: abs(v - 1.0)))
    lines += ["", f"{heading} ROC area", ""]
    lines += _threshold_table(views, ensembles, thresholds, "roc_area", best=max)
    for statistic in PERIOD_STATISTICS:
        lines += _period_tables(scores, ensembles, reference, heading, statistic)
    return lines


def _period_tables(scores: dict[str, Any], ensembles: list[str], reference: str | None, heading: str,
                   statistic: str) -> list[str]:
    """CRPS, Brier score and skill, and ROC area of the forecast's maximum (rate > threshold at some lead) or of
    its accumulation (rain over the leads > threshold)."""
    views = _period_views(scores, ensembles, statistic)
    if not views:
        return []
    ensembles, thresholds = list(views), _probability_thresholds(views)
    first = sorted({p["first_lead_minutes"] for v in views.values() for p in v["leads"].values()})
    since = f"+{', +'.join(f'{f:g}' for f in first)} min"
    if statistic == "maximum":
        what = (f"The probability of rate > threshold (mm/h) at some lead from {since} to the row's last lead (the "
                "fraction of members above it at any lead, as `max_probabilities` publishes it), against the observed "
                "maximum on the pixels valid at every lead; and the CRPS of the members' maxima (mm/h), that Brier "
                "score integrated over every threshold. CRPS:")
    else:
        what = (f"The probability of more rain than the threshold (mm) over the leads from {since} to the row's last "
                "lead (each lead's rate times its time step, summed; the fraction of members above it, as "
                "`accumulation_probabilities` publishes it), against the observed rain on the pixels valid at every "
                "lead; and the CRPS of the members' rain (mm). CRPS:")
    lines = ["", f"{heading} {PERIOD_STATISTICS[statistic][0].upper()}{PERIOD_STATISTICS[statistic][1:]}", "",
             what, ""]
    row = "last lead (min)"
    lines += _lead_table(views, ensembles, {m: (lambda period: period.get("crps")) for m in ensembles}, best=min,
                         row_heading=row)
    lines += ["", "Brier score:", ""]
    lines += _threshold_table(views, ensembles, thresholds, "brier", best=min, row_heading=row)
    skilled = [m for m in ensembles if m != reference]
    if reference and skilled:
        lines += ["", f"Brier skill against {reference}:", ""]
        lines += _threshold_table(views, skilled, thresholds, "brier_skill", best=max, row_heading=row)
    lines += ["", "ROC area:", ""]
    lines += _threshold_table(views, ensembles, thresholds, "roc_area", best=max, row_heading=row)
    return lines


def _threshold_table(views: dict[str, Any], methods: list[str], thresholds: list[str], score: str, *,
                     best: Callable[..., float], row_heading: str = "lead (min)") -> list[str]:
    """One column per method and probability threshold, bold per threshold."""
    columns = {f"{m} >{t}": (lambda lead, t=t: lead["probability"][t].get(score)) for t in thresholds for m in methods}
    owners = {f"{m} >{t}": m for t in thresholds for m in methods}
    return _lead_table(views, methods, columns, owners=owners, best=best, row_heading=row_heading,
                       groups=[[f"{m} >{t}" for m in methods] for t in thresholds])


def _csi_table(scores: dict[str, Any], methods: list[str], thresholds: list[float]) -> list[str]:
    columns = {f"{m} >{t:g}": (lambda lead, t=t: lead["categorical"][key(t)]["CSI"])
               for t in thresholds for m in methods}
    owners = {f"{m} >{t:g}": m for t in thresholds for m in methods}
    table = _lead_table(scores, methods, columns, owners=owners, best=max,
                        groups=[[f"{m} >{t:g}" for m in methods] for t in thresholds])
    return ["CSI at each threshold (mm/h):", "", *table]


def _lead_table(scores: dict[str, Any], methods: list[str], columns: dict[str, Callable[[dict], Any]], *,
                best: Callable[..., float], owners: dict[str, str] | None = None,
                groups: list[list[str]] | None = None, row_heading: str = "lead (min)") -> list[str]:
    """Rows: lead times; columns: one value per method (or per method and setting)."""
    owners = owners or {m: m for m in methods}
    groups = groups or [list(columns)]
    leads = sorted({lead for m in methods for lead in scores[m]["leads"]}, key=float)
    lines = [f"| {row_heading} | n | " + " | ".join(columns) + " |", "|---:|---:|" + "---:|" * len(columns)]
    for lead in leads:
        values: dict[str, float | None] = {}
        n = 0
        for column, getter in columns.items():
            lead_scores = scores[owners[column]]["leads"].get(lead)
            values[column] = getter(lead_scores) if lead_scores else None
            n = max(n, lead_scores["n_forecasts"] if lead_scores else 0)
        bold = set()
        for group in groups:
            finite = [values[c] for c in group if values[c] is not None]
            if len(finite) > 1 and len(set(finite)) > 1:
                target = best(finite)
                bold |= {c for c in group if values[c] == target}
        cells = [f"**{_fmt(values[c])}**" if c in bold else _fmt(values[c]) for c in columns]
        lines.append(f"| {lead} | {n} | " + " | ".join(cells) + " |")
    return lines


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# --- model cards ----------------------------------------------------------------------

#: What a model is always compared with in its card.
CARD_BASELINES = ("persistence", "extrapolation", "sprog", "steps")
_SETTING_KEYS = ("thresholds_mmh", "fss_thresholds_mmh", "fss_scales_km", "spectrum_leads_minutes",
                 "spectrum_ratio_wavelengths_km")


def card_evaluation(report: dict[str, Any], method: str, *, source: str) -> dict[str, Any]:
    """What a model card keeps of an evaluation: ``method``'s scores and the baselines', as numbers.

    Per lead time CSI/POD/FAR with their counts, FSS, MAE and mean error; per spectrum lead
    the power ratios at the ratio wavelengths. No per-start-time sums or spectra (they stay
    in ``scores.json``), no other model's scores.
    """
    scores = report["overall"]["scores"]
    if method not in scores:
        raise KeyError(f"{source} has no scores of {method!r}; it scored {', '.join(scores)}")
    methods = [method, *(m for m in CARD_BASELINES if m in scores and m != method)]
    settings = {k: report["config"][k] for k in _SETTING_KEYS}
    if "ensemble" in report["config"]:
        settings["ensemble"] = report["config"]["ensemble"]
    return {
        "source": source,
        "method": method,
        "events": list(report["config"]["events"]),
        "settings": settings,
        "n_start_times": report["overall"]["n_start_times"],
        "n_evaluated": report["overall"]["n_evaluated"],
        "skipped": report["overall"]["skipped"],
        "scores": {m: _lean_scores(scores[m]) for m in methods},
    }


def _lean_scores(scores: dict[str, Any]) -> dict[str, Any]:
    leads = {
        lead: {
            "n_forecasts": s["n_forecasts"],
            "categorical": s["categorical"],
            "fss": {t: {k: {"fss": v["fss"]} for k, v in by_scale.items()} for t, by_scale in s["fss"].items()},
            "mae": s["mae"],
            "mean_error": s["mean_error"],
        }
        for lead, s in scores["leads"].items()
    }
    lean: dict[str, Any] = {"leads": leads}
    for kind in ("spectrum", "spectrum_matched", "spectrum_member", "spectrum_member_matched"):
        if kind in scores:
            lean[kind] = {lead: {"n_forecasts": s["n_forecasts"], "power_ratio": s["power_ratio"]}
                          for lead, s in scores[kind].items()}
    if scores.get("ensemble", {}).get("leads"):
        lean["ensemble"] = _lean_ensemble(scores["ensemble"])
    return lean


def _lean_ensemble(ensemble: dict[str, Any]) -> dict[str, Any]:
    """An ensemble's scores per lead (and of its forecast's maximum) without the sums, curves and reliability
    bins of ``scores.json``."""
    kept = ("lead_minutes", "first_lead_minutes", "last_lead_minutes", "n_forecasts", "crps", "spread",
            "rmse_ensemble_mean", "spread_skill", "rank_histogram")
    probability = ("brier", "brier_skill", "roc_area", "base_rate")

    def lean(by_lead: dict[str, Any]) -> dict[str, Any]:
        return {lead: {**{k: s[k] for k in kept if k in s},
                       "probability": {t: {k: p[k] for k in probability if k in p}
                                       for t, p in s["probability"].items()}}
                for lead, s in by_lead.items()}

    lean_ensemble = {"members": ensemble["members"], "leads": lean(ensemble["leads"])}
    for statistic in PERIOD_STATISTICS:
        if ensemble.get(f"period_{statistic}"):
            lean_ensemble[f"period_{statistic}"] = lean(ensemble[f"period_{statistic}"])
    return lean_ensemble


def card_tables(evaluation: dict[str, Any]) -> str:
    """The markdown tables of a card's evaluation (:func:`card_evaluation`)."""
    model = evaluation["method"]
    methods = [model, *(m for m in evaluation["scores"] if m != model)]
    lines = [f"Events: {', '.join(evaluation['events'])}; {evaluation['n_evaluated']} of "
             f"{evaluation['n_start_times']} start times evaluated (`{evaluation['source']}`).", ""]
    if evaluation.get("carried_from"):
        lines[0] += (f" Scored as {evaluation['carried_from']}, whose members this version draws alike: it "
                     "changes only how products are made from them.")
    lines += score_tables(evaluation["scores"], methods, evaluation["settings"], heading="###")
    return "\n".join(lines).rstrip() + "\n"
