"""Motion and advection for conditioning the GAN on extrapolation.

Motion comes from pysteps' Lucas–Kanade, as in the extrapolation baseline, but on
frames downsampled by a small factor: motion fields are smooth, and this keeps the GAN
faster than the baseline it refines. Advection is a backward semi-Lagrangian scheme in
torch (``grid_sample``), so it runs batched on the model's device.

Motion fields follow pysteps' convention: ``(2, y, x)`` with ``[0]`` the x and ``[1]``
the y displacement, in pixels per time step.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MOTION_METHODS = ("downsampled_frames", "full_resolution")


def estimate_motion(past: np.ndarray, downsample: int = 4, threshold_mmh: float = 0.1,
                    method: str = "downsampled_frames") -> np.ndarray:
    """Lucas–Kanade motion of (time, y, x) mm/h frames, in full-resolution pixels per step.

    ``method``:
    - ``"full_resolution"``: features are found and tracked on the full-resolution frames
      exactly as the extrapolation baseline does (pysteps, ``buffer_mask`` 10); only the
      dense field is interpolated from the tracked vectors on a grid ``downsample`` times
      coarser and then upsampled. That interpolation is what makes pysteps' dense
      Lucas–Kanade slow (inverse-distance weights of 20 vectors at every pixel), and its
      field is smooth, so the result matches the baseline's motion to about 0.01 px/step.
    - ``"downsampled_frames"``: everything runs on frames averaged over ``downsample``²
      blocks (the first shipped models; faster, but its motion differs more).

    Returns float32 (2, y, x). Frames without enough rain to track give zero motion.
    """
    if method not in MOTION_METHODS:
        raise ValueError(f"unknown motion method {method!r}; valid: {', '.join(MOTION_METHODS)}")
    if method == "full_resolution":
        return _motion_full_resolution(past, downsample, threshold_mmh)
    return _motion_downsampled_frames(past, downsample, threshold_mmh)


def _motion_downsampled_frames(past: np.ndarray, downsample: int, threshold_mmh: float) -> np.ndarray:
    from pysteps import motion

    from nowcast.forecasters.extrapolation import _to_dbr

    frames = np.where(np.isfinite(past), past, 0.0).astype(np.float32)
    n_t, ny, nx = frames.shape
    if downsample > 1:
        cy, cx = ny // downsample, nx // downsample
        frames = frames[:, : cy * downsample, : cx * downsample]
        frames = frames.reshape(n_t, cy, downsample, cx, downsample).mean(axis=(2, 4))
    dbr = _to_dbr(frames, threshold_mmh)
    try:
        velocity = motion.get_method("LK")(dbr, fd_kwargs={"buffer_mask": 5}, verbose=False)
    except Exception:  # LK fails on fields with nothing to track; no motion is the honest answer
        velocity = np.zeros((2, *dbr.shape[1:]))
    velocity = np.nan_to_num(np.asarray(velocity, dtype=np.float32)) * downsample
    if downsample > 1:
        up = F.interpolate(torch.from_numpy(velocity)[None], size=(ny, nx), mode="bilinear",
                           align_corners=False)
        velocity = up[0].numpy()
    return velocity.astype(np.float32)


# pysteps' dense_lucaskanade defaults, which the extrapolation baseline uses
_DECLUSTER_SCALE = 20
_IDW_DIST_OFFSET = 0.5


def _motion_full_resolution(past: np.ndarray, stride: int, threshold_mmh: float) -> np.ndarray:
    from pysteps.motion.lucaskanade import dense_lucaskanade
    from pysteps.utils.cleansing import decluster
    from pysteps.utils.interpolate import idwinterp2d

    from nowcast.forecasters.extrapolation import LK_BUFFER_MASK, _to_dbr

    dbr = _to_dbr(past, threshold_mmh)
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
    # coarse point (i, j) sits on full-resolution pixel (i·stride, j·stride)
    grid_y = torch.arange(ny, dtype=torch.float32) / stride / max(len(ys) - 1, 1) * 2 - 1
    grid_x = torch.arange(nx, dtype=torch.float32) / stride / max(len(xs) - 1, 1) * 2 - 1
    gy, gx = torch.meshgrid(grid_y, grid_x, indexing="ij")
    up = F.grid_sample(torch.from_numpy(coarse)[None], torch.stack([gx, gy], dim=-1)[None],
                       mode="bilinear", padding_mode="border", align_corners=True)
    return np.nan_to_num(up[0].numpy()).astype(np.float32)


def advect(frame: torch.Tensor, velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """Advect ``frame`` (batch, y, x) along ``velocity`` (batch, 2, y, x) for ``steps`` steps.

    Backward semi-Lagrangian: the value at x after t steps is the frame's value at the
    end of the back-trajectory from x, traced one step at a time through the motion
    field. Returns (batch, steps, y, x); what comes from outside the grid is 0.
    """
    batch, ny, nx = frame.shape
    dtype = frame.dtype
    ys = torch.arange(ny, device=frame.device, dtype=dtype)
    xs = torch.arange(nx, device=frame.device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([grid_x, grid_y])[None].expand(batch, -1, -1, -1)  # (b, 2, y, x) as (x, y)
    scale = torch.tensor([2.0 / max(nx - 1, 1), 2.0 / max(ny - 1, 1)], device=frame.device, dtype=dtype)
    velocity = velocity.to(dtype)

    def sample(field: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        norm = (coords * scale[None, :, None, None] - 1.0).permute(0, 2, 3, 1)
        return F.grid_sample(field, norm, mode="bilinear", padding_mode="zeros", align_corners=True)

    displacement = torch.zeros_like(base)
    image = frame[:, None]
    out = []
    for _ in range(steps):
        # midpoint rule: the velocity half a step back along the trajectory
        here = sample(velocity, base + displacement)
        displacement = displacement - sample(velocity, base + displacement - 0.5 * here)
        out.append(sample(image, base + displacement)[:, 0])
    return torch.stack(out, dim=1)

