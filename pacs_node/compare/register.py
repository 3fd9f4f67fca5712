"""Registration of a prior chest CT to the current one on their lung masks: rigid, then affine.

The lungs are what both scans share whatever the field of view, kernel, dose or slice
thickness, and their outline is sharp on any CT, so both studies are reduced to their
filled lung masks (:func:`pacs_node.ml.lungs.lung_mask`, a coarse grid of a few mm).
The cost is a chamfer distance: the outline voxels of the *current* lungs, moved by the
candidate transform into the prior's frame, are looked up (trilinearly) in the distance
transform of the *prior* lungs' outline, and their mean pseudo-Huber distance
``sqrt(d**2 + c**2) - c`` is minimised (quadratic near the outline, linear farther
away, so that lung the other scan did not cover pulls only gently).  Outline voxels on
the border of a grid are left out on both sides: there the scan range, not the lung,
ends the mask.

Start: the lung masks' centroids aligned, then the best shift along the table from a
short scan (breath-hold and scan range move the lungs mostly along z).  Then
``scipy.optimize.minimize`` (L-BFGS-B, finite differences) over 6 rigid parameters,
then 12 affine ones starting from the rigid result.  Parameters are scaled to mm:
translations in mm, rotations and matrix entries as mm of displacement at
:attr:`RegistrationParams.lever_mm` from the lungs' centre.

Coordinates: all points are patient LPS (mm); :attr:`Registration.matrix` maps the
prior's LPS onto the current study's LPS (column vectors, homogeneous).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from scipy import ndimage as ndi
from scipy import optimize
from scipy.spatial.transform import Rotation

from pacs_node.ml.canonical import Grid, orient
from pacs_node.ml.lungs import LungMask, LungMaskParams, lung_mask


@dataclass(frozen=True)
class RegistrationParams:
    """Parameters of :func:`register` (lengths in mm).

    Attributes
    ----------
    grid_mm
        Lung-mask grid when :func:`register` segments the lungs itself.
    max_points
        Most outline points of the current lungs used in the cost.
    huber_mm
        ``c`` of the pseudo-Huber distance.
    z_search_mm, z_step_mm
        Range and step of the initial shift scan along the table (z).
    lever_mm
        Scale of rotations and matrix entries: one unit moves a point this far from
        the lungs' centre by about 1 mm.
    affine
        Whether to refine the rigid transform into an affine one.
    """

    grid_mm: float = 4.0
    max_points: int = 6000
    huber_mm: float = 3.0
    z_search_mm: float = 45.0
    z_step_mm: float = 3.0
    lever_mm: float = 100.0
    affine: bool = True


@dataclass(frozen=True, eq=False)
class Registration:
    """Result of :func:`register`.

    Attributes
    ----------
    matrix
        4 x 4 affine mapping prior LPS (mm) to current LPS (mm).
    rigid_matrix
        The rigid stage's 4 x 4 (same convention).
    surface_distance_mm
        Mean distance (mm) from the current lungs' outline, mapped into the prior, to
        the prior lungs' outline (points that fall inside the prior's grid).
    initial_surface_distance_mm
        The same without any transform (identity): how far the scans were apart.
    dice
        Dice overlap of the filled lung masks after mapping, on the current grid where
        it maps inside the prior's grid.
    seconds
        Wall time of the registration, lung masks included.
    """

    matrix: np.ndarray
    rigid_matrix: np.ndarray
    surface_distance_mm: float
    initial_surface_distance_mm: float
    dice: float
    seconds: float

    def map_points(self, prior_lps_mm: np.ndarray) -> np.ndarray:
        """Prior LPS points (``N x 3``, mm) in the current study's LPS (mm)."""
        p = np.atleast_2d(np.asarray(prior_lps_mm, dtype=np.float64)).reshape(-1, 3)
        return p @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary (matrix row-major)."""
        return {"matrix_4x4": [[round(float(v), 6) for v in row] for row in self.matrix],
                "surface_distance_mm": round(self.surface_distance_mm, 3),
                "initial_surface_distance_mm": round(self.initial_surface_distance_mm, 3),
                "dice": round(self.dice, 4), "seconds": round(self.seconds, 3)}


def _edge(mask: Grid) -> np.ndarray:
    """Outline voxels of a mask, those on the grid's border left out (there the scan range ends the mask)."""
    arr = mask.array.astype(bool)
    edge = arr & ~ndi.binary_erosion(arr, border_value=1)
    edge[[0, -1], :, :] = edge[:, [0, -1], :] = edge[:, :, [0, -1]] = False
    return edge


