"""Lung parenchyma of the ``parenchyma`` family: density, gradients, texture scales,
emphysema, and the focal mimics drawn into the lungs (bullae, fibrosis bands,
plate-like atelectasis, scars).

Densities are HU; lengths are mm; sites are world LPS mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pacs_node.ml.phantom._geometry import _Canvas, _Pose, _subpleural_sites
from pacs_node.ml.phantom._study import _Body, _Look
from pacs_node.ml.phantom._tubes import _paint_ball, _paint_chain, _paint_plate
from pacs_node.ml.phantom.truth import Tissue

_IN_LUNG = (Tissue.LUNG, Tissue.VESSEL)


@dataclass(frozen=True)
class _Parenchyma:
    """How the lung parenchyma looks in one study.

    Attributes
    ----------
    hu
        Mean lung density (HU) at mid-depth.
    grad_ap
        HU added from the anterior to the posterior pleura (half of it each side of the centre).
    grad_cc
        HU added per 100 mm below the lung apex (cranio-caudal gradient).
    tex_amp
        Amplitude (HU, one standard deviation) of the study's main texture.
    tex2_amp, tex2_sigma_mm, tex3_amp, tex3_sigma_mm
        Amplitudes (HU) and scales (mm) of two extra texture scales (0 HU: none).
    dep_amp, dep_len
        Dependent atelectasis: HU added at the posterior pleura, decaying over ``dep_len`` mm.
    emph, emph_thr, emph_upper
        Centrilobular emphysema: fraction of the way to -990 HU where the fine texture
        exceeds ``emph_thr`` standard deviations, and the weight given to the upper zone.
    n_bullae, n_bands, n_plates, n_scars
        Numbers of bullae, fibrosis bands, plate-like atelectases and linear scars.
    """

    hu: float
    grad_ap: float
    grad_cc: float
    tex_amp: float
    tex2_amp: float
    tex2_sigma_mm: float
    tex3_amp: float
    tex3_sigma_mm: float
    dep_amp: float
    dep_len: float
    emph: float
    emph_thr: float
    emph_upper: float
    n_bullae: int = 0
    n_bands: int = 0
    n_plates: int = 0
    n_scars: int = 0

    @classmethod
    def classic(cls, L: _Look) -> _Parenchyma:
        """The classic ranges, as already drawn into the study's look."""
        return cls(
            hu=L.lung, grad_ap=L.lung_grad, grad_cc=0.0, tex_amp=L.lung_tex, tex2_amp=0.0, tex2_sigma_mm=4.0,
            tex3_amp=0.0, tex3_sigma_mm=12.0, dep_amp=L.dep_amp, dep_len=L.dep_len, emph=L.emph,
            emph_thr=L.emph_thr, emph_upper=0.0,
        )


def _draw_parenchyma(rng: np.random.Generator) -> _Parenchyma:
    """Draw the wide parenchyma of one study (density -900 to -750 HU, many textures, lesions)."""
    u = rng.uniform
    dep = int(rng.choice(3, p=[0.3, 0.4, 0.3]))
    emph = float(rng.choice([0.0, u(0.3, 1.0)], p=[0.6, 0.4]))
    return _Parenchyma(
        hu=u(-900.0, -750.0),
        grad_ap=u(0.0, 90.0),
        grad_cc=u(-15.0, 35.0),
        tex_amp=u(4.0, 35.0),
        tex2_amp=float(rng.choice([0.0, u(3.0, 25.0)], p=[0.3, 0.7])),
        tex2_sigma_mm=u(2.0, 5.0),
        tex3_amp=float(rng.choice([0.0, u(5.0, 40.0)], p=[0.4, 0.6])),
        tex3_sigma_mm=u(8.0, 25.0),
        dep_amp=(0.0, u(20.0, 150.0), u(150.0, 450.0))[dep],
        dep_len=u(3.0, 25.0),
        emph=emph,
        emph_thr=u(1.0, 2.2),
        emph_upper=u(0.0, 1.0),
        n_bullae=int(rng.integers(1, 7)) if emph > 0 and rng.random() < 0.6 else 0,
        n_bands=int(rng.choice([0, rng.integers(1, 7)], p=[0.45, 0.55])),
        n_plates=int(rng.choice([0, rng.integers(1, 5)], p=[0.4, 0.6])),
        n_scars=int(rng.choice([0, rng.integers(1, 6)], p=[0.5, 0.5])),
    )


