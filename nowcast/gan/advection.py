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


def estimate_motion(past: np.ndarray, downsample: int = 4, threshold_mmh: float = 0.1) -> np.ndarray:
    """Lucas–Kanade motion of (time, y, x) mm/h frames, in full-resolution pixels per step.

    Returns float32 (2, y, x). Frames without enough rain to track give zero motion.
    """
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

