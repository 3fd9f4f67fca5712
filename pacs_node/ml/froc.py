"""The LUNA16 scoring rules: hits, FROC, CPM, breakdowns by size and type, the FROC plot.

Scoring follows the challenge's ``noduleCADEvaluationLUNA16.py``:

* A candidate hits a reference nodule when its distance to the nodule's centre is
  *strictly* less than R = diameter / 2 (world coordinates, mm).  A candidate may hit
  several nodules (it then counts for each); a nodule hit several times counts once,
  with the highest score of its hits.
* A candidate that hits no included nodule but hits an excluded finding (LUNA16's
  ``annotations_excluded.csv``) is ignored: neither a true nor a false positive.
  Excluded findings of unknown size (diameter < 0 there) match within 5 mm, as the
  official script does.
* Every other candidate is a false positive.  The FP rate divides by the number of
  scans in the evaluation, those without nodules or without candidates included.
* The FROC curve has one point per distinct score threshold (from the highest score
  down), preceded by (0, 0): the same points as the official ``computeFROC`` gets from
  ``sklearn.metrics.roc_curve``.  Missed nodules count in the sensitivity's denominator.

**CPM** is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs/scan, each read off
the FROC curve by linear interpolation between its points, i.e. ``np.interp(rate, fps,
sens)`` as the official script interpolates the curve it plots (``sens_itp``).  Where
the curve rises vertically at exactly that rate (a rate of k / n_scans), this gives the
top of the rise: the best sensitivity with on average at most that many FPs/scan.
Beyond the last point the curve stays flat.  The official script interpolates onto a
10,001-point grid from 1/8 to 8 for its plot and FROC file, and the CPM variants built
on it read the grid points nearest each rate (within 3e-4); we evaluate the same
interpolation at the exact rates.  (Radboudumc's 2025 leaderboard CPM calculator takes the
FROC point *nearest* to each rate, the first one on ties: no interpolation, and a lower
sensitivity where the curve rises at exactly that rate.)

Size and type breakdowns use a score threshold: the lowest one with at most the given
FPs/scan.  Without ties between the scores of true and false positives they agree
exactly with the interpolated sensitivity; with ties the interpolation may lie between
two thresholds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: The seven FP rates (FPs/scan) whose mean sensitivity is the CPM.
FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Size classes of reference nodules (diameter, mm): < 6, 6 to 10, > 10.
SIZE_CLASSES: tuple[str, ...] = ("<6 mm", "6-10 mm", ">10 mm")
#: Matching diameter of excluded findings whose size is unknown (official script).
UNKNOWN_DIAMETER_MM = 10.0


@dataclass(frozen=True)
class Reference:
    """A reference nodule (or an excluded finding) in world coordinates (LPS, mm)."""

    centre_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    type: str | None = None

    def __post_init__(self) -> None:
        _check_point("centre_xyz_mm", self.centre_xyz_mm)
        if not (math.isfinite(self.diameter_mm) and self.diameter_mm > 0):
            raise ValueError(f"diameter_mm must be a positive number, got {self.diameter_mm!r}")
        object.__setattr__(self, "centre_xyz_mm", tuple(float(v) for v in self.centre_xyz_mm))

    @property
    def size_class(self) -> str:
        """``"<6 mm"``, ``"6-10 mm"`` or ``">10 mm"`` by diameter."""
        if self.diameter_mm < 6:
            return SIZE_CLASSES[0]
        return SIZE_CLASSES[1] if self.diameter_mm <= 10 else SIZE_CLASSES[2]


@dataclass(frozen=True)
class Candidate:
    """A detector mark: a point in world coordinates (LPS, mm) and its score."""

    centre_xyz_mm: tuple[float, float, float]
    score: float

    def __post_init__(self) -> None:
        _check_point("centre_xyz_mm", self.centre_xyz_mm)
        if not math.isfinite(self.score):
            raise ValueError(f"score must be a finite number, got {self.score!r}")
        object.__setattr__(self, "centre_xyz_mm", tuple(float(v) for v in self.centre_xyz_mm))


def _check_point(name: str, point: Sequence[float]) -> None:
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise ValueError(f"{name} must be three finite numbers, got {point!r}")


@dataclass(frozen=True)
class NoduleOutcome:
    """One reference nodule and the highest score among its hits (``None``: missed)."""

    seriesuid: str
    reference: Reference
    score: float | None


@dataclass(frozen=True, eq=False)
class FrocResult:
    """Outcome of scoring candidates against references over a set of scans.

    Attributes
    ----------
    n_scans
        Scans in the evaluation (the FP rate's denominator).
    nodules
        Every reference nodule with its best hit score.
    false_positive_scores
        Scores of the false positives, highest first.
    n_candidates
        All candidates scored.
    n_ignored
        Candidates ignored because they hit only excluded findings.
    fps_per_scan, sensitivity, thresholds
        The FROC points, from (0, 0) at threshold +inf down to the lowest score.
    """

    n_scans: int
    nodules: tuple[NoduleOutcome, ...]
    false_positive_scores: np.ndarray
    n_candidates: int
    n_ignored: int
    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray

    @property
    def n_nodules(self) -> int:
        return len(self.nodules)

    @property
    def n_detected(self) -> int:
        """Nodules hit at any threshold."""
        return sum(n.score is not None for n in self.nodules)

    @property
    def n_false_positives(self) -> int:
        return int(self.false_positive_scores.size)

    def sensitivity_at(self, fps_per_scan: float) -> float:
        """Sensitivity read off the FROC curve at an FP rate (``np.interp`` semantics).

        Linear between FROC points; at a rate where the curve rises vertically, the top
        of the rise; flat beyond the last point.  NaN when there are no nodules.
        """
        if fps_per_scan < 0:
            raise ValueError(f"fps_per_scan must be >= 0, got {fps_per_scan!r}")
        fps, sens = self.fps_per_scan, self.sensitivity
        i = int(np.searchsorted(fps, fps_per_scan, side="right")) - 1
        if i >= len(fps) - 1:
            return float(sens[-1])
        x0, x1, y0, y1 = fps[i], fps[i + 1], sens[i], sens[i + 1]
        return float(y0 + (y1 - y0) * (fps_per_scan - x0) / (x1 - x0))

    @property
    def sensitivities(self) -> tuple[float, ...]:
        """Sensitivity at each of :data:`FP_RATES`."""
        return tuple(self.sensitivity_at(r) for r in FP_RATES)

    @property
    def cpm(self) -> float:
        """Competition performance metric: mean sensitivity at :data:`FP_RATES`."""
        return float(np.mean(self.sensitivities))

    def threshold_at(self, fps_per_scan: float) -> float:
        """Lowest score threshold with at most ``fps_per_scan`` FPs/scan (+inf: none)."""
        n_fp_allowed = fps_per_scan * self.n_scans
        counts = np.arange(1, self.n_false_positives + 1)
        ok = counts <= n_fp_allowed + 1e-9
        if ok.all():  # every FP allowed: the lowest score of all
            return float(self.thresholds[-1])
        # the next FP beyond the budget must stay out: keep scores strictly above it
        first_excess = float(self.false_positive_scores[int(ok.sum())])
        above = self.thresholds[self.thresholds > first_excess]
        return float(above[-1])

    def breakdown(self, fps_per_scan: float) -> dict[str, Any]:
        """Sensitivity overall, by size class and by type at an operating point (FPs/scan)."""
        return {"fps_per_scan": fps_per_scan, **self.breakdown_at_score(self.threshold_at(fps_per_scan))}

    def breakdown_at_score(self, threshold: float) -> dict[str, Any]:
        """Sensitivity overall, by size class and by type of the marks scoring ``threshold`` or more.

        This is how a model's own operating point (its card's ``report_score``) is read.
        """

        def count(outcomes: Iterable[NoduleOutcome]) -> dict[str, Any]:
            outcomes = list(outcomes)
            hit = sum(o.score is not None and o.score >= threshold for o in outcomes)
            return {"nodules": len(outcomes), "detected": hit,
                    "sensitivity": hit / len(outcomes) if outcomes else None}

        types = sorted({o.reference.type or "unknown" for o in self.nodules})
        n_fp = int(np.sum(self.false_positive_scores >= threshold))
        return {
            "threshold": _finite_or_none(threshold),
            "false_positives": n_fp,
            "false_positives_per_scan": n_fp / self.n_scans,
            **count(self.nodules),
            "by_size": {c: count(o for o in self.nodules if o.reference.size_class == c) for c in SIZE_CLASSES},
            "by_type": {t: count(o for o in self.nodules if (o.reference.type or "unknown") == t) for t in types},
        }

    def to_dict(self, operating_point: float = 1.0) -> dict[str, Any]:
        """JSON-able summary: CPM, the 7 sensitivities, FROC points and breakdowns."""
        return {
            "cpm": _finite_or_none(self.cpm),
            "fp_rates": list(FP_RATES),
            "sensitivities": [_finite_or_none(s) for s in self.sensitivities],
            "n_scans": self.n_scans,
            "n_nodules": self.n_nodules,
            "n_detected": self.n_detected,
            "n_candidates": self.n_candidates,
            "n_false_positives": self.n_false_positives,
            "n_ignored_on_excluded": self.n_ignored,
            "false_positives_per_scan": self.n_false_positives / self.n_scans,
            "operating_point": self.breakdown(operating_point),
            "at_fp_rates": [self.breakdown(r) for r in FP_RATES],
            "froc": {
                "fps_per_scan": self.fps_per_scan.tolist(),
                "sensitivity": [_finite_or_none(s) for s in self.sensitivity],
                "threshold": [_finite_or_none(t) for t in self.thresholds],
            },
            "missed": [{"seriesuid": o.seriesuid, "centre_xyz_mm": list(o.reference.centre_xyz_mm),
                        "diameter_mm": o.reference.diameter_mm, "type": o.reference.type}
                       for o in self.nodules if o.score is None],
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def score_findings(
    references: Mapping[str, Sequence[Reference]],
    candidates: Mapping[str, Sequence[Candidate]],
    excluded: Mapping[str, Sequence[Reference]] | None = None,
    scan_ids: Iterable[str] | None = None,
) -> FrocResult:
    """Score detector candidates against reference nodules, LUNA16-style.

    Parameters
    ----------
    references
        Reference nodules per series UID (world LPS mm).
    candidates
        Detector marks per series UID.
    excluded
        Findings whose hits are ignored (LUNA16's ``annotations_excluded.csv``).
    scan_ids
        Every series UID in the evaluation (LUNA16's ``seriesuids.csv``).  Default:
        all keys of ``references``, ``candidates`` and ``excluded``; a scan with
        neither nodules nor candidates must then appear with an empty list.

    Raises
    ------
    ValueError
        If there are no scans, or candidates or references name a scan outside
        ``scan_ids``.
    """
    excluded = excluded or {}
    if scan_ids is None:
        scans = sorted({*references, *candidates, *excluded})
    else:
        scans = list(dict.fromkeys(scan_ids))
        for name, mapping in (("candidates", candidates), ("references", references), ("excluded", excluded)):
            stray = sorted(set(mapping) - set(scans))
            if stray:
                raise ValueError(f"{name} name scans outside scan_ids: {', '.join(stray[:5])}")
    if not scans:
        raise ValueError("the evaluation needs at least one scan")

    outcomes: list[NoduleOutcome] = []
    fp_scores: list[float] = []
    n_candidates = n_ignored = 0
    for uid in scans:
        cands = list(candidates.get(uid, ()))
        refs = list(references.get(uid, ()))
        n_candidates += len(cands)
        points = np.array([c.centre_xyz_mm for c in cands], dtype=float).reshape(-1, 3)
        scores = np.array([c.score for c in cands], dtype=float)
        hit_included = hit_matrix(refs, points)
        for ref, hits in zip(refs, hit_included):
            best = float(scores[hits].max()) if hits.any() else None
            outcomes.append(NoduleOutcome(uid, ref, best))
        on_nodule = hit_included.any(axis=0)
        on_excluded = hit_matrix(list(excluded.get(uid, ())), points).any(axis=0) & ~on_nodule
        n_ignored += int(on_excluded.sum())
        fp_scores.extend(scores[~on_nodule & ~on_excluded].tolist())

    fp = np.sort(np.array(fp_scores, dtype=float))[::-1]
    tp = np.array([o.score for o in outcomes if o.score is not None], dtype=float)
    fps, sens, thresholds = _froc_points(tp, fp, len(outcomes), len(scans))
    return FrocResult(len(scans), tuple(outcomes), fp, n_candidates, n_ignored, fps, sens, thresholds)


def hit_matrix(refs: Sequence[Reference], points_lps_mm: np.ndarray, min_radius_mm: float = 0.0) -> np.ndarray:
    """``[reference, point]`` booleans: the point lies strictly within R of the reference's centre.

    Parameters
    ----------
    refs
        Reference nodules (world LPS, mm).
    points_lps_mm
        ``N x 3`` marks (world LPS, mm).
    min_radius_mm
        Floor under R = diameter / 2 (mm); 0, the LUNA16 rule, by default.
    """
    points = np.asarray(points_lps_mm, dtype=float).reshape(-1, 3)
    if not refs:
        return np.zeros((0, len(points)), dtype=bool)
    centres = np.array([r.centre_xyz_mm for r in refs], dtype=float)
    radius = np.maximum(np.array([r.diameter_mm for r in refs], dtype=float) / 2.0, min_radius_mm)
    d2 = ((centres[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
    return d2 < (radius ** 2)[:, None]



def _froc_points(tp: np.ndarray, fp: np.ndarray, n_nodules: int, n_scans: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FROC points, one per distinct score from the highest down, after (0, 0) at +inf."""
    scores = np.concatenate([tp, fp])
    is_tp = np.concatenate([np.ones(len(tp)), np.zeros(len(fp))])
    order = np.argsort(-scores, kind="stable")
    scores, is_tp = scores[order], is_tp[order]
    last_of_run = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, dtype=bool)
    n_tp = np.cumsum(is_tp)[last_of_run]
    n_fp = np.cumsum(1 - is_tp)[last_of_run]
    thresholds = np.r_[np.inf, scores[last_of_run]]
    fps = np.r_[0.0, n_fp] / n_scans
    sens = np.r_[0.0, n_tp] / n_nodules if n_nodules else np.full(len(thresholds), np.nan)
    return fps, sens, thresholds


def save_froc_png(result: FrocResult, path: Path, title: str | None = None) -> Path:
    """Plot the FROC curve (log FP axis, 1/8 to 8 FPs/scan) with its 7 CPM points.

    Uses matplotlib's Agg canvas directly, so no display or global backend is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    lo, hi = FP_RATES[0], FP_RATES[-1]
    inside = (result.fps_per_scan > lo) & (result.fps_per_scan < hi)
    xs = np.r_[lo, result.fps_per_scan[inside], hi]
    ys = np.r_[result.sensitivity_at(lo), result.sensitivity[inside], result.sensitivity_at(hi)]
    ax.plot(xs, ys, color="tab:blue", lw=2, label="FROC")
    ax.plot(FP_RATES, result.sensitivities, "o", color="tab:red", label="CPM points", clip_on=False, zorder=3)
    ax.set_xscale("log", base=2)
    ax.set_xlim(FP_RATES[0], FP_RATES[-1])
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(FixedLocator(FP_RATES))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels(["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_xlabel("average false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="major", alpha=0.4)
    ax.legend(loc="lower right")
    cpm = f"{result.cpm:.3f}" if math.isfinite(result.cpm) else "n/a"
    heading = f"CPM {cpm}  ({result.n_nodules} nodules, {result.n_scans} scans)"
    ax.set_title(f"{title}\n{heading}" if title else heading)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
