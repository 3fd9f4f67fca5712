"""Nodules: what to plant (type, size, margin, location), their shapes, where they fit,
and how they are drawn."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pacs_node.ml.phantom._geometry import _Canvas, _rotation, _soft, _unit
from pacs_node.ml.phantom._tubes import _capsule_fraction, _Segment
from pacs_node.ml.phantom.truth import LOCATIONS, MARGINS, NODULE_TYPES, PlantedNodule, Tissue

_LUNGISH = (Tissue.LUNG, Tissue.VESSEL)
_WALL = (Tissue.SOFT, Tissue.BONE)


@dataclass(frozen=True)
class _NoduleSpec:
    type: str
    margin: str
    location: str
    diameter: float
    core: float | None  # solid core (part-solid) or calcified core (central calcification)
    hu: float  # body: ground glass, solid or calcium
    hu_core: float | None


def _draw_nodule_specs(
    rng: np.random.Generator, n: int | None, types: Sequence[str] | None, drange: tuple[float, float]
) -> list[_NoduleSpec]:
    """Draw number, type, size, margin, location and attenuation of the nodules."""
    if n is None:
        n = 0 if rng.random() < 0.2 else int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    lo, hi = drange
    specs = []
    for i in range(n):
        t = types[i % len(types)] if types else str(rng.choice(NODULE_TYPES, p=[0.55, 0.12, 0.18, 0.15]))
        d = rng.uniform(12.0, 30.0) if rng.random() < 0.15 else math.exp(rng.normal(math.log(7.0), 0.42))
        if t == "calcified":
            d = min(d, rng.uniform(5.0, 12.0))
        elif t in ("ground-glass", "part-solid"):
            d = max(d, rng.uniform(6.0, 14.0))
        d = float(np.clip(d, lo, hi))
        margin_p = {
            "solid": [0.5, 0.3, 0.2],
            "part-solid": [0.4, 0.3, 0.3],
            "ground-glass": [0.7, 0.3, 0.0],
            "calcified": [0.85, 0.15, 0.0],
        }[t]
        margin = str(rng.choice(MARGINS, p=margin_p))
        location = str(rng.choice(LOCATIONS, p=[0.5, 0.3, 0.2]))
        core: float | None = None
        hu_core: float | None = None
        if t == "solid":
            hu = rng.uniform(5.0, 50.0)
        elif t == "ground-glass":
            hu = rng.uniform(-720.0, -450.0)
        elif t == "part-solid":
            hu = rng.uniform(-700.0, -450.0)
            core = float(np.clip(d * rng.uniform(0.25, 0.55), min(2.0, 0.5 * d), d - 1.5))
            hu_core = rng.uniform(0.0, 45.0)
        else:
            if rng.random() < 0.6:
                hu = rng.uniform(200.0, 900.0)
            else:
                hu = rng.uniform(10.0, 45.0)
                core = d * rng.uniform(0.5, 0.72)
                hu_core = rng.uniform(250.0, 900.0)
        specs.append(_NoduleSpec(t, margin, location, d, core, float(hu), hu_core))
    return specs


@dataclass(frozen=True)
class _Shape:
    rot: np.ndarray  # rows: body axes in world coordinates
    axes: np.ndarray  # ellipsoid semi-axes (mm)
    lobes: list[tuple[np.ndarray, float]]  # lobulated: sphere centres (relative, mm) and radii
    spicules: list[_Segment]  # relative to the centre
    reach: float  # half-size of the drawing box (mm)


def _nodule_shape(rng: np.random.Generator, spec: _NoduleSpec) -> _Shape:
    """Random shape of a nodule with the given margin and diameter."""
    R = spec.diameter / 2.0
    ax = np.exp(np.clip(rng.normal(0.0, 0.1, 3), -0.2, 0.2))
    ax = R * ax / np.prod(ax) ** (1.0 / 3.0)
    lobes: list[tuple[np.ndarray, float]] = []
    spicules: list[_Segment] = []
    reach = 1.35 * R
    if spec.margin == "lobulated":
        lobes.append((np.zeros(3), 0.78 * R))
        for u in _unit(rng, int(rng.integers(3, 7))):
            rk = R * rng.uniform(0.38, 0.55)
            lobes.append((u * (R - rk) * rng.uniform(0.95, 1.1), rk))
    elif spec.margin == "spiculated":
        ax = ax * 0.88
        for u in _unit(rng, int(rng.integers(6, 17))):
            length = R * rng.uniform(0.3, 0.9) + rng.uniform(1.0, 4.0)
            r0 = float(min(rng.uniform(0.35, 0.85), 0.3 * R))
            spicules.append(_Segment(u * 0.6 * R, u * (R + length), r0, 0.12))
            reach = max(reach, R + length + 1.0)
    return _Shape(_rotation(rng), ax, lobes, spicules, reach + 1.5)


def _nodule_fractions(
    canvas: _Canvas, c: np.ndarray, spec: _NoduleSpec, shape: _Shape
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray | None] | None:
    """Occupancy of the nodule (and of its core) in its box around centre ``c``."""
    bx = canvas.box(c - shape.reach, c + shape.reach)
    if bx is None:
        return None
    sl, z, y, x = bx
    qx, qy, qz = x - c[0], y - c[1], z - c[2]
    sz, sy, sx = canvas.grid.spacing
    q2 = qx * qx + qy * qy + qz * qz + 1e-6
    w = np.sqrt((qx * qx * (sx * sx) + qy * qy * (sy * sy) + qz * qz * (sz * sz)) / q2)
    m = shape.rot
    e2 = 0.0
    for i in range(3):
        ui = m[i, 0] * qx + m[i, 1] * qy + m[i, 2] * qz
        e2 = e2 + (ui * (1.0 / shape.axes[i])) ** 2
    e = np.sqrt(e2)
    R = spec.diameter / 2.0
    if shape.lobes:
        g = None
        for ck, rk in shape.lobes:
            gk = rk - np.sqrt((qx - ck[0]) ** 2 + (qy - ck[1]) ** 2 + (qz - ck[2]) ** 2)
            g = gk if g is None else np.maximum(g, gk)
        assert g is not None
    else:
        g = (1.0 - e) * float(shape.axes.min())
    f = _soft(g, w)
    for sp in shape.spicules:
        f = np.maximum(f, _capsule_fraction(z, y, x, sp.p0 + c, sp.p1 + c, sp.r0, sp.r1, canvas.grid.spacing))
    f_core = None
    if spec.core is not None:
        f_core = _soft((spec.core / spec.diameter - e) * R, w)
    return sl, f, f_core


def _render_nodule(canvas: _Canvas, rng: np.random.Generator, c: np.ndarray, spec: _NoduleSpec, shape: _Shape) -> None:
    """Draw a nodule into the lung (it never spreads into chest wall or mediastinum)."""
    res = _nodule_fractions(canvas, c, spec, shape)
    if res is None:
        return
    sl, f, f_core = res
    f = np.broadcast_to(f, canvas.vol[sl].shape)
    sp = canvas.grid.spacing
    tex = ndi.gaussian_filter(rng.standard_normal(f.shape).astype(np.float32), [1.2 / s for s in sp])
    tex /= tex.std() + 1e-6
    if spec.type == "solid":
        h = spec.hu + 6.0 * tex
    elif spec.type == "ground-glass":
        h = spec.hu + 25.0 * tex
    elif spec.type == "part-solid":
        assert f_core is not None and spec.hu_core is not None
        h = spec.hu + 25.0 * tex
        h = h + f_core * (spec.hu_core + 6.0 * tex - h)
    elif f_core is None:
        h = spec.hu + 40.0 * tex
    else:
        assert spec.hu_core is not None
        h = spec.hu + 6.0 * tex
        h = h + f_core * (spec.hu_core - h)
    lab = canvas.lab[sl]
    f = f * np.isin(lab, (Tissue.LUNG, Tissue.VESSEL, Tissue.NODULE))
    v = canvas.vol[sl]
    if spec.type in ("ground-glass", "part-solid"):
        v += f * np.maximum(h - v, 0.0)
    else:
        v += f * (h - v)
    lab[f > 0.5] = Tissue.NODULE


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
    """Find a centre (world mm) for a nodule at the requested kind of location."""
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
            n = rng.standard_normal(3)
            n -= d * (n @ d) / (float(d @ d) + 1e-9)
            n /= np.linalg.norm(n) + 1e-9
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


def _place_and_render_nodules(
    canvas: _Canvas, rng: np.random.Generator, specs: list[_NoduleSpec], lung_pts: np.ndarray,
    vessels: list[_Segment], min_diameter: float,
) -> list[PlantedNodule]:
    """Place every nodule (smaller if it does not fit; dropped if it still does not) and draw it."""
    placed: list[tuple[np.ndarray, float]] = []
    out: list[PlantedNodule] = []
    for spec in specs:
        c = None
        while True:
            c = _find_site(canvas, rng, spec, lung_pts, vessels, placed)
            if c is not None or spec.diameter * 0.75 < min_diameter:
                break
            core = None if spec.core is None else spec.core * 0.75
            spec = _NoduleSpec(spec.type, spec.margin, spec.location, spec.diameter * 0.75, core, spec.hu, spec.hu_core)
        if c is None:
            continue
        shape = _nodule_shape(rng, spec)
        _render_nodule(canvas, rng, c, spec, shape)
        placed.append((c, spec.diameter / 2.0))
        out.append(
            PlantedNodule(
                centre_xyz_mm=(float(c[0]), float(c[1]), float(c[2])),
                diameter_mm=float(spec.diameter),
                type=spec.type,  # type: ignore[arg-type]
                margin=spec.margin,  # type: ignore[arg-type]
                location=spec.location,  # type: ignore[arg-type]
                solid_core_diameter_mm=spec.core,
                attenuation_hu=spec.hu,
                core_attenuation_hu=spec.hu_core,
            )
        )
    return out
