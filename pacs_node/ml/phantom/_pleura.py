"""Pleura of the ``pleura`` family: fissures, subpleural partial volume, partial volume
over the diaphragm dome, pleural thickening and plaques (soft or calcified).

Lengths are mm, densities HU, sites world LPS mm; fissure planes are given in the
body frame ``(a, b, zb)`` of :mod:`._geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pacs_node.ml.phantom._geometry import _Canvas, _subpleural_sites
from pacs_node.ml.phantom._study import _Body, _Look
from pacs_node.ml.phantom._tubes import _paint_plate
from pacs_node.ml.phantom.truth import Tissue


@dataclass(frozen=True)
class _Pleura:
    """How the pleura looks in one study.

    Attributes
    ----------
    fissure_amp
        Peak HU added by a fissure drawn ``fissure_w_mm`` thick (before slice partial volume).
    fissure_w_mm
        Fissure thickness (mm; the classic one is 0.35 mm).
    fissure_gap
        Fraction of each fissure's area left out (incomplete fissures), 0 to 1.
    fissures
        ``(zb0, slope_b, slope_a)`` of the right major, left major and right minor fissures.
    rim_hu, rim_mm
        Subpleural partial volume: HU added at the pleura, decaying over ``rim_mm``.
    dome_pv_mm
        Extra width (mm) of the partial-volume transition over the diaphragm dome and the apex.
    thick_mm, thick_angle, thick_span, thick_z, thick_hu
        Pleural thickening: maximal thickness (mm, 0: none), direction (rad, in the
        axial plane of the body frame, 0 = patient left), angular half-span (rad),
        body-frame z range (mm) and density (HU).
    n_plaques, calcified
        Number of pleural plaques and the fraction of them that is calcified.
    """

    fissure_amp: float
    fissure_w_mm: float
    fissure_gap: float
    fissures: tuple[tuple[float, float, float], ...]
    rim_hu: float = 0.0
    rim_mm: float = 1.0
    dome_pv_mm: float = 0.0
    thick_mm: float = 0.0
    thick_angle: float = 0.0
    thick_span: float = 1.0
    thick_z: tuple[float, float] = (0.0, 0.0)
    thick_hu: float = 40.0
    n_plaques: int = 0
    calcified: float = 0.0

    @classmethod
    def classic(cls, B: _Body, L: _Look) -> _Pleura:
        """The classic fissures (as drawn into the study), nothing else."""
        return cls(fissure_amp=L.fissure_amp, fissure_w_mm=0.35, fissure_gap=0.0, fissures=B.fissures)


def _draw_pleura(rng: np.random.Generator, B: _Body) -> _Pleura:
    """Draw the wide pleura of one study (body-frame fissures relative to ``B``'s carina)."""
    u = rng.uniform
    fissures = (
        (u(35.0, 100.0), u(0.4, 1.5), u(-0.3, 0.3)),
        (u(45.0, 110.0), u(0.4, 1.5), u(-0.3, 0.3)),
        (B.z_car - u(15.0, 70.0), u(-0.2, 0.2), u(-0.15, 0.15)),
    )
    thick = rng.random() < 0.3
    zc = u(0.0, B.H)
    return _Pleura(
        fissure_amp=float(rng.choice([0.0, u(40.0, 550.0)], p=[0.15, 0.85])),
        fissure_w_mm=u(0.2, 0.9),
        fissure_gap=float(rng.choice([0.0, u(0.1, 0.6)], p=[0.5, 0.5])),
        fissures=fissures,
        rim_hu=float(rng.choice([0.0, u(20.0, 160.0)], p=[0.3, 0.7])),
        rim_mm=u(0.6, 3.0),
        dome_pv_mm=float(rng.choice([0.0, u(1.0, 6.0)], p=[0.35, 0.65])),
        thick_mm=u(1.5, 6.0) if thick else 0.0,
        thick_angle=u(-np.pi, np.pi),
        thick_span=u(0.4, 2.0),
        thick_z=(zc - u(20.0, 90.0), zc + u(20.0, 90.0)),
        thick_hu=u(10.0, 70.0),
        n_plaques=int(rng.integers(1, 9)) if rng.random() < 0.4 else 0,
        calcified=u(0.0, 1.0),
    )


def _render_plaques(
    canvas: _Canvas, Pl: _Pleura, rng: np.random.Generator, lung_pts: np.ndarray
) -> dict[str, int]:
    """Draw pleural plaques (flat, against the costal or diaphragmatic pleura); returns counts."""
    counts = {"plaques": 0, "calcified_plaques": 0}
    if Pl.n_plaques == 0 or len(lung_pts) < 50:
        return counts
    sites, normals = _subpleural_sites(canvas, rng, lung_pts, Pl.n_plaques, (0.0, 25.0), down=0.3)
    for c, n in zip(sites, normals, strict=True):
        t = float(rng.uniform(1.0, 4.5))
        calc = bool(rng.random() < Pl.calcified)
        hu = float(rng.uniform(250.0, 900.0)) if calc else float(rng.uniform(20.0, 80.0))
        label = Tissue.BONE if calc else Tissue.SOFT
        # lies on the pleura, bulging into the lung by about its thickness
        _paint_plate(canvas, c - n * (0.5 * t - 0.4), n, float(rng.uniform(5.0, 18.0)), float(rng.uniform(4.0, 12.0)),
                     t, hu, label, (Tissue.LUNG, Tissue.VESSEL, Tissue.SOFT), rng)
        counts["plaques"] += 1
        counts["calcified_plaques"] += int(calc)
    return counts
