"""Ensemble products: the request and its checks, the products made by nowcast.ensemble, fast quantiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from nowcast.ensemble import (
    blended_order,
    core_and_outline,
    ensemble_mean,
    ensemble_quantiles,
    exceedance_probability,
    neighbourhood_probability,
    period_accumulation_products,
    period_exceedance_probability,
    probability_matched_mean,
    window_mean,
)
from nowcast.errors import InputError
from nowcast.products import (
    DEFAULT_ACCUMULATION_THRESHOLDS_MM,
    DEFAULT_PRODUCTS,
    DEFAULT_QUANTILE_LEVELS,
    DEFAULT_THRESHOLDS_MMH,
    MIN_MEMBERS_ATTR,
    PRODUCTS,
    ProductRequest,
    ensemble_products,
    minimum_members,
    probability_matched_mean_of,
)


def ensemble(members: int = 5, steps: int = 2, ny: int = 6, nx: int = 7, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    values = rng.gamma(0.6, 3.0, size=(members, steps, ny, nx)).astype(np.float32)
    values[:, :, 0, 0] = np.nan  # no data in every member
    values[0, :, 1, 1] = np.nan  # no data in one member
    times = pd.date_range("2024-06-01 12:05", periods=steps, freq="5min")
    return xr.DataArray(
        values, dims=("member", "time", "y", "x"),
        coords={"member": np.arange(members), "time": times, "y": np.arange(ny) * 1000.0, "x": np.arange(nx) * 1000.0},
        attrs={"projection": "", "forecast_reference_time": "2024-06-01 12:00:00"},
    )


def test_defaults() -> None:
    request = ProductRequest()
    assert request.products == DEFAULT_PRODUCTS == ("members", "probabilities")
    assert request.thresholds == DEFAULT_THRESHOLDS_MMH == (1.0, 4.0, 8.0)
    assert request.quantile_levels == DEFAULT_QUANTILE_LEVELS
    assert request.values_per_frame(20) == 23 and request.fields(20, 12) == 23 * 12
    assert request.accumulation_thresholds == DEFAULT_ACCUMULATION_THRESHOLDS_MM == (1.0, 5.0, 10.0)
    everything = ProductRequest(PRODUCTS, (0.5,), (0.5, 0.9), accumulation_thresholds=(1.0, 5.0, 10.0, 20.0))
    assert everything.values_per_frame(10) == 10 + 1 + 1 + 1 + 2
    # the period's maximum and accumulations: one field a threshold or level
    assert everything.fields(10, 12) == (10 + 1 + 1 + 1 + 2) * 12 + 1 + 4 + 2
    assert ProductRequest(("accumulation_probabilities",)).fields(10, 12) == 3
    assert ProductRequest(("accumulation_quantiles",), quantile_levels=(0.5,)).fields(10, 12) == 1


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"products": ("members", "maxima")}, "products", "unknown product 'maxima'"),
        ({"products": ()}, "products", "none asked for"),
        ({"products": ("mean", "mean")}, "products", "twice"),
        ({"thresholds": ()}, "thresholds", "at least one"),
        ({"thresholds": (4.0, 1.0)}, "thresholds", "strictly increasing"),
        ({"thresholds": (-1.0,)}, "thresholds", "outside [0, 1000]"),
        ({"thresholds": (float("nan"),)}, "thresholds", "not a finite number"),
        ({"quantile_levels": (0.5, 1.5)}, "quantile_levels", "outside [0, 1]"),
        ({"quantile_levels": ("0.5",)}, "quantile_levels", "not a finite number"),
        ({"neighbourhood": -0.5}, "neighbourhood", "outside [0, 10]"),
        ({"neighbourhood": float("inf")}, "neighbourhood", "not a finite number"),
        ({"accumulation_thresholds": (5.0, 1.0)}, "accumulation_thresholds", "strictly increasing"),
        ({"accumulation_thresholds": (5.0, 5.0)}, "accumulation_thresholds", "strictly increasing"),
        ({"accumulation_thresholds": (-1.0, 5.0)}, "accumulation_thresholds", "outside [0, 1000]"),
        ({"accumulation_thresholds": (5.0, 1001.0)}, "accumulation_thresholds", "outside [0, 1000]"),
        ({"accumulation_thresholds": ()}, "accumulation_thresholds", "at least one"),
        ({"accumulation_thresholds": (float("nan"),)}, "accumulation_thresholds", "not a finite number"),
    ],
)
def test_bad_requests_name_the_field(kwargs: dict, field: str, words: str) -> None:
    with pytest.raises(InputError, match=words.replace("[", r"\[")) as refused:
        ProductRequest(**kwargs)
    assert refused.value.field == field


def test_options_for_products_not_asked_are_refused() -> None:
    assert ProductRequest.from_options(None, None, None) == ProductRequest()
    assert ProductRequest.from_options(["quantiles"], None, [0.5]).quantile_levels == (0.5,)
    with pytest.raises(InputError, match="quantiles are not among") as refused:
        ProductRequest.from_options(["members"], None, [0.5])
    assert refused.value.field == "quantile_levels"
    with pytest.raises(InputError, match="probabilities or max_probabilities are not among") as refused:
        ProductRequest.from_options(["mean"], [2.0], None)
    assert refused.value.field == "thresholds"
    assert ProductRequest.from_options(["max_probabilities"], [2.0], None).thresholds == (2.0,)
    with pytest.raises(InputError, match="neighbourhood: given, but probabilities are not among"):
        ProductRequest.from_options(["max_probabilities"], None, None, 0.8)
    with pytest.raises(InputError, match="probabilities are not among") as refused:
        ProductRequest.from_options(["members"], None, None, 0.8)
    assert refused.value.field == "neighbourhood"


def test_accumulation_options_go_with_the_accumulation_products() -> None:
    """accumulation_thresholds only with accumulation_probabilities; quantile_levels with quantiles or
    accumulation_quantiles; thresholds (mm/h) not with the accumulations alone."""
    asked = ProductRequest.from_options(["accumulation_probabilities"], accumulation_thresholds=[2.0, 20.0])
    assert asked.accumulation_thresholds == (2.0, 20.0)
    assert ProductRequest.from_options(["accumulation_quantiles"], None, [0.5]).quantile_levels == (0.5,)
    for products in (["mean"], ["max_probabilities", "probabilities"], ["accumulation_quantiles"]):
        with pytest.raises(InputError, match="accumulation_thresholds: given, but accumulation_probabilities are "
                                             "not among") as refused:
            ProductRequest.from_options(products, accumulation_thresholds=[2.0])
        assert refused.value.field == "accumulation_thresholds"
    with pytest.raises(InputError, match="quantiles or accumulation_quantiles are not among") as refused:
        ProductRequest.from_options(["accumulation_probabilities"], None, [0.5])
    assert refused.value.field == "quantile_levels"
    with pytest.raises(InputError, match="probabilities or max_probabilities are not among") as refused:
        ProductRequest.from_options(["accumulation_probabilities"], [2.0], None)
    assert refused.value.field == "thresholds"
    with pytest.raises(InputError, match="strictly increasing") as refused:
        ProductRequest.from_options(["accumulation_probabilities"], accumulation_thresholds=[10.0, 1.0])
    assert refused.value.field == "accumulation_thresholds"


def test_products_are_what_nowcast_ensemble_computes() -> None:
    forecast = ensemble()
    request = ProductRequest(PRODUCTS, (1.0, 4.0), (0.25, 0.5))
    products = ensemble_products(forecast, request)
    members = forecast.values
    assert list(products.data_vars) == list(PRODUCTS)
    np.testing.assert_array_equal(products["members"].values, members)
    np.testing.assert_array_equal(products["probabilities"].values, exceedance_probability(members, (1.0, 4.0)))
    np.testing.assert_array_equal(products["mean"].values, ensemble_mean(members))
    np.testing.assert_array_equal(products["pm_mean"].values, probability_matched_mean(members))
    np.testing.assert_array_equal(products["quantiles"].values, ensemble_quantiles(members, (0.25, 0.5)))
    np.testing.assert_array_equal(products["max_probabilities"].values, period_exceedance_probability(members,
                                                                                                      (1.0, 4.0)))
    accumulated = period_accumulation_products(members, [5 / 60, 5 / 60], DEFAULT_ACCUMULATION_THRESHOLDS_MM,
                                               (0.25, 0.5), minimum_members(5))
    np.testing.assert_array_equal(products["accumulation_probabilities"].values, accumulated[0])
    np.testing.assert_array_equal(products["accumulation_quantiles"].values, accumulated[1])
    assert products["accumulation_probabilities"].dims == ("accumulation_threshold", "y", "x")
    assert products["accumulation_quantiles"].dims == ("quantile", "y", "x")
    assert list(products["accumulation_threshold"].values) == [1.0, 5.0, 10.0]
    assert products["max_probabilities"].dims == ("threshold", "y", "x")
    assert products["probabilities"].dims == ("threshold", "time", "y", "x")
    assert products["quantiles"].dims == ("quantile", "time", "y", "x")
    assert list(products["threshold"].values) == [1.0, 4.0] and list(products["quantile"].values) == [0.25, 0.5]
    assert products.attrs["forecast_reference_time"] == forecast.attrs["forecast_reference_time"]
    assert products.attrs["ensemble_members"] == 5
    assert np.isnan(products["probabilities"].values[:, :, 0, 0]).all()
    assert np.isfinite(products["probabilities"].values[:, :, 1, 1]).all()


def test_neighbourhood_probabilities_widen_their_window_with_the_lead() -> None:
    forecast = ensemble(members=6, steps=3, ny=30, nx=31)  # 1 km pixels, leads 5, 10 and 15 min
    products = ensemble_products(forecast, ProductRequest(("probabilities",), (1.0, 4.0), neighbourhood=0.6))
    raw = exceedance_probability(forecast.values, (1.0, 4.0))
    for lead, window in enumerate((3, 7, 9)):  # 3, 6 and 9 km, made odd
        np.testing.assert_allclose(products["probabilities"].values[:, lead],
                                   neighbourhood_probability(raw[:, lead], window), atol=1e-6)
    assert products["probabilities"].attrs["neighbourhood_km_per_minute"] == 0.6
    assert np.isnan(products["probabilities"].values[:, :, 0, 0]).all()  # no data stays no data
    unprocessed = ensemble_products(forecast, ProductRequest(("probabilities",), (1.0, 4.0)))
    assert "neighbourhood_km_per_minute" not in unprocessed["probabilities"].attrs
    without_reference = forecast.copy()
    del without_reference.attrs["forecast_reference_time"]
    with pytest.raises(ValueError, match="no forecast_reference_time"):
        ensemble_products(without_reference, ProductRequest(("probabilities",), neighbourhood=0.6))


def test_a_request_without_a_neighbourhood_takes_the_forecasters_fitted_one() -> None:
    forecast = ensemble(members=6, steps=3, ny=30, nx=31)
    asked = ensemble_products(forecast, ProductRequest(("probabilities",), (1.0,), neighbourhood=0.6))
    fitted = forecast.assign_attrs(probability_neighbourhood_km_per_minute=0.6)
    unsaid = ensemble_products(fitted, ProductRequest(("probabilities",), (1.0,)))
    xr.testing.assert_identical(unsaid["probabilities"], asked["probabilities"])
    none = ensemble_products(fitted, ProductRequest(("probabilities",), (1.0,), neighbourhood=0.0))
    np.testing.assert_array_equal(none["probabilities"].values, exceedance_probability(forecast.values, (1.0,)))
    assert "neighbourhood_km_per_minute" not in none["probabilities"].attrs


def test_the_probability_matched_mean_is_placed_by_the_window_its_forecaster_set() -> None:
    """A forecast carrying ``mean_neighbourhood_km_per_minute`` 0.6 (3, 7, 9 px windows at +5, +10, +15 min on
    1 km pixels): each lead's mean is ordered as the ensemble mean's window mean, its values still the pooled
    members'; the product and its netCDF variable say the window; without it, the mean's own ranks."""
    from nowcast.io.netcdf import PRODUCT_VARIABLES, products_to_dataset

    forecast = ensemble(members=6, steps=3, ny=30, nx=31)
    members = forecast.values
    plain = probability_matched_mean(members)
    placed = ensemble_products(forecast.assign_attrs(mean_neighbourhood_km_per_minute=0.6),
                               ProductRequest(("pm_mean",)))["pm_mean"]
    mean = ensemble_mean(members)
    for lead, window in enumerate((3, 7, 9)):
        valid = np.isfinite(mean[lead])
        values = placed.values[lead]
        np.testing.assert_array_equal(np.isfinite(values), valid)
        np.testing.assert_array_equal(np.sort(values[valid]), np.sort(plain[lead][valid]))
        order = np.argsort(window_mean(mean[lead], window)[valid], kind="stable")
        assert np.all(np.diff(values[valid][order]) >= 0)
        assert not np.array_equal(values[valid], plain[lead][valid])
    assert placed.attrs["mean_neighbourhood_km_per_minute"] == 0.6
    written = products_to_dataset(placed.to_dataset(name="pm_mean").assign_attrs(forecast.attrs))
    assert written[PRODUCT_VARIABLES["pm_mean"]].attrs["mean_neighbourhood_km_per_minute"] == 0.6
    unplaced = ensemble_products(forecast, ProductRequest(("pm_mean",)))["pm_mean"]
    np.testing.assert_array_equal(unplaced.values, plain)
    assert "mean_neighbourhood_km_per_minute" not in unplaced.attrs


def test_the_probability_matched_mean_takes_its_ranks_from_the_placement_its_forecaster_gave() -> None:
    """A forecast carrying a ``mean_placement`` coordinate: its probability-matched mean is ordered as the
    placement (where the placement has data; as the ensemble mean elsewhere), with the pooled members' values;
    no-data stays where the members have none; a placement of the wrong shape is refused."""
    from nowcast.products import PLACEMENT_COORD

    forecast = ensemble(members=6, steps=2, ny=12, nx=13)
    members = forecast.values
    mean = ensemble_mean(members)
    placement = -mean  # the opposite order: the heaviest mean gets the lightest value
    placement[:, 5, :] = np.nan
    placed = forecast.assign_coords({PLACEMENT_COORD: (("time", "y", "x"), placement)})
    matched = ensemble_products(placed, ProductRequest(("pm_mean",)))["pm_mean"].values
    plain = probability_matched_mean(members)
    ranking = np.where(np.isfinite(placement), placement, mean)
    for lead in range(2):
        valid = np.isfinite(mean[lead])
        np.testing.assert_array_equal(np.isfinite(matched[lead]), valid)
        np.testing.assert_array_equal(np.sort(matched[lead][valid]), np.sort(plain[lead][valid]))
        order = np.argsort(ranking[lead][valid], kind="stable")
        assert np.all(np.diff(matched[lead][valid][order]) >= 0)
    with pytest.raises(ValueError, match="placement of shape"):
        probability_matched_mean(members, placement=placement[0])


def test_a_core_keeps_its_heavy_rain_and_an_outline_orders_the_rest() -> None:
    """core_and_outline: the pixels of the core above the core rate are as they were; the others take the
    core's remaining values in the outline's order (so the area above every rate is the core's); no data
    where the core has none, the outline's no data ranked last; fields of other shapes refused."""
    members = ensemble(members=6, steps=2, ny=12, nx=13).values
    core = probability_matched_mean(members)
    outline = probability_matched_mean(members, placement=-ensemble_mean(members))  # the opposite order
    outline[1, 4, :] = np.nan
    joined = core_and_outline(core, outline, core_mmh=3.0)
    for lead in range(2):
        valid = np.isfinite(core[lead])
        np.testing.assert_array_equal(np.isfinite(joined[lead]), valid)
        np.testing.assert_array_equal(np.sort(joined[lead][valid]), np.sort(core[lead][valid]))
        heavy = valid & (core[lead] > 3.0)
        assert heavy.any() and (valid & ~heavy).any()
        np.testing.assert_array_equal(joined[lead][heavy], core[lead][heavy])
        rest = valid & ~heavy
        ranking = np.where(np.isfinite(outline[lead]), outline[lead], -np.inf)[rest]
        assert np.all(np.diff(joined[lead][rest][np.lexsort((joined[lead][rest], ranking))]) >= 0)
        assert not np.array_equal(joined[lead][rest], core[lead][rest])
    assert np.all(joined[1, 4][np.isfinite(joined[1, 4]) & ~(core[1, 4] > 3.0)] <= np.nanmin(
        joined[1][np.isfinite(outline[1]) & ~(core[1] > 3.0)]))
    np.testing.assert_array_equal(core_and_outline(core, outline, core_mmh=1e9)[0][np.isfinite(core[0])],
                                  np.where(np.isfinite(outline[0]), outline[0], np.nan)[np.isfinite(core[0])])
    with pytest.raises(ValueError, match="core of shape"):
        core_and_outline(core, outline[0], core_mmh=3.0)


def test_a_blended_order_lies_between_two_fields_orders() -> None:
    """blended_order: weight 1 gives the first field's order with its ties in the second's, weight 0 the second's;
    between them each pixel's rank is the weighted mean of its two ranks (0 to 1); NaN where either field has no
    data; other shapes and weights outside [0, 1] refused."""
    rng = np.random.default_rng(0)
    first = rng.integers(0, 4, size=(2, 6, 7)).astype(np.float32)  # many ties
    second = rng.random((2, 6, 7)).astype(np.float32)
    second[1, 2, 3] = np.nan
    for lead in range(2):
        valid = np.isfinite(second[lead])
        n = int(valid.sum())
        one = blended_order(first, second, 1.0)[lead][valid]
        np.testing.assert_array_equal(np.argsort(one), np.lexsort((second[lead][valid], first[lead][valid])))
        zero = blended_order(first, second, 0.0)[lead][valid]
        np.testing.assert_array_equal(np.argsort(zero), np.argsort(second[lead][valid]))
        np.testing.assert_allclose(np.sort(one), np.arange(n) / (n - 1))
        np.testing.assert_allclose(blended_order(first, second, 0.25)[lead][valid], 0.25 * one + 0.75 * zero)
    assert np.isnan(blended_order(first, second, 0.5)[1, 2, 3])
    assert np.isfinite(blended_order(first, second, 0.5)[0]).all()
    with pytest.raises(ValueError, match="shapes"):
        blended_order(first, second[0], 0.5)
    with pytest.raises(ValueError, match="blend weight"):
        blended_order(first, second, 1.5)


def test_a_field_placed_in_another_fields_order_keeps_its_values() -> None:
    """placed_in_order: the field's values, the highest where the order is highest (ties in the field's own order),
    frame by frame; no data where the field has none, the order's no data ranking last."""
    from nowcast.ensemble import placed_in_order

    rng = np.random.default_rng(1)
    field = rng.gamma(0.5, 2.0, size=(2, 5, 6)).astype(np.float32)
    field[0, 1, 1] = np.nan
    order = rng.random((2, 5, 6))
    order[1, 0, 0] = np.nan
    placed = placed_in_order(field, order)
    assert np.isnan(placed[0, 1, 1]) and np.isfinite(placed[1]).all()
    for lead in range(2):
        valid = np.isfinite(field[lead])
        np.testing.assert_array_equal(np.sort(placed[lead][valid]), np.sort(field[lead][valid]))
        ranked = np.where(np.isfinite(order[lead]), order[lead], -np.inf)[valid]
        np.testing.assert_array_equal(placed[lead][valid][np.argsort(ranked)], np.sort(field[lead][valid]))
    assert placed[1, 0, 0] == np.nanmin(field[1])


def test_a_fields_core_placed_in_another_fields_order_leaves_the_rest() -> None:
    """core_in_order: the values from the core's rate up move among the same pixels, the highest where the order is
    highest; lighter values and no data stay where they are."""
    from nowcast.ensemble import core_in_order

    rng = np.random.default_rng(2)
    field = rng.gamma(0.5, 2.0, size=(2, 5, 6)).astype(np.float32)
    field[0, 1, 1] = np.nan
    order = rng.random((2, 5, 6))
    placed = core_in_order(field, order, 1.0)
    core = field >= 1.0
    np.testing.assert_array_equal(placed[~core], field[~core])
    for lead in range(2):
        np.testing.assert_array_equal(placed[lead][core[lead]][np.argsort(order[lead][core[lead]])],
                                      np.sort(field[lead][core[lead]]))
    assert not np.array_equal(placed, field, equal_nan=True)


@pytest.mark.parametrize("n_members", [5, 20])
def test_member_statistics_are_no_data_where_fewer_than_half_of_the_members_have_data(n_members: int) -> None:
    # an inflow edge as a trained ensemble draws it: column x has data in x members only
    forecast = ensemble(members=n_members, steps=2, ny=4, nx=n_members + 1)
    values = forecast.values.copy()
    for column in range(n_members + 1):
        values[column:, :, :, column] = np.nan
    forecast = forecast.copy(data=values)
    needed = minimum_members(n_members)
    assert needed == (n_members + 1) // 2 and minimum_members(1) == 1
    products = ensemble_products(forecast, ProductRequest(PRODUCTS, (1.0, 4.0), (0.1, 0.9), neighbourhood=0.0))
    with_data = np.count_nonzero(~np.isnan(values), axis=0)
    published = with_data >= needed
    library = {"probabilities": exceedance_probability(values, (1.0, 4.0)), "mean": ensemble_mean(values),
               "quantiles": ensemble_quantiles(values, (0.1, 0.9))}
    for name, full in library.items():
        made = products[name].values
        assert products[name].attrs[MIN_MEMBERS_ATTR] == needed
        np.testing.assert_array_equal(made[..., published], full[..., published])
        assert np.isnan(made[..., ~published]).all(), name
        assert np.isfinite(full[..., ~published & (with_data > 0)]).all(), name  # the library still gives them
    # the band is the same at every lead, so the period's products are published where the leads' products are
    for name in ("max_probabilities", "accumulation_probabilities", "accumulation_quantiles"):
        np.testing.assert_array_equal(np.isnan(products[name].values[0]), ~published[0], err_msg=name)
        assert products[name].attrs[MIN_MEMBERS_ATTR] == needed
    # the members and the deterministic forecast are published as drawn and as scored
    np.testing.assert_array_equal(products["members"].values, values)
    np.testing.assert_array_equal(products["pm_mean"].values, probability_matched_mean_of(forecast))
    assert np.isfinite(products["pm_mean"].values[..., ~published & (with_data > 0)]).all()
    assert MIN_MEMBERS_ATTR not in products["pm_mean"].attrs and MIN_MEMBERS_ATTR not in products["members"].attrs
    # neighbourhood-processed, the pixels with too few members are no part of their neighbours' windows either
    processed = ensemble_products(forecast, ProductRequest(("probabilities",), (1.0,), neighbourhood=0.6))
    for lead, window in enumerate((3, 7)):  # 1 km pixels, +5 and +10 min
        fraction = exceedance_probability(values[:, lead], (1.0,))
        leaky = neighbourhood_probability(fraction, window)
        fraction[:, ~published[lead]] = np.nan
        expected = neighbourhood_probability(fraction, window)
        np.testing.assert_allclose(processed["probabilities"].values[:, lead], expected, rtol=1e-6)
        assert np.any(np.abs(leaky - expected)[:, published[lead]] > 1e-3)


def test_max_probabilities_count_the_members_above_the_threshold_at_any_lead_with_data_at_every_lead() -> None:
    members = np.zeros((4, 3, 1, 5), dtype=np.float32)  # (member, time, y, x)
    members[0, 2, 0, 0] = 5.0  # one member above 4 mm/h at the last lead only
    members[1, 0, 0, 0] = 2.0  # one above 1 mm/h only
    members[:, 1, 0, 1] = 9.0  # all four above 8 mm/h at one lead
    members[0, 1, 0, 2] = np.nan  # a member with a gap is not counted: it may have missed its maximum
    members[1:, 0, 0, 2] = 3.0
    members[:, :, 0, 3] = np.nan  # no member with data
    members[:3, 0, 0, 4] = np.nan  # one member with data at every lead
    got = period_exceedance_probability(members, (1.0, 4.0, 8.0))
    np.testing.assert_array_equal(got[:, 0, 0], [0.5, 0.25, 0.0])
    np.testing.assert_array_equal(got[:, 0, 1], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(got[:, 0, 2], [1.0, 0.0, 0.0])  # the three complete members, all above 1
    assert np.isnan(got[:, 0, 3]).all()
    np.testing.assert_array_equal(got[:, 0, 4], [0.0, 0.0, 0.0])
    times = pd.date_range("2024-06-01 12:05", periods=3, freq="5min")
    forecast = xr.DataArray(members, dims=("member", "time", "y", "x"),
                            coords={"time": times, "y": [0.0], "x": np.arange(5) * 1000.0},
                            attrs={"forecast_reference_time": "2024-06-01 12:00:00"})
    product = ensemble_products(forecast, ProductRequest(("max_probabilities",), (1.0, 4.0, 8.0)))["max_probabilities"]
    assert product.attrs[MIN_MEMBERS_ATTR] == 2
    np.testing.assert_array_equal(product.values[:, 0, :3], got[:, 0, :3])  # 4, 4 and 3 complete members
    assert np.isnan(product.values[:, 0, 3:]).all()  # none, and one of four: fewer than half


def accumulation_forecast(rates: np.ndarray, lead_minutes: list[float]) -> xr.DataArray:
    """An ensemble forecast of ``rates`` (member, time, y, x; mm/h) valid ``lead_minutes`` after 12:00."""
    times = pd.Timestamp("2024-06-01 12:00") + pd.to_timedelta(lead_minutes, unit="min")
    ny, nx = rates.shape[2:]
    return xr.DataArray(rates.astype(np.float32), dims=("member", "time", "y", "x"),
                        coords={"time": times, "y": np.arange(ny) * 1000.0, "x": np.arange(nx) * 1000.0},
                        attrs={"projection": "", "forecast_reference_time": "2024-06-01 12:00:00"})


def test_accumulations_are_the_members_rain_over_the_period_counted_by_hand() -> None:
    """4 members, 3 leads of 10 min (1/6 h each), 2x2 pixels; the rain a member brings is the sum of its rates
    times 1/6 h. Thresholds 1, 5 and 10 mm, levels 0.1, 0.5 and 0.9 (numpy's linear quantiles)."""
    nan = np.nan
    rates = np.zeros((4, 3, 2, 2))
    # (0, 0): the members bring 3, 6, 9 and 12 mm
    rates[:, :, 0, 0] = [[6, 0, 12], [12, 12, 12], [0, 54, 0], [24, 24, 24]]
    # (0, 1): member 0 lacks the middle lead (60 mm/h either side: 20 mm were it counted); the others bring
    # 3, 0 and 11 mm
    rates[:, :, 0, 1] = [[60, nan, 60], [6, 6, 6], [0, 0, 0], [66, 0, 0]]
    # (1, 0): one member of four complete: fewer than half, no data
    rates[:, :, 1, 0] = [[nan, 6, 6], [6, nan, 6], [6, 6, nan], [6, 6, 6]]
    # (1, 1): two members of four complete, exactly half: 3 and 18 mm
    rates[:, :, 1, 1] = [[nan, 0, 0], [0, 0, nan], [6, 6, 6], [36, 36, 36]]
    forecast = accumulation_forecast(rates, [10, 20, 30])
    request = ProductRequest(("accumulation_probabilities", "accumulation_quantiles"), quantile_levels=(0.1, 0.5, 0.9))
    products = ensemble_products(forecast, request)
    probabilities = products["accumulation_probabilities"].values
    quantiles = products["accumulation_quantiles"].values
    np.testing.assert_allclose(probabilities[:, 0, 0], [1.0, 0.75, 0.25])
    np.testing.assert_allclose(quantiles[:, 0, 0], [3.9, 7.5, 11.1], rtol=1e-6)
    np.testing.assert_allclose(probabilities[:, 0, 1], [2 / 3, 1 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(quantiles[:, 0, 1], [0.6, 3.0, 9.4], rtol=1e-6)
    assert np.isnan(probabilities[:, 1, 0]).all() and np.isnan(quantiles[:, 1, 0]).all()
    np.testing.assert_allclose(probabilities[:, 1, 1], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(quantiles[:, 1, 1], [4.5, 10.5, 16.5], rtol=1e-6)
    assert products["accumulation_probabilities"].attrs[MIN_MEMBERS_ATTR] == 2
    assert products["accumulation_quantiles"].attrs[MIN_MEMBERS_ATTR] == 2
    assert products["accumulation_threshold"].dtype == np.float64
    assert list(products["accumulation_threshold"].values) == [1.0, 5.0, 10.0]
    assert list(products["quantile"].values) == [0.1, 0.5, 0.9]
    assert probabilities.dtype == quantiles.dtype == np.float32
    # each alone is what it is beside the other
    alone = ensemble_products(forecast, ProductRequest(("accumulation_quantiles",), quantile_levels=(0.1, 0.5, 0.9)))
    np.testing.assert_array_equal(alone["accumulation_quantiles"].values, quantiles)
    assert "accumulation_threshold" not in alone.coords


def test_both_accumulation_products_come_from_one_accumulation(monkeypatch: pytest.MonkeyPatch) -> None:
    import nowcast.products

    calls: list[tuple[tuple[float, ...], tuple[float, ...]]] = []

    def counted(members, hours, thresholds, levels, min_members=1):
        calls.append((tuple(thresholds), tuple(levels)))
        return period_accumulation_products(members, hours, thresholds, levels, min_members)

    monkeypatch.setattr(nowcast.products, "period_accumulation_products", counted)
    ensemble_products(ensemble(), ProductRequest(("accumulation_probabilities", "accumulation_quantiles", "mean")))
    assert calls == [(DEFAULT_ACCUMULATION_THRESHOLDS_MM, DEFAULT_QUANTILE_LEVELS)]


@pytest.mark.parametrize(("lead_minutes", "total_mm"), [([5, 10, 15], 3.0), ([6, 12, 18], 3.6), ([5, 10, 20], 4.0)])
def test_the_durations_come_from_the_time_coordinate(lead_minutes: list[float], total_mm: float) -> None:
    """The same rates (12 mm/h at every lead) bring more rain over 6-minute leads than over 5-minute ones; an
    irregular last step counts for what it lasts."""
    rates = np.full((3, 3, 2, 2), 12.0)
    products = ensemble_products(accumulation_forecast(rates, lead_minutes),
                                 ProductRequest(("accumulation_probabilities", "accumulation_quantiles"),
                                                quantile_levels=(0.5,), accumulation_thresholds=(2.9, 3.3, 3.8)))
    np.testing.assert_allclose(products["accumulation_quantiles"].values, total_mm, rtol=1e-6)
    expected = [float(total_mm > threshold) for threshold in (2.9, 3.3, 3.8)]
    np.testing.assert_array_equal(products["accumulation_probabilities"].values[:, 0, 0], expected)


def test_accumulations_need_the_forecasts_reference_time() -> None:
    forecast = accumulation_forecast(np.ones((2, 2, 2, 2)), [5, 10])
    del forecast.attrs["forecast_reference_time"]
    with pytest.raises(ValueError, match="no forecast_reference_time"):
        ensemble_products(forecast, ProductRequest(("accumulation_probabilities",)))


@settings(max_examples=60, deadline=None)
@given(members=st.integers(1, 6), steps=st.integers(1, 5), seed=st.integers(0, 2**16),
       holes=st.floats(0.0, 0.4))
def test_the_maximum_is_at_least_every_leads_probability_and_falls_with_the_threshold(members: int, steps: int,
                                                                                      seed: int, holes: float) -> None:
    rng = np.random.default_rng(seed)
    values = rng.gamma(0.5, 3.0, size=(members, steps, 4, 5)).astype(np.float32)
    values[rng.random(values.shape) < holes] = np.nan
    thresholds = (0.5, 2.0, 6.0)
    period = period_exceedance_probability(values, thresholds)
    complete = np.isfinite(values).all(axis=1)
    counted = complete.sum(axis=0)
    assert np.array_equal(np.isnan(period[0]), counted == 0)
    every = counted == members  # where every member is complete, each lead's fraction counts the same members
    for lead in range(steps):
        assert np.all(period[:, every] >= exceedance_probability(values[:, lead], thresholds)[:, every] - 1e-7)
    assert np.all(np.diff(period[:, counted > 0], axis=0) <= 0)
    above = period[:, counted > 0] * counted[counted > 0]  # how many of the complete members: a whole number
    np.testing.assert_allclose(above, np.round(above), atol=1e-5)


def test_only_the_products_asked_are_made() -> None:
    products = ensemble_products(ensemble(), ProductRequest(("probabilities",)))
    assert list(products.data_vars) == ["probabilities"] and "member" not in products.coords
    with pytest.raises(ValueError, match="member, time, y, x"):
        ensemble_products(ensemble().isel(member=0), ProductRequest())


@pytest.mark.parametrize("members", [1, 2, 7, 20])
def test_quantiles_are_numpys(members: int) -> None:
    rng = np.random.default_rng(members)
    values = rng.gamma(0.5, 2.0, size=(members, 3, 20, 20)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = np.nan
    values[rng.random(values.shape) < 0.2] = 0.0
    values[:, :, :2] = np.nan
    levels = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="All-NaN slice"):
        expected = np.nanquantile(values, levels, axis=0)
    got = ensemble_quantiles(values, levels)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
