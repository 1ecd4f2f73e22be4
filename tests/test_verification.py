"""Verification scores against hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pysteps.verification import det_cat_fct_accum, det_cat_fct_init, fss
from scipy.ndimage import gaussian_filter

from nowcast.errors import SequenceError
from nowcast.sequence import make_sequence
from nowcast.synthetic import SyntheticRain, synthetic_sequence
from nowcast.verification import (
    Scores,
    ScoreSettings,
    accumulate,
    matched_to_observed,
    radial_spectrum,
    scale_in_pixels,
    spectrum_on_grid,
    verify,
)

ONE_LEAD = [5.0]


def counts(table: dict) -> tuple[int, int, int, int]:
    return table["hits"], table["misses"], table["false_alarms"], table["correct_negatives"]


def score_one(forecast: np.ndarray, observed: np.ndarray, *, pixel_size_km: float = 1.0,
              settings: ScoreSettings | None = None, scores: Scores | None = None) -> Scores:
    scores = scores or Scores(settings)
    accumulate({"m": scores}, observed[np.newaxis], {"m": forecast[np.newaxis]}, lead_minutes=ONE_LEAD,
               pixel_size_km=pixel_size_km)
    return scores


def contingency_case() -> tuple[np.ndarray, np.ndarray]:
    """4x4 fields with 3 hits, 2 misses, 1 false alarm and 10 correct negatives at 1 mm/h."""
    observed = np.zeros((4, 4), dtype=np.float32)
    forecast = np.zeros((4, 4), dtype=np.float32)
    observed.flat[[0, 1, 2]] = 5.0
    forecast.flat[[0, 1, 2]] = 2.0  # hits
    observed.flat[[3, 4]] = 1.5  # misses (forecast stays dry)
    forecast.flat[5] = 3.0  # false alarm
    forecast.flat[6] = 0.9  # below the threshold: a correct negative
    return forecast, observed


def test_categorical_scores_of_a_known_contingency_table():
    forecast, observed = contingency_case()
    lead = score_one(forecast, observed).to_dict()["leads"]["5"]
    table = lead["categorical"]["1"]
    assert counts(table) == (3, 2, 1, 10)
    assert table["CSI"] == pytest.approx(3 / 6)
    assert table["POD"] == pytest.approx(3 / 5)
    assert table["FAR"] == pytest.approx(1 / 4)
    # at 4 mm/h only the three 5 mm/h observations are events, all missed
    assert lead["categorical"]["4"]["misses"] == 3
    assert lead["categorical"]["4"]["CSI"] == 0.0
    assert lead["n_forecasts"] == 1
    assert lead["n_pixels"] == 16


def test_nan_observations_are_excluded_not_counted_as_dry():
    forecast, observed = contingency_case()
    # No data where the forecast has rain and where it is dry: neither may count.
    observed[3, 0] = observed[3, 1] = np.nan
    forecast[3, 0] = 10.0
    table = score_one(forecast, observed).to_dict()["leads"]["5"]["categorical"]["1"]
    assert counts(table) == (3, 2, 1, 8)

    # pysteps' own accumulator turns the NaN observation under rain into a false alarm
    # and the other one into a correct negative: what this module must not do.
    raw = det_cat_fct_init(1.0)
    det_cat_fct_accum(raw, forecast, observed)
    assert (raw["false_alarms"], raw["correct_negatives"]) == (2, 9)


def test_nan_forecast_pixels_are_excluded_too():
    forecast, observed = contingency_case()
    forecast[0, 0] = np.nan  # was a hit
    table = score_one(forecast, observed).to_dict()["leads"]["5"]["categorical"]["1"]
    assert counts(table) == (2, 2, 1, 10)


def test_scores_aggregate_contingency_tables_not_ratios():
    forecast, observed = contingency_case()
    scores = score_one(forecast, observed)  # CSI 3/6
    perfect_obs = np.zeros((4, 4), dtype=np.float32)
    perfect_obs[0, 0] = 2.0
    score_one(perfect_obs.copy(), perfect_obs, scores=scores)  # CSI 1/1
    table = scores.to_dict()["leads"]["5"]["categorical"]["1"]
    assert table["hits"] == 4 and table["misses"] == 2 and table["false_alarms"] == 1
    assert table["CSI"] == pytest.approx(4 / 7)  # not the mean of 0.5 and 1
    assert scores.to_dict()["leads"]["5"]["n_forecasts"] == 2


def test_scores_without_events_are_null_in_json():
    dry = np.zeros((8, 8), dtype=np.float32)
    data = score_one(dry, dry).to_dict()
    text = json.dumps(data, allow_nan=False)  # raises on NaN
    assert data["leads"]["5"]["categorical"]["8"]["CSI"] is None
    assert data["leads"]["5"]["categorical"]["8"]["correct_negatives"] == 64
    assert "NaN" not in text


def test_mae_on_valid_pixels_weighted_by_pixels():
    observed = np.full((4, 4), 2.0, dtype=np.float32)
    observed[0] = np.nan  # 12 valid pixels
    scores = score_one(observed + 1.0, observed)  # error +1 on 12 pixels
    other_obs = np.zeros((2, 2), dtype=np.float32)
    # a second forecast on another grid is fine for scores: 4 pixels with error -3
    accumulate({"m": scores}, other_obs[np.newaxis], {"m": other_obs[np.newaxis] + 3.0},
               lead_minutes=ONE_LEAD, pixel_size_km=1.0)
    lead = scores.to_dict()["leads"]["5"]
    assert lead["n_pixels"] == 16
    assert lead["mae"] == pytest.approx((12 * 1 + 4 * 3) / 16)
    assert lead["mean_error"] == pytest.approx((12 * 1 + 4 * 3) / 16)


def test_fss_of_a_hand_computed_case():
    observed = np.zeros((10, 10))
    forecast = np.zeros((10, 10))
    observed[2, 2:6] = 3.0  # 4 events
    forecast[2, 4:8] = 3.0  # 4 events, 2 overlapping
    settings = ScoreSettings(fss_scales_km=(1.0,))
    lead = score_one(forecast, observed, settings=settings).to_dict()["leads"]["5"]
    # 1 - sum (f - o)^2 / sum (f^2 + o^2) = 1 - 4 / 8
    assert lead["fss"]["1"]["1"]["fss"] == pytest.approx(0.5)
    assert lead["fss"]["4"]["1"]["fss"] is None  # no event at 4 mm/h in either field


def test_fss_matches_pysteps_on_nan_free_fields():
    rng = np.random.default_rng(0)
    observed = rng.gamma(0.6, 2.0, (40, 48))
    forecast = gaussian_filter(observed, 1.5) + rng.gamma(0.3, 1.0, (40, 48))
    lead = score_one(forecast, observed, pixel_size_km=2.0).to_dict()["leads"]["5"]
    for threshold in (1.0, 4.0):
        for scale_km, scale_px in ((1.0, 1), (4.0, 2), (16.0, 8), (32.0, 16)):
            expected = fss(forecast, observed, threshold, scale_px)
            assert lead["fss"][f"{threshold:g}"][f"{scale_km:g}"]["fss"] == pytest.approx(expected)


def test_fss_ignores_what_a_forecast_says_where_there_is_no_observation():
    rng = np.random.default_rng(1)
    observed = rng.gamma(0.6, 2.0, (32, 32))
    forecast = np.roll(observed, 2, axis=1)
    observed[:, :8] = np.nan
    wet_outside = forecast.copy()
    wet_outside[:, :8] = 50.0
    dry_outside = forecast.copy()
    dry_outside[:, :8] = 0.0
    wet = score_one(wet_outside, observed).to_dict()["leads"]["5"]["fss"]
    dry = score_one(dry_outside, observed).to_dict()["leads"]["5"]["fss"]
    assert wet == dry
    # and it is pysteps' FSS of the fields set to 0 outside the common valid mask
    zeroed_obs = np.where(np.isfinite(observed), observed, 0.0)
    assert wet["1"]["16"]["fss"] == pytest.approx(fss(dry_outside, zeroed_obs, 1.0, 16))


def test_scale_in_pixels():
    assert [scale_in_pixels(s, 1.0) for s in (1, 4, 16, 32)] == [1, 4, 16, 32]
    assert [scale_in_pixels(s, 2.0) for s in (1, 4, 16, 32)] == [1, 2, 8, 16]


def test_rapsd_of_a_wave_peaks_at_its_wavelength_in_km():
    yy, xx = np.mgrid[0:64, 0:64]
    wave = np.sin(2 * np.pi * xx / 8.0) + 0.0 * yy  # 8 pixels per period
    for pixel_km in (1.0, 2.0):
        wavelengths, power = radial_spectrum(wave, pixel_km)
        assert wavelengths[np.argmax(power)] == pytest.approx(8.0 * pixel_km)


def test_spectrum_ratio_shows_scaling_and_smoothing():
    rng = np.random.default_rng(2)
    observed = rng.gamma(0.5, 3.0, (96, 96))
    settings = ScoreSettings(spectrum_leads_minutes=(5.0,))
    doubled = score_one(2.0 * observed, observed, settings=settings).to_dict()["spectrum"]["5"]
    for ratio in doubled["power_ratio"].values():
        assert ratio == pytest.approx(4.0)
    assert set(doubled["power_ratio"]) == {"8", "16", "32", "64"}
    smooth = score_one(gaussian_filter(observed, 3.0), observed, settings=settings).to_dict()["spectrum"]["5"]
    assert smooth["power_ratio"]["8"] < 0.2
    assert smooth["power_ratio"]["32"] > smooth["power_ratio"]["16"] > smooth["power_ratio"]["8"]


def test_matched_spectrum_ignores_intensity_bias_but_not_blur():
    observed = synthetic_sequence(SyntheticRain(ny=128, nx=128, frames=1), seed=1).values[0].astype(np.float64)
    settings = ScoreSettings(spectrum_leads_minutes=(5.0,))
    doubled = score_one(2.0 * observed, observed, settings=settings).to_dict()
    for plain, matched in zip(doubled["spectrum"]["5"]["power_ratio"].values(),
                              doubled["spectrum_matched"]["5"]["power_ratio"].values(), strict=True):
        assert plain == pytest.approx(4.0)
        assert matched == pytest.approx(1.0)  # same ranks: matched, it is the observed field
    blurred = score_one(gaussian_filter(observed, 3.0), observed, settings=settings).to_dict()
    ratio = blurred["spectrum_matched"]["5"]["power_ratio"]
    assert ratio["8"] < 0.5 and ratio["8"] < ratio["16"] < ratio["32"]


def test_matched_to_observed_keeps_ranks_and_dry_pixels():
    forecast = np.array([0.0, 0.0, 3.0, 1.0, 2.0, 0.5])
    observed = np.array([10.0, 0.0, 0.0, 4.0, 6.0, 0.0])
    matched = matched_to_observed(forecast, observed)
    # four wet forecast pixels, three wet observed: the weakest forecast rain becomes dry
    np.testing.assert_array_equal(matched, [0.0, 0.0, 10.0, 4.0, 6.0, 0.0])
    assert not np.shares_memory(matched, forecast)


def test_spectrum_on_grid_is_nan_beyond_what_the_grid_resolves():
    field = np.random.default_rng(3).random((32, 32))
    # 32 pixels of 1 km resolve wavelengths from 32/15 km to 32 km
    spectrum = spectrum_on_grid(field, 1.0, wavelengths_km=(1.0, 2.0, 4.0, 16.0, 32.0, 64.0))
    assert np.isnan(spectrum[[0, 1, 5]]).all()
    assert np.isfinite(spectrum[2:5]).all()


def test_merged_scores_equal_scores_accumulated_together():
    rng = np.random.default_rng(4)
    settings = ScoreSettings(spectrum_leads_minutes=(5.0, 10.0))
    fields = [(rng.gamma(0.5, 3.0, (2, 24, 24)), rng.gamma(0.5, 3.0, (2, 24, 24))) for _ in range(3)]
    together = Scores(settings)
    parts = [Scores(settings) for _ in fields]
    for (forecast, observed), part in zip(fields, parts, strict=True):
        for target in (together, part):
            accumulate({"m": target}, observed, {"m": forecast}, lead_minutes=[5.0, 10.0], pixel_size_km=1.0)
    merged = Scores(settings)
    for part in parts:
        merged.merge(part)
    a, b = merged.to_dict(), together.to_dict()
    assert a["leads"]["10"]["categorical"] == b["leads"]["10"]["categorical"]
    assert a["leads"]["10"]["fss"]["1"]["4"]["fss"] == pytest.approx(b["leads"]["10"]["fss"]["1"]["4"]["fss"])
    assert a["leads"]["5"]["mae"] == pytest.approx(b["leads"]["5"]["mae"])
    assert a["spectrum"]["10"]["power_ratio"] == pytest.approx(b["spectrum"]["10"]["power_ratio"])
    assert a["spectrum_matched"]["10"]["power_ratio"] == pytest.approx(b["spectrum_matched"]["10"]["power_ratio"])
    # merging did not change the parts
    assert parts[0].to_dict()["leads"]["5"]["n_forecasts"] == 1


def test_all_methods_are_scored_on_the_same_pixels():
    observed = np.ones((1, 6, 6), dtype=np.float32) * 2.0
    with_hole = observed.copy()
    with_hole[0, 0, :] = np.nan
    scores = {"a": Scores(), "b": Scores()}
    accumulate(scores, observed, {"a": observed.copy(), "b": with_hole}, lead_minutes=ONE_LEAD,
               pixel_size_km=1.0)
    assert scores["a"].to_dict()["leads"]["5"]["n_pixels"] == 30
    assert scores["b"].to_dict()["leads"]["5"]["n_pixels"] == 30


def test_a_lead_without_valid_pixels_is_left_out():
    observed = np.full((2, 4, 4), np.nan, dtype=np.float32)
    observed[1] = 1.0
    scores = Scores()
    accumulate({"m": scores}, observed, {"m": np.ones_like(observed)}, lead_minutes=[5.0, 10.0],
               pixel_size_km=1.0)
    assert list(scores.to_dict()["leads"]) == ["10"]


def test_verify_uses_lead_times_from_the_reference_time():
    times = pd.date_range("2024-01-01 00:00", periods=6, freq="10min")
    rate = np.random.default_rng(5).gamma(0.5, 3.0, (6, 16, 16))
    observed = make_sequence(rate, times)
    forecast = make_sequence(rate[3:5], times[3:5], attrs={"forecast_reference_time": str(times[1])})
    data = verify(forecast, observed).to_dict()
    assert list(data["leads"]) == ["20", "30"]
    assert data["leads"]["20"]["categorical"]["1"]["CSI"] == 1.0
    late = make_sequence(rate[:2], pd.date_range("2024-01-02", periods=2, freq="10min"),
                         attrs={"forecast_reference_time": "2024-01-01 23:50"})
    with pytest.raises(SequenceError, match="no observation"):
        verify(late, observed)