def _render_lesions(
    canvas: _Canvas, pose: _Pose, B: _Body, P: _Parenchyma, rng: np.random.Generator, lung_pts: np.ndarray
) -> dict[str, int]:
    """Draw bullae, fibrosis bands, plate-like atelectases and scars; returns how many were drawn."""
    counts = {"bullae": 0, "fibrosis_bands": 0, "atelectasis_plates": 0, "scars": 0}
    if len(lung_pts) < 50:
        return counts
    n_sites = P.n_bullae + P.n_bands + P.n_scars
    sites, normals = _subpleural_sites(canvas, rng, lung_pts, 4 * n_sites + 8, (0.0, 6.0))
    zb = pose.to_body(sites)[:, 2] if len(sites) else np.zeros(0)
    # bullae: thin-walled air spaces against the pleura, preferably in the upper zone
    order = np.argsort(-(zb + rng.uniform(0.0, 0.5 * B.H, len(zb))))
    for i in order[: P.n_bullae]:
        r = float(rng.uniform(5.0, 25.0))
        c = sites[i] - normals[i] * (r - 1.0)
        _paint_ball(canvas, c, r + float(rng.uniform(0.5, 1.2)), float(rng.uniform(-550.0, -250.0)), "over",
                    Tissue.LUNG, (Tissue.VESSEL,), only=_IN_LUNG)
        _paint_ball(canvas, c, r, -1000.0, "over", Tissue.LUNG, (Tissue.VESSEL,), only=_IN_LUNG)
        counts["bullae"] += 1
    used = P.n_bullae
    # fibrosis bands: tortuous dense bands from the pleura inwards
    for i in range(used, min(len(sites), used + P.n_bands)):
        n_pts = int(rng.integers(3, 7))
        step = float(rng.uniform(4.0, 9.0))
        d = -normals[i] + 0.5 * rng.standard_normal(3)
        pts = [sites[i] + normals[i] * 1.0]
        for _ in range(n_pts):
            d = d / (np.linalg.norm(d) + 1e-9) + 0.35 * rng.standard_normal(3)
            pts.append(pts[-1] + step * d / (np.linalg.norm(d) + 1e-9))
        r = float(rng.uniform(0.6, 1.6))
        _paint_chain(canvas, np.array(pts), r, 0.6 * r, float(rng.uniform(-150.0, 30.0)), Tissue.SOFT, _IN_LUNG)
        counts["fibrosis_bands"] += 1
    used += P.n_bands
    # scars: short straight subpleural linear densities
    for i in range(used, min(len(sites), used + P.n_scars)):
        d = -normals[i] + 0.8 * rng.standard_normal(3)
        d /= np.linalg.norm(d) + 1e-9
        length = float(rng.uniform(6.0, 22.0))
        p0 = sites[i] + normals[i] * 0.5
        r = float(rng.uniform(0.7, 1.8))
        _paint_chain(canvas, np.array([p0, p0 + 0.5 * length * d, p0 + length * d]), r, 0.5 * r,
                     float(rng.uniform(-100.0, 40.0)), Tissue.SOFT, _IN_LUNG)
        counts["scars"] += 1
    # plate-like (subsegmental) atelectasis: thin dense sheets in the lower zones, near horizontal
    lz = pose.to_body(lung_pts[: min(len(lung_pts), 4000)])[:, 2]
    low = np.nonzero(lz < 0.4 * B.H)[0]
    for _ in range(P.n_plates if len(low) else 0):
        c = lung_pts[int(rng.choice(low))]
        tilt = rng.normal(0.0, 0.35, 2)
        normal = np.array([tilt[0], tilt[1], 1.0])
        _paint_plate(canvas, c, normal, float(rng.uniform(10.0, 30.0)), float(rng.uniform(3.0, 10.0)),
                     float(rng.uniform(1.5, 4.0)), float(rng.uniform(-250.0, 20.0)), Tissue.SOFT, _IN_LUNG, rng)
        counts["atelectasis_plates"] += 1
    return counts
