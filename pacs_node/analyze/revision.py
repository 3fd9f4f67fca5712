"""The next version of our report of a study: the SR each new one replaces, and the Tracking UIDs it keeps.

A study is re-reported when its prior CT becomes available after the first report
(``[priors] recheck_minutes``, :mod:`pacs_node.priors.job`).  Detection is deterministic, so
the re-report finds the same nodules: each keeps the Tracking UID it had in our earlier SR
of its series (matched by centre, within :data:`SAME_NODULE_MM`), and the new SR lists the
earlier one in its Predecessor Documents Sequence.  The earlier SRs are read from the spool:
the SRs of the study's newest finished job that produced any.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine, func, select

from pacs_node.db.models import Job, JobState, ObjectKind, ReportObject
from pacs_node.imaging.findings import Finding
from pacs_node.report.read import read_findings
from pacs_node.storage import BlobStore, read_dataset

log = logging.getLogger(__name__)

#: Centres this close (mm, LPS) are the same nodule found again (the detector is deterministic;
#: the SR keeps centres as 32-bit floats).
SAME_NODULE_MM = 2.0

_REFERENCE = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class EarlierReport:
    """Our earlier SR of one series: what its next version references and keeps.

    Attributes
    ----------
    reference
        The SR's SOP Class, SOP Instance, Study and Series Instance UIDs (what a Predecessor
        Documents Sequence item holds).
    nodules
        ``(centre (LPS, mm), Tracking UID)`` of each nodule it reported.
    """

    reference: Dataset
    nodules: tuple[tuple[tuple[float, float, float], str], ...]

    @property
    def sop_instance_uid(self) -> str:
        return str(self.reference.SOPInstanceUID)

    def keep_tracking(self, findings: Sequence[Finding]) -> tuple[list[Finding], int]:
        """``findings`` with the Tracking UIDs their nodules had in this report (nearest centre
        first, one to one, within :data:`SAME_NODULE_MM`), and how many kept theirs."""
        pairs = sorted(
            (math.dist(finding.center_lps_mm, centre), i, j)
            for i, finding in enumerate(findings) for j, (centre, _) in enumerate(self.nodules)
        )
        uids: dict[int, str] = {}
        taken: set[int] = set()
        for distance, i, j in pairs:
            if distance > SAME_NODULE_MM:
                break
            if i not in uids and j not in taken:
                uids[i] = self.nodules[j][1]
                taken.add(j)
        kept = [dataclasses.replace(f, tracking_uid=uids[i]) if i in uids else f for i, f in enumerate(findings)]
        return kept, len(uids)


@dataclass(frozen=True)
class Revision:
    """Our earlier reports of a study (those of job ``job_pk``), by the CT series they report on."""

    job_pk: int
    reports: Mapping[str, EarlierReport]

    def of(self, series_uid: str) -> EarlierReport | None:
        """The earlier report of a series, if there was one."""
        return self.reports.get(series_uid)


def _reported_series(sr: Dataset) -> str | None:
    """The CT series an SR of ours reports on: the one series of its evidence."""
    for sequence in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(sequence, []):
            for series in study.get("ReferencedSeriesSequence", []):
                return str(series.SeriesInstanceUID)
    return None


def _earlier_report(sr: Dataset) -> EarlierReport:
    reference = Dataset()
    for keyword in _REFERENCE:
        setattr(reference, keyword, sr[keyword].value)
    nodules = tuple((tuple(n["center_lps_mm"]), n["tracking_uid"]) for n in read_findings(sr)
                    if n["center_lps_mm"] is not None)
    return EarlierReport(reference, nodules)


def earlier_reports(engine: Engine, store: BlobStore, study_pk: int) -> Revision | None:
    """Our SRs of study ``study_pk`` as its newest finished job wrote them; ``None`` when there
    is none whose file is kept and readable."""
    with engine.connect() as connection:
        job_pk = connection.scalar(
            select(func.max(ReportObject.job_pk)).join(Job, Job.id == ReportObject.job_pk)
            .where(Job.study_pk == study_pk, Job.state == JobState.DONE, ReportObject.kind == ObjectKind.SR)
        )
        paths = [] if job_pk is None else connection.scalars(
            select(ReportObject.path).where(ReportObject.job_pk == job_pk, ReportObject.kind == ObjectKind.SR,
                                            ReportObject.purged_at.is_(None)).order_by(ReportObject.id)
        ).all()
    reports: dict[str, EarlierReport] = {}
    for relative in paths:
        try:
            sr = read_dataset(store, relative)
            series_uid = _reported_series(sr)
            if series_uid is not None:
                reports[series_uid] = _earlier_report(sr)
        except (OSError, InvalidDicomError, ValueError, KeyError, TypeError) as exc:
            log.warning("event=earlier_report_unreadable study=%d job=%d error=%s", study_pk, job_pk,
                        type(exc).__name__)
    return Revision(job_pk, reports) if job_pk is not None and reports else None
