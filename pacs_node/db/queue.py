"""Study completion, prior rechecks and the job queue.

Every transition is a guarded UPDATE, so several node processes sharing one
PostgreSQL database can sweep and claim at once: a study completes once, a due
recheck queues one re-report job, and a job is claimed by one worker
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite serialises writers).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Engine, and_, exists, func, insert, or_, select, update

from pacs_node.config import Destination
from pacs_node.db.deliveries import ObjectRow, insert_deliveries, insert_objects
from pacs_node.db.ingest import TOUCH_INTERVAL_S
from pacs_node.db.models import Job, JobKind, JobState, PriorLookup, PriorRetrieval, Study, StudyState, utcnow
from pacs_node.db.priors import PENDING, due_rechecks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedJob:
    """A job this worker holds."""

    id: int
    study_pk: int
    attempts: int
    kind: JobKind = JobKind.ANALYSIS


def complete_quiet_studies(engine: Engine, quiet_period_s: float, now: dt.datetime | None = None) -> list[int]:
    """Mark studies with no instance for the quiet period complete and queue a job each.

    Queued jobs of the same study that did not start are superseded by the new one.
    A study fetched as a prior (a ``prior_retrievals`` row with its UID) is completed
    without a job: it is compared against, never analysed as a new study.
    Returns the ids of the studies completed by this call (priors included).
    """
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=quiet_period_s + TOUCH_INTERVAL_S)
    completed = []
    with engine.connect() as connection:
        candidates = connection.scalars(
            select(Study.id).where(Study.state == StudyState.RECEIVING, Study.last_received_at < cutoff)
        ).all()
    for study_pk in candidates:
        with engine.begin() as connection:
            moved = connection.execute(
                update(Study)
                .where(Study.id == study_pk, Study.state == StudyState.RECEIVING, Study.last_received_at < cutoff)
                .values(state=StudyState.COMPLETE, completed_at=now)
            ).rowcount
            if moved != 1:
                continue  # another process completed it, or an instance just arrived
            connection.execute(
                update(Job)
                .where(Job.study_pk == study_pk, Job.state == JobState.QUEUED)
                .values(state=JobState.SUPERSEDED, finished_at=now)
            )
            fetched_as_prior = connection.scalar(
                select(exists().where(PriorRetrieval.study_uid == Study.study_uid, Study.id == study_pk))
            )
            if not fetched_as_prior:
                connection.execute(
                    insert(Job).values(study_pk=study_pk, state=JobState.QUEUED, created_at=now, attempts=0))
        completed.append(study_pk)
    return completed


def queue_rechecks(engine: Engine, now: dt.datetime | None = None) -> list[int]:
    """Queue a re-report job for each study whose prior lookup is due for a recheck.

    Taking the recheck (clearing ``recheck_at``) and queueing its job are one transaction,
    guarded by the due time, so of processes racing for it one queues it.  A study with a
    job queued or running is left for later (that job records a newer lookup); one whose
    images retention purged is not rechecked (nothing to re-report).  Returns the ids of
    the studies queued.
    """
    now = now or utcnow()
    with engine.connect() as connection:
        due = connection.execute(due_rechecks(now)).all()
    queued = []
    for lookup_pk, study_pk, purged_at in due:
        with engine.begin() as connection:
            if connection.scalar(select(exists().where(Job.study_pk == study_pk, Job.state.in_(PENDING)))):
                continue  # queued since the select
            taken = connection.execute(
                update(PriorLookup).where(PriorLookup.id == lookup_pk, PriorLookup.recheck_at <= now)
                .values(recheck_at=None)
            ).rowcount
            if taken != 1:
                continue  # another process queued it
            if purged_at is not None:
                log.info("event=prior_recheck_dropped study=%d reason=images purged", study_pk)
                continue
            connection.execute(insert(Job).values(study_pk=study_pk, kind=JobKind.REREPORT, state=JobState.QUEUED,
                                                  created_at=now, attempts=0))
        queued.append(study_pk)
    return queued


def claim_job(engine: Engine, worker: str, lease_s: float, max_attempts: int) -> ClaimedJob | None:
    """Claim the oldest queued job for ``worker``, or ``None`` when there is none.

    A job that was already tried ``max_attempts`` times (it crashed its worker each
    time) is failed instead of being run again.
    """
    while True:
        now = utcnow()
        with engine.begin() as connection:
            oldest = (
                select(Job.id)
                .where(Job.state == JobState.QUEUED)
                .order_by(Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            row = connection.execute(
                update(Job)
                .where(Job.id == oldest, Job.state == JobState.QUEUED)
                .values(
                    state=JobState.RUNNING,
                    claimed_by=worker,
                    started_at=now,
                    lease_expires_at=now + dt.timedelta(seconds=lease_s),
                    attempts=Job.attempts + 1,
                )
                .returning(Job.id, Job.study_pk, Job.attempts, Job.kind)
            ).first()
            if row is None:
                return None
            job = ClaimedJob(id=row.id, study_pk=row.study_pk, attempts=row.attempts, kind=row.kind)
            if job.attempts <= max_attempts:
                return job
            connection.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(
                    state=JobState.FAILED,
                    finished_at=now,
                    error=f"gave up after {max_attempts} attempts that did not finish",
                )
            )


def _held(job: ClaimedJob, worker: str) -> ColumnElement[bool]:
    """The fence: the job still runs under this claim (same holder, same attempt).

    The attempt number tells a worker that was paused past its lease apart from the one
    that took the job over, even when both carry the same name (worker threads of one node,
    or a node restarted under its old name).
    """
    return and_(Job.id == job.id, Job.state == JobState.RUNNING, Job.claimed_by == worker,
                Job.attempts == job.attempts)


def renew_lease(engine: Engine, job: ClaimedJob, worker: str, lease_s: float) -> bool:
    """Extend a running job's lease; ``False`` if this claim no longer holds it."""
    with engine.begin() as connection:
        return (
            connection.execute(
                update(Job)
                .where(_held(job, worker))
                .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_s))
            ).rowcount
            == 1
        )


