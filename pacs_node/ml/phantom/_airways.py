"""Airways of the ``airways`` family: bronchi down to sub-segmental level with varied
walls, cranio-caudal bronchi that cut axial slices as air rings with a companion
artery (signet ring), mucus plugs and tree-in-bud clusters.

Lengths are mm, densities HU, sites world LPS mm.  Airway walls, lumens and plugs
are labelled :attr:`Tissue.AIRWAY`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pacs_node.ml.phantom._geometry import _Canvas, _perpendicular, _subpleural_sites
from pacs_node.ml.phantom._tubes import _paint_ball, _paint_segment, _Segment
from pacs_node.ml.phantom._vessels import _AirwayWalls
from pacs_node.ml.phantom.truth import Tissue

_IN_LUNG = (Tissue.LUNG, Tissue.VESSEL, Tissue.AIRWAY)


@dataclass(frozen=True)
class _Airways:
    """The wide airways of one study.

    Attributes
    ----------
    walls
        How the bronchi along the arteries are drawn (smallest radius, wall thickness, HU).
    n_axial
        Extra bronchi running cranio-caudally (within 30 degrees of z): each cuts
        the axial slices as an air ring with a wall, beside its artery.
    wall_thick_p
        Fraction of those bronchi with thickened walls.
    n_plugs
        Bronchi filled with mucus (soft tissue, ``plug_hu``), often branching.
    n_tib
        Tree-in-bud clusters (small plugged bronchioles ending in buds) near the pleura.
    plug_hu
        Density range (HU) of mucus.
    """

    walls: _AirwayWalls
    n_axial: int
    wall_thick_p: float
    n_plugs: int
    n_tib: int
    plug_hu: tuple[float, float]


def _draw_airways(rng: np.random.Generator) -> _Airways:
    """Draw the wide airways of one study."""
    u = rng.uniform
    walls = _AirwayWalls(r_min=u(0.6, 1.2), wall_frac=u(0.12, 0.38), wall_min_mm=u(0.3, 0.9), wall_hu=u(-20.0, 90.0))
    return _Airways(
        walls=walls,
        n_axial=int(rng.integers(15, 71)),
        wall_thick_p=u(0.0, 0.5),
        n_plugs=int(rng.choice([0, rng.integers(1, 7)], p=[0.45, 0.55])),
        n_tib=int(rng.choice([0, rng.integers(1, 5)], p=[0.6, 0.4])),
        plug_hu=(u(-10.0, 20.0), u(20.0, 45.0)),
    )


def _tilted_z(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A unit vector within ``max_deg`` of +z (either sense)."""
    th = math.radians(max_deg) * math.sqrt(float(rng.uniform(0.0, 1.0)))
    ph = float(rng.uniform(0.0, 2 * math.pi))
    v = np.array([math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th)])
    return v if rng.random() < 0.5 else -v


def _bronchus(
    canvas: _Canvas, p0: np.ndarray, p1: np.ndarray, r0: float, r1: float, wall: float, wall_hu: float,
    fill_hu: float,
) -> None:
    """Draw one bronchus (wall, then lumen of air or of mucus ``fill_hu``) between world points (mm)."""
    _paint_segment(canvas, _Segment(p0, p1, r0, r1), wall_hu, "max", Tissue.AIRWAY, _IN_LUNG, only=_IN_LUNG)
    lumen = _Segment(p0, p1, max(r0 - wall, 0.3), max(r1 - wall, 0.3))
    mode = "min" if fill_hu <= -900.0 else "over"
    _paint_segment(canvas, lumen, fill_hu, mode, Tissue.AIRWAY, _IN_LUNG, only=_IN_LUNG)


