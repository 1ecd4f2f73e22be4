"""`nowcast evaluate` with ensemble members: a stand-in ensemble forecaster on a synthetic event."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from nowcast import forecasters, plots
from nowcast.bootstrap import brier_skill_interval, crps_difference_interval, spectrum_ratio_difference_interval
from nowcast.ensemble import probability_matched_mean
from nowcast.errors import InputError
from nowcast.evaluate import (
    ENSEMBLE_SUM_KINDS,
    RANK_HISTOGRAM_PLOT,
    RELIABILITY_ACCUMULATION_PLOT,
    RELIABILITY_MAXIMUM_PLOT,
    RELIABILITY_PLOT,
    SCORES_JSON,
    SCORES_MARKDOWN,
    evaluate,
)
from nowcast.forecasters.base import Forecaster, Spacing
from nowcast.synthetic import SyntheticRain, synthetic_sequence
from nowcast.verification import Contingency, ScoreSettings, crps_sums

MEMBERS = 5
ENSEMBLES = ("noisy", "wide")
RUN_DEPENDENT = ("started", "runtime_seconds", "timing")


class NoisyPersistence(Forecaster):
    """Persistence times log-normal noise per member, lead time and pixel: a stand-in ensemble."""

    name = "noisy"
    n_input_frames = 1
    supports_members = True

    def __init__(self, sigma: float = 0.3) -> None:
        self.sigma = sigma

    def predict(self, past: np.ndarray, steps: int, *, members: int | None = None, seed: int | None = None,
                spacing: Spacing | None = None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        noise = rng.lognormal(0.0, self.sigma, size=(past.shape[0], members or 1, steps, *past.shape[2:]))
        out = (past[:, np.newaxis, -1:] * noise).astype(np.float32)
        return out if members is not None else out[:, 0]


@contextlib.contextmanager
def stand_ins_registered() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(forecasters.METHODS, "noisy", NoisyPersistence)
        patch.setitem(forecasters.METHODS, "wide", lambda: NoisyPersistence(sigma=1.0))
        yield


@pytest.fixture(scope="module")
def events() -> dict[str, xr.DataArray]:
    # 22 frames, a start every 6: 2 start times of 4 past and 12 future frames
    return {"east": synthetic_sequence(SyntheticRain(ny=48, nx=48, frames=22, no_data_border=2), seed=11)}


def run(events: dict[str, xr.DataArray], out: Path, methods: tuple[str, ...] = ("persistence", *ENSEMBLES),
        **options: Any) -> dict[str, Any]:
    with stand_ins_registered():
        return evaluate(list(methods), list(events), stride=6, loader=events.__getitem__, out_dir=out,
                        progress=False, **options)


@pytest.fixture(scope="module")
def ensemble_run(events, tmp_path_factory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("ensemble")
    return run(events, out, members=MEMBERS, brier_reference="wide"), out


def without_run_details(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k not in RUN_DEPENDENT}


def test_only_the_ensembles_get_ensemble_scores(ensemble_run):
    report, _ = ensemble_run
    assert report["config"]["ensemble"] == {
        "members": MEMBERS, "seed": 0, "methods": list(ENSEMBLES), "brier_reference": "wide",
        "probability_thresholds_mmh": [1.0, 4.0, 8.0], "accumulation_thresholds_mm": [1.0, 5.0, 10.0],
        "rank_histogram_min_mmh": 0.1,
        "probability_neighbourhood_km_per_minute": 0.0}
    scores = report["overall"]["scores"]
    assert set(scores["persistence"]) == {"leads", "spectrum", "spectrum_matched"}
    for name in ENSEMBLES:
        assert set(scores[name]) == {"leads", "spectrum", "spectrum_matched", "ensemble", "spectrum_member",
                                     "spectrum_member_matched"}
        ensemble = scores[name]["ensemble"]
        assert ensemble["members"] == MEMBERS
        assert list(ensemble["leads"]) == [str(5 * k) for k in range(1, 13)]
        lead = ensemble["leads"]["30"]
        assert lead["n_forecasts"] == 2 and lead["crps"] > 0
        assert lead["n_pixels"] == scores[name]["leads"]["30"]["n_pixels"]  # the deterministic scores' pixels
        assert set(lead["probability"]) == {"1", "4", "8"}
        assert len(lead["rank_histogram"]) == MEMBERS + 1
        assert set(scores[name]["spectrum_member"]) == {"30", "60"}
    # the stand-in's noise only spreads persistence's error: too little spread for its skill
    assert scores["noisy"]["ensemble"]["leads"]["60"]["spread_skill"] < 1.0
    record = report["events"]["east"]["start_times"][0]
    assert set(record) == {"time", "categorical", "spectrum", "spectrum_matched", "seed", "crps", "brier",
                           "period_crps", "period_brier", "accumulation_crps", "accumulation_brier",
                           "spectrum_member", "spectrum_member_matched"}
    assert (set(record["crps"]) == set(record["brier"]) == set(record["period_crps"]) == set(record["period_brier"])
            == set(record["accumulation_crps"]) == set(record["accumulation_brier"])
            == set(record["spectrum_member"]) == set(record["spectrum_member_matched"]) == set(ENSEMBLES))
    period = scores["noisy"]["ensemble"]["period_maximum"]
    assert list(period) == ["60"] and period["60"]["first_lead_minutes"] == 5.0 and period["60"]["n_forecasts"] == 2


def test_deterministic_methods_are_scored_as_without_members(ensemble_run, events, tmp_path):
    report, _ = ensemble_run
    alone = run(events, tmp_path, methods=("persistence",))
    assert "ensemble" not in alone["config"]
    assert alone["overall"]["scores"]["persistence"] == report["overall"]["scores"]["persistence"]
    for with_ensembles, without in zip(report["events"]["east"]["start_times"], alone["events"]["east"]["start_times"],
                                       strict=True):
        assert set(without) == {"time", "categorical", "spectrum", "spectrum_matched"}
        assert without["categorical"]["persistence"] == with_ensembles["categorical"]["persistence"]


def test_an_ensemble_is_scored_by_its_members_and_their_probability_matched_mean(ensemble_run, events):
    report, _ = ensemble_run
    record = report["events"]["east"]["start_times"][1]
    sequence = events["east"]
    start = 6  # the second start time: past frames 6 to 9
    assert record["time"] == str(np.datetime_as_string(sequence["time"].values[start + 3], unit="s"))
    members = NoisyPersistence().forecast(sequence.isel(time=slice(start, start + 4)), 12, members=MEMBERS,
                                          seed=record["seed"]).values
    lead = 5  # +30 min
    observed = sequence.values[start + 4 + lead]
    matched_mean = probability_matched_mean(members)[lead]
    valid = np.isfinite(observed) & np.all(np.isfinite(members[:, lead]), axis=0)
    table = Contingency(1.0)
    table.add(matched_mean[valid], observed[valid])
    assert record["categorical"]["noisy"]["30"]["1"] == list(table.counts())
    crps_sum, n_pixels = record["crps"]["noisy"]["30"]
    assert n_pixels == valid.sum()
    assert crps_sum == pytest.approx(crps_sums(members[:, lead][:, valid], observed[valid]), rel=1e-9)
    # the forecast's maximum: over the 12 leads, on the pixels valid at all of them
    future = sequence.values[start + 4:start + 16]
    every_lead = np.all(np.isfinite(future), axis=0) & np.all(np.isfinite(members), axis=(0, 1))
    probability = np.count_nonzero(members[:, :, every_lead].max(axis=1) > 4.0, axis=0) / MEMBERS
    brier_sum, n_pixels = record["period_brier"]["noisy"]["60"]["4"]
    assert n_pixels == every_lead.sum()
    assert brier_sum == pytest.approx(np.sum((probability - (future[:, every_lead].max(axis=0) > 4.0)) ** 2))
    crps_sum, n_pixels = record["period_crps"]["noisy"]["60"]
    assert n_pixels == every_lead.sum()
    assert crps_sum == pytest.approx(crps_sums(members[:, :, every_lead].max(axis=1),
                                               future[:, every_lead].max(axis=0)), rel=1e-9)
    # the rain over the hour: each five-minute lead's rate for a twelfth of an hour, on the same pixels
    member_totals = members[:, :, every_lead].sum(axis=1) / 12.0
    observed_total = future[:, every_lead].sum(axis=0) / 12.0
    brier_sum, n_pixels = record["accumulation_brier"]["noisy"]["60"]["1"]
    assert n_pixels == every_lead.sum() and 0 < np.mean(observed_total > 1.0) < 1
    probability = np.count_nonzero(member_totals > 1.0, axis=0) / MEMBERS
    assert brier_sum == pytest.approx(np.sum((probability - (observed_total > 1.0)) ** 2), rel=1e-6)
    crps_sum, _ = record["accumulation_crps"]["noisy"]["60"]
    assert crps_sum == pytest.approx(crps_sums(member_totals, observed_total), rel=1e-5)


def test_start_time_sums_add_up_to_the_event_scores(ensemble_run):
    report, _ = ensemble_run
    event = report["events"]["east"]
    for name in ENSEMBLES:
        for lead, scores in event["scores"][name]["ensemble"]["leads"].items():
            crps_sum, n = np.sum([r["crps"][name][lead] for r in event["start_times"]], axis=0)
            assert crps_sum == pytest.approx(scores["crps_sum"]) and n == scores["n_pixels"]
            for threshold, probability in scores["probability"].items():
                brier_sum, n = np.sum([r["brier"][name][lead][threshold] for r in event["start_times"]], axis=0)
                assert brier_sum == pytest.approx(probability["brier_sum"]) and n == probability["n_pixels"]
        maximum = event["scores"][name]["ensemble"]["period_maximum"]["60"]
        crps_sum, n = np.sum([r["period_crps"][name]["60"] for r in event["start_times"]], axis=0)
        assert crps_sum == pytest.approx(maximum["crps_sum"]) and n == maximum["n_pixels"]
        for threshold, probability in maximum["probability"].items():
            brier_sum, n = np.sum([r["period_brier"][name]["60"][threshold] for r in event["start_times"]], axis=0)
            assert brier_sum == pytest.approx(probability["brier_sum"]) and n == probability["n_pixels"]
        rain = event["scores"][name]["ensemble"]["period_accumulation"]["60"]
        crps_sum, n = np.sum([r["accumulation_crps"][name]["60"] for r in event["start_times"]], axis=0)
        assert crps_sum == pytest.approx(rain["crps_sum"]) and n == rain["n_pixels"]
        for threshold, probability in rain["probability"].items():
            brier_sum, n = np.sum([r["accumulation_brier"][name]["60"][threshold] for r in event["start_times"]],
                                  axis=0)
            assert brier_sum == pytest.approx(probability["brier_sum"]) and n == probability["n_pixels"]


def test_brier_skill_is_against_the_reference(ensemble_run):
    report, _ = ensemble_run
    scores = report["overall"]["scores"]
    for lead, wide in scores["wide"]["ensemble"]["leads"].items():
        noisy = scores["noisy"]["ensemble"]["leads"][lead]
        for threshold, reference in wide["probability"].items():
            if reference["brier"]:
                assert reference["brier_skill"] == 0.0
                assert noisy["probability"][threshold]["brier_skill"] == pytest.approx(
                    1.0 - noisy["probability"][threshold]["brier"] / reference["brier"])
    assert "brier_skill" not in scores["persistence"]["leads"]["30"]
    maximum, reference = (scores[m]["ensemble"]["period_maximum"]["60"]["probability"] for m in ("noisy", "wide"))
    for threshold, probability in maximum.items():
        assert reference[threshold]["brier_skill"] == 0.0
        assert probability["brier_skill"] == pytest.approx(1.0 - probability["brier"] / reference[threshold]["brier"])


def test_files_and_tables_of_an_ensemble_evaluation(ensemble_run):
    report, out = ensemble_run
    assert {RELIABILITY_PLOT, RANK_HISTOGRAM_PLOT, RELIABILITY_MAXIMUM_PLOT,
            RELIABILITY_ACCUMULATION_PLOT} <= {p.name for p in out.iterdir()}
    text = (out / SCORES_MARKDOWN).read_text()
    for heading in ("### Ensembles", "### CRPS (mm/h)", "### Brier score", "### Brier skill against wide",
                    "### Spread / skill", "### ROC area", "### The forecast's maximum",
                    "### The rain over the forecast"):
        assert heading in text
    assert "more rain than the threshold (mm) over the leads from +5 min" in text
    rain = report["overall"]["scores"]["noisy"]["ensemble"]["period_accumulation"]["60"]["probability"]["5"]
    assert "| last lead (min) | n | noisy >1 | noisy >5 | noisy >10 |" in text
    assert "Brier skill of the rain over the forecast (mm) against wide:" in text[text.index("### east"):]
    assert rain["brier_skill"] is None or f"{rain['brier_skill']:.3f}" in text
    assert "at some lead from +5 min to the row's last lead" in text
    assert "that Brier score integrated over every threshold. CRPS:" in text
    maximum = report["overall"]["scores"]["noisy"]["ensemble"]["period_maximum"]["60"]["probability"]["1"]
    assert f"| 60 | 2 | {maximum['brier_skill']:.3f} |" in text  # the skill table: noisy, against wide
    per_event = text[text.index("### east"):]
    assert "Brier skill of the forecast's maximum (mm/h) against wide:" in per_event
    assert f"| 60 | 2 | {maximum['brier_skill']:.3f} |" in per_event  # one event: its scores are the overall ones
    assert "| noisy, member 1 | 30 |" in text
    assert "| lead (min) | n | noisy ratio | wide ratio |" not in text  # spread and RMSE columns come too
    assert "| lead (min) | n | noisy spread | noisy RMSE | noisy ratio | wide spread |" in text
    assert json.loads((out / SCORES_JSON).read_text()) == report


def test_two_runs_give_the_same_scores(ensemble_run, events, tmp_path):
    report, _ = ensemble_run
    again = run(events, tmp_path, members=MEMBERS, brier_reference="wide")
    assert without_run_details(again) == without_run_details(report)


def test_bootstrap_intervals_of_crps_and_brier_skill(ensemble_run, tmp_path):
    report, _ = ensemble_run
    noisy, wide = (report["overall"]["scores"][name]["ensemble"]["leads"] for name in ("noisy", "wide"))
    crps = crps_difference_interval(report, "noisy", "wide", n_resamples=200)
    skill = brier_skill_interval(report, "noisy", "wide", n_resamples=200)
    for lead, interval in crps.items():
        assert interval["difference"] == pytest.approx(noisy[lead]["crps"] - wide[lead]["crps"])
        assert interval["low"] - 1e-12 <= interval["difference"] <= interval["high"] + 1e-12
        for threshold, by_threshold in skill[lead].items():
            expected_skill = noisy[lead]["probability"][threshold]["brier_skill"]
            if expected_skill is not None:
                assert by_threshold["skill"] == pytest.approx(expected_skill)
    maximum_crps = crps_difference_interval(report, "noisy", "wide", period="maximum", n_resamples=200)
    noisy_maximum, wide_maximum = (report["overall"]["scores"][name]["ensemble"]["period_maximum"]["60"]
                                   for name in ("noisy", "wide"))
    assert maximum_crps["60"]["difference"] == pytest.approx(noisy_maximum["crps"] - wide_maximum["crps"])
    maximum = brier_skill_interval(report, "noisy", "wide", period="maximum", n_resamples=200)
    assert list(maximum) == ["60"]
    for threshold, interval in maximum["60"].items():
        expected_skill = report["overall"]["scores"]["noisy"]["ensemble"]["period_maximum"]["60"]["probability"][
            threshold]["brier_skill"]
        assert interval["skill"] == pytest.approx(expected_skill)
        assert interval["low"] - 1e-12 <= interval["skill"] <= interval["high"] + 1e-12
    rain_crps = crps_difference_interval(report, "noisy", "wide", period="accumulation", n_resamples=200)
    noisy_rain, wide_rain = (report["overall"]["scores"][name]["ensemble"]["period_accumulation"]["60"]
                             for name in ("noisy", "wide"))
    assert rain_crps["60"]["difference"] == pytest.approx(noisy_rain["crps"] - wide_rain["crps"])
    rain_skill = brier_skill_interval(report, "noisy", "wide", period="accumulation", n_resamples=200)
    assert set(rain_skill["60"]) == {"1", "5", "10"}
    assert rain_skill["60"]["1"]["skill"] == pytest.approx(noisy_rain["probability"]["1"]["brier_skill"])
    with pytest.raises(ValueError, match="unknown period 'total'"):
        brier_skill_interval(report, "noisy", "wide", period="total")
    assert crps["60"]["p_not_ahead"] == 0.0  # less noise than the wide stand-in: a lower CRPS, every resample
    with pytest.raises(InputError, match="'persistence' was not scored as an ensemble; ensembles there: noisy, wide"):
        crps_difference_interval(report, "persistence", "wide")
    deterministic = {**report, "events": {k: {**e, "start_times": [
        {kind: v for kind, v in r.items() if kind not in (*ENSEMBLE_SUM_KINDS, "seed")}
        for r in e["start_times"]]}
        for k, e in report["events"].items()}}
    with pytest.raises(InputError, match="no method was scored as an ensemble"):
        brier_skill_interval(deterministic, "noisy", "wide")


def test_bootstrap_intervals_of_member_spectra(ensemble_run):
    """Each start time keeps what its ensembles' first members added to the member spectra, plain and matched: the
    intervals of the power-ratio difference centre on the evaluation's own ratios."""
    report, _ = ensemble_run
    scores = report["overall"]["scores"]
    record = report["events"]["east"]["start_times"][0]
    assert set(record["spectrum_member"]) == {"noisy", "wide"}  # ensembles only
    for matched, kind in ((False, "spectrum_member"), (True, "spectrum_member_matched")):
        intervals = spectrum_ratio_difference_interval(report, "noisy", "wide", matched=matched, member=True,
                                                       n_resamples=200)
        assert set(intervals) == {"30", "60"}
        compared = 0
        for lead, by_wavelength in intervals.items():
            for wavelength, interval in by_wavelength.items():
                ratios = [scores[name][kind][lead]["power_ratio"].get(wavelength) for name in ("noisy", "wide")]
                expected = np.nan if None in ratios else ratios[0] - ratios[1]  # None: a wavelength not resolved
                if np.isfinite(expected):
                    assert interval["difference"] == pytest.approx(expected)
                    assert interval["low"] - 1e-12 <= interval["difference"] <= interval["high"] + 1e-12
                    compared += 1
        assert compared >= 2
    with pytest.raises(InputError, match="'persistence' was not scored as an ensemble"):
        spectrum_ratio_difference_interval(report, "persistence", "wide", member=True)
    older = {**report, "events": {k: {**e, "start_times": [
        {kind: v for kind, v in r.items() if not kind.startswith("spectrum_member")} for r in e["start_times"]]}
        for k, e in report["events"].items()}}
    with pytest.raises(InputError, match="no per-start-time spectrum_member sums"):
        spectrum_ratio_difference_interval(older, "noisy", "wide", member=True)


