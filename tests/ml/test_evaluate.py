"""LUNA16 scoring: hits, FROC, CPM, breakdowns, the plot, and a run over generated data.

CPM cases are small enough to compute by hand; the comments give the FROC points.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pacs_node.analyze.findings import Finding
from pacs_node.analyze.volume import read_mhd_volume
from pacs_node.ml.evaluate import evaluate_model
from pacs_node.ml.froc import FP_RATES, Candidate, Reference, save_froc_png, score_findings
from pacs_node.ml.luna16 import read_luna16_annotations
from pacs_node.ml.phantom import generate_studies

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
    with pytest.raises(ValueError, match="no subset"):
        evaluate_model(tmp_path, tmp_path, "luna16", tmp_path / "out", detector=_OracleDetector({}))
    with pytest.raises(ValueError, match="fmt"):
        evaluate_model(tmp_path, tmp_path, "nifti", tmp_path / "out",  # type: ignore[arg-type]
                       detector=_OracleDetector({}))


def test_reference_and_candidate_validate_their_arguments() -> None:
    with pytest.raises(ValueError, match="diameter_mm"):
        Reference((0, 0, 0), -1.0)
    with pytest.raises(ValueError, match="centre_xyz_mm"):
        Reference((0, 0), 5.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score"):
        Candidate((0, 0, 0), math.nan)
