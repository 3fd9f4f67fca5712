"""The canonical grid the detector works on: axes along S, P, L and near-isotropic voxels.

Coordinates
-----------
A :class:`Grid` is an array indexed ``[z, y, x]`` plus a 4 x 4 affine that maps
``(z, y, x, 1)`` voxel indices to patient LPS positions in mm (DICOM's patient
coordinate system, as :class:`highdicom.Volume` uses it).  :func:`orient` permutes
and flips a volume (views, no copy, no resampling) so that its first axis runs
towards the head (S), its second towards the back (P) and its third towards the
patient's left (L), whatever the slice order, row/column direction or reading
software that made it; :func:`resample` then crops a box of that volume and
interpolates it onto voxels of (almost exactly) a requested spacing.  The affine
always stays exact, so positions computed on any grid map back to the patient
through :meth:`Grid.index_to_world`, also for an oblique (tilted) acquisition.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
import torch
import torch.nn.functional as F

#: HU values below this are air; scanners pad outside the reconstruction circle with
#: -2000 or -3024, which must not count as "denser than air" nor blur into the lungs.
AIR_HU = -1024.0

#: Orientation of a canonical volume, in highdicom's letters (H = superior).
CANONICAL_ORIENTATION = "HPL"


@dataclass(frozen=True, eq=False)
class Grid:
    """An array on a regular grid with its geometry.

    Attributes
    ----------
    array
        Values indexed ``[z, y, x]`` (HU as ``float32`` for images, ``bool`` for masks).
    affine
        4 x 4 matrix mapping ``(z, y, x, 1)`` indices to patient LPS positions (mm).
    """

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"array must be 3D [z, y, x], got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4 x 4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(nz, ny, nx)``."""
        return tuple(int(v) for v in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_mm(self) -> np.ndarray:
        """Voxel spacing along ``z, y, x`` (mm)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def index_to_world(self, indices: np.ndarray) -> np.ndarray:
        """LPS positions (mm, ``N x 3``) of continuous ``[z, y, x]`` indices (``N x 3``)."""
        idx = np.atleast_2d(np.asarray(indices, dtype=np.float64))
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Continuous ``[z, y, x]`` indices (``N x 3``) of LPS positions (mm, ``N x 3``)."""
        pts = np.atleast_2d(np.asarray(points_lps_mm, dtype=np.float64))
        return np.linalg.solve(self.affine[:3, :3], (pts - self.affine[:3, 3]).T).T

    def contains(self, indices: np.ndarray) -> np.ndarray:
        """Whether rounded ``[z, y, x]`` indices (``N x 3``) fall inside the array."""
        idx = np.rint(np.atleast_2d(indices)).astype(np.int64)
        return np.all((idx >= 0) & (idx < np.array(self.shape)), axis=1)

    def lookup(self, points_lps_mm: np.ndarray, outside: float | bool = 0) -> np.ndarray:
        """Nearest-voxel values at LPS positions (``N x 3``); ``outside`` beyond the array."""
        idx = np.rint(self.world_to_index(points_lps_mm)).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.array(self.shape)), axis=1)
        out = np.full(len(idx), outside, dtype=self.array.dtype)
        out[inside] = self.array[tuple(idx[inside].T)]
        return out

    def lookup_lattice(self, other: Grid, lattice: tuple[np.ndarray, ...] | None = None,
                       outside: float | bool = 0) -> np.ndarray:
        """:meth:`lookup` at the voxel centres of ``other`` on a lattice of its indices.

        ``lattice`` holds the ``z``, ``y`` and ``x`` indices of ``other`` (default: all);
        the result has their lengths as its shape.  When both grids' axes lie along the
        same patient axes (any canonical pair), each axis is mapped on its own, with the
        very arithmetic of :meth:`lookup` (the other axes only add exact zeros).
        """
        axes = lattice if lattice is not None else tuple(np.arange(n) for n in other.shape)
        axes = tuple(np.asarray(a, dtype=np.int64) for a in axes)
        if not _same_axes(self.affine, other.affine):
            k, j, i = np.meshgrid(*axes, indexing="ij")
            pts = np.stack([k.ravel(), j.ravel(), i.ravel()], axis=1)
            return self.lookup(other.index_to_world(pts), outside).reshape(k.shape)
        idx, ok = [], []
        for a, along in enumerate(axes):
            pts = np.zeros((len(along), 3))
            pts[:, a] = along
            mine = np.rint(self.world_to_index(other.index_to_world(pts))[:, a]).astype(np.int64)
            ok.append((mine >= 0) & (mine < self.shape[a]))
            idx.append(np.clip(mine, 0, self.shape[a] - 1))
        inside = ok[0][:, None, None] & ok[1][None, :, None] & ok[2][None, None, :]
        return np.where(inside, self.array[np.ix_(*idx)], np.asarray(outside, dtype=self.array.dtype))


