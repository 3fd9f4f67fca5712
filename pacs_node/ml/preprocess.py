"""The detector's front end: volume -> canonical grids, lung mask and candidates.

Training (:mod:`pacs_node.ml.datasets`) and inference (:mod:`pacs_node.ml.detector`)
run exactly this, so the classifier sees at training time the candidates it will
be asked about.  Steps: :func:`~pacs_node.ml.canonical.orient` (views),
:func:`~pacs_node.ml.lungs.lung_mask` on a coarse grid, crop to the lungs' box and
resample to the fine grid (about 1 mm), smooth it if it is noisier than the
training data (:func:`harmonise_noise`), average to a 2 mm grid, and
:func:`~pacs_node.ml.candidates.find_candidates` on it.  Every step is timed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
from scipy import ndimage as ndi

from pacs_node.ml.candidates import (
    BlobPass,
    CandidateParams,
    Candidates,
    find_candidates,
)
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
    smooth_above_noise_hu
        A fine grid whose parenchyma noise (:func:`parenchyma_noise_hu`) exceeds this
        is smoothed (sharp lung kernels, very low dose); ``None``: never.  Above
        the noise of the training phantoms, so that they are never smoothed.
    smooth_to_noise_hu
        Noise the smoothing aims at (about the training phantoms' median).
    """

    fine_mm: float = 1.0
    crop_margin_mm: float = 12.0
    lungs: LungMaskParams = field(default_factory=LungMaskParams)
    candidates: CandidateParams = field(default_factory=CandidateParams)
    smooth_above_noise_hu: float | None = 50.0
    smooth_to_noise_hu: float = 30.0

    def to_dict(self) -> dict[str, object]:
        """Plain values for ``model.toml``."""
        lp = self.lungs
        cp = self.candidates
        return {
            "fine_mm": self.fine_mm,
            "crop_margin_mm": self.crop_margin_mm,
            "smooth_above_noise_hu": "none" if self.smooth_above_noise_hu is None else self.smooth_above_noise_hu,
            "smooth_to_noise_hu": self.smooth_to_noise_hu,
            "lungs": {k: getattr(lp, k) for k in lp.__dataclass_fields__},
            "candidates": {
                "min_blobness_hu": cp.min_blobness_hu,
                "min_hu": cp.min_hu,
                "nms_mm": cp.nms_mm,
                "min_above_parenchyma_hu": "none" if cp.min_above_parenchyma_hu is None else cp.min_above_parenchyma_hu,
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
            floor = c.pop("min_above_parenchyma_hu", None)
            c["min_above_parenchyma_hu"] = None if floor in (None, "none") else float(floor)
            cand = CandidateParams(passes=passes, **c) if passes else CandidateParams(**c)
            above = d.get("smooth_above_noise_hu", cls.smooth_above_noise_hu)
            return cls(fine_mm=float(d.get("fine_mm", 1.0)),  # type: ignore[arg-type]
                       crop_margin_mm=float(d.get("crop_margin_mm", 12.0)),  # type: ignore[arg-type]
                       lungs=lungs, candidates=cand,
                       smooth_above_noise_hu=None if above in (None, "none") else float(above),  # type: ignore[arg-type]
                       smooth_to_noise_hu=float(d.get("smooth_to_noise_hu", cls.smooth_to_noise_hu)))  # type: ignore[arg-type]
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
    noise_hu
        Parenchyma noise of the fine grid as resampled (HU, before any smoothing).
    smoothed_mm
        Gaussian width the fine grid was smoothed with (mm; 0: not smoothed).
    """

    oriented: hd.Volume
    lungs: LungMask
    fine: Grid
    coarse2: Grid
    candidates: Candidates
    timings_s: dict[str, float]
    noise_hu: float = float("nan")
    smoothed_mm: float = 0.0


#: Gaussian widths (mm) tried in turn on a fine grid noisier than the training data.
SMOOTHING_STEPS_MM: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2)


def _noise_sites(fine: Grid, lungs: LungMask, stride: int) -> tuple[np.ndarray, ...] | None:
    """``z, y, x`` indices of the thresholded lung air on a ``stride`` lattice of a fine grid (``None``: under 100)."""
    nz, ny, nx = fine.shape
    lattice = (np.arange(0, nz, stride), np.arange(0, ny - 1, stride), np.arange(0, nx - 1, stride))
    air = lungs.air.lookup_lattice(fine, lattice, outside=False)
    if np.count_nonzero(air) < 100:
        return None
    return tuple(axis[i] for axis, i in zip(lattice, np.nonzero(air), strict=True))


def _noise_at(a: np.ndarray, sites: tuple[np.ndarray, ...]) -> float:
    k, j, i = sites
    v = a[k, j, i]
    d = np.concatenate([a[k, j + 1, i] - v, a[k, j, i + 1] - v])
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def parenchyma_noise_hu(fine: Grid, lungs: LungMask, stride: int = 3) -> float:
    """Fine-grained noise of the lung parenchyma on a fine grid (HU).

    Differences between in-plane neighbours (row and column) at voxels of the
    thresholded lung air (on a ``stride`` lattice), as a median absolute deviation
    times 1.4826 over sqrt(2): the noise standard deviation for uncorrelated noise,
    less for smooth noise, more after edge enhancement; vessels and fissures, a
    small fraction of the voxels, hardly move it.  ``nan`` without lung voxels.
    """
    sites = _noise_sites(fine, lungs, stride)
    return float("nan") if sites is None else _noise_at(fine.array, sites)


def _filter_yx(a: np.ndarray, sigma: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The y and x passes of ``gaussian_filter(..., truncate=3.0, mode="nearest")`` on a z-filtered array (in place).

    With ``rows``, the x pass runs on those rows only (their values are the same, bit
    for bit) and the result has those rows only.
    """
    ndi.gaussian_filter1d(a, sigma[1], axis=1, output=a, truncate=3.0, mode="nearest")
    if rows is not None:
        a = a[:, rows]
    ndi.gaussian_filter1d(a, sigma[2], axis=2, output=a, truncate=3.0, mode="nearest")
    return a


def harmonise_noise(fine: Grid, lungs: LungMask, config: FrontEndConfig) -> tuple[Grid, float, float]:
    """Smooth a fine grid that is noisier or sharper than the training data.

    The classifier was trained on phantoms whose :func:`parenchyma_noise_hu` stays
    below :attr:`FrontEndConfig.smooth_above_noise_hu`; a sharp lung kernel (edge
    overshoot on every vessel) or very low dose gives more, and vessel crossings
    then look like nodules.  Above it, the grid is smoothed with the narrowest
    Gaussian of :data:`SMOOTHING_STEPS_MM` that brings the noise down to
    :attr:`FrontEndConfig.smooth_to_noise_hu`.  Each width's noise is measured after
    smoothing along y and x only the planes and rows it reads; the chosen width then
    smooths the whole grid (the same values as ``gaussian_filter``, bit for bit).

    Returns
    -------
    tuple[Grid, float, float]
        The grid (the input itself when not smoothed), its noise before (HU) and the
        Gaussian width used (mm, 0 when not smoothed).
    """
    sites = _noise_sites(fine, lungs, 3)
    noise = float("nan") if sites is None else _noise_at(fine.array, sites)
    if sites is None or config.smooth_above_noise_hu is None or not noise > config.smooth_above_noise_hu:
        return fine, noise, 0.0
    planes, rows = np.unique(sites[0]), np.unique(np.concatenate([sites[1], sites[1] + 1]))
    local = (np.searchsorted(planes, sites[0]), np.searchsorted(rows, sites[1]), sites[2])
    # scipy filters contiguous lines fastest: the z pass runs on a copy with z last
    z_last = np.ascontiguousarray(np.moveaxis(fine.array, 0, -1))
    width, along_z = 0.0, z_last
    for width in SMOOTHING_STEPS_MM:
        sigma = width / fine.spacing_mm
        along_z = ndi.gaussian_filter1d(z_last, sigma[0], axis=2, truncate=3.0, mode="nearest")
        part = _filter_yx(np.ascontiguousarray(np.moveaxis(along_z[:, :, planes], -1, 0)), sigma, rows)
        if _noise_at(part, local) <= config.smooth_to_noise_hu:
            break
    del z_last
    smoothed = _filter_yx(np.ascontiguousarray(np.moveaxis(along_z, -1, 0)), width / fine.spacing_mm)
    return Grid(smoothed, fine.affine), noise, width


def _fine_grid(oriented: hd.Volume, lungs: LungMask, config: FrontEndConfig,
               scale: float = 1.0) -> tuple[Grid, float, float]:
    lo_w, hi_w = lungs.bounding_box_lps(config.crop_margin_mm)
    lo, hi = box_from_world(oriented, lo_w, hi_w)
    return harmonise_noise(resample(oriented, lo, hi, config.fine_mm, scale=scale), lungs, config)


def fine_grid(oriented: hd.Volume, lungs: LungMask, config: FrontEndConfig, scale: float = 1.0) -> Grid:
    """The lungs' box (plus margin) of a canonical volume on the fine grid (see :func:`harmonise_noise`).

    ``scale`` other than 1 magnifies the content (training augmentation, see
    :func:`~pacs_node.ml.canonical.resample`).
    """
    return _fine_grid(oriented, lungs, config, scale)[0]


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
    fine, noise, smoothed = _fine_grid(oriented, lungs, cfg)
    coarse2 = downsample2(fine)
    timings["resample"] = time.perf_counter() - t
    t = time.perf_counter()
    candidates = find_candidates(coarse2, lungs, cfg.candidates)
    timings["candidates"] = time.perf_counter() - t
    return FrontEnd(oriented, lungs, fine, coarse2, candidates, timings, noise, smoothed)


def spacing_ok(grid: Grid, expected_mm: float, tolerance: float = 0.02) -> bool:
    """Whether a grid's voxels are within ``tolerance`` (relative) of ``expected_mm``."""
    return bool(np.all(np.abs(grid.spacing_mm / expected_mm - 1.0) <= tolerance))
