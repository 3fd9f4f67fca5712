"""Deliveries: the report objects of a job, owed to each destination, and their retries.

Like jobs, every transition is a guarded UPDATE so several processes can dispatch from
one database.  The circuit breaker of each destination is a row too: while it is open,
that destination's deliveries wait and only probes run (C-ECHO, or QIDO-RS for DICOMweb).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, and_, insert, or_, select, update

from pacs_node.config import Destination, SendingConfig
from pacs_node.db.models import (
    Delivery,
    DeliveryState,
    DestinationHealth,
    FailureKind,
    Job,
    JobState,
    ObjectKind,
    ReportObject,
    Study,
    utcnow,
)

log = logging.getLogger(__name__)

#: A delivery claimed this long ago without an outcome (its sender died) is due again.
SENDING_LEASE_S = 600.0


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this process is sending now."""

    id: int
    job_pk: int
    destination: str
    kinds: tuple[ObjectKind, ...]
    attempts: int


#: (kind, SOP Class UID, SOP Instance UID, spool-relative path) of an object a job produced.
ObjectRow = tuple[ObjectKind, str, str, str]


def insert_objects(connection: Connection, job_pk: int, objects: Sequence[ObjectRow]) -> None:
    """Store a job's objects within the caller's transaction."""
    for kind, sop_class, sop_instance, path in objects:
        connection.execute(
            insert(ReportObject).values(
                job_pk=job_pk, kind=kind, sop_class_uid=str(sop_class), sop_instance_uid=str(sop_instance), path=path
            )
        )