def test_ensemble_options_are_checked_before_any_event_is_loaded(tmp_path):
    def loader(event_id: str) -> xr.DataArray:
        raise AssertionError("must not load")

    with stand_ins_registered():
        with pytest.raises(InputError, match="members must be at least 2"):
            evaluate(["noisy"], ["e"], members=1, loader=loader, out_dir=tmp_path, progress=False)
        with pytest.raises(InputError, match="none of persistence draws ensemble members"):
            evaluate(["persistence"], ["e"], members=4, loader=loader, out_dir=tmp_path, progress=False)
        with pytest.raises(InputError, match="reference 'persistence' is not among the methods scored as ensembles"):
            evaluate(["persistence", "noisy"], ["e"], members=4, brier_reference="persistence", loader=loader,
                     out_dir=tmp_path, progress=False)
        with pytest.raises(InputError, match="probability_neighbourhood: given, but no members are drawn"):
            evaluate(["noisy"], ["e"], loader=loader, out_dir=tmp_path, progress=False,
                     settings=ScoreSettings(probability_neighbourhood_km_per_minute=0.8))
    assert list(tmp_path.iterdir()) == []


def test_without_steps_there_is_no_brier_reference_and_maps_show_probabilities(events, tmp_path, monkeypatch):
    maps_drawn = []
    draw_maps = plots.maps_figure
    monkeypatch.setattr(plots, "maps_figure", lambda *a, **kw: maps_drawn.append(kw) or draw_maps(*a, **kw))
    report = run(events, tmp_path, methods=("persistence", "noisy"), members=3, steps=6)
    assert report["config"]["ensemble"]["brier_reference"] is None  # the default, steps, is not among them
    assert "brier_skill" not in report["overall"]["scores"]["noisy"]["ensemble"]["leads"]["30"]["probability"]["1"]
    probabilities = maps_drawn[0]["probabilities"]
    assert set(probabilities) == {"noisy"} and set(probabilities["noisy"]) == {30.0}  # +60 is beyond 6 steps
    finite = probabilities["noisy"][30.0][np.isfinite(probabilities["noisy"][30.0])]
    assert finite.min() >= 0.0 and finite.max() <= 1.0 and 0.0 < finite.mean() < 1.0
    assert "### Brier skill" not in (tmp_path / SCORES_MARKDOWN).read_text()


