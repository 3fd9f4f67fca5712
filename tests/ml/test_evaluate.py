"""LUNA16 scoring: hits, FROC, CPM, breakdowns, the plot, and a run over generated data.

CPM cases are small enough to compute by hand; the comments give the FROC points.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import highdicom as hd
import numpy as np
import pytest
from PIL import Image

from pacs_node.imaging.findings import Finding
from pacs_node.imaging.luna16 import read_luna16_annotations
from pacs_node.imaging.volume import read_mhd_volume
from pacs_node.ml.canonical import Grid
from pacs_node.ml.detector import Detection, Detector, Scored
from pacs_node.ml.evaluate import EvaluationError, default_out_dir, evaluate_model, format_summary
from pacs_node.ml.froc import FP_RATES, Candidate, Reference, save_froc_png, score_findings
from pacs_node.ml.gallery import Gallery
from pacs_node.ml.modelcard import Inference, Thresholds
from pacs_node.ml.phantom import generate_studies
from pacs_node.ml.stages import (
    CANDIDATE_FLOOR_MM,
    STAGES,
    StageData,
    format_stage_table,
    misses_worst_first,
    stage_recall,
    trace_scan,
)

TINY = {"shape_zyx": (40, 64, 64), "spacing_zyx_mm": (2.5, 2.0, 2.0)}


def ref(x: float, d: float = 10.0, type: str | None = "solid") -> Reference:
    return Reference((x, 0.0, 0.0), d, type)


def cand(x: float, score: float) -> Candidate:
    return Candidate((x, 0.0, 0.0), score)


def test_perfect_detector_has_cpm_one() -> None:
    refs = {"a": [ref(0), ref(50)], "b": [ref(0)]}
    cands = {"a": [cand(0, 0.9), cand(50, 0.8)], "b": [cand(1, 0.7)]}
    result = score_findings(refs, cands)
    assert result.cpm == 1.0
    assert result.sensitivities == (1.0,) * 7
    assert result.n_false_positives == 0


def test_half_the_nodules_without_false_positives_is_cpm_one_half() -> None:
    refs = {"a": [ref(0), ref(50)], "b": [ref(0), ref(50)]}
    cands = {"a": [cand(0, 0.9)], "b": [cand(50, 0.4)]}
    assert score_findings(refs, cands).cpm == 0.5


def test_no_candidates_at_all_is_cpm_zero() -> None:
    result = score_findings({"a": [ref(0)]}, {})
    assert result.cpm == 0.0
    assert result.n_scans == 1


def test_cpm_reads_the_staircase_at_the_seven_rates() -> None:
    # 4 scans (one FP = 0.25 FP/scan), 4 nodules: A 0.9, B 0.7, C 0.3 hit; D missed.
    # FPs at 0.8, 0.6, 0.5, 0.4, 0.2.  FROC points (fps, sens):
    # (0,0) (0,.25) (.25,.25) (.25,.5) (.5,.5) (.75,.5) (1,.5) (1,.75) (1.25,.75)
    refs = {"s1": [ref(0), ref(100)], "s2": [ref(0)], "s3": [ref(0)], "s4": []}
    cands = {
        "s1": [cand(0, 0.9), cand(100, 0.7), cand(300, 0.8)],
        "s2": [cand(2, 0.3), cand(300, 0.6)],
        "s3": [cand(300, 0.5), cand(400, 0.2)],
        "s4": [cand(300, 0.4)],
    }
    result = score_findings(refs, cands)
    # at 1/8: 0.25; at 1/4 and 1 the curve rises there: the top counts (0.5, 0.75)
    assert result.sensitivities == pytest.approx((0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75))
    assert result.cpm == pytest.approx((0.25 + 0.5 + 0.5 + 4 * 0.75) / 7)
    assert result.fps_per_scan.tolist() == [0, 0, 0.25, 0.25, 0.5, 0.75, 1.0, 1.0, 1.25]


def test_tied_true_and_false_positive_scores_interpolate_linearly() -> None:
    # 2 scans, 2 nodules; one TP and one FP both at 0.5: the FROC goes straight from
    # (0, 0) to (0.5, 0.5), so sensitivity equals the FP rate up to 0.5.
    refs = {"a": [ref(0)], "b": [ref(0)]}
    cands = {"a": [cand(0, 0.5), cand(200, 0.5)], "b": []}
    result = score_findings(refs, cands)
    assert result.sensitivities == pytest.approx((0.125, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5))
    assert result.cpm == pytest.approx(2.875 / 7)


def test_scans_without_candidates_or_nodules_count_in_the_fp_rate() -> None:
    # The FP (0.9) outranks the TP (0.8).  One scan: 1 FP/scan before the TP counts.
    refs = {"a": [ref(0)]}
    cands = {"a": [cand(200, 0.9), cand(0, 0.8)]}
    assert score_findings(refs, cands).cpm == pytest.approx(4 / 7)
    # Three more scans with nothing in them: the FP is 0.25 FP/scan.
    with_empty = score_findings(refs, cands, scan_ids=["a", "b", "c", "d"])
    assert with_empty.n_scans == 4
    assert with_empty.cpm == pytest.approx(6 / 7)
    # Empty lists name scans too; eight scans put the FP at 1/8.
    empty = {f"e{i}": [] for i in range(7)}
    assert score_findings({**refs, **empty}, cands).cpm == 1.0


def test_candidates_for_unknown_scans_are_refused() -> None:
    with pytest.raises(ValueError, match="outside scan_ids"):
        score_findings({"a": [ref(0)]}, {"zz": [cand(0, 1.0)]}, scan_ids=["a"])


def test_hit_needs_distance_strictly_below_the_radius() -> None:
    refs = {"a": [Reference((10.0, 20.0, 30.0), 8.0)]}
    inside = Candidate((10.0, 20.0 + 3.999, 30.0), 0.9)
    on_radius = Candidate((10.0, 20.0, 34.0), 0.9)
    outside = Candidate((10.0 + 4.001, 20.0, 30.0), 0.9)
    assert score_findings(refs, {"a": [inside]}).n_detected == 1
    for miss in (on_radius, outside):
        result = score_findings(refs, {"a": [miss]})
        assert result.n_detected == 0
        assert result.n_false_positives == 1
    diagonal = Candidate((10.0 + 2.3, 20.0 + 2.3, 30.0 + 2.3), 0.9)  # 3.98 mm away
    assert score_findings(refs, {"a": [diagonal]}).n_detected == 1


def test_several_hits_on_one_nodule_count_once_with_the_best_score() -> None:
    refs = {"a": [ref(0)], "b": []}
    cands = {"a": [cand(0, 0.3), cand(1, 0.9), cand(-1, 0.5)], "b": [cand(0, 0.6)]}
    result = score_findings(refs, cands)
    assert result.n_detected == 1
    assert result.nodules[0].score == 0.9
    assert result.n_false_positives == 1  # only b's mark; duplicates are not FPs
    assert result.sensitivity.max() == 1.0


def test_hits_on_excluded_findings_are_neither_true_nor_false_positives() -> None:
    refs = {"a": [ref(0)]}
    excluded = {"a": [ref(100, d=6.0)]}
    cands = {"a": [cand(100, 0.99), cand(101, 0.98), cand(0, 0.5)]}
    result = score_findings(refs, cands, excluded)
    assert result.n_false_positives == 0
    assert result.n_ignored == 2
    assert result.n_nodules == 1
    assert result.cpm == 1.0
    # without the exclusion the same marks are FPs that outrank the nodule
    plain = score_findings(refs, cands)
    assert plain.n_false_positives == 2
    assert plain.cpm < 1.0


def test_a_mark_on_both_an_included_and_an_excluded_finding_is_a_true_positive() -> None:
    result = score_findings({"a": [ref(0)]}, {"a": [cand(1, 0.7)]}, {"a": [ref(2, d=6.0)]})
    assert (result.n_detected, result.n_ignored, result.n_false_positives) == (1, 0, 0)


def test_breakdown_by_size_and_type_at_an_operating_point() -> None:
    # 2 scans.  Nodules: 4 mm GGN 0.9, 8 mm solid 0.6, 12 mm solid 0.2, 5 mm solid missed.
    # FPs 0.7 and 0.3: at 0.5 FP/scan (1 FP) everything above 0.3 counts -> 4, 8 mm found.
    refs = {"a": [ref(0, 4.0, "ground-glass"), ref(100, 8.0), ref(200, 12.0)], "b": [ref(0, 5.0)]}
    cands = {"a": [cand(0, 0.9), cand(100, 0.6), cand(200, 0.2), cand(400, 0.7)], "b": [cand(300, 0.3)]}
    result = score_findings(refs, cands)
    op = result.breakdown(0.5)
    assert op["threshold"] == 0.6
    assert (op["false_positives"], op["detected"], op["nodules"]) == (1, 2, 4)
    assert op["sensitivity"] == 0.5 == result.sensitivity_at(0.5)
    assert op["by_size"] == {
        "<6 mm": {"nodules": 2, "detected": 1, "sensitivity": 0.5},
        "6-10 mm": {"nodules": 1, "detected": 1, "sensitivity": 1.0},
        ">10 mm": {"nodules": 1, "detected": 0, "sensitivity": 0.0},
    }
    assert op["by_type"] == {
        "ground-glass": {"nodules": 1, "detected": 1, "sensitivity": 1.0},
        "solid": {"nodules": 3, "detected": 1, "sensitivity": 1 / 3},
    }
    # at 1 FP/scan both FPs are allowed, so the 12 mm nodule at 0.2 counts too
    one = result.breakdown(1.0)
    assert (one["threshold"], one["false_positives"], one["by_size"][">10 mm"]["detected"]) == (0.2, 2, 1)
    assert one["sensitivity"] == 0.75 == result.sensitivity_at(1.0)
    # at 1/8 FP/scan no FP is allowed: only marks above 0.7 count
    low = result.breakdown(0.125)
    assert (low["threshold"], low["detected"], low["false_positives"]) == (0.9, 1, 0)
    # each CPM point has its own breakdown, matching the interpolated sensitivity (no ties)
    table = result.to_dict()
    assert [b["fps_per_scan"] for b in table["at_fp_rates"]] == list(FP_RATES)
    assert [b["sensitivity"] for b in table["at_fp_rates"]] == pytest.approx(list(result.sensitivities))


def test_without_ties_interpolated_and_thresholded_sensitivities_agree() -> None:
    rng = np.random.default_rng(7)
    refs = {f"s{i}": [ref(100.0 * j, float(rng.uniform(3, 25))) for j in range(int(rng.integers(0, 4)))]
            for i in range(30)}
    cands = {uid: [cand(r.centre_xyz_mm[0] + rng.normal(0, 1), float(rng.uniform(0.3, 1))) for r in rs
                   if rng.random() < 0.8]
             + [cand(1000.0 + k, float(rng.uniform(0, 0.9))) for k in range(int(rng.integers(0, 12)))]
             for uid, rs in refs.items()}
    result = score_findings(refs, cands)
    assert 0 < result.cpm < 1
    for rate in (*FP_RATES, 0.3, 1.7, 5.5):
        op = result.breakdown(rate)
        assert op["false_positives_per_scan"] <= rate
        assert op["sensitivity"] == pytest.approx(result.sensitivity_at(rate))
    assert list(result.sensitivities) == sorted(result.sensitivities)


def test_report_dict_is_json_and_has_no_infinities() -> None:
    result = score_findings({"a": [ref(0)], "b": []}, {"a": [cand(0, 0.8), cand(100, 0.1)]})
    text = json.dumps(result.to_dict(), allow_nan=False)
    table = json.loads(text)
    assert table["froc"]["threshold"][0] is None
    assert table["cpm"] == 1.0 and table["n_scans"] == 2


def test_froc_png_is_written_and_is_a_valid_png(tmp_path: Path) -> None:
    result = score_findings({"a": [ref(0), ref(50)], "b": [ref(0)]},
                            {"a": [cand(0, 0.9), cand(300, 0.8)], "b": [cand(300, 0.6), cand(0, 0.5)]})
    path = save_froc_png(result, tmp_path / "out" / "froc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300


def _middle(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[float, ...]:
    """World position (mm, 0.1 mm) of a volume's middle: the same whichever way slices run."""
    return tuple(np.round(affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3], 1).tolist())


