"""Comparison with the prior CT inside the analysis job: detect on the prior, register, match, compare.

When the prior lookup (``[priors]``, :mod:`pacs_node.priors`) found the patient's prior CT and
its series is in the spool, the job takes the prior's nodules from our own earlier SR of that
study when the lookup fetched one (the cheapest and most consistent prior: matched nodules keep
its Tracking UIDs), else runs the same detector on the prior; it registers the prior to
the current CT on the lungs (:mod:`pacs_node.compare.register`), matches the nodules with a
size-scaled gate (:mod:`pacs_node.compare.match`), and gives every current finding its
:class:`~pacs_node.imaging.lungrads_followup.NoduleComparison` (new, or the change since the
prior with its VDT and follow-up category).  Prior nodules with no match are reported as
resolved.  For each matched nodule it keeps the one prior slice its key image shows
(:class:`~pacs_node.report.keyimage_compare.PriorView`), and lets the rest of the prior
series go.  Anything that fails leaves the baseline report, and the report says why.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset, dcmread
from sqlalchemy import Engine, select

from pacs_node.db.models import Instance, PriorStatus, Series
from pacs_node.db.priors import LookupRow
from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.imaging.growth import Acquisition
from pacs_node.imaging.lungrads_followup import compare_nodule
from pacs_node.imaging.volume import NotAnalysable, volume_from_datasets
from pacs_node.report.keyimage_compare import PriorView
from pacs_node.report.prior import PriorStatement
from pacs_node.report.read import read_findings
from pacs_node.storage import BlobStore, read_dataset

log = logging.getLogger(__name__)

#: Asked once a series is analysed: what the lookup found of the prior CT (it may wait for the
#: lookup, never past ``[priors] max_wait_s``).
PriorProvider = Callable[[], LookupRow]


@dataclass(frozen=True)
class FollowUp:
    """The current findings compared with the prior CT, and what the report says of it.

    ``views`` is empty when nothing was compared, else one per finding: the prior slice of a
    matched nodule for its key image, ``None`` for a new one (or one whose prior slice was
    not found).
    """

    findings: list[Finding]
    statement: PriorStatement
    summary: dict
    views: tuple[PriorView | None, ...] = ()


def prior_statement(row: LookupRow, compared: bool = False, reason: str | None = None,
                    resolved: Sequence[str] = ()) -> PriorStatement:
    """What the report says of a lookup's outcome."""
    found = row.status is PriorStatus.FOUND
    return PriorStatement(row.status, study_uid=row.study_uid if found else None, study_date=row.study_date or "",
                          reason=reason if found else row.reason, compared=compared, resolved=tuple(resolved))


def _interval_days(prior_date: str, current: Dataset) -> float | None:
    try:
        then = dt.datetime.strptime(prior_date, "%Y%m%d").date()
        now = dt.datetime.strptime(str(current.get("StudyDate", "")), "%Y%m%d").date()
    except ValueError:
        return None
    return float((now - then).days)


def _acquisition(ds: Dataset) -> Acquisition:
    """Slice thickness and reconstruction kernel (its first value) of a CT slice."""
    thickness = ds.get("SliceThickness")
    kernel = ds.get("ConvolutionKernel")
    if kernel is not None and not isinstance(kernel, str):
        kernel = kernel[0] if len(kernel) else None
    return Acquisition(float(thickness) if thickness not in (None, "") else None, str(kernel) if kernel else None)


def _prior_datasets(engine: Engine, store: BlobStore, series_uid: str) -> list[Dataset]:
    with engine.connect() as connection:
        paths = connection.scalars(
            select(Instance.path).join(Series, Series.id == Instance.series_pk)
            .where(Series.series_uid == series_uid, Instance.purged_at.is_(None))
        ).all()
    with store.fetched(paths) as local:
        return [dcmread(local[path]) for path in paths if path in local]