def test_every_ensemble_is_scored_with_neighbourhood_processed_probabilities_alike(ensemble_run, events, tmp_path,
                                                                                  monkeypatch):
    maps_drawn = []
    draw_maps = plots.maps_figure
    monkeypatch.setattr(plots, "maps_figure", lambda *a, **kw: maps_drawn.append(kw) or draw_maps(*a, **kw))
    raw, _ = ensemble_run
    report = run(events, tmp_path, members=MEMBERS, brier_reference="wide",
                 settings=ScoreSettings(probability_neighbourhood_km_per_minute=0.5))
    assert report["config"]["ensemble"]["probability_neighbourhood_km_per_minute"] == 0.5
    for method in ENSEMBLES:
        smoothed = report["overall"]["scores"][method]["ensemble"]["leads"]
        unsmoothed = raw["overall"]["scores"][method]["ensemble"]["leads"]
        assert [lead["crps"] for lead in smoothed.values()] == [lead["crps"] for lead in unsmoothed.values()]
        # noise per pixel averages out in a window: every lead's Brier score falls
        for lead, scores in smoothed.items():
            assert scores["probability"]["1"]["brier"] < unsmoothed[lead]["probability"]["1"]["brier"]
    assert "grows 0.5 km per minute of lead, for every ensemble alike" in (tmp_path / SCORES_MARKDOWN).read_text()
    # the map shows the probability as it is scored: smoother than the members' own fractions
    probability = maps_drawn[0]["probabilities"]["noisy"][30.0]
    assert len(np.unique(probability[np.isfinite(probability)])) > MEMBERS + 1


