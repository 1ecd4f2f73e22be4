"""The product folder of a live feed: what ``nowcast watch`` writes and the service reads.

A folder holds one CF-netCDF file per forecast, named after its reference time
(:func:`product_file_name`; written by :func:`write_product`, read by :func:`read_product`),
and ``manifest.json``, the list of products that are
complete, oldest first. A product file is written under a temporary name and renamed
before the manifest names it, and the manifest itself is replaced atomically, so a
reader that goes by the manifest never sees a partial file; files the manifest does
not name (a writer killed between the two renames) are left for the writer to tidy.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.ensemble import MAX_NEIGHBOURHOOD_KM_PER_MINUTE
from nowcast.errors import InputError, UnreadableFileError
from nowcast.files import write_text_atomically
from nowcast.io.locks import NETCDF_LOCK
from nowcast.io.netcdf import (
    PROBABILITY_NAME,
    PRODUCT_VARIABLES,
    dataset_to_sequence,
    products_to_dataset,
    sequence_to_dataset,
    write_dataset,
)
from nowcast.products import MIN_MEMBERS_ATTR, PROCESSED_NEIGHBOURHOOD_ATTR
from nowcast.sequence import DIMS, VARIABLE_NAME

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
#: the probabilities of the rate above a threshold at some lead of the forecast
MAX_PROBABILITY_NAME = PRODUCT_VARIABLES["max_probabilities"]
#: the probabilities of the rain over the forecast period above a threshold (mm), on ``accumulation_threshold``
ACCUMULATION_PROBABILITY_NAME = PRODUCT_VARIABLES["accumulation_probabilities"]
PRODUCT_PREFIX = "nowcast_"
PRODUCT_SUFFIX = ".nc"
_PRODUCT_RE = re.compile(r"^nowcast_\d{8}T\d{4}Z\.nc$")
#: the input frames a product was made from, beside the forecast, on their own time axis
OBSERVED_NAME = "observed_precipitation_rate"
OBSERVATION_TIME = "observation_time"
PM_MEAN_NAME = PRODUCT_VARIABLES["pm_mean"]
#: products a feed does not publish but a product file may hold (the quantiles of the rain over the period): left
#: unread
_IGNORED_PRODUCTS = (PRODUCT_VARIABLES["accumulation_quantiles"],)


@dataclass(frozen=True)
class ProductEntry:
    """One complete product of the folder, as the manifest lists it (times in UTC)."""

    file: str
    reference_time: datetime
    valid_times: tuple[datetime, ...]
    model: str
    fallback: bool = False
    fallback_reason: str = ""
    members: int | None = None
    thresholds: tuple[float, ...] = ()
    missing_frames: int = 0
    written_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    frame_arrived_at: datetime | None = None

    def __post_init__(self) -> None:
        if not _PRODUCT_RE.match(self.file):
            raise InputError(f"product file name {self.file!r} is not of the form nowcast_YYYYMMDDTHHMMZ.nc")

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        for key in ("reference_time", "written_at", "frame_arrived_at"):
            record[key] = _iso(record[key])
        record["valid_times"] = [_iso(t) for t in self.valid_times]
        record["thresholds"] = list(self.thresholds)
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ProductEntry:
        try:
            return cls(
                file=str(record["file"]),
                reference_time=_parse(record["reference_time"]),
                valid_times=tuple(_parse(t) for t in record["valid_times"]),
                model=str(record["model"]),
                fallback=bool(record.get("fallback", False)),
                fallback_reason=str(record.get("fallback_reason", "")),
                members=None if record.get("members") is None else int(record["members"]),
                thresholds=tuple(float(t) for t in record.get("thresholds", ())),
                missing_frames=int(record.get("missing_frames", 0)),
                written_at=_parse(record["written_at"]),
                frame_arrived_at=None if record.get("frame_arrived_at") is None
                else _parse(record["frame_arrived_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnreadableFileError(f"manifest entry {record!r:.200}: {exc}") from exc


def product_file_name(reference_time: datetime) -> str:
    """The file name of the product made at ``reference_time`` (UTC, to the minute)."""
    return f"{PRODUCT_PREFIX}{_utc(reference_time):%Y%m%dT%H%MZ}{PRODUCT_SUFFIX}"


def read_manifest(folder: str | os.PathLike[str]) -> list[ProductEntry]:
    """The products of ``folder``, oldest reference time first (none where there is no manifest yet)."""
    document = _manifest_document(folder)
    entries = [ProductEntry.from_json(record) for record in document.get("products", [])]
    return sorted(entries, key=lambda e: e.reference_time)


def read_manifest_extras(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``extra`` keys :func:`write_manifest` put beside the product list ({} where there is no manifest)."""
    document = _manifest_document(folder)
    return {k: v for k, v in document.items() if k not in ("schema", "updated", "products")}


