"""Product folders for the page's tests, written with the feed's own writer (nowcast.feed).

Synthetic rain on a Lambert azimuthal equal-area grid over the Netherlands (so the map has
borders, coastlines and a graticule to draw), rows from north to south as radar composites
store them; probabilities that fall with the threshold, as an ensemble's do.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.feed import ProductEntry, product_file_name, write_manifest, write_product
from nowcast.sequence import future_times, like, make_sequence
from nowcast.synthetic import SyntheticRain, synthetic_sequence

PROJECTION = "+proj=laea +lat_0=52 +lon_0=5 +x_0=0 +y_0=0 +ellps=WGS84 +units=m +no_defs"
THRESHOLDS = (1.0, 4.0, 8.0)


def minutes_ago(minutes: float) -> datetime:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).replace(second=0, microsecond=0)


def projected_sequence(reference: datetime, *, n: int = 120, frames: int = 24, seed: int = 3,
                       north_up: bool = True, projection: str = PROJECTION) -> xr.DataArray:
    """``frames`` frames of n x n synthetic rain at 5-min steps whose 12th frame is at ``reference``; 1-km cells
    centred on the projection's origin; rows north to south (``north_up``) or south to north."""
    start = reference - timedelta(minutes=5 * (frames // 2 - 1))
    rain = synthetic_sequence(SyntheticRain(ny=n, nx=n, frames=frames, no_data_border=3), seed=seed,
                              start=start.replace(tzinfo=None).isoformat())
    x = (np.arange(n) - n / 2 + 0.5) * 1000.0
    y = (n / 2 - 0.5 - np.arange(n)) * 1000.0
    values = rain.values
    if not north_up:
        y, values = y[::-1], values[:, ::-1]
    return make_sequence(values, rain["time"].values, x=x, y=y, projection=projection)


def publish(folder: Path, reference: datetime, *, n: int = 120, observed_frames: int = 12, steps: int = 12,
            thresholds: tuple[float, ...] = THRESHOLDS, north_up: bool = True, projection: str = PROJECTION,
            **entry: Any) -> ProductEntry:
    """Write one product made at ``reference`` into ``folder`` and list it alone in the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    full = projected_sequence(reference, n=n, frames=observed_frames + steps, north_up=north_up,
                              projection=projection)
    observed = full.isel(time=slice(0, observed_frames))
    forecast = like(observed, full.values[observed_frames:], future_times(observed, steps))
    probabilities = maxima = None
    if thresholds:
        values = np.stack([np.where(np.isnan(forecast.values), np.nan, np.clip(forecast.values / (2.0 * t), 0, 1))
                           for t in thresholds]).astype(np.float32)
        probabilities = xr.DataArray(values, dims=("threshold", *forecast.dims), coords={"threshold": list(thresholds)},
                                     attrs={"minimum_members_with_data": 4})  # as ensemble_products says of 8
        maxima = probabilities.max(dim="time").assign_attrs(probabilities.attrs)
    name = product_file_name(reference)
    write_product(folder / name, observed, forecast, probabilities=probabilities, max_probabilities=maxima,
                  attrs={"model": "page-test"})
    product = ProductEntry(file=name, reference_time=reference, model=entry.pop("model", "page-test@1"),
                           valid_times=tuple(t.tz_localize("UTC").to_pydatetime()
                                             for t in pd.DatetimeIndex(forecast["time"].values)),
                           thresholds=thresholds, members=entry.pop("members", 8 if thresholds else None), **entry)
    write_manifest(folder, [product], source="page tests")
    return product