def _render_airway_extras(
    canvas: _Canvas, A: _Airways, rng: np.random.Generator, lung_pts: np.ndarray, artery_hu: float
) -> dict[str, int]:
    """Draw the cranio-caudal bronchi, mucus plugs and tree-in-bud clusters; returns counts."""
    counts = {"airway_rings": 0, "mucus_plugs": 0, "tree_in_bud": 0}
    if len(lung_pts) < 50:
        return counts
    ok_lab = (Tissue.LUNG, Tissue.VESSEL)
    n_try = 3 * (A.n_axial + A.n_plugs) + 10
    starts = lung_pts[rng.integers(0, len(lung_pts), n_try)]
    it = iter(starts)
    for kind, n in (("ring", A.n_axial), ("plug", A.n_plugs)):
        done = 0
        while done < n:
            p = next(it, None)
            if p is None:
                break
            d = _tilted_z(rng, 30.0 if kind == "ring" else 70.0)
            length = float(rng.uniform(8.0, 35.0))
            r = float(rng.uniform(1.2, 4.5)) if kind == "ring" else float(rng.uniform(1.5, 4.0))
            p1 = p + length * d
            if np.any(~np.isin(canvas.labels_at(np.stack([p, 0.5 * (p + p1), p1])), ok_lab)):
                continue
            thick = rng.random() < A.wall_thick_p
            wall = max(A.walls.wall_min_mm, A.walls.wall_frac * r) * (float(rng.uniform(1.6, 2.6)) if thick else 1.0)
            wall = min(wall, 0.6 * r)
            fill = -1000.0 if kind == "ring" else float(rng.uniform(*A.plug_hu))
            _bronchus(canvas, p, p1, r, 0.9 * r, wall, A.walls.wall_hu, fill)
            if kind == "ring":
                # companion artery alongside (bronchovascular bundle)
                o = _perpendicular(d)
                ra = r * float(rng.uniform(0.7, 1.2))
                off = o * (r + ra + 0.3)
                _paint_segment(canvas, _Segment(p + off, p1 + off, ra, 0.9 * ra), artery_hu, "max", Tissue.VESSEL,
                               only=(Tissue.LUNG, Tissue.VESSEL))
            if rng.random() < (0.3 if kind == "ring" else 0.6):
                # bifurcation at the far end: two daughters diverging 20 to 40 degrees
                e = _perpendicular(d)
                for sgn in (-1.0, 1.0):
                    ang = math.radians(float(rng.uniform(20.0, 40.0)))
                    dd = math.cos(ang) * d + sgn * math.sin(ang) * e
                    q1 = p1 + float(rng.uniform(6.0, 18.0)) * dd
                    rd = 0.75 * r
                    _bronchus(canvas, p1, q1, rd, 0.85 * rd, min(wall, 0.6 * rd), A.walls.wall_hu, fill)
            done += 1
        counts["airway_rings" if kind == "ring" else "mucus_plugs"] = done
    # tree-in-bud: small branching plugged bronchioles ending in buds, near the pleura
    sites, normals = _subpleural_sites(canvas, rng, lung_pts, A.n_tib, (0.0, 25.0))
    for s, nv in zip(sites, normals, strict=True):
        hu = float(rng.uniform(*A.plug_hu))
        root = s - nv * float(rng.uniform(8.0, 16.0))
        stack = [(root, nv.copy(), 0)]
        while stack:
            p, d, gen = stack.pop()
            d = d / np.linalg.norm(d) + 0.4 * rng.standard_normal(3)
            d /= np.linalg.norm(d) + 1e-9
            q = p + float(rng.uniform(3.0, 7.0)) * d
            r = float(rng.uniform(0.6, 1.1))
            _paint_segment(canvas, _Segment(p, q, r, 0.8 * r), hu, "max", Tissue.AIRWAY, _IN_LUNG, only=_IN_LUNG)
            if gen >= 2:
                _paint_ball(canvas, q, float(rng.uniform(1.0, 1.8)), hu, "max", Tissue.AIRWAY, _IN_LUNG, only=_IN_LUNG)
            else:
                stack += [(q, d, gen + 1), (q, d, gen + 1)]
        counts["tree_in_bud"] += 1
    return counts
