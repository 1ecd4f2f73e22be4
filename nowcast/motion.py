"""Lucas–Kanade motion of radar rain, as pysteps computes it.

One implementation shared by the extrapolation baseline and the GAN's advection:
motion is estimated on the dBR-transformed frames (the way pysteps' own examples do it),
with features tracked at full resolution, ``LK_BUFFER_MASK`` pixels away from no-data
and the domain edge. Motion fields follow pysteps' convention: ``(2, y, x)``, ``[0]`` the
x and ``[1]`` the y displacement, in pixels per time step.
"""

from __future__ import annotations

import numpy as np

# pixels around no-data and the domain edge where no features are tracked
LK_BUFFER_MASK = 10
# pysteps' dense_lucaskanade defaults
_DECLUSTER_SCALE = 20
_IDW_DIST_OFFSET = 0.5


def to_dbr(rate: np.ndarray, threshold_mmh: float = 0.1) -> np.ndarray:
    """Rain rate (mm/h) in dBR for tracking: dry and no-data 5 dB below the threshold's dBR."""
    dry = 10.0 * np.log10(threshold_mmh) - 5.0
    with np.errstate(divide="ignore", invalid="ignore"):
        dbr = np.where(rate >= threshold_mmh, 10.0 * np.log10(np.maximum(rate, threshold_mmh)), dry)
    return np.where(np.isfinite(rate), dbr, dry).astype(np.float64)


def lucas_kanade(past: np.ndarray, threshold_mmh: float = 0.1) -> np.ndarray:
    """pysteps' dense Lucas–Kanade motion of (time, y, x) mm/h frames: (2, y, x) pixels per step."""
    from pysteps import motion

    dbr = to_dbr(past, threshold_mmh)
    return motion.get_method("LK")(dbr, fd_kwargs={"buffer_mask": LK_BUFFER_MASK}, verbose=False)


def lucas_kanade_coarse(past: np.ndarray, stride: int = 4, threshold_mmh: float = 0.1) -> np.ndarray:
    """:func:`lucas_kanade` with the dense field interpolated on a grid ``stride`` times coarser.

    Features are found and tracked on the full-resolution frames exactly as in
    :func:`lucas_kanade`; only the dense field is interpolated from the tracked vectors at
    every ``stride``-th pixel and then upsampled bilinearly. That interpolation is what
    makes pysteps' dense Lucas–Kanade slow (inverse-distance weights of 20 vectors at every
    pixel), and the field is smooth, so the result matches :func:`lucas_kanade` to about
    0.01 px/step. Returns float32 (2, y, x); frames with nothing to track give zero motion.
    """
    from pysteps.motion.lucaskanade import dense_lucaskanade
    from pysteps.utils.cleansing import decluster
    from pysteps.utils.interpolate import idwinterp2d

    dbr = to_dbr(past, threshold_mmh)
    ny, nx = dbr.shape[1:]
    try:
        xy, uv = dense_lucaskanade(dbr, fd_kwargs={"buffer_mask": LK_BUFFER_MASK}, dense=False, verbose=False)
        if xy.shape[0] > 0:
            xy, uv = decluster(xy, uv, _DECLUSTER_SCALE, 1, False)
    except Exception:  # LK fails on fields with nothing to track; no motion is the honest answer
        xy = np.empty((0, 2))
    if xy.shape[0] == 0:
        return np.zeros((2, ny, nx), dtype=np.float32)
    stride = max(int(stride), 1)
    xs = np.arange(0, nx, stride, dtype=np.float64)
    ys = np.arange(0, ny, stride, dtype=np.float64)
    # pysteps divides distances by the grid spacing before adding the offset; scaling the
    # offset keeps the weights of the full-resolution field at the coarse points
    coarse = idwinterp2d(xy, uv, xs, ys, dist_offset=_IDW_DIST_OFFSET / stride)
    coarse = np.asarray(coarse, dtype=np.float32).reshape(2, len(ys), len(xs))
    if stride == 1:
        return np.nan_to_num(coarse)
    return np.nan_to_num(_upsample_coarse(coarse, stride, ny, nx))


def _upsample_coarse(coarse: np.ndarray, stride: int, ny: int, nx: int) -> np.ndarray:
    """Bilinear values between coarse point (i, j), which sits on pixel (i·stride, j·stride)."""
    import torch
    import torch.nn.functional as F

    n_y, n_x = coarse.shape[1:]
    grid_y = torch.arange(ny, dtype=torch.float32) / stride / max(n_y - 1, 1) * 2 - 1
    grid_x = torch.arange(nx, dtype=torch.float32) / stride / max(n_x - 1, 1) * 2 - 1
    gy, gx = torch.meshgrid(grid_y, grid_x, indexing="ij")
    up = F.grid_sample(torch.from_numpy(coarse)[None], torch.stack([gx, gy], dim=-1)[None],
                       mode="bilinear", padding_mode="border", align_corners=True)
    return up[0].numpy().astype(np.float32)
