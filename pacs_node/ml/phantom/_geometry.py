"""Geometry shared by the drawing stages: partial-volume and shape helpers, the voxel
grid, the canvas being drawn and the patient's pose.

The anatomy is described in a *body frame* ``(a, b, zb)`` in mm: ``a`` lateral
(+ = patient left), ``b`` antero-posterior (+ = posterior), both relative to the
thorax centre and turned by the patient's roll, and ``zb`` the height above the top
of the right diaphragm dome.  :class:`_Pose` maps it to world LPS mm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pacs_node.ml.phantom.truth import Tissue


def _soft(d: np.ndarray | float, w: float | np.ndarray) -> np.ndarray:
    """Partial-volume fraction across a boundary.

    ``d`` is the signed distance (mm) to the boundary, positive inside; ``w`` is the
    width (mm) of a voxel across the boundary.  Returns 1 inside, 0 outside.
    """
    return np.clip(np.asarray(d) * (1.0 / w) + 0.5, 0.0, 1.0)


def _squircle(a: np.ndarray, b: np.ndarray, w: float, da: float, dp: float, sq: float) -> np.ndarray:
    """Normalised radius (1 on the outline) of a rounded-rectangle cross-section.

    ``w`` is the half-width (mm), ``da``/``dp`` the anterior/posterior half-depths
    (mm), ``sq`` in [0, 1) the squareness (0 = ellipse).
    """
    u2 = (a * (1.0 / w)) ** 2
    v2 = np.where(b < 0, b * (1.0 / da), b * (1.0 / dp)) ** 2
    f = u2 + v2 - sq * u2 * v2
    return np.sqrt(np.maximum(f, np.maximum(u2, v2)))


def _unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Uniform random unit vector(s) in 3D."""
    v = rng.standard_normal((1 if n is None else n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v[0] if n is None else v


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random 3x3 rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def _perpendicular(d: np.ndarray) -> np.ndarray:
    """A unit vector perpendicular to ``d`` that varies smoothly with ``d``."""
    ref = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 * np.linalg.norm(d) else np.array([1.0, 0.0, 0.0])
    p = np.cross(d, ref)
    return p / (np.linalg.norm(p) + 1e-9)


def _random_normal_to(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """A random unit vector perpendicular to ``d`` (one ``standard_normal(3)`` draw)."""
    n = rng.standard_normal(3)
    n -= d * (n @ d) / (float(d @ d) + 1e-9)
    return n / (np.linalg.norm(n) + 1e-9)


@dataclass(frozen=True)
class _Grid:
    """Voxel grid: shape ``(nz, ny, nx)``, spacing ``(dz, dy, dx)`` mm, origin ``(x, y, z)`` mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def coords(self, axis: int) -> np.ndarray:
        """World coordinate (mm) of the voxel centres along ``axis`` (0 = z, 1 = y, 2 = x)."""
        return (self.origin[2 - axis] + self.spacing[axis] * np.arange(self.shape[axis])).astype(np.float32)

    def to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous ``(k, j, i)`` indices of world points ``(..., 3)`` in LPS mm."""
        xyz = np.asarray(xyz, dtype=np.float64)
        o = np.array(self.origin)
        s = np.array(self.spacing[::-1])
        return ((xyz - o) / s)[..., ::-1]

    def window(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in the world box ``[lo, hi]``."""
        lo = self.to_index(lo_xyz)
        hi = self.to_index(hi_xyz)
        out = []
        for ax in range(3):
            i0 = max(0, math.ceil(min(lo[ax], hi[ax])))
            i1 = min(self.shape[ax], math.floor(max(lo[ax], hi[ax])) + 1)
            if i0 >= i1:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]


@dataclass
class _Canvas:
    """The volume being drawn (float32 HU) with its tissue labels."""

    grid: _Grid
    vol: np.ndarray
    lab: np.ndarray
    zs: np.ndarray
    ys: np.ndarray
    xs: np.ndarray

    @classmethod
    def empty(cls, grid: _Grid) -> _Canvas:
        return cls(
            grid=grid,
            vol=np.full(grid.shape, -1000.0, dtype=np.float32),
            lab=np.zeros(grid.shape, dtype=np.uint8),
            zs=grid.coords(0),
            ys=grid.coords(1),
            xs=grid.coords(2),
        )

    def box(
        self, lo_xyz: np.ndarray, hi_xyz: np.ndarray
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
        """Window plus broadcastable world coordinates ``z (n,1,1)``, ``y (1,n,1)``, ``x (1,1,n)``."""
        sl = self.grid.window(lo_xyz, hi_xyz)
        if sl is None:
            return None
        return sl, self.zs[sl[0]][:, None, None], self.ys[sl[1]][None, :, None], self.xs[sl[2]][None, None, :]

    def labels_at(self, xyz: np.ndarray) -> np.ndarray:
        """Labels at the voxels nearest to world points ``(n, 3)``; 255 outside the grid."""
        kji = np.rint(self.grid.to_index(np.atleast_2d(xyz))).astype(np.int64)
        inside = np.all((kji >= 0) & (kji < np.array(self.grid.shape)), axis=1)
        out = np.full(len(kji), 255, dtype=np.uint8)
        k = kji[inside]
        out[inside] = self.lab[k[:, 0], k[:, 1], k[:, 2]]
        return out


@dataclass(frozen=True)
class _Pose:
    """Where the patient lies: world (x, y) of the thorax centre at world ``z = zoff``,
    its drift per mm of z (a slight tilt), the roll ``theta`` (rad) and the world z of
    the body frame's ``zb = 0`` (top of the right diaphragm dome)."""

    cx: float
    cy: float
    tx: float
    ty: float
    theta: float
    zoff: float

    def centre(self, z: float) -> tuple[float, float]:
        return self.cx + self.tx * (z - self.zoff), self.cy + self.ty * (z - self.zoff)

    def to_body(self, xyz: np.ndarray) -> np.ndarray:
        """Body-frame ``(a, b, zb)`` (mm) of world points ``(n, 3)``."""
        xyz = np.atleast_2d(xyz)
        cx = self.cx + self.tx * (xyz[:, 2] - self.zoff)
        cy = self.cy + self.ty * (xyz[:, 2] - self.zoff)
        c, s = math.cos(self.theta), math.sin(self.theta)
        dx, dy = xyz[:, 0] - cx, xyz[:, 1] - cy
        return np.stack([c * dx + s * dy, -s * dx + c * dy, xyz[:, 2] - self.zoff], axis=1)

    def to_world(self, abz: np.ndarray) -> np.ndarray:
        """World LPS points (mm) of body-frame points ``(n, 3)``."""
        abz = np.atleast_2d(np.asarray(abz, dtype=np.float64))
        z = abz[:, 2] + self.zoff
        cx = self.cx + self.tx * (z - self.zoff)
        cy = self.cy + self.ty * (z - self.zoff)
        c, s = math.cos(self.theta), math.sin(self.theta)
        a, b = abz[:, 0], abz[:, 1]
        return np.stack([cx + c * a - s * b, cy + s * a + c * b, z], axis=1)


def _sample_lung_points(canvas: _Canvas, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random points (world LPS mm, ``(m, 3)``) uniformly inside voxels labelled lung."""
    shape = canvas.lab.shape
    idx = rng.integers(0, canvas.lab.size, n)
    idx = idx[canvas.lab.reshape(-1)[idx] == Tissue.LUNG]
    kji = np.stack(np.unravel_index(idx, shape), axis=1).astype(np.float64)
    kji += rng.uniform(-0.5, 0.5, kji.shape)
    g = canvas.grid
    return np.array(g.origin) + kji[:, ::-1] * np.array(g.spacing[::-1])


def _subpleural_sites(
    canvas: _Canvas, rng: np.random.Generator, lung_pts: np.ndarray, n: int, depth_mm: tuple[float, float],
    down: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Points on the pleura, found by marching rays out of the lung.

    Rays start at random lung points (world LPS mm) that lie ``depth_mm`` (min, max)
    from the pleura along the ray; most head radially outwards in the axial plane
    (costal pleura), a fraction ``down`` heads down (diaphragmatic pleura).  A ray
    ends at the first voxel labelled soft tissue, bone, air or outside the grid
    (vessels, airways and nodules are crossed).

    Returns
    -------
    sites, normals
        Up to ``n`` points on the pleura ``(m, 3)`` (mm) and the outward unit ray
        directions ``(m, 3)`` there (approximate pleural normals).
    """
    if n <= 0 or len(lung_pts) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    m = 4 * n + 16
    p = lung_pts[rng.integers(0, len(lung_pts), m)]
    centre = np.median(lung_pts, axis=0)
    v = p - centre
    v[:, 2] = 0.0
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-9
    v += 0.3 * rng.standard_normal((m, 3)) * np.array([1.0, 1.0, 0.4])
    is_down = rng.random(m) < down
    v[is_down] = np.array([0.0, 0.0, -1.0]) + 0.35 * rng.standard_normal((int(is_down.sum()), 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-9
    step = 0.5 * min(canvas.grid.spacing)
    steps = np.arange(step, depth_mm[1] + step, step)
    hit = np.full(m, np.nan)
    for s in steps:
        todo = np.isnan(hit)
        if not todo.any():
            break
        lab = canvas.labels_at(p[todo] + s * v[todo])
        stop = (lab == Tissue.SOFT) | (lab == Tissue.BONE) | (lab == Tissue.AIR) | (lab == 255)
        idx = np.nonzero(todo)[0][stop]
        hit[idx] = s
    ok = np.nonzero(~np.isnan(hit) & (hit >= depth_mm[0]))[0][:n]
    return p[ok] + hit[ok, None] * v[ok], v[ok]
