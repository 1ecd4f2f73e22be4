"""The paired bootstrap over start times (nowcast.bootstrap) on an evaluation of synthetic events."""

from __future__ import annotations

import numpy as np
import pytest

from nowcast.bootstrap import csi_difference_interval, spectrum_ratio_difference_interval
from nowcast.errors import InputError
from nowcast.evaluate import evaluate
from nowcast.synthetic import SyntheticRain, synthetic_sequence


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    events = {name: synthetic_sequence(SyntheticRain(ny=64, nx=64, frames=24), seed=seed)
              for seed, name in enumerate(("east", "west"))}
    return evaluate(["persistence", "extrapolation"], list(events), stride=2, loader=events.__getitem__,
                    out_dir=tmp_path_factory.mktemp("eval"), progress=False)


def test_csi_interval_brackets_the_difference_of_the_evaluation(report):
    intervals = csi_difference_interval(report, "extrapolation", "persistence", n_resamples=500)
    assert set(intervals) == {str(5 * k) for k in range(1, 13)}
    scores = report["overall"]["scores"]
    for lead, by_threshold in intervals.items():
        for thr, interval in by_threshold.items():
            if np.isnan(interval["difference"]):
                continue  # no rain above the threshold anywhere
            expected = (scores["extrapolation"]["leads"][lead]["categorical"][thr]["CSI"]
                        - scores["persistence"]["leads"][lead]["categorical"][thr]["CSI"])
            assert interval["difference"] == pytest.approx(expected)
            assert interval["low"] - 1e-12 <= interval["difference"] <= interval["high"] + 1e-12
            assert 0.0 <= interval["p_not_ahead"] <= 1.0
    assert intervals["30"]["1"]["low"] > 0  # motion matters on moving synthetic rain
    assert intervals["30"]["1"]["p_not_ahead"] < 0.05


def test_a_method_against_itself_differs_by_nothing(report):
    same = csi_difference_interval(report, "persistence", "persistence", n_resamples=50)
    assert same["30"]["1"] == {"difference": 0.0, "low": 0.0, "high": 0.0, "p_not_ahead": 1.0}


def test_spectrum_interval_brackets_the_ratio_difference(report):
    scores = report["overall"]["scores"]
    for matched, kind in ((False, "spectrum"), (True, "spectrum_matched")):
        intervals = spectrum_ratio_difference_interval(report, "extrapolation", "persistence", matched=matched,
                                                       n_resamples=300)
        assert set(intervals) == {"30", "60"}
        for lead, by_wavelength in intervals.items():
            assert set(by_wavelength) == {"8", "16", "32", "64"}
            for wavelength, interval in by_wavelength.items():
                expected = (scores["extrapolation"][kind][lead]["power_ratio"][wavelength]
                            - scores["persistence"][kind][lead]["power_ratio"][wavelength])
                assert interval["difference"] == pytest.approx(expected)
                assert interval["low"] - 1e-12 <= interval["difference"] <= interval["high"] + 1e-12


def test_intervals_narrow_with_the_level(report):
    wide = csi_difference_interval(report, "extrapolation", "persistence", n_resamples=400, level=0.98)
    narrow = csi_difference_interval(report, "extrapolation", "persistence", n_resamples=400, level=0.5)
    assert narrow["30"]["1"]["high"] - narrow["30"]["1"]["low"] < wide["30"]["1"]["high"] - wide["30"]["1"]["low"]


def test_bad_requests_name_the_problem(report):
    with pytest.raises(InputError, match="'gan' is not in the report; methods there: persistence, extrapolation"):
        csi_difference_interval(report, "gan", "persistence")
    old = {**report, "events": {k: {key: v for key, v in e.items() if key != "start_times"}
                                for k, e in report["events"].items()}}
    with pytest.raises(InputError, match="run nowcast evaluate again"):
        csi_difference_interval(old, "extrapolation", "persistence")
    categorical_only = {**report, "events": {
        k: {**e, "start_times": [{"time": st["time"], "categorical": st["categorical"]} for st in e["start_times"]]}
        for k, e in report["events"].items()}}
    with pytest.raises(InputError, match="no per-start-time spectrum_matched sums"):
        spectrum_ratio_difference_interval(categorical_only, "extrapolation", "persistence", matched=True)
    with pytest.raises(ValueError, match="n_resamples"):
        csi_difference_interval(report, "extrapolation", "persistence", n_resamples=0)
