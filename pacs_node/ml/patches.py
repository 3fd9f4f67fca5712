"""Cut the network's input patches around points of a fine (about 1 mm) canonical grid.

A patch of edge ``P`` for integer centre index ``c`` covers indices ``c - P/2 ..
c + P/2 - 1`` along each axis, so its geometric centre is index ``c - 0.5``: the
point between the two middle voxels, which every axis flip of the patch keeps in
place.  The context patch covers ``2P`` fine voxels around the same centre,
averaged 2 x 2 x 2.  Beyond the grid, the nearest edge voxel is repeated.
"""

from __future__ import annotations

import numpy as np

from pacs_node.ml.canonical import Grid


def patch_centres(indices: np.ndarray) -> np.ndarray:
    """Integer centres ``c`` whose patch centre ``c - 0.5`` is nearest to continuous indices (``N x 3``)."""
    return np.floor(np.atleast_2d(indices) + 1.0).astype(np.int64)


def _cut(array: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    lo = centre - size // 2
    hi = lo + size
    shape = np.array(array.shape)
    if np.all(lo >= 0) and np.all(hi <= shape):
        return array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    idx = [np.clip(np.arange(lo[a], hi[a]), 0, shape[a] - 1) for a in range(3)]
    return array[np.ix_(*idx)]


def _pool2(cube: np.ndarray, out: np.ndarray) -> None:
    """Mean of the 2 x 2 x 2 blocks of a cube into ``out`` (``float32``).

    The eight voxels are summed in ``avg_pool3d``'s order (z, then y, then x) and
    divided by 8, so the result equals it bit for bit, without copying the cube.
    """
    h = cube.shape[0] // 2
    v = cube.reshape(h, 2, h, 2, h, 2)
    s = v[:, 0, :, 0, :, 0] + v[:, 0, :, 0, :, 1]
    for dz, dy, dx in ((0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
        s += v[:, dz, :, dy, :, dx]
    np.divide(s, np.float32(8.0), out=out)


def extract_patches(grid: Grid, centres: np.ndarray, size: int,
                    dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Fine and context patches around integer centres.

    Parameters
    ----------
    grid
        HU grid of about 1 mm voxels (the fine spacing), axes along S, P, L.
    centres
        ``N x 3`` integer ``[z, y, x]`` centres (see :func:`patch_centres`).
    size
        Patch edge ``P`` in voxels (even).
    dtype
        Output type (``int16`` for caches, ``float32`` for inference).

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``N x P x P x P`` fine patches and ``N x P x P x P`` context patches (HU).
    """
    centres = np.atleast_2d(np.asarray(centres, dtype=np.int64))
    n = len(centres)
    fine = np.empty((n, size, size, size), dtype=dtype)
    context = np.empty((n, size, size, size), dtype=dtype)
    pooled = context if np.dtype(dtype) == np.float32 else np.empty((n, size, size, size), dtype=np.float32)
    integer = np.issubdtype(np.dtype(dtype), np.integer)
    for i, c in enumerate(centres):
        f = _cut(grid.array, c, size)
        fine[i] = np.rint(f) if integer else f
        _pool2(_cut(grid.array, c, 2 * size).astype(np.float32, copy=False), pooled[i])
    if integer:
        info = np.iinfo(dtype)
        context[:] = np.clip(np.rint(pooled), info.min, info.max)
    elif pooled is not context:
        context[:] = pooled
    return fine, context
