"""Tapered tubes (vessels, airways, bones, spicules), balls, chains and plates drawn inside
their bounding boxes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pacs_node.ml.phantom._geometry import _Canvas, _perpendicular, _Pose
from pacs_node.ml.phantom.truth import Tissue


@dataclass(frozen=True)
class _Segment:
    """A tapered tube from ``p0`` to ``p1`` (world LPS mm) with end radii ``r0``, ``r1`` (mm)."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float


def _capsule_fraction(
    z: np.ndarray, y: np.ndarray, x: np.ndarray, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float,
    spacing: tuple[float, float, float],
) -> np.ndarray:
    """Partial-volume occupancy of a tapered capsule on a box of voxel centres (mm)."""
    ax, ay, az = p0.tolist()
    d0, d1, d2 = (p1 - p0).tolist()
    l2 = d0 * d0 + d1 * d1 + d2 * d2 + 1e-9
    ex, ey, ez = x - ax, y - ay, z - az
    t = np.clip((ex * (d0 / l2) + ey * (d1 / l2)) + ez * (d2 / l2), 0.0, 1.0)
    ex = ex - t * d0
    ey = ey - t * d1
    ez = ez - t * d2
    sxy2 = spacing[2] * spacing[2]
    sz2 = spacing[0] * spacing[0]
    rr = ex * ex + ey * ey
    dist2 = rr + ez * ez + 1e-6
    dist = np.sqrt(dist2)
    # voxel width across the surface: the box filter projected on the surface normal
    w = np.sqrt((rr * sxy2 + ez * ez * sz2) / dist2)
    return np.clip((r0 + (r1 - r0) * t - dist) / w + 0.5, 0.0, 1.0)


def _paint_segment(
    canvas: _Canvas, seg: _Segment, hu: float, mode: str, label: int | None,
    relabel: tuple[int, ...] = (Tissue.LUNG,), only: tuple[int, ...] | None = None,
) -> None:
    """Draw one tube into the canvas within its bounding box.

    ``mode`` ``"over"`` replaces by occupancy, ``"max"`` only brightens (vessels),
    ``"min"`` only darkens (air lumens).  Voxels more than half inside get ``label``
    if their current label is one of ``relabel`` (any label when ``relabel`` is empty).
    With ``only``, voxels with other labels are left untouched.
    """
    g = canvas.grid
    dz, dy, dx = g.spacing
    ox, oy, oz = g.origin
    nz, ny, nx = g.shape
    x0, y0, z0 = seg.p0.tolist()
    x1, y1, z1 = seg.p1.tolist()
    rm = max(seg.r0, seg.r1) + 1.5 * max(dz, dy, dx)
    i0, i1 = max(0, math.ceil((min(x0, x1) - rm - ox) / dx)), min(nx, math.floor((max(x0, x1) + rm - ox) / dx) + 1)
    j0, j1 = max(0, math.ceil((min(y0, y1) - rm - oy) / dy)), min(ny, math.floor((max(y0, y1) + rm - oy) / dy) + 1)
    k0, k1 = max(0, math.ceil((min(z0, z1) - rm - oz) / dz)), min(nz, math.floor((max(z0, z1) + rm - oz) / dz) + 1)
    if i0 >= i1 or j0 >= j1 or k0 >= k1:
        return
    z = canvas.zs[k0:k1, None, None]
    y = canvas.ys[None, j0:j1, None]
    x = canvas.xs[None, None, i0:i1]
    f = _capsule_fraction(z, y, x, seg.p0, seg.p1, seg.r0, seg.r1, g.spacing)
    if only is not None:
        lab0 = canvas.lab[k0:k1, j0:j1, i0:i1]
        keep = lab0 == only[0]
        for o in only[1:]:
            keep |= lab0 == o
        f = f * keep
    v = canvas.vol[k0:k1, j0:j1, i0:i1]
    if mode == "over":
        v += f * (hu - v)
    elif mode == "max":
        v += f * np.maximum(hu - v, 0.0)
    else:
        v += f * np.minimum(hu - v, 0.0)
    if label is not None:
        lab = canvas.lab[k0:k1, j0:j1, i0:i1]
        m = f > 0.5
        if relabel:
            sel = lab == relabel[0]
            for r in relabel[1:]:
                sel |= lab == r
            m &= sel
        lab[m] = label


def _polyline(pose: _Pose, pts_abz: Sequence[Sequence[float]], radii: Sequence[float]) -> list[_Segment]:
    """Segments of a body-frame polyline, converted to world coordinates."""
    w = pose.to_world(np.asarray(pts_abz, dtype=np.float64))
    return [_Segment(w[i], w[i + 1], float(radii[i]), float(radii[i + 1])) for i in range(len(w) - 1)]


def _paint_ball(
    canvas: _Canvas, c: np.ndarray, r: float, hu: float, mode: str, label: int | None,
    relabel: tuple[int, ...] = (Tissue.LUNG,), only: tuple[int, ...] | None = None,
) -> None:
    """Draw a ball of radius ``r`` (mm) centred at world ``c`` (LPS mm); see :func:`_paint_segment`."""
    c = np.asarray(c, dtype=np.float64)
    _paint_segment(canvas, _Segment(c, c, float(r), float(r)), hu, mode, label, relabel, only)


def _paint_chain(
    canvas: _Canvas, pts: np.ndarray, r0: float, r1: float, hu: float, label: int | None,
    only: tuple[int, ...] | None, mode: str = "over",
) -> None:
    """Draw a polyline of world points ``(n, 3)`` (mm) whose radius goes from ``r0`` to ``r1`` (mm).

    Voxels more than half inside take ``label`` if their label is one of ``only``.
    """
    n = len(pts)
    radii = np.linspace(r0, r1, n)
    for i in range(n - 1):
        seg = _Segment(np.asarray(pts[i], dtype=np.float64), np.asarray(pts[i + 1], dtype=np.float64),
                       float(radii[i]), float(radii[i + 1]))
        _paint_segment(canvas, seg, hu, mode, label, only or (), only)


def _paint_plate(
    canvas: _Canvas, c: np.ndarray, normal: np.ndarray, half_length: float, half_width: float, thickness: float,
    hu: float, label: int | None, only: tuple[int, ...] | None, rng: np.random.Generator,
) -> None:
    """Draw an elliptical plate (a sheet ``thickness`` mm thick) centred at world ``c`` (mm).

    The plate lies across ``normal``, with semi-axes ``half_length`` and ``half_width``
    (mm) turned by a random angle about the normal.  It is built of parallel
    capsules, so it has rounded edges.
    """
    n = np.asarray(normal, dtype=np.float64)
    n = n / (np.linalg.norm(n) + 1e-9)
    e1 = _perpendicular(n)
    e2 = np.cross(n, e1)
    phi = float(rng.uniform(0.0, math.pi))
    e1, e2 = math.cos(phi) * e1 + math.sin(phi) * e2, -math.sin(phi) * e1 + math.cos(phi) * e2
    r = 0.5 * thickness
    step = max(0.7 * thickness, 0.6)
    for k in np.arange(-half_width, half_width + 1e-6, step):
        chord = half_length * math.sqrt(max(0.0, 1.0 - (k / (half_width + 1e-9)) ** 2))
        if chord <= 0.0:
            continue
        p = np.asarray(c, dtype=np.float64) + k * e2
        seg = _Segment(p - chord * e1, p + chord * e1, r, r)
        _paint_segment(canvas, seg, hu, "over", label, only or (), only)
