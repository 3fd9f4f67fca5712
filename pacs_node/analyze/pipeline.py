"""One analysis job: choose the series, build the volume, detect, write the reports.

The job writes its SR and key images into the blob store once, with UIDs made here; the
worker then commits the job, these objects and their deliveries in one transaction,
so every later send or resend carries the very same objects.

For a series with findings it also writes the objects that some destination's output
profile asks for: the Key Object Selection, the presentation state and the
segmentation (:mod:`pacs_node.report.kos`, :mod:`~pacs_node.report.gsps`,
:mod:`~pacs_node.report.seg`).  A series without findings, or not analysed, gets none
of these three: there is nothing to flag, mark or segment (its SR and overview key
image say why).  Should one of them fail to build (an unusual geometry), it is left
out with a warning and the SR and key images are still delivered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import highdicom as hd
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select

from pacs_node import __version__
from pacs_node.analyze.followup import FollowUp, PriorProvider, compare_with_prior
from pacs_node.analyze.revision import EarlierReport, Revision
from pacs_node.analyze.series import SeriesChoice, choose_series
from pacs_node.config import Settings
from pacs_node.db.deliveries import ObjectRow
from pacs_node.db.models import Instance, ObjectKind, Series, Study
from pacs_node.db.queue import ClaimedJob
from pacs_node.imaging.findings import Finding, study_category
from pacs_node.imaging.volume import NotAnalysable, volume_from_datasets
from pacs_node.storage import BlobStore, open_store, report_key
from pacs_node.report.gsps import build_gsps
from pacs_node.report.identity import ObjectIdentity, SeriesIdentity
from pacs_node.report.keyimage_compare import PriorView
from pacs_node.report.keyimages import build_key_images
from pacs_node.report.kos import build_kos
from pacs_node.report.prior import PriorStatement
from pacs_node.report.seg import build_seg
from pacs_node.report.sr import AlgorithmInfo, DeviceInfo, ReportOutcome, build_report
from pacs_node.worker import JobOutcome

log = logging.getLogger(__name__)

#: Series numbers of the objects we add to a study (high, to sort after the scanner's).
SR_SERIES_NUMBER = 9901
KEY_IMAGE_SERIES_NUMBER = 9902
KOS_SERIES_NUMBER = 9903
GSPS_SERIES_NUMBER = 9904
SEG_SERIES_NUMBER = 9905
#: The Manufacturer of every object we make (our earlier SRs are recognised by it and SR_SERIES_NUMBER).
MANUFACTURER = "pacs-node project"


class NoduleDetector(Protocol):
    """What the pipeline needs of a detector (``pacs_node.ml.detector.Detector``)."""

    name: str
    version: str
    synthetic_data: bool

    def detect(self, volume: hd.Volume) -> list[Finding]:
        """Findings in patient coordinates (LPS, mm)."""


@dataclass(frozen=True)
class _Series:
    uid: str
    headers: list[tuple[Path, Dataset]]


def _study_series(engine: Engine, store: BlobStore, study_pk: int, stack: ExitStack) -> tuple[str, list[_Series]]:
    """The study's UID and its series' headers, read from local copies of its objects (fetched
    in parallel from an object store) that last as long as ``stack``."""
    with engine.connect() as connection:
        study_uid = connection.scalar(select(Study.study_uid).where(Study.id == study_pk))
        rows = connection.execute(
            select(Series.series_uid, Instance.path)
            .join(Instance, Instance.series_pk == Series.id)
            .where(Series.study_pk == study_pk, Instance.purged_at.is_(None))  # files retention kept
            .order_by(Series.id, Instance.id)
        ).all()
    local = stack.enter_context(store.fetched([key for _, key in rows]))
    grouped: dict[str, list[tuple[Path, Dataset]]] = {}
    for series_uid, key in rows:
        try:
            path = local[key]
            header = dcmread(path, stop_before_pixels=True)
        except (KeyError, OSError, InvalidDicomError, ValueError) as exc:
            log.warning("event=instance_unreadable study=%d error=%s", study_pk, type(exc).__name__)
            continue
        grouped.setdefault(series_uid, []).append((path, header))
    return study_uid, [_Series(uid, headers) for uid, headers in grouped.items()]


class Analysis:
    """The job runner of an analysing node."""

    def __init__(self, settings: Settings, detector: NoduleDetector, store: BlobStore | None = None) -> None:
        self.settings = settings
        self.detector = detector
        #: Where the study's objects are read and the reports written.
        self.store = store if store is not None else open_store(settings)
        self.algorithm = AlgorithmInfo(detector.name, detector.version, synthetic_data=detector.synthetic_data)
        self.device = DeviceInfo(MANUFACTURER, "pacs-node", __version__, settings.node.name)
        #: Objects beyond the SR and key images that some destination receives.
        self.extra_kinds = [
            kind for kind in (ObjectKind.KOS, ObjectKind.GSPS, ObjectKind.SEG)
            if any(kind.value in destination.objects for destination in settings.destinations)
        ]

    def __call__(self, engine: Engine, job: ClaimedJob, prior: PriorProvider | None = None,
                 revision: Revision | None = None) -> JobOutcome:
        """Analyse the study of ``job``; ``prior`` (``[priors]`` on) is asked, once a series is
        analysed, what the lookup found of the patient's prior CT: the findings are compared
        with it where possible (:mod:`pacs_node.analyze.followup`), and the report says so.
        ``revision``: our earlier reports of the study, which these replace (a re-report:
        :mod:`pacs_node.analyze.revision`)."""
        with ExitStack() as stack:  # the study's local copies last until the job is done
            return self._run(engine, job, prior, revision, stack)

    def _run(self, engine: Engine, job: ClaimedJob, prior: PriorProvider | None, revision: Revision | None,
             stack: ExitStack) -> JobOutcome:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        study_uid, series = _study_series(engine, self.store, job.study_pk, stack)
        analysis = self.settings.analysis
        chosen, rejected = choose_series(
            {s.uid: s.headers for s in series},
            analyse_all=analysis.series == "all",
            min_slices=analysis.min_slices,
            max_slice_spacing_mm=analysis.max_slice_spacing_mm,
        )
        timings["select_s"] = time.perf_counter() - started
        store = self.store
        if not chosen:
            reason = "; ".join(
                f"series {r.description or '#' + r.series_uid[-6:]}: {r.reason}" for r in rejected
            ) or "no images"
            return self._not_analysable(store, study_uid, series, reason, timings)
        objects: list[ObjectRow] = []
        summaries = []
        for choice in chosen:
            compare = None if prior is None else (
                lambda datasets, volume, found: compare_with_prior(engine, self.store, self.detector, prior(),
                                                                   datasets, volume, found))
            earlier = revision.of(choice.series_uid) if revision is not None else None
            produced, summary = self._analyse(store, study_uid, choice, timings, compare, earlier)
            objects.extend(produced)
            summaries.append(summary)
        if not any(s["outcome"] == "analysed" for s in summaries):  # e.g. no pixel data: the SRs say not analysable
            reason = "; ".join(s["outcome"].removeprefix("not analysable: ") for s in summaries)
            log.info("event=study_not_analysable reason=%r", reason)
            return JobOutcome({"step": "analysis", "analysis_performed": False, "outcome": "not analysable",
                               "reason": reason, "series": summaries,
                               "rejected_series": [{"series_uid": r.series_uid, "reason": r.reason} for r in rejected],
                               "timings_s": {k: round(v, 3) for k, v in timings.items()}}, objects)
        return JobOutcome(
            {
                "step": "analysis",
                "analysis_performed": True,
                "model": f"{self.detector.name} {self.detector.version}",
                "series": summaries,
                "findings": sum(s["findings"] for s in summaries),
                "lung_rads": max((s["lung_rads"] for s in summaries), key=_rank),
                "rejected_series": [{"series_uid": r.series_uid, "reason": r.reason} for r in rejected],
                "timings_s": {k: round(v, 3) for k, v in timings.items()},
            },
            objects,
        )

    def _analyse(
        self, store: BlobStore, study_uid: str, choice: SeriesChoice, timings: dict[str, float],
        compare: Callable[[list[Dataset], hd.Volume, list[Finding]], FollowUp] | None = None,
        earlier: EarlierReport | None = None,
    ) -> tuple[list[ObjectRow], dict]:
        t0 = time.perf_counter()
        datasets = [dcmread(path) for path in choice.paths]
        try:
            volume = volume_from_datasets(datasets)
        except NotAnalysable as exc:
            timings["load_s"] = time.perf_counter() - t0
            objects = self._write(store, study_uid, datasets, [], ReportOutcome.not_analysable(str(exc)),
                                  earlier=earlier)
            return objects, {"series_uid": choice.series_uid, "outcome": f"not analysable: {exc}",
                             "findings": 0, "lung_rads": "1"}
        t1 = time.perf_counter()
        try:
            findings = self.detector.detect(volume)
        except NotAnalysable as exc:  # e.g. no lungs in the volume
            objects = self._write(store, study_uid, datasets, [], ReportOutcome.not_analysable(str(exc)),
                                  earlier=earlier)
            return objects, {"series_uid": choice.series_uid, "outcome": f"not analysable: {exc}",
                             "findings": 0, "lung_rads": "1"}
        t2 = time.perf_counter()
        follow = compare(datasets, volume, findings) if compare is not None else None
        if follow is not None:
            findings = follow.findings
            timings["compare_s"] = timings.get("compare_s", 0.0) + time.perf_counter() - t2
        kept = None
        if earlier is not None:  # a re-report: the same nodules keep their Tracking UIDs
            findings, kept = earlier.keep_tracking(findings)
        t2b = time.perf_counter()
        objects = self._write(store, study_uid, datasets, findings, ReportOutcome.analysed(),
                              follow.statement if follow is not None else None,
                              follow.views if follow is not None else (), earlier)
        t3 = time.perf_counter()
        timings["load_s"] = timings.get("load_s", 0.0) + t1 - t0
        timings["detect_s"] = timings.get("detect_s", 0.0) + t2 - t1
        timings["report_s"] = timings.get("report_s", 0.0) + t3 - t2b
        category = study_category(findings).value
        log.info("event=analysis_done series_findings=%d lung_rads=%s detect_s=%.2f", len(findings), category, t2 - t1)
        summary = {"series_uid": choice.series_uid, "outcome": "analysed", "findings": len(findings),
                   "lung_rads": category, "slices": len(datasets)}
        if follow is not None and follow.summary:
            summary["comparison"] = follow.summary
        if earlier is not None:
            summary["revises"] = {"sr_uid": earlier.sop_instance_uid, "tracking_uids_kept": kept,
                                  "earlier_findings": len(earlier.nodules)}
        return objects, summary

    def _not_analysable(
        self, store: BlobStore, study_uid: str, series: Sequence[_Series], reason: str, timings: dict[str, float]
    ) -> JobOutcome:
        result = {"step": "analysis", "analysis_performed": False, "outcome": "not analysable", "reason": reason,
                  "timings_s": {k: round(v, 3) for k, v in timings.items()}}
        log.info("event=study_not_analysable reason=%r", reason)
        images = [header for s in series for _, header in s.headers if "Rows" in header]
        if not self.settings.analysis.report_not_analysable or not images:
            return JobOutcome(result)  # nothing to report on, or reporting it is switched off
        return JobOutcome(result, self._write(store, study_uid, images[:1], [], ReportOutcome.not_analysable(reason)))

    def _write(
        self, store: BlobStore, study_uid: str, source: list[Dataset], findings: list[Finding], outcome: ReportOutcome,
        prior: PriorStatement | None = None, prior_views: Sequence[PriorView | None] = (),
        earlier: EarlierReport | None = None,
    ) -> list[ObjectRow]:
        sr = build_report(
            source, findings, outcome=outcome, algorithm=self.algorithm, device=self.device,
            identity=ObjectIdentity.fresh(SR_SERIES_NUMBER), prior=prior,
            previous_versions=[earlier.reference] if earlier is not None else (),
        )
        images = build_key_images(
            source, findings, outcome=outcome, algorithm=self.algorithm, device=self.device,
            series=SeriesIdentity.fresh(KEY_IMAGE_SERIES_NUMBER),
            sop_instance_uids=[generate_uid() for _ in range(1 + len(findings))], prior=prior,
            prior_views=prior_views,
        )
        produced = [(ObjectKind.SR, sr), *((ObjectKind.KEY_IMAGE, image) for image in images)]
        if findings:
            produced.extend(self._finding_objects(source, findings, images))
        written: list[ObjectRow] = []
        for kind, ds in produced:
            key = report_key(study_uid, ds.SOPInstanceUID)
            store.write_dataset(ds, key)
            written.append((kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID), key))
        return written

    def _finding_objects(
        self, source: list[Dataset], findings: list[Finding], key_images: Sequence[Dataset]
    ) -> list[tuple[ObjectKind, Dataset]]:
        """The KOS, presentation state and segmentation the destinations want, each with fresh UIDs."""
        built: list[tuple[ObjectKind, Dataset]] = []
        for kind in self.extra_kinds:
            common = {"algorithm": self.algorithm, "device": self.device}
            try:
                if kind is ObjectKind.KOS:
                    ds = build_kos(source, findings, key_images, identity=ObjectIdentity.fresh(KOS_SERIES_NUMBER),
                                   **common)
                elif kind is ObjectKind.GSPS:
                    ds = build_gsps(source, findings, identity=ObjectIdentity.fresh(GSPS_SERIES_NUMBER), **common)
                else:
                    ds = build_seg(source, findings, identity=ObjectIdentity.fresh(SEG_SERIES_NUMBER), **common)
            except Exception as exc:  # an extra object must not cost the SR and key images
                log.warning("event=object_skipped kind=%s error=%s", kind.value, type(exc).__name__)
                continue
            built.append((kind, ds))
        return built


def _rank(category: str) -> int:
    order = ["1", "2", "3", "4A", "4B", "4X"]
    return order.index(category) if category in order else -1
