"""Run a detector over a data set and score it with the LUNA16 protocol (:mod:`pacs_node.ml.froc`).

:func:`evaluate_model` runs the detector over a LUNA16-layout folder or over DICOM
phantom studies with their ``truth.json`` and writes ``report.json`` and ``froc.png``
(and, on request, ``misses.png`` and ``false_positives.png``: :mod:`pacs_node.ml.gallery`)
into an output folder outside the model's.  Besides the FROC and CPM, the report says
where each nodule was lost (:mod:`pacs_node.ml.stages`) when the detector offers
``run()``, and lists the misses and false positives at the model's operating point.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from pacs_node.imaging.luna16 import ANNOTATION_TYPES_FILE, ANNOTATIONS_FILE, read_luna16_annotations
from pacs_node.ml.froc import FP_RATES, UNKNOWN_DIAMETER_MM, Candidate, Reference, save_froc_png, score_findings
from pacs_node.ml.gallery import Gallery
from pacs_node.ml.stages import (
    FalsePositive,
    NoduleTrace,
    StageData,
    false_positives_worst_first,
    format_stage_table,
    misses_worst_first,
    stage_recall,
    trace_scan,
)
from pacs_node.ml.strata import by_stratum, scan_attributes

if TYPE_CHECKING:
    import highdicom as hd

    from pacs_node.imaging.findings import Finding
    from pacs_node.ml.detector import Detection
    from pacs_node.ml.modelcard import ModelCard

log = logging.getLogger(__name__)

EXCLUDED_FILE = "annotations_excluded.csv"
REPORT_FORMAT = "pacs-node-froc/2"
#: Parent of the default output folders (relative to the working directory).
DEFAULT_OUT_ROOT = Path("evaluations")
DataFormat = Literal["luna16", "dicom"]
LUNA16_LAYOUT = "expected the LUNA16 layout: subset0/…/*.mhd + annotations.csv"
DICOM_LAYOUT = "expected phantom studies: study_*/series/*.dcm + study_*/truth.json"


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked (data layout, truth file, output folder); the message says why."""


class SupportsDetect(Protocol):
    """What :func:`evaluate_model` needs of a detector: findings at its operating point."""

    def detect(self, volume: hd.Volume) -> Sequence[Finding]: ...


class SupportsRun(SupportsDetect, Protocol):
    """A detector that also shows its stages (:class:`pacs_node.ml.detector.Detector`)."""

    card: ModelCard

    def run(self, volume: hd.Volume, min_score: float | None = None) -> Detection: ...


@dataclass(frozen=True)
class _Scan:
    seriesuid: str
    load: Callable[[], hd.Volume]


_Loaded = tuple[list[_Scan], dict[str, list[Reference]], dict[str, list[Reference]]]


def _luna16_scans(data_dir: Path) -> _Loaded:
    """Scans (``subset*/*.mhd``), references and excluded findings of a LUNA16 folder."""
    from pacs_node.imaging.volume import read_mhd_volume

    mhds = sorted(data_dir.glob("subset*/*.mhd"))
    if not mhds:
        raise EvaluationError(f"{data_dir}: no subset*/*.mhd scans; {LUNA16_LAYOUT}")
    uids = {p.stem for p in mhds}
    table = data_dir / ANNOTATION_TYPES_FILE
    if not table.exists():
        table = data_dir / ANNOTATIONS_FILE
    if not table.exists():
        raise EvaluationError(f"{data_dir}: no {ANNOTATIONS_FILE}; {LUNA16_LAYOUT}")
    references: dict[str, list[Reference]] = {}
    excluded: dict[str, list[Reference]] = {}
    try:
        for a in read_luna16_annotations(table):
            if a.seriesuid in uids:  # an annotation file may cover more subsets than present
                references.setdefault(a.seriesuid, []).append(Reference(a.centre_xyz_mm, a.diameter_mm, a.type))
        if (data_dir / EXCLUDED_FILE).exists():
            for a in read_luna16_annotations(data_dir / EXCLUDED_FILE):
                if a.seriesuid in uids:
                    d = a.diameter_mm if a.diameter_mm > 0 else UNKNOWN_DIAMETER_MM
                    excluded.setdefault(a.seriesuid, []).append(Reference(a.centre_xyz_mm, d, a.type))
    except (KeyError, ValueError) as exc:
        raise EvaluationError(f"{data_dir}: unreadable annotations: {exc}") from exc
    scans = [_Scan(p.stem, lambda p=p: read_mhd_volume(p)) for p in mhds]
    return scans, references, excluded


