"""Where nodules go: the classic site search, and the wide family's sites (costal and
diaphragmatic pleura, mediastinum and heart border, fissures, vessels, free lung)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pacs_node.ml.phantom._geometry import _Canvas, _Pose, _random_normal_to, _unit
from pacs_node.ml.phantom._nodule_specs import _NoduleSpec
from pacs_node.ml.phantom._study import _Body
from pacs_node.ml.phantom._tubes import _Segment
from pacs_node.ml.phantom.truth import Tissue

_LUNGISH = (Tissue.LUNG, Tissue.VESSEL)
_WALL = (Tissue.SOFT, Tissue.BONE)


def _sphere_labels(canvas: _Canvas, c: np.ndarray, r: float) -> np.ndarray:
    """Labels of the voxels whose centres lie within ``r`` mm of ``c``."""
    bx = canvas.box(c - r, c + r)
    if bx is None:
        return np.zeros(0, dtype=np.uint8)
    sl, z, y, x = bx
    m = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r * r
    return canvas.lab[sl][m]


def _find_site(
    canvas: _Canvas, rng: np.random.Generator, spec: _NoduleSpec, lung_pts: np.ndarray,
    vessels: list[_Segment], placed: list[tuple[np.ndarray, float]], attempts: int = 250,
) -> np.ndarray | None:
    """Find a centre (world mm) for a nodule at the requested kind of location (classic)."""
    R = spec.diameter / 2.0
    g = canvas.grid
    lo = np.array(g.origin) + R + 2.0
    hi = np.array(g.origin) + (np.array(g.shape[::-1]) - 1) * np.array(g.spacing[::-1]) - R - 2.0
    if np.any(hi <= lo) or len(lung_pts) == 0:
        return None
    for _ in range(attempts):
        if spec.location == "juxtavascular":
            if not vessels:
                return None
            seg = vessels[int(rng.integers(len(vessels)))]
            d = seg.p1 - seg.p0
            n = _random_normal_to(rng, d)
            t = rng.uniform(0.2, 0.8)
            rv = seg.r0 + t * (seg.r1 - seg.r0)
            c = seg.p0 + t * d + n * (R + rv * rng.uniform(0.1, 0.8))
        elif spec.location == "juxtapleural":
            p = lung_pts[int(rng.integers(len(lung_pts)))]
            u = _unit(rng)
            steps = np.arange(1, 120) * 0.6
            labs = canvas.labels_at(p + steps[:, None] * u)
            hit = np.nonzero(np.isin(labs, _WALL))[0]
            if len(hit) == 0 or np.any(~np.isin(labs[: hit[0]], _LUNGISH)):
                continue
            c = p + (steps[hit[0]] - 0.3 - R * rng.uniform(0.7, 0.95)) * u
        else:
            c = lung_pts[int(rng.integers(len(lung_pts)))]
        if np.any(c < lo) or np.any(c > hi):
            continue
        if canvas.labels_at(c)[0] != Tissue.LUNG:
            continue
        if any(np.linalg.norm(c - pc) < R + pr + 4.0 for pc, pr in placed):
            continue
        inner = _sphere_labels(canvas, c, R)
        if len(inner) == 0:
            continue
        lungish = np.isin(inner, _LUNGISH).mean()
        vessel = float((inner == Tissue.VESSEL).mean())
        if spec.location == "juxtapleural":
            if lungish < 0.7 or not np.isin(_sphere_labels(canvas, c, R + 1.5), _WALL).any():
                continue
        else:
            outer = _sphere_labels(canvas, c, R + 2.5)
            if not np.isin(outer, _LUNGISH).all():
                continue
            if spec.location == "free" and vessel > 0.15:
                continue
            if spec.location == "juxtavascular" and (vessel > 0.35 or vessel == 0.0):
                continue
        return c
    return None


# ---------------------------------------------------------------- wide family


@dataclass(frozen=True)
class _Site:
    """A nodule centre (world mm) and, against a wall or on a fissure, the unit normal
    (world) along which the nodule is flattened (towards the wall / across the fissure)."""

    centre: np.ndarray
    normal: np.ndarray | None


def _fissure_zb(B: _Body, side: int, a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """Body-frame height (mm) of fissure ``side`` (0 right major, 1 left major, 2 right minor)."""
    z0, sb, sa = B.fissures[side]
    return z0 + sb * b + sa * (a - B.m0)


def _on_fissure_side(B: _Body, side: int, a: float, b: float) -> bool:
    """Whether body-frame ``(a, b)`` lies in the lung that holds fissure ``side``."""
    if side == 1:
        return a > B.m0
    return a < B.m0 and (side == 0 or b < 0.1 * B.Dpc)


def _fissure_normal(pose: _Pose, B: _Body, side: int, abz: np.ndarray) -> np.ndarray:
    """Unit normal (world) of fissure ``side`` at body-frame point ``abz`` on it."""
    _, sb, sa = B.fissures[side]
    a, b, zb = abz
    w = pose.to_world(np.array([[a, b, zb], [a + 1.0, b, zb + sa], [a, b + 1.0, zb + sb]]))
    n = np.cross(w[1] - w[0], w[2] - w[0])
    return n / np.linalg.norm(n)


def _wall_normal(canvas: _Canvas, h: np.ndarray, r: float = 5.0) -> np.ndarray | None:
    """Unit vector (world) from the lung towards the wall near the wall point ``h``."""
    bx = canvas.box(h - r, h + r)
    if bx is None:
        return None
    sl, z, y, x = bx
    lab = canvas.lab[sl]
    wall, lung = np.isin(lab, _WALL), np.isin(lab, _LUNGISH)
    if not wall.any() or not lung.any():
        return None
    zz, yy, xx = np.broadcast_arrays(z, y, x)
    d = np.array([xx[wall].mean() - xx[lung].mean(), yy[wall].mean() - yy[lung].mean(),
                  zz[wall].mean() - zz[lung].mean()])
    nd = float(np.linalg.norm(d))
    return None if nd < 1e-6 else d / nd


def _wall_kind(B: _Body | None, pose: _Pose | None, h: np.ndarray, n: np.ndarray) -> str:
    """``"diaphragm"``, ``"mediastinal"`` or ``"costal"`` for a wall point ``h`` with normal ``n``."""
    if n[2] < -0.7:
        return "diaphragm"
    if B is None or pose is None:
        return "costal"
    ab = pose.to_body(np.array([h, h + n]))
    a, nb = ab[0, 0], ab[1] - ab[0]
    hw = float(np.interp(ab[0, 2], B.hw_z, B.hw_v))
    if abs(a - B.m0) < 1.6 * hw + 15.0 and nb[0] * np.sign(B.m0 - a) > 0.4:
        return "mediastinal"
    return "costal"


def _ray_to_wall(canvas: _Canvas, p: np.ndarray, u: np.ndarray, reach: float = 80.0) -> np.ndarray | None:
    """First chest-wall or mediastinal point along ``u`` from lung point ``p`` (world mm)."""
    steps = np.arange(1, int(reach / 0.6)) * 0.6
    labs = canvas.labels_at(p + steps[:, None] * u)
    hit = np.nonzero(~np.isin(labs, _LUNGISH))[0]
    if len(hit) == 0 or labs[hit[0]] not in _WALL:
        return None
    return p + steps[hit[0]] * u


def _find_wide_site(
    canvas: _Canvas, rng: np.random.Generator, spec: _NoduleSpec, lung_pts: np.ndarray,
    vessels: list[_Segment], placed: list[tuple[np.ndarray, float]], body: _Body | None, pose: _Pose | None,
    flat: float, attempts: int = 300,
) -> _Site | None:
    """A site of the wide nodule family for ``spec`` (``None`` when none is found).

    Wall sites put the centre ``flat * R`` times 0.2 to 0.65 inside the lung from the
    wall, so that the flattened nodule meets the wall on a broad base.
    """
    R = spec.diameter / 2.0
    g = canvas.grid
    lo = np.array(g.origin) + R + 2.0
    hi = np.array(g.origin) + (np.array(g.shape[::-1]) - 1) * np.array(g.spacing[::-1]) - R - 2.0
    loc = spec.location
    needs_body = loc in ("juxtamediastinal", "perifissural")
    if np.any(hi <= lo) or len(lung_pts) == 0 or (needs_body and (body is None or pose is None)):
        return None
    if loc == "juxtavascular" and not vessels:
        return None
    for _ in range(attempts):
        p = lung_pts[int(rng.integers(len(lung_pts)))]
        normal: np.ndarray | None = None
        if loc == "juxtavascular":
            seg = vessels[int(rng.integers(len(vessels)))]
            d = seg.p1 - seg.p0
            n = _random_normal_to(rng, d)
            t = rng.uniform(0.1, 0.9)
            c = seg.p0 + t * d + n * (R + (seg.r0 + t * (seg.r1 - seg.r0)) * rng.uniform(-0.2, 0.8))
        elif loc in ("juxtapleural", "juxtamediastinal"):
            if loc == "juxtamediastinal":
                assert body is not None and pose is not None
                a = pose.to_body(p)[0, 0]
                ct, st = np.cos(pose.theta), np.sin(pose.theta)
                u = np.array([ct, st, 0.0]) * np.sign(body.m0 - a) + rng.normal(0.0, 0.35) * np.array([-st, ct, 0.0])
                u[2] = rng.normal(0.0, 0.25)
            elif spec.site == "diaphragm":
                u = np.array([rng.normal(0.0, 0.3), rng.normal(0.0, 0.3), -1.0])
            else:
                u = _unit(rng)
            u = u / np.linalg.norm(u)
            h = _ray_to_wall(canvas, p, u)
            if h is None:
                continue
            n = _wall_normal(canvas, h, float(np.clip(0.6 * R, 4.0, 10.0)))
            if n is None:
                continue
            kind = _wall_kind(body, pose, h, n)
            want = "mediastinal" if loc == "juxtamediastinal" else (spec.site or "costal")
            if kind != want or (loc == "juxtamediastinal" and canvas.labels_at(h)[0] != Tissue.SOFT):
                continue
            normal = n
            c = h - n * (flat * R * rng.uniform(0.2, 0.65) + 0.5)
        elif loc == "perifissural":
            assert body is not None and pose is not None
            side = int(rng.choice(3, p=[0.4, 0.4, 0.2]))
            abz = pose.to_body(p)[0]
            if not _on_fissure_side(body, side, float(abz[0]), float(abz[1])):
                continue
            abz[2] = float(_fissure_zb(body, side, abz[0], abz[1])) + rng.uniform(-0.3, 0.3)
            c = pose.to_world(abz)[0]
            normal = _fissure_normal(pose, body, side, abz)
        else:
            c = p
        if np.any(c < lo) or np.any(c > hi) or canvas.labels_at(c)[0] != Tissue.LUNG:
            continue
        if any(np.linalg.norm(c - pc) < R + pr + 3.0 for pc, pr in placed):
            continue
        inner = _sphere_labels(canvas, c, R)
        if len(inner) == 0:
            continue
        vessel = float((inner == Tissue.VESSEL).mean())
        if loc in ("juxtapleural", "juxtamediastinal"):
            if np.isin(inner, _LUNGISH).mean() < 0.45:
                continue
        else:
            outer = _sphere_labels(canvas, c, R + (1.5 if loc == "juxtavascular" else 2.5))
            if not np.isin(outer, _LUNGISH).all():
                continue
            if loc in ("free", "perifissural") and vessel > 0.15:
                continue
            if loc == "juxtavascular" and (vessel > 0.45 or vessel == 0.0):
                continue
        return _Site(c, normal)
    return None
