"""Surface models of the widened nodules and their partial-volume occupancy on the canvas.

A body is an implicit *unit surface* (nominal radius 1, positive inside) stretched
along three local axes (mm).  The surface models are what tell the styles apart:

``classic``
    Ellipsoids, unions of spheres (lobulated) and a low-order radius perturbation
    (irregular), as in the v1 generator.
``lobular``
    A radius function on the sphere made of random zonal spherical harmonics
    (degree 1 to 7); lobulation is a band of higher degrees.
``mottled``
    A union of soft Gaussian blobs (an iso-surface of their sum); lobulated and
    irregular nodules have more, wider-spread blobs.

Perifissural nodules are biconvex lenses or cones standing on the fissure, whatever
the style.  Occupancy is the mean inside-indicator over sub-voxel samples (a box
filter over the voxel), so the drawn volume is the analytic one up to sampling, and
the planted truth is read from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import legendre
from scipy import ndimage as ndi

from pacs_node.ml.phantom._geometry import _Canvas, _perpendicular, _rotation, _unit
from pacs_node.ml.phantom._tubes import _capsule_fraction, _Segment

#: Level of the blob sum on the surface; one blob of this width has radius 1.
_BLOB_LEVEL = 0.5
_BLOB_SIGMA = 1.0 / math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class _Surface:
    """An implicit unit surface: ``kind`` plus its parameter arrays (unit space)."""

    kind: str  # "ellipsoid", "spheres", "harmonic", "blobs", "lens", "cone"
    a: np.ndarray  # spheres/blobs: centres (k, 3); harmonic: axes (k, 3)
    b: np.ndarray  # spheres: radii; blobs: widths; harmonic: degrees; lens: (half-thickness,); cone: (height,)
    c: np.ndarray  # harmonic: amplitudes
    bound: float  # every inside point lies within this distance of the origin

    def inside(self, p: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Signed inside function (positive inside) at unit-space points ``p = (p0, p1, p2)``."""
        p0, p1, p2 = p
        r = np.sqrt(p0 * p0 + p1 * p1 + p2 * p2)
        if self.kind == "ellipsoid":
            return 1.0 - r
        if self.kind == "spheres":
            g = None
            for ck, rk in zip(self.a, self.b, strict=True):
                gk = rk - np.sqrt((p0 - ck[0]) ** 2 + (p1 - ck[1]) ** 2 + (p2 - ck[2]) ** 2)
                g = gk if g is None else np.maximum(g, gk)
            assert g is not None
            return g
        if self.kind == "harmonic":
            inv = 1.0 / (r + 1e-9)
            rad = 1.0
            for d, deg, amp in zip(self.a, self.b, self.c, strict=True):
                t = (p0 * d[0] + p1 * d[1] + p2 * d[2]) * inv
                coef = np.zeros(int(deg) + 1)
                coef[-1] = amp
                rad = rad + legendre.legval(t, coef)
            return np.maximum(rad, 0.25) - r
        if self.kind == "blobs":
            s = 0.0
            for ck, sk in zip(self.a, self.b, strict=True):
                s = s + np.exp(((p0 - ck[0]) ** 2 + (p1 - ck[1]) ** 2 + (p2 - ck[2]) ** 2) * (-0.5 / (sk * sk)))
            return s - _BLOB_LEVEL
        if self.kind == "lens":
            h = float(self.b[0])
            rho = (1.0 + h * h) / (2.0 * h)
            rxy2 = p0 * p0 + p1 * p1
            return np.minimum(rho - np.sqrt(rxy2 + (p2 - (h - rho)) ** 2), rho - np.sqrt(rxy2 + (p2 + (h - rho)) ** 2))
        if self.kind == "cone":
            height = float(self.b[0])
            return np.minimum(p2, (1.0 - p2 / height) - np.sqrt(p0 * p0 + p1 * p1))
        raise ValueError(f"unknown surface kind {self.kind!r}")

    def volume(self, n: int = 44) -> float:
        """Volume of the unit surface (unit-space cube), counted on an ``n``-cubed grid."""
        L = self.bound
        t = (np.arange(n) + 0.5) * (2.0 * L / n) - L
        inside = self.inside((t[:, None, None], t[None, :, None], t[None, None, :])) > 0
        return float(np.count_nonzero(inside)) * (2.0 * L / n) ** 3


def _harmonic(rng: np.random.Generator, degrees: tuple[int, int], amp: tuple[float, float], k: int) -> _Surface:
    """Random radius function: ``k`` zonal harmonics of degrees in ``degrees``, total amplitude ``amp``."""
    axes = _unit(rng, k)
    deg = rng.integers(degrees[0], degrees[1] + 1, k).astype(np.float64)
    w = rng.standard_normal(k)
    w *= rng.uniform(*amp) / (np.abs(w).sum() + 1e-9) * 1.4
    return _Surface("harmonic", axes, deg, w, 1.0 + float(np.abs(w).sum()) + 0.05)