def _dicom_scans(data_dir: Path) -> _Loaded:
    """Scans and references of phantom study folders (``study_*/series/*.dcm`` + ``truth.json``)."""
    from pacs_node.imaging.volume import read_dicom_volume
    from pacs_node.ml.phantom.output import SERIES_DIR, TRUTH_FILE, TRUTH_FORMAT

    studies = sorted(p for p in data_dir.glob("study_*") if p.is_dir())
    if not studies:
        raise EvaluationError(f"{data_dir}: no study_* folders; {DICOM_LAYOUT}")
    scans: list[_Scan] = []
    references: dict[str, list[Reference]] = {}
    for study in studies:
        path = study / TRUTH_FILE
        try:
            truth = json.loads(path.read_text())
            if truth.get("format") != TRUTH_FORMAT:
                raise ValueError(f"format {truth.get('format')!r}, expected {TRUTH_FORMAT!r}")
            uid = str(truth["series_uid"])
            references[uid] = [Reference(tuple(n["centre_xyz_mm"]), float(n["diameter_mm"]), n.get("type"))
                               for n in truth["nodules"]]
        except FileNotFoundError as exc:
            raise EvaluationError(f"{study}: no {TRUTH_FILE}; {DICOM_LAYOUT}") from exc
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{path}: not JSON: {exc}") from exc
        except KeyError as exc:
            raise EvaluationError(f"{path}: missing key {exc}") from exc
        except (AttributeError, TypeError, ValueError) as exc:
            raise EvaluationError(f"{path}: bad truth file: {exc}") from exc
        files = sorted((study / SERIES_DIR).glob("*.dcm"))
        if not files:
            raise EvaluationError(f"{study}: no {SERIES_DIR}/*.dcm files; {DICOM_LAYOUT}")
        scans.append(_Scan(uid, lambda files=files: read_dicom_volume(files)))
    return scans, references, {}


def default_out_dir(model_dir: Path, data_dir: Path) -> Path:
    """``evaluations/<model name>-<data name>`` under the working directory."""
    return DEFAULT_OUT_ROOT / f"{Path(model_dir).resolve().name}-{Path(data_dir).resolve().name}"


