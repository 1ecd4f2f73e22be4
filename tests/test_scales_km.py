"""Distances in km on every grid: FSS windows and spectra on a latitude/longitude grid (e.g. MRMS, 0.04°).

The full-size case (875x1750 pixels, 2 start times) is ``bench/latlon_evaluation.py``;
here a grid 25 times smaller runs the same path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pysteps.utils.spectral import rapsd
from pysteps.verification import fss
from scipy.ndimage import gaussian_filter

from nowcast.evaluate import evaluate
from nowcast.sequence import make_sequence, pixel_size_km
from nowcast.verification import Scores, ScoreSettings, accumulate, fss_windows, radial_spectrum

LONGLAT = "+proj=longlat +datum=WGS84 +no_defs"


def latlon_event(ny: int, nx: int, frames: int, seed: int = 0):
    """Rain moving east on a 0.04° grid over the central US (north up: latitude decreasing with the row)."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(ny, nx + 2 * frames)), 4.0)
    field = np.clip((field - 0.02) * 300.0, 0.0, 80.0)
    rate = np.stack([field[:, 2 * t: 2 * t + nx] for t in range(frames)])
    lon = -100.0 + 0.04 * np.arange(nx)
    lat = 40.0 - 0.04 * np.arange(ny)
    return make_sequence(rate, pd.date_range("2021-06-01", periods=frames, freq="5min"), projection=LONGLAT,
                         xpixelsize=0.04, ypixelsize=0.04, x=lon, y=lat)


def test_fss_windows_on_a_latlon_grid_are_km_over_the_geodesic_pixel_size():
    sequence = latlon_event(20, 30, 2)
    size = pixel_size_km(sequence)
    assert 3.5 < size < 4.5  # 0.04° at 39.6° N: 3.4 km east-west, 4.4 km north-south
    assert fss_windows(ScoreSettings().fss_scales_km, size, (875, 1750)) == {1.0: 1, 4.0: 1, 16.0: 4, 32.0: 8}


def test_a_window_wider_than_the_grid_is_capped_without_changing_fss():
    rng = np.random.default_rng(1)
    observed = gaussian_filter(rng.gamma(0.5, 4.0, (12, 20)), 1.0)
    forecast = np.roll(observed, 3, axis=1)
    assert fss_windows([1000.0], 1.0, observed.shape) == {1000.0: 39}  # 2 * 20 - 1
    settings = ScoreSettings(fss_thresholds_mmh=(1.0,), fss_scales_km=(1000.0,))
    scores = Scores(settings)
    accumulate({"m": scores}, observed[np.newaxis], {"m": forecast[np.newaxis]}, lead_minutes=[5.0],
               pixel_size_km=1.0)
    uncapped = fss(forecast, observed, 1.0, 1000)  # pysteps with the 1000-pixel window
    assert scores.leads[5.0].fractions_skill(1.0, 1000.0) == pytest.approx(uncapped, rel=1e-9)


@pytest.mark.parametrize("shape", [(64, 64), (37, 80), (51, 30)])
def test_radial_spectrum_is_pysteps_rapsd(shape):
    field = np.random.default_rng(2).gamma(0.4, 3.0, shape)
    wavelengths, power = radial_spectrum(field, 2.5)
    expected_power, frequency = rapsd(field, fft_method=np.fft, return_freq=True, d=2.5)
    np.testing.assert_array_equal(power, expected_power[1:])
    np.testing.assert_array_equal(wavelengths, 1.0 / frequency[1:])


def test_a_pixel_size_that_is_no_distance_is_refused():
    field = np.ones((1, 4, 4))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="pixel size must be a positive number of km"):
            accumulate({"m": Scores()}, field, {"m": field}, lead_minutes=[5.0], pixel_size_km=bad)


@pytest.mark.timeout(60)
def test_evaluation_on_a_latlon_grid_scores_in_km(tmp_path, monkeypatch):
    from nowcast import plots

    maps_drawn = []
    draw_maps = plots.maps_figure
    monkeypatch.setattr(plots, "maps_figure", lambda *a, **kw: maps_drawn.append(kw) or draw_maps(*a, **kw))
    sequence = latlon_event(175, 350, frames=22)  # 2 start times of 4 past and 12 future frames
    report = evaluate(["persistence"], ["mrms"], stride=6, loader=lambda _: sequence, out_dir=tmp_path,
                      progress=False)
    event = report["events"]["mrms"]
    assert event["n_evaluated"] == 2
    assert event["grid"]["pixel_size_km"] == pytest.approx(pixel_size_km(sequence))
    scores = report["overall"]["scores"]["persistence"]
    fss_32km = scores["leads"]["30"]["fss"]["1"]["32"]["fss"]
    assert 0.0 < fss_32km < 1.0  # rain moved 8.5 km: imperfect at 32 km, not the whole grid's fraction
    assert scores["leads"]["30"]["fss"]["1"]["1"]["fss"] < fss_32km
    spectrum = scores["spectrum"]["30"]
    resolved = [w for w, p in zip(spectrum["wavelength_km"], spectrum["observed_power"], strict=True) if p]
    assert min(resolved) >= 2 * pixel_size_km(sequence) - 1e-9  # nothing below two pixels
    assert max(resolved) > 256  # 350 pixels of ~3.4 km
    assert (tmp_path / "maps_mrms.png").is_file()
    assert maps_drawn[0]["axis_unit"] == "°"  # the map's axes in the grid's degrees, not metres
    assert maps_drawn[0]["x_km"][0] == -100.0 and maps_drawn[0]["y_km"][0] == 40.0


def test_a_grid_whose_pixel_size_is_no_radar_grids_is_warned_about(tmp_path, caplog):
    sequence = latlon_event(16, 16, frames=3)
    sequence.attrs["projection"] = ""  # degrees, but nothing says so: read as metres, 0.04 m pixels
    evaluate(["persistence"], ["e"], n_input=2, steps=1, loader=lambda _: sequence, out_dir=tmp_path,
             progress=False)
    assert "pixels of 4e-05 km are no radar grid's" in caplog.text
