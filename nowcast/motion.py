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
_SIZE_OPENING = 3
_OUTLIER_STD = 3.0
_OUTLIER_NEIGHBOURS = 30
_IDW_NEIGHBOURS = 20


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
    dbr = to_dbr(past, threshold_mmh)
    ny, nx = dbr.shape[1:]
    try:
        xy, uv = sparse_vectors(dbr)
        if xy.shape[0] > 0:
            xy, uv = decluster(xy, uv, _DECLUSTER_SCALE)
    except Exception:  # LK fails on fields with nothing to track; no motion is the honest answer
        xy = np.empty((0, 2))
    if xy.shape[0] == 0:
        return np.zeros((2, ny, nx), dtype=np.float32)
    stride = max(int(stride), 1)
    xs = np.arange(0, nx, stride, dtype=np.float64)
    ys = np.arange(0, ny, stride, dtype=np.float64)
    # pysteps divides distances by the grid spacing before adding the offset; scaling the
    # offset keeps the weights of the full-resolution field at the coarse points
    coarse = inverse_distance(xy, uv, xs, ys, dist_offset=_IDW_DIST_OFFSET / stride).astype(np.float32)
    if stride == 1:
        return np.nan_to_num(coarse)
    return np.nan_to_num(_upsample_coarse(coarse, stride, ny, nx))


def inverse_distance(positions: np.ndarray, vectors: np.ndarray, xs: np.ndarray, ys: np.ndarray, *,
                     dist_offset: float, neighbours: int = _IDW_NEIGHBOURS, power: float = 0.5) -> np.ndarray:
    """pysteps' ``idwinterp2d`` of (n, 2) vectors on the grid ``xs`` × ``ys``: (2, len(ys), len(xs)).

    The same weights (the ``neighbours`` nearest vectors, distances in grid spacings plus
    ``dist_offset``, to the power ``-power``), with the nearest-neighbour search on every core.
    """
    if len(positions) == 1 or vectors.max() == vectors.min():
        # pysteps' shortcut: one vector, or all components equal, give a uniform field
        return np.broadcast_to(vectors[0][:, None, None] if len(positions) == 1 else vectors.ravel()[0],
                               (2, len(ys), len(xs))).astype(np.float64)
    from scipy.spatial import cKDTree

    grid_x, grid_y = np.meshgrid(xs, ys)
    targets = np.column_stack((grid_x.ravel(), grid_y.ravel()))
    k = min(neighbours, len(positions))
    distance, nearest = cKDTree(positions).query(targets, k=k, workers=-1)
    if k == 1:
        distance, nearest = distance[:, None], nearest[:, None]
    spacing = np.mean(np.abs([np.gradient(xs).mean(), np.gradient(ys).mean()]))
    weights = 1.0 / np.power(distance / spacing + dist_offset, power)
    weights /= weights.sum(axis=1, keepdims=True)
    field = np.einsum("pk,pkc->cp", weights, vectors[nearest])
    return field.reshape(2, len(ys), len(xs))


