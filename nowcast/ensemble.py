"""What an ensemble of rain-rate forecasts says: its mean, its probability-matched mean,
exceedance probabilities (raw or neighbourhood-processed) and quantiles.

Members lie on the first axis of every array here: ``(member, ...)`` in mm/h, NaN = no
data. A pixel is no data in a product where every member is; members that lack data at a
pixel are left out of it there.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import numpy as np


def ensemble_mean(members: np.ndarray) -> np.ndarray:
    """The members' mean at every pixel (smooth: it is not a plausible rain field)."""
    with np.errstate(invalid="ignore"), _no_empty_slice_warning():
        return np.nanmean(members, axis=0).astype(np.float32)


def probability_matched_mean(members: np.ndarray, window_pixels: int = 1,
                             placement: np.ndarray | None = None) -> np.ndarray:
    """The ensemble mean's pattern with the members' intensity distribution (Ebert 2001).

    Per frame (each ``(y, x)`` field of the axes after the first), the pixels keep the rank of
    the ensemble mean and take the value of that rank in the pooled members' distribution
    (every member's values, sorted, read at evenly spaced ranks): the mean's placement of
    rain, the members' sharpness of it. Used as an ensemble's one deterministic forecast.
    ``window_pixels`` > 1: the ranks are those of the mean's square-window mean (no-data
    left out, as :func:`neighbourhood_probability` does), which places the rain where the
    mean puts it within about half a window; the values are the members' all the same.
    ``placement`` (the shape of one member): the field whose ranks are taken instead of the
    ensemble mean's (a forecaster's better estimate of where the ensemble's rain lies as a
    whole, in mm/h), at the pixels where both have data; the values are still the members'.
    """
    members = np.asarray(members, dtype=np.float32)
    mean = ensemble_mean(members)
    if placement is not None:
        if placement.shape != mean.shape:
            raise ValueError(f"a placement of shape {placement.shape} for members of shape {members.shape}")
        mean = np.where(np.isfinite(mean) & np.isfinite(placement), placement, mean)
    ranked = window_mean(mean, window_pixels)
    out = np.full_like(mean, np.nan)
    for index in np.ndindex(mean.shape[:-2]):
        field = ranked[index]
        valid = np.isfinite(field)
        if not valid.any():
            continue
        pooled = np.sort(members[(slice(None), *index)][:, valid].ravel())
        pooled = pooled[np.isfinite(pooled)]
        n = int(valid.sum())
        ranks = np.argsort(np.argsort(field[valid], kind="stable"), kind="stable")
        quantile_positions = np.linspace(0, len(pooled) - 1, n).round().astype(int)
        matched = np.empty(n, dtype=np.float32)
        matched[:] = pooled[quantile_positions][ranks]
        frame = out[index]
        frame[valid] = matched
    return out


def core_and_outline(core: np.ndarray, outline: np.ndarray, core_mmh: float) -> np.ndarray:
    """One field with ``core``'s values: its pixels above ``core_mmh`` as they are, its other values placed in
    ``outline``'s order (the highest where ``outline`` is highest, ties in ``core``'s order), frame by frame
    (each ``(y, x)`` field of the axes before the last two). Two probability-matched means of the same members
    share their values, so this is the one whose heavy rain lies where ``core`` puts it and whose light rain
    around it lies where ``outline`` puts it. No data: where ``core`` has none; ``outline``'s no data ranks
    last."""
    core = np.asarray(core, dtype=np.float32)
    outline = np.asarray(outline, dtype=np.float32)
    if core.shape != outline.shape:
        raise ValueError(f"a core of shape {core.shape} and an outline of shape {outline.shape}")
    out = np.full_like(core, np.nan)
    for index in np.ndindex(core.shape[:-2]):
        values, order_by = core[index], outline[index]
        valid = np.isfinite(values)
        kept = valid & (values > core_mmh)
        rest = valid & ~kept
        frame = out[index]
        frame[kept] = values[kept]
        ranks = np.where(np.isfinite(order_by[rest]), order_by[rest], -np.inf)
        placed = np.empty(int(rest.sum()), dtype=np.float32)
        placed[np.lexsort((values[rest], ranks))] = np.sort(values[rest])
        frame[rest] = placed
    return out


