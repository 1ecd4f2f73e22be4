"""The fast paths of inference give what the plain computations give.

Sliding maxima by doubling windows against max-pooling, pooled pyramids against direct
pooling, the vectorised outlier test and tracking against pysteps', the advection in
grid_sample's coordinates against pixel arithmetic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nowcast.gan.advection import along, known_at_source, pixel_grid, sample, trajectories, warp
from nowcast.gan.model import downsample, pyramid, sliding_max
from nowcast.motion import LK_BUFFER_MASK, corners, inverse_distance, local_outliers, sparse_vectors, to_dbr
from nowcast.synthetic import SyntheticRain, synthetic_sequence


@settings(max_examples=40, deadline=None)
@given(radius=st.integers(0, 9), ny=st.integers(1, 23), nx=st.integers(1, 23), seed=st.integers(0, 2**16))
def test_sliding_max_is_max_pooling(radius, ny, nx, seed):
    x = torch.randn((2, 3, ny, nx), generator=torch.Generator().manual_seed(seed))
    window = 2 * radius + 1
    expected = F.max_pool2d(x, (window, window), stride=1, padding=radius)
    assert torch.equal(sliding_max(sliding_max(x, radius, dim=-1), radius, dim=-2), expected)


def test_pyramid_pools_like_direct_pooling():
    x = torch.rand(2, 3, 1, 64, 48)
    levels = pyramid(x, [8, 4, 2, 1])
    assert set(levels) == {1, 2, 4, 8} and levels[1] is x
    for factor in (2, 4, 8):
        torch.testing.assert_close(levels[factor], downsample(x, factor), atol=1e-6, rtol=0)


def _pysteps_local_outliers(uv: np.ndarray, xy: np.ndarray) -> np.ndarray:
    from pysteps.utils.cleansing import detect_outliers

    return detect_outliers(uv, 3, xy, 30, False)


@pytest.mark.parametrize("seed", range(5))
def test_local_outliers_are_pysteps_outliers(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 300))
    xy = rng.uniform(0, 500, (n, 2))
    uv = rng.normal(2.0, 0.5, (n, 2))
    uv[rng.choice(n, size=max(1, n // 20), replace=False)] += rng.normal(0, 8, (max(1, n // 20), 2))
    assert np.array_equal(local_outliers(uv, xy), _pysteps_local_outliers(uv, xy))
    assert not local_outliers(uv[:1], xy[:1]).any()


def test_local_outliers_mark_nothing_where_the_neighbours_agree_exactly():
    xy = np.stack([np.arange(40.0), np.zeros(40)], axis=1)
    uv = np.ones((40, 2))  # singular covariance everywhere
    with pytest.warns(UserWarning, match="Singular"):
        reference = _pysteps_local_outliers(uv, xy)
    assert np.array_equal(local_outliers(uv, xy), reference)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corners_are_pysteps_shitomasi_points(seed):
    from pysteps.feature.shitomasi import detection

    frames = to_dbr(synthetic_sequence(SyntheticRain(ny=96, nx=120, frames=2), seed=seed).values)
    frames[0, 0, 5] = frames[0].min() - 3.0  # a minimum in the first row, which pysteps leaves out of the stretch
    for frame in frames:
        expected = detection(frame, buffer_mask=LK_BUFFER_MASK).astype(np.float32)
        assert expected.shape[0] > 3
        np.testing.assert_array_equal(corners(frame), expected)
    assert corners(np.zeros((40, 40))).shape == (0, 2)


def test_sparse_vectors_are_pysteps_vectors():
    from pysteps.motion.lucaskanade import dense_lucaskanade

    past = synthetic_sequence(SyntheticRain(ny=128, nx=160, frames=4, no_data_border=3), seed=7).values
    dbr = to_dbr(past)
    xy, uv = dense_lucaskanade(dbr, fd_kwargs={"buffer_mask": LK_BUFFER_MASK}, dense=False, verbose=False)
    got_xy, got_uv = sparse_vectors(dbr)
    assert xy.shape[0] > 10
    np.testing.assert_array_equal(got_xy, xy)
    np.testing.assert_array_equal(got_uv, uv)


@pytest.mark.realdata
def test_sparse_vectors_are_pysteps_vectors_on_real_radar(real_data_root):
    from pysteps.motion.lucaskanade import dense_lucaskanade

    from nowcast.io.catalogue import load_event

    sequence = load_event("mch-20160711")
    for start in (0, 10, 20):
        dbr = to_dbr(sequence.values[start:start + 4])
        xy, uv = dense_lucaskanade(dbr, fd_kwargs={"buffer_mask": LK_BUFFER_MASK}, dense=False, verbose=False)
        got_xy, got_uv = sparse_vectors(dbr)
        np.testing.assert_array_equal(got_xy, xy)
        np.testing.assert_array_equal(got_uv, uv)


def _pixel_trajectories(velocity: torch.Tensor, steps: int, points: torch.Tensor) -> torch.Tensor:
    """The back-trajectories written in pixels, step by step: the reference of the fast path. Beyond the
    grid the motion is the nearest edge's: bilinear values at the position clamped onto the grid."""
    ny, nx = velocity.shape[-2:]
    low, high = torch.zeros(1, 2, 1, 1), torch.tensor([nx - 1.0, ny - 1.0]).view(1, 2, 1, 1)

    def motion(at: torch.Tensor) -> torch.Tensor:
        return sample(velocity, torch.maximum(torch.minimum(at, high), low))

    displacement, out = torch.zeros_like(points), []
    for _ in range(steps):
        here = motion(points + displacement)
        displacement = displacement - motion(points + displacement - 0.5 * here)
        out.append(displacement)
    return torch.stack(out, dim=1)


