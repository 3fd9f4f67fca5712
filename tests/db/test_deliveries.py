"""Deliveries: retries with backoff, permanent failures, the circuit breaker, resend."""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import select

from pacs_node.config import Destination, SendingConfig
from pacs_node.db import deliveries, queue
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.db.models import Delivery, DeliveryState, FailureKind, JobState, ObjectKind, utcnow

SENDING = SendingConfig(max_attempts=3, first_retry_s=10, max_retry_s=25, jitter=0, breaker_failures=2,
                        probe_interval_s=60)
PACS = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)
VIEWER = Destination(name="viewer", ae_title="VIEW", host="127.0.0.1", port=105, objects=["key_image"])


def _done_job_with_objects(url: str):  # noqa: ANN202
    engine = make_engine(url)
    upgrade(engine)
    InstanceRecorder(engine).record(ReceivedInstance(
        sop_instance_uid="1.2.3.1.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid="1.2.3",
        series_uid="1.2.3.1", transfer_syntax_uid="1.2.840.10008.1.2.1", relative_path="x", size_bytes=1,
        calling_ae="CT", modality="CT"))
    import datetime as dt
    queue.complete_quiet_studies(engine, 1, now=utcnow() + dt.timedelta(seconds=10))
    job = queue.claim_job(engine, "w", 600, 3)
    queue.finish_job(engine, job, "w", JobState.DONE, result={})
    deliveries.record_objects(engine, job.id, [
        (ObjectKind.SR, "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.9.1", "reports/sr.dcm"),
        (ObjectKind.KEY_IMAGE, "1.2.840.10008.5.1.4.1.1.7", "1.2.3.9.2", "reports/sc1.dcm"),
    ])
    return engine, job.id


def _make_due(engine) -> None:  # noqa: ANN001
    with engine.begin() as connection:
        connection.execute(Delivery.__table__.update().values(next_attempt_at=utcnow()))


def test_output_profile_selects_objects(database_url: str) -> None:
    engine, job = _done_job_with_objects(database_url)
    deliveries.queue_deliveries(engine, job, [PACS, VIEWER])
    claimed = {c.destination: c for c in (deliveries.claim_delivery(engine, "w"), deliveries.claim_delivery(engine, "w"))}
    assert [o.kind for o in deliveries.objects_of(engine, job, claimed["pacs"].kinds)] == [ObjectKind.SR, ObjectKind.KEY_IMAGE]
    assert [o.kind for o in deliveries.objects_of(engine, job, claimed["viewer"].kinds)] == [ObjectKind.KEY_IMAGE]
    assert deliveries.claim_delivery(engine, "w") is None
    engine.dispose()


def test_transient_failures_back_off_then_give_up(database_url: str) -> None:
    engine, job = _done_job_with_objects(database_url)
    deliveries.queue_deliveries(engine, job, [PACS])
    states = []
    for _ in range(3):
        claimed = deliveries.claim_delivery(engine, "w")
        assert claimed is not None
        before = utcnow()
        states.append(deliveries.record_outcome(engine, claimed, "w", FailureKind.TRANSIENT, "refused", SENDING))
        if states[-1] == DeliveryState.PENDING:
            assert deliveries.claim_delivery(engine, "w") is None  # not due yet
            with engine.connect() as connection:
                wait = (connection.scalar(select(Delivery.next_attempt_at)) - before).total_seconds()
            assert abs(wait - min(25, 10 * 2 ** (claimed.attempts - 1))) < 2
            _make_due(engine)
            deliveries.record_probe(engine, "pacs", True, SENDING)  # keep the breaker out of this test
    assert states == [DeliveryState.PENDING, DeliveryState.PENDING, DeliveryState.FAILED]
    with engine.connect() as connection:
        assert "gave up after 3 attempts: refused" in connection.scalar(select(Delivery.last_error))
    engine.dispose()


