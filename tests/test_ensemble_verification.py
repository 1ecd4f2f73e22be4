"""Ensemble scores (nowcast.verification): CRPS, Brier, reliability, ROC, rank histogram, spread/skill.

Known cases: a perfect ensemble, one drawn from the observation's own distribution (flat
rank histogram, spread/skill near 1), an under-dispersive one (U shape, spread/skill
below 1), pysteps' own functions on the same numbers, and the CRPS against its integral
definition (where pysteps' ``CRPS_accum`` is wrong on ties).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr
from pysteps.verification import CRPS, ROC_curve, rankhist

from nowcast.ensemble import (
    exceedance_probability,
    neighbourhood_probability,
    neighbourhood_window_pixels,
    probability_matched_mean,
)
from nowcast.synthetic import SyntheticRain, synthetic_sequence
from nowcast.verification import ProbabilityCounts, Scores, ScoreSettings, accumulate, crps_sums, verify

M = 8


def score_ensemble(members: np.ndarray, observed: np.ndarray, *, lead: float = 5.0,
                   scores: Scores | None = None, settings: ScoreSettings | None = None) -> Scores:
    """One forecast: ``members`` (member, y, x) of ``observed`` (y, x), its probability-matched mean as "e"."""
    scores = scores or Scores(settings, members=len(members))
    accumulate({"e": scores}, observed[np.newaxis], {"e": probability_matched_mean(members[:, np.newaxis])},
               members={"e": members[:, np.newaxis]}, lead_minutes=[lead], pixel_size_km=1.0)
    return scores


def lead_of(scores: Scores, lead: str = "5", reference: Scores | None = None) -> dict:
    return scores.to_dict(reference)["ensemble"]["leads"][lead]


def rain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Rain-like values: about half dry, the rest spread over 0.1 to tens of mm/h."""
    return np.where(rng.random(shape) < 0.5, 0.0, rng.gamma(0.8, 4.0, shape)).astype(np.float64)