def placed_in_order(field: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``field``'s values placed in ``order``'s order (the highest where ``order`` is highest, ties in
    ``field``'s order), frame by frame: :func:`core_and_outline` with no core. No data: where ``field`` has
    none; ``order``'s no data ranks last."""
    return core_and_outline(field, order, np.inf)


def core_in_order(field: np.ndarray, order: np.ndarray, core_mmh: float) -> np.ndarray:
    """``field`` with its values from ``core_mmh`` up placed over the same pixels in ``order``'s order (the
    highest where ``order`` is highest, ties in ``field``'s order), frame by frame; its other pixels as they
    are. :func:`core_and_outline` turned round: that one keeps the core and orders the rest."""
    return -core_and_outline(-np.asarray(field, dtype=np.float32), -np.asarray(order, dtype=np.float32), -core_mmh)


def blended_order(first: np.ndarray, second: np.ndarray, weight: float) -> np.ndarray:
    """A field ordered between two, frame by frame (each ``(y, x)`` field of the axes before the last two):
    each pixel's rank in ``first`` (ties in ``second``'s order) times ``weight`` plus its rank in ``second``
    times 1 - ``weight``, ranks from 0 to 1 over the pixels where both have data; NaN elsewhere. ``weight``
    1: ``first``'s order, 0: ``second``'s."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"a blend weight in [0, 1]; got {weight}")
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"fields of shapes {first.shape} and {second.shape}")
    out = np.full(first.shape, np.nan)
    for index in np.ndindex(first.shape[:-2]):
        a, b = first[index], second[index]
        valid = np.isfinite(a) & np.isfinite(b)
        n = int(valid.sum())
        if not n:
            continue
        scale = 1.0 / max(n - 1, 1)
        rank_a, rank_b = np.empty(n), np.empty(n)
        rank_a[np.lexsort((b[valid], a[valid]))] = np.arange(n) * scale
        rank_b[np.argsort(b[valid], kind="stable")] = np.arange(n) * scale
        frame = out[index]
        frame[valid] = weight * rank_a + (1.0 - weight) * rank_b
    return out


def map_rates(rates: np.ndarray, from_mmh: Sequence[float], to_mmh: Sequence[float]) -> np.ndarray:
    """``rates`` (mm/h, > 0) mapped piecewise linearly in log rate from the increasing ``from_mmh`` onto
    the increasing ``to_mmh``; below the first pair and above the last, times that pair's ratio."""
    source, target = np.log(np.asarray(from_mmh, dtype=np.float64)), np.log(np.asarray(to_mmh, dtype=np.float64))
    logs = np.log(rates)
    return np.exp(logs + np.interp(logs, source, target - source)).astype(rates.dtype)


def area_matching_map(members: np.ndarray, reference: np.ndarray, thresholds_mmh: Sequence[float],
                      wet_from_mmh: float, ceiling: bool = False) -> tuple[list[float], list[float]]:
    """The rates a map (:func:`map_rates`) takes from and onto so that the pooled ``members`` (member, y, x)
    have the ``reference`` (y, x) field's area above each of the increasing ``thresholds_mmh``, over the
    pixels where the reference and every member have values; the identity from twice the highest
    threshold up. A threshold is left out where the reference has no rain above it or more than the
    members' wet area (rates from ``wet_from_mmh``): a map keeps dry pixels dry. With ``ceiling`` the
    reference's areas are upper bounds: a threshold the members have no more area above is left out
    too. Empty lists where every threshold is left out."""
    valid = np.isfinite(reference) & np.all(np.isfinite(members), axis=0)
    pooled = members[:, valid].ravel()
    seen = reference[valid]
    n = pooled.size
    ks = [round(np.count_nonzero(seen > threshold) / max(seen.size, 1) * n) for threshold in thresholds_mmh]
    # the k-th and (k+1)-th highest pooled rates only: a partition, not a sort of every member's pixels
    needed = sorted({i for k in ks if 0 < k < n for i in (n - k, n - 1 - k)})
    ascending = np.partition(pooled, needed) if needed else pooled
    from_mmh: list[float] = []
    to_mmh: list[float] = []
    for threshold, k in zip(thresholds_mmh, ks, strict=True):
        if not 0 < k < n or ascending[n - 1 - k] < wet_from_mmh:
            continue
        if ceiling and np.count_nonzero(pooled > threshold) <= k:
            continue
        rate = float(np.sqrt(ascending[n - k] * ascending[n - 1 - k]))  # between the k-th highest and the next
        if not from_mmh or rate > from_mmh[-1]:
            from_mmh.append(rate)
            to_mmh.append(float(threshold))
    identity_from = 2.0 * float(thresholds_mmh[-1])
    if from_mmh and identity_from > from_mmh[-1]:
        from_mmh.append(identity_from)
        to_mmh.append(identity_from)
    return from_mmh, to_mmh


def exceedance_probability(members: np.ndarray, thresholds_mmh: Sequence[float]) -> np.ndarray:
    """P(rate > threshold) per pixel, the fraction of members above it: (threshold, ...)."""
    members = np.asarray(members, dtype=np.float32)
    finite = np.isfinite(members)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        probabilities = [np.where(finite, members > t, False).sum(axis=0) / count for t in thresholds_mmh]
    return np.stack(probabilities).astype(np.float32)


def period_exceedance_probability(members: np.ndarray, thresholds_mmh: Sequence[float],
                                  min_members: int = 1) -> np.ndarray:
    """P(rate > threshold at some time of the period) per pixel: (threshold, y, x) from members (member, time, y, x),
    the fraction of the members above it at any of their times. A member counts at a pixel only where it has
    data at every time there (one with gaps could have missed its maximum); NaN where fewer than
    ``min_members`` (at least one) have."""
    members = np.asarray(members, dtype=np.float32)
    complete = np.isfinite(members).all(axis=1)
    count = complete.sum(axis=0)
    peak = np.where(complete, np.max(np.where(complete[:, None], members, -np.inf), axis=1), -np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        probabilities = [np.where(count >= max(min_members, 1), (peak > t).sum(axis=0) / count, np.nan)
                         for t in thresholds_mmh]
    return np.stack(probabilities).astype(np.float32)


def lead_hours(lead_minutes: Sequence[float]) -> np.ndarray:
    """How long each lead's rate falls, in hours: from the lead before (the forecast's start for the first).

    A radar frame's rate is the mean over the time step that ends at its time, so the rain a forecast
    brings from its start to its last lead is the sum of each lead's rate times its duration here.
    """
    minutes = np.asarray(lead_minutes, dtype=np.float64)
    durations = np.diff(np.concatenate([[0.0], minutes]))
    if minutes.ndim != 1 or not minutes.size or not np.all(np.isfinite(minutes)) or np.any(durations <= 0):
        raise ValueError(f"lead times must be positive and increasing; got {list(np.atleast_1d(minutes))}")
    return durations / 60.0


def period_accumulation(members: np.ndarray, hours: Sequence[float]) -> np.ndarray:
    """The rain (mm) each member (member, time, y, x; mm/h) brings over the period: (member, y, x), each
    time's rate times ``hours`` at that time (:func:`lead_hours`). NaN where the member lacks data at some
    time: a total with a gap would be too small."""
    members = np.asarray(members, dtype=np.float32)
    hours = np.asarray(hours, dtype=np.float64)
    if members.ndim < 2 or hours.shape != (members.shape[1],):
        raise ValueError(f"one duration per time: {hours.shape} durations for members of shape {members.shape}")
    total = np.zeros((members.shape[0], *members.shape[2:]), dtype=np.float64)
    for time, duration in enumerate(hours):
        total += members[:, time] * duration
    return total.astype(np.float32)


def period_accumulation_products(members: np.ndarray, hours: Sequence[float], thresholds_mm: Sequence[float],
                                 levels: Sequence[float], min_members: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """P(rain over the period > threshold) per pixel, (threshold, y, x), and the quantiles of the members' rain
    (mm) over the period, (level, y, x), from members (member, time, y, x; mm/h) and each time's duration
    (:func:`period_accumulation`). A member counts at a pixel only where it has data at every time; both are
    NaN where fewer than ``min_members`` (at least one) do."""
    totals = period_accumulation(members, hours)
    too_few = np.isfinite(totals).sum(axis=0) < max(min_members, 1)
    probabilities = exceedance_probability(totals, thresholds_mm) if len(thresholds_mm) else \
        np.empty((0, *totals.shape[1:]), dtype=np.float32)
    quantiles = ensemble_quantiles(totals, levels) if len(levels) else np.empty((0, *totals.shape[1:]), np.float32)
    return (np.where(too_few, np.float32(np.nan), probabilities).astype(np.float32),
            np.where(too_few, np.float32(np.nan), quantiles).astype(np.float32))


#: the widest neighbourhood a product may ask for: 10 km per minute is 600 km at +60 min
MAX_NEIGHBOURHOOD_KM_PER_MINUTE = 10.0


def neighbourhood_window_pixels(lead_minutes: float, km_per_minute: float, pixel_size_km: float) -> int:
    """The side in pixels (odd, at least 1) of the square window at a lead time.

    The side grows linearly with the lead, ``km_per_minute`` km per minute: the position
    error of a nowcast grows with the lead, and a window as wide as that error turns a
    member's displaced cell into a probability spread over where it may be. 0 km per
    minute is no neighbourhood (one pixel).
    """
    if not (np.isfinite(km_per_minute) and km_per_minute >= 0):
        raise ValueError(f"the neighbourhood grows by a non-negative number of km per minute; got {km_per_minute}")
    if not (np.isfinite(pixel_size_km) and pixel_size_km > 0):
        raise ValueError(f"pixel size must be a positive number of km; got {pixel_size_km}")
    return int(np.rint(km_per_minute * max(lead_minutes, 0.0) / pixel_size_km)) | 1


def window_mean(field: np.ndarray, window_pixels: int) -> np.ndarray:
    """Each pixel's mean over the ``window_pixels`` square around it, of the pixels with data (float64).

    ``field``: (..., y, x), every leading index one field; NaN (no data) is left out of the
    means and stays NaN; near an edge the window holds the pixels inside the grid.
    """
    from scipy.ndimage import uniform_filter

    field = np.asarray(field, dtype=np.float64)
    if window_pixels <= 1:
        return field.copy()
    valid = np.isfinite(field)
    size = (1,) * (field.ndim - 2) + (window_pixels, window_pixels)
    total = uniform_filter(np.where(valid, field, 0.0), size, mode="constant")
    weight = uniform_filter(valid.astype(np.float64), size, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        # the filter's running sums leave rounding of ~1e-16, even where a window holds no data
        out = np.where(weight > 1e-9, total / weight, np.nan)
    out[~valid] = np.nan
    return out


def neighbourhood_probability(probability: np.ndarray, window_pixels: int) -> np.ndarray:
    """Each pixel's mean probability over the ``window_pixels`` square around it, of the pixels with data.

    ``probability``: (..., y, x), as :func:`window_mean` takes it. This is IMPROVER's square
    neighbourhood processing of probabilities (``nbhood``), with no-data pixels masked: a
    probability then reads "rain above the threshold within about half a window of here",
    which a forecast whose cells are displaced by that much earns.
    """
    return np.clip(window_mean(probability, window_pixels), 0.0, 1.0)


def lead_exceedance_probability(members: np.ndarray, thresholds_mmh: Sequence[float], lead_minutes: float,
                                km_per_minute: float, pixel_size_km: float,
                                kept: np.ndarray | None = None) -> np.ndarray:
    """Exceedance probabilities (threshold, y, x) of one lead's members (member, y, x), neighbourhood-processed
    in the window of that lead (``km_per_minute`` 0: the members' own fractions). ``kept`` (y, x): where False
    the probability is no data, and no part of its neighbours' windows."""
    probability = exceedance_probability(members, thresholds_mmh)
    if kept is not None:
        probability[:, ~kept] = np.nan
    if not km_per_minute:
        return probability
    window = neighbourhood_window_pixels(lead_minutes, km_per_minute, pixel_size_km)
    return neighbourhood_probability(probability, window).astype(np.float32)


def lead_probability_matched_mean(members: np.ndarray, lead_minutes: Sequence[float], km_per_minute: float,
                                  pixel_size_km: float, placement: np.ndarray | None = None) -> np.ndarray:
    """The probability-matched mean (time, y, x) of members (member, time, y, x), each lead's ranks from the
    window of that lead (:func:`neighbourhood_window_pixels`; ``km_per_minute`` 0: the field's own ranks)
    over the ensemble mean, or over ``placement`` (time, y, x) where given."""
    if len(lead_minutes) != members.shape[1]:
        raise ValueError(f"{len(lead_minutes)} lead times for {members.shape[1]} frames")
    return np.stack([probability_matched_mean(members[:, i], neighbourhood_window_pixels(lead, km_per_minute,
                                                                                          pixel_size_km),
                                              None if placement is None else placement[i])
                     for i, lead in enumerate(lead_minutes)])


def ensemble_quantiles(members: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Quantiles of the members per pixel (linear interpolation between members): (level, ...).

    What ``np.nanquantile(members, levels, axis=0)`` gives (to float32 rounding), without its
    loop over pixels (minutes on a 700x700 grid): the members are sorted once, NaN last, and
    each pixel is read between its finite members.
    """
    for level in levels:
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"quantile levels lie in [0, 1]; got {level}")
    members = np.asarray(members, dtype=np.float32)
    ordered = np.sort(members, axis=0)
    count = np.isfinite(members).sum(axis=0)
    last = np.maximum(count - 1, 0)
    out = np.full((len(levels), *members.shape[1:]), np.nan, dtype=np.float32)
    for i, level in enumerate(levels):
        position = level * last
        below = np.floor(position).astype(np.intp)
        weight = (position - below).astype(np.float32)
        low = np.take_along_axis(ordered, below[np.newaxis], axis=0)[0]
        high = np.take_along_axis(ordered, np.minimum(below + 1, last)[np.newaxis], axis=0)[0]
        # numpy's form of the interpolation: exact at either end
        value = np.where(weight >= 0.5, high - (high - low) * (1.0 - weight), low + (high - low) * weight)
        out[i] = np.where(count > 0, value, np.nan)
    return out


@contextlib.contextmanager
def _no_empty_slice_warning() -> Iterator[None]:
    """numpy warns for pixels without any member; those are NaN on purpose (no data)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Mean of empty slice")
        warnings.filterwarnings("ignore", message="All-NaN slice encountered")
        yield