def test_the_command_line_passes_the_ensemble_options(tmp_path, monkeypatch):
    from nowcast import evaluate as evaluate_module
    from nowcast.cli import EXIT_USER_ERROR, app

    calls = []

    def fake_evaluation(methods, events, **options):
        calls.append(options)
        return {"timing": {}, "overall": {"n_evaluated": 0}, "runtime_seconds": 0.0}

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluation)
    runner = CliRunner()
    common = ["-q", "evaluate", "--methods", "steps", "--events", "knmi-20100826", "--out", str(tmp_path / "e")]
    result = runner.invoke(app, [*common, "--members", "12", "--seed", "7", "--brier-reference", "none"])
    assert result.exit_code == 0, result.output
    assert (calls[0]["members"], calls[0]["seed"], calls[0]["brier_reference"]) == (12, 7, None)
    result = runner.invoke(app, common)
    assert (calls[1]["members"], calls[1]["seed"], calls[1]["brier_reference"]) == (None, 0, "steps")
    assert calls[1]["settings"].probability_neighbourhood_km_per_minute == 0.0
    result = runner.invoke(app, [*common, "--members", "1"])
    assert result.exit_code == EXIT_USER_ERROR
    result = runner.invoke(app, [*common, "--members", "20", "--probability-neighbourhood", "0.8"])
    assert result.exit_code == 0, result.output
    assert calls[2]["settings"].probability_neighbourhood_km_per_minute == 0.8
    assert calls[2]["settings"].probability_thresholds_mmh == (1.0, 4.0, 8.0)
    result = runner.invoke(app, [*common, "--members", "20", "--probability-thresholds", "1,10"])
    assert result.exit_code == 0, result.output
    assert calls[3]["settings"].probability_thresholds_mmh == (1.0, 10.0)
    for bad in ("10,1", "1,1.0", "-1", "1,nan", "1,x", ","):
        result = runner.invoke(app, [*common, "--members", "20", "--probability-thresholds", bad])
        assert result.exit_code == EXIT_USER_ERROR, (bad, result.output)
        assert "probability" in result.output and "Traceback" not in result.output
    assert calls[2]["settings"].accumulation_thresholds_mm == (1.0, 5.0, 10.0)
    result = runner.invoke(app, [*common, "--members", "20", "--accumulation-thresholds", "2,20"])
    assert result.exit_code == 0, result.output
    assert calls[4]["settings"].accumulation_thresholds_mm == (2.0, 20.0)
    for bad in ("20,2", "-1", "1,x"):
        result = runner.invoke(app, [*common, "--members", "20", "--accumulation-thresholds", bad])
        assert result.exit_code == EXIT_USER_ERROR, (bad, result.output)
        assert "accumulation" in result.output and "Traceback" not in result.output
    assert len(calls) == 5


