"""Retention, database side: which studies' received files may be deleted, and marking them.

A study's files may go once

(a) its latest job is finished (done, or failed / not analysable),
(b) no delivery of any of its jobs is pending (queued or retrying) or sending, and
(c) ``keep_s`` have passed since the last of these settled: the job's finish, each
    delivery's ``sent_at``, or for a failed delivery the time its last attempt was due
    (within one poll interval and one send timeout of the failure).

A study fetched as a prior has no job of its own: its files may go once it is complete
and ``keep_s`` have passed since it was completed and since the last job that looked it
up as a prior (``prior_lookups``), so a prior is kept while studies compare against it.

Rows are never deleted (audit): ``purged_at`` on the study, its instances and, when
reports are not kept, its report objects says which files are gone.  Marking is one
guarded transaction, so of several node processes one purges a study, and a study that
an instance re-opened meanwhile (``state`` back to receiving) is left alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import ColumnElement, Engine, and_, exists, func, or_, select, update
from sqlalchemy.orm import aliased

from pacs_node.db.deliveries import newest_report_job
from pacs_node.db.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    PriorLookup,
    PriorRetrieval,
    ReportObject,
    Series,
    Study,
    StudyState,
    utcnow,
)

FINISHED_JOB = (JobState.DONE, JobState.FAILED)
OPEN_DELIVERY = (DeliveryState.PENDING, DeliveryState.SENDING)
_CHUNK = 500

T = TypeVar("T")


def _eligible(cutoff: dt.datetime) -> ColumnElement[bool]:
    """Studies whose files may be deleted, everything settled before ``cutoff``."""
    newer = aliased(Job)
    latest_finished = exists().where(
        Job.study_pk == Study.id,
        Job.state.in_(FINISHED_JOB),
        Job.finished_at < cutoff,
        ~exists().where(newer.study_pk == Job.study_pk, newer.id > Job.id),
    )
    deliveries = exists().where(Delivery.job_pk == Job.id, Job.study_pk == Study.id)
    unsettled = deliveries.where(
        or_(
            Delivery.state.in_(OPEN_DELIVERY),
            Delivery.sent_at >= cutoff,
            and_(Delivery.sent_at.is_(None), Delivery.next_attempt_at >= cutoff),
        )
    )
    retrieved = exists().where(PriorRetrieval.study_uid == Study.study_uid)
    still_compared = exists().where(PriorLookup.prior_study_uid == Study.study_uid, PriorLookup.created_at >= cutoff)
    prior_settled = and_(retrieved, Study.completed_at < cutoff, ~still_compared)
    return and_(Study.state == StudyState.COMPLETE, Study.purged_at.is_(None),
                or_(and_(~retrieved, latest_finished, ~unsettled), prior_settled))


def purgeable_studies(
    engine: Engine, keep_s: float, now: dt.datetime | None = None, after: int = 0, limit: int = 100
) -> list[int]:
    """Ids (above ``after``, ascending) of studies whose files may be deleted now."""
    cutoff = (now or utcnow()) - dt.timedelta(seconds=keep_s)
    with engine.connect() as connection:
        return list(
            connection.scalars(
                select(Study.id).where(Study.id > after, _eligible(cutoff)).order_by(Study.id).limit(limit)
            )
        )


@dataclass(frozen=True)
class PurgeMark:
    """A study marked purged: its files may now be deleted."""

    study_pk: int
    study_uid: str
    instances: int


def mark_purged(
    engine: Engine, study_pk: int, keep_s: float, include_reports: bool, now: dt.datetime | None = None
) -> PurgeMark | None:
    """Mark a study and its instances (and report objects) purged, if it is still eligible.

    Called *before* the files are deleted: a crash in between leaves files that no row
    claims (deleted by the next start), never a row that claims a deleted file.
    Returns ``None`` when the study is no longer eligible (re-opened, re-delivered, or
    marked by another process).
    """
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=keep_s)
    with engine.begin() as connection:
        moved = connection.execute(
            update(Study).where(Study.id == study_pk, _eligible(cutoff)).values(purged_at=now)
        ).rowcount
        if moved != 1:
            return None
        instances = connection.execute(
            update(Instance)
            .where(Instance.series_pk.in_(select(Series.id).where(Series.study_pk == study_pk)),
                   Instance.purged_at.is_(None))
            .values(purged_at=now)
        ).rowcount
        if include_reports:
            connection.execute(
                update(ReportObject)
                .where(ReportObject.job_pk.in_(select(Job.id).where(Job.study_pk == study_pk)),
                       ReportObject.purged_at.is_(None))
                .values(purged_at=now)
            )
        study_uid = connection.scalar(select(Study.study_uid).where(Study.id == study_pk))
    return PurgeMark(study_pk, study_uid, instances)


def chunked(items: Iterable[T], size: int = _CHUNK) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``, as they come (a generator is not read ahead)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _sop_of(path: str) -> str:
    """The SOP Instance UID in a spool path (``.../<sop>.dcm``) or an object key
    (``studies/<study>/<series>/<sop>/<random>.dcm``)."""
    parts = path.split("/")
    if parts[0] == "studies" and len(parts) == 5:
        return parts[3]
    return parts[-1].removesuffix(".dcm")


def purged_keys(engine: Engine, study_pk: int) -> list[str]:
    """The keys of a study's purged instances and report objects (what retention deletes)."""
    with engine.connect() as connection:
        instances = connection.scalars(
            select(Instance.path).join(Series, Instance.series_pk == Series.id)
            .where(Series.study_pk == study_pk, Instance.purged_at.is_not(None))).all()
        reports = connection.scalars(
            select(ReportObject.path).join(Job, ReportObject.job_pk == Job.id)
            .where(Job.study_pk == study_pk, ReportObject.purged_at.is_not(None))).all()
    return [*instances, *reports]


