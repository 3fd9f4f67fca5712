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
from typing import TYPE_CHECKING

from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from pacs_node.config import Destination
from pacs_node.db import queue
from pacs_node.db.deliveries import ObjectRow
from pacs_node.db.models import JobState, Study, StudyState

if TYPE_CHECKING:
    from pacs_node.monitoring.metrics import NodeMetrics

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
        has_room: Callable[[], bool] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        #: Asked before each claim: ``False`` while the spool is below its free-space minimum.
        self.has_room = has_room
        self._deferring = False
        self.destinations = destinations
        self.node_name = node_name
        self.runner = runner
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.stopping = threading.Event()
        #: Claims this worker holds whose database went away under them; re-queued once it is back.
        self._interrupted: set[queue.ClaimedJob] = set()
        self._interrupted_lock = threading.Lock()

    def run_once(self) -> int | None:
        """Claim and run one job; returns its id, or ``None`` when the queue was empty."""
        if self.stopping.is_set() or not self._room_for_reports():
            return None
        self._requeue_interrupted()  # raises while the database is still unavailable
        job = queue.claim_job(self.engine, self.node_name, self.lease_s, self.max_attempts)
        if job is None:
            return None
        with self.engine.connect() as connection:
            state = connection.scalar(select(Study.state).where(Study.id == job.study_pk))
        if state != StudyState.COMPLETE:
            queue.finish_job(self.engine, job, self.node_name, JobState.SUPERSEDED, error="study re-opened")
            log.info("event=job_superseded job=%d study=%d", job.id, job.study_pk)
            self._count("superseded")
            return job.id
        log.info("event=job_started job=%d study=%d attempt=%d kind=%s", job.id, job.study_pk, job.attempts,
                 job.kind.value)
        started = time.monotonic()
        renewer = _LeaseRenewer(self, job)
        renewer.start()
        try:
            outcome = self.runner(self.engine, job)
        except OperationalError:
            renewer.stop()
            return self._interrupt(job)
        except Exception as exc:
            renewer.stop()
            log.exception("event=job_failed job=%d study=%d", job.id, job.study_pk)
            if queue.finish_job(self.engine, job, self.node_name, JobState.FAILED,
                                error=f"{type(exc).__name__}: {exc}"):
                self._count("failed")
            else:  # the failure is not recorded: the attempt that holds the job now reports it
                log.warning("event=job_lost job=%d study=%d reason=lease taken over", job.id, job.study_pk)
                self._count("lost")
            return job.id
        renewer.stop()
        result = {**outcome.result, "seconds": round(time.monotonic() - started, 3)}
        try:
            finished = queue.finish_job(self.engine, job, self.node_name, JobState.DONE, result=result,
                                        objects=outcome.objects, destinations=self.destinations)
        except OperationalError:
            return self._interrupt(job)  # nothing recorded: the job runs again, its files unreferenced
        if finished:
            log.info("event=job_done job=%d study=%d step=%s seconds=%.3f", job.id, job.study_pk, result.get("step"), result["seconds"])
            self._count("done", result.get("timings_s"))
        else:
            log.warning("event=job_lost job=%d study=%d reason=lease taken over", job.id, job.study_pk)
            self._count("lost")
        return job.id

    def _count(self, outcome: str, timings_s: dict[str, float] | None = None) -> None:
        if self.metrics is not None:
            self.metrics.job_finished(outcome, timings_s)

    def _interrupt(self, job: queue.ClaimedJob) -> int:
        """The database failed under a running job: queue it again (now, or once the database is back)."""
        log.error("event=job_interrupted job=%d study=%d reason=database unavailable", job.id, job.study_pk)
        self._count("interrupted")
        with self._interrupted_lock:
            self._interrupted.add(job)
        try:
            self._requeue_interrupted()
        except OperationalError:
            pass  # the next tick tries again
        return job.id

    def _requeue_interrupted(self) -> None:
        with self._interrupted_lock:
            pending = sorted(self._interrupted, key=lambda claimed: claimed.id)
        for job in pending:
            if queue.release_job(self.engine, job, self.node_name):
                log.info("event=job_requeued job=%d reason=interrupted by database outage", job.id)
            with self._interrupted_lock:
                self._interrupted.discard(job)

    def _room_for_reports(self) -> bool:
        """Whether to claim now; logs once when jobs start and stop waiting for disk space."""
        room = self.has_room is None or self.has_room()
        if room == self._deferring:
            self._deferring = not room
            if room:
                log.info("event=jobs_resumed reason=spool free space above min_free_mb")
            else:
                log.warning("event=jobs_deferred reason=spool free space below min_free_mb")
        return room


class _LeaseRenewer:
    """Renews a job's lease every third of its length while the job runs."""

    def __init__(self, worker: Worker, job: queue.ClaimedJob) -> None:
        self.worker = worker
        self.job = job
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.worker.lease_s / 3):
            try:
                held = queue.renew_lease(self.worker.engine, self.job, self.worker.node_name, self.worker.lease_s)
            except OperationalError:  # a database outage must not end the renewals of a running job
                log.warning("event=lease_renewal_failed job=%d reason=database unavailable", self.job.id)
                continue
            if not held:  # its result will be refused; the attempt that holds the job now reports it
                log.warning("event=lease_lost job=%d attempt=%d reason=lease ran out and the job was taken over",
                            self.job.id, self.job.attempts)
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
