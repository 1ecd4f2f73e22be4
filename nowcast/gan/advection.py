"""Back-trajectories and advection for conditioning the GAN on extrapolation.

Motion comes from :func:`nowcast.motion.lucas_kanade_coarse` (the extrapolation
baseline's Lucas–Kanade, its dense field interpolated on a coarser grid). Advection is
a backward semi-Lagrangian scheme in torch (``grid_sample``), so it runs batched on the
model's device, and the same back-trajectories move the past frames into the frame of
reference that moves with the rain (:func:`lagrangian_past`).

Motion fields follow pysteps' convention: ``(2, y, x)`` with ``[0]`` the x and ``[1]``
the y displacement, in pixels per time step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    scale = _pixel_to_unit(field, coords.dtype)
    return _grid_sample(field, torch.addcmul(scale.new_tensor(-1.0), coords, scale))


def _pixel_to_unit(field: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(1, 2, 1, 1): pixels (x, y) of ``field``'s grid per unit of grid_sample's [-1, 1] coordinates."""
    ny, nx = field.shape[-2:]
    return torch.tensor([2.0 / max(nx - 1, 1), 2.0 / max(ny - 1, 1)], device=field.device, dtype=dtype).view(1, 2, 1, 1)


def _grid_sample(field: torch.Tensor, unit_coords: torch.Tensor, outside: str = "zeros") -> torch.Tensor:
    """Bilinear values of ``field`` at (batch, 2, y, x) coordinates in [-1, 1]; outside the field 0
    (``outside="zeros"``) or the nearest edge's value (``"border"``)."""
    return F.grid_sample(field, unit_coords.permute(0, 2, 3, 1), mode="bilinear", padding_mode=outside,
                         align_corners=True)


def trajectories(velocity: torch.Tensor, steps: int, points: torch.Tensor | None = None,
                 drift: torch.Tensor | None = None) -> torch.Tensor:
    """Back-trajectories through ``velocity`` (batch, 2, Y, X): (batch, steps, 2, y, x) displacements.

    Entry ``[:, n]`` is where the rain arriving at each point after n + 1 steps comes from,
    relative to the point, in pixels (x, y). ``points`` (batch, 2, y, x): pixel coordinates
    on the velocity's grid to start from (default: every pixel of it), so that a patch's
    trajectories can run through the motion of the whole grid. ``drift`` (batch, steps, 2):
    a uniform velocity (x, y) added to the field during each step, pixels per step (a
    member's motion perturbation). Backward semi-Lagrangian with the midpoint rule, traced
    one step at a time. Beyond the grid the motion is its nearest edge's (as pySTEPS' semi-Lagrangian
    scheme takes it), so that a trajectory leaves the grid at the speed it reached the edge with: with
    no motion outside, trajectories stalled at the edge and smeared the edge's rain inwards in stripes.
    """
    velocity = velocity.to(points.dtype if points is not None else velocity.dtype)
    if points is None:
        batch, _, ny, nx = velocity.shape
        points = pixel_grid(batch, ny, nx, device=velocity.device, dtype=velocity.dtype)
    # traced in grid_sample's coordinates, so that each step is two lookups and two sums
    scale = _pixel_to_unit(velocity, velocity.dtype)
    unit_velocity = velocity * scale
    start = torch.addcmul(scale.new_tensor(-1.0), points, scale)
    unit_drift = drift.to(velocity.dtype)[..., None, None] * scale[:, None] if drift is not None else None
    position, ends = start, []
    for step in range(steps):
        field = unit_velocity if unit_drift is None else unit_velocity + unit_drift[:, step]
        # midpoint rule: the velocity half a step back along the trajectory
        here = _grid_sample(field, position, "border")
        position = position - _grid_sample(field, torch.add(position, here, alpha=-0.5), "border")
        ends.append(position)
    return (torch.stack(ends, dim=1) - start[:, None]) / scale[:, None]


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
    batch, steps, _, ny, nx = displacement.shape
    image = frame[:, None]
    scale = _pixel_to_unit(image, displacement.dtype)
    ends = torch.addcmul(torch.addcmul(scale.new_tensor(-1.0), points, scale)[:, None], displacement, scale[:, None])
    # every lead's lookup in one call: the frame repeated along the leads costs no copy
    images = image[:, None].expand(-1, steps, -1, -1, -1).reshape(batch * steps, 1, *image.shape[-2:])
    return _grid_sample(images, ends.reshape(batch * steps, 2, ny, nx)).reshape(batch, steps, ny, nx)