def insert_deliveries(connection: Connection, job_pk: int, destinations: Sequence[Destination]) -> int:
    """Owe a job's objects to every destination, each with its output profile, in the caller's transaction."""
    now = utcnow()
    for destination in destinations:
        connection.execute(
            insert(Delivery).values(
                job_pk=job_pk,
                destination=destination.name,
                kinds=",".join(destination.objects),
                state=DeliveryState.PENDING,
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    return len(destinations)


def record_objects(engine: Engine, job_pk: int, objects: Sequence[ObjectRow]) -> None:
    """Store the objects a job produced."""
    with engine.begin() as connection:
        insert_objects(connection, job_pk, objects)


def objects_of(engine: Engine, job_pk: int, kinds: Sequence[ObjectKind]) -> list[ReportObject]:
    """The stored objects of a job of the given kinds, SR first."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(ReportObject).where(ReportObject.job_pk == job_pk, ReportObject.kind.in_(list(kinds)))
        ).all()
    return sorted(rows, key=lambda row: (row.kind != ObjectKind.SR, row.id))


def queue_deliveries(engine: Engine, job_pk: int, destinations: Sequence[Destination]) -> int:
    """Owe a job's objects to every destination, each with its output profile."""
    with engine.begin() as connection:
        return insert_deliveries(connection, job_pk, destinations)


def _open_destinations(connection: Connection) -> set[str]:
    """Destinations whose breaker is open or that an operator paused: their deliveries wait."""
    return set(connection.scalars(select(DestinationHealth.name).where(
        or_(DestinationHealth.open_since.is_not(None), DestinationHealth.paused_at.is_not(None)))))


def claim_delivery(engine: Engine, worker: str) -> ClaimedDelivery | None:
    """Claim the oldest due delivery to a destination whose breaker is closed."""
    now = utcnow()
    with engine.begin() as connection:
        paused = _open_destinations(connection)
        due = and_(
            or_(
                Delivery.state == DeliveryState.PENDING,
                and_(Delivery.state == DeliveryState.SENDING, Delivery.lease_expires_at < now),
            ),
            Delivery.next_attempt_at <= now,
        )
        if paused:
            due = and_(due, Delivery.destination.not_in(paused))
        oldest = (
            select(Delivery.id).where(due).order_by(Delivery.next_attempt_at, Delivery.id).limit(1)
            .with_for_update(skip_locked=True).scalar_subquery()
        )
        row = connection.execute(
            update(Delivery)
            .where(Delivery.id == oldest, due)
            .values(
                state=DeliveryState.SENDING,
                claimed_by=worker,
                lease_expires_at=now + dt.timedelta(seconds=SENDING_LEASE_S),
                attempts=Delivery.attempts + 1,
            )
            .returning(Delivery.id, Delivery.job_pk, Delivery.destination, Delivery.kinds, Delivery.attempts)
        ).first()
    if row is None:
        return None
    kinds = tuple(ObjectKind(kind) for kind in row.kinds.split(",") if kind)
    return ClaimedDelivery(row.id, row.job_pk, row.destination, kinds, row.attempts)


def requeue_abandoned(engine: Engine, worker: str) -> int:
    """Make deliveries that ``worker`` was sending when it stopped (it restarted) due now.

    Without this they would wait out :data:`SENDING_LEASE_S`.  Objects that reached the
    destination before the stop are sent again with the same UIDs.  Returns how many.
    """
    with engine.begin() as connection:
        return connection.execute(
            update(Delivery)
            .where(Delivery.state == DeliveryState.SENDING, Delivery.claimed_by == worker)
            .values(state=DeliveryState.PENDING, claimed_by=None, lease_expires_at=None, next_attempt_at=utcnow(),
                    last_error="interrupted: the node stopped while sending")
        ).rowcount


def retry_delay_s(attempt: int, sending: SendingConfig, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: first_retry_s * 2^(attempt-1), capped, varied."""
    base = min(sending.max_retry_s, sending.first_retry_s * 2 ** max(0, attempt - 1))
    spread = (rng or random).uniform(-sending.jitter, sending.jitter)
    return max(0.0, base * (1 + spread))


def record_outcome(
    engine: Engine,
    delivery: ClaimedDelivery,
    worker: str,
    failure: FailureKind | None,
    reason: str,
    sending: SendingConfig,
    probe: str = "C-ECHO",
) -> DeliveryState | None:
    """Move a claimed delivery to sent, back to pending with a later attempt, or failed.

    Also keeps the destination's breaker: a success closes it, a transient failure
    counts towards opening it (``probe``: what it is then probed with, for the log).
    Returns ``None`` and records nothing when the claim no longer holds the delivery
    (its lease ran out and another attempt took it over: that one reports).
    """
    now = utcnow()
    if failure is None:
        state, values = DeliveryState.SENT, {"sent_at": now, "failure": None, "last_error": None}
    elif failure == FailureKind.PERMANENT:
        state, values = DeliveryState.FAILED, {"failure": failure, "last_error": f"permanent: {reason}"}
    elif delivery.attempts >= sending.max_attempts:
        state, values = DeliveryState.FAILED, {
            "failure": failure,
            "last_error": f"gave up after {delivery.attempts} attempts: {reason}",
        }
    else:
        delay = dt.timedelta(seconds=retry_delay_s(delivery.attempts, sending))
        state, values = DeliveryState.PENDING, {"failure": failure, "last_error": reason, "next_attempt_at": now + delay}
    with engine.begin() as connection:
        held = connection.execute(
            update(Delivery)
            .where(Delivery.id == delivery.id, Delivery.state == DeliveryState.SENDING,
                   Delivery.claimed_by == worker, Delivery.attempts == delivery.attempts)
            .values(state=state, claimed_by=None, lease_expires_at=None, **values)
        ).rowcount == 1
        if not held:
            return None
        _update_health(connection, delivery.destination, failure, reason, sending, now, probe)
    return state


def _update_health(connection: Connection, name: str, failure: FailureKind | None, reason: str,  # noqa: ANN001
                   sending: SendingConfig, now: dt.datetime, probe: str = "C-ECHO") -> None:
    health = connection.execute(select(DestinationHealth).where(DestinationHealth.name == name)).first()
    if health is None:
        connection.execute(insert(DestinationHealth).values(name=name, consecutive_failures=0))
        failures = 0
    else:
        failures = health.consecutive_failures
    if failure != FailureKind.TRANSIENT:
        if health is not None and health.open_since is not None:
            log.info("event=destination_resumed destination=%s reason=delivery answered", name)
        connection.execute(
            update(DestinationHealth)
            .where(DestinationHealth.name == name)
            .values(consecutive_failures=0, open_since=None, next_probe_at=None,
                    last_error=None if failure is None else reason)
        )
        return
    failures += 1
    opening = failures >= sending.breaker_failures
    if opening and (health is None or health.open_since is None):
        log.warning("event=destination_paused destination=%s failures=%d reason=%r probe=%s probe_interval_s=%g",
                    name, failures, reason, probe, sending.probe_interval_s)
    connection.execute(
        update(DestinationHealth)
        .where(DestinationHealth.name == name)
        .values(
            consecutive_failures=failures,
            last_error=reason,
            **({"open_since": now, "next_probe_at": now + dt.timedelta(seconds=sending.probe_interval_s)}
               if opening and (health is None or health.open_since is None) else {}),
        )
    )


def destinations_to_probe(engine: Engine) -> list[str]:
    """Destinations whose breaker is open and whose next probe is due."""
    with engine.connect() as connection:
        return list(
            connection.scalars(
                select(DestinationHealth.name).where(
                    DestinationHealth.open_since.is_not(None), DestinationHealth.next_probe_at <= utcnow()
                )
            )
        )


def record_probe(engine: Engine, name: str, answered: bool, sending: SendingConfig, probe: str = "C-ECHO") -> None:
    """Close the breaker when the ``probe`` answered (waiting deliveries go at once), else probe later."""
    now = utcnow()
    with engine.begin() as connection:
        if answered:
            log.info("event=destination_resumed destination=%s reason=%s probe answered", name, probe)
            connection.execute(
                update(DestinationHealth)
                .where(DestinationHealth.name == name)
                .values(open_since=None, next_probe_at=None, consecutive_failures=0)
            )
            connection.execute(
                update(Delivery)
                .where(Delivery.destination == name, Delivery.state == DeliveryState.PENDING)
                .values(next_attempt_at=now)
            )
        else:
            connection.execute(
                update(DestinationHealth)
                .where(DestinationHealth.name == name)
                .values(next_probe_at=now + dt.timedelta(seconds=sending.probe_interval_s))
            )


def resend_study(engine: Engine, study_uid: str, destinations: Sequence[Destination]) -> int:
    """Owe the newest finished job's objects of a study to every destination again.

    The same objects (same SOP Instance UIDs) are sent; nothing is regenerated.
    Returns the number of deliveries queued (0 when the study has no report yet).
    """
    with engine.connect() as connection:
        job_pk = newest_report_job(connection, study_uid)
    if job_pk is None:
        return 0
    return queue_deliveries(engine, job_pk, destinations)


def newest_report_job(connection: Connection, study_uid: str) -> int | None:
    """The newest finished job of a study that wrote report objects (``None``: no report yet)."""
    return connection.scalar(
        select(Job.id)
        .join(Study, Study.id == Job.study_pk)
        .join(ReportObject, ReportObject.job_pk == Job.id)
        .where(Study.study_uid == study_uid, Job.state == JobState.DONE)
        .order_by(Job.id.desc())
        .limit(1)
    )
