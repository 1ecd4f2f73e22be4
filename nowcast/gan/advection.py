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


def pixel_grid(batch: int, ny: int, nx: int, *, origin: tuple[int, int] = (0, 0),
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel coordinates (batch, 2, ny, nx) as (x, y), offset by ``origin`` = (y0, x0)."""
    ys = torch.arange(ny, device=device, dtype=dtype) + origin[0]
    xs = torch.arange(nx, device=device, dtype=dtype) + origin[1]
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None].expand(batch, -1, -1, -1)


def sample(field: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``field`` (batch, channel, Y, X) at pixel ``coords`` (batch, 2, y, x) as (x, y).

    What lies outside the field is 0.
    """
    ny, nx = field.shape[-2:]
    scale = torch.tensor([2.0 / max(nx - 1, 1), 2.0 / max(ny - 1, 1)], device=field.device, dtype=coords.dtype)
    norm = (coords * scale[None, :, None, None] - 1.0).permute(0, 2, 3, 1)
    return F.grid_sample(field, norm, mode="bilinear", padding_mode="zeros", align_corners=True)


def trajectories(velocity: torch.Tensor, steps: int, points: torch.Tensor | None = None) -> torch.Tensor:
    """Back-trajectories through ``velocity`` (batch, 2, Y, X): (batch, steps, 2, y, x) displacements.

    Entry ``[:, n]`` is where the rain arriving at each point after n + 1 steps comes from,
    relative to the point, in pixels (x, y). ``points`` (batch, 2, y, x): pixel coordinates
    on the velocity's grid to start from (default: every pixel of it), so that a patch's
    trajectories can run through the motion of the whole grid. Backward semi-Lagrangian
    with the midpoint rule, traced one step at a time.
    """
    velocity = velocity.to(points.dtype if points is not None else velocity.dtype)
    if points is None:
        batch, _, ny, nx = velocity.shape
        points = pixel_grid(batch, ny, nx, device=velocity.device, dtype=velocity.dtype)
    displacement = torch.zeros_like(points)
    out = []
    for _ in range(steps):
        # midpoint rule: the velocity half a step back along the trajectory
        here = sample(velocity, points + displacement)
        displacement = displacement - sample(velocity, points + displacement - 0.5 * here)
        out.append(displacement)
    return torch.stack(out, dim=1)


def advect(frame: torch.Tensor, velocity: torch.Tensor, steps: int) -> torch.Tensor:
    """Advect ``frame`` (batch, y, x) along ``velocity`` (batch, 2, y, x) for ``steps`` steps.

    Backward semi-Lagrangian: the value at x after t steps is the frame's value at the
    end of the back-trajectory from x (see :func:`trajectories`), one interpolation per
    lead time. Returns (batch, steps, y, x); what comes from outside the grid is 0.
    """
    batch, ny, nx = frame.shape
    points = pixel_grid(batch, ny, nx, device=frame.device, dtype=frame.dtype)
    return along(frame, trajectories(velocity.to(frame.dtype), steps, points), points)


def along(frame: torch.Tensor, displacement: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``frame`` (batch, Y, X) at the ends of back-trajectories: (batch, steps, y, x).

    ``displacement`` (batch, steps, 2, y, x) from :func:`trajectories` started at ``points``.
    """
    image = frame[:, None]
    return torch.stack([sample(image, points + displacement[:, n])[:, 0] for n in range(displacement.shape[1])],
                       dim=1)


def lagrangian_past(past: torch.Tensor, displacement: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Past frames (batch, t, Y, X) moved along the motion to where their rain is at the last one.

    Frame t-1-j, advected j steps, lines up with the last frame: the returned (batch, t, y, x)
    holds, at each point, the rain of the same air parcel in every past frame (the
    Lagrangian frame of reference, as in L-CNN, Ritvanen et al. 2023). The last frame is
    the last past frame itself at ``points``. ``displacement`` needs t - 1 steps or more.
    """
    n_past = past.shape[1]
    if displacement.shape[1] < n_past - 1:
        raise ValueError(f"{n_past} past frames need {n_past - 1} steps of trajectories, got {displacement.shape[1]}")
    frames = [sample(past[:, n_past - 1 - age, None], points + displacement[:, age - 1])[:, 0]
              for age in range(n_past - 1, 0, -1)]
    frames.append(sample(past[:, -1:], points)[:, 0])
    return torch.stack(frames, dim=1)


def warp(field: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """(batch, time, channel, y, x) fields at the ends of their lead's back-trajectories on the same grid.

    ``displacement``: (batch, time, 2, y, x). Carries a field defined in the Lagrangian
    frame of the last observation to where its air is at each lead time.
    """
    b, t, c, h, w = field.shape
    points = pixel_grid(b * t, h, w, device=field.device, dtype=field.dtype)
    moved = sample(field.reshape(b * t, c, h, w), points + displacement.reshape(b * t, 2, h, w).to(field.dtype))
    return moved.reshape(b, t, c, h, w)
