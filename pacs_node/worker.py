"""The job worker: claims queued analysis jobs and runs them, one claim at a time.

The database does the queueing and claiming; the scheduler only calls
:meth:`Worker.run_once` on a timer.  A running job keeps its lease fresh, so a
worker that dies leaves a job that another worker (or this one, restarted) picks up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, select

from pacs_node.config import Destination
from pacs_node.db import queue
from pacs_node.db.deliveries import ObjectRow
from pacs_node.db.models import JobState, Study, StudyState

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class JobOutcome:
    """What a job produced: its result document and the objects to deliver."""

    result: dict
    objects: Sequence[ObjectRow] = ()


#: Runs one job (for its study) and says what it produced.
JobRunner = Callable[[Engine, queue.ClaimedJob], JobOutcome]


class Worker:
    """Claims and runs jobs for one node process."""

    def __init__(
        self,
        engine: Engine,
        node_name: str,
        runner: JobRunner,
        lease_s: float,
        max_attempts: int,
        destinations: Sequence[Destination] = (),
    ) -> None:
        self.engine = engine
        self.destinations = destinations
        self.node_name = node_name
        self.runner = runner
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.stopping = threading.Event()

    def run_once(self) -> int | None:
        """Claim and run one job; returns its id, or ``None`` when the queue was empty."""
        if self.stopping.is_set():
            return None
        job = queue.claim_job(self.engine, self.node_name, self.lease_s, self.max_attempts)
        if job is None:
            return None
        with self.engine.connect() as connection:
            state = connection.scalar(select(Study.state).where(Study.id == job.study_pk))
        if state != StudyState.COMPLETE:
            queue.finish_job(self.engine, job.id, self.node_name, JobState.SUPERSEDED, error="study re-opened")
            log.info("event=job_superseded job=%d study=%d", job.id, job.study_pk)
            return job.id
        log.info("event=job_started job=%d study=%d attempt=%d", job.id, job.study_pk, job.attempts)
        started = time.monotonic()
        renewer = _LeaseRenewer(self, job.id)
        renewer.start()
        try:
            outcome = self.runner(self.engine, job)
        except Exception as exc:
            renewer.stop()
            log.exception("event=job_failed job=%d study=%d", job.id, job.study_pk)
            queue.finish_job(self.engine, job.id, self.node_name, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
            return job.id
        renewer.stop()
        result = {**outcome.result, "seconds": round(time.monotonic() - started, 3)}
        if queue.finish_job(self.engine, job.id, self.node_name, JobState.DONE, result=result,
                            objects=outcome.objects, destinations=self.destinations):
            log.info("event=job_done job=%d study=%d step=%s seconds=%.3f", job.id, job.study_pk, result.get("step"), result["seconds"])
        else:
            log.warning("event=job_lost job=%d study=%d reason=lease taken over", job.id, job.study_pk)
        return job.id


class _LeaseRenewer:
    """Renews a job's lease every third of its length while the job runs."""

    def __init__(self, worker: Worker, job_id: int) -> None:
        self.worker = worker
        self.job_id = job_id
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.worker.lease_s / 3):
            queue.renew_lease(self.worker.engine, self.job_id, self.worker.node_name, self.worker.lease_s)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