def _our_findings(engine: Engine, store: BlobStore, sr_uid: str) -> list[Finding] | None:
    """The findings of our own earlier SR of the prior study (with their tracking UIDs), if its
    file is in the spool and readable; ``None`` otherwise."""
    with engine.connect() as connection:
        path = connection.scalar(select(Instance.path).where(Instance.sop_instance_uid == sr_uid,
                                                             Instance.purged_at.is_(None)))
    if path is None:
        return None
    try:
        nodules = read_findings(read_dataset(store, path))
        return [Finding(tuple(n["center_lps_mm"]), n["long_axis_mm"], n["short_axis_mm"], n["volume_mm3"] or 0.0,
                        NoduleType(n["nodule_type"]), n["score"] if n["score"] is not None else 1.0,
                        mean_hu=n["mean_hu"] or 0.0, solid_core_mm=n["solid_core_mm"], spiculated=n["spiculated"],
                        tracking_uid=n["tracking_uid"])
                for n in nodules]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # not a report we can read: detect instead
        log.warning("event=prior_sr_unreadable reason=%s", type(exc).__name__)
        return None


def _resolved_line(finding: Finding) -> str:
    return (f"A {finding.diameter_mm:.1f} mm {finding.nodule_type.value} nodule on the prior CT is not seen "
            f"on this CT (resolved, or missed by the AI).")


def _view(prior: Sequence[Dataset], finding: Finding | None, study_date: str) -> PriorView | None:
    """The prior slice of a matched nodule, or ``None`` (new, or its centre outside the prior series)."""
    if finding is None:
        return None
    try:
        return PriorView.locate(prior, finding, study_date)
    except ValueError:
        log.warning("event=prior_view_skipped reason=centre_outside_prior_series")
        return None


def compare_with_prior(engine: Engine, store: BlobStore, detector: object, row: LookupRow,
                       current: Sequence[Dataset], current_volume: hd.Volume, findings: list[Finding]) -> FollowUp:
    """``findings`` of the current CT compared with the prior the lookup ``row`` found.

    Never raises for a prior that cannot be compared: the report then states why and keeps
    the baseline categories.
    """
    from pacs_node.compare.match import match_nodules
    from pacs_node.compare.register import register

    if row.status is not PriorStatus.FOUND or not row.series_uid:
        return FollowUp(findings, prior_statement(row), {})
    started = time.perf_counter()
    interval = _interval_days(row.study_date, current[0])
    if interval is None or interval < 0:
        why = "the study dates do not give the interval"
        return FollowUp(findings, prior_statement(row, reason=why), {"error": why})
    ours = _our_findings(engine, store, row.our_sr_uid) if row.our_sr_uid else None
    try:
        prior = _prior_datasets(engine, store, row.series_uid)
        prior_volume = volume_from_datasets(prior)
        prior_findings = ours if ours is not None else detector.detect(prior_volume)  # type: ignore[attr-defined]
        registration = register(prior_volume, current_volume)
    except (NotAnalysable, OSError, ValueError) as exc:
        log.warning("event=comparison_failed reason=%s", type(exc).__name__)
        why = f"the prior could not be analysed: {exc}"
        return FollowUp(findings, prior_statement(row, reason=why), {"error": why})
    matching = match_nodules(prior_findings, findings, to_current=registration.map_points)
    prior_scan, current_scan = _acquisition(prior[0]), _acquisition(current[0])
    compared, views = [], []
    for finding, index in zip(findings, matching.current_to_prior, strict=True):
        before = None if index is None else prior_findings[index]
        comparison = compare_nodule(finding, before, interval, prior_scan, current_scan)
        # a nodule our earlier report named keeps its Tracking UID: viewers follow it across studies
        uid = before.tracking_uid if before is not None and ours is not None else finding.tracking_uid
        compared.append(dataclasses.replace(finding, comparison=comparison, tracking_uid=uid))
        views.append(_view(prior, before, row.study_date))
    resolved = [_resolved_line(prior_findings[i]) for i in matching.resolved]
    summary = {"interval_days": interval, "prior_findings": len(prior_findings),
               "prior_findings_from": "our earlier report" if ours is not None else "detection",
               "matched": len(matching.matches),
               "new": len(matching.new), "resolved": len(matching.resolved),
               "registration": registration.to_dict(), "seconds": round(time.perf_counter() - started, 3)}
    log.info("event=comparison_done matched=%d new=%d resolved=%d seconds=%.2f", summary["matched"],
             summary["new"], summary["resolved"], summary["seconds"])
    return FollowUp(compared, prior_statement(row, compared=True, resolved=resolved), summary, tuple(views))