class _OracleDetector:
    """Stub: marks each true nodule of the scan it recognises by its middle, plus one FP."""

    def __init__(self, marks_by_middle: dict[tuple[float, ...], list[tuple[float, float, float]]]) -> None:
        self.marks_by_middle = marks_by_middle
        self.calls = 0

    def detect(self, volume) -> list[Finding]:  # noqa: ANN001 - highdicom.Volume
        self.calls += 1
        centres = self.marks_by_middle[_middle(volume.affine, volume.spatial_shape)]
        far = tuple(float(v) for v in volume.affine[:3, 3])  # the corner voxel: never a nodule
        marks = [Finding(c, 6.0, 5.0, 100.0, "solid", 0.9) for c in centres]
        return [*marks, Finding(far, 4.0, 4.0, 30.0, "solid", 0.5)]


_REPORT_KEYS = {
    "format", "model_dir", "data_dir", "data_format", "cpm", "fp_rates", "sensitivities", "n_scans",
    "n_nodules", "n_detected", "n_candidates", "n_false_positives", "n_ignored_on_excluded",
    "false_positives_per_scan", "operating_point", "at_fp_rates", "froc", "missed", "timings",
    "report_score", "at_report_score", "stages", "misses", "false_positives", "failed_scans",
}


def _check_report(report: dict, out: Path, n_nodules: int) -> None:
    assert _REPORT_KEYS <= set(report)
    assert json.loads((out / "report.json").read_text()) == report
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["n_scans"] == 2
    assert report["n_nodules"] == n_nodules
    assert report["n_false_positives"] == 2
    assert report["false_positives_per_scan"] == 1.0
    # every nodule outranks the FPs: found at 0.125 FP/scan already
    assert report["cpm"] == (1.0 if n_nodules else None)
    assert set(report["operating_point"]["by_size"]) == {"<6 mm", "6-10 mm", ">10 mm"}
    assert len(report["timings"]["per_scan"]) == 2
    assert all(t["detect_s"] >= 0 and t["load_s"] >= 0 for t in report["timings"]["per_scan"])
    # detect() only: its findings are the operating point, and the stages are unknown
    assert report["stages"]["available"] is False and report["report_score"] is None
    assert report["misses"] == [] and report["failed_scans"] == []
    assert [f["score"] for f in report["false_positives"]] == [0.5, 0.5]
    assert "gallery" not in report and not (out / "misses.png").exists()