def evaluate_model(
    model_dir: Path,
    data_dir: Path,
    fmt: DataFormat = "luna16",
    out_dir: Path | None = None,
    *,
    detector: SupportsDetect | None = None,
    operating_point: float = 1.0,
    max_scans: int | None = None,
    gallery: int = 0,
    progress: Callable[[str], None] | None = None,
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
        Where ``report.json``, ``froc.png`` and the galleries go; default
        :func:`default_out_dir`.  Never inside ``model_dir``.
    detector
        A ready detector (tests, or one already loaded); default: the model's.  With
        ``run()`` and a ``card`` (:class:`SupportsRun`), findings down to the card's
        ``min_score`` make the FROC and the stages are traced; with ``detect()`` only,
        its findings are taken to be at the operating point and stages are unavailable.
    operating_point
        FPs/scan at which the report's ``operating_point`` breakdown is taken.
    max_scans
        Evaluate only the first scans (sorted by path); all by default.
    gallery
        Worst misses and false positives to draw (``misses.png``,
        ``false_positives.png``); 0: none.
    progress
        Called with one line per scan evaluated.

    Returns
    -------
    dict
        The report written to ``report.json``.

    Raises
    ------
    EvaluationError
        If the data folder or a truth file is not as expected, or ``out_dir`` lies in
        the model folder.
    pacs_node.ml.modelcard.ModelError
        If the model folder cannot be loaded.
    """
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(model_dir, data_dir)
    if out_dir.resolve().is_relative_to(model_dir.resolve()):
        raise EvaluationError(f"{out_dir}: inside the model folder {model_dir}; write evaluations elsewhere "
                              "so that the model folder never changes")
    if fmt not in ("luna16", "dicom"):
        raise EvaluationError(f"fmt must be 'luna16' or 'dicom', got {fmt!r}")
    if not data_dir.is_dir():
        raise EvaluationError(f"{data_dir}: no such folder; "
                              f"{LUNA16_LAYOUT if fmt == 'luna16' else DICOM_LAYOUT}")
    scans, references, excluded = _luna16_scans(data_dir) if fmt == "luna16" else _dicom_scans(data_dir)
    if max_scans is not None:
        if max_scans < 1:
            raise EvaluationError(f"max_scans must be >= 1, got {max_scans}")
        scans = scans[:max_scans]
    if detector is None:
        from pacs_node.ml.detector import Detector

        detector = Detector.load(model_dir)
    staged = callable(getattr(detector, "run", None)) and hasattr(detector, "card")
    report_score = float(detector.card.thresholds.report_score) if staged else None  # type: ignore[attr-defined]
    panels = Gallery(gallery)

    candidates: dict[str, list[Candidate]] = {}
    traces: list[NoduleTrace] = []
    fps: list[FalsePositive] = []
    timings: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    started = time.perf_counter()
    for number, scan in enumerate(scans, 1):
        t0 = time.perf_counter()
        volume = scan.load()
        t1 = time.perf_counter()
        findings, stage_data, error = _detect(detector, volume, staged)
        detect_s = time.perf_counter() - t1
        refs = references.get(scan.seriesuid, [])
        candidates[scan.seriesuid] = [Candidate(f.center_lps_mm, f.score) for f in findings]
        scan_traces, scan_fps = trace_scan(scan.seriesuid, refs, findings, report_score, stage_data,
                                           excluded.get(scan.seriesuid, ()))
        traces += scan_traces
        fps += scan_fps
        _offer(panels, volume, scan_traces, scan_fps)
        row: dict[str, Any] = {"seriesuid": scan.seriesuid, "load_s": round(t1 - t0, 3),
                               "detect_s": round(detect_s, 3), "findings": len(findings)}
        if stage_data is not None:
            row["candidates"] = len(stage_data.candidates_lps_mm)
        if error:
            row["error"] = error
            failed.append({"seriesuid": scan.seriesuid, "reason": error})
        timings.append(row)
        log.info("event=scan_evaluated seriesuid=%s load_s=%.2f detect_s=%.2f findings=%d error=%s",
                 scan.seriesuid, t1 - t0, detect_s, len(findings), error or "none")
        if progress is not None:
            found = sum(t.found for t in scan_traces)
            progress(f"scan {number}/{len(scans)} {scan.seriesuid}: {detect_s:.1f} s, found {found}/{len(refs)} "
                     f"nodules, {len(scan_fps)} false positives" + (f" (not analysable: {error})" if error else ""))
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
        "report_score": report_score,
        "at_report_score": result.breakdown_at_score(report_score) if report_score is not None else None,
        "stages": stage_recall(traces, staged),
        "misses": [t.to_dict() for t in misses_worst_first(traces)],
        "false_positives": [f.to_dict() for f in false_positives_worst_first(fps)],
        "failed_scans": failed,
        "by_style": by_stratum("style", uids, scan_attributes(data_dir, fmt), traces, fps) if staged else None,
        "timings": {
            "total_s": round(total_s, 3),
            "mean_detect_s": round(float(np.mean(detect_times)), 3),
            "max_detect_s": round(float(np.max(detect_times)), 3),
            "per_scan": timings,
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{model_dir.name} on {data_dir.resolve().name}"
    save_froc_png(result, out_dir / "froc.png", title=title)
    if gallery:
        report["gallery"] = panels.write(out_dir, title)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("event=evaluation_done scans=%d nodules=%d cpm=%s out=%s",
             result.n_scans, result.n_nodules, report["cpm"], out_dir)
    return report


def _detect(detector: SupportsDetect, volume: hd.Volume, staged: bool
            ) -> tuple[list[Finding], StageData | None, str | None]:
    """Findings (with ``run()``: down to the card's ``min_score``), stage data and the reason a scan failed."""
    from pacs_node.imaging.volume import NotAnalysable

    try:
        if not staged:
            return list(detector.detect(volume)), None, None
        detection = detector.run(volume, min_score=detector.card.thresholds.min_score)  # type: ignore[attr-defined]
        return list(detection.findings), StageData.from_detection(detection), None
    except NotAnalysable as exc:  # no lungs, say: every nodule of the scan is missed
        return [], StageData.unanalysable() if staged else None, str(exc)


def _offer(panels: Gallery, volume: hd.Volume, traces: Sequence[NoduleTrace], fps: Sequence[FalsePositive]) -> None:
    """Offer a scan's misses (badness: diameter) and false positives (score) to the gallery."""
    for t in traces:
        if not t.found:
            r = t.reference
            best = "none" if t.best_score is None else f"{t.best_score:.2f}"
            title = (f"…{t.seriesuid[-10:]} z {r.centre_xyz_mm[2]:.0f}\n{r.diameter_mm:.1f} mm {r.type or ''}, "
                     f"lost: {t.lost_at or 'missed'}, best {best}")
            panels.offer("misses", r.diameter_mm, volume, r.centre_xyz_mm, title, r.diameter_mm / 2)
    for f in fps:
        size = "" if f.diameter_mm is None else f" {f.diameter_mm:.1f} mm"
        title = f"…{f.seriesuid[-10:]} z {f.centre_xyz_mm[2]:.0f}\nscore {f.score:.2f}, {f.type}{size}"
        radius = (f.diameter_mm if f.diameter_mm is not None else f.long_axis_mm) / 2
        panels.offer("false_positives", f.score, volume, f.centre_xyz_mm, title, radius)


def format_summary(report: dict[str, Any], out_dir: Path | None = None) -> str:
    """A compact human summary of a report: CPM, sensitivities, operating point, per-stage recall."""

    def num(v: float | None, fmt: str = ".3f") -> str:
        return "n/a" if v is None else format(v, fmt)

    rates = "  ".join(f"{_rate_label(r)}: {num(s, '.2f')}" for r, s in zip(FP_RATES, report["sensitivities"]))
    lines = [
        f"{report['n_scans']} scans, {report['n_nodules']} nodules, {report['n_candidates']} findings on the FROC"
        + (f", {len(report['failed_scans'])} not analysable" if report["failed_scans"] else ""),
        f"CPM {num(report['cpm'])}   sensitivity at FPs/scan  {rates}",
    ]
    op = report["operating_point"]
    lines.append(f"at {op['fps_per_scan']:g} FPs/scan (score >= {num(op['threshold'], '.3f')}): "
                 f"sensitivity {num(op['sensitivity'], '.2f')} ({op['detected']}/{op['nodules']})")
    at = report.get("at_report_score")
    if at is not None:
        lines.append(f"at the model's operating point (score >= {report['report_score']:.3f}): sensitivity "
                     f"{num(at['sensitivity'], '.2f')} ({at['detected']}/{at['nodules']}), "
                     f"{at['false_positives_per_scan']:.2f} FPs/scan")
    else:
        lines.append(f"at the detector's own operating point: {len(report['false_positives'])} false positives "
                     f"({len(report['false_positives']) / report['n_scans']:.2f}/scan)")
    lines.append(format_stage_table(report["stages"]))
    styles = report.get("by_style") or {}
    if len(styles) > 1 or (styles and "unknown" not in styles):
        lines.append("at the operating point, by style: " + "; ".join(
            f"{k} {num(v['sensitivity'], '.2f')} ({v['found']}/{v['nodules']}), {v['false_positives_per_scan']:.2f} FPs/scan"
            for k, v in styles.items()))
    if out_dir is not None:
        extra = "".join(f", {g['file']} ({g['panels']} panels)" for g in report.get("gallery", {}).values())
        lines.append(f"report: {Path(out_dir).resolve() / 'report.json'} (with froc.png{extra})")
    return "\n".join(lines)


def _rate_label(rate: float) -> str:
    return f"1/{round(1 / rate)}" if rate < 1 else f"{rate:g}"


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pacs_node.ml.evaluate MODEL_DIR DATA_DIR [--format dicom] [--out DIR] [--gallery N]``."""
    parser = argparse.ArgumentParser(description="LUNA16 FROC/CPM evaluation of a detector model")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--format", choices=("luna16", "dicom"), default="luna16")
    parser.add_argument("--out", type=Path, help="output folder (default evaluations/MODEL-DATA)")
    parser.add_argument("--operating-point", type=float, default=1.0, help="FPs/scan for the breakdown")
    parser.add_argument("--max-scans", type=int)
    parser.add_argument("--gallery", type=int, default=8, help="worst misses and false positives to draw (0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = args.out or default_out_dir(args.model_dir, args.data_dir)
    from pacs_node.ml.modelcard import ModelError

    try:
        report = evaluate_model(args.model_dir, args.data_dir, args.format, out, operating_point=args.operating_point,
                                max_scans=args.max_scans, gallery=args.gallery, progress=print)
    except (EvaluationError, ModelError) as exc:
        parser.exit(2, f"{exc}\n")
    print(format_summary(report, out))


if __name__ == "__main__":
    main()