def drawn_ensemble(seed: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Observation and members drawn per pixel from one log-normal distribution (``spread`` 1), or with the
    members' spread scaled by ``spread`` around the same centre."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(0.3, 1.0, size=(100, 200))
    observed = np.exp(centre + 0.5 * rng.normal(size=centre.shape))
    members = np.exp(centre + 0.5 * spread * rng.normal(size=(M, *centre.shape)))
    return members, observed


def test_a_perfect_ensemble_has_crps_and_brier_zero():
    rng = np.random.default_rng(0)
    observed = rain(rng, (30, 40)).astype(np.float32)  # as radar data are (the products are float32)
    observed[:5, :5] = np.nan  # no data: left out, not counted as dry
    members = np.repeat(observed[np.newaxis], M, axis=0)
    scores = score_ensemble(members, observed)
    lead = lead_of(scores)
    assert lead["n_pixels"] == 30 * 40 - 25
    assert lead["crps"] == 0.0
    for threshold in ("1", "4", "8"):
        assert lead["probability"][threshold]["brier"] == 0.0
        assert lead["probability"][threshold]["roc_area"] == pytest.approx(1.0)
    assert lead["spread"] == 0.0 and lead["rmse_ensemble_mean"] == 0.0
    # tied with every member, the observation is equally likely at every rank: flat
    assert lead["rank_histogram"] == pytest.approx([1 / (M + 1)] * (M + 1))
    # and its probability-matched mean is the observation: perfect deterministic scores too
    deterministic = scores.to_dict()["leads"]["5"]
    assert deterministic["categorical"]["1"]["CSI"] == 1.0 and deterministic["mae"] == 0.0


def integrated_crps(members: np.ndarray, observed: float) -> float:
    """The CRPS from its definition: the integral of (F(x) - H(x - y))² over the breakpoints of F and H."""
    points = np.sort(np.append(members, observed))
    total = 0.0
    for left, right in itertools.pairwise(points):
        cdf = np.mean(members <= left)
        total += (cdf - float(observed <= left)) ** 2 * (right - left)
    return total


@pytest.mark.parametrize(("members", "observed", "expected"), [
    ([0.0, 0.0, 1.0, 2.0], 0.0, 0.3125),  # a dry observation, two dry members: pysteps says 0.0625
    ([0.5, 1.0, 2.0, 3.0], 1.0, 0.34375),  # the observation equals a member: pysteps says 0.0625
    ([0.0] * 19 + [5.0], 0.0, 0.0125),  # one wet member over dry ground: pysteps says 0
])
def test_crps_is_exact_where_the_observation_ties_members(members, observed, expected):
    members = np.array(members)[:, None]
    assert crps_sums(members, np.array([observed])) == pytest.approx(expected, rel=1e-12)
    assert integrated_crps(members[:, 0], observed) == pytest.approx(expected, rel=1e-12)


def test_crps_is_the_integral_definition_on_the_valid_pixels():
    rng = np.random.default_rng(1)
    observed = rain(rng, (24, 30))
    members = rain(rng, (M, 24, 30))
    observed[0, :] = np.nan
    members[3, 5, :] = np.nan  # one member without data: the pixel is left out for all
    valid = np.isfinite(observed) & np.all(np.isfinite(members), axis=0)
    lead = lead_of(score_ensemble(members, observed))
    assert lead["n_pixels"] == valid.sum()
    expected = np.mean([integrated_crps(f, o) for f, o in zip(members[:, valid].T, observed[valid], strict=True)])
    assert lead["crps"] == pytest.approx(expected, rel=1e-12)


def test_crps_is_pysteps_crps_where_nothing_ties():
    rng = np.random.default_rng(2)
    observed = rng.gamma(0.8, 4.0, 500)
    members = rng.gamma(0.8, 4.0, (M, 500))
    assert crps_sums(members, observed) / observed.size == pytest.approx(CRPS(members, observed), rel=1e-12)


def test_an_ensemble_from_the_observations_distribution_is_flat_and_consistent():
    lead = lead_of(score_ensemble(*drawn_ensemble(seed=0, spread=1.0)))
    assert np.array(lead["rank_histogram"]) * (M + 1) == pytest.approx(np.ones(M + 1), abs=0.1)
    assert lead["spread_skill"] == pytest.approx(1.0, abs=0.06)


def test_an_under_dispersive_ensemble_has_a_u_shaped_rank_histogram():
    lead = lead_of(score_ensemble(*drawn_ensemble(seed=0, spread=0.4)))
    frequencies = np.array(lead["rank_histogram"]) * (M + 1)
    assert frequencies[0] > 2 and frequencies[-1] > 2  # the observation too often outside the members
    assert np.all(frequencies[2:-2] < 0.7)
    assert lead["spread_skill"] < 0.5


def test_rank_histogram_is_pysteps_without_ties_and_shares_ties_evenly():
    members, observed = drawn_ensemble(seed=2, spread=0.7)
    members, observed = members + 0.1, observed + 0.1  # continuous and wet: no ties
    scores = score_ensemble(members, observed)
    lead = scores.ensemble[5.0]
    expected = rankhist(members, observed, X_min=0.1, normalize=False)
    np.testing.assert_array_equal(lead.rank_histogram.counts(), expected)
    # a dry observation with 3 dry members could take rank 0 to 3: pysteps draws one at random, here each gets 1/4
    tied_members = np.array([0.0, 0.0, 0.05, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape(M, 1, 1)
    tied = score_ensemble(tied_members, np.zeros((1, 1)))
    np.testing.assert_array_equal(tied.ensemble[5.0].rank_histogram.counts(), [0.25] * 4 + [0.0] * 5)


def test_brier_reliability_and_roc_are_those_of_the_exceedance_probability():
    rng = np.random.default_rng(3)
    members = rain(rng, (4, 50, 60))  # 4 members: probabilities k/4, pysteps' thresholds 0, 1/4, ... exactly
    observed = rain(rng, (50, 60))
    lead = lead_of(score_ensemble(members, observed))
    for threshold in (1.0, 4.0):
        scores = lead["probability"][f"{threshold:g}"]
        probability = exceedance_probability(members, [threshold])[0].astype(np.float64)
        event = observed > threshold
        assert scores["brier"] == pytest.approx(np.mean((probability - event) ** 2), rel=1e-12)
        assert scores["base_rate"] == pytest.approx(event.mean())
        for k, p in enumerate(scores["reliability"]["probability"]):
            at_k = probability == p
            assert scores["reliability"]["n_event"][k] == np.sum(event & at_k)
            assert scores["reliability"]["n_no_event"][k] == np.sum(~event & at_k)
        # pysteps' ROC on the same probabilities, its observation being the event itself (rate > threshold)
        pofd, pod, area = ROC_curve(probability, event.astype(float), 0.5, n_prob_thrs=5, compute_area=True)
        assert scores["roc"]["pofd"] == pytest.approx(pofd)
        assert scores["roc"]["pod"] == pytest.approx(pod)
        assert scores["roc_area"] == pytest.approx(area)
        assert 0.4 < scores["roc_area"] < 0.6  # members unrelated to the observation: no discrimination


def brute_force_window_mean(field: np.ndarray, side: int) -> np.ndarray:
    """The mean of the finite values in the side x side square around each finite pixel, cut at the edges."""
    half = side // 2
    out = np.full(field.shape, np.nan)
    for y, x in zip(*np.nonzero(np.isfinite(field)), strict=True):
        window = field[max(0, y - half):y + half + 1, max(0, x - half):x + half + 1]
        out[y, x] = np.nanmean(window)
    return out


def test_neighbourhood_probability_is_the_mean_over_the_pixels_with_data_in_its_window():
    rng = np.random.default_rng(11)
    probability = rng.integers(0, M + 1, (2, 23, 31)) / M
    probability[0, :4, :] = np.nan  # no data: left out of every window, and stays no data
    probability[1, 10:14, 5:9] = np.nan
    for side in (3, 7):
        smoothed = neighbourhood_probability(probability, side)
        for field, expected in zip(smoothed, probability, strict=True):
            np.testing.assert_allclose(field, brute_force_window_mean(expected, side), atol=1e-12)
    np.testing.assert_array_equal(neighbourhood_probability(probability, 1), probability)
    flat = np.full((9, 9), 0.375)
    np.testing.assert_allclose(neighbourhood_probability(flat, 5), flat, atol=1e-15)
    assert np.nanmin(neighbourhood_probability(probability, 9)) >= 0.0  # no rounding below 0


def test_the_neighbourhood_window_grows_with_the_lead_in_km():
    assert neighbourhood_window_pixels(5.0, 0.0, 1.0) == 1  # no neighbourhood
    assert neighbourhood_window_pixels(5.0, 0.8, 1.0) == 5  # 4 km on 1 km pixels, made odd
    assert neighbourhood_window_pixels(60.0, 0.8, 1.0) == 49
    assert neighbourhood_window_pixels(60.0, 0.8, 0.5) == 97  # the same 48 km on a finer grid
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="non-negative number of km per minute"):
            neighbourhood_window_pixels(5.0, bad, 1.0)
    with pytest.raises(ValueError, match="pixel size"):
        neighbourhood_window_pixels(5.0, 0.8, 0.0)
    with pytest.raises(ValueError, match="non-negative number of km per minute"):
        ScoreSettings(probability_neighbourhood_km_per_minute=-1.0)


def test_the_brier_score_of_any_probabilities_is_exact_and_their_bins_the_nearest_member_fraction():
    rng = np.random.default_rng(12)
    probability = rng.random(5000)
    observed = rain(rng, (5000,))
    counts = ProbabilityCounts(1.0, M)
    counts.add_probabilities(probability[:3000], observed[:3000])
    rest = ProbabilityCounts(1.0, M)
    rest.add_probabilities(probability[3000:], observed[3000:])
    counts.merge(rest)
    event = observed > 1.0
    assert counts.brier() == pytest.approx(np.mean((probability - event) ** 2), rel=1e-12)
    nearest = np.rint(probability * M)
    reliability = counts.to_dict()["reliability"]
    for k in range(M + 1):
        assert reliability["n_event"][k] == np.sum(event & (nearest == k))
        assert reliability["probability"][k] == pytest.approx(probability[nearest == k].mean())
    # the members' own fractions give the same counts and Brier score as counting members
    members = rain(rng, (M, 5000))
    by_members, by_fraction = ProbabilityCounts(1.0, M), ProbabilityCounts(1.0, M)
    by_members.add(members, observed)
    by_fraction.add_probabilities(np.count_nonzero(members > 1.0, axis=0) / M, observed)
    assert by_members.to_dict() == by_fraction.to_dict()
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        counts.add_probabilities(np.array([1.5]), np.array([0.0]))


def test_scores_take_the_neighbourhood_processed_probabilities_on_the_valid_pixels_only():
    rng = np.random.default_rng(13)
    members, observed = rain(rng, (M, 40, 50)), rain(rng, (40, 50))
    observed[:, :6] = np.nan  # the window never averages in what is not scored
    settings = ScoreSettings(probability_neighbourhood_km_per_minute=0.8)
    smoothed = lead_of(score_ensemble(members, observed, lead=10.0, settings=settings), "10")
    raw = lead_of(score_ensemble(members, observed, lead=10.0), "10")
    valid = np.isfinite(observed)
    for threshold in (1.0, 4.0):
        fraction = np.where(valid, np.count_nonzero(members > threshold, axis=0) / M, np.nan)
        expected = brute_force_window_mean(fraction, 9)[valid]  # 8 km at 1 km pixels, made odd
        event = observed[valid] > threshold
        scores = smoothed["probability"][f"{threshold:g}"]
        assert scores["brier"] == pytest.approx(np.mean((expected - event) ** 2), rel=1e-10)
        assert scores["brier"] < raw["probability"][f"{threshold:g}"]["brier"]  # members unrelated to the rain
    for name in ("crps", "spread_skill", "rank_histogram"):  # the members themselves are scored as they are
        assert smoothed[name] == raw[name]


def test_brier_skill_comes_from_summed_brier_scores():
    rng = np.random.default_rng(4)
    cases = [rain(rng, (20, 20)) for _ in range(2)]
    good, poor = Scores(members=M), Scores(members=M)
    for observed in cases:
        score_ensemble(np.stack([observed * f for f in np.linspace(0.8, 1.2, M)]), observed, scores=good)
        score_ensemble(rain(rng, (M, 20, 20)), observed, scores=poor)
    good_lead, poor_lead = good.ensemble[5.0], poor.ensemble[5.0]
    for threshold, counts in good_lead.probability.items():
        expected = 1.0 - counts.brier_sum() / poor_lead.probability[threshold].brier_sum()
        assert lead_of(good, reference=poor)["probability"][f"{threshold:g}"]["brier_skill"] == pytest.approx(expected)
    assert lead_of(poor, reference=poor)["probability"]["1"]["brier_skill"] == 0.0
    assert "brier_skill" not in lead_of(good)["probability"]["1"]


def test_merged_ensemble_scores_equal_scores_accumulated_together():
    rng = np.random.default_rng(5)
    cases = [(rain(rng, (M, 64, 64)), rain(rng, (64, 64))) for _ in range(2)]
    together = Scores(members=M)
    parts = [Scores(members=M), Scores(members=M)]
    for (members, observed), part in zip(cases, parts, strict=True):
        for target in (together, part):
            score_ensemble(members, observed, lead=30.0, scores=target)
    merged = parts[0].merge(parts[1])
    assert merged.to_dict() == together.to_dict()
    assert set(together.to_dict()) == {"leads", "spectrum", "spectrum_matched", "ensemble", "spectrum_member",
                                       "spectrum_member_matched"}
    assert together.to_dict()["spectrum_member"]["30"]["n_forecasts"] == 2


def test_ensemble_scores_need_their_members():
    observed = np.ones((1, 4, 4))
    members = np.ones((M, 1, 4, 4))
    with pytest.raises(ValueError, match="its members must have shape"):
        accumulate({"e": Scores(members=M)}, observed, {"e": observed}, lead_minutes=[5.0], pixel_size_km=1.0)
    with pytest.raises(ValueError, match="its members must have shape"):
        accumulate({"e": Scores(members=M + 1)}, observed, {"e": observed}, members={"e": members},
                   lead_minutes=[5.0], pixel_size_km=1.0)
    with pytest.raises(ValueError, match="has members but deterministic scores"):
        accumulate({"e": Scores()}, observed, {"e": observed}, members={"e": members}, lead_minutes=[5.0],
                   pixel_size_km=1.0)
    with pytest.raises(ValueError, match="at least 2 members"):
        Scores(members=1)
    with pytest.raises(ValueError, match="cannot merge scores of 8 members"):
        Scores(members=4).merge(Scores(members=8))


def test_verify_scores_a_forecast_with_members_as_an_ensemble():
    observed = synthetic_sequence(SyntheticRain(ny=32, nx=32, frames=6), seed=2)
    future = observed.isel(time=slice(3, 6))
    members = xr.concat([future * factor for factor in (0.8, 1.0, 1.25)], dim="member")
    members.attrs["forecast_reference_time"] = str(observed["time"].values[2])
    scores = verify(members, observed)
    assert scores.members == 3
    ensemble = scores.to_dict()["ensemble"]["leads"]
    assert list(ensemble) == ["5", "10", "15"]
    # the observation is the middle member: tied with it, shared between ranks 1 and 2
    assert ensemble["5"]["rank_histogram"][1] + ensemble["5"]["rank_histogram"][2] == pytest.approx(1.0, abs=0.05)


def score_period(members: np.ndarray, observed: np.ndarray, leads: list[float], *,
                 scores: Scores | None = None) -> Scores:
    """One forecast of several leads: ``members`` (member, lead, y, x), ``observed`` (lead, y, x)."""
    scores = scores or Scores(members=len(members))
    accumulate({"e": scores}, observed, {"e": probability_matched_mean(members)}, members={"e": members},
               lead_minutes=leads, pixel_size_km=1.0)
    return scores


def test_the_forecasts_maximum_is_scored_on_the_pixels_valid_at_every_lead():
    rng = np.random.default_rng(21)
    members, observed = rain(rng, (M, 3, 30, 40)), rain(rng, (3, 30, 40))
    observed[1, :5] = np.nan  # rows 0-4 lack one lead: their maximum is unknown
    members[2, 2, :, -3:] = np.nan  # and the last columns one member's last lead
    period = score_period(members, observed, [10.0, 20.0, 30.0]).to_dict()["ensemble"]["period_maximum"]
    assert list(period) == ["30"]
    assert period["30"]["first_lead_minutes"] == 10.0 and period["30"]["n_forecasts"] == 1
    valid = np.ones((30, 40), dtype=bool)
    valid[:5] = False
    valid[:, -3:] = False
    peak_observed = observed[:, valid].max(axis=0)
    for threshold in (1.0, 4.0, 8.0):
        probability = np.count_nonzero(members[:, :, valid].max(axis=1) > threshold, axis=0) / M
        event = peak_observed > threshold
        scores = period["30"]["probability"][f"{threshold:g}"]
        assert scores["n_pixels"] == valid.sum()
        assert scores["brier"] == pytest.approx(np.mean((probability - event) ** 2), rel=1e-12)
        assert scores["base_rate"] == pytest.approx(event.mean())
    expected_crps = crps_sums(members[:, :, valid].max(axis=1), peak_observed) / valid.sum()
    assert period["30"]["crps"] == pytest.approx(expected_crps, rel=1e-12)
    assert period["30"]["n_pixels"] == valid.sum()
    # the CRPS is the Brier score of the maximum's exceedance integrated over the thresholds
    grid = np.linspace(0.0, max(members[:, :, valid].max(), peak_observed.max()) + 1.0, 4001)
    member_peaks = members[:, :, valid].max(axis=1)
    brier = [np.mean((np.count_nonzero(member_peaks > t, axis=0) / M - (peak_observed > t)) ** 2) for t in grid]
    assert np.trapezoid(brier, grid) == pytest.approx(expected_crps, rel=2e-2)


def test_a_perfect_ensemble_forecasts_the_maximum_perfectly_and_a_wrong_one_has_skill_below_zero():
    rng = np.random.default_rng(22)
    observed = rain(rng, (4, 20, 20))
    perfect = score_period(np.repeat(observed[np.newaxis], M, axis=0), observed, [5.0, 10.0, 15.0, 20.0])
    wrong = score_period(rain(rng, (M, 4, 20, 20)), observed, [5.0, 10.0, 15.0, 20.0])
    period = perfect.to_dict(reference=wrong)["ensemble"]["period_maximum"]["20"]["probability"]
    assert all(p["brier"] == 0.0 and p["brier_skill"] == 1.0 for p in period.values())
    assert perfect.period[20.0].crps_sum == 0.0 and wrong.period[20.0].crps_sum > 0.0
    against = wrong.to_dict(reference=perfect)["ensemble"]["period_maximum"]["20"]["probability"]
    assert against["1"]["brier_skill"] is None  # the reference is perfect: no skill can be had
    assert wrong.period_brier_totals()[20.0][1.0][1] == 400


def test_maxima_of_different_periods_stay_apart_and_merge_like_the_leads():
    rng = np.random.default_rng(23)
    hour, hour_of_six = Scores(members=M), Scores(members=M)
    together = Scores(members=M)
    for scores, step in ((hour, 5.0), (hour_of_six, 6.0)):
        members, observed = rain(rng, (M, 12, 16, 16)), rain(rng, (12, 16, 16))
        leads = [step * (k + 1) for k in range(12)]
        score_period(members, observed, leads, scores=scores)
        score_period(members, observed, leads, scores=together)
    merged = Scores(members=M).merge(hour).merge(hour_of_six)
    assert merged.to_dict() == together.to_dict()
    assert sorted(merged.period) == [60.0, 72.0]
    assert merged.period[72.0].first_lead_minutes == 6.0
    odd = Scores(members=M)
    score_period(rain(rng, (M, 2, 8, 8)), rain(rng, (2, 8, 8)), [30.0, 60.0], scores=odd)
    with pytest.raises(ValueError, match=r"maximum from \+30 min into the maximum from \+5 min"):
        Scores(members=M).merge(hour).merge(odd)


def test_no_pixel_valid_at_every_lead_leaves_the_maximum_out():
    rng = np.random.default_rng(24)
    observed = rain(rng, (2, 8, 8))
    observed[0, :4] = np.nan
    observed[1, 4:] = np.nan  # every pixel has one lead, none both
    scores = score_period(rain(rng, (M, 2, 8, 8)), observed, [5.0, 10.0])
    assert scores.period == {} and set(scores.ensemble) == {5.0, 10.0}


def test_the_rain_over_the_forecast_is_scored_in_mm_on_the_pixels_valid_at_every_lead():
    rng = np.random.default_rng(25)
    members, observed = rain(rng, (M, 3, 30, 40)), rain(rng, (3, 30, 40))
    observed[1, :5] = np.nan  # rows 0-4 lack one lead: their total is unknown
    members[2, 2, :, -3:] = np.nan
    leads = [5.0, 10.0, 20.0]  # the last lead's rate falls for 10 minutes, the others' for 5
    period = score_period(members, observed, leads).to_dict()["ensemble"]["period_accumulation"]
    assert list(period) == ["20"]
    assert period["20"]["units"] == "mm" and period["20"]["first_lead_minutes"] == 5.0
    valid = np.ones((30, 40), dtype=bool)
    valid[:5] = False
    valid[:, -3:] = False
    hours = np.array([5.0, 5.0, 10.0]) / 60.0
    member_totals = np.einsum("t,mtp->mp", hours, members[:, :, valid])
    observed_total = np.einsum("t,tp->p", hours, observed[:, valid])
    for threshold in (1.0, 5.0, 10.0):
        probability = np.count_nonzero(member_totals > threshold, axis=0) / M
        event = observed_total > threshold
        scores = period["20"]["probability"][f"{threshold:g}"]
        assert scores["n_pixels"] == valid.sum()
        assert scores["brier"] == pytest.approx(np.mean((probability - event) ** 2), rel=1e-6)
        assert scores["base_rate"] == pytest.approx(event.mean())
    assert 0.05 < period["20"]["probability"]["1"]["base_rate"] < 0.95  # the thresholds are in mm, not mm/h
    expected_crps = crps_sums(member_totals, observed_total) / valid.sum()
    assert period["20"]["crps"] == pytest.approx(expected_crps, rel=1e-5)


def test_a_perfect_ensembles_rain_over_the_forecast_has_no_error_and_periods_stay_apart():
    rng = np.random.default_rng(26)
    observed = 5.0 * rain(rng, (4, 20, 20))  # heavy enough for every threshold to see events
    perfect = score_period(np.repeat(observed[np.newaxis], M, axis=0), observed, [5.0, 10.0, 15.0, 20.0])
    wrong = score_period(5.0 * rain(rng, (M, 4, 20, 20)), observed, [5.0, 10.0, 15.0, 20.0])
    period = perfect.to_dict(reference=wrong)["ensemble"]["period_accumulation"]["20"]["probability"]
    assert all(p["brier"] == 0.0 and p["brier_skill"] == 1.0 for p in period.values())
    assert perfect.accumulation[20.0].crps_sum == 0.0 and wrong.accumulation[20.0].crps_sum > 0.0
    assert wrong.period_brier_totals("accumulation")[20.0][5.0][1] == 400
    assert wrong.period_crps_totals("accumulation")[20.0][0] == wrong.accumulation[20.0].crps_sum
    hour_of_six = Scores(members=M)
    score_period(rain(rng, (M, 12, 8, 8)), rain(rng, (12, 8, 8)), [6.0 * (k + 1) for k in range(12)],
                 scores=hour_of_six)
    merged = Scores(members=M).merge(wrong).merge(hour_of_six)
    assert sorted(merged.accumulation) == [20.0, 72.0] and sorted(merged.period) == [20.0, 72.0]
    assert merged.period_crps_totals("accumulation")[72.0] == hour_of_six.period_crps_totals("accumulation")[72.0]
    assert merged.period_brier_totals("accumulation")[72.0] == hour_of_six.period_brier_totals("accumulation")[72.0]
    assert merged.accumulation[72.0].first_lead_minutes == 6.0


def test_accumulation_thresholds_are_checked_and_an_unscored_period_leaves_both_out():
    with pytest.raises(ValueError, match=r"accumulation thresholds must be increasing.*got 5, 1"):
        ScoreSettings(accumulation_thresholds_mm=(5.0, 1.0))
    with pytest.raises(ValueError, match="accumulation thresholds"):
        ScoreSettings(accumulation_thresholds_mm=())
    settings = ScoreSettings(accumulation_thresholds_mm=(0.5, 2.0))
    assert settings.ensemble_dict()["accumulation_thresholds_mm"] == [0.5, 2.0]
    rng = np.random.default_rng(27)
    scores = score_period(rain(rng, (M, 2, 8, 8)), rain(rng, (2, 8, 8)), [5.0, 10.0],
                          scores=Scores(settings, members=M))
    assert list(scores.accumulation[10.0].probability) == [0.5, 2.0]
    observed = rain(rng, (2, 8, 8))
    observed[0, :4] = np.nan
    observed[1, 4:] = np.nan
    scores = score_period(rain(rng, (M, 2, 8, 8)), observed, [5.0, 10.0])
    assert scores.accumulation == {} and scores.to_dict()["ensemble"]["period_accumulation"] == {}


def test_each_leads_rain_falls_from_the_lead_before_and_a_gap_leaves_a_members_total_unknown():
    from nowcast.ensemble import lead_hours, period_accumulation

    np.testing.assert_allclose(lead_hours([6.0, 12.0, 24.0]), [0.1, 0.1, 0.2])
    for bad in ([], [5.0, 5.0], [-5.0, 5.0], [5.0, float("nan")]):
        with pytest.raises(ValueError, match="positive and increasing"):
            lead_hours(bad)
    members = np.full((3, 2, 1, 2), 6.0, dtype=np.float32)  # 6 mm/h for two 10-minute steps: 2 mm
    members[1, 0, 0, 1] = np.nan
    totals = period_accumulation(members, lead_hours([10.0, 20.0]))
    np.testing.assert_allclose(totals[:, 0, 0], [2.0, 2.0, 2.0])
    assert np.isnan(totals[1, 0, 1]) and totals[0, 0, 1] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one duration per time"):
        period_accumulation(members, [0.1])
