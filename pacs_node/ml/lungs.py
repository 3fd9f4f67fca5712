"""Lung mask of a chest CT on a coarse grid (a few mm), fast enough to run on every study.

The rules are plain HU rules that hold on any scanner: air and lung are below
-400 HU, everything the body is made of is above; air that touches the border of an
axial slice is outside the patient (this also drops padding outside the
reconstruction circle, gas under the table and an open field of view); of what is
left, the big connected volumes are the lungs.  A closing with a ball of
:attr:`LungMaskParams.closing_mm` brings back what the threshold cut out of the lungs
(vessels, juxtapleural and juxtavascular nodules up to that radius), then holes are
filled and the mask is dilated by a margin so that nodules on the pleura lie inside.

Coordinates: masks are :class:`~pacs_node.ml.canonical.Grid` objects indexed
``[z, y, x]`` along S, P, L with their affine to patient LPS (mm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from scipy import ndimage as ndi

from pacs_node.imaging.volume import NotAnalysable
from pacs_node.ml.canonical import AIR_HU, Grid


class NoLungsFound(NotAnalysable):
    """The volume holds no air-filled lung large enough to analyse."""


@dataclass(frozen=True)
class LungMaskParams:
    """Parameters of :func:`lung_mask` (lengths in mm, volumes in mL, HU).

    Attributes
    ----------
    grid_mm
        Target voxel size of the coarse grid the mask is computed on.
    air_threshold_hu
        Voxels below this (after light smoothing) are air or lung.
    min_lung_ml
        Components smaller than this are not lung.
    min_fraction
        Components smaller than this fraction of the largest are not lung.
    closing_mm
        Radius of the closing ball: concavities of the lung surface narrower than
        this (juxtapleural nodules up to about twice this diameter) are filled.
    margin_mm
        Dilation of the closed mask that makes the search region.
    prism_iou, prism_span
        An enclosed air component that spans at least ``prism_span`` of the slices
        and whose slices overlap this much (intersection over union of their
        in-plane masks) is a prism: a sealed mattress or cushion on the table, not
        lung (anatomy changes along the body axis, equipment does not).
    truncated_overlap
        An air region that touches the border of a slice still counts as lung when
        at least this fraction of it lies directly above or below lung of the next
        slice (lungs cut by a small field of view or an off-centre patient).
    lobe_gap_mm
        Besides the largest air components, every component of at least
        ``min_lobe_ml`` that comes within this distance of them is lung too: a lobe
        cut off by a visible fissure, a fibrotic band or a plate of atelectasis.
        Gas below the diaphragm lies farther away (the diaphragm and the liver or
        spleen are in between).  ``0`` keeps only the largest components.
    min_lobe_ml
        Smallest such lobe (mL).
    """

    grid_mm: float = 3.0
    air_threshold_hu: float = -400.0
    min_lung_ml: float = 40.0
    min_fraction: float = 0.08
    closing_mm: float = 16.0
    margin_mm: float = 4.0
    prism_iou: float = 0.85
    prism_span: float = 0.8
    truncated_overlap: float = 0.5
    lobe_gap_mm: float = 0.0
    min_lobe_ml: float = 5.0


@dataclass(frozen=True, eq=False)
class LungMask:
    """Lung masks of one study on a coarse grid.

    Attributes
    ----------
    air
        Lung air as thresholded (inside the lungs, below the air threshold).
    filled
        ``air`` closed and hole-filled: the lungs with their vessels and nodules.
    region
        ``filled`` dilated by the margin: where nodule centres are searched for.
    lung_ml
        Volume of ``filled`` (mL).
    parenchyma_hu
        Median HU of ``air`` voxels (the lung parenchyma of this study).
    """

    air: Grid
    filled: Grid
    region: Grid
    lung_ml: float
    parenchyma_hu: float

    def bounding_box_lps(self, margin_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """LPS corners (mm) of the axis-aligned box around :attr:`region`, grown by a margin."""
        idx = np.argwhere(self.region.array)
        lo, hi = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        world = self.region.index_to_world(corners)
        return world.min(axis=0) - margin_mm, world.max(axis=0) + margin_mm


def _coarse(volume: hd.Volume, grid_mm: float) -> Grid:
    """Strided sample of a canonical volume at about ``grid_mm`` per voxel, lightly smoothed."""
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    step = np.maximum(1, np.rint(grid_mm / spacing).astype(int))
    # a new array: padding below air (-2000, -3024 HU) must not be clipped in the caller's volume
    arr = np.maximum(volume.array[:: step[0], :: step[1], :: step[2]], np.float32(AIR_HU), dtype=np.float32)
    arr = ndi.gaussian_filter(arr, 0.7, truncate=2.0)
    affine = np.array(volume.affine, dtype=np.float64)
    affine[:3, :3] = affine[:3, :3] * step[None, :]
    return Grid(arr, affine)


def _boxed(mask: np.ndarray, pad: int, op: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``op`` on the box around ``mask``'s voxels grown by ``pad`` (``False`` beyond the array), ``False`` elsewhere.

    For operations whose result is ``False`` farther than ``pad`` voxels from the mask
    (dilation and closing by less than ``pad`` voxels): the same result, on far fewer voxels.
    """
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    lo, hi = [], []
    for a in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(b for b in range(mask.ndim) if b != a)))
        lo.append(int(hit[0]) - pad)
        hi.append(int(hit[-1]) + pad + 1)
    src = tuple(slice(max(l, 0), min(h, n)) for l, h, n in zip(lo, hi, mask.shape, strict=True))
    dst = tuple(slice(s.start - l, s.stop - l) for s, l in zip(src, lo, strict=True))
    box = np.zeros([h - l for l, h in zip(lo, hi, strict=True)], dtype=bool)
    box[dst] = mask[src]
    out[src] = op(box)[dst]
    return out


