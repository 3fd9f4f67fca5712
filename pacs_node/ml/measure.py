"""Size and density of a detected nodule, from a segmentation in the fine grid.

The nodule is segmented in a cube around its centre: a threshold halfway between
the study's lung parenchyma and the nodule's own level (its solid level, or for
sub-solid nodules its ground-glass level), the connected part at the centre, an
opening that cuts thin attachments (vessels, pleura) and a sphere that bounds it
by the network's size estimate.  From that mask: the volume (mm³), the mean HU,
and on the axial plane through the centre the long axis (largest in-plane
diameter) and short axis (largest diameter perpendicular to it), as Lung-RADS
measures them.  For part-solid nodules, the solid component (denser than
:data:`SOLID_HU`) gets its own mean axial diameter.  When the segmentation fails
or disagrees wildly with the network's size, the network's diameter is used.

Coordinates: the fine grid is a :class:`~pacs_node.ml.canonical.Grid` along S, P, L,
so its ``[y, x]`` planes are axial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pacs_node.ml.canonical import Grid

#: Denser than this is solid tissue (the solid part of a part-solid nodule).
SOLID_HU = -300.0


@dataclass(frozen=True)
class Measurement:
    """Measurements of one nodule (mm, mm³, HU).

    ``segmented`` is false when the sizes are the network's estimate.
    """

    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    mean_hu: float
    solid_core_mm: float | None
    segmented: bool


def _ball(radius_vox: float) -> np.ndarray:
    r = max(1, int(math.floor(radius_vox)))
    z, y, x = np.ogrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return (z * z + y * y + x * x) <= radius_vox * radius_vox + 1e-6


def axial_axes(mask2d: np.ndarray, spacing_yx: np.ndarray) -> tuple[float, float]:
    """Long and short axis (mm) of a 2D mask: largest diameter and largest perpendicular width.

    Distances are between pixel centres plus one pixel, so a single pixel measures
    one pixel.
    """
    pts = np.argwhere(mask2d).astype(np.float64) * spacing_yx
    if len(pts) == 0:
        return 0.0, 0.0
    px = float(np.mean(spacing_yx))
    if len(pts) == 1:
        return px, px
    # boundary pixels are enough for the extreme pair
    er = ndi.binary_erosion(mask2d)
    edge = np.argwhere(mask2d & ~er).astype(np.float64) * spacing_yx
    if len(edge) < 2:
        edge = pts
    d2 = ((edge[:, None, :] - edge[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmax(d2)), d2.shape)
    long_vec = edge[j] - edge[i]
    long_len = float(np.sqrt(d2[i, j]))
    if long_len == 0:
        return px, px
    perp = np.array([-long_vec[1], long_vec[0]]) / long_len
    proj = pts @ perp
    short_len = float(proj.max() - proj.min())
    long_axis = long_len + px
    short_axis = min(short_len + px, long_axis)
    return long_axis, short_axis


def measure_nodule(fine: Grid, centre_index: np.ndarray, diameter_mm: float, subsolid: bool,
                   parenchyma_hu: float) -> Measurement:
    """Segment and measure one nodule.

    Parameters
    ----------
    fine
        HU grid (about 1 mm, axes along S, P, L).
    centre_index
        Continuous ``[z, y, x]`` index of the nodule centre in ``fine``.
    diameter_mm
        The network's diameter estimate (mm): sizes the search cube and bounds the mask.
    subsolid
        Whether the nodule is ground-glass or part-solid (threshold on the
        ground-glass level rather than the solid level).
    parenchyma_hu
        Median HU of this study's lung.

    Returns
    -------
    Measurement
        Axes on the axial plane through the centre, volume, mean HU and solid core.
    """
    spacing = fine.spacing_mm
    vox_mm = float(np.mean(spacing))
    d = float(np.clip(diameter_mm, 2.0, 40.0))
    half = int(np.ceil((0.75 * d + 6.0) / vox_mm))
    c = np.rint(centre_index).astype(int)
    lo = c - half
    hi = c + half + 1
    shape = np.array(fine.shape)
    lo_c, hi_c = np.maximum(lo, 0), np.minimum(hi, shape)
    if np.any(hi_c - lo_c < 3):
        return _fallback(d, float(fine.array[tuple(np.clip(c, 0, shape - 1))]))
    cube = fine.array[lo_c[0]:hi_c[0], lo_c[1]:hi_c[1], lo_c[2]:hi_c[2]].astype(np.float32)
    cc = c - lo_c
    if np.any(cc < 0) or np.any(cc >= np.array(cube.shape)):
        return _fallback(d, float(fine.array[tuple(np.clip(c, 0, shape - 1))]))
    smooth = ndi.gaussian_filter(cube, 0.6 / vox_mm, truncate=2.5)
    zz, yy, xx = np.ogrid[:cube.shape[0], :cube.shape[1], :cube.shape[2]]
    r2 = ((zz - cc[0]) * spacing[0]) ** 2 + ((yy - cc[1]) * spacing[1]) ** 2 + ((xx - cc[2]) * spacing[2]) ** 2
    core = r2 <= max(1.0, 0.3 * d) ** 2
    fallback = _fallback(d, float(cube[core].mean()))
    lung = float(min(parenchyma_hu, -700.0))
    if subsolid:
        ggo = smooth[core & (smooth < SOLID_HU)]
        level = float(np.median(ggo)) if ggo.size else float(np.median(smooth[core]))
        level = min(level, SOLID_HU)
    else:
        level = float(np.median(smooth[core]))
    if level - lung < 80.0:
        return fallback
    threshold = lung + 0.5 * (level - lung)
    mask = (smooth > threshold) & (r2 <= (0.75 * d + 2.5) ** 2)
    seed = _seed_voxel(mask, cc, r2, d)
    if seed is None:
        return fallback
    rho = float(np.clip(0.2 * d, 1.0, 3.0)) / vox_mm
    opened = ndi.binary_opening(mask, structure=_ball(rho)) if d >= 5.0 else mask
    if opened[seed]:
        lab, _ = ndi.label(opened)
        part = lab == lab[seed]
        part = ndi.binary_dilation(part, structure=_ball(rho)) & mask
    else:
        lab, _ = ndi.label(mask)
        part = lab == lab[seed]
    n = int(part.sum())
    voxel_mm3 = float(np.prod(spacing))
    volume = n * voxel_mm3
    eq_d = (6.0 * volume / math.pi) ** (1.0 / 3.0)
    if not 0.4 * d <= eq_d <= 2.0 * d + 2.0:
        return fallback
    zc = int(np.clip(round(float(np.argwhere(part)[:, 0].mean())) if n else cc[0], 0, cube.shape[0] - 1))
    plane = part[zc] if part[zc].any() else part[cc[0]]
    long_axis, short_axis = axial_axes(plane, spacing[1:])
    if long_axis <= 0:
        return fallback
    mean_hu = float(cube[part].mean())
    solid_core: float | None = None
    if subsolid:
        solid = part & (smooth > SOLID_HU)
        if solid.any():
            lab, _ = ndi.label(solid)
            sizes = np.bincount(lab.ravel())[1:]
            big = lab == (int(np.argmax(sizes)) + 1)
            zs = np.argwhere(big)[:, 0]
            zmid = int(round(float(zs.mean())))
            la, sa = axial_axes(big[zmid], spacing[1:])
            solid_core = round(0.5 * (la + sa), 1) if la > 0 else None
    return Measurement(round(long_axis, 1), round(max(short_axis, 0.1), 1), round(volume, 0), round(mean_hu, 1),
                       solid_core, True)


def _seed_voxel(mask: np.ndarray, cc: np.ndarray, r2: np.ndarray, d: float) -> tuple[int, int, int] | None:
    """The centre voxel if in the mask, else the mask voxel nearest to it within a quarter diameter."""
    if mask[tuple(cc)]:
        return tuple(int(v) for v in cc)  # type: ignore[return-value]
    near = mask & (r2 <= max(2.0, 0.25 * d) ** 2)
    if not near.any():
        return None
    idx = np.argwhere(near)
    k = int(np.argmin(r2[near]))
    return tuple(int(v) for v in idx[k])  # type: ignore[return-value]


def _fallback(diameter_mm: float, mean_hu: float) -> Measurement:
    d = round(float(diameter_mm), 1)
    return Measurement(d, d, round(math.pi / 6.0 * d**3, 0), round(mean_hu, 1), None, False)