def sparse_vectors(dbr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tracked vectors of pysteps' ``dense_lucaskanade(..., dense=False)``: positions and (u, v).

    The same steps as pysteps' feature detection and tracking; each frame is cleaned once
    (pysteps cleans the inner frames twice), the frame pairs are tracked in threads, and the
    local outlier test runs vectorised (:func:`local_outliers`).
    ``dbr``: (time, y, x) finite values, as :func:`to_dbr` gives them.
    """
    from concurrent.futures import ThreadPoolExecutor

    frames = [_without_speckle(frame) for frame in dbr]
    images = [_as_uint8(frame) for frame in frames]

    def pair(k: int) -> tuple[np.ndarray, np.ndarray]:
        points = corners(frames[k])
        if points.shape[0] == 0:
            return np.empty((0, 2)), np.empty((0, 2))
        return _track(images[k], images[k + 1], points)

    # OpenCV releases the GIL: the frame pairs are tracked side by side, results in pysteps' order
    with ThreadPoolExecutor(max_workers=min(len(frames) - 1, 4) or 1) as pool:
        tracked = list(pool.map(pair, range(len(frames) - 1)))
    positions = [np.empty((0, 2))] + [xy for xy, _ in tracked]
    vectors = [np.empty((0, 2))] + [uv for _, uv in tracked]
    xy, uv = np.concatenate(positions).astype(np.float64), np.concatenate(vectors).astype(np.float64)
    if xy.shape[0] == 0:
        return xy, uv
    keep = ~local_outliers(uv, xy)
    return xy[keep], uv[keep]


def corners(frame: np.ndarray) -> np.ndarray:
    """pysteps' Shi-Tomasi ``detection(frame, buffer_mask=LK_BUFFER_MASK)`` of a finite frame: (n, 2) float32 (x, y).

    The same points without masked arrays. pysteps indexes the image with its (all-zero)
    no-data mask as integers, which masks the first row: the row is filled with the
    frame's minimum and left out of the stretch to bytes, and so it is here. A finite
    frame has no no-data to buffer, so ``LK_BUFFER_MASK`` changes nothing.
    """
    import cv2

    image = frame.astype(np.float64, copy=True)
    image[0] = frame.min()
    low, high = frame[1:].min(), frame[1:].max()
    stretched = (image - low) / (high - low) * 255 if high - low > 1e-8 else image - low
    found = cv2.goodFeaturesToTrack(stretched.astype(np.uint8), mask=np.ones(frame.shape, np.uint8),
                                    maxCorners=1000, qualityLevel=0.01, minDistance=10, blockSize=5,
                                    useHarrisDetector=False, k=0.04)
    return np.empty((0, 2), np.float32) if found is None else found[:, 0, :].astype(np.float32)


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    """A finite frame stretched to 0..255 and truncated to bytes, as pysteps' ``track_features`` does."""
    low, high = frame.min(), frame.max()
    stretched = (frame - low) / (high - low) * 255 if high - low > 1e-8 else frame - low
    return stretched.astype(np.uint8)


def _track(previous: np.ndarray, following: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """pysteps' ``track_features`` on frames already in bytes (each frame converted once, not once per pair)."""
    import cv2

    moved, status, _ = cv2.calcOpticalFlowPyrLK(previous, following, points, None, winSize=(50, 50), maxLevel=3,
                                                criteria=(3, 10, 0), flags=0, minEigThreshold=1e-4)
    found = np.atleast_1d(status.squeeze()) == 1
    if not np.any(found):
        return np.empty((0, 2)), np.empty((0, 2))
    return points[found], moved[found] - points[found]


def decluster(positions: np.ndarray, vectors: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """pysteps' ``decluster(positions, vectors, scale)``, vectorised: one median vector per ``scale`` cell.

    Cells in pysteps' order (their lexicographically sorted indices); each gets the median
    position and the median vector of the vectors that fall in it.
    """
    cells = np.floor(positions / scale)
    _, group = np.unique(cells, axis=0, return_inverse=True)
    group = group.ravel()
    return _group_median(positions, group), _group_median(vectors, group)


def _group_median(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """np.median of each column within each group 0..G-1: (G, columns)."""
    counts = np.bincount(group)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    lower, upper = starts + (counts - 1) // 2, starts + counts // 2
    medians = np.empty((len(counts), values.shape[1]))
    for column in range(values.shape[1]):
        ordered = values[np.lexsort((values[:, column], group)), column]
        medians[:, column] = (ordered[lower] + ordered[upper]) / 2
    return medians


def _without_speckle(frame: np.ndarray) -> np.ndarray:
    """pysteps' ``morph_opening(frame, frame.min(), 3)``: rain pixels an opening removes set to the minimum."""
    import cv2

    lowest = frame.min()
    rain = (frame > lowest).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_SIZE_OPENING, _SIZE_OPENING))
    cleaned = frame.copy()
    cleaned[rain > cv2.morphologyEx(rain, cv2.MORPH_OPEN, kernel)] = lowest
    return cleaned


def local_outliers(vectors: np.ndarray, positions: np.ndarray, threshold: float = _OUTLIER_STD,
                   neighbours: int = _OUTLIER_NEIGHBOURS) -> np.ndarray:
    """pysteps' local multivariate outlier test (``detect_outliers`` with ``k``), for all vectors at once.

    A vector is an outlier when its Mahalanobis distance from its ``neighbours`` nearest
    vectors' mean, under their covariance, exceeds ``threshold``; a singular covariance
    marks nothing.
    """
    from scipy.spatial import cKDTree

    n = vectors.shape[0]
    if n < 2:
        return np.zeros(n, dtype=bool)
    k = min(n, neighbours + 1)
    _, index = cKDTree(positions).query(positions, k=k)
    near = vectors[index[:, 1:]]  # (n, k - 1, 2): the point itself comes first
    mean = near.mean(axis=1)
    spread = near - mean[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = np.einsum("nki,nkj->nij", spread, spread) / (k - 2)
        det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
        z = vectors - mean
        quadratic = (z[:, 0] ** 2 * cov[:, 1, 1] - z[:, 0] * z[:, 1] * (cov[:, 0, 1] + cov[:, 1, 0])
                     + z[:, 1] ** 2 * cov[:, 0, 0]) / det
        distance = np.where(det != 0, np.sqrt(quadratic), 0.0)
    return distance > threshold


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
