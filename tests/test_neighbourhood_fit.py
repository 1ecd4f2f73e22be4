"""`nowcast fit-neighbourhood`: the probabilities' neighbourhood fitted to an ensemble by the Brier skill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from test_evaluate_ensemble import NoisyPersistence, stand_ins_registered
from typer.testing import CliRunner

from nowcast.ensemble import neighbourhood_probability, neighbourhood_window_pixels
from nowcast.errors import InputError
from nowcast.evaluate import scored_start_times
from nowcast.neighbourhood_fit import fit_neighbourhood
from nowcast.synthetic import SyntheticRain, synthetic_sequence

MEMBERS = 5


@pytest.fixture(scope="module")
def events() -> dict[str, xr.DataArray]:
    # 22 frames, a start every 6: 2 start times of 4 past and 12 future frames each
    return {name: synthetic_sequence(SyntheticRain(ny=40, nx=44, frames=22, no_data_border=2), seed=seed)
            for name, seed in (("east", 3), ("west", 4))}


def fit(events: dict[str, xr.DataArray], **options):
    with stand_ins_registered():
        return fit_neighbourhood("noisy", list(events), loader=events.__getitem__, **{"members": MEMBERS, **options})


def test_each_candidate_scores_the_brier_of_the_members_probabilities_in_its_window(events):
    result = fit(events, rates=(0.5, 1.0), thresholds=(1.0, 4.0))
    assert result.rates == (0.0, 0.5, 1.0)  # no neighbourhood is always the reference
    assert result.start_times == {"east": 2, "west": 2}
    # the Brier score of rate 1 km/min at +30 min, 4 mm/h, on "west", from the members the forecaster draws
    squared, pixels = 0.0, 0
    for past, observed, seed in scored_start_times("west", events["west"], n_input=4, steps=12, stride=6, seed=0):
        members = NoisyPersistence().forecast(past, 12, members=MEMBERS, seed=seed).values[:, 5]
        valid = np.isfinite(observed[5]) & np.all(np.isfinite(members), axis=0)
        fraction = np.where(valid, (members > 4.0).mean(axis=0), np.nan)
        probability = neighbourhood_probability(fraction, neighbourhood_window_pixels(30.0, 1.0, 1.0))[valid]
        squared += float(np.sum((probability - (observed[5][valid] > 4.0)) ** 2))
        pixels += int(valid.sum())
    assert result.brier[2, 1, 5, 1] == pytest.approx(squared / pixels, rel=1e-12)
    assert result.skill[0] == 0.0
    # noise per pixel, unrelated to the rain's position: a window averages it out
    assert result.best > 0 and result.skill.max() > 0.05


def test_the_command_prints_the_candidates_and_writes_them(events, tmp_path, monkeypatch):
    from nowcast.cli import app
    from nowcast.io import catalogue

    monkeypatch.setattr(catalogue, "load_event", lambda event, **_: events[event.id])
    monkeypatch.setattr(catalogue, "get_event", lambda event_id, known: type("E", (), {"id": event_id})())
    monkeypatch.setattr(catalogue, "load_catalogue", lambda path: {name: type("E", (), {"id": name})()
                                                                   for name in events})
    out = tmp_path / "fit.json"
    with stand_ins_registered():
        result = CliRunner().invoke(app, ["-q", "fit-neighbourhood", "noisy", "--events", "east,west", "--rates",
                                          "0.4,1", "--members", str(MEMBERS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert [c["km_per_minute"] for c in written["candidates"]] == [0.0, 0.4, 1.0]
    assert written["best"] in (0.4, 1.0) and f"best: {written['best']:g} km per minute" in result.stdout
    assert "west" in result.stdout and "Brier >8" in result.stdout  # the whole table, in a pipe too


def test_bad_input_is_refused(events):
    with pytest.raises(InputError, match="outside \\[0, 10\\]"):
        fit(events, rates=(-1.0,))
    with pytest.raises(InputError, match="members must be at least 2"):
        fit(events, members=1)
    with pytest.raises(InputError, match="draws no ensemble members"):
        fit_neighbourhood("persistence", ["east"], loader=events.__getitem__)
    with pytest.raises(InputError, match="no events"):
        fit({})
