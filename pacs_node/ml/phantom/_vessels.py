"""Pulmonary artery, vein and bronchial trees grown into the lungs from the hila, and
vessel ends near the pleura.

Each style grows its trees with its own branching model (:class:`_Branching`); the
wide ``vessels`` family draws vessel density, calibre and contrast widely
(:func:`_draw_vessels`) and adds vessel branches that end as small round blobs
close to the pleura (a classic false positive).  Sites are world LPS mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from pacs_node.ml.phantom._geometry import _Canvas, _Pose, _perpendicular, _subpleural_sites
from pacs_node.ml.phantom._study import _Body, _Look
from pacs_node.ml.phantom._tubes import _paint_ball, _paint_segment, _Segment
from pacs_node.ml.phantom.truth import Tissue

_NOT_BONE = (Tissue.LUNG, Tissue.VESSEL, Tissue.AIRWAY, Tissue.SOFT)


@dataclass(frozen=True)
class _AirwayWalls:
    """How the bronchi along the arteries are drawn.

    Attributes
    ----------
    r_min
        Smallest outer radius (mm) of a drawn bronchus.
    wall_frac, wall_min_mm
        Wall thickness: ``max(wall_min_mm, wall_frac * outer radius)`` (mm).
    wall_hu
        Wall density (HU).
    """

    r_min: float
    wall_frac: float
    wall_min_mm: float
    wall_hu: float


@dataclass(frozen=True)
class _Roots:
    """Where the pulmonary trees leave the mediastinum (world LPS mm)."""

    artery: tuple[np.ndarray, np.ndarray]  # right, left
    vein: tuple[np.ndarray, np.ndarray]
    bronchus: tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Branching:
    """How a style grows and draws its trees (the defaults are the classic style).

    Attributes
    ----------
    step
        Range of the fraction of the way to the fed points' centroid a branch goes
        before splitting (short steps give wide branching angles).
    split
        Range of the smaller daughter's share of the fed points (0.5: dichotomous).
    seg_taper, end_taper
        Radius at the end of a branch / of an end branch, as a fraction of its start.
    wiggle, pieces
        Midpoint displacement (fraction of the length) and number of pieces a long
        segment is bent into (tortuosity).
    radius_jitter
        Relative random change of each branch's radius.
    gamma_shift
        Added to the study's Murray exponent (lower: faster taper).
    """

    step: tuple[float, float] = (0.3, 0.5)
    split: tuple[float, float] = (0.1, 0.5)
    seg_taper: float = 0.94
    end_taper: float = 0.75
    wiggle: float = 0.06
    pieces: int = 2
    radius_jitter: float = 0.0
    gamma_shift: float = 0.0


#: branching model of each style
BRANCHING: dict[str, _Branching] = {
    "classic": _Branching(),
    # near-dichotomous, long straight branches that taper in steps, fast Murray taper
    "lobular": _Branching(step=(0.45, 0.7), split=(0.35, 0.5), seg_taper=0.8, end_taper=0.55, wiggle=0.03,
                          gamma_shift=-0.35),
    # short steps (wide angles), very unequal splits, tortuous, irregular calibre
    "mottled": _Branching(step=(0.18, 0.35), split=(0.05, 0.5), seg_taper=0.97, end_taper=0.9, wiggle=0.16,
                          pieces=4, radius_jitter=0.2, gamma_shift=0.15),
}


def _draw_vessels(rng: np.random.Generator, L: _Look) -> tuple[_Look, dict[str, float]]:
    """Wide ``vessels`` family: vessel density, calibre, contrast or not (HU), vessel ends.

    Returns the study's look with the vessel fields replaced, and the vessel-end
    parameters (``n_ends`` per lung, blob radius range in mm, depth from the pleura in mm).
    """
    u = rng.uniform
    contrast = bool(rng.random() < 0.45)
    blood = u(25.0, 60.0)
    look = replace(
        L,
        contrast=contrast,
        vessel_density=u(0.35, 2.2),
        r_leaf=u(0.28, 0.75),
        gamma=u(2.3, 3.1),
        artery=u(150.0, 500.0) if contrast else blood,
        vein=u(100.0, 350.0) if contrast else blood,
        aorta=u(120.0, 420.0) if contrast else blood,
        blood=u(120.0, 400.0) if contrast else blood,
        myo=u(80.0, 140.0) if contrast else u(35.0, 55.0),
        liver=u(90.0, 140.0) if contrast else u(45.0, 70.0),
        spleen=u(85.0, 140.0) if contrast else u(38.0, 55.0),
    )
    ends = {"n_ends": float(rng.integers(8, 46)), "blob_lo": u(0.9, 1.5), "blob_hi": u(1.6, 2.8),
            "depth_hi": u(3.0, 9.0)}
    return look, ends


def _grow_tree(
    rng: np.random.Generator, root: np.ndarray, pts: np.ndarray, r_leaf: float, gamma: float,
    br_model: _Branching = BRANCHING["classic"],
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
    m = br_model
    jitter = m.radius_jitter > 0

    def radius(n: int) -> float:
        r = r_leaf * n ** (1.0 / gamma)
        return r * (1.0 + m.radius_jitter * rng.uniform(-1.0, 1.0)) if jitter else r

    def rec(start: np.ndarray, p: np.ndarray, depth: int) -> None:
        n = len(p)
        if n == 1 or depth > 80:
            r = radius(n)
            out.append((_Segment(start, p.mean(axis=0), r, m.end_taper * r), depth))
            return
        c = p.mean(axis=0)
        br = start + (c - start) * rng.uniform(*m.step)
        # split by a plane that contains the branch axis (Kitaoka's space division):
        # principal axis of the points seen along the branch
        d = br - start
        d /= np.linalg.norm(d) + 1e-9
        x = p - c
        x = x - np.outer(x @ d, d)
        axis = x[0] - x[1] if n == 2 else np.linalg.eigh(x.T @ x)[1][:, -1]
        order = np.argsort(x @ axis)
        # mostly monopodial: a trunk that tapers slowly and gives off smaller side branches
        q = rng.uniform(*m.split)
        cut = int(np.clip(round(n * (q if rng.random() < 0.5 else 1.0 - q)), 1, n - 1))
        r = radius(n)
        out.append((_Segment(start, br, r, m.seg_taper * r), depth))
        rec(br, p[order[:cut]], depth + 1)
        rec(br, p[order[cut:]], depth + 1)

    rec(np.asarray(root, dtype=np.float64), pts, 0)
    return out


def _wiggle(rng: np.random.Generator, seg: _Segment, br_model: _Branching = BRANCHING["classic"]) -> list[_Segment]:
    """Split a long segment at displaced points so that vessels curve (gently, in the classic style)."""
    d = seg.p1 - seg.p0
    length = float(np.linalg.norm(d))
    if length < 6.0:
        return [seg]
    if br_model.pieces != 2 or br_model.wiggle != 0.06:
        return _bend(rng, seg, d, length, br_model)
    n = rng.standard_normal(3)
    n -= d * (n @ d) / (length * length)
    mid = 0.5 * (seg.p0 + seg.p1) + n * (0.06 * length)
    rm = 0.5 * (seg.r0 + seg.r1)
    return [_Segment(seg.p0, mid, seg.r0, rm), _Segment(mid, seg.p1, rm, seg.r1)]


def _bend(rng: np.random.Generator, seg: _Segment, d: np.ndarray, length: float, m: _Branching) -> list[_Segment]:
    """Bend a segment into ``m.pieces`` pieces through randomly displaced points."""
    k = m.pieces
    t = np.linspace(0.0, 1.0, k + 1)
    pts = seg.p0[None] + t[:, None] * d[None]
    for i in range(1, k):
        n = rng.standard_normal(3)
        n -= d * (n @ d) / (length * length)
        pts[i] += n * (m.wiggle * length * math.sin(math.pi * t[i]))
    r = seg.r0 + (seg.r1 - seg.r0) * t
    return [_Segment(pts[i], pts[i + 1], float(r[i]), float(r[i + 1])) for i in range(k)]


def _render_trees(
    canvas: _Canvas, pose: _Pose, B: _Body, L: _Look, rng: np.random.Generator, roots: _Roots,
    lung_pts: np.ndarray, br_model: _Branching = BRANCHING["classic"], aw: _AirwayWalls | None = None,
    ends: list[tuple[np.ndarray, float, float]] | None = None,
) -> list[_Segment]:
    """Grow and draw the arterial, venous and bronchial trees of both lungs.

    ``br_model`` is the style's branching model; ``aw`` how bronchial walls are drawn
    (default: the classic walls from the study's look).  If ``ends`` is a list, the
    end points of the vessel trees are appended to it as ``(point, radius, HU)``.

    Returns the drawn vessel segments with radius 0.7 to 4 mm beyond the second
    generation (the places where juxtavascular nodules may be planted).
    """
    aw = aw or _AirwayWalls(L.bronchus_r_min, 0.18, 0.45, L.airway_wall)
    gamma = L.gamma + br_model.gamma_shift
    if len(lung_pts) < 20:
        return []
    g = canvas.grid
    vox_mm3 = g.spacing[0] * g.spacing[1] * g.spacing[2]
    # on coarse grids draw fewer, thicker end branches (same root calibre, Murray's law):
    # vessels much thinner than a voxel would only add cost
    px = min(g.spacing[1], g.spacing[2])
    thin = float(np.clip((0.75 / px) ** 2, 0.15, 1.0))
    r_leaf = L.r_leaf * thin ** (-1.0 / gamma)
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
            tree = _grow_tree(rng, root, sub, r_leaf, gamma, br_model)
            for seg, depth in tree:
                for piece in _wiggle(rng, seg, br_model):
                    _paint_segment(canvas, piece, hu, "max", Tissue.VESSEL, only=_NOT_BONE)
                if depth >= 2 and 0.7 <= seg.r1 <= 4.0:
                    candidates.append(seg)
                if ends is not None and seg.r1 < 1.2:
                    ends.append((seg.p1, seg.r1, hu))
                if kind == "artery" and seg.r1 >= aw.r_min:
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
                    t0, t1 = max(aw.wall_min_mm, aw.wall_frac * rb0), max(aw.wall_min_mm, aw.wall_frac * rb1)
                    walls.append(_Segment(p0, p1, rb0, rb1))
                    lumens.append(_Segment(p0, p1, max(rb0 - t0, 0.2), max(rb1 - t1, 0.2)))
    # beyond the root (which crosses the hilum) airways stay inside the lung
    in_lung = (Tissue.LUNG, Tissue.VESSEL, Tissue.AIRWAY)
    for i, seg in enumerate(walls):
        _paint_segment(canvas, seg, aw.wall_hu, "max", Tissue.AIRWAY, only=None if i in roots_i else in_lung)
    for i, seg in enumerate(lumens):
        _paint_segment(canvas, seg, -1000.0, "min", Tissue.AIRWAY, in_lung, only=None if i in roots_i else in_lung)
    return candidates


def _render_vessel_ends(
    canvas: _Canvas, rng: np.random.Generator, lung_pts: np.ndarray, ends: list[tuple[np.ndarray, float, float]],
    params: dict[str, float],
) -> int:
    """Extend vessel end branches to the pleura, ending each as a small round blob.

    ``ends`` are ``(point, radius, HU)`` of end branches (world mm, mm, HU);
    ``params`` come from :func:`_draw_vessels`.  Returns the number drawn.
    """
    if not ends or len(lung_pts) < 50:
        return 0
    n = 2 * int(params["n_ends"])
    sites, normals = _subpleural_sites(canvas, rng, lung_pts, n, (0.0, 30.0))
    ep = np.array([e[0] for e in ends])
    drawn = 0
    for s, nv in zip(sites, normals, strict=True):
        tip = s - nv * rng.uniform(1.0, params["depth_hi"])
        d = np.linalg.norm(ep - tip, axis=1)
        i = int(np.argmin(d))
        if d[i] > 40.0:
            continue
        p0, r0, hu = ends[i]
        r_tip = float(rng.uniform(0.5, 0.9))
        _paint_segment(canvas, _Segment(np.asarray(p0), tip, max(r0, r_tip), r_tip), hu, "max", Tissue.VESSEL,
                       only=_NOT_BONE)
        blob = float(rng.uniform(params["blob_lo"], params["blob_hi"]))
        _paint_ball(canvas, tip, blob, hu, "max", Tissue.VESSEL, only=(Tissue.LUNG, Tissue.VESSEL))
        drawn += 1
    return drawn
