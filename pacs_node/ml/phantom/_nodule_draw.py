"""Drawing widened nodules (and nodules in a non-classic style): attenuation relative to
the local parenchyma, internal texture, air bronchograms, cavities, and the planted
truth measured from what was drawn."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from pacs_node.ml.phantom._geometry import _Canvas, _perpendicular, _Pose, _unit
from pacs_node.ml.phantom._nodule_shapes import _shape_fractions, _wide_shape, _WideShape
from pacs_node.ml.phantom._nodule_sites import _find_site, _find_wide_site, _Site
from pacs_node.ml.phantom._nodule_specs import _NoduleSpec
from pacs_node.ml.phantom._study import _Body
from pacs_node.ml.phantom._tubes import _capsule_fraction, _Segment
from pacs_node.ml.phantom.truth import PlantedNodule, Tissue

_ALLOWED = np.array([Tissue.LUNG, Tissue.VESSEL], dtype=np.uint8)
#: Where a wide site cannot be found, the nodule is tried at the next kind of site.
_FALLBACK = {
    ("juxtamediastinal", ""): ("juxtapleural", "costal"),
    ("juxtapleural", "diaphragm"): ("juxtapleural", "costal"),
    ("perifissural", ""): ("free", ""),
    ("juxtavascular", ""): ("free", ""),
}


def _fallback(spec: _NoduleSpec) -> _NoduleSpec | None:
    """The same nodule at the next kind of site, or ``None``."""
    nxt = _FALLBACK.get((spec.location, spec.site))
    if nxt is None:
        return None
    return _NoduleSpec(spec.type, spec.margin, nxt[0], spec.diameter, spec.core, spec.hu, spec.hu_core, nxt[1],
                       spec.cavity_wall, spec.hu_above_lung)


def _local_lung_hu(canvas: _Canvas, c: np.ndarray, R: float) -> float:
    """Median HU (before the nodule is drawn) of the lung voxels 1.5 to 8 mm outside a
    sphere of radius ``R`` mm around ``c``; -850 when there are none."""
    r_out = R + 8.0
    bx = canvas.box(c - r_out, c + r_out)
    if bx is None:
        return -850.0
    sl, z, y, x = bx
    d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
    sel = (d >= R + 1.5) & (d <= r_out) & (canvas.lab[sl] == Tissue.LUNG)
    return float(np.median(canvas.vol[sl][sel])) if sel.any() else -850.0


def _texture(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, float, float], style: str
             ) -> np.ndarray:
    """Unit-variance internal texture: fine (classic), coarse (lobular) or mottled (fine
    grain plus scattered denser and lighter spots)."""
    sigma_mm = {"classic": 1.2, "lobular": rng.uniform(1.8, 3.0), "mottled": 0.7}.get(style, 1.2)
    tex = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), [sigma_mm / s for s in spacing])
    tex /= tex.std() + 1e-6
    if style == "mottled":
        spots = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), [1.5 / s for s in spacing])
        spots /= spots.std() + 1e-6
        tex = tex + 1.5 * np.sign(spots) * np.clip(np.abs(spots) - 1.0, 0.0, None)
        tex /= tex.std() + 1e-6
    return tex


def _bronchograms(rng: np.random.Generator, R: float, count: int) -> list[_Segment]:
    """Air-filled bronchi crossing the nodule (relative to the centre, world mm)."""
    out = []
    for _ in range(count):
        u = _unit(rng)
        off = _perpendicular(u) * rng.uniform(-0.4, 0.4) * R
        out.append(_Segment(off - u * 1.3 * R, off + u * 1.3 * R, rng.uniform(0.6, 1.1), rng.uniform(0.4, 0.8)))
    return out


def _draw(canvas: _Canvas, rng: np.random.Generator, c: np.ndarray, spec: _NoduleSpec, shape: _WideShape,
          style: str, lung_hu: float) -> PlantedNodule | None:
    """Draw a widened nodule around ``c`` (world mm) and return its truth (``None`` if nothing fits).

    A nodule against a wall is clipped to the lung; it is grown once or twice so that
    what is drawn keeps the planned volume.  Centre, diameter and core diameter are
    measured from the drawn occupancy (voxel volume times summed occupancy).
    """
    vox = float(np.prod(canvas.grid.spacing))
    target = math.pi / 6.0 * spec.diameter**3
    fr = _shape_fractions(canvas, c, shape, _ALLOWED)
    for _ in range(2):
        if fr is None:
            return None
        drawn = float(fr.body.sum()) * vox
        if drawn >= 0.93 * target or drawn <= 0.0:
            break
        shape = shape.scaled(min((target / drawn) ** (1.0 / 3.0), 1.4))
        fr = _shape_fractions(canvas, c, shape, _ALLOWED)
    if fr is None or fr.body.sum() * vox < 0.1 * target:
        return None
    f = fr.body if fr.spicules is None else np.maximum(fr.body, fr.spicules)
    tex = _texture(rng, f.shape, canvas.grid.spacing, style)
    subsolid = spec.type in ("ground-glass", "part-solid")
    hu = spec.hu if spec.hu_above_lung is None else lung_hu + spec.hu_above_lung
    amp = {"classic": 1.0, "lobular": 1.4, "mottled": 2.2}.get(style, 1.0)
    if spec.type == "solid":
        h = hu + 6.0 * amp * tex
    elif subsolid:
        h = hu + 25.0 * amp * tex
        if spec.hu_above_lung is not None:  # keep the faint ones faint but above the lung
            h = np.maximum(h, lung_hu + 0.5 * spec.hu_above_lung)
    else:
        h = hu + (40.0 if fr.core is None else 6.0) * tex
    if fr.core is not None and spec.hu_core is not None:
        h = h + fr.core * (spec.hu_core + 6.0 * amp * tex - h)
    if fr.cavity is not None:
        h = h + fr.cavity * (rng.uniform(-1000.0, -960.0) - h)
    p_air = {"classic": 0.0, "lobular": 0.2 if subsolid else 0.0, "mottled": 0.5 if subsolid else 0.15}.get(style, 0.0)
    if spec.diameter >= 6.0 and rng.random() < p_air:
        sl = fr.sl
        z, y, x = fr.zyx
        for s in _bronchograms(rng, spec.diameter / 2.0, int(rng.integers(1, 4))):
            fb = _capsule_fraction(z, y, x, s.p0 + c, s.p1 + c, s.r0, s.r1, canvas.grid.spacing) * fr.body
            h = h + fb * (lung_hu - 60.0 - h)
    v = canvas.vol[fr.sl]
    if subsolid:
        v += f * np.maximum(h - v, 0.0)
    else:
        v += f * (h - v)
    canvas.lab[fr.sl][f > 0.5] = Tissue.NODULE
    w = fr.body
    z, y, x = fr.zyx
    total = float(w.sum())
    centre = (float((w * x).sum() / total), float((w * y).sum() / total), float((w * z).sum() / total))
    d = (6.0 / math.pi * total * vox) ** (1.0 / 3.0)
    core_d = None
    if fr.core is not None and spec.core is not None:
        core_d = min(max((6.0 / math.pi * float(fr.core.sum()) * vox) ** (1.0 / 3.0), 0.5), d)
    return PlantedNodule(
        centre_xyz_mm=centre, diameter_mm=float(d), type=spec.type,  # type: ignore[arg-type]
        margin=spec.margin, location=spec.location,  # type: ignore[arg-type]
        solid_core_diameter_mm=core_d, attenuation_hu=float(hu), core_attenuation_hu=spec.hu_core,
        cavitary=fr.cavity is not None,
    )


def _place_and_draw_wide(
    canvas: _Canvas, specs: list[_NoduleSpec], lung_pts: np.ndarray, vessels: list[_Segment], min_diameter: float,
    *, wide: bool, style: str, rng_site: np.random.Generator, rng_shape: np.random.Generator,
    body: _Body | None, pose: _Pose | None,
) -> list[PlantedNodule]:
    """Place and draw nodules with the widened sites (``wide``) or the classic ones, and
    the shape model of ``style``; a nodule that does not fit is tried at a fallback
    site, then smaller, then left out."""
    placed: list[tuple[np.ndarray, float]] = []
    out: list[PlantedNodule] = []
    for spec in specs:
        flat = float(rng_site.uniform(0.45, 0.85)) if rng_site.random() < 0.6 else 1.0
        site: _Site | None = None
        while True:
            if wide:
                site = _find_wide_site(canvas, rng_site, spec, lung_pts, vessels, placed, body, pose, flat)
                while site is None and (nxt := _fallback(spec)) is not None:
                    spec = nxt
                    site = _find_wide_site(canvas, rng_site, spec, lung_pts, vessels, placed, body, pose, flat)
            else:
                c = _find_site(canvas, rng_site, spec, lung_pts, vessels, placed)
                site = None if c is None else _Site(c, None)
            if site is not None or spec.diameter * 0.75 < min_diameter:
                break
            spec = spec.shrunk(0.75)
        if site is None:
            continue
        lung_hu = _local_lung_hu(canvas, site.centre, spec.diameter / 2.0)
        shape = _wide_shape(
            rng_shape, style=style, margin=spec.margin, diameter=spec.diameter, location=spec.location,
            normal=site.normal, flat=flat, wide=wide, core=spec.core, cavity_wall=spec.cavity_wall,
        )
        nodule = _draw(canvas, rng_shape, site.centre, spec, shape, style, lung_hu)
        if nodule is not None:
            placed.append((site.centre, spec.diameter / 2.0))
            out.append(nodule)
    return out
