"""k-means for the ``clusters`` prototype: K centres that summarise the good parts' feature vectors.

A surface has several kinds of good local appearance (stripe and gap, bright and dark band, edge and flat);
one mean vector (the paper) sits between them, so every good position is already 'far' and a defect has to
be farther still. With K centres a good feature is near one of them. Seeded k-means++ seeding and Lloyd
iterations in NumPy on centred data (assignments in float32, which is where the time goes; sums in
float64): deterministic for a given sample and seed.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

DEFAULT_ITERATIONS = 25
_BLOCK_VALUES = 1 << 22  # float32 distances per block (16 MB), whatever K is


Array = npt.NDArray[np.float64]


def _nearest(
    x32: npt.NDArray[np.float32], x_sq: Array, centres: Array
) -> tuple[npt.NDArray[np.intp], Array]:
    """Nearest centre and squared distance of every row. The argmin needs only ‖c‖² − 2x·c (‖x‖² is the same
    for every centre), one float32 MatMul per block: this is the loop k-means spends its time in."""
    c32 = centres.astype(np.float32)
    c_sq = (c32 * c32).sum(1)
    labels = np.empty(len(x32), np.intp)
    dist = np.empty(len(x32), np.float64)
    rows = max(1, _BLOCK_VALUES // len(centres))
    for i in range(0, len(x32), rows):
        partial = x32[i : i + rows] @ c32.T
        partial *= -2.0
        partial += c_sq
        block = partial.argmin(1)
        labels[i : i + rows] = block
        dist[i : i + rows] = partial[np.arange(len(block)), block] + x_sq[i : i + rows]
    return labels, np.maximum(dist, 0.0)


def kmeans(
    samples: npt.NDArray[np.floating], k: int, seed: int = 0, iterations: int = DEFAULT_ITERATIONS
) -> npt.NDArray[np.float32]:
    """K×h centres of M×h samples. Fewer distinct samples than K is an error (the caller says which fit)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"k-means needs an M×h sample, got shape {x.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    distinct = len(np.unique(rows))  # constant or repeated good images give repeated vectors
    if distinct < k:
        raise ValueError(f"{k} centres need at least {k} distinct feature vectors, the good images gave "
                         f"{distinct}")
    rng = np.random.default_rng(seed)
    # Centred first (k-means does not change under a shift): the float32 argmin ‖c‖² − 2x·c loses labels
    # when the vectors sit far from the origin compared with their spread.
    offset = x.mean(axis=0)
    x = x - offset
    x32 = x.astype(np.float32)
    x_sq = (x * x).sum(1)
    columns = np.ascontiguousarray(x.T)  # one row per dimension, for the bincount centre sums

    def to_sample(c: Array) -> Array:
        return np.maximum(x_sq - 2.0 * (x @ c) + float(c @ c), 0.0)

    # k-means++ seeding: each new centre drawn with probability ∝ squared distance to the nearest chosen one.
    centres = np.empty((k, x.shape[1]), np.float64)
    centres[0] = x[rng.integers(len(x))]
    nearest = to_sample(centres[0])
    for j in range(1, k):
        total = nearest.sum()
        i = int(rng.choice(len(x), p=nearest / total)) if total > 0 else int(rng.integers(len(x)))
        centres[j] = x[i]
        nearest = np.minimum(nearest, to_sample(centres[j]))
    for _ in range(iterations):
        labels, dist = _nearest(x32, x_sq, centres)
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, weights=col, minlength=k) for col in columns], axis=1)
        moved = centres.copy()
        filled = counts > 0
        moved[filled] = sums[filled] / counts[filled, None]
        # An empty centre restarts at the sample farthest from its centre, so K stays K.
        for j in np.flatnonzero(~filled):
            far = int(dist.argmax())
            moved[j] = x[far]
            dist[far] = 0.0
        if np.allclose(moved, centres, rtol=0.0, atol=1e-9):
            break
        centres = moved
    return (centres + offset).astype(np.float32)
