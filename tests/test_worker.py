"""The worker's fence: a job taken over while it ran records nothing, whether it succeeded or failed."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from sqlalchemy import Engine, select, update

from pacs_node.db import queue
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.db.models import Job, JobState, utcnow
from pacs_node.worker import JobOutcome, Worker


def _queued_job(engine: Engine) -> None:
    InstanceRecorder(engine).record(ReceivedInstance(
        sop_instance_uid="1.2.3.1.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid="1.2.3",
        series_uid="1.2.3.1", transfer_syntax_uid="1.2.840.10008.1.2.1", relative_path="studies/1.2.3/1.2.3.1/a.dcm",
        size_bytes=10, calling_ae="CT1", patient_id="P1", patient_name="Doe^Jane", modality="CT"))
    queue.complete_quiet_studies(engine, 60, now=utcnow() + dt.timedelta(seconds=62))


@pytest.mark.parametrize("ending", ["result", "exception"])
def test_a_job_taken_over_while_it_ran_records_nothing(database_url: str, ending: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    _queued_job(engine)

    def paused_past_its_lease(engine: Engine, job: queue.ClaimedJob) -> JobOutcome:
        with engine.begin() as connection:  # the lease ran out: recovery requeues, another worker claims
            connection.execute(update(Job).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1)))
        assert queue.requeue_abandoned(engine) == 1
        assert queue.claim_job(engine, "worker-b", 60, 3) is not None
        if ending == "exception":
            raise RuntimeError("out of memory")
        return JobOutcome({"step": "test"})

    worker = Worker(engine, "worker-a", paused_past_its_lease, lease_s=60, max_attempts=3)
    with caplog.at_level(logging.INFO, logger="pacs_node.worker"):
        worker.run_once()
    with engine.connect() as connection:
        job = connection.execute(select(Job.state, Job.claimed_by, Job.attempts, Job.result, Job.error)).one()
    assert tuple(job) == (JobState.RUNNING, "worker-b", 2, None, None), "the attempt that holds it reports it"
    assert "event=job_lost" in caplog.text
    engine.dispose()