def test_evaluate_model_on_two_luna16_phantoms_writes_the_report(tmp_path: Path) -> None:
    data = tmp_path / "luna"
    mhds = generate_studies(data, 2, seed=3, fmt="luna16", **TINY)
    annotations = read_luna16_annotations(data / "annotations_types.csv")
    middles = {}
    for mhd in mhds:
        volume = read_mhd_volume(mhd)
        middles[_middle(volume.affine, volume.spatial_shape)] = [
            a.centre_xyz_mm for a in annotations if a.seriesuid == mhd.stem]
    assert len(middles) == 2
    detector = _OracleDetector(middles)
    out = tmp_path / "eval"
    report = evaluate_model(tmp_path / "no-model", data, "luna16", out, detector=detector)
    assert detector.calls == 2
    _check_report(report, out, len(annotations))
    types = {a.type for a in annotations}
    assert set(report["operating_point"]["by_type"]) == types


def test_evaluate_model_on_dicom_phantom_studies(tmp_path: Path) -> None:
    data = tmp_path / "dicom"
    studies = generate_studies(data, 2, seed=3, fmt="dicom", **TINY)
    middles, n_nodules = {}, 0
    for study in studies:
        truth = json.loads((study / "truth.json").read_text())
        spacing_xyz = np.array(truth["spacing_zyx_mm"][::-1])
        size_xyz = np.array(truth["shape_zyx"][::-1])
        middle = np.array(truth["origin_xyz_mm"]) + spacing_xyz * (size_xyz - 1) / 2
        middles[tuple(np.round(middle, 1).tolist())] = [tuple(n["centre_xyz_mm"]) for n in truth["nodules"]]
        n_nodules += len(truth["nodules"])
    assert len(middles) == 2
    out = tmp_path / "eval"
    report = evaluate_model(tmp_path / "no-model", data, "dicom", out, detector=_OracleDetector(middles))
    _check_report(report, out, n_nodules)


