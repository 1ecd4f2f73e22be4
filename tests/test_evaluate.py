"""The evaluation job on synthetic events (an injected loader), and on one real event."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from nowcast.errors import InputError, UnknownNameError
from nowcast.evaluate import (
    CSI_PLOT,
    SCORES_JSON,
    SCORES_MARKDOWN,
    SKIP_DRY_PAST,
    SKIP_EMPTY_PAST,
    SPECTRUM_PLOT,
    evaluate,
    start_indices,
)
from nowcast.report import render_markdown
from nowcast.synthetic import SyntheticRain, synthetic_sequence

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def synthetic_events() -> dict[str, xr.DataArray]:
    return {
        # 64 pixels: on smaller grids Lucas-Kanade has too little room to find the motion
        "east": synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=22, no_data_border=2), seed=11),
        "west": synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=19, velocity=(-0.5, -2.0)), seed=12),
    }


@pytest.fixture(scope="module")
def baseline_run(synthetic_events, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("eval")
    report = evaluate(["persistence", "extrapolation"], list(synthetic_events), stride=3,
                      loader=synthetic_events.__getitem__, out_dir=out, progress=False)
    return report, out


def test_start_indices():
    assert start_indices(22, 4, 12, 3) == [0, 3, 6]
    assert start_indices(16, 4, 12, 6) == [0]
    assert start_indices(15, 4, 12, 6) == []


def test_evaluation_writes_every_file(baseline_run):
    report, out = baseline_run
    names = {p.name for p in out.iterdir()}
    assert names == {SCORES_JSON, SCORES_MARKDOWN, CSI_PLOT, SPECTRUM_PLOT, "maps_east.png", "maps_west.png"}
    for name in names - {SCORES_JSON, SCORES_MARKDOWN}:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert json.loads((out / SCORES_JSON).read_text()) == report


def test_start_time_tables_add_up_to_the_event_tables(baseline_run):
    report, _ = baseline_run
    for event in report["events"].values():
        assert len(event["start_times"]) == event["n_evaluated"]
        for method, scores in event["scores"].items():
            for lead, lead_scores in scores["leads"].items():
                for thr, table in lead_scores["categorical"].items():
                    summed = np.sum([st["categorical"][method][lead][thr] for st in event["start_times"]], axis=0)
                    assert summed.tolist() == [table["hits"], table["misses"], table["false_alarms"]]
            for kind in ("spectrum", "spectrum_matched"):
                for lead, spectrum in scores[kind].items():
                    for w, ratio in spectrum["power_ratio"].items():
                        observed, forecast = np.sum([st[kind][method][lead][w] for st in event["start_times"]],
                                                    axis=0)
                        assert forecast / observed == pytest.approx(ratio)
    # tables differ between start times: each is one forecast's, not a running total
    east = report["events"]["east"]["start_times"]
    assert east[0]["categorical"]["persistence"]["5"]["1"] != east[1]["categorical"]["persistence"]["5"]["1"]


def test_scores_json_structure(baseline_run):
    report, _ = baseline_run
    assert report["config"]["methods"] == ["persistence", "extrapolation"]
    assert report["events"]["east"]["n_start_times"] == 3  # 22 frames, 16 per window, stride 3
    assert report["events"]["west"]["n_start_times"] == 2
    assert report["overall"]["n_evaluated"] == 5
    for method in ("persistence", "extrapolation"):
        assert report["timing"][method]["n_forecasts"] == 5
        assert report["timing"][method]["mean_seconds_per_forecast"] > 0
        scores = report["overall"]["scores"][method]
        assert list(scores["leads"]) == [str(5 * k) for k in range(1, 13)]
        lead = scores["leads"]["30"]
        assert lead["n_forecasts"] == 5
        assert set(lead["categorical"]) == {"1", "4", "8"}
        assert set(lead["categorical"]["1"]) == {"hits", "misses", "false_alarms", "correct_negatives",
                                                 "CSI", "POD", "FAR"}
        assert set(lead["fss"]) == {"1", "4"}
        assert set(lead["fss"]["1"]) == {"1", "4", "16", "32"}
        assert lead["mae"] >= 0
        assert set(scores["spectrum"]) == {"30", "60"}
        assert set(scores["spectrum"]["60"]["power_ratio"]) == {"8", "16", "32", "64"}


def test_overall_contingency_tables_are_sums_of_the_events(baseline_run):
    report, _ = baseline_run
    for method in ("persistence", "extrapolation"):
        for lead in ("5", "60"):
            overall = report["overall"]["scores"][method]["leads"][lead]["categorical"]["4"]
            per_event = [event["scores"][method]["leads"][lead]["categorical"]["4"]
                         for event in report["events"].values()]
            for count in ("hits", "misses", "false_alarms", "correct_negatives"):
                assert overall[count] == sum(e[count] for e in per_event)
            assert overall["CSI"] == pytest.approx(
                overall["hits"] / (overall["hits"] + overall["misses"] + overall["false_alarms"]))


def test_no_data_border_is_not_verified(baseline_run, synthetic_events):
    report, _ = baseline_run
    lead = report["events"]["east"]["scores"]["persistence"]["leads"]["5"]
    valid_pixels = int(np.isfinite(synthetic_events["east"].values[0]).sum())  # border of 2 is NaN
    assert lead["n_pixels"] == 3 * valid_pixels
    table = lead["categorical"]["1"]
    assert sum(table[c] for c in ("hits", "misses", "false_alarms", "correct_negatives")) == 3 * valid_pixels


def test_extrapolation_beats_persistence_on_moving_rain(baseline_run):
    report, _ = baseline_run
    scores = report["overall"]["scores"]
    for lead in scores["persistence"]["leads"]:
        persistence = scores["persistence"]["leads"][lead]["categorical"]["1"]["CSI"]
        extrapolation = scores["extrapolation"]["leads"][lead]["categorical"]["1"]["CSI"]
        assert extrapolation > persistence, f"lead {lead} min"


def test_markdown_tables(baseline_run):
    report, out = baseline_run
    text = (out / SCORES_MARKDOWN).read_text()
    assert text == render_markdown(report)
    for heading in ("### CSI, rain rate > 1 mm/h", "### CSI, rain rate > 8 mm/h",
                    "### FSS, rain rate ≥ 4 mm/h", "### Mean absolute error (mm/h)", "### Power spectrum",
                    "### Power spectrum of the forecast matched to the observed distribution",
                    "### east", "### west"):
        assert heading in text
    assert "| lead (min) | n | persistence | extrapolation |" in text
    csi_60 = report["overall"]["scores"]["extrapolation"]["leads"]["60"]["categorical"]["1"]["CSI"]
    assert f"**{csi_60:.3f}**" in text


def test_start_times_without_rain_or_data_are_skipped(tmp_path):
    sequence = synthetic_sequence(SyntheticRain(ny=24, nx=24, frames=14), seed=3).copy(deep=True)
    sequence.values[0:2] = 0.0  # window at 0 has a dry past
    sequence.values[5] = np.nan  # windows at 4 and 5 have an empty past frame
    calls = []

    def loader(event_id: str) -> xr.DataArray:
        calls.append(event_id)
        return sequence

    report = evaluate(["persistence"], ["e"], n_input=2, steps=3, stride=1, loader=loader, out_dir=tmp_path,
                      progress=False)
    event = report["events"]["e"]
    assert calls == ["e"]
    assert event["n_start_times"] == 10
    assert event["skipped"] == {SKIP_DRY_PAST: 1, SKIP_EMPTY_PAST: 2}
    assert event["n_evaluated"] == 7
    reasons = [skipped["reason"] for skipped in event["skipped_start_times"]]
    assert reasons == [SKIP_DRY_PAST, SKIP_EMPTY_PAST, SKIP_EMPTY_PAST]
    # the empty frame 5 is also a future frame of windows 1 to 3 (leads 15, 10, 5 min)
    leads = event["scores"]["persistence"]["leads"]
    assert [leads[lead]["n_forecasts"] for lead in ("5", "10", "15")] == [6, 6, 6]
    assert report["timing"]["persistence"]["n_forecasts"] == 7


def test_bad_arguments_fail_before_any_event_is_loaded(tmp_path):
    def loader(event_id: str) -> xr.DataArray:
        raise AssertionError("must not load")

    with pytest.raises(UnknownNameError, match="unknown forecaster 'nope'"):
        evaluate(["persistence", "nope"], ["e"], loader=loader, out_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="extrapolation needs 4 past frames"):
        evaluate(["extrapolation"], ["e"], n_input=2, loader=loader, out_dir=tmp_path, progress=False)
    with pytest.raises(InputError, match="stride"):
        evaluate(["persistence"], ["e"], stride=0, loader=loader, out_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_nothing_is_written_when_an_event_fails(tmp_path, synthetic_events):
    def loader(event_id: str) -> xr.DataArray:
        if event_id == "broken":
            raise InputError("event broken: no files")
        return synthetic_events[event_id]

    out = tmp_path / "out"
    with pytest.raises(InputError, match="no files"):
        evaluate(["persistence"], ["west", "broken"], loader=loader, out_dir=out, progress=False)
    assert not out.exists()


@pytest.mark.realdata
def test_evaluate_one_real_event(real_data_root, tmp_path):
    from nowcast.io.catalogue import get_event, load_event

    event = get_event("mch-20170131")
    start = event.start + 12 * event.step
    end = start + 17 * event.step  # 18 frames: two start times of 4 past and 8 future frames

    def loader(event_id: str) -> xr.DataArray:
        return load_event(event_id, root=real_data_root, start=start, end=end)

    report = evaluate(["persistence", "extrapolation"], [event.id], n_input=4, steps=8, stride=6,
                      loader=loader, out_dir=tmp_path, progress=False)
    result = report["events"][event.id]
    assert result["grid"] == {"ny": 640, "nx": 710, "pixel_size_km": 1.0}
    assert result["n_start_times"] == 2
    assert result["n_evaluated"] == 2
    scores = report["overall"]["scores"]
    lead = scores["extrapolation"]["leads"]["30"]
    # MeteoSwiss' composite has no data outside the radars' range: far fewer pixels than the grid
    assert 0 < lead["n_pixels"] < 2 * 640 * 710 * 0.8
    for method in ("persistence", "extrapolation"):
        assert 0.0 < scores[method]["leads"]["5"]["categorical"]["1"]["CSI"] <= 1.0
    assert scores["extrapolation"]["leads"]["5"]["categorical"]["1"]["CSI"] > \
        scores["persistence"]["leads"]["5"]["categorical"]["1"]["CSI"]
    assert (tmp_path / f"maps_{event.id}.png").is_file()


def test_a_failed_report_leaves_the_previous_one_in_place(tmp_path, synthetic_events, monkeypatch):
    from nowcast import plots

    (tmp_path / SCORES_JSON).write_text("{}")

    def broken(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(plots, "maps_figure", broken)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        evaluate(["persistence"], ["west"], steps=3, stride=8, loader=synthetic_events.__getitem__,
                 out_dir=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [SCORES_JSON]  # no staging folder, nothing new
    assert (tmp_path / SCORES_JSON).read_text() == "{}"