def known_at_source(valid: torch.Tensor, displacement: torch.Tensor, points: torch.Tensor | None = None,
                    ) -> torch.Tensor:
    """Whether each back-trajectory ends where the frame had data: (batch, steps, y, x) bool.

    ``valid`` (batch, Y, X): True where the frame has data; ``displacement`` (batch, steps, 2, y, x)
    from :func:`trajectories` started at ``points`` (default: every pixel of that grid, which is then
    the displacement's own). A trajectory that ends outside the grid, or among pixels without data
    (at least half of its bilinear weight on them), brings no rain anyone observed: its forecast is
    no data, as pySTEPS' extrapolation gives there.
    """
    batch, steps, _, ny, nx = displacement.shape
    if points is None:
        points = pixel_grid(batch, ny, nx, device=displacement.device, dtype=displacement.dtype)
    weight = valid.to(displacement.dtype)
    # a lead at a time: every lead's lookup at once would hold two coordinates per pixel and lead
    return torch.cat([along(weight, displacement[:, lead:lead + 1], points) >= 0.5 for lead in range(steps)], dim=1)


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


def conditioning_fields(past: torch.Tensor, velocity: torch.Tensor, points: torch.Tensor, *, steps: int,
                        n_output: int, drift: torch.Tensor | None = None, drift_moves_past: bool = True,
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The advection the generator is conditioned on: (advected last frame, displacement, moved past).

    ``past`` (batch, t, Y, X) and ``velocity`` (batch, 2, Y, X) on the whole grid; ``points``
    (batch, 2, y, x) where to trace from; ``steps`` of trajectories, of which the first
    ``n_output`` are the leads. ``drift`` (batch, steps, 2) shifts a member's motion; the past
    frames move along the shifted trajectories only with ``drift_moves_past``, otherwise along
    the unshifted motion all members share. Returns (batch, n_output, y, x),
    (batch, n_output, 2, y, x) and (batch, t, y, x). Training patches and forecasts both come
    from here, so that a model sees in forecasts what it learned from.
    """
    displacement = trajectories(velocity, steps, points, drift=drift)
    advected = along(past[:, -1], displacement[:, :n_output], points)
    past_displacement = displacement
    if drift is not None and not drift_moves_past:
        past_displacement = trajectories(velocity, past.shape[1] - 1, points)
    return advected, displacement[:, :n_output], lagrangian_past(past, past_displacement, points)


def warp(field: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """(batch, time, channel, y, x) fields at the ends of their lead's back-trajectories on the same grid.

    ``displacement``: (batch, time, 2, y, x). Carries a field defined in the Lagrangian
    frame of the last observation to where its air is at each lead time.
    """
    b, t, c, h, w = field.shape
    flat = field.reshape(b * t, c, h, w)
    scale = _pixel_to_unit(flat, field.dtype)
    start = torch.addcmul(scale.new_tensor(-1.0), pixel_grid(1, h, w, device=field.device, dtype=field.dtype), scale)
    # one pass over the displacement: where each trajectory ends, in grid_sample's coordinates
    ends = torch.addcmul(start, displacement.reshape(b * t, 2, h, w).to(field.dtype), scale)
    return _grid_sample(flat, ends).reshape(b, t, c, h, w)