def _blobs(rng: np.random.Generator, k: int, spread: tuple[float, float], size: tuple[float, float],
           centre: tuple[float, float] = (0.75, 0.95), stretch: float = 1.0) -> _Surface:
    """Union of one central and ``k`` off-centre soft blobs, ``spread`` (unit radii) from
    the centre; ``stretch`` elongates their spread along a random direction."""
    d = _unit(rng)
    pts = _unit(rng, k) * rng.uniform(*spread, (k, 1))
    pts += np.outer(pts @ d, d) * (stretch - 1.0)
    centres = np.vstack([np.zeros(3), pts])
    widths = np.concatenate([[_BLOB_SIGMA * rng.uniform(*centre)], _BLOB_SIGMA * rng.uniform(*size, k)])
    bound = float(np.max(np.linalg.norm(centres, axis=1) + 1.6 * widths)) + 0.3
    return _Surface("blobs", centres, widths, np.zeros(0), bound)


def _spheres(rng: np.random.Generator) -> _Surface:
    """The classic lobulated model: a core sphere with 3 to 6 lobes on its surface."""
    centres = [np.zeros(3)]
    radii = [0.78]
    for u in _unit(rng, int(rng.integers(3, 7))):
        rk = rng.uniform(0.38, 0.55)
        centres.append(u * (1.0 - rk) * rng.uniform(0.95, 1.1))
        radii.append(rk)
    return _Surface("spheres", np.array(centres), np.array(radii), np.zeros(0), 1.2)


def _body_surface(rng: np.random.Generator, style: str, margin: str) -> _Surface:
    """The body surface of a nodule with this margin in this style."""
    if style == "lobular":
        if margin == "lobulated":
            return _harmonic(rng, (3, 7), (0.3, 0.5), int(rng.integers(4, 9)))
        if margin == "irregular":
            return _harmonic(rng, (1, 3), (0.35, 0.55), int(rng.integers(3, 6)))
        return _harmonic(rng, (2, 3), (0.04, 0.1), 3)
    if style == "mottled":
        if margin == "lobulated":
            return _blobs(rng, int(rng.integers(5, 11)), (0.85, 1.1), (0.32, 0.45), centre=(0.6, 0.75))
        if margin == "irregular":
            return _blobs(rng, int(rng.integers(2, 5)), (0.6, 1.1), (0.45, 0.7), centre=(0.55, 0.75),
                          stretch=rng.uniform(1.2, 1.8))
        return _blobs(rng, int(rng.integers(2, 5)), (0.1, 0.35), (0.5, 0.7))
    if margin == "lobulated":
        return _spheres(rng)
    if margin == "irregular":
        return _harmonic(rng, (2, 3), (0.3, 0.45), int(rng.integers(2, 4)))
    return _Surface("ellipsoid", np.zeros((0, 3)), np.zeros(0), np.zeros(0), 1.0)


@dataclass(frozen=True)
class _Part:
    """A surface placed in the nodule's local frame: semi-axes (mm) and offset (mm)."""

    surface: _Surface
    axes: np.ndarray
    offset: np.ndarray

    def scaled(self, k: float) -> _Part:
        return _Part(self.surface, self.axes * k, self.offset * k)

    @property
    def volume_mm3(self) -> float:
        return self.surface.volume() * float(np.prod(self.axes))


@dataclass(frozen=True)
class _WideShape:
    """A widened nodule: body, optional core and cavity, spicules, edge softness."""

    rot: np.ndarray  # rows: local axes in world coordinates
    body: _Part
    core: _Part | None  # solid core (part-solid) or calcified core
    cavity: _Part | None
    spicules: list[_Segment]  # relative to the centre (world mm)
    edge_mm: float  # Gaussian softening of the edge (mm), 0 for a box-filtered edge

    def scaled(self, k: float) -> _WideShape:
        sp = [_Segment(s.p0 * k, s.p1 * k, s.r0, s.r1) for s in self.spicules]
        return _WideShape(
            self.rot, self.body.scaled(k), None if self.core is None else self.core.scaled(k),
            None if self.cavity is None else self.cavity.scaled(k), sp, self.edge_mm,
        )

    @property
    def reach(self) -> float:
        """Half-size (mm) of a box that holds the whole nodule."""
        r = self.body.surface.bound * float(self.body.axes.max())
        for s in self.spicules:
            r = max(r, float(np.linalg.norm(s.p1)) + s.r0)
        return r + 2.0 * self.edge_mm + 1.5


def _unit_of(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-9)