def finish_job(
    engine: Engine,
    job: ClaimedJob,
    worker: str,
    state: JobState,
    result: dict | None = None,
    error: str | None = None,
    objects: Sequence[ObjectRow] = (),
    destinations: Sequence[Destination] = (),
) -> bool:
    """Record a job's outcome, its objects and their deliveries in one transaction.

    Returns ``False`` (and records nothing) if this claim no longer held the job: its lease
    ran out and the job was requeued or taken over by another attempt.
    """
    with engine.begin() as connection:
        held = (
            connection.execute(
                update(Job)
                .where(_held(job, worker))
                .values(
                    state=state,
                    finished_at=utcnow(),
                    lease_expires_at=None,
                    result=None if result is None else json.dumps(result, sort_keys=True),
                    error=error,
                )
            ).rowcount
            == 1
        )
        if held and objects:
            insert_objects(connection, job.id, objects)
            insert_deliveries(connection, job.id, destinations)
        return held


def release_job(engine: Engine, job: ClaimedJob, worker: str) -> bool:
    """Put a job that this claim holds back in the queue (it was interrupted, not failed);
    ``False`` if the claim no longer held it."""
    with engine.begin() as connection:
        return (
            connection.execute(
                update(Job)
                .where(_held(job, worker))
                .values(state=JobState.QUEUED, claimed_by=None, lease_expires_at=None)
            ).rowcount
            == 1
        )


def requeue_abandoned(engine: Engine, worker: str | None = None) -> int:
    """Put running jobs back in the queue: those of ``worker`` (it restarted) and
    those of any worker whose lease ran out (it died).  Returns how many."""
    now = utcnow()
    abandoned = Job.lease_expires_at < now
    if worker is not None:
        abandoned = or_(abandoned, Job.claimed_by == worker)
    with engine.begin() as connection:
        return connection.execute(
            update(Job)
            .where(and_(Job.state == JobState.RUNNING, abandoned))
            .values(state=JobState.QUEUED, claimed_by=None, lease_expires_at=None)
        ).rowcount


def queue_depth(engine: Engine) -> int:
    """How many jobs wait to be claimed."""
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.QUEUED)) or 0