class _Chamfer:
    """Pseudo-Huber chamfer cost of current outline points mapped into the prior's distance map."""

    def __init__(self, prior: Grid, current_pts: np.ndarray, huber_mm: float) -> None:
        edge = _edge(prior)
        if not edge.any():
            raise ValueError("the prior lung mask has no outline inside its grid")
        self.dist = ndi.distance_transform_edt(~edge, sampling=prior.spacing_mm).astype(np.float32)
        self.grid = Grid(self.dist, prior.affine)
        self.pts = current_pts
        self.c = huber_mm

    def distances(self, a: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances (mm) of ``a @ p + t`` for the outline points, and whether each lands inside the grid."""
        idx = self.grid.world_to_index(self.pts @ a.T + t)
        inside = np.all((idx >= 0) & (idx <= np.array(self.grid.shape) - 1), axis=1)
        return ndi.map_coordinates(self.dist, idx.T, order=1, mode="nearest"), inside

    def cost(self, a: np.ndarray, t: np.ndarray) -> float:
        d = self.distances(a, t)[0].astype(np.float64)
        return float(np.mean(np.sqrt(d * d + self.c * self.c) - self.c))


def _inverse(a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4 x 4 of the inverse of ``x -> a @ x + t``."""
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = a, t
    return np.linalg.inv(m)


def _dice(prior: Grid, current: Grid, cur_to_prior: np.ndarray) -> float:
    """Dice of the current mask and the prior mask seen through ``cur_to_prior``, where that lands in the prior."""
    idx = np.argwhere(np.ones(current.shape, dtype=bool))
    world = current.index_to_world(idx) @ cur_to_prior[:3, :3].T + cur_to_prior[:3, 3]
    pidx = np.rint(prior.world_to_index(world)).astype(int)
    inside = np.all((pidx >= 0) & (pidx < np.array(prior.shape)), axis=1)
    cur = current.array.reshape(-1).astype(bool)[inside]
    pri = prior.array[tuple(pidx[inside].T)].astype(bool)
    total = int(cur.sum() + pri.sum())
    return 2.0 * float(np.count_nonzero(cur & pri)) / total if total else 0.0


def _masks(volume: hd.Volume, lungs: LungMask | None, grid_mm: float) -> Grid:
    return (lungs or lung_mask(orient(volume), LungMaskParams(grid_mm=grid_mm))).filled


def register(prior: hd.Volume | None, current: hd.Volume | None, params: RegistrationParams | None = None, *,
             prior_lungs: LungMask | None = None, current_lungs: LungMask | None = None) -> Registration:
    """Register the prior CT to the current one (rigid, then affine) on their lung masks.

    Parameters
    ----------
    prior, current
        HU volumes in patient LPS (any orientation); may be ``None`` where the
        corresponding lung mask is given.
    params
        Grid, cost and search settings.
    prior_lungs, current_lungs
        Lung masks already computed (:func:`pacs_node.ml.lungs.lung_mask`); segmented
        here on a ``params.grid_mm`` grid when absent.

    Returns
    -------
    Registration
        The 4 x 4 prior LPS → current LPS and the quality figures.

    Raises
    ------
    pacs_node.ml.lungs.NoLungsFound
        If either volume has no lungs.
    """
    p = params or RegistrationParams()
    start = time.perf_counter()
    if (prior is None and prior_lungs is None) or (current is None and current_lungs is None):
        raise ValueError("each study needs its volume or its lung mask")
    pm = _masks(prior, prior_lungs, p.grid_mm)  # type: ignore[arg-type]
    cm = _masks(current, current_lungs, p.grid_mm)  # type: ignore[arg-type]
    pts = cm.index_to_world(np.argwhere(_edge(cm)))  # LPS mm
    if len(pts) == 0:
        raise ValueError("the current lung mask has no outline inside its grid")
    if len(pts) > p.max_points:
        pts = pts[np.linspace(0, len(pts) - 1, p.max_points).astype(int)]
    cq = cm.index_to_world(np.argwhere(cm.array)).mean(axis=0)
    cp = pm.index_to_world(np.argwhere(pm.array)).mean(axis=0)
    chamfer = _Chamfer(pm, pts - cq, p.huber_mm)  # points centred on the current lungs
    lever = p.lever_mm

    def rigid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return Rotation.from_rotvec(v[3:6] / lever).as_matrix(), cp + v[:3]

    scan = np.arange(-p.z_search_mm, p.z_search_mm + 1e-9, p.z_step_mm)
    z0 = scan[int(np.argmin([chamfer.cost(np.eye(3), cp + [0.0, 0.0, dz]) for dz in scan]))]
    opts = {"eps": 0.05, "maxiter": 200}
    res = optimize.minimize(lambda v: chamfer.cost(*rigid(v)), np.array([0.0, 0.0, z0, 0.0, 0.0, 0.0]),
                            method="L-BFGS-B", options=opts)
    a, t = rigid(res.x)
    rigid_m = _inverse(a, t - a @ cq)
    if p.affine:
        a0 = a

        def affine(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return a0 + v[3:].reshape(3, 3) / lever, cp + v[:3]

        res = optimize.minimize(lambda v: chamfer.cost(*affine(v)), np.r_[res.x[:3], np.zeros(9)],
                                method="L-BFGS-B", options=opts)
        a, t = affine(res.x)
    cur_to_prior = np.eye(4)
    cur_to_prior[:3, :3], cur_to_prior[:3, 3] = a, t - a @ cq
    d, inside = chamfer.distances(a, t)
    d0, inside0 = chamfer.distances(np.eye(3), cq)
    return Registration(
        matrix=np.linalg.inv(cur_to_prior),
        rigid_matrix=rigid_m,
        surface_distance_mm=float(d[inside].mean()) if inside.any() else float("nan"),
        initial_surface_distance_mm=float(d0[inside0].mean()) if inside0.any() else float("nan"),
        dice=_dice(pm, cm, cur_to_prior),
        seconds=time.perf_counter() - start,
    )