def test_advection_in_unit_coordinates_matches_pixel_arithmetic():
    torch.manual_seed(0)
    ny, nx = 40, 56
    velocity = F.interpolate(torch.randn(2, 2, 5, 7) * 2.0, size=(ny, nx), mode="bilinear", align_corners=True)
    points = pixel_grid(2, ny, nx)
    reference = _pixel_trajectories(velocity, 6, points)
    displacement = trajectories(velocity, 6, points)
    torch.testing.assert_close(displacement, reference, atol=2e-4, rtol=0)

    frame = torch.rand(2, ny, nx)
    expected = torch.stack([sample(frame[:, None], points + reference[:, n])[:, 0] for n in range(6)], dim=1)
    torch.testing.assert_close(along(frame, displacement, points), expected, atol=1e-4, rtol=0)

    field = torch.rand(2, 6, 3, ny, nx)
    moved = torch.stack([sample(field[:, n], points + reference[:, n]) for n in range(6)], dim=1)
    torch.testing.assert_close(warp(field, reference), moved, atol=1e-4, rtol=0)


def test_trajectories_leave_the_grid_at_the_edges_speed_and_bring_no_data_from_there():
    """A uniform motion traces straight lines off the grid (with no motion outside, they stalled at the edge
    and smeared its rain inwards); a forecast knows its source where that lies on the grid, within half a
    pixel, and on pixels with data."""
    ny, nx, steps = 24, 32, 5
    # no source falls exactly half a pixel off the grid, where rounding would decide
    velocity = torch.tensor([1.2, -0.6]).view(1, 2, 1, 1).expand(1, 2, ny, nx)
    displacement = trajectories(velocity, steps, pixel_grid(1, ny, nx))
    lead = torch.arange(1, steps + 1, dtype=torch.float32).view(1, steps, 1, 1, 1)
    torch.testing.assert_close(displacement, -lead * torch.tensor([1.2, -0.6]).view(1, 1, 2, 1, 1).expand_as(
        displacement), atol=1e-4, rtol=0)

    source_x = torch.arange(nx).view(1, 1, 1, nx) - 1.2 * lead[..., 0]
    source_y = torch.arange(ny).view(1, 1, ny, 1) + 0.6 * lead[..., 0]
    # at least half the bilinear weight on the grid: within half a pixel of it, less at a corner
    on_grid = torch.clamp(source_x + 1, 0, 1) * torch.clamp(ny - source_y, 0, 1) >= 0.5
    everywhere = torch.ones(1, ny, nx, dtype=torch.bool)
    assert torch.equal(known_at_source(everywhere, displacement), on_grid)
    # a block without data: sampled, not reckoned, so within the interpolation's rounding of half a pixel
    valid = everywhere.clone()
    valid[:, 8:16, 10:20] = False
    known = known_at_source(valid, displacement)
    inside_block = (source_x >= 10) & (source_x <= 19) & (source_y >= 8) & (source_y <= 15)
    clear = (source_x <= 8.9) | (source_x >= 20.1) | (source_y <= 6.9) | (source_y >= 16.1)
    assert not known[inside_block.expand_as(known)].any()
    assert known[(clear & on_grid).expand_as(known)].all()


