"""What an operator can do to the queues by hand: pause and resume a destination, retry a
failed delivery now, analyse a study again.  Each is one guarded transaction.

A manual pause is its own column beside the circuit breaker: probes and successful sends
close the breaker but never lift a pause; only :func:`resume_destination` does.
"""

from __future__ import annotations

from sqlalchemy import Engine, insert, select, update

from pacs_node.db.models import Delivery, DeliveryState, DestinationHealth, Job, JobState, Study, StudyState, utcnow


def pause_destination(engine: Engine, name: str, by: str) -> bool:
    """Hold every delivery to ``name`` until resumed; ``False`` if it was paused already."""
    with engine.begin() as connection:
        health = connection.execute(select(DestinationHealth).where(DestinationHealth.name == name)).first()
        if health is None:
            connection.execute(insert(DestinationHealth).values(name=name, consecutive_failures=0))
        elif health.paused_at is not None:
            return False
        connection.execute(update(DestinationHealth).where(DestinationHealth.name == name)
                           .values(paused_at=utcnow(), paused_by=by[:64]))
    return True


def resume_destination(engine: Engine, name: str) -> bool:
    """Lift a manual pause (waiting deliveries go at once); ``False`` if it was not paused."""
    now = utcnow()
    with engine.begin() as connection:
        changed = connection.execute(
            update(DestinationHealth)
            .where(DestinationHealth.name == name, DestinationHealth.paused_at.is_not(None))
            .values(paused_at=None, paused_by=None)
        ).rowcount
        if changed:
            connection.execute(
                update(Delivery)
                .where(Delivery.destination == name, Delivery.state == DeliveryState.PENDING)
                .values(next_attempt_at=now)
            )
    return bool(changed)


def retry_delivery(engine: Engine, delivery_id: int) -> bool:
    """Make a failed or retrying delivery due now with a fresh set of attempts; ``False`` if it is
    sent, being sent, or unknown."""
    with engine.begin() as connection:
        return connection.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.state.in_([DeliveryState.FAILED, DeliveryState.PENDING]))
            .values(state=DeliveryState.PENDING, attempts=0, failure=None, next_attempt_at=utcnow(),
                    claimed_by=None, lease_expires_at=None)
        ).rowcount == 1


def requeue_analysis(engine: Engine, study_pk: int) -> str | None:
    """Queue a new analysis job for a complete study whose files are kept.

    Returns ``None`` when queued, else why not (the study is unknown, still receiving,
    purged, or a job of it is queued or running already).
    """
    now = utcnow()
    with engine.begin() as connection:
        study = connection.execute(select(Study.state, Study.purged_at).where(Study.id == study_pk)).first()
        if study is None:
            return "no such study"
        if study.state != StudyState.COMPLETE:
            return "the study is still receiving; it is analysed when it completes"
        if study.purged_at is not None:
            return "retention deleted the study's images; send the study again to analyse it"
        busy = connection.scalar(
            select(Job.id).where(Job.study_pk == study_pk, Job.state.in_([JobState.QUEUED, JobState.RUNNING])).limit(1)
        )
        if busy is not None:
            return f"job {busy} of this study is queued or running already"
        connection.execute(insert(Job).values(study_pk=study_pk, state=JobState.QUEUED, created_at=now, attempts=0))
    return None
