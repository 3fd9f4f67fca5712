"""The detector's front end: volume -> canonical grids, lung mask and candidates.

Training (:mod:`pacs_node.ml.datasets`) and inference (:mod:`pacs_node.ml.detector`)
run exactly this, so the classifier sees at training time the candidates it will
be asked about.  Steps: :func:`~pacs_node.ml.canonical.orient` (views),
:func:`~pacs_node.ml.lungs.lung_mask` on a coarse grid, crop to the lungs' box and
resample to the fine grid (about 1 mm), average to a 2 mm grid, and
:func:`~pacs_node.ml.candidates.find_candidates` on it.  Every step is timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np

from pacs_node.ml.candidates import BlobPass, CandidateParams, Candidates, find_candidates
from pacs_node.ml.canonical import Grid, box_from_world, downsample2, orient, resample
from pacs_node.ml.lungs import LungMask, LungMaskParams, lung_mask


@dataclass(frozen=True)
class FrontEndConfig:
    """Parameters of the front end (stored in ``model.toml``).

    Attributes
    ----------
    fine_mm
        Spacing of the fine grid the patches are cut from (mm).
    crop_margin_mm
        Margin around the lung region's box kept in the fine grid (mm).
    lungs
        Lung mask parameters.
    candidates
        Candidate generator parameters.
    """

    fine_mm: float = 1.0
    crop_margin_mm: float = 12.0
    lungs: LungMaskParams = field(default_factory=LungMaskParams)
    candidates: CandidateParams = field(default_factory=CandidateParams)

    def to_dict(self) -> dict[str, object]:
        """Plain values for ``model.toml``."""
        lp = self.lungs
        cp = self.candidates
        return {
            "fine_mm": self.fine_mm,
            "crop_margin_mm": self.crop_margin_mm,
            "lungs": {k: getattr(lp, k) for k in lp.__dataclass_fields__},
            "candidates": {
                "min_blobness_hu": cp.min_blobness_hu,
                "min_hu": cp.min_hu,
                "nms_mm": cp.nms_mm,
                "passes": [
                    {
                        "window_hu": list(bp.window_hu),
                        "suppress_above_hu": bp.suppress_above_hu if bp.suppress_above_hu is not None else "none",
                        "suppress_margin_mm": bp.suppress_margin_mm,
                        "scales_mm": list(bp.scales_mm),
                        "max_candidates": bp.max_candidates,
                    }
                    for bp in cp.passes
                ],
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> FrontEndConfig:
        """Inverse of :meth:`to_dict`; raises ``ValueError``/``TypeError`` naming a bad field."""
        try:
            lungs = LungMaskParams(**dict(d.get("lungs", {})))  # type: ignore[arg-type]
            c = dict(d.get("candidates", {}))  # type: ignore[arg-type]
            passes = tuple(
                BlobPass(
                    window_hu=(float(bp["window_hu"][0]), float(bp["window_hu"][1])),
                    suppress_above_hu=None if bp.get("suppress_above_hu", "none") == "none"
                    else float(bp["suppress_above_hu"]),
                    suppress_margin_mm=float(bp.get("suppress_margin_mm", 0.0)),
                    scales_mm=tuple(float(v) for v in bp["scales_mm"]),
                    max_candidates=int(bp["max_candidates"]),
                )
                for bp in c.pop("passes", [])
            )
            cand = CandidateParams(passes=passes, **c) if passes else CandidateParams(**c)
            return cls(fine_mm=float(d.get("fine_mm", 1.0)),  # type: ignore[arg-type]
                       crop_margin_mm=float(d.get("crop_margin_mm", 12.0)),  # type: ignore[arg-type]
                       lungs=lungs, candidates=cand)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad front-end parameters: {exc}") from exc


@dataclass(frozen=True, eq=False)
class FrontEnd:
    """What the front end made of one volume.

    Attributes
    ----------
    oriented
        The input volume with axes along S, P, L (views of the caller's array).
    lungs
        Lung masks (coarse grid).
    fine
        HU of the lungs' box on the fine grid (``float32``).
    coarse2
        ``fine`` averaged 2 x 2 x 2 (the candidate grid).
    candidates
        Candidate centres (LPS mm), strongest first.
    timings_s
        Wall time of each step (s).
    """

    oriented: hd.Volume
    lungs: LungMask
    fine: Grid
    coarse2: Grid
    candidates: Candidates
    timings_s: dict[str, float]


def fine_grid(oriented: hd.Volume, lungs: LungMask, config: FrontEndConfig, scale: float = 1.0) -> Grid:
    """The lungs' box (plus margin) of a canonical volume on the fine grid.

    ``scale`` other than 1 magnifies the content (training augmentation, see
    :func:`~pacs_node.ml.canonical.resample`).
    """
    lo_w, hi_w = lungs.bounding_box_lps(config.crop_margin_mm)
    lo, hi = box_from_world(oriented, lo_w, hi_w)
    return resample(oriented, lo, hi, config.fine_mm, scale=scale)


def run_front_end(volume: hd.Volume, config: FrontEndConfig | None = None) -> FrontEnd:
    """Orient, segment the lungs, resample and find candidates (see the module docstring).

    Raises
    ------
    pacs_node.ml.lungs.NoLungsFound
        If the volume has no lungs.
    ValueError
        If the volume is not a patient-space volume.
    """
    cfg = config or FrontEndConfig()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    oriented = orient(volume)
    lungs = lung_mask(oriented, cfg.lungs)
    timings["lung_mask"] = time.perf_counter() - t
    t = time.perf_counter()
    fine = fine_grid(oriented, lungs, cfg)
    coarse2 = downsample2(fine)
    timings["resample"] = time.perf_counter() - t
    t = time.perf_counter()
    candidates = find_candidates(coarse2, lungs, cfg.candidates)
    timings["candidates"] = time.perf_counter() - t
    return FrontEnd(oriented, lungs, fine, coarse2, candidates, timings)


def spacing_ok(grid: Grid, expected_mm: float, tolerance: float = 0.02) -> bool:
    """Whether a grid's voxels are within ``tolerance`` (relative) of ``expected_mm``."""
    return bool(np.all(np.abs(grid.spacing_mm / expected_mm - 1.0) <= tolerance))
