"""Priors, database side: studies fetched as priors, and each job's prior lookup.

A retrieval is recorded *before* any of its instances can arrive (:func:`begin_retrieval`),
keyed by study UID; the completion sweep (:func:`pacs_node.db.queue.complete_quiet_studies`)
completes such a study without queueing a job, and retention keeps it while studies
compare against it (:mod:`pacs_node.db.retention`).

A lookup that found the prior unavailable may carry ``recheck_at``: only the study's newest
row does (:func:`record_lookup` clears the others), and :func:`due_rechecks` selects those
due, for :func:`pacs_node.db.queue.queue_rechecks`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, Row, Select, exists, func, insert, select, update
from sqlalchemy.orm import aliased

from pacs_node.db.models import (
    Instance, Job, JobState, PriorLookup, PriorRetrieval, PriorStatus, RetrievalState, Series, Study, StudyState,
    utcnow,
)


@dataclass(frozen=True)
class LookupRow:
    """What a job found about its prior, as kept in ``prior_lookups``."""

    status: PriorStatus
    source: str | None = None
    study_uid: str | None = None
    study_date: str = ""
    series_uid: str | None = None
    instances: int = 0
    our_sr_uid: str | None = None
    our_sr_series_uid: str | None = None
    reason: str | None = None


def kept_instances(engine: Engine, series_uid: str) -> int:
    """How many instances of a series the node holds with their files (not purged)."""
    with engine.connect() as connection:
        return connection.scalar(
            select(func.count()).select_from(Instance).join(Series, Series.id == Instance.series_pk)
            .where(Series.series_uid == series_uid, Instance.purged_at.is_(None))
        ) or 0


def begin_retrieval(engine: Engine, study_uid: str, source: str, method: str) -> None:
    """Record that ``study_uid`` is being fetched as a prior (again, if it was before)."""
    with engine.begin() as connection:
        moved = connection.execute(
            update(PriorRetrieval).where(PriorRetrieval.study_uid == study_uid)
            .values(source=source, method=method, state=RetrievalState.RETRIEVING, started_at=utcnow(),
                    finished_at=None, reason=None)
        ).rowcount
        if not moved:
            connection.execute(insert(PriorRetrieval).values(
                study_uid=study_uid, source=source, method=method, state=RetrievalState.RETRIEVING, instances=0,
                started_at=utcnow()))


def finish_retrieval(engine: Engine, study_uid: str, instances: int, reason: str | None = None) -> None:
    """Record how a retrieval ended: ``reason`` set means it failed."""
    with engine.begin() as connection:
        connection.execute(
            update(PriorRetrieval).where(PriorRetrieval.study_uid == study_uid)
            .values(state=RetrievalState.FAILED if reason else RetrievalState.DONE, instances=instances,
                    reason=reason, finished_at=utcnow())
        )


def is_retrieved(engine: Engine, study_uid: str) -> bool:
    """Whether a study was fetched as a prior."""
    with engine.connect() as connection:
        return connection.scalar(select(PriorRetrieval.id).where(PriorRetrieval.study_uid == study_uid)) is not None


def record_lookup(engine: Engine, study_pk: int, job_pk: int, row: LookupRow, recheck_at: dt.datetime | None = None,
                  recheck_until: dt.datetime | None = None) -> None:
    """Keep a job's prior lookup: the link from the current study to its prior; ``recheck_at``:
    when to look it up again (a recheck the study's older rows planned is dropped)."""
    with engine.begin() as connection:
        connection.execute(update(PriorLookup).where(PriorLookup.study_pk == study_pk,
                                                     PriorLookup.recheck_at.is_not(None)).values(recheck_at=None))
        connection.execute(insert(PriorLookup).values(
            study_pk=study_pk, job_pk=job_pk, status=row.status, source=row.source, prior_study_uid=row.study_uid,
            prior_study_date=row.study_date, prior_series_uid=row.series_uid, instances=row.instances,
            our_sr_uid=row.our_sr_uid, our_sr_series_uid=row.our_sr_series_uid, reason=row.reason,
            created_at=utcnow(), recheck_at=recheck_at, recheck_until=recheck_until))


def study_dates(engine: Engine, study_pk: int) -> Row:
    """``completed_at`` (its quiet period ended; ``None`` while receiving) and ``purged_at``
    (retention deleted its images) of a study."""
    with engine.connect() as connection:
        return connection.execute(select(Study.completed_at, Study.purged_at).where(Study.id == study_pk)).one()


#: A job of the study in one of these states looks the prior up itself: its recheck waits.
PENDING = (JobState.QUEUED, JobState.RUNNING)


def due_rechecks(now: dt.datetime, limit: int = 100) -> Select:
    """``(lookup id, study_pk, study purged_at)`` of the lookups whose recheck is due, oldest first:
    each the newest lookup of a complete study with no job pending (a study receiving again
    gets a new job anyway)."""
    newer = aliased(PriorLookup)
    return (
        select(PriorLookup.id, PriorLookup.study_pk, Study.purged_at)
        .join(Study, Study.id == PriorLookup.study_pk)
        .where(PriorLookup.recheck_at <= now, Study.state == StudyState.COMPLETE,
               ~exists().where(newer.study_pk == PriorLookup.study_pk, newer.id > PriorLookup.id),
               ~exists().where(Job.study_pk == PriorLookup.study_pk, Job.state.in_(PENDING)))
        .order_by(PriorLookup.recheck_at, PriorLookup.id)
        .limit(limit)
    )


def prior_counts(engine: Engine) -> dict[str, int]:
    """Studies by the outcome of their newest prior lookup (``found``, ``none``, ``unavailable``),
    ``rechecking``: those of the unavailable that will be looked up again, and ``retrieved``:
    studies fetched as priors."""
    with engine.connect() as connection:
        newest = (select(PriorLookup.study_pk, func.max(PriorLookup.id).label("id"))
                  .group_by(PriorLookup.study_pk).subquery())
        rows = connection.execute(
            select(PriorLookup.status, func.count()).join(newest, newest.c.id == PriorLookup.id)
            .group_by(PriorLookup.status)
        ).all()
        rechecking = connection.scalar(
            select(func.count()).select_from(PriorLookup).join(newest, newest.c.id == PriorLookup.id)
            .where(PriorLookup.recheck_at.is_not(None))
        ) or 0
        retrieved = connection.scalar(select(func.count()).select_from(PriorRetrieval)) or 0
    counts = {status.value: 0 for status in PriorStatus}
    counts.update({status.value: count for status, count in rows})
    return {**counts, "rechecking": rechecking, "retrieved": retrieved}