def test_permanent_failure_stops_at_once(database_url: str) -> None:
    engine, job = _done_job_with_objects(database_url)
    deliveries.queue_deliveries(engine, job, [PACS])
    claimed = deliveries.claim_delivery(engine, "w")
    state = deliveries.record_outcome(engine, claimed, "w", FailureKind.PERMANENT, "SOP class refused", SENDING)
    assert state == DeliveryState.FAILED
    _make_due(engine)
    assert deliveries.claim_delivery(engine, "w") is None
    engine.dispose()


def test_breaker_pauses_destination_until_probe_answers(database_url: str) -> None:
    engine, job = _done_job_with_objects(database_url)
    deliveries.queue_deliveries(engine, job, [PACS])
    deliveries.queue_deliveries(engine, job, [PACS])
    for _ in range(2):
        claimed = deliveries.claim_delivery(engine, "w")
        deliveries.record_outcome(engine, claimed, "w", FailureKind.TRANSIENT, "timeout", SENDING)
    _make_due(engine)
    assert deliveries.claim_delivery(engine, "w") is None, "breaker open: nothing is sent"
    assert deliveries.destinations_to_probe(engine) == []  # first probe after probe_interval_s
    with engine.begin() as connection:
        from pacs_node.db.models import DestinationHealth
        connection.execute(DestinationHealth.__table__.update().values(next_probe_at=utcnow()))
    assert deliveries.destinations_to_probe(engine) == ["pacs"]
    deliveries.record_probe(engine, "pacs", False, SENDING)
    assert deliveries.destinations_to_probe(engine) == []
    deliveries.record_probe(engine, "pacs", True, SENDING)
    assert deliveries.claim_delivery(engine, "w") is not None, "waiting deliveries go at once"
    engine.dispose()


def test_resend_reuses_the_same_objects(database_url: str) -> None:
    engine, job = _done_job_with_objects(database_url)
    assert deliveries.resend_study(engine, "1.2.3", [PACS]) == 1
    assert deliveries.resend_study(engine, "9.9.9", [PACS]) == 0
    claimed = deliveries.claim_delivery(engine, "w")
    assert claimed.job_pk == job
    assert {o.sop_instance_uid for o in deliveries.objects_of(engine, job, claimed.kinds)} == {"1.2.3.9.1", "1.2.3.9.2"}
    engine.dispose()


def test_retry_delay_is_capped_and_jittered() -> None:
    sending = SendingConfig(first_retry_s=30, max_retry_s=1800, jitter=0.2)
    rng = random.Random(1)
    delays = [deliveries.retry_delay_s(attempt, sending, rng) for attempt in range(1, 12)]
    assert 24 <= delays[0] <= 36
    assert all(d <= 1800 * 1.2 for d in delays)
    assert delays[-1] >= 1800 * 0.8


def test_a_delivery_claim_whose_lease_was_taken_over_records_nothing(database_url: str) -> None:
    """Fencing: the late outcome of a sender paused past its lease is refused; the attempt
    that took the delivery over reports, and the breaker counts only its answer."""
    engine, job = _done_job_with_objects(database_url)
    deliveries.queue_deliveries(engine, job, [PACS])
    stale = deliveries.claim_delivery(engine, "w")
    with engine.begin() as connection:  # its lease runs out while it hangs
        connection.execute(Delivery.__table__.update().values(lease_expires_at=utcnow() - dt.timedelta(seconds=1)))
    current = deliveries.claim_delivery(engine, "w")
    assert current is not None and (current.id, current.attempts) == (stale.id, 2)
    assert deliveries.record_outcome(engine, stale, "w", FailureKind.PERMANENT, "late refusal", SENDING) is None
    assert deliveries.record_outcome(engine, current, "w", None, "", SENDING) == DeliveryState.SENT
    assert deliveries.record_outcome(engine, stale, "w", FailureKind.TRANSIENT, "late", SENDING) is None
    with engine.connect() as connection:
        row = connection.execute(select(Delivery.state, Delivery.last_error, Delivery.attempts)).one()
    assert (row.state, row.last_error, row.attempts) == (DeliveryState.SENT, None, 2)
    engine.dispose()