def test_evaluate_model_refuses_a_folder_without_scans(tmp_path: Path) -> None:
    model, data = tmp_path / "model", tmp_path / "data"
    data.mkdir()
    with pytest.raises(EvaluationError, match=r"no subset\*/\*\.mhd scans; expected the LUNA16 layout"):
        evaluate_model(model, data, "luna16", tmp_path / "out", detector=_OracleDetector({}))
    with pytest.raises(EvaluationError, match="no study_\\* folders"):
        evaluate_model(model, data, "dicom", tmp_path / "out", detector=_OracleDetector({}))
    with pytest.raises(EvaluationError, match="no such folder"):
        evaluate_model(model, tmp_path / "nowhere", "luna16", tmp_path / "out", detector=_OracleDetector({}))
    with pytest.raises(ValueError, match="fmt"):
        evaluate_model(model, data, "nifti", tmp_path / "out",  # type: ignore[arg-type]
                       detector=_OracleDetector({}))
    assert not (tmp_path / "out").exists()


def test_reference_and_candidate_validate_their_arguments() -> None:
    with pytest.raises(ValueError, match="diameter_mm"):
        Reference((0, 0, 0), -1.0)
    with pytest.raises(ValueError, match="centre_xyz_mm"):
        Reference((0, 0), 5.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score"):
        Candidate((0, 0, 0), math.nan)


# --- where nodules are lost: stages, misses, false positives, galleries, the command ----------------

MODEL = Path(__file__).resolve().parents[2] / "models" / "lung-nodule-synthetic-v1"


def _cube_region(keep_x_below: float) -> Grid:
    """A 10 mm search region over x, y, z in [-200, 200] mm, inside where x < ``keep_x_below``."""
    affine = np.zeros((4, 4))
    affine[0, 2] = affine[1, 1] = affine[2, 0] = 10.0  # [z, y, x] -> LPS (x, y, z)
    affine[:3, 3] = -200.0
    affine[3, 3] = 1.0
    x = np.arange(41) * 10.0 - 200.0
    return Grid(np.broadcast_to(x < keep_x_below, (41, 41, 41)).copy(), affine)


def _at(x: float) -> tuple[float, float, float]:
    return (x, 0.0, 0.0)


def _finding(x: float, score: float, long_axis: float = 6.0) -> Finding:
    return Finding(_at(x), long_axis, 4.0, 100.0, "solid", score)


def _one_scan_of_every_fate() -> tuple[list[Reference], StageData, list[Finding]]:
    """Six nodules on the x axis, each lost at a different stage or found (report_score 0.5)."""
    refs = [
        Reference(_at(200), 12.0, "solid"),        # A: outside the region (x < 150)
        Reference(_at(0), 8.0, "ground-glass"),    # B: no candidate within 4 mm
        Reference(_at(40), 10.0, "solid"),         # C: candidate, but the CNN scores it 0.3
        Reference(_at(80), 6.0, "solid"),          # D: scored 0.9, but no finding there (merged away)
        Reference(_at(120), 7.0, "solid"),         # E: found
        Reference(_at(-50), 3.0, "solid"),         # F: found; candidate 2.5 mm off (> R, < the floor)
    ]
    candidates = np.array([_at(41), _at(81), _at(121), _at(-47.5), _at(-100), _at(300)])
    scored = Scored(np.array([_at(40.5), _at(80.5), _at(120.2), _at(-50.5), _at(-100), _at(300)]),
                    np.array([0.3, 0.9, 0.95, 0.9, 0.8, 0.2]), np.full((6, 4), 0.25),
                    np.array([9.0, 6.0, 7.0, 3.0, 5.0, 4.0]))
    findings = [_finding(120.2, 0.95), _finding(-50.5, 0.9), _finding(-100, 0.8, 4.6), _finding(300, 0.2)]
    return refs, StageData(_cube_region(150.0), candidates, scored), findings


def test_each_nodule_is_reported_lost_at_the_first_stage_it_fails() -> None:
    refs, data, findings = _one_scan_of_every_fate()
    traces, fps = trace_scan("s1", refs, findings, 0.5, data)
    assert [t.lost_at for t in traces] == ["region", "candidate", "score", "merge", None, None]
    assert [t.found for t in traces] == [False, False, False, False, True, True]
    assert traces[1].nearest_candidate_mm == pytest.approx(41.0)  # B: the candidate at x = 41
    assert traces[1].best_score is None
    assert traces[2].best_score == pytest.approx(0.3)  # C: the CNN's score of its candidate
    assert traces[3].best_score == pytest.approx(0.9)
    table = stage_recall(traces, stages_available=True)
    assert table["overall"]["recall"] == pytest.approx(
        {"region": 5 / 6, "candidate": 4 / 6, "score": 3 / 6, "merge": 2 / 6})
    assert table["overall"]["lost_at"] == {"region": 1, "candidate": 1, "score": 1, "merge": 1}
    assert table["overall"]["recall_found"] == pytest.approx(2 / 6)
    assert table["by_size"][">10 mm"]["recall"]["region"] == 0.0  # A, 12 mm
    assert table["by_size"]["<6 mm"]["recall"] == {s: 1.0 for s in STAGES}  # F, 3 mm, thanks to the floor
    assert table["by_type"]["ground-glass"]["lost_at"]["candidate"] == 1
    assert [t.reference.diameter_mm for t in misses_worst_first(traces)] == [12.0, 10.0, 8.0, 6.0]
    # one false positive at the operating point: the 0.2 finding is below it
    assert [(f.centre_xyz_mm, f.score, f.diameter_mm, f.long_axis_mm) for f in fps] == [
        (_at(-100), 0.8, 5.0, 4.6)]
    assert trace_scan("s1", refs, findings, 0.5, data, excluded=[Reference(_at(-101), 6.0)])[1] == []


def test_without_the_floor_radius_a_tiny_nodule_would_lose_its_candidate() -> None:
    refs, data, findings = _one_scan_of_every_fate()
    assert CANDIDATE_FLOOR_MM > 2.5 > refs[5].diameter_mm / 2
    far = StageData(data.region, data.candidates_lps_mm + np.array([CANDIDATE_FLOOR_MM - 2.5 + 0.1, 0, 0]),
                    data.scored)
    tiny = trace_scan("s1", refs[5:], [], 0.5, far)[0][0]  # no finding on it either
    assert tiny.lost_at == "candidate"
    assert tiny.nearest_candidate_mm == pytest.approx(CANDIDATE_FLOOR_MM + 0.1)


def test_an_unanalysable_scan_loses_its_nodules_at_the_region_stage() -> None:
    refs, _, _ = _one_scan_of_every_fate()
    traces, fps = trace_scan("s1", refs, [], 0.5, StageData.unanalysable())
    assert {t.lost_at for t in traces} == {"region"} and fps == []


def test_without_stages_only_found_or_missed_is_reported() -> None:
    refs, _, findings = _one_scan_of_every_fate()
    traces, fps = trace_scan("s1", refs, findings, None, None)
    assert [t.found for t in traces] == [False, False, False, False, True, True]
    assert all(t.lost_at is None for t in traces)
    assert len(fps) == 2  # the 0.8 and the 0.2: detect() output is all at the operating point
    table = stage_recall(traces, stages_available=False)
    assert not table["available"] and "recall" not in table["overall"]
    assert "unavailable" in format_stage_table(table)


def _volume_marks(volume: hd.Volume, k: int) -> tuple[float, float, float]:
    """An LPS point near the volume's corner (index (2, 2, 2 + 6k)): lung-free, never a nodule."""
    return tuple(float(v) for v in volume.affine[:3, :3] @ np.array([2.0, 2.0, 2.0 + 6 * k]) + volume.affine[:3, 3])


class _StagedOracle:
    """Stub with ``run()``: a candidate, a 0.9 score and a finding on every true nodule, except that
    nodules in ``outside`` lie outside its search region (and get nothing); FPs with ``fp_scores``."""

    card = SimpleNamespace(thresholds=Thresholds(report_score=0.5, min_score=0.02))

    def __init__(self, marks_by_middle: dict[tuple[float, ...], list[tuple[float, float, float]]],
                 outside: set[tuple[float, float, float]] = frozenset(),  # type: ignore[assignment]
                 fp_scores: tuple[float, ...] = (0.9, 0.7, 0.6, 0.3)) -> None:
        self.marks_by_middle = marks_by_middle
        self.outside = outside
        self.fp_scores = fp_scores

    def detect(self, volume: hd.Volume) -> list[Finding]:
        raise AssertionError("run() must be used when a detector has it")

    def run(self, volume: hd.Volume, min_score: float | None = None) -> Detection:
        assert min_score == self.card.thresholds.min_score  # the FROC needs every finding
        region = np.ones(volume.spatial_shape, dtype=bool)
        hits = []
        for c in self.marks_by_middle[_middle(volume.affine, volume.spatial_shape)]:
            if tuple(c) in self.outside:
                i = np.rint(volume.map_reference_to_indices(np.array([c]))[0]).astype(int)
                region[tuple(slice(max(v - 3, 0), v + 4) for v in i)] = False
            else:
                hits.append(c)
        fps = [_volume_marks(volume, k) for k in range(len(self.fp_scores))]
        points = np.array([*hits, *fps], dtype=float).reshape(-1, 3)
        scores = np.array([0.9] * len(hits) + list(self.fp_scores))
        scored = Scored(points, scores, np.full((len(points), 4), 0.25), np.full(len(points), 5.0))
        findings = [Finding(tuple(p), 5.0, 4.0, 60.0, "solid", float(s)) for p, s in zip(points, scores)]
        return Detection(findings, {"total": 0.0}, len(points), 1000.0, candidates_lps_mm=points, scored=scored,
                         lungs=SimpleNamespace(region=Grid(region, volume.affine)))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dicom_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[tuple[float, float, float]]]:
    """Two tiny DICOM phantom studies; their nodules by volume middle, and all nodule centres in order."""
    data = tmp_path_factory.mktemp("pair")
    studies = generate_studies(data, 2, seed=3, fmt="dicom", **TINY)
    middles: dict[tuple[float, ...], list[tuple[float, float, float]]] = {}
    centres = []
    for study in studies:
        truth = json.loads((study / "truth.json").read_text())
        spacing_xyz = np.array(truth["spacing_zyx_mm"][::-1])
        size_xyz = np.array(truth["shape_zyx"][::-1])
        middle = np.array(truth["origin_xyz_mm"]) + spacing_xyz * (size_xyz - 1) / 2
        middles[tuple(np.round(middle, 1).tolist())] = [tuple(n["centre_xyz_mm"]) for n in truth["nodules"]]
        centres += [tuple(n["centre_xyz_mm"]) for n in truth["nodules"]]
    assert len(middles) == 2 and len(centres) >= 2
    return data, middles, centres