def _manifest_document(folder: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(document, dict) or document.get("schema") != MANIFEST_SCHEMA:
        raise UnreadableFileError(f"{path}: not a schema-{MANIFEST_SCHEMA} product manifest")
    return document


def orphan_files(folder: str | os.PathLike[str], entries: Iterable[ProductEntry]) -> list[Path]:
    """Files of ``folder`` a killed writer left: temporary files of products and of the manifest, and
    product files the manifest (``entries``) does not name. Other files are not the feed's and are left."""
    named = {entry.file for entry in entries}
    found = []
    for path in Path(folder).iterdir():
        name = path.name
        temporary = name.startswith((f".{PRODUCT_PREFIX}", f".{MANIFEST}."))
        unlisted = bool(_PRODUCT_RE.match(name)) and name not in named
        if (temporary or unlisted) and path.is_file():
            found.append(path)
    return sorted(found)


def write_manifest(folder: str | os.PathLike[str], entries: Iterable[ProductEntry], **extra: Any) -> None:
    """Replace the manifest of ``folder`` atomically; ``extra`` keys (e.g. ``source``) go beside the list."""
    folder = Path(folder)
    ordered = sorted(entries, key=lambda e: e.reference_time)
    document = {**extra, "schema": MANIFEST_SCHEMA, "updated": _iso(datetime.now(UTC)),
                "products": [e.to_json() for e in ordered]}
    write_text_atomically(folder / MANIFEST, json.dumps(document, indent=1))


def latest_product(folder: str | os.PathLike[str]) -> ProductEntry | None:
    """The product with the newest reference time, None before the first one."""
    entries = read_manifest(folder)
    return entries[-1] if entries else None


def product_path(folder: str | os.PathLike[str], entry: ProductEntry) -> Path:
    """Where ``entry``'s file lies (its name was checked to be a plain product name)."""
    return Path(folder) / entry.file


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else _utc(moment).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return _utc(datetime.fromisoformat(str(text).replace("Z", "+00:00")))


@dataclass(frozen=True)
class ProductFields:
    """One product file, read back: fields in mm/h in the sequence form, georeferencing in their ``attrs``.

    ``forecast`` is the deterministic forecast (time, y, x): the model's own, or an ensemble's
    probability-matched mean; ``probabilities`` (threshold, time, y, x) exist for ensembles, with
    ``max_probabilities`` (threshold, y, x: the rate above the threshold at some lead) and
    ``accumulation_probabilities`` (accumulation_threshold, y, x: the rain over the forecast period above the
    threshold, in mm) where the writer made them, and ``members`` (member, time, y, x) where the writer kept
    them. Files written before a product existed read with it None.
    """

    observed: xr.DataArray
    forecast: xr.DataArray
    probabilities: xr.DataArray | None
    reference_time: pd.Timestamp
    attrs: dict[str, Any]
    members: xr.DataArray | None = None
    max_probabilities: xr.DataArray | None = None
    accumulation_probabilities: xr.DataArray | None = None


def write_product(
    path: str | os.PathLike[str],
    observed: xr.DataArray,
    forecast: xr.DataArray,
    *,
    probabilities: xr.DataArray | None = None,
    max_probabilities: xr.DataArray | None = None,
    accumulation_probabilities: xr.DataArray | None = None,
    members: xr.DataArray | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write one product atomically: the observed frames (time, y, x), the forecast (time, y, x) from the last
    observed frame and, for ensembles, exceedance probabilities (threshold, time, y, x) with a ``threshold``
    coordinate in mm/h and, where given, the probabilities of the rate above them at some lead (threshold, y, x;
    :data:`nowcast.products.PRODUCTS`' ``max_probabilities``), the probabilities of the rain over the forecast period
    above thresholds in mm (accumulation_threshold, y, x; ``accumulation_probabilities``, with an
    ``accumulation_threshold`` coordinate in mm) and the members themselves (member, time, y, x; on a CF
    ``realization`` axis, as IMPROVER writes them). ``attrs`` go into the file's global attributes (model,
    fallback, ...)."""
    reference = observed["time"].values[-1]
    if all(field is None for field in (probabilities, max_probabilities, accumulation_probabilities, members)):
        ds = sequence_to_dataset(forecast, forecast_reference_time=reference, attrs=attrs)
    else:
        products = {"pm_mean": forecast.transpose(*DIMS)}
        if probabilities is not None:
            products["probabilities"] = probabilities.transpose("threshold", *DIMS)
        if max_probabilities is not None:
            products["max_probabilities"] = max_probabilities.transpose("threshold", "y", "x")
        if accumulation_probabilities is not None:
            products["accumulation_probabilities"] = accumulation_probabilities.transpose("accumulation_threshold",
                                                                                          "y", "x")
        if members is not None:
            products["members"] = members.transpose("member", *DIMS)
        ds = products_to_dataset(xr.Dataset(products, attrs=forecast.attrs), forecast_reference_time=reference,
                                 attrs=attrs)
    observed_values = observed.transpose(*DIMS).values.astype(np.float32)
    rate_attrs = {k: v for k, v in ds[_forecast_name(ds)].attrs.items() if k != "coordinates"}
    ds[OBSERVED_NAME] = xr.Variable((OBSERVATION_TIME, "y", "x"), observed_values,
                                    {**rate_attrs, "long_name": "observed rain rate the forecast started from"})
    ds = ds.assign_coords({OBSERVATION_TIME: (OBSERVATION_TIME, observed["time"].values,
                                              {"long_name": "time of the observed frames", "axis": "T"})})
    return write_dataset(ds, path)


def read_product(path: str | os.PathLike[str]) -> ProductFields:
    """The fields of a product file written by :func:`write_product`."""
    path = Path(path)
    try:
        with NETCDF_LOCK, xr.open_dataset(path, engine="netcdf4") as ds:
            ds.load()
    except (OSError, ValueError) as exc:
        raise UnreadableFileError(f"{path}: cannot read the product ({exc})") from exc
    if OBSERVED_NAME not in ds or ("forecast_reference_time" not in ds.coords):
        raise UnreadableFileError(f"{path}: not a nowcast product (no {OBSERVED_NAME} or reference time)")
    source = str(path)
    forecast = dataset_to_sequence(ds.drop_vars([OBSERVED_NAME, PROBABILITY_NAME, MAX_PROBABILITY_NAME,
                                                 ACCUMULATION_PROBABILITY_NAME, *_IGNORED_PRODUCTS], errors="ignore")
                                   .drop_dims("realization", errors="ignore"),
                                   variable=_forecast_name(ds), source=source)
    observed_ds = ds[[OBSERVED_NAME]].rename({OBSERVATION_TIME: "time"}).drop_vars(
        ["forecast_reference_time", "forecast_period"], errors="ignore")
    observed = dataset_to_sequence(observed_ds.assign(crs=ds["crs"]) if "crs" in ds else observed_ds,
                                   variable=OBSERVED_NAME, source=source)
    probabilities = None
    if PROBABILITY_NAME in ds:
        variable = ds[PROBABILITY_NAME]
        probabilities = variable.transpose("threshold", *DIMS).astype(np.float32)
        # the forecast's grid and times, and what the probabilities are: neighbourhood-processed or not
        probabilities.attrs = {**forecast.attrs,
                               PROCESSED_NEIGHBOURHOOD_ATTR: _neighbourhood_of(variable, path)}
        if MIN_MEMBERS_ATTR in variable.attrs:
            probabilities.attrs[MIN_MEMBERS_ATTR] = _minimum_members_of(variable, path)
    members = None
    if "realization" in ds.dims and VARIABLE_NAME in ds and "realization" in ds[VARIABLE_NAME].dims:
        members = ds[VARIABLE_NAME].rename(realization="member").transpose("member", *DIMS).astype(np.float32)
        members.attrs = dict(forecast.attrs)
    return ProductFields(observed=observed, forecast=forecast, probabilities=probabilities,
                         reference_time=pd.Timestamp(ds["forecast_reference_time"].values),
                         attrs=dict(ds.attrs), members=members,
                         max_probabilities=_period_field(ds, MAX_PROBABILITY_NAME, "threshold", forecast, path),
                         accumulation_probabilities=_period_field(ds, ACCUMULATION_PROBABILITY_NAME,
                                                                  "accumulation_threshold", forecast, path))


def _period_field(ds: xr.Dataset, name: str, axis: str, forecast: xr.DataArray, path: Path) -> xr.DataArray | None:
    """A product of the whole forecast period, (``axis``, y, x), with the forecast's grid in its attributes (and its
    minimum of members with data, checked, where it says one); None where the file has none (written before it)."""
    if name not in ds:
        return None
    variable = ds[name]
    if set(variable.dims) != {axis, "y", "x"}:
        raise UnreadableFileError(f"{path}: {name} is on {', '.join(map(str, variable.dims))}, not {axis}, y and x")
    field = variable.transpose(axis, "y", "x").astype(np.float32)
    field.attrs = dict(forecast.attrs)
    if MIN_MEMBERS_ATTR in variable.attrs:
        field.attrs[MIN_MEMBERS_ATTR] = _minimum_members_of(variable, path)
    return field


def _neighbourhood_of(variable: xr.DataArray, path: Path) -> float:
    """The neighbourhood (km per minute of lead) a product says its probabilities have, checked."""
    value = variable.attrs.get(PROCESSED_NEIGHBOURHOOD_ATTR, 0.0)
    try:
        neighbourhood = float(value)
    except (TypeError, ValueError):
        neighbourhood = float("nan")
    if not 0.0 <= neighbourhood <= MAX_NEIGHBOURHOOD_KM_PER_MINUTE:
        raise UnreadableFileError(f"{path}: {PROCESSED_NEIGHBOURHOOD_ATTR} {value!r} is no neighbourhood in [0, "
                                  f"{MAX_NEIGHBOURHOOD_KM_PER_MINUTE:g}] km per minute")
    return neighbourhood


def _minimum_members_of(variable: xr.DataArray, path: Path) -> int:
    """How many members a product says its probabilities need at a pixel, checked."""
    value = variable.attrs[MIN_MEMBERS_ATTR]
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise UnreadableFileError(f"{path}: {MIN_MEMBERS_ATTR} {value!r} is no positive whole number of members")
    return int(value)


def _forecast_name(ds: xr.Dataset) -> str:
    return PM_MEAN_NAME if PM_MEAN_NAME in ds else VARIABLE_NAME
