"""Nodules: the classic shape model and drawing, and the entry point that plants a
study's nodules.

What to plant is drawn in :mod:`._nodule_specs`, where it goes in :mod:`._nodule_sites`;
the wide nodule family and the non-classic styles are shaped in :mod:`._nodule_shapes`
and drawn in :mod:`._nodule_draw`.  The classic path (classic variation and style)
draws exactly what the v1 generator drew for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pacs_node.ml.phantom._geometry import _Canvas, _Pose, _rotation, _soft, _unit
from pacs_node.ml.phantom._nodule_draw import _place_and_draw_wide
from pacs_node.ml.phantom._nodule_sites import _find_site
from pacs_node.ml.phantom._nodule_specs import _draw_nodule_specs, _nodule_streams, _NoduleSpec, _style_detail_rng
from pacs_node.ml.phantom._study import _Body
from pacs_node.ml.phantom._tubes import _capsule_fraction, _Segment
from pacs_node.ml.phantom.truth import PlantedNodule, Tissue
from pacs_node.ml.phantom.variation import Variation

__all__ = ["_NoduleSpec", "_Shape", "_draw_nodule_specs", "_place_and_render_nodules", "_render_nodule"]


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


def _place_and_render_nodules(
    canvas: _Canvas, rng: np.random.Generator, specs: list[_NoduleSpec], lung_pts: np.ndarray,
    vessels: list[_Segment], min_diameter: float, *, variation: Variation | None = None, style: str = "classic",
    seed: int = 0, body: _Body | None = None, pose: _Pose | None = None,
    record: list[tuple[np.ndarray, _NoduleSpec, _Shape]] | None = None,
) -> list[PlantedNodule]:
    """Place every nodule (smaller if it does not fit; dropped if it still does not) and draw it.

    With the classic variation and style this is the v1 generator (every draw from
    ``rng``).  With the wide nodule family, sites and shapes come from the family's
    streams of ``seed`` (``rng`` is not used); a non-classic style draws its surfaces
    and textures from its own stream of ``seed``.  ``record`` (classic path only; it
    draws nothing) receives the centre (world LPS mm), spec and shape of each nodule.
    """
    wide = variation is not None and variation.is_wide("nodules")
    if wide or style != "classic":
        _, rng_site, rng_shape = _nodule_streams(seed)
        return _place_and_draw_wide(
            canvas, specs, lung_pts, vessels, min_diameter, wide=wide, style=style,
            rng_site=rng_site if wide else rng, rng_shape=_style_detail_rng(seed) if style != "classic" else rng_shape,
            body=body, pose=pose,
        )
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
        if record is not None:
            record.append((c, spec, shape))
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