def test_a_model_card_keeps_the_ensemble_scores(ensemble_run):
    """An ensemble model's card carries its CRPS, Brier skill and spread/skill, without the sums and curves."""
    from nowcast.report import card_evaluation, card_tables

    report, _ = ensemble_run
    card = card_evaluation(report, "noisy", source="scores.json")
    assert sorted(card["scores"]) == ["noisy", "persistence"]
    assert card["settings"]["ensemble"]["members"] == MEMBERS
    lean = card["scores"]["noisy"]["ensemble"]
    full = report["overall"]["scores"]["noisy"]["ensemble"]
    lead = next(iter(full["leads"]))
    assert lean["members"] == MEMBERS
    assert lean["leads"][lead]["crps"] == full["leads"][lead]["crps"]
    assert lean["leads"][lead]["spread_skill"] == full["leads"][lead]["spread_skill"]
    threshold = next(iter(full["leads"][lead]["probability"]))
    kept = lean["leads"][lead]["probability"][threshold]
    assert kept["brier"] == full["leads"][lead]["probability"][threshold]["brier"]
    assert "reliability" not in kept and "roc" not in kept and "crps_sum" not in lean["leads"][lead]
    assert "ensemble" not in card["scores"]["persistence"]
    text = card_tables(card)
    assert "### CRPS (mm/h)" in text and "### Spread / skill" in text and "| noisy, member 1 |" in text
    assert lean["period_maximum"]["60"]["probability"]["4"]["brier"] == (
        full["period_maximum"]["60"]["probability"]["4"]["brier"])
    assert "reliability" not in lean["period_maximum"]["60"]["probability"]["4"]
    assert "### The forecast's maximum" in text
    assert lean["period_accumulation"]["60"]["crps"] == full["period_accumulation"]["60"]["crps"]
    assert "### The rain over the forecast" in text