def live_paths(engine: Engine, paths: Sequence[str]) -> set[str]:
    """Of spool-relative ``paths``, those an instance or report row still claims (not purged).

    A file of a study being purged is kept when its row is live: an instance stored
    again by a scanner while retention was deleting the study's folder.
    """
    # Looked up by SOP Instance UID (unique and indexed), then matched by path.
    uids = sorted({_sop_of(path) for path in paths})
    claimed: set[str] = set()
    with engine.connect() as connection:
        for chunk in chunked(uids):
            claimed.update(connection.scalars(
                select(Instance.path).where(Instance.sop_instance_uid.in_(chunk), Instance.purged_at.is_(None))))
            claimed.update(connection.scalars(
                select(ReportObject.path).where(ReportObject.sop_instance_uid.in_(chunk),
                                                ReportObject.purged_at.is_(None))))
    return claimed.intersection(paths)


def purged_among(engine: Engine, study_uids: Sequence[str]) -> set[str]:
    """Of ``study_uids``, those whose files were purged (to finish an interrupted purge)."""
    purged: set[str] = set()
    with engine.connect() as connection:
        for chunk in chunked(study_uids):
            purged.update(connection.scalars(
                select(Study.study_uid).where(Study.study_uid.in_(chunk), Study.purged_at.is_not(None))))
    return purged


def reports_purged(engine: Engine, study_uid: str) -> bool:
    """Whether the newest finished report of a study lost its files to retention (nothing to resend)."""
    with engine.connect() as connection:
        job_pk = newest_report_job(connection, study_uid)
        if job_pk is None:
            return False
        kept = connection.scalar(
            select(func.count()).select_from(ReportObject)
            .where(ReportObject.job_pk == job_pk, ReportObject.purged_at.is_(None))
        )
    return kept == 0


@dataclass(frozen=True)
class SpoolUsage:
    """What the database says the spool holds, and what retention removed."""

    instances: int
    instance_bytes: int
    purged_studies: int
    purged_instances: int
    purged_bytes: int


def spool_usage(engine: Engine) -> SpoolUsage:
    """Counts and bytes of kept and purged instance files, and how many studies were purged."""
    with engine.connect() as connection:
        by_state = {
            purged: (count, size or 0)
            for purged, count, size in connection.execute(
                select(Instance.purged_at.is_not(None), func.count(), func.sum(Instance.size_bytes))
                .group_by(Instance.purged_at.is_not(None))
            ).all()
        }
        studies = connection.scalar(select(func.count()).select_from(Study).where(Study.purged_at.is_not(None)))
    kept, purged = by_state.get(False, (0, 0)), by_state.get(True, (0, 0))
    return SpoolUsage(kept[0], int(kept[1]), studies or 0, purged[0], int(purged[1]))
