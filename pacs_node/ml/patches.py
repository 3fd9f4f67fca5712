"""Cut the network's input patches around points of a fine (about 1 mm) canonical grid.

A patch of edge ``P`` for integer centre index ``c`` covers indices ``c - P/2 ..
c + P/2 - 1`` along each axis, so its geometric centre is index ``c - 0.5``: the
point between the two middle voxels, which every axis flip of the patch keeps in
place.  The context patch covers ``2P`` fine voxels around the same centre,
averaged 2 x 2 x 2, and the optional wide patch ``4P`` fine voxels averaged 4 x 4 x 4
(so 24 voxels of 1 mm give 24, 48 and 96 mm).  Beyond the grid, the nearest edge
voxel is repeated.
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


#: Names of the patch channels, finest first; channel ``k`` averages ``2**k`` fine voxels per axis.
CHANNEL_NAMES: tuple[str, ...] = ("fine", "context", "wide")


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


class HalfGrid:
    """The 2 x 2 x 2 means of a fine grid, at each of the 8 block phases (``float16``), made when first needed.

    A wide patch is the 4 x 4 x 4 mean of ``4P`` fine voxels: the 2 x 2 x 2 mean of a
    ``2P`` cube of the phase whose blocks start where the patch does, which costs an
    eighth of cutting it from the fine grid.  All phases together take half the fine
    grid's ``float32`` memory; ``float16`` keeps HU to within 0.5.  Beyond the grid, the
    nearest edge block is repeated.
    """

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self._phases: dict[tuple[int, ...], np.ndarray] = {}

    def phase(self, p: tuple[int, ...]) -> np.ndarray:
        """Means of the blocks starting at fine index ``p + 2 j`` along each axis."""
        if p not in self._phases:
            a = self.array[p[0]:, p[1]:, p[2]:]
            n = [length // 2 for length in a.shape]
            v = a[: 2 * n[0], : 2 * n[1], : 2 * n[2]].reshape(n[0], 2, n[1], 2, n[2], 2)
            total = v[:, 0, :, 0, :, 0].astype(np.float32)
            for dz, dy, dx in ((0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
                total += v[:, dz, :, dy, :, dx]
            self._phases[p] = (total / np.float32(8.0)).astype(np.float16)
        return self._phases[p]

    def wide(self, centre: np.ndarray, size: int, out: np.ndarray) -> None:
        """The ``size``-cubed wide patch around integer centre ``centre`` into ``out`` (``float32``)."""
        lo = np.asarray(centre) - 2 * size
        if min(self.array.shape) < 4:  # too small for every phase to hold a block: pool exactly
            half = np.empty((2 * size,) * 3, np.float32)
            _pool2(_cut(self.array, np.asarray(centre), 4 * size).astype(np.float32), half)
            _pool2(half, out)
            return
        phase = tuple(int(v) for v in lo % 2)
        start = (lo - np.array(phase)) // 2
        cube = _cut(self.phase(phase), start + size, 2 * size)
        _pool2(cube.astype(np.float32), out)


def extract_patches(grid: Grid, centres: np.ndarray, size: int, dtype: np.dtype | type = np.float32,
                    channels: int = 2, half: HalfGrid | None = None) -> tuple[np.ndarray, ...]:
    """Fine, context and (``channels=3``) wide patches around integer centres.

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
    channels
        2 (fine and context) or 3 (also the wide patch); see :data:`CHANNEL_NAMES`.
    half
        The grid's :class:`HalfGrid`, for callers that cut wide patches in several
        calls (made here when missing).

    Returns
    -------
    tuple[np.ndarray, ...]
        ``channels`` arrays of ``N x P x P x P`` patches (HU), finest first.
    """
    if channels not in (2, 3):
        raise ValueError(f"channels must be 2 or 3, got {channels}")
    centres = np.atleast_2d(np.asarray(centres, dtype=np.int64))
    n = len(centres)
    fine = np.empty((n, size, size, size), dtype=dtype)
    integer = np.issubdtype(np.dtype(dtype), np.integer)
    coarse = []
    for _ in range(1, channels):
        out = np.empty((n, size, size, size), dtype=dtype)
        pooled = out if np.dtype(dtype) == np.float32 else np.empty((n, size, size, size), dtype=np.float32)
        coarse.append((out, pooled))
    if channels == 3 and half is None:
        half = HalfGrid(grid.array)
    for i, c in enumerate(centres):
        f = _cut(grid.array, c, size)
        fine[i] = np.rint(f) if integer else f
        _pool2(_cut(grid.array, c, 2 * size).astype(np.float32, copy=False), coarse[0][1][i])
        if half is not None and channels == 3:
            half.wide(c, size, coarse[1][1][i])
    for out, pooled in coarse:
        if integer:
            info = np.iinfo(dtype)
            out[:] = np.clip(np.rint(pooled), info.min, info.max)
        elif pooled is not out:
            out[:] = pooled
    return (fine, *(out for out, _ in coarse))
