"""Priors, database side: studies fetched as priors, and each job's prior lookup.

A retrieval is recorded *before* any of its instances can arrive (:func:`begin_retrieval`),
keyed by study UID; the completion sweep (:func:`pacs_node.db.queue.complete_quiet_studies`)
completes such a study without queueing a job, and retention keeps it while studies
compare against it (:mod:`pacs_node.db.retention`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, insert, select, update

from pacs_node.db.models import Instance, PriorLookup, PriorRetrieval, PriorStatus, RetrievalState, Series, utcnow


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


def record_lookup(engine: Engine, study_pk: int, job_pk: int, row: LookupRow) -> None:
    """Keep a job's prior lookup: the link from the current study to its prior."""
    with engine.begin() as connection:
        connection.execute(insert(PriorLookup).values(
            study_pk=study_pk, job_pk=job_pk, status=row.status, source=row.source, prior_study_uid=row.study_uid,
            prior_study_date=row.study_date, prior_series_uid=row.series_uid, instances=row.instances,
            our_sr_uid=row.our_sr_uid, our_sr_series_uid=row.our_sr_series_uid, reason=row.reason,
            created_at=utcnow()))


def prior_counts(engine: Engine) -> dict[str, int]:
    """Studies by the outcome of their newest prior lookup (``found``, ``none``, ``unavailable``),
    and ``retrieved``: studies fetched as priors."""
    with engine.connect() as connection:
        newest = (select(PriorLookup.study_pk, func.max(PriorLookup.id).label("id"))
                  .group_by(PriorLookup.study_pk).subquery())
        rows = connection.execute(
            select(PriorLookup.status, func.count()).join(newest, newest.c.id == PriorLookup.id)
            .group_by(PriorLookup.status)
        ).all()
        retrieved = connection.scalar(select(func.count()).select_from(PriorRetrieval)) or 0
    counts = {status.value: 0 for status in PriorStatus}
    counts.update({status.value: count for status, count in rows})
    return {**counts, "retrieved": retrieved}