def _frame(rng: np.random.Generator, normal: np.ndarray | None) -> np.ndarray:
    """Rows: local axes in world coordinates; the third is ``normal`` when given."""
    if normal is None:
        return _rotation(rng)
    n = _unit_of(np.asarray(normal, dtype=np.float64))
    t1 = _perpendicular(n)
    phi = rng.uniform(0.0, 2.0 * math.pi)
    t2 = np.cross(n, t1)
    t1, t2 = math.cos(phi) * t1 + math.sin(phi) * t2, -math.sin(phi) * t1 + math.cos(phi) * t2
    return np.stack([t1, t2, n])


def _elongation(rng: np.random.Generator, sigma: float, clip: float) -> np.ndarray:
    ax = np.exp(np.clip(rng.normal(0.0, sigma, 3), -clip, clip))
    return ax / np.prod(ax) ** (1.0 / 3.0)


@dataclass(frozen=True)
class _Fractions:
    """Occupancies (0 to 1) in the nodule's box, already limited to lung voxels."""

    sl: tuple[slice, slice, slice]
    body: np.ndarray  # body incl. cavity, spicules excluded
    core: np.ndarray | None
    cavity: np.ndarray | None
    spicules: np.ndarray | None
    zyx: tuple[np.ndarray, np.ndarray, np.ndarray]  # world z, y, x (mm) of the box voxel centres


def _occupancy(canvas: _Canvas, c: np.ndarray, rot: np.ndarray, part: _Part, sl: tuple[slice, slice, slice],
               edge_mm: float) -> np.ndarray:
    """Box-filtered occupancy of one part on the voxels of ``sl`` (nodule centre ``c``, world mm)."""
    g = canvas.grid
    z = canvas.zs[sl[0]][:, None, None] - c[2]
    y = canvas.ys[sl[1]][None, :, None] - c[1]
    x = canvas.xs[sl[2]][None, None, :] - c[0]
    size = float(part.axes.min())
    # sub-samples per axis: at most ~0.2 of the smallest semi-axis (and 0.7 mm) apart
    n = [int(np.clip(math.ceil(s / min(0.7, 0.4 * size)), 1, 5)) for s in g.spacing]
    acc = np.zeros((z.shape[0], y.shape[1], x.shape[2]), dtype=np.float32)
    inv = 1.0 / part.axes
    for oz in ((np.arange(n[0]) + 0.5) / n[0] - 0.5) * g.spacing[0]:
        for oy in ((np.arange(n[1]) + 0.5) / n[1] - 0.5) * g.spacing[1]:
            for ox in ((np.arange(n[2]) + 0.5) / n[2] - 0.5) * g.spacing[2]:
                qx, qy, qz = x + ox, y + oy, z + oz
                p = tuple(
                    (rot[i, 0] * qx + rot[i, 1] * qy + rot[i, 2] * qz - part.offset[i]) * inv[i] for i in range(3)
                )
                acc += part.surface.inside(p) > 0  # type: ignore[arg-type]
    acc /= n[0] * n[1] * n[2]
    if edge_mm > 0:
        acc = ndi.gaussian_filter(acc, [edge_mm / s for s in g.spacing], mode="constant")
    return acc


def _shape_fractions(canvas: _Canvas, c: np.ndarray, shape: _WideShape, allowed: np.ndarray | None = None
                     ) -> _Fractions | None:
    """Occupancy of every part of a widened nodule around centre ``c`` (world mm).

    ``allowed`` (labels) limits the nodule to those tissues (lung, vessels, nodule).
    """
    reach = shape.reach
    bx = canvas.box(c - reach, c + reach)
    if bx is None:
        return None
    sl, z, y, x = bx
    lab = canvas.lab[sl]
    mask = np.ones(lab.shape, dtype=bool) if allowed is None else np.isin(lab, allowed)
    body = _occupancy(canvas, c, shape.rot, shape.body, sl, shape.edge_mm) * mask
    core = cav = spic = None
    if shape.core is not None:
        core = np.minimum(_occupancy(canvas, c, shape.rot, shape.core, sl, shape.edge_mm), body)
    if shape.cavity is not None:
        cav = np.minimum(_occupancy(canvas, c, shape.rot, shape.cavity, sl, 0.0), body)
    if shape.spicules:
        spic = np.zeros(lab.shape, dtype=np.float32)
        for s in shape.spicules:
            spic = np.maximum(spic, _capsule_fraction(z, y, x, s.p0 + c, s.p1 + c, s.r0, s.r1, canvas.grid.spacing))
        spic *= mask
    return _Fractions(sl, body, core, cav, spic, (z, y, x))


