"""Pulmonary artery, vein and bronchial trees grown into the lungs from the hila."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pacs_node.ml.phantom._geometry import _Canvas, _Pose, _perpendicular
from pacs_node.ml.phantom._study import _Body, _Look
from pacs_node.ml.phantom._tubes import _paint_segment, _Segment
from pacs_node.ml.phantom.truth import Tissue

_NOT_BONE = (Tissue.LUNG, Tissue.VESSEL, Tissue.AIRWAY, Tissue.SOFT)


@dataclass(frozen=True)
class _Roots:
    """Where the pulmonary trees leave the mediastinum (world LPS mm)."""

    artery: tuple[np.ndarray, np.ndarray]  # right, left
    vein: tuple[np.ndarray, np.ndarray]
    bronchus: tuple[np.ndarray, np.ndarray]


def _grow_tree(
    rng: np.random.Generator, root: np.ndarray, pts: np.ndarray, r_leaf: float, gamma: float
) -> list[tuple[_Segment, int]]:
    """Grow a space-filling branching tree from ``root`` to every point of ``pts``.

    Kitaoka-style space division: a branch heads part of the way towards the centroid
    of the points it feeds, then those points are split (into unequal parts, for
    asymmetric branching) by a plane containing the branch axis, and each part gets
    a daughter branch.  A segment feeding ``n`` end points has radius
    ``r_leaf * n ** (1 / gamma)`` (Murray's law with equal end flows), so vessels
    taper from the hilum to the periphery.  Returns ``(segment, generation)`` pairs.
    """
    out: list[tuple[_Segment, int]] = []

    def radius(n: int) -> float:
        return r_leaf * n ** (1.0 / gamma)

    def rec(start: np.ndarray, p: np.ndarray, depth: int) -> None:
        n = len(p)
        if n == 1 or depth > 80:
            out.append((_Segment(start, p.mean(axis=0), radius(n), 0.75 * radius(n)), depth))
            return
        c = p.mean(axis=0)
        br = start + (c - start) * rng.uniform(0.3, 0.5)
        # split by a plane that contains the branch axis (Kitaoka's space division):
        # principal axis of the points seen along the branch
        d = br - start
        d /= np.linalg.norm(d) + 1e-9
        x = p - c
        x = x - np.outer(x @ d, d)
        axis = x[0] - x[1] if n == 2 else np.linalg.eigh(x.T @ x)[1][:, -1]
        order = np.argsort(x @ axis)
        # mostly monopodial: a trunk that tapers slowly and gives off smaller side branches
        q = rng.uniform(0.1, 0.5)
        cut = int(np.clip(round(n * (q if rng.random() < 0.5 else 1.0 - q)), 1, n - 1))
        out.append((_Segment(start, br, radius(n), 0.94 * radius(n)), depth))
        rec(br, p[order[:cut]], depth + 1)
        rec(br, p[order[cut:]], depth + 1)

    rec(np.asarray(root, dtype=np.float64), pts, 0)
    return out


def _wiggle(rng: np.random.Generator, seg: _Segment) -> list[_Segment]:
    """Split a long segment at a displaced midpoint so that vessels curve gently."""
    d = seg.p1 - seg.p0
    length = float(np.linalg.norm(d))
    if length < 6.0:
        return [seg]
    n = rng.standard_normal(3)
    n -= d * (n @ d) / (length * length)
    mid = 0.5 * (seg.p0 + seg.p1) + n * (0.06 * length)
    rm = 0.5 * (seg.r0 + seg.r1)
    return [_Segment(seg.p0, mid, seg.r0, rm), _Segment(mid, seg.p1, rm, seg.r1)]


def _render_trees(
    canvas: _Canvas, pose: _Pose, B: _Body, L: _Look, rng: np.random.Generator, roots: _Roots,
    lung_pts: np.ndarray,
) -> list[_Segment]:
    """Grow and draw the arterial, venous and bronchial trees of both lungs.

    Returns the drawn vessel segments with radius 0.7 to 4 mm beyond the second
    generation (the places where juxtavascular nodules may be planted).
    """
    if len(lung_pts) < 20:
        return []
    g = canvas.grid
    vox_mm3 = g.spacing[0] * g.spacing[1] * g.spacing[2]
    # on coarse grids draw fewer, thicker end branches (same root calibre, Murray's law):
    # vessels much thinner than a voxel would only add cost
    px = min(g.spacing[1], g.spacing[2])
    thin = float(np.clip((0.75 / px) ** 2, 0.15, 1.0))
    r_leaf = L.r_leaf * thin ** (-1.0 / L.gamma)
    a = pose.to_body(lung_pts)[:, 0]
    lung_litres = float(np.count_nonzero(canvas.lab == Tissue.LUNG)) * vox_mm3 * 1e-6
    candidates: list[_Segment] = []
    roots_i: set[int] = set()
    walls: list[_Segment] = []
    lumens: list[_Segment] = []
    for side in (0, 1):
        pts = lung_pts[(a < B.m0) if side == 0 else (a >= B.m0)]
        if len(pts) < 10:
            continue
        # lung volume of this side from the fraction of lung voxels it holds
        vol_l = len(pts) / len(lung_pts) * lung_litres
        n_att = int(np.clip(L.vessel_density * 650.0 * vol_l * thin, 30, 2600))
        n_att = min(n_att, len(pts) // 2)
        for kind, root, hu in (("artery", roots.artery[side], L.artery), ("vein", roots.vein[side], L.vein)):
            sub = pts[rng.choice(len(pts), n_att, replace=False)]
            tree = _grow_tree(rng, root, sub, r_leaf, L.gamma)
            for seg, depth in tree:
                for piece in _wiggle(rng, seg):
                    _paint_segment(canvas, piece, hu, "max", Tissue.VESSEL, only=_NOT_BONE)
                if depth >= 2 and 0.7 <= seg.r1 <= 4.0:
                    candidates.append(seg)
                if kind == "artery" and seg.r1 >= L.bronchus_r_min:
                    d = seg.p1 - seg.p0
                    if float(d @ d) < 1e-6:
                        continue
                    o = _perpendicular(d)
                    kb = 0.85 + 0.15 * math.tanh(depth / 3.0)
                    rb0, rb1 = kb * seg.r0, kb * seg.r1
                    p0 = seg.p0 + o * (seg.r0 + rb0 + 0.4)
                    p1 = seg.p1 + o * (seg.r1 + rb1 + 0.4)
                    if depth == 0:
                        p0 = roots.bronchus[side]
                        roots_i.add(len(walls))
                    t0, t1 = max(0.45, 0.18 * rb0), max(0.45, 0.18 * rb1)
                    walls.append(_Segment(p0, p1, rb0, rb1))
                    lumens.append(_Segment(p0, p1, max(rb0 - t0, 0.2), max(rb1 - t1, 0.2)))
    # beyond the root (which crosses the hilum) airways stay inside the lung
    in_lung = (Tissue.LUNG, Tissue.VESSEL, Tissue.AIRWAY)
    for i, seg in enumerate(walls):
        _paint_segment(canvas, seg, L.airway_wall, "max", Tissue.AIRWAY, only=None if i in roots_i else in_lung)
    for i, seg in enumerate(lumens):
        _paint_segment(canvas, seg, -1000.0, "min", Tissue.AIRWAY, in_lung, only=None if i in roots_i else in_lung)
    return candidates