class PlacedNoisyPersistence(NoisyPersistence):
    """The stand-in with a probability-matched mean placed by a 0.6 km-per-minute window."""

    name = "placed"
    mean_neighbourhood_km_per_minute = 0.6


def test_an_ensembles_probability_matched_mean_is_placed_as_its_forecaster_sets(events, tmp_path):
    from nowcast.ensemble import lead_probability_matched_mean
    from nowcast.sequence import pixel_size_km

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(forecasters.METHODS, "placed", PlacedNoisyPersistence)
        report = evaluate(["placed"], ["east"], stride=6, loader=events.__getitem__, out_dir=tmp_path,
                          progress=False, members=MEMBERS)
    record = report["events"]["east"]["start_times"][1]
    sequence = events["east"]
    start, lead = 6, 5  # the second start time, +30 min
    members = PlacedNoisyPersistence().forecast(sequence.isel(time=slice(start, start + 4)), 12, members=MEMBERS,
                                                seed=record["seed"]).values
    leads = [5.0 * (k + 1) for k in range(12)]
    placed = lead_probability_matched_mean(members, leads, 0.6, pixel_size_km(sequence))[lead]
    assert not np.array_equal(placed, probability_matched_mean(members)[lead], equal_nan=True)
    observed = sequence.values[start + 4 + lead]
    valid = np.isfinite(observed) & np.all(np.isfinite(members[:, lead]), axis=0)
    table = Contingency(1.0)
    table.add(placed[valid], observed[valid])
    assert record["categorical"]["placed"]["30"]["1"] == list(table.counts())