def _same_axes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two affines map each index axis onto the same single patient axis (exact zeros elsewhere)."""
    pa, pb = a[:3, :3] != 0, b[:3, :3] != 0
    return bool(np.array_equal(pa, pb) and np.all(pa.sum(axis=0) == 1) and np.all(pa.sum(axis=1) == 1))


def orient(volume: hd.Volume) -> hd.Volume:
    """Permute and flip a CT volume's axes to the canonical ``[S, P, L]`` order.

    Only views are made (no copy, no resampling); the returned volume's affine is
    exact.  Oblique volumes get the closest axis order.

    Raises
    ------
    ValueError
        If the volume is not a single-channel volume in the patient coordinate system.
    """
    if volume.number_of_channel_dimensions != 0:
        raise ValueError(f"expected a single-channel volume, got channel shape {volume.channel_shape}")
    if str(volume.coordinate_system).upper().endswith("SLIDE"):
        raise ValueError("expected a volume in the patient coordinate system, got a slide volume")
    return volume.to_patient_orientation(CANONICAL_ORIENTATION)


def box_from_world(volume: hd.Volume, lo_lps_mm: np.ndarray, hi_lps_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index box ``[lo, hi)`` of a volume covering the LPS box between two corners (clipped)."""
    corners = np.array([[a, b, c] for a in (lo_lps_mm[0], hi_lps_mm[0]) for b in (lo_lps_mm[1], hi_lps_mm[1])
                        for c in (lo_lps_mm[2], hi_lps_mm[2])])
    homogeneous = np.c_[corners, np.ones(len(corners))]
    idx = (np.linalg.inv(volume.affine) @ homogeneous.T).T[:, :3]
    shape = np.array(volume.spatial_shape)
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int), 0, shape)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 1, 0, shape)
    return lo, hi


def resample(volume: hd.Volume, lo: np.ndarray, hi: np.ndarray, spacing_mm: float,
             scale: float = 1.0) -> Grid:
    """Crop ``[lo, hi)`` (voxel indices) of a canonical volume and resample it.

    Parameters
    ----------
    volume
        A volume from :func:`orient` (HU).
    lo, hi
        Index box to crop, ``[z, y, x]``.
    spacing_mm
        Requested output spacing (mm).  The number of output voxels per axis is chosen
        so that the crop's first and last voxel centres are kept; the actual spacing
        (within a fraction of a percent of the request) is in the returned affine.
    scale
        Augmentation only: sample ``scale`` times more densely, so that objects appear
        ``scale`` times larger to a reader who takes the voxels to be ``spacing_mm``.
        The affine stays the patient's (its voxels are then ``spacing_mm / scale``).

    Returns
    -------
    Grid
        ``float32`` HU, clipped below at :data:`AIR_HU` before interpolation.
    """
    lo = np.asarray(lo, dtype=int)
    hi = np.asarray(hi, dtype=int)
    if np.any(hi - lo < 2):
        raise ValueError(f"crop box too small: lo={lo.tolist()} hi={hi.tolist()}")
    crop = np.asarray(volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
    crop = np.maximum(crop, np.float32(AIR_HU))  # copies into a C-contiguous array
    spacing_in = np.linalg.norm(volume.affine[:3, :3], axis=0) * scale
    n_in = np.array(crop.shape)
    n_out = np.maximum(2, np.rint((n_in - 1) * spacing_in / spacing_mm).astype(int) + 1)
    step = (n_in - 1) / (n_out - 1)  # input voxels per output voxel
    with torch.no_grad():
        out = F.interpolate(torch.from_numpy(crop)[None, None], size=tuple(int(v) for v in n_out),
                            mode="trilinear", align_corners=True)[0, 0].numpy()
    del crop
    affine = np.array(volume.affine, dtype=np.float64)
    origin = affine[:3, :3] @ lo + affine[:3, 3]
    new = np.eye(4)
    new[:3, :3] = affine[:3, :3] * step[None, :]
    new[:3, 3] = origin
    return Grid(np.ascontiguousarray(out), new)


def downsample2(grid: Grid) -> Grid:
    """Average 2 x 2 x 2 blocks (a ``float32`` grid of half the resolution).

    Voxel ``I`` of the result is the mean of voxels ``2I .. 2I+1``; its centre is at
    index ``2I + 0.5`` of the input.
    """
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(grid.array, dtype=np.float32))[None, None]
        out = F.avg_pool3d(t, 2, 2, ceil_mode=False)[0, 0].numpy()
    affine = grid.affine.copy()
    affine[:3, 3] = grid.affine[:3, :3] @ np.full(3, 0.5) + grid.affine[:3, 3]
    affine[:3, :3] = grid.affine[:3, :3] * 2.0
    return Grid(np.ascontiguousarray(out), affine)
