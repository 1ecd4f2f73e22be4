"""Synthetic rain: moving, growing and decaying cells on a correlated background.

For tests and demos that need no radar files. Each field is a sum of
(1) a band-limited random field with a power-law spectrum (the way real rain has
structure on every scale), thresholded to leave dry areas, and (2) Gaussian convective
cells with their own life cycle (growth then decay); everything drifts with a uniform
wind plus a small rotation, so a motion-based method has real motion to find.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from nowcast.sequence import make_sequence


@dataclass(frozen=True)
class SyntheticRain:
    """Parameters of the generator (grid in pixels, speeds in pixels per step)."""

    ny: int = 64
    nx: int = 64
    frames: int = 16
    step_minutes: int = 5
    velocity: tuple[float, float] = (1.0, 1.5)  # (dy, dx) pixels per step
    n_cells: int = 6
    spectral_slope: float = 3.0
    wet_fraction: float = 0.35
    no_data_border: int = 0


def synthetic_sequence(params: SyntheticRain | None = None, *, seed: int = 0,
                       start: str = "2024-06-01T12:00") -> xr.DataArray:
    """A synthetic radar sequence in the product's form (mm/h, NaN outside 'range')."""
    p = params or SyntheticRain()
    rng = np.random.default_rng(seed)
    pad = int(np.ceil(max(abs(p.velocity[0]), abs(p.velocity[1])) * p.frames)) + 8
    big_y, big_x = p.ny + 2 * pad, p.nx + 2 * pad
    background = _power_law_field(big_y, big_x, p.spectral_slope, rng)
    cut = np.quantile(background, 1.0 - p.wet_fraction)
    base_dbr = np.where(background > cut, np.minimum(-3.0 + (background - cut) * 6.0, 12.0), -np.inf)

    cells = [
        {
            "y": rng.uniform(pad, pad + p.ny),
            "x": rng.uniform(pad, pad + p.nx),
            "sigma": rng.uniform(2.0, 6.0),
            "peak_dbr": rng.uniform(8.0, 20.0),
            "birth": rng.uniform(-p.frames / 2, p.frames / 2),
            "life": rng.uniform(p.frames / 2, 2 * p.frames),
        }
        for _ in range(p.n_cells)
    ]
    yy, xx = np.mgrid[0:p.ny, 0:p.nx].astype(np.float64)
    frames = np.empty((p.frames, p.ny, p.nx), dtype=np.float32)
    for t in range(p.frames):
        oy, ox = pad - p.velocity[0] * t, pad - p.velocity[1] * t
        iy, ix = round(oy), round(ox)
        dbr = base_dbr[iy:iy + p.ny, ix:ix + p.nx].copy()
        for c in cells:
            age = (t - c["birth"]) / c["life"]
            if not 0.0 <= age <= 1.0:
                continue
            strength = np.sin(np.pi * age)  # grows, peaks, decays
            cy, cx = c["y"] - pad + p.velocity[0] * t, c["x"] - pad + p.velocity[1] * t
            g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * c["sigma"] ** 2))
            cell_dbr = np.where(g > 0.05, c["peak_dbr"] * strength * g + 10 * np.log10(0.5), -np.inf)
            dbr = np.maximum(dbr, cell_dbr)
        rate = np.where(np.isfinite(dbr), 10.0 ** (dbr / 10.0), 0.0)
        frames[t] = np.where(rate >= 0.1, rate, 0.0)
    if p.no_data_border:
        b = p.no_data_border
        mask = np.zeros((p.ny, p.nx), dtype=bool)
        mask[:b, :] = mask[-b:, :] = mask[:, :b] = mask[:, -b:] = True
        frames[:, mask] = np.nan
    times = pd.date_range(start, periods=p.frames, freq=f"{p.step_minutes}min")
    return make_sequence(frames, times, projection="", xpixelsize=1000.0, ypixelsize=1000.0,
                         attrs={"source": f"nowcast.synthetic seed={seed}"})


def _power_law_field(ny: int, nx: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal((ny, nx))
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k = np.sqrt(ky**2 + kx**2)
    k[0, 0] = 1.0
    amplitude = k ** (-slope / 2.0)
    amplitude[0, 0] = 0.0
    field = np.fft.irfft2(np.fft.rfft2(noise) * amplitude, s=(ny, nx))
    return (field - field.mean()) / field.std()
