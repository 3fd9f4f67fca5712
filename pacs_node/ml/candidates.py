"""Nodule candidates: multi-scale Hessian blobness inside the lung mask, on a 2 mm grid.

A nodule is a compact bright blob against darker lung, whatever its density: the
Hessian of the Gaussian-smoothed image then has three negative eigenvalues of
similar size at its centre, at a scale near its radius / sqrt(3).  A vessel (one
eigenvalue near zero) or the pleura (two near zero) score low.  The blobness used
here is ``sigma^2 * min(|lambda|)`` where all eigenvalues are negative, in HU
(scale-normalised), so that solid, part-solid, ground-glass and calcified nodules
of 3 to 30 mm all give local maxima.  Two things keep it robust across scanners:
HU is clipped to a window around lung and soft tissue before filtering (so bone,
contrast and calcium do not dominate, and ground-glass is not dwarfed by solid
tissue), and everything outside the filled lung mask is replaced by the study's
own parenchyma value, which turns a nodule on the pleura into a free-standing
blob.  Local maxima are thinned by distance (non-maximum suppression) and capped
to the strongest :attr:`CandidateParams.max_candidates`.  The passes run side by
side, on as many threads as torch may use.

Coordinates: candidates are returned in patient LPS (mm); the working grid is a
:class:`~pacs_node.ml.canonical.Grid`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from pacs_node.ml.canonical import Grid
from pacs_node.ml.lungs import LungMask


@dataclass(frozen=True)
class BlobPass:
    """One search for blobs on one rendering of the image (HU).

    Attributes
    ----------
    window_hu
        HU window the image is clipped to before filtering.
    suppress_above_hu
        If set, voxels denser than this (and a ``suppress_margin_mm`` rim around them)
        are replaced by the parenchyma value first: vessels and solid tissue vanish,
        so faint ground-glass blobs are not outranked by vessel crossings.
    suppress_margin_mm
        Rim removed around suppressed voxels (partial-volume edges of vessels).
    scales_mm
        Standard deviations (mm) of the Gaussian scales searched.
    max_candidates
        Quota of this pass.
    """

    window_hu: tuple[float, float]
    suppress_above_hu: float | None = None
    suppress_margin_mm: float = 0.0
    scales_mm: tuple[float, ...] = (1.2, 1.8, 2.7, 4.0, 6.0, 8.5)
    max_candidates: int = 300


@dataclass(frozen=True)
class CandidateParams:
    """Parameters of :func:`find_candidates` (mm, HU).

    Attributes
    ----------
    passes
        The image renderings searched, each with its quota: by default one for solid
        and calcified nodules and one for ground-glass (and the halo of part-solid).
    min_blobness_hu
        Weakest scale-normalised blobness kept.
    min_hu
        The lightly smoothed HU at a candidate must be above this (denser than lung).
    min_above_parenchyma_hu
        If set, the bound is ``min(min_hu, parenchyma + this)``: in a study whose lung
        is darker than usual (emphysema, a generous inspiration, another scanner's
        calibration) a faint ground-glass nodule is still denser than its own lung
        even when it is darker than ``min_hu``.
    nms_mm
        Candidates closer than this to a stronger one (of the same pass) are dropped;
        across passes, a candidate closer than this to one already kept is dropped.
    """

    passes: tuple[BlobPass, ...] = (
        BlobPass(window_hu=(-1000.0, 100.0), max_candidates=300),
        BlobPass(window_hu=(-1000.0, -300.0), suppress_above_hu=-300.0,
                 scales_mm=(2.2, 3.2, 4.6, 6.5, 9.0), max_candidates=250),
    )
    min_blobness_hu: float = 15.0
    min_hu: float = -820.0
    nms_mm: float = 4.0
    min_above_parenchyma_hu: float | None = None

    def density_floor_hu(self, parenchyma_hu: float) -> float:
        """Smoothed HU a candidate must exceed in a study with this parenchyma HU."""
        if self.min_above_parenchyma_hu is None or not np.isfinite(parenchyma_hu):
            return self.min_hu
        return min(self.min_hu, parenchyma_hu + self.min_above_parenchyma_hu)

    @property
    def max_candidates(self) -> int:
        """Largest number of candidates a study can get."""
        return sum(p.max_candidates for p in self.passes)


@dataclass(frozen=True, eq=False)
class Candidates:
    """Candidate nodule centres of one study, strongest first.

    Attributes
    ----------
    centres_lps_mm
        ``N x 3`` LPS positions (mm).
    blobness
        Scale-normalised blobness (HU) at each candidate.
    scale_mm
        Gaussian scale (mm) at which each candidate's blobness peaked.
    pass_index
        Which :class:`BlobPass` found each candidate.
    """

    centres_lps_mm: np.ndarray
    blobness: np.ndarray
    scale_mm: np.ndarray
    pass_index: np.ndarray

    def __len__(self) -> int:
        return len(self.blobness)


def _largest_eigenvalue(hzz: np.ndarray, hyy: np.ndarray, hxx: np.ndarray,
                        hzy: np.ndarray, hzx: np.ndarray, hyx: np.ndarray) -> np.ndarray:
    """Largest eigenvalue of symmetric 3 x 3 matrices given by their six components (closed form)."""
    q = (hzz + hyy + hxx) / 3.0
    p1 = hzy * hzy + hzx * hzx + hyx * hyx
    a, b, c = hzz - q, hyy - q, hxx - q
    p = np.sqrt((a * a + b * b + c * c + 2.0 * p1) / 6.0) + np.float32(1e-12)
    # B = (H - q I) / p; det(B) / 2 = cos(3 phi)
    a, b, c, d, e, f = a / p, b / p, c / p, hzy / p, hzx / p, hyx / p
    det = a * (b * c - f * f) - d * (d * c - f * e) + e * (d * f - b * e)
    phi = np.arccos(np.clip(det / 2.0, -1.0, 1.0)) / 3.0
    return q + 2.0 * p * np.cos(phi)


def blobness(image: np.ndarray, sigma_vox: float, where: np.ndarray | None = None) -> np.ndarray:
    """Scale-normalised blobness ``sigma^2 * max(0, -lambda_max)`` of a 3D image (same units).

    ``lambda_max`` is the largest (least negative) Hessian eigenvalue of the image
    smoothed with a Gaussian of ``sigma_vox`` voxels (isotropic voxels assumed); it
    is negative at the centre of a bright blob only, so only voxels whose three
    second derivatives are negative (and that are in ``where``, if given) are
    computed; the others get 0.
    """
    g = ndi.gaussian_filter(image, sigma_vox, truncate=3.0, mode="nearest")
    gp = np.pad(g, 1, mode="edge")
    del g
    c2 = 2 * gp[1:-1, 1:-1, 1:-1]
    hzz = gp[2:, 1:-1, 1:-1] + gp[:-2, 1:-1, 1:-1] - c2
    hyy = gp[1:-1, 2:, 1:-1] + gp[1:-1, :-2, 1:-1] - c2
    hxx = gp[1:-1, 1:-1, 2:] + gp[1:-1, 1:-1, :-2] - c2
    del c2
    # a negative definite Hessian has a negative diagonal
    todo = (hzz < 0) & (hyy < 0) & (hxx < 0)
    if where is not None:
        todo &= where
    at = np.flatnonzero(todo)
    # the mixed derivatives at those voxels only, from the padded array's flat index
    flat = gp.ravel()
    sz, sy = gp.shape[1] * gp.shape[2], gp.shape[2]
    z, y, x = np.unravel_index(at, image.shape)
    p = (z + 1) * sz + (y + 1) * sy + (x + 1)
    del z, y, x

    def mixed(s1: int, s2: int) -> np.ndarray:
        return (flat[p + s1 + s2] - flat[p + s1 - s2] - flat[p - s1 + s2] + flat[p - s1 - s2]) / 4

    lam = _largest_eigenvalue(hzz.ravel()[at], hyy.ravel()[at], hxx.ravel()[at],
                              mixed(sz, sy), mixed(sz, 1), mixed(sy, 1))
    out = np.zeros(image.shape, dtype=np.float32)
    out.ravel()[at] = np.maximum(-lam, 0.0).astype(np.float32) * np.float32(sigma_vox * sigma_vox)
    return out


def _nms(points_mm: np.ndarray, order: np.ndarray, radius_mm: float, limit: int) -> np.ndarray:
    """Greedy non-maximum suppression: indices (into ``points_mm``) kept, in ``order``."""
    kept: list[int] = []
    kept_pts = np.empty((limit, 3))
    r2 = radius_mm * radius_mm
    for i in order:
        n = len(kept)
        if n and np.min(((kept_pts[:n] - points_mm[i]) ** 2).sum(axis=1)) < r2:
            continue
        kept_pts[n] = points_mm[i]
        kept.append(int(i))
        if len(kept) >= limit:
            break
    return np.array(kept, dtype=np.int64)


def find_candidates(grid2: Grid, lungs: LungMask, params: CandidateParams | None = None) -> Candidates:
    """Find candidate nodule centres.

    Parameters
    ----------
    grid2
        HU image of the lung region on an isotropic grid of about 2 mm (``float32``),
        axes along S, P, L (see :mod:`pacs_node.ml.canonical`).
    lungs
        The study's lung masks; candidates must lie in :attr:`LungMask.region`, and
        everything outside :attr:`LungMask.filled` is set to the parenchyma HU.
    params
        Scales, thresholds and cap.

    Returns
    -------
    Candidates
        At most ``params.max_candidates`` centres in LPS mm, strongest first.
    """
    p = params or CandidateParams()
    vox = float(np.mean(grid2.spacing_mm))
    filled = lungs.filled.lookup_lattice(grid2, outside=False)
    region = lungs.region.lookup_lattice(grid2, outside=False)
    smooth = ndi.gaussian_filter(grid2.array, 1.2 / vox, truncate=2.0)
    allowed = region & (smooth > p.density_floor_hu(lungs.parenchyma_hu))
    del smooth, region
    centres, values, scales, passes = [], [], [], []
    # the passes are independent and numpy and scipy release the GIL: one thread each, up to torch's count
    with ThreadPoolExecutor(max(1, min(len(p.passes), torch.get_num_threads()))) as pool:
        found = list(pool.map(lambda bp: _search(grid2, filled, allowed, lungs.parenchyma_hu, bp, p, vox), p.passes))
    for k, (c, v, s) in enumerate(found):
        centres.append(c)
        values.append(v)
        scales.append(s)
        passes.append(np.full(len(v), k, dtype=np.int16))
    # merge passes: each pass's candidates in its own order, earlier passes first
    all_c = np.concatenate(centres) if centres else np.empty((0, 3))
    all_v = np.concatenate(values) if values else np.empty(0, np.float32)
    all_s = np.concatenate(scales) if scales else np.empty(0, np.float32)
    all_p = np.concatenate(passes) if passes else np.empty(0, np.int16)
    keep = _nms(all_c, np.arange(len(all_c)), p.nms_mm, max(1, p.max_candidates))
    if len(keep) == 0:
        return Candidates(np.empty((0, 3)), np.empty(0, np.float32), np.empty(0, np.float32), np.empty(0, np.int16))
    return Candidates(all_c[keep], all_v[keep], all_s[keep], all_p[keep])


def _search(grid2: Grid, filled: np.ndarray, allowed: np.ndarray, parenchyma_hu: float, bp: BlobPass,
            p: CandidateParams, vox: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strongest blob maxima of one pass: centres (LPS mm), blobness (HU), scale (mm)."""
    lo, hi = bp.window_hu
    background = float(np.clip(parenchyma_hu, lo, hi))
    image = np.clip(grid2.array, lo, hi).astype(np.float32)
    image[~filled] = background
    if bp.suppress_above_hu is not None:
        dense = grid2.array > bp.suppress_above_hu
        if bp.suppress_margin_mm > 0:
            dense = ndi.binary_dilation(dense, iterations=max(1, int(round(bp.suppress_margin_mm / vox))))
        image[dense] = background
        del dense
    # a peak is an allowed voxel at least as strong as its 26 neighbours: blobness is needed there only
    need = ndi.binary_dilation(allowed, structure=np.ones((3, 3, 3), dtype=bool))
    best = np.zeros(grid2.shape, dtype=np.float32)
    best_scale = np.zeros(grid2.shape, dtype=np.float32)
    for s in bp.scales_mm:
        b = blobness(image, s / vox, where=need)
        better = b > best
        best[better] = b[better]
        best_scale[better] = s
        del b, better
    del image, need
    peaks = (best == ndi.maximum_filter(best, size=3, mode="nearest")) & (best >= p.min_blobness_hu) & allowed
    idx = np.argwhere(peaks)
    values = best[tuple(idx.T)]
    scales = best_scale[tuple(idx.T)]
    centres = grid2.index_to_world(idx)
    order = np.argsort(-values, kind="stable")
    keep = _nms(centres, order, p.nms_mm, bp.max_candidates)
    if len(keep) == 0:
        return np.empty((0, 3)), np.empty(0, np.float32), np.empty(0, np.float32)
    return centres[keep], values[keep], scales[keep]