def _spicules(rng: np.random.Generator, style: str, rot: np.ndarray, axes: np.ndarray, R: float) -> list[_Segment]:
    """Spicules (relative to the centre, world mm) radiating from a body of semi-axes ``axes``."""
    out: list[_Segment] = []
    if style == "lobular":
        count, length, thick = (12, 25), (0.25, 0.6, 1.0, 3.0), (0.4, 0.75)
    elif style == "mottled":
        count, length, thick = (5, 11), (0.4, 1.0, 2.0, 5.0), (0.5, 1.0)
    else:
        count, length, thick = (6, 17), (0.3, 0.9, 1.0, 4.0), (0.45, 1.0)
    for u in _unit(rng, int(rng.integers(*count))):
        local = rot @ u
        r_u = 1.0 / float(np.linalg.norm(local / axes))  # body radius along u
        ln = R * rng.uniform(length[0], length[1]) + rng.uniform(length[2], length[3])
        r0 = float(min(rng.uniform(*thick), 0.3 * R))
        p0, p1 = u * 0.5 * r_u, u * (r_u + ln)
        if style == "mottled":  # wavy: two segments with a kink
            kink = p0 + (p1 - p0) * rng.uniform(0.45, 0.7) + _perpendicular(u) * rng.normal(0.0, 0.25 * ln)
            out.append(_Segment(p0, kink, r0, 0.6 * r0))
            out.append(_Segment(kink, p1, 0.6 * r0, 0.1))
        else:
            out.append(_Segment(p0, p1, r0, 0.12))
    return out


def _inner(rng: np.random.Generator, style: str, body: _Part, diameter: float, room: float, margin: str) -> _Part:
    """A core or cavity of volume-equivalent ``diameter`` (mm), off-centre by up to ``room`` mm."""
    surface = _body_surface(rng, style, margin)
    elong = body.axes / np.prod(body.axes) ** (1.0 / 3.0) * _elongation(rng, 0.1, 0.2)
    s = (math.pi / 6.0 * diameter**3 / (surface.volume() * float(np.prod(elong)))) ** (1.0 / 3.0)
    return _Part(surface, s * elong, _unit(rng) * rng.uniform(0.0, 1.0) * max(room, 0.0))


def _wide_shape(
    rng: np.random.Generator, *, style: str, margin: str, diameter: float, location: str,
    normal: np.ndarray | None, flat: float, wide: bool, core: float | None, cavity_wall: float | None,
) -> _WideShape:
    """Shape of a widened nodule.

    Parameters
    ----------
    style, margin, location
        What it looks like and where it sits (perifissural nodules are lenses or cones).
    diameter
        Volume-equivalent diameter (mm) of the body, spicules excluded.
    normal
        Wall or fissure normal (world, unit); the third local axis follows it.
    flat
        Ratio of the semi-axis along ``normal`` to the mean one (1 = not flattened).
    wide
        Elongation drawn from the wide range (axis ratios to about 2.5) or the classic one.
    core
        Diameter (mm) of the solid or calcified core, if any.
    cavity_wall
        Wall thickness (mm) of a cavity, if any.
    """
    R = diameter / 2.0
    rot = _frame(rng, normal)
    if location == "perifissural":
        if rng.random() < 0.65:
            surface = _Surface("lens", np.zeros((0, 3)), np.array([rng.uniform(0.3, 0.55)]), np.zeros(0), 1.0)
        else:
            height = rng.uniform(0.6, 1.1)
            surface = _Surface("cone", np.zeros((0, 3)), np.array([height]), np.zeros(0), max(1.0, height) + 0.05)
        e = math.exp(rng.uniform(-0.3, 0.3))
        elong = np.array([e, 1.0 / e, 1.0])
    else:
        surface = _body_surface(rng, style, margin)
        elong = _elongation(rng, 0.22, 0.5) if wide else _elongation(rng, 0.1, 0.2)
        if normal is not None:
            j = math.exp(rng.uniform(-0.25, 0.25))
            elong = np.array([j / math.sqrt(flat), 1.0 / (j * math.sqrt(flat)), flat])
    s = (math.pi / 6.0 * diameter**3 / (surface.volume() * float(np.prod(elong)))) ** (1.0 / 3.0)
    body = _Part(surface, s * elong, np.zeros(3))
    spicules = _spicules(rng, style, rot, body.axes, R) if margin == "spiculated" else []
    core_part = cav_part = None
    if core is not None:
        core_part = _inner(rng, style, body, core, 0.35 * (diameter - core), str(rng.choice(["smooth", "irregular"])))
    if cavity_wall is not None:
        cav_part = _inner(rng, style, body, diameter - 2.0 * cavity_wall, 0.4 * cavity_wall, "smooth")
    edge = rng.uniform(0.3, 0.8) if style == "lobular" else 0.0
    return _WideShape(rot, body, core_part, cav_part, spicules, float(edge))
