"""Completion and the job queue, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import multiprocessing

from sqlalchemy import Engine, func, select

from pacs_node.db import queue
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.db.models import Job, JobState, Study, StudyState, utcnow


def _engine(url: str) -> Engine:
    engine = make_engine(url)
    upgrade(engine)
    return engine


def _receive(recorder: InstanceRecorder, study: str, sop: str) -> bool:
    return recorder.record(
        ReceivedInstance(
            sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid=study,
            series_uid=study + ".1", transfer_syntax_uid="1.2.840.10008.1.2.1",
            relative_path=f"studies/{study}/{study}.1/{sop}.dcm", size_bytes=10, calling_ae="CT1",
            patient_id="P1", patient_name="Doe^Jane", modality="CT",
        )
    )


def _later(seconds: float) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


def test_migrations_are_idempotent(database_url: str) -> None:
    engine = _engine(database_url)
    upgrade(engine)
    engine.dispose()


def test_instance_recorded_once(database_url: str) -> None:
    engine = _engine(database_url)
    recorder = InstanceRecorder(engine)
    assert _receive(recorder, "1.2.3", "1.2.3.1.1") is True
    assert _receive(recorder, "1.2.3", "1.2.3.1.1") is False
    assert recorder.is_stored("1.2.3.1.1") == "studies/1.2.3/1.2.3.1/1.2.3.1.1.dcm"
    engine.dispose()


def test_study_completes_after_quiet_period_with_one_job(database_url: str) -> None:
    engine = _engine(database_url)
    recorder = InstanceRecorder(engine)
    _receive(recorder, "1.2.3", "1.2.3.1.1")
    assert queue.complete_quiet_studies(engine, quiet_period_s=60) == []
    [study_pk] = queue.complete_quiet_studies(engine, quiet_period_s=60, now=_later(62))
    assert queue.complete_quiet_studies(engine, quiet_period_s=60, now=_later(70)) == []
    with engine.connect() as connection:
        assert connection.scalar(select(Study.state).where(Study.id == study_pk)) == StudyState.COMPLETE
        assert connection.scalar(select(func.count()).select_from(Job)) == 1
    engine.dispose()


def test_new_instance_reopens_study_and_supersedes_queued_job(database_url: str) -> None:
    engine = _engine(database_url)
    recorder = InstanceRecorder(engine)
    _receive(recorder, "1.2.3", "1.2.3.1.1")
    [study_pk] = queue.complete_quiet_studies(engine, 60, now=_later(62))
    recorder.forget()  # a new instance after the touch interval
    assert _receive(recorder, "1.2.3", "1.2.3.1.2")
    with engine.connect() as connection:
        assert connection.scalar(select(Study.state).where(Study.id == study_pk)) == StudyState.RECEIVING
    queue.complete_quiet_studies(engine, 60, now=_later(62))
    with engine.connect() as connection:
        states = connection.scalars(select(Job.state).order_by(Job.id)).all()
    assert states == [JobState.SUPERSEDED, JobState.QUEUED]
    engine.dispose()


def _one_queued_job(database_url: str) -> Engine:
    engine = _engine(database_url)
    _receive(InstanceRecorder(engine), "1.2.3", "1.2.3.1.1")
    queue.complete_quiet_studies(engine, 60, now=_later(62))
    return engine


def test_claim_finish_and_requeue_after_restart(database_url: str) -> None:
    engine = _one_queued_job(database_url)
    job = queue.claim_job(engine, "node-a", lease_s=600, max_attempts=3)
    assert job is not None and job.attempts == 1
    assert queue.claim_job(engine, "node-b", lease_s=600, max_attempts=3) is None
    # node-a dies and restarts: its running job goes back to the queue; node-b's would not.
    assert queue.requeue_abandoned(engine, worker="node-b") == 0
    assert queue.requeue_abandoned(engine, worker="node-a") == 1
    again = queue.claim_job(engine, "node-a", lease_s=600, max_attempts=3)
    assert again is not None and again.id == job.id and again.attempts == 2
    assert queue.finish_job(engine, again, "node-b", JobState.DONE) is False
    assert queue.finish_job(engine, again, "node-a", JobState.DONE, result={"step": "x"}) is True
    engine.dispose()


def test_a_claim_whose_lease_was_taken_over_cannot_renew_release_or_finish(database_url: str) -> None:
    """Fencing: a worker paused past its lease (same name: a thread of the same node) meets
    the attempt that took the job over, and only the newer attempt's result counts."""
    engine = _one_queued_job(database_url)
    stale = queue.claim_job(engine, "node-a", lease_s=-1, max_attempts=3)
    assert stale is not None and queue.requeue_abandoned(engine) == 1  # its lease ran out
    current = queue.claim_job(engine, "node-a", lease_s=600, max_attempts=3)
    assert current is not None and (current.id, current.attempts) == (stale.id, 2)
    assert queue.renew_lease(engine, stale, "node-a", 600) is False
    assert queue.release_job(engine, stale, "node-a") is False
    assert queue.finish_job(engine, stale, "node-a", JobState.DONE, result={"by": "stale"}) is False
    assert queue.renew_lease(engine, current, "node-a", 600) is True
    assert queue.finish_job(engine, current, "node-a", JobState.DONE, result={"by": "current"}) is True
    with engine.connect() as connection:
        row = connection.execute(select(Job.state, Job.result, Job.attempts)).one()
    assert (row.state, row.result, row.attempts) == (JobState.DONE, '{"by": "current"}', 2)
    assert queue.finish_job(engine, stale, "node-a", JobState.FAILED, error="late") is False, "a late failure too"
    engine.dispose()


def test_expired_lease_is_requeued_and_poison_job_fails(database_url: str) -> None:
    engine = _one_queued_job(database_url)
    for _ in range(2):
        assert queue.claim_job(engine, "node-a", lease_s=-1, max_attempts=2) is not None
        assert queue.requeue_abandoned(engine) == 1  # lease already expired
    assert queue.claim_job(engine, "node-a", lease_s=600, max_attempts=2) is None
    with engine.connect() as connection:
        job = connection.execute(select(Job.state, Job.error)).one()
    assert job.state == JobState.FAILED and "gave up after 2 attempts" in job.error
    engine.dispose()


def _claim_all(url: str, name: str, results: multiprocessing.Queue) -> None:
    engine = make_engine(url)
    claimed = []
    while (job := queue.claim_job(engine, name, lease_s=600, max_attempts=3)) is not None:
        claimed.append(job.id)
        queue.finish_job(engine, job, name, JobState.DONE)
    results.put(claimed)
    engine.dispose()


def test_two_worker_processes_never_run_a_job_twice(database_url: str) -> None:
    engine = _engine(database_url)
    recorder = InstanceRecorder(engine)
    for study in range(60):
        _receive(recorder, f"1.2.{study}", f"1.2.{study}.1.1")
    assert len(queue.complete_quiet_studies(engine, 60, now=_later(62))) == 60
    engine.dispose()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_claim_all, args=(database_url, f"w{i}", results)) for i in range(2)]
    for worker in workers:
        worker.start()
    claimed = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    everything = claimed[0] + claimed[1]
    assert len(everything) == 60
    assert len(set(everything)) == 60, "a job was claimed twice"
    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.DONE)) == 60
    engine.dispose()