def _reach(radius_mm: float, spacing: np.ndarray) -> int:
    """Voxels of margin beyond which a ball of ``radius_mm`` never reaches."""
    return int(np.ceil(radius_mm / spacing.min())) + 1


def _close(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Morphological closing with a ball (mm), via distance transforms, on the mask's box plus a margin."""
    def close(box: np.ndarray) -> np.ndarray:
        outside = ndi.distance_transform_edt(~box, sampling=spacing) > radius_mm
        # dilation = ~outside; erosion of it keeps voxels farther than r from `outside`
        return ndi.distance_transform_edt(~outside, sampling=spacing) > radius_mm

    return _boxed(mask, _reach(radius_mm, spacing), close)


def _dilate(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    if radius_mm <= 0:
        return mask.copy()
    return _boxed(mask, _reach(radius_mm, spacing),
                  lambda box: ndi.distance_transform_edt(~box, sampling=spacing) <= radius_mm)


def _drop_prisms(inside: np.ndarray, p: LungMaskParams, voxel_ml: float) -> None:
    """Remove (in place) enclosed air that is the same in almost every slice: table equipment, not lung.

    A mattress sealed in its cover (or a vacuum cushion) is as dark as lung and
    closed on all sides in each slice, but it is an extrusion along the table: its
    slices coincide.  Lungs change shape from apex to base.
    """
    labels, _ = ndi.label(inside)
    nz = inside.shape[0]
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or box[0].stop - box[0].start < p.prism_span * nz:
            continue
        component = labels[box] == i
        if component.sum() * voxel_ml < p.min_lung_ml:
            continue
        union = component.any(axis=0).sum()
        common = component.all(axis=0).sum()
        if union and common / union >= p.prism_iou:
            inside[box][component] = False


def _add_truncated(inside: np.ndarray, flat: np.ndarray, n_flat: int, border: np.ndarray, overlap: float) -> None:
    """Add (in place) border-touching air regions that continue enclosed air of the next slice.

    ``flat`` labels the air of each slice separately; ``border`` lists the labels
    that touch the slice border.  A lung cut by the edge of the field of view touches
    the border in some slices, but lies right under or over lung of its neighbour
    slice; outside air never does.  Grown slice by slice until nothing changes.
    """
    if len(border) == 0 or inside.shape[0] < 2:
        return
    candidate = np.zeros(n_flat + 1, dtype=bool)
    candidate[border] = True
    area = np.bincount(flat.ravel(), minlength=n_flat + 1)
    while True:
        next_to = np.zeros_like(inside)
        next_to[1:] |= inside[:-1]
        next_to[:-1] |= inside[1:]
        touching = np.bincount(flat[next_to & ~inside], minlength=n_flat + 1)
        grow = candidate & (touching >= overlap * np.maximum(area, 1))
        if not grow.any():
            return
        candidate &= ~grow
        inside |= grow[flat]


def _add_lobes(labels: np.ndarray, keep: list[int], sizes_ml: np.ndarray, p: LungMaskParams,
               spacing: np.ndarray) -> list[int]:
    """``keep`` plus the components of at least ``p.min_lobe_ml`` within ``p.lobe_gap_mm`` of kept lung.

    Repeated (at most three times) so that a lobe next to an added lobe joins too.
    """
    keep = list(keep)
    for _ in range(3):
        near = _dilate(np.isin(labels, keep), p.lobe_gap_mm, spacing)
        extra = [int(i) for i in np.unique(labels[near])
                 if i > 0 and i not in keep and sizes_ml[i - 1] >= p.min_lobe_ml]
        if not extra:
            break
        keep += extra
    return keep


def lung_mask(volume: hd.Volume, params: LungMaskParams | None = None) -> LungMask:
    """Segment the lungs of a canonical CT volume (see :func:`~pacs_node.ml.canonical.orient`).

    Parameters
    ----------
    volume
        HU volume whose axes run along S, P, L.
    params
        Thresholds and sizes; defaults suit adult chest CT.

    Returns
    -------
    LungMask
        Masks on a grid of about ``params.grid_mm`` per voxel.

    Raises
    ------
    NoLungsFound
        If no air-filled component of at least ``params.min_lung_ml`` is inside the body.
    """
    p = params or LungMaskParams()
    coarse = _coarse(volume, p.grid_mm)
    spacing = coarse.spacing_mm
    voxel_ml = float(np.prod(spacing)) / 1000.0
    air = coarse.array < p.air_threshold_hu
    # outside air: per axial slice, the air components that touch the slice border
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    flat, n_flat = ndi.label(air, structure=in_plane)
    border = np.unique(np.concatenate([flat[:, 0, :].ravel(), flat[:, -1, :].ravel(),
                                       flat[:, :, 0].ravel(), flat[:, :, -1].ravel()]))
    border = border[border > 0]
    inside = air & ~np.isin(flat, border)
    _drop_prisms(inside, p, voxel_ml)
    _add_truncated(inside, flat, n_flat, border, p.truncated_overlap)
    del flat
    labels, n = ndi.label(inside)
    if n == 0:
        raise NoLungsFound("no air-filled region inside the body (not a chest CT?)")
    sizes = np.bincount(labels.ravel())[1:] * voxel_ml
    order = np.argsort(sizes)[::-1]
    keep = [int(i) + 1 for i in order[:3] if sizes[i] >= max(p.min_lung_ml, p.min_fraction * sizes[order[0]])]
    if not keep:
        raise NoLungsFound(f"largest air-filled region inside the body is {sizes[order[0]]:.0f} mL, "
                           f"less than {p.min_lung_ml:.0f} mL of lung")
    if p.lobe_gap_mm > 0:
        keep = _add_lobes(labels, keep, sizes, p, spacing)
    lung_air = np.isin(labels, keep)
    del labels
    parenchyma = float(np.median(coarse.array[lung_air]))
    filled = _close(lung_air, p.closing_mm, spacing)
    filled = ndi.binary_fill_holes(filled | lung_air)
    region = _dilate(filled, p.margin_mm, spacing)
    return LungMask(
        air=Grid(lung_air, coarse.affine),
        filled=Grid(filled, coarse.affine),
        region=Grid(region, coarse.affine),
        lung_ml=float(filled.sum()) * voxel_ml,
        parenchyma_hu=parenchyma,
    )
