"""Between rain rate in mm/h and the model's normalised space.

The model sees rain in decibels (dBR = 10·log10(R)), shifted and scaled so that dry
pixels sit at 0 and 1 mm/h at 1. Rates below the rain/no-rain threshold are all
mapped to one "dry" value, so the transform is exactly invertible above the threshold
and maps everything below it to 0 mm/h. NaN (no data) stays NaN both ways.

Works on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

ArrayT = TypeVar("ArrayT")
#: How far below ``threshold_z`` a normalised value still decodes as (threshold) rain:
#: a few float32 rounding steps of the encoding, a rate change of about 1e-4 relative.
Z_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Normalisation:
    """dBR normalisation: ``z = (10·log10(R) - dry_dbr) / scale_db`` above threshold.

    ``threshold_mmh``: rain/no-rain threshold; rates below it are dry.
    ``dry_dbr``: the dBR value given to dry pixels (below the threshold's dBR, so that
    dry and light rain stay apart).
    ``scale_db``: dB per unit of normalised value.
    """

    threshold_mmh: float = 0.1
    dry_dbr: float = -15.0
    scale_db: float = 15.0

    def __post_init__(self) -> None:
        if self.threshold_mmh <= 0:
            raise ValueError("threshold_mmh must be positive")
        if self.scale_db <= 0:
            raise ValueError("scale_db must be positive")
        if self.dry_dbr >= self.threshold_dbr:
            raise ValueError("dry_dbr must lie below the threshold's dBR")

    @property
    def threshold_dbr(self) -> float:
        return 10.0 * math.log10(self.threshold_mmh)

    @property
    def threshold_z(self) -> float:
        """The normalised value of the threshold: outputs below it decode to dry."""
        return (self.threshold_dbr - self.dry_dbr) / self.scale_db

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalisation:
        unknown = set(data) - {"threshold_mmh", "dry_dbr", "scale_db"}
        if unknown:
            raise ValueError(f"unknown normalisation keys: {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in data.items()})

    def encode(self, rate: ArrayT) -> ArrayT:
        """mm/h -> normalised. NaN stays NaN; below threshold -> 0."""
        if _is_torch(rate):
            import torch

            # wet rates are never clamped, NaN stays NaN through the clamp and the log: one where
            z = (10.0 * torch.log10(torch.clamp(rate, min=self.threshold_mmh)) - self.dry_dbr) / self.scale_db
            return torch.where((rate >= self.threshold_mmh) | torch.isnan(rate), z, 0.0)
        r = np.asarray(rate)
        with np.errstate(invalid="ignore", divide="ignore"):
            wet = r >= self.threshold_mmh
            z = np.where(wet, (10.0 * np.log10(np.where(wet, r, 1.0)) - self.dry_dbr) / self.scale_db, 0.0)
        z = np.where(np.isnan(r), np.nan, z)
        return z.astype(r.dtype if np.issubdtype(r.dtype, np.floating) else np.float32)

    def decode(self, z: ArrayT) -> ArrayT:
        """normalised -> mm/h, never negative. Below the threshold's z -> 0.

        Decoded rates are 0 or at least the threshold. A rate at the threshold encoded
        in float32 can round to a z a hair below ``threshold_z``; z within
        ``Z_TOLERANCE`` of it therefore decodes to the threshold, not to dry.
        """
        wet_from = self.threshold_z - Z_TOLERANCE
        if _is_torch(z):
            import torch

            rate = torch.clamp(torch.pow(10.0, (z * self.scale_db + self.dry_dbr) / 10.0), min=self.threshold_mmh)
            return torch.where((z >= wet_from) | torch.isnan(z), rate, 0.0)  # NaN stays NaN through pow and clamp
        a = np.asarray(z)
        with np.errstate(invalid="ignore", over="ignore"):
            rate = np.power(10.0, (a * self.scale_db + self.dry_dbr) / 10.0)
            rate = np.where(a >= wet_from, np.maximum(rate, self.threshold_mmh), 0.0)
        rate = np.where(np.isnan(a), np.nan, rate)
        return rate.astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float32)


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


def to_mmh(values: np.ndarray, units: str, *, accumulation_minutes: float | None = None) -> np.ndarray:
    """Convert rain in ``units`` to rain rate in mm/h (NaN stays NaN).

    Known units: rates (``mm/h``, ``mm h-1``, ``mm hr-1``, ``mm/hr``, ``kg m-2 h-1``,
    ``mm s-1``, ``kg m-2 s-1``, ``m s-1``), accumulations over the time step (``mm``,
    ``kg m-2``; needs ``accumulation_minutes``) and reflectivity (``dBZ``, via the
    Marshall–Palmer relation Z = 200·R^1.6).
    """
    from nowcast.errors import UnitsError

    key = " ".join(units.strip().replace("**", "").replace("^", "").split()).lower()
    data = np.asarray(values, dtype=np.float32)
    if key in _RATE_FACTORS:
        return (data * _RATE_FACTORS[key]).astype(np.float32)
    if key in _ACCUMULATION_UNITS:
        if not accumulation_minutes or accumulation_minutes <= 0:
            raise UnitsError(
                f"units {units!r} are an accumulation: the accumulation period (time step) "
                "is needed to turn them into mm/h"
            )
        return (data * (60.0 / accumulation_minutes)).astype(np.float32)
    if key in ("dbz", "dbz "):
        return dbz_to_mmh(data)
    raise UnitsError(
        f"unknown units {units!r}: expected a rain rate (mm/h), an accumulation (mm) or dBZ"
    )


def dbz_to_mmh(dbz: np.ndarray, a: float = 200.0, b: float = 1.6) -> np.ndarray:
    """Reflectivity (dBZ) to rain rate (mm/h) with Z = a·R^b."""
    z = np.power(10.0, np.asarray(dbz, dtype=np.float64) / 10.0)
    return np.power(z / a, 1.0 / b).astype(np.float32)


_RATE_FACTORS = {
    "mm/h": 1.0,
    "mm h-1": 1.0,
    "mm hr-1": 1.0,
    "mm/hr": 1.0,
    "mm hour-1": 1.0,
    "mm/hour": 1.0,
    "kg m-2 h-1": 1.0,
    "mm s-1": 3600.0,
    "mm/s": 3600.0,
    "kg m-2 s-1": 3600.0,
    "m s-1": 3.6e6,
}
_ACCUMULATION_UNITS = {"mm", "kg m-2", "kg/m2", "kg m-2 "}
