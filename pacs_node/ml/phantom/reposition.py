"""Re-positioning one synthetic patient for a follow-up scan: a rigid move on the table
and another breath-hold depth, and the resampling of the baseline scene under them.

A baseline point ``x`` (world LPS mm) lies at a later time point at

    ``x' = R @ (D(x) - centre) + centre + shift``

``D`` is the breath-hold change: an S-I stretch by ``si_stretch`` of the lungs
between the lung apex (``apex_z_mm``, held still) and the lowest lung recess
(``floor_z_mm``); everything below the floor (liver, abdomen) moves with the
diaphragm, everything above the apex stays.  It acts on world ``z`` only, so it is
the same in the baseline's body frame.  ``R`` (rotation about x, then y, then z:
pitch, yaw, roll) and ``shift`` are the rigid move, ``centre`` its pivot (the
thorax centre at mid-lung height).  The table is part of the resampled scene, so it
moves with the patient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pacs_node.ml.phantom._geometry import _Canvas, _Grid, _Pose


@dataclass(frozen=True)
class Reposition:
    """How the patient lies at a later time point relative to the baseline (see the module).

    Attributes
    ----------
    shift_mm
        Rigid translation ``(x, y, z)`` in mm (z: along the table).
    rotation_deg
        Rotation about the x (pitch), y (yaw) and z (roll) axes, degrees, applied in that order.
    si_stretch
        Lung height at this time point over that at baseline (> 1: deeper breath-hold).
    centre_xyz_mm
        Pivot of the rotation, baseline LPS mm.
    apex_z_mm, floor_z_mm
        Baseline world z (mm) of the lung apex and of the lowest lung recess; the
        stretch acts between them.
    """

    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    si_stretch: float = 1.0
    centre_xyz_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    apex_z_mm: float = 0.0
    floor_z_mm: float = -1.0

    def __post_init__(self) -> None:
        if not 0.5 < self.si_stretch < 2.0:
            raise ValueError(f"si_stretch must be in (0.5, 2), got {self.si_stretch}")
        if not self.floor_z_mm < self.apex_z_mm:
            raise ValueError(f"floor_z_mm must be below apex_z_mm, got {self.floor_z_mm}, {self.apex_z_mm}")

    @property
    def rotation(self) -> np.ndarray:
        """3x3 rotation matrix ``Rz @ Ry @ Rx`` acting on LPS column vectors."""
        ax, ay, az = (math.radians(v) for v in self.rotation_deg)
        cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
        rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
        ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
        rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
        return rz @ ry @ rx

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous rigid part (baseline LPS mm to this time point's LPS mm), breathing excluded."""
        r = self.rotation
        c = np.array(self.centre_xyz_mm)
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = c + np.array(self.shift_mm) - r @ c
        return m

    def breathe(self, z: np.ndarray) -> np.ndarray:
        """``D`` on baseline world z (mm)."""
        z = np.asarray(z, dtype=np.float64)
        a, f, s = self.apex_z_mm, self.floor_z_mm, self.si_stretch
        return np.where(z >= a, z, np.where(z >= f, a + s * (z - a), z + (s - 1.0) * (f - a)))

    def unbreathe(self, z: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`breathe`."""
        z = np.asarray(z, dtype=np.float64)
        a, f, s = self.apex_z_mm, self.floor_z_mm, self.si_stretch
        f_new = a + s * (f - a)
        return np.where(z >= a, z, np.where(z >= f_new, a + (z - a) / s, z - (s - 1.0) * (f - a)))

    def forward(self, xyz: np.ndarray) -> np.ndarray:
        """Baseline LPS points ``(n, 3)`` (mm) to this time point."""
        p = np.array(np.atleast_2d(xyz), dtype=np.float64)
        p[:, 2] = self.breathe(p[:, 2])
        m = self.matrix()
        return p @ m[:3, :3].T + m[:3, 3]

    def inverse(self, xyz: np.ndarray) -> np.ndarray:
        """This time point's LPS points ``(n, 3)`` (mm) back to the baseline."""
        m = self.matrix()
        p = (np.atleast_2d(np.asarray(xyz, dtype=np.float64)) - m[:3, 3]) @ m[:3, :3]
        p[:, 2] = self.unbreathe(p[:, 2])
        return p

    def to_dict(self) -> dict[str, object]:
        """JSON-able form, with the rigid 4x4 matrix (row-major)."""
        return {
            "shift_mm": [round(float(v), 3) for v in self.shift_mm],
            "rotation_deg": [round(float(v), 4) for v in self.rotation_deg],
            "rotation_order": "x,y,z (pitch, yaw, roll)",
            "centre_xyz_mm": [round(float(v), 3) for v in self.centre_xyz_mm],
            "si_stretch": round(float(self.si_stretch), 5),
            "stretch_apex_z_mm": round(float(self.apex_z_mm), 3),
            "stretch_floor_z_mm": round(float(self.floor_z_mm), 3),
            "matrix_4x4": [[round(float(v), 6) for v in row] for row in self.matrix()],
        }


def _draw_reposition(rng: np.random.Generator, centre: np.ndarray, apex_z: float, floor_z: float) -> Reposition:
    """A typical re-positioning: up to 4 cm along the table, 6 mm in-plane, roll up to 5 degrees,
    pitch and yaw up to 2 degrees, lung height within 5 %."""
    u = rng.uniform
    return Reposition(
        shift_mm=(u(-6.0, 6.0), u(-6.0, 6.0), u(-40.0, 40.0)),
        rotation_deg=(u(-2.0, 2.0), u(-2.0, 2.0), float(np.clip(rng.normal(0.0, 2.0), -5.0, 5.0))),
        si_stretch=u(0.95, 1.05),
        centre_xyz_mm=(float(centre[0]), float(centre[1]), float(centre[2])),
        apex_z_mm=apex_z,
        floor_z_mm=floor_z,
    )


def _followup_grid(g0: _Grid, rep: Reposition, dz: float, half_wd: tuple[float, float]) -> _Grid:
    """The later scan's grid: the baseline's in-plane grid, slices ``dz`` mm apart covering
    the baseline's scan range where it lies now (less what the tilt moves out of it)."""
    nz0 = g0.shape[0]
    cx, cy = rep.centre_xyz_mm[:2]
    ends = rep.forward(np.array([[cx, cy, g0.origin[2]], [cx, cy, g0.origin[2] + (nz0 - 1) * g0.spacing[0]]]))
    ax, ay, _ = (abs(math.sin(math.radians(v))) for v in rep.rotation_deg)
    trim = ax * half_wd[1] + ay * half_wd[0]
    lo, hi = float(ends[:, 2].min()) + trim, float(ends[:, 2].max()) - trim
    nz = max(8, int(math.floor((hi - lo) / dz + 1e-6)) + 1)
    return _Grid(shape=(nz, g0.shape[1], g0.shape[2]), spacing=(float(dz), g0.spacing[1], g0.spacing[2]),
                 origin=(g0.origin[0], g0.origin[1], round(lo, 3)))


def _followup_pose(pose0: _Pose, rep: Reposition) -> _Pose:
    """The baseline pose moved by the rigid part (used for noise and artefact placement)."""
    c = rep.forward(np.array([[pose0.cx, pose0.cy, pose0.zoff]]))[0]
    return _Pose(cx=float(c[0]), cy=float(c[1]), tx=pose0.tx, ty=pose0.ty,
                 theta=pose0.theta + math.radians(rep.rotation_deg[2]), zoff=float(c[2]))


def _resample(vol0: np.ndarray, lab0: np.ndarray, g0: _Grid, grid: _Grid, rep: Reposition) -> _Canvas:
    """The baseline scene (HU linearly, labels nearest) seen on ``grid`` after ``rep``.

    Done slab by slab; points outside the baseline grid take its edge values.
    """
    canvas = _Canvas.empty(grid)
    ny, nx = grid.shape[1:]
    yy, xx = np.meshgrid(canvas.ys.astype(np.float64), canvas.xs.astype(np.float64), indexing="ij")
    step = max(1, 2_000_000 // (ny * nx))
    for k0 in range(0, grid.shape[0], step):
        zs = canvas.zs[k0 : k0 + step].astype(np.float64)
        pts = np.stack([np.broadcast_to(xx, (len(zs), ny, nx)), np.broadcast_to(yy, (len(zs), ny, nx)),
                        np.broadcast_to(zs[:, None, None], (len(zs), ny, nx))], axis=-1).reshape(-1, 3)
        kji = g0.to_index(rep.inverse(pts)).T.reshape(3, len(zs), ny, nx)
        canvas.vol[k0 : k0 + step] = ndi.map_coordinates(vol0, kji, order=1, mode="nearest")
        canvas.lab[k0 : k0 + step] = ndi.map_coordinates(lab0, kji, order=0, mode="nearest")
    return canvas