def test_a_detector_that_finds_everything_keeps_every_nodule_at_every_stage(
        dicom_pair: tuple[Path, dict, list], tmp_path: Path) -> None:
    data, middles, centres = dicom_pair
    report = evaluate_model(tmp_path / "model", data, "dicom", tmp_path / "eval", detector=_StagedOracle(middles),
                            gallery=3)
    stages = report["stages"]
    assert stages["available"] and stages["stages"] == list(STAGES)
    assert stages["overall"]["nodules"] == len(centres)
    assert stages["overall"]["recall"] == {s: 1.0 for s in STAGES}
    assert report["misses"] == []
    assert report["report_score"] == 0.5
    assert report["at_report_score"]["sensitivity"] == 1.0
    # two scans x three FPs at or above 0.5, highest first; the 0.3 ones are below the operating point
    assert [f["score"] for f in report["false_positives"]] == [0.9, 0.9, 0.7, 0.7, 0.6, 0.6]
    assert report["at_report_score"]["false_positives"] == 6
    assert all(f["diameter_mm"] == 5.0 and f["type"] == "solid" for f in report["false_positives"])
    assert report["gallery"] == {"misses": {"file": "misses.png", "panels": 0},
                                 "false_positives": {"file": "false_positives.png", "panels": 3}}
    for name in ("misses.png", "false_positives.png"):
        assert (tmp_path / "eval" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = format_summary(report, tmp_path / "eval").splitlines()
    assert summary[1].startswith(f"CPM {report['cpm']:.3f}   sensitivity at FPs/scan  1/8: ")
    assert "  merge" in "\n".join(summary) and "lost at: region 0, candidate 0, score 0, merge 0" in summary
    assert summary[-2].startswith("at the operating point, by style: classic 1.00")  # the phantoms' own style
    assert summary[-1].startswith(f"report: {(tmp_path / 'eval' / 'report.json').resolve()}")


def test_a_nodule_outside_the_search_region_is_lost_at_the_region_stage(
        dicom_pair: tuple[Path, dict, list], tmp_path: Path) -> None:
    data, middles, centres = dicom_pair
    lost = centres[0]
    detector = _StagedOracle(middles, outside={lost})
    out = tmp_path / "eval"
    report = evaluate_model(tmp_path / "model", data, "dicom", out, detector=detector, gallery=2)
    n = len(centres)
    assert report["stages"]["overall"]["recall"] == pytest.approx({s: (n - 1) / n for s in STAGES})
    assert report["stages"]["overall"]["lost_at"] == {"region": 1, "candidate": 0, "score": 0, "merge": 0}
    [miss] = report["misses"]
    assert miss["centre_xyz_mm"] == pytest.approx(list(lost), abs=0.01)
    assert miss["stage_lost"] == "region"
    assert miss["best_score"] is None and miss["nearest_candidate_mm"] > 0
    assert report["at_report_score"]["sensitivity"] == pytest.approx((n - 1) / n)
    assert report["gallery"]["misses"]["panels"] == 1
    assert report["gallery"]["false_positives"]["panels"] == 2
    with Image.open(out / "misses.png") as one, Image.open(out / "false_positives.png") as two:
        assert one.size[0] < two.size[0]  # one panel against two side by side
        assert np.asarray(one.convert("L")).std() > 10  # an image, not a blank page


def test_gallery_keeps_the_worst_panels_of_each_kind_worst_first(tmp_path: Path) -> None:
    volume = hd.Volume(np.linspace(-1000, 200, 20 * 30 * 30, dtype=np.float32).reshape(20, 30, 30),
                       np.diag([2.0, 2.0, 2.0, 1.0]), coordinate_system="PATIENT")
    gallery = Gallery(3)
    for score in (0.6, 0.9, 0.1, 0.95, 0.7):
        gallery.offer("false_positives", score, volume, (20.0, 30.0, 30.0), f"score {score}", 3.0)
    assert [p.title for p in gallery.panels("false_positives")] == ["score 0.95", "score 0.9", "score 0.7"]
    crop = gallery.panels("false_positives")[0].image_hu
    assert crop.shape == (128, 128)  # 64 mm at 0.5 mm
    assert crop.min() == -1024.0 and -1000 < crop.max() <= 200  # partly outside the 40-60 mm volume
    written = gallery.write(tmp_path, "test")
    assert written["false_positives"]["panels"] == 3 and written["misses"]["panels"] == 0
    with Image.open(tmp_path / "false_positives.png") as grid, Image.open(tmp_path / "misses.png") as empty:
        assert grid.size[0] > empty.size[0]
    with pytest.raises(ValueError, match="kind"):
        gallery.offer("hits", 1.0, volume, (0.0, 0.0, 0.0), "x")


def test_the_real_detector_reports_every_stage_consistently(tmp_path: Path) -> None:
    detector = Detector.load(MODEL)
    card = detector.card  # fast enough for a test: no flips, the 30 strongest candidates of each pass
    fewer = replace(card.front_end.candidates,
                    passes=tuple(replace(p, max_candidates=30) for p in card.front_end.candidates.passes))
    detector.card = replace(card, inference=Inference(flips=1), front_end=replace(card.front_end, candidates=fewer))
    data = tmp_path / "data"
    generate_studies(data, 1, seed=3, fmt="dicom", **TINY)
    report = evaluate_model(MODEL, data, "dicom", tmp_path / "eval", detector=detector, gallery=2)
    assert report["timings"]["per_scan"][0]["candidates"] > 0
    stages = report["stages"]
    assert stages["available"]
    recall = [stages["overall"]["recall"][s] for s in STAGES]
    assert recall == sorted(recall, reverse=True)
    op = report["at_report_score"]
    assert recall[-1] == pytest.approx(op["sensitivity"])
    assert len(report["false_positives"]) == op["false_positives"]
    scores = [f["score"] for f in report["false_positives"]]
    assert scores == sorted(scores, reverse=True)
    assert all(s >= report["report_score"] for s in scores)
    assert all(m["stage_lost"] in STAGES for m in report["misses"])


def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from pacs_node.cli import app

    result = CliRunner().invoke(app, ["evaluate", *args])
    return result.exit_code, result.output


def test_evaluate_command_explains_a_folder_without_the_luna16_layout_in_one_line(tmp_path: Path) -> None:
    code, output = _cli("--model", str(MODEL), "--data", str(tmp_path), "--out", str(tmp_path / "out"))
    assert code == 2
    assert output.strip().splitlines() == [
        f"{tmp_path}: no subset*/*.mhd scans; expected the LUNA16 layout: subset0/…/*.mhd + annotations.csv"]
    assert not (tmp_path / "out").exists()


def test_evaluate_command_refuses_a_missing_model_or_a_bad_truth_file_in_one_line(tmp_path: Path) -> None:
    luna = tmp_path / "luna"
    generate_studies(luna, 1, seed=3, fmt="luna16", **TINY)
    code, output = _cli("--model", str(tmp_path / "no-model"), "--data", str(luna), "--out", str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1 and "no-model" in output
    study = tmp_path / "dicom" / "study_0000"
    (study / "series").mkdir(parents=True)
    (study / "truth.json").write_text("{not json")
    code, output = _cli("--model", str(MODEL), "--data", str(tmp_path / "dicom"), "--format", "dicom",
                        "--out", str(tmp_path / "o"))
    assert code == 2 and len(output.strip().splitlines()) == 1
    assert output.startswith(f"{study / 'truth.json'}: not JSON")
    (study / "truth.json").write_text(json.dumps({"format": "pacs-node-phantom/1", "nodules": []}))
    code, output = _cli("--model", str(MODEL), "--data", str(tmp_path / "dicom"), "--format", "dicom")
    assert code == 2 and output.strip() == f"{study / 'truth.json'}: missing key 'series_uid'"


def test_evaluations_never_go_into_the_model_folder(tmp_path: Path, dicom_pair: tuple[Path, dict, list]) -> None:
    data, middles, _ = dicom_pair
    default = default_out_dir(MODEL, data)
    assert not default.resolve().is_relative_to(MODEL.parent.resolve())
    assert default == Path("evaluations") / f"{MODEL.name}-{data.name}"
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(EvaluationError, match="inside the model folder"):
        evaluate_model(model, data, "dicom", model / "evaluation", detector=_StagedOracle(middles))
    assert list(model.iterdir()) == []
    code, output = _cli("--model", str(model), "--data", str(data), "--format", "dicom", "--out", str(model / "e"))
    assert code == 2 and len(output.strip().splitlines()) == 1 and "inside the model folder" in output


def test_results_by_style_count_each_scan_in_its_own_style(tmp_path) -> None:
    from pacs_node.ml.stages import FalsePositive, NoduleTrace
    from pacs_node.ml.strata import by_stratum, scan_attributes

    (tmp_path / "truth").mkdir()
    for uid, style in (("1.1", "lobular"), ("1.2", "mottled"), ("1.3", "mottled")):
        (tmp_path / "truth" / f"{uid}.json").write_text(json.dumps({"series_uid": uid, "acquisition": {"style": style}}))
    (tmp_path / "truth" / "broken.json").write_text("{not json")
    attrs = scan_attributes(tmp_path, "luna16")
    assert attrs == {"1.1": {"style": "lobular"}, "1.2": {"style": "mottled"}, "1.3": {"style": "mottled"}}
    ref = Reference((0.0, 0.0, 0.0), 8.0, "solid")
    traces = [NoduleTrace("1.1", ref, True, None, 0.9, 1.0), NoduleTrace("1.2", ref, False, "score", 0.3, 2.0),
              NoduleTrace("1.3", ref, True, None, 0.95, 0.5), NoduleTrace("9.9", ref, True, None, 0.9, 0.1)]
    fps = [FalsePositive("1.2", (1.0, 1.0, 1.0), 0.9, "solid", 5.0, 5.0)] * 3
    rows = by_stratum("style", ["1.1", "1.2", "1.3", "1.4"], attrs, traces, fps)
    assert rows["lobular"] == {"scans": 1, "nodules": 1, "found": 1, "false_positives": 0, "sensitivity": 1.0,
                               "false_positives_per_scan": 0.0}
    assert rows["mottled"]["nodules"] == 2 and rows["mottled"]["sensitivity"] == 0.5
    assert rows["mottled"]["false_positives_per_scan"] == 1.5
    assert rows["unknown"]["scans"] == 1 and rows["unknown"]["nodules"] == 0  # 1.4 has no truth file
