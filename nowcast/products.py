"""What goes out of an ensemble forecast: its members, or products made from them.

An ensemble forecast (member, time, y, x) in mm/h becomes the products a
:class:`ProductRequest` asks for, computed by :mod:`nowcast.ensemble`: the ``members``
themselves, exceedance ``probabilities`` at thresholds (neighbourhood-processed where the
request asks for it), the ensemble ``mean``, the probability-matched mean ``pm_mean`` and
``quantiles`` at levels, and ``max_probabilities``: P(rate > threshold at some time of the
forecast), what an operator asks of the next hour. Over the forecast's whole period, the rain
each member brings (each lead's rate times its duration, :func:`nowcast.ensemble.lead_hours`)
gives ``accumulation_probabilities``, P(rain > threshold), thresholds in mm, and
``accumulation_quantiles``, the members' rain in mm at the quantile levels: what a hydrologist
asks ("more than 10 mm here in the next hour?"). They travel together as
an :class:`xarray.Dataset` with one variable per product, on the forecast's grid and times
(the CF-netCDF writer, the command line and the service all take this form).

A member can have no data where the others have some (a trained ensemble's member whose own
motion brings rain from off the grid), so near an edge the rain flows in from the members drop
out one by one. The products that describe the members' distribution (probabilities, mean,
quantiles, max_probabilities, the accumulations) are published only where at least half of the
members have data (:data:`MIN_MEMBER_FRACTION`; for the period's maximum and accumulations, data
at every lead): a probability from two members reads 0 or 1, in streaks along the edge. The
probability-matched mean is the forecaster's deterministic forecast, published as scored, and
the scores (:mod:`nowcast.verification`) count their own pixels: neither goes through this rule.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from nowcast.ensemble import (
    MAX_NEIGHBOURHOOD_KM_PER_MINUTE,
    ensemble_mean,
    ensemble_quantiles,
    exceedance_probability,
    lead_exceedance_probability,
    lead_hours,
    lead_probability_matched_mean,
    period_accumulation_products,
    period_exceedance_probability,
    probability_matched_mean,
)
from nowcast.errors import InputError
from nowcast.sequence import MAX_RAIN_RATE_MMH, lead_minutes_of, pixel_size_km

PRODUCTS = ("members", "probabilities", "mean", "pm_mean", "quantiles", "max_probabilities",
            "accumulation_probabilities", "accumulation_quantiles")
#: the products with a threshold axis: both take the request's ``thresholds``
THRESHOLD_PRODUCTS = ("probabilities", "max_probabilities")
#: the products of the rain (mm) over the forecast's whole period, (accumulation_threshold | quantile, y, x)
ACCUMULATION_PRODUCTS = ("accumulation_probabilities", "accumulation_quantiles")
#: the products with a quantile axis: both take the request's ``quantile_levels``
QUANTILE_PRODUCTS = ("quantiles", "accumulation_quantiles")
#: what an ensemble forecast gives when no products are named
DEFAULT_PRODUCTS = ("members", "probabilities")
DEFAULT_THRESHOLDS_MMH = (1.0, 4.0, 8.0)
DEFAULT_QUANTILE_LEVELS = (0.1, 0.5, 0.9)
#: the rain over the forecast's period (mm) of ``accumulation_probabilities`` when none are asked for
DEFAULT_ACCUMULATION_THRESHOLDS_MM = (1.0, 5.0, 10.0)
#: the largest accumulation threshold a request may ask for (a day at 40 mm/h)
MAX_ACCUMULATION_MM = 1000.0
#: the attribute of an ensemble forecast that carries its forecaster's fitted neighbourhood
NEIGHBOURHOOD_ATTR = "probability_neighbourhood_km_per_minute"
#: the attribute of processed probabilities (and of their netCDF variable) that says their neighbourhood
PROCESSED_NEIGHBOURHOOD_ATTR = "neighbourhood_km_per_minute"
#: the attribute of an ensemble forecast (and of its probability-matched mean) that carries the window,
#: in km per minute of lead, whose mean gives the probability-matched mean its placement
MEAN_NEIGHBOURHOOD_ATTR = "mean_neighbourhood_km_per_minute"
#: the fraction of the members that must have data at a pixel for the probabilities, mean and quantiles there
MIN_MEMBER_FRACTION = 0.5
#: the attribute of the products (and of those netCDF variables) that says how many members that is
MIN_MEMBERS_ATTR = "minimum_members_with_data"
#: the products (one field per lead) that are no data where fewer members than that have data
MEMBER_STATISTICS = ("probabilities", "mean", "quantiles")
#: the coordinate (time, y, x) in mm/h with which a forecaster may place its ensemble's probability-matched
#: mean: the field whose ranks it takes instead of the ensemble mean's
PLACEMENT_COORD = "mean_placement"
#: the coordinate (time, y, x) in mm/h in which a forecaster may give its ensemble's probability-matched mean
#: itself, where it maps the mean's values (``ModelConfig.mean_rate_map``)
MEAN_COORD = "probability_matched_mean"


@dataclass(frozen=True)
class ProductRequest:
    """Which products to make from an ensemble, at which thresholds (mm/h), accumulation thresholds (mm over the
    forecast's period) and quantile levels.

    ``neighbourhood``: the probabilities' square neighbourhood, whose side grows this many
    km per minute of lead (0: the members' own fractions; see
    :func:`nowcast.ensemble.neighbourhood_probability`); None: the one the forecaster
    fitted (the forecast's ``probability_neighbourhood_km_per_minute``, else none). Lists
    are kept as tuples in the order given; errors name the field at fault (``products``,
    ``thresholds``, ``quantile_levels``, ``neighbourhood``, ``accumulation_thresholds``).
    """

    products: tuple[str, ...] = DEFAULT_PRODUCTS
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS_MMH
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILE_LEVELS
    neighbourhood: float | None = None
    accumulation_thresholds: tuple[float, ...] = DEFAULT_ACCUMULATION_THRESHOLDS_MM

    def __post_init__(self) -> None:
        object.__setattr__(self, "products", _product_names(self.products))
        object.__setattr__(self, "thresholds", _numbers(self.thresholds, "thresholds", 0.0, MAX_RAIN_RATE_MMH))
        object.__setattr__(self, "quantile_levels", _numbers(self.quantile_levels, "quantile_levels", 0.0, 1.0))
        object.__setattr__(self, "accumulation_thresholds", _numbers(self.accumulation_thresholds,
                                                                     "accumulation_thresholds", 0.0,
                                                                     MAX_ACCUMULATION_MM))
        if self.neighbourhood is not None:
            object.__setattr__(self, "neighbourhood", _numbers((self.neighbourhood,), "neighbourhood", 0.0,
                                                               MAX_NEIGHBOURHOOD_KM_PER_MINUTE)[0])

    @classmethod
    def from_options(cls, products: Iterable[str] | None = None, thresholds: Iterable[float] | None = None,
                     quantile_levels: Iterable[float] | None = None,
                     neighbourhood: float | None = None,
                     accumulation_thresholds: Iterable[float] | None = None) -> ProductRequest:
        """A request from options, None meaning the default; options of a product not asked for: refused."""
        request = cls(
            tuple(products) if products is not None else DEFAULT_PRODUCTS,
            tuple(thresholds) if thresholds is not None else DEFAULT_THRESHOLDS_MMH,
            tuple(quantile_levels) if quantile_levels is not None else DEFAULT_QUANTILE_LEVELS,
            neighbourhood,
            tuple(accumulation_thresholds) if accumulation_thresholds is not None
            else DEFAULT_ACCUMULATION_THRESHOLDS_MM,
        )
        for given, field, users in [(thresholds, "thresholds", THRESHOLD_PRODUCTS),
                                    (quantile_levels, "quantile_levels", QUANTILE_PRODUCTS),
                                    (neighbourhood, "neighbourhood", ("probabilities",)),
                                    (accumulation_thresholds, "accumulation_thresholds",
                                     ("accumulation_probabilities",))]:
            if given is not None and not set(users) & set(request.products):
                raise InputError(f"{field}: given, but {' or '.join(users)} are not among the products asked for "
                                 f"({', '.join(request.products)})", field=field)
        return request

    def values_per_frame(self, members: int) -> int:
        """How many (y, x) fields the products hold per lead time, for an ensemble of ``members``."""
        sizes = {"members": members, "probabilities": len(self.thresholds), "mean": 1, "pm_mean": 1,
                 "quantiles": len(self.quantile_levels)}
        return sum(sizes.get(name, 0) for name in self.products)

    def fields(self, members: int, steps: int) -> int:
        """How many (y, x) fields the products hold in all, for ``steps`` leads of an ensemble of ``members``: the
        period's products (maximum, accumulations) hold one a threshold or level."""
        sizes = {"max_probabilities": len(self.thresholds),
                 "accumulation_probabilities": len(self.accumulation_thresholds),
                 "accumulation_quantiles": len(self.quantile_levels)}
        period = sum(sizes.get(name, 0) for name in self.products)
        return self.values_per_frame(members) * steps + period


def _product_names(products: Iterable[str]) -> tuple[str, ...]:
    if isinstance(products, str):
        products = (products,)
    names = tuple(products)
    if not names:
        raise InputError(f"products: none asked for; choose from {', '.join(PRODUCTS)}", field="products")
    for name in names:
        if name not in PRODUCTS:
            raise InputError(f"products: unknown product {name!r}; choose from {', '.join(PRODUCTS)}",
                             field="products")
    if len(set(names)) != len(names):
        raise InputError(f"products: {', '.join(names)} names a product twice", field="products")
    return names


def _numbers(values: Iterable[Any], field: str, low: float, high: float) -> tuple[float, ...]:
    """Numbers in [low, high], strictly increasing, at least one."""
    numbers = tuple(values)
    if not numbers:
        raise InputError(f"{field}: give at least one value", field=field)
    for value in numbers:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"{field}: {value!r} is not a finite number", field=field)
        if not low <= value <= high:
            raise InputError(f"{field}: {value:g} is outside [{low:g}, {high:g}]", field=field)
    if any(b <= a for a, b in itertools.pairwise(numbers)):
        raise InputError(f"{field}: values must be strictly increasing; got {', '.join(f'{v:g}' for v in numbers)}",
                         field=field)
    return tuple(float(v) for v in numbers)


def ensemble_products(forecast: xr.DataArray, request: ProductRequest) -> xr.Dataset:
    """The products of an ensemble forecast (member, time, y, x), one variable each, named as in :data:`PRODUCTS`.

    ``probabilities`` lie on a ``threshold`` axis (mm/h), ``quantiles`` on a ``quantile``
    axis (levels in [0, 1]), ``members`` on ``member``; ``mean`` and ``pm_mean`` are
    (time, y, x). Coordinates and attributes (grid, reference time, method) are the forecast's.
    ``max_probabilities`` are (threshold, y, x): over every lead of the forecast.
    ``accumulation_probabilities`` (accumulation_threshold, y, x; thresholds in mm) and
    ``accumulation_quantiles`` (quantile, y, x; mm) are of the rain over the forecast's period,
    from its reference time to its last lead.
    ``probabilities``, ``mean``, ``quantiles``, ``max_probabilities`` and the accumulations are NaN
    where fewer than :func:`minimum_members` have data (said in their ``minimum_members_with_data``
    attribute; for the period's products, data at every lead).
    """
    if forecast.dims[0] != "member":
        raise ValueError(f"an ensemble forecast is (member, time, y, x); got dims {forecast.dims}")
    members = np.asarray(forecast.values, dtype=np.float32)
    needed = minimum_members(members.shape[0])
    too_few = (np.count_nonzero(~np.isnan(members), axis=0) < needed
               if set(MEMBER_STATISTICS) & set(request.products) else None)
    frame_dims = forecast.dims[1:]
    accumulation = functools.cache(lambda: _accumulations(forecast, members, request, needed))
    made = {
        "members": lambda: (forecast.dims, members),
        "probabilities": lambda: (("threshold", *frame_dims), _probabilities(forecast, members, request, too_few)),
        "mean": lambda: (frame_dims, ensemble_mean(members)),
        "pm_mean": lambda: (frame_dims, probability_matched_mean_of(forecast)),
        "quantiles": lambda: (("quantile", *frame_dims), ensemble_quantiles(members, request.quantile_levels)),
        "max_probabilities": lambda: (("threshold", *frame_dims[1:]),
                                      period_exceedance_probability(members, request.thresholds, needed),
                                      {MIN_MEMBERS_ATTR: needed}),
        "accumulation_probabilities": lambda: (("accumulation_threshold", *frame_dims[1:]), accumulation()[0],
                                               {MIN_MEMBERS_ATTR: needed}),
        "accumulation_quantiles": lambda: (("quantile", *frame_dims[1:]), accumulation()[1],
                                           {MIN_MEMBERS_ATTR: needed}),
    }
    coords: dict[str, Any] = {name: forecast[name] for name in frame_dims}
    if "members" in request.products:
        coords["member"] = np.arange(members.shape[0])
    if set(THRESHOLD_PRODUCTS) & set(request.products):
        coords["threshold"] = np.asarray(request.thresholds, dtype=np.float64)
    if "accumulation_probabilities" in request.products:
        coords["accumulation_threshold"] = np.asarray(request.accumulation_thresholds, dtype=np.float64)
    if set(QUANTILE_PRODUCTS) & set(request.products):
        coords["quantile"] = np.asarray(request.quantile_levels, dtype=np.float64)
    products = xr.Dataset(_blanked({name: made[name]() for name in request.products}, too_few, needed),
                          coords=coords)
    products.attrs = dict(forecast.attrs)
    products.attrs["ensemble_members"] = int(members.shape[0])
    neighbourhood = probability_neighbourhood(forecast, request)
    if "probabilities" in request.products and neighbourhood:
        products["probabilities"].attrs[PROCESSED_NEIGHBOURHOOD_ATTR] = neighbourhood
    if "pm_mean" in request.products and forecast.attrs.get(MEAN_NEIGHBOURHOOD_ATTR):
        products["pm_mean"].attrs[MEAN_NEIGHBOURHOOD_ATTR] = float(forecast.attrs[MEAN_NEIGHBOURHOOD_ATTR])
    return products


def minimum_members(n_members: int) -> int:
    """How many of ``n_members`` must have data at a pixel for the members' statistics to be published there."""
    return max(1, math.ceil(MIN_MEMBER_FRACTION * n_members))


def _blanked(variables: dict[str, tuple[Any, ...]], too_few: np.ndarray | None,
             needed: int) -> dict[str, tuple[Any, ...]]:
    """``variables`` ((dims, values) by product) with the member statistics NaN where ``too_few`` (time, y, x),
    each saying the minimum of members ``needed``."""
    blanked = dict(variables)
    for name in MEMBER_STATISTICS:
        if name in variables:
            dims, values = variables[name]
            blanked[name] = (dims, np.where(too_few, np.float32(np.nan), values), {MIN_MEMBERS_ATTR: needed})
    return blanked


def probability_matched_mean_of(forecast: xr.DataArray) -> np.ndarray:
    """The probability-matched mean (time, y, x) of an ensemble forecast (member, time, y, x) in mm/h: each
    lead's ranks from the window its forecaster set (the forecast's ``mean_neighbourhood_km_per_minute``,
    else the field's own ranks) over the ensemble mean, or over the placement its forecaster gave (the
    forecast's ``mean_placement`` coordinate); or the one the forecaster gave (the ``probability_matched_mean``
    coordinate). The one deterministic forecast an ensemble gives, in products and scores."""
    ordered = forecast.transpose("member", ...)
    if MEAN_COORD in forecast.coords:
        return np.asarray(ordered[MEAN_COORD].transpose(*ordered.dims[1:]).values, dtype=np.float32)
    members = np.asarray(ordered.values, dtype=np.float32)
    placement = None
    if PLACEMENT_COORD in forecast.coords:
        placement = np.asarray(ordered[PLACEMENT_COORD].transpose(*ordered.dims[1:]).values, dtype=np.float32)
    rate = float(forecast.attrs.get(MEAN_NEIGHBOURHOOD_ATTR, 0.0))
    if not rate:
        return probability_matched_mean(members, placement=placement)
    return lead_probability_matched_mean(members, lead_minutes_of(forecast), rate, pixel_size_km(forecast),
                                         placement)


def probability_neighbourhood(forecast: xr.DataArray, request: ProductRequest) -> float:
    """The neighbourhood (km per minute of lead) the probabilities are processed with: the request's, else the
    forecaster's fitted one that the forecast carries, else 0."""
    if request.neighbourhood is not None:
        return request.neighbourhood
    return float(forecast.attrs.get(NEIGHBOURHOOD_ATTR, 0.0))


def _accumulations(forecast: xr.DataArray, members: np.ndarray, request: ProductRequest,
                   needed: int) -> tuple[np.ndarray, np.ndarray]:
    """P(rain over the forecast's period > each accumulation threshold), (threshold, y, x), and the quantiles of
    the members' rain (mm), (level, y, x), in one pass over the members; empty where not asked for. Each lead's
    rate falls from the lead before (the reference time for the first): durations from the time coordinate."""
    thresholds = request.accumulation_thresholds if "accumulation_probabilities" in request.products else ()
    levels = request.quantile_levels if "accumulation_quantiles" in request.products else ()
    return period_accumulation_products(members, lead_hours(lead_minutes_of(forecast)), thresholds, levels, needed)


def _probabilities(forecast: xr.DataArray, members: np.ndarray, request: ProductRequest,
                   too_few: np.ndarray) -> np.ndarray:
    """Exceedance probabilities (threshold, time, y, x), each lead's neighbourhood-processed where asked, its
    windows over the pixels where enough members have data (``too_few``: (time, y, x), the others; those are
    blanked with the other member statistics)."""
    neighbourhood = probability_neighbourhood(forecast, request)
    if not neighbourhood:
        return exceedance_probability(members, request.thresholds)
    size_km = pixel_size_km(forecast)
    return np.stack([lead_exceedance_probability(members[:, i], request.thresholds, lead, neighbourhood, size_km,
                                                 kept=~too_few[i])
                     for i, lead in enumerate(lead_minutes_of(forecast))], axis=1)
