"""APScheduler wiring: the timers that drive completion, dispatch, sending and recovery.

The scheduler only keeps time; every decision is a database transition (see
``db/queue.py`` and ``db/deliveries.py``), so a missed or doubled tick is harmless.
A tick that finds the database unavailable logs it and waits for the next one.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from pacs_node.config import Settings
from pacs_node.db import queue
from pacs_node.housekeeping import DiskGuard, Retention
from pacs_node.storage.sweep import ObjectRetention
from pacs_node.send.dispatcher import Dispatcher
from pacs_node.worker import Worker

if TYPE_CHECKING:
    from pacs_node.monitoring.metrics import NodeMetrics

log = logging.getLogger(__name__)


#: While the database stays unavailable, each timer repeats its error at most this often.
_REPEAT_ERROR_S = 60.0


def _guarded(task: str, action: Callable[[], None]) -> Callable[[], None]:
    logged_at: list[float] = []  # when this outage was last logged; empty while the database answers

    def tick() -> None:
        try:
            action()
        except OperationalError as exc:
            now = time.monotonic()
            if not logged_at or now - logged_at[0] >= _REPEAT_ERROR_S:
                log.error("event=%s_failed reason=database unavailable error=%s", task, type(exc.orig).__name__)
                logged_at[:] = [now]
            return
        if logged_at:
            logged_at.clear()
            log.info("event=%s_resumed reason=database available", task)

    return tick


def _until_idle(step: Callable[[], object | None]) -> Callable[[], None]:
    """Repeat ``step`` while it finds work (returns something)."""

    def drain() -> None:
        while step() is not None:
            pass

    return drain


def _sweep(engine: Engine, quiet_period_s: float, metrics: NodeMetrics | None = None) -> None:
    completed = queue.complete_quiet_studies(engine, quiet_period_s)
    for study_pk in completed:
        log.info("event=study_complete study=%d job=queued", study_pk)
    if completed and metrics is not None:
        metrics.studies_completed.inc(len(completed))


def _recheck(engine: Engine) -> None:
    for study_pk in queue.queue_rechecks(engine):
        log.info("event=prior_recheck_queued study=%d", study_pk)


def _recover(engine: Engine) -> None:
    count = queue.requeue_abandoned(engine)
    if count:
        log.warning("event=jobs_requeued count=%d reason=lease expired", count)


def build_scheduler(
    settings: Settings, engine: Engine, worker: Worker | None, dispatcher: Dispatcher | None = None,
    guard: DiskGuard | None = None, retention: Retention | ObjectRetention | None = None, metrics: NodeMetrics | None = None,
) -> BackgroundScheduler:
    """A scheduler with the completion sweep, the prior rechecks (``[priors] recheck_minutes``),
    and the worker's dispatch, the sender, the free-space check and the retention sweep when
    given (the last two run at start too); completed studies and purges are counted in ``metrics``."""
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "misfire_grace_time": 30})
    quiet = settings.completion.quiet_period_s
    scheduler.add_job(_guarded("sweep", lambda: _sweep(engine, quiet, metrics)), "interval",
                      seconds=settings.completion.sweep_interval_s, id="completion-sweep", max_instances=1)
    if settings.priors.rechecking:  # a due recheck waits a quarter of the interval at most (1-60 s)
        every_s = min(60.0, max(1.0, settings.priors.recheck_minutes * 60 / 4))
        scheduler.add_job(_guarded("prior_recheck", lambda: _recheck(engine)), "interval", seconds=every_s,
                          id="prior-recheck", max_instances=1)
    scheduler.add_job(_guarded("recover", lambda: _recover(engine)), "interval",
                      seconds=max(10.0, settings.worker.lease_s / 4), id="lease-recovery")
    if worker is not None:
        scheduler.add_job(_guarded("dispatch", _until_idle(worker.run_once)), "interval",
                          seconds=settings.worker.poll_interval_s, id="job-dispatch",
                          max_instances=settings.worker.concurrency)
    if dispatcher is not None:
        sending = settings.sending
        scheduler.add_job(_guarded("delivery", _until_idle(dispatcher.run_once)), "interval",
                          seconds=sending.poll_interval_s, id="deliveries")
        scheduler.add_job(_guarded("probe", dispatcher.probe), "interval",
                          seconds=min(sending.probe_interval_s, 10.0), id="destination-probes")
    now = dt.datetime.now(dt.timezone.utc)
    if guard is not None:
        scheduler.add_job(guard.check, "interval", seconds=settings.storage.space_check_interval_s,
                          id="space-check", next_run_time=now, max_instances=1)
    if retention is not None:
        sweep = retention.sweep if metrics is None else lambda: metrics.purged(retention.sweep())
        scheduler.add_job(_guarded("retention", sweep), "interval",
                          seconds=settings.retention.sweep_interval_s, id="retention", next_run_time=now,
                          max_instances=1)
    return scheduler
