"""Where the detector loses each reference nodule: per-stage recall, misses, false positives.

The detector (:meth:`pacs_node.ml.detector.Detector.run`) is a chain of steps; a
nodule it misses was lost at one of them.  The stages, each kept only by nodules that
kept the ones before (so recall never rises from one stage to the next):

``region``
    The nodule's centre lies in the lung search region (``LungMask.region``, nearest
    coarse voxel).  A scan whose analysis failed (no lungs found) has no region.
``candidate``
    A front-end candidate centre (before the CNN) lies strictly within
    ``max(R, CANDIDATE_FLOOR_MM)`` of the nodule's centre (R = diameter / 2, the
    LUNA16 radius).  The floor of :data:`CANDIDATE_FLOOR_MM` is for tiny nodules:
    candidates sit on a 2 mm grid, so a 3 mm nodule's nearest one may lie 1.7 mm away.
``score``
    A scored candidate whose refined centre (candidate plus the CNN's offset) lies
    strictly within R and whose score is at least ``report_score`` (the model's
    operating point): the LUNA16 hit rule, before merging.
``merge``
    A reported finding (after the greedy merge) scoring at least ``report_score``
    lies strictly within R: the nodule is found at the operating point.  Losing a
    nodule here means a better-scored mark elsewhere absorbed its candidate.

A nodule found at the operating point passes every stage, so that recall after
``merge`` is the LUNA16 sensitivity at ``report_score`` (in the rare case where the
CNN's offset pulls a candidate from beyond the floor radius onto a nodule, the
``candidate`` check alone would have failed it).

For a detector that only offers ``detect()``, the stages are unavailable: a nodule
is then only found or missed (by the findings ``detect()`` returns, all taken to be
at the operating point).

Every position is world LPS (mm).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pacs_node.ml.froc import SIZE_CLASSES, Reference, hit_matrix

if TYPE_CHECKING:
    from pacs_node.imaging.findings import Finding
    from pacs_node.ml.canonical import Grid
    from pacs_node.ml.detector import Detection, Scored

#: The stages in pipeline order (see the module docstring).
STAGES: tuple[str, ...] = ("region", "candidate", "score", "merge")
#: Least radius (mm) within which a front-end candidate counts as pointing at a nodule.
CANDIDATE_FLOOR_MM = 3.0


@dataclass(frozen=True, eq=False)
class StageData:
    """What the pipeline made of one scan before its findings (from a ``Detection``).

    Attributes
    ----------
    region
        The lung search region (a boolean grid with its LPS affine); ``None``: the scan
        could not be analysed, so no nodule is inside.
    candidates_lps_mm
        ``N x 3`` front-end candidate centres (LPS mm).
    scored
        The CNN's outputs for those candidates (refined centres LPS mm, scores, ...).
    """

    region: Grid | None
    candidates_lps_mm: np.ndarray
    scored: Scored | None

    @classmethod
    def from_detection(cls, detection: Detection) -> StageData | None:
        """The stage data a detection carries; ``None`` when it lacks any of it."""
        if detection.lungs is None or detection.candidates_lps_mm is None or detection.scored is None:
            return None
        return cls(detection.lungs.region, np.asarray(detection.candidates_lps_mm, dtype=float).reshape(-1, 3),
                   detection.scored)

    @classmethod
    def unanalysable(cls) -> StageData:
        """A scan the detector could not analyse: no region, no candidates."""
        return cls(None, np.empty((0, 3)), None)


@dataclass(frozen=True)
class NoduleTrace:
    """How far one reference nodule got.

    Attributes
    ----------
    seriesuid
        The scan.
    reference
        The nodule (centre LPS mm, diameter mm, type).
    found
        Whether a finding at the operating point hits it (LUNA16 rule).
    lost_at
        The first stage it did not pass (one of :data:`STAGES`); ``None`` when found
        or when the stages are unavailable.
    best_score
        Highest CNN score of any candidate whose front-end or refined centre lies
        within ``max(R, CANDIDATE_FLOOR_MM)`` (without stages: of any finding within
        R); ``None``: none.
    nearest_candidate_mm
        Distance from the centre to the nearest front-end candidate (mm); ``None``
        without candidates or stages.
    """

    seriesuid: str
    reference: Reference
    found: bool
    lost_at: str | None
    best_score: float | None
    nearest_candidate_mm: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seriesuid": self.seriesuid,
            "centre_xyz_mm": [round(v, 2) for v in self.reference.centre_xyz_mm],
            "diameter_mm": round(self.reference.diameter_mm, 2),
            "type": self.reference.type,
            "stage_lost": self.lost_at,
            "best_score": _round(self.best_score, 4),
            "nearest_candidate_mm": _round(self.nearest_candidate_mm, 2),
        }


@dataclass(frozen=True)
class FalsePositive:
    """A finding at the operating point that hits no reference nodule (nor an excluded one).

    Attributes
    ----------
    seriesuid
        The scan.
    centre_xyz_mm
        Position (LPS mm).
    score
        The finding's score.
    type
        Predicted nodule type.
    diameter_mm
        The CNN's predicted diameter (mm); ``None`` when not known.
    long_axis_mm
        Measured long axis of the finding (mm).
    """

    seriesuid: str
    centre_xyz_mm: tuple[float, float, float]
    score: float
    type: str
    diameter_mm: float | None
    long_axis_mm: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "seriesuid": self.seriesuid,
            "centre_xyz_mm": [round(v, 2) for v in self.centre_xyz_mm],
            "score": round(self.score, 4),
            "type": self.type,
            "diameter_mm": _round(self.diameter_mm, 2),
            "long_axis_mm": round(self.long_axis_mm, 2),
        }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def trace_scan(
    seriesuid: str,
    references: Sequence[Reference],
    findings: Sequence[Finding],
    report_score: float | None,
    stage_data: StageData | None,
    excluded: Sequence[Reference] = (),
) -> tuple[list[NoduleTrace], list[FalsePositive]]:
    """Trace every reference nodule of a scan through the stages; list its false positives.

    Parameters
    ----------
    seriesuid
        The scan.
    references
        Its reference nodules (LPS mm).
    findings
        Every finding the detector reported for it (any score).
    report_score
        The operating point: findings and scored candidates count from this score up;
        ``None``: every finding counts (a ``detect()``-only detector).
    stage_data
        What the pipeline made of the scan; ``None``: stages unavailable.
    excluded
        Findings whose hits are neither true nor false positives (LUNA16's excluded).

    Returns
    -------
    tuple[list[NoduleTrace], list[FalsePositive]]
        One trace per reference (in order) and the false positives at the operating point.
    """
    floor = -math.inf if report_score is None else report_score
    kept = [f for f in findings if f.score >= floor]
    points = np.array([f.center_lps_mm for f in kept], dtype=float).reshape(-1, 3)
    scores = np.array([f.score for f in kept], dtype=float)
    refs = list(references)
    found = hit_matrix(refs, points).any(axis=1)
    if stage_data is None:
        every = np.array([f.center_lps_mm for f in findings], dtype=float).reshape(-1, 3)
        every_scores = np.array([f.score for f in findings], dtype=float)
        near = hit_matrix(refs, every)
        traces = [NoduleTrace(seriesuid, r, bool(found[k]), None,
                              float(every_scores[near[k]].max()) if near[k].any() else None, None)
                  for k, r in enumerate(refs)]
    else:
        traces = _trace_stages(seriesuid, refs, found, floor, stage_data)
    on_nodule = hit_matrix(refs, points).any(axis=0) | hit_matrix(list(excluded), points).any(axis=0)
    scored = stage_data.scored if stage_data is not None else None
    fps = [FalsePositive(seriesuid, tuple(float(v) for v in points[i]), float(scores[i]), str(kept[i].nodule_type),
                         _predicted_diameter(scored, points[i]), float(kept[i].long_axis_mm))  # type: ignore[arg-type]
           for i in np.flatnonzero(~on_nodule)]
    return traces, fps


def _trace_stages(seriesuid: str, refs: list[Reference], found: np.ndarray, floor: float,
                  data: StageData) -> list[NoduleTrace]:
    centres = np.array([r.centre_xyz_mm for r in refs], dtype=float).reshape(-1, 3)
    if data.region is None or not refs:
        in_region = np.zeros(len(refs), dtype=bool)
    else:
        in_region = data.region.lookup(centres, outside=False).astype(bool)
    near_candidate = hit_matrix(refs, data.candidates_lps_mm, CANDIDATE_FLOOR_MM)
    if data.scored is not None and len(data.scored.score):
        refined, cnn = data.scored.centres_lps_mm, np.asarray(data.scored.score, dtype=float)
        scored_hit = (hit_matrix(refs, refined) & (cnn >= floor)[None, :]).any(axis=1)
        nearby = near_candidate | hit_matrix(refs, refined, CANDIDATE_FLOOR_MM)
    else:
        cnn = np.empty(0)
        scored_hit = np.zeros(len(refs), dtype=bool)
        nearby = np.zeros((len(refs), 0), dtype=bool)
    passed = np.stack([in_region, near_candidate.any(axis=1), scored_hit, found], axis=1)
    traces = []
    for k, ref in enumerate(refs):
        failed = np.flatnonzero(~passed[k])
        lost_at = STAGES[int(failed[0])] if len(failed) and not found[k] else None
        best = float(cnn[nearby[k]].max()) if nearby[k].any() else None
        nearest = (float(np.linalg.norm(data.candidates_lps_mm - centres[k], axis=1).min())
                   if len(data.candidates_lps_mm) else None)
        traces.append(NoduleTrace(seriesuid, ref, bool(found[k]), lost_at, best, nearest))
    return traces


def _predicted_diameter(scored: Scored | None, centre: np.ndarray) -> float | None:
    """The CNN's diameter (mm) of the scored candidate a finding came from (same refined centre)."""
    if scored is None or not len(scored.score):
        return None
    d = np.linalg.norm(scored.centres_lps_mm - centre, axis=1)
    i = int(np.argmin(d))
    return float(scored.diameter_mm[i]) if d[i] < 1e-3 else None


def stage_recall(traces: Sequence[NoduleTrace], stages_available: bool) -> dict[str, Any]:
    """Recall after each stage, overall, by size class and by type, and where misses were lost.

    Returns
    -------
    dict
        ``available``, ``stages``, ``candidate_floor_mm``, and for ``overall`` and each
        entry of ``by_size`` / ``by_type``: ``nodules``, ``recall`` (stage -> fraction
        kept; ``None`` without nodules) and ``lost_at`` (stage -> count).  Without
        stages only the final recall (``found``) is given.
    """
    types = sorted({t.reference.type for t in traces if t.reference.type})

    def group(items: Iterable[NoduleTrace]) -> dict[str, Any]:
        items = list(items)
        n = len(items)
        found = sum(t.found for t in items)
        out: dict[str, Any] = {"nodules": n, "found": found, "recall_found": found / n if n else None}
        if stages_available:
            lost = {s: sum(t.lost_at == s for t in items) for s in STAGES}
            kept, recall = n, {}
            for s in STAGES:
                kept -= lost[s]
                recall[s] = kept / n if n else None
            out["recall"] = recall
            out["lost_at"] = lost
        return out

    return {
        "available": stages_available,
        "stages": list(STAGES) if stages_available else [],
        "candidate_floor_mm": CANDIDATE_FLOOR_MM,
        "overall": group(traces),
        "by_size": {c: group(t for t in traces if t.reference.size_class == c) for c in SIZE_CLASSES},
        "by_type": {ty: group(t for t in traces if t.reference.type == ty) for ty in types},
    }


def misses_worst_first(traces: Iterable[NoduleTrace]) -> list[NoduleTrace]:
    """Nodules not found at the operating point, the largest first."""
    return sorted((t for t in traces if not t.found), key=lambda t: -t.reference.diameter_mm)


def false_positives_worst_first(fps: Iterable[FalsePositive]) -> list[FalsePositive]:
    """False positives at the operating point, the highest score first."""
    return sorted(fps, key=lambda f: -f.score)


def format_stage_table(stages: dict[str, Any]) -> str:
    """The per-stage recall as a small text table (rows: stages; columns: all, sizes, types)."""
    groups = [("all", stages["overall"]), *stages["by_size"].items(), *stages["by_type"].items()]
    groups = [(name, g) for name, g in groups if g["nodules"]]
    rows = list(STAGES) if stages["available"] else []
    width = max(10, *(len(name) + 1 for name, _ in groups))
    head = "recall after".ljust(14) + "".join(name.rjust(width) for name, _ in groups)
    count = "  nodules".ljust(14) + "".join(str(g["nodules"]).rjust(width) for _, g in groups)
    lines = [head, count]
    for s in rows:
        lines.append(f"  {s}".ljust(14) + "".join(f"{g['recall'][s]:.2f}".rjust(width) for _, g in groups))
    if not rows:
        lines.append("  found".ljust(14) + "".join(f"{g['recall_found']:.2f}".rjust(width) for _, g in groups))
        lines.append("(per-stage recall unavailable: the detector offers only detect())")
    else:
        lost = stages["overall"]["lost_at"]
        lines.append("lost at: " + ", ".join(f"{s} {lost[s]}" for s in STAGES))
    return "\n".join(lines)
