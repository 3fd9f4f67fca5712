"""Run a detector over a data set and score it with the LUNA16 protocol (:mod:`pacs_node.ml.froc`).

:func:`evaluate_model` runs the detector over a LUNA16-layout folder or over DICOM
phantom studies with their ``truth.json`` and writes ``froc.png`` and ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from pacs_node.ml.froc import (
    FP_RATES,
    UNKNOWN_DIAMETER_MM,
    Candidate,
    Reference,
    save_froc_png,
    score_findings,
)
from pacs_node.ml.luna16 import (
    ANNOTATION_TYPES_FILE,
    ANNOTATIONS_FILE,
    read_luna16_annotations,
)

if TYPE_CHECKING:
    import highdicom as hd

    from pacs_node.analyze.findings import Finding

log = logging.getLogger(__name__)

EXCLUDED_FILE = "annotations_excluded.csv"
REPORT_FORMAT = "pacs-node-froc/1"
DataFormat = Literal["luna16", "dicom"]


class SupportsDetect(Protocol):
    """What :func:`evaluate_model` needs of a detector."""

    def detect(self, volume: hd.Volume) -> Sequence[Finding]: ...


@dataclass(frozen=True)
class _Scan:
    seriesuid: str
    load: Any  # () -> hd.Volume


def _luna16_scans(data_dir: Path) -> tuple[list[_Scan], dict[str, list[Reference]], dict[str, list[Reference]]]:
    """Scans (``subset*/*.mhd``), references and excluded findings of a LUNA16 folder."""
    from pacs_node.analyze.volume import read_mhd_volume

    mhds = sorted(data_dir.glob("subset*/*.mhd"))
    if not mhds:
        raise ValueError(f"{data_dir}: no subset*/*.mhd scans")
    uids = {p.stem for p in mhds}
    table = data_dir / ANNOTATION_TYPES_FILE
    if not table.exists():
        table = data_dir / ANNOTATIONS_FILE
    if not table.exists():
        raise ValueError(f"{data_dir}: no {ANNOTATIONS_FILE}")
    references: dict[str, list[Reference]] = {}
    for a in read_luna16_annotations(table):
        if a.seriesuid in uids:  # an annotation file may cover more subsets than present
            references.setdefault(a.seriesuid, []).append(Reference(a.centre_xyz_mm, a.diameter_mm, a.type))
    excluded: dict[str, list[Reference]] = {}
    if (data_dir / EXCLUDED_FILE).exists():
        for a in read_luna16_annotations(data_dir / EXCLUDED_FILE):
            if a.seriesuid in uids:
                d = a.diameter_mm if a.diameter_mm > 0 else UNKNOWN_DIAMETER_MM
                excluded.setdefault(a.seriesuid, []).append(Reference(a.centre_xyz_mm, d, a.type))
    scans = [_Scan(p.stem, lambda p=p: read_mhd_volume(p)) for p in mhds]
    return scans, references, excluded


def _dicom_scans(data_dir: Path) -> tuple[list[_Scan], dict[str, list[Reference]], dict[str, list[Reference]]]:
    """Scans and references of phantom study folders (``study_*/series/*.dcm`` + ``truth.json``)."""
    from pacs_node.analyze.volume import read_dicom_volume
    from pacs_node.ml.phantom.output import SERIES_DIR, TRUTH_FILE, TRUTH_FORMAT

    studies = sorted(p for p in data_dir.glob("study_*") if p.is_dir())
    if not studies:
        raise ValueError(f"{data_dir}: no study_* folders")
    scans: list[_Scan] = []
    references: dict[str, list[Reference]] = {}
    for study in studies:
        truth = json.loads((study / TRUTH_FILE).read_text())
        if truth.get("format") != TRUTH_FORMAT:
            raise ValueError(f"{study / TRUTH_FILE}: format {truth.get('format')!r}, expected {TRUTH_FORMAT!r}")
        uid = str(truth["series_uid"])
        references[uid] = [Reference(tuple(n["centre_xyz_mm"]), float(n["diameter_mm"]), n.get("type"))
                           for n in truth["nodules"]]
        files = sorted((study / SERIES_DIR).glob("*.dcm"))
        if not files:
            raise ValueError(f"{study}: no {SERIES_DIR}/*.dcm files")
        scans.append(_Scan(uid, lambda files=files: read_dicom_volume(files)))
    return scans, references, {}


def evaluate_model(
    model_dir: Path,
    data_dir: Path,
    fmt: DataFormat = "luna16",
    out_dir: Path | None = None,
    *,
    detector: SupportsDetect | None = None,
    operating_point: float = 1.0,
    max_scans: int | None = None,
) -> dict[str, Any]:
    """Run a detector over every scan of a data set and score it LUNA16-style.

    Parameters
    ----------
    model_dir
        Model folder, loaded with ``Detector.load`` (unless ``detector`` is given).
    data_dir
        ``luna16``: ``subset*/*.mhd`` with ``annotations.csv`` (types from
        ``annotations_types.csv``, hits ignored on ``annotations_excluded.csv``, when
        present).  ``dicom``: ``study_*/series/*.dcm`` with ``study_*/truth.json``, as
        :func:`pacs_node.ml.phantom.generate_studies` writes them.
    fmt
        ``"luna16"`` or ``"dicom"``.
    out_dir
        Where ``froc.png`` and ``report.json`` go; default ``model_dir/evaluation``.
    detector
        A ready detector (tests, or one already loaded); default: the model's.
    operating_point
        FPs/scan at which the report's ``operating_point`` breakdown is taken.
    max_scans
        Evaluate only the first scans (sorted by path); all by default.

    Returns
    -------
    dict
        The report written to ``report.json``.
    """
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    out_dir = Path(out_dir) if out_dir is not None else model_dir / "evaluation"
    if fmt == "luna16":
        scans, references, excluded = _luna16_scans(data_dir)
    elif fmt == "dicom":
        scans, references, excluded = _dicom_scans(data_dir)
    else:
        raise ValueError(f"fmt must be 'luna16' or 'dicom', got {fmt!r}")
    if max_scans is not None:
        scans = scans[:max_scans]
    if detector is None:
        from pacs_node.ml.detector import Detector

        detector = Detector.load(model_dir)

    candidates: dict[str, list[Candidate]] = {}
    timings = []
    started = time.perf_counter()
    for scan, (load_s, detect_s, findings) in zip(scans, _run(detector, scans)):
        candidates[scan.seriesuid] = [Candidate(f.center_lps_mm, f.score) for f in findings]
        timings.append({"seriesuid": scan.seriesuid, "load_s": round(load_s, 3),
                        "detect_s": round(detect_s, 3), "findings": len(findings)})
        log.info("event=scan_evaluated seriesuid=%s load_s=%.2f detect_s=%.2f findings=%d",
                 scan.seriesuid, load_s, detect_s, len(findings))
    total_s = time.perf_counter() - started

    uids = [s.seriesuid for s in scans]
    result = score_findings({u: references.get(u, []) for u in uids}, candidates,
                            {u: excluded[u] for u in uids if u in excluded}, scan_ids=uids)
    detect_times = [t["detect_s"] for t in timings]
    report = {
        "format": REPORT_FORMAT,
        "model_dir": str(model_dir),
        "data_dir": str(data_dir),
        "data_format": fmt,
        **result.to_dict(operating_point),
        "timings": {
            "total_s": round(total_s, 3),
            "mean_detect_s": round(float(np.mean(detect_times)), 3),
            "max_detect_s": round(float(np.max(detect_times)), 3),
            "per_scan": timings,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_froc_png(result, out_dir / "froc.png", title=f"{model_dir.name} on {data_dir.name}")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("event=evaluation_done scans=%d nodules=%d cpm=%s out=%s",
             result.n_scans, result.n_nodules, report["cpm"], out_dir)
    return report


def _run(detector: SupportsDetect, scans: Sequence[_Scan]) -> Iterator[tuple[float, float, list[Finding]]]:
    for scan in scans:
        t0 = time.perf_counter()
        volume = scan.load()
        t1 = time.perf_counter()
        findings = list(detector.detect(volume))
        yield t1 - t0, time.perf_counter() - t1, findings


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pacs_node.ml.evaluate MODEL_DIR DATA_DIR [--format dicom] [--out DIR]``."""
    parser = argparse.ArgumentParser(description="LUNA16 FROC/CPM evaluation of a detector model")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--format", choices=("luna16", "dicom"), default="luna16")
    parser.add_argument("--out", type=Path, help="output folder (default MODEL_DIR/evaluation)")
    parser.add_argument("--operating-point", type=float, default=1.0, help="FPs/scan for the breakdown")
    parser.add_argument("--max-scans", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = evaluate_model(args.model_dir, args.data_dir, args.format, args.out,
                            operating_point=args.operating_point, max_scans=args.max_scans)
    sens = ", ".join(f"{r:g}: {s:.3f}" for r, s in zip(FP_RATES, report["sensitivities"]) if s is not None)
    print(f"CPM {report['cpm']}  scans {report['n_scans']}  nodules {report['n_nodules']}  [{sens}]")


if __name__ == "__main__":
    main()