def test_a_drift_is_a_uniform_velocity_added_in_each_step():
    """A constant drift traces the same trajectories as the velocity shifted by it; a drift that
    changes from step to step is added in its own step only."""
    torch.manual_seed(0)
    ny, nx = 40, 56
    velocity = F.interpolate(torch.randn(2, 2, 5, 7), size=(ny, nx), mode="bilinear", align_corners=True)
    points = pixel_grid(2, ny, nx)
    shift = torch.tensor([[0.7, -0.4], [-1.1, 0.3]])
    constant = shift[:, None].expand(-1, 6, -1)
    torch.testing.assert_close(trajectories(velocity, 6, points, drift=constant),
                               trajectories(velocity + shift[:, :, None, None], 6, points), atol=1e-4, rtol=0)
    # in a still field a drift moves every point by the drifts summed up to each step
    still = torch.zeros(2, 2, ny, nx)
    varying = torch.rand(2, 6, 2) - 0.5
    inner = points[:, :, 10:30, 10:40]
    displacement = trajectories(still, 6, inner, drift=varying)
    expected = -torch.cumsum(varying, dim=1)[..., None, None].expand_as(displacement)
    torch.testing.assert_close(displacement, expected, atol=1e-4, rtol=0)


def test_bfloat16_on_the_cpu_stays_within_the_service_tolerance():
    from nowcast.forecasters import get_forecaster

    forecaster = get_forecaster("default-gan", device="cpu")
    if forecaster.half_precision != "bfloat16":
        pytest.skip("this CPU has no bfloat16 instructions")
    past = synthetic_sequence(SyntheticRain(ny=128, nx=128, frames=4), seed=3).values[np.newaxis]
    full = forecaster.predict(past, 12)
    forecaster.half = True
    half = forecaster.predict(past, 12)
    assert not np.array_equal(half, full)  # the generator did run in bfloat16
    with np.errstate(invalid="ignore"):
        excess = np.abs(half - full) - (0.1 + 0.01 * np.abs(full))
    assert np.nanmax(excess) <= 0


@pytest.mark.parametrize("seed", range(6))
def test_decluster_is_pysteps_decluster(seed):
    from pysteps.utils.cleansing import decluster as pysteps_decluster

    from nowcast.motion import decluster

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 600))
    xy = rng.uniform(0, 300, (n, 2))
    if seed % 2:
        xy = np.round(xy)  # repeated positions: even-sized cells and ties in the medians
    uv = rng.normal(0, 2, (n, 2))
    expected = pysteps_decluster(xy, uv, 20, 1, False)
    got = decluster(xy, uv, 20)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize(("n_vectors", "stride", "seed"), [(349, 4, 0), (7, 2, 1), (1, 4, 2), (40, 1, 3)])
def test_inverse_distance_is_pysteps_idw(n_vectors, stride, seed):
    from pysteps.utils.interpolate import idwinterp2d

    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 200, (n_vectors, 2))
    vectors = rng.normal(0, 2, (n_vectors, 2))
    xs, ys = np.arange(0, 203, stride, dtype=float), np.arange(0, 157, stride, dtype=float)
    expected = np.asarray(idwinterp2d(positions, vectors, xs, ys, dist_offset=0.5 / stride)).reshape(2, len(ys), -1)
    got = inverse_distance(positions, vectors, xs, ys, dist_offset=0.5 / stride)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    same = np.full((min(n_vectors, 5), 2), 1.5)  # pysteps' shortcut for equal vectors
    np.testing.assert_array_equal(inverse_distance(positions[:5], same, xs, ys, dist_offset=0.1),
                                  np.asarray(idwinterp2d(positions[:5], same, xs, ys, dist_offset=0.1)))
