"""APScheduler wiring: the timers that drive completion, dispatch and recovery.

The scheduler only keeps time; every decision is a database transition (see
``db/queue.py``), so a missed or doubled tick is harmless.
"""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from pacs_node.config import Settings
from pacs_node.db import queue
from pacs_node.send.dispatcher import Dispatcher
from pacs_node.worker import Worker

log = logging.getLogger(__name__)


def _sweep(engine: Engine, quiet_period_s: float) -> None:
    try:
        for study_pk in queue.complete_quiet_studies(engine, quiet_period_s):
            log.info("event=study_complete study=%d job=queued", study_pk)
    except OperationalError as exc:
        log.error("event=sweep_failed reason=database unavailable error=%s", type(exc.orig).__name__)


def _dispatch(worker: Worker) -> None:
    try:
        while worker.run_once() is not None:
            pass
    except OperationalError as exc:
        log.error("event=dispatch_failed reason=database unavailable error=%s", type(exc.orig).__name__)


def _recover(engine: Engine) -> None:
    try:
        count = queue.requeue_abandoned(engine)
        if count:
            log.warning("event=jobs_requeued count=%d reason=lease expired", count)
    except OperationalError as exc:
        log.error("event=recover_failed reason=database unavailable error=%s", type(exc.orig).__name__)


def _deliver(dispatcher: Dispatcher) -> None:
    try:
        while dispatcher.run_once() is not None:
            pass
    except OperationalError as exc:
        log.error("event=delivery_failed reason=database unavailable error=%s", type(exc.orig).__name__)


def _probe(dispatcher: Dispatcher) -> None:
    try:
        dispatcher.probe()
    except OperationalError as exc:
        log.error("event=probe_failed reason=database unavailable error=%s", type(exc.orig).__name__)


def build_scheduler(
    settings: Settings, engine: Engine, worker: Worker | None, dispatcher: Dispatcher | None = None
) -> BackgroundScheduler:
    """A scheduler with the completion sweep, the worker's dispatch and the sender, when given."""
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "misfire_grace_time": 30})
    scheduler.add_job(
        _sweep,
        "interval",
        seconds=settings.completion.sweep_interval_s,
        args=[engine, settings.completion.quiet_period_s],
        id="completion-sweep",
        max_instances=1,
    )
    scheduler.add_job(
        _recover, "interval", seconds=max(10.0, settings.worker.lease_s / 4), args=[engine], id="lease-recovery"
    )
    if worker is not None:
        scheduler.add_job(
            _dispatch,
            "interval",
            seconds=settings.worker.poll_interval_s,
            args=[worker],
            id="job-dispatch",
            max_instances=settings.worker.concurrency,
        )
    if dispatcher is not None:
        sending = settings.sending
        scheduler.add_job(_deliver, "interval", seconds=sending.poll_interval_s, args=[dispatcher], id="deliveries")
        scheduler.add_job(
            _probe, "interval", seconds=min(sending.probe_interval_s, 10.0), args=[dispatcher], id="destination-probes"
        )
    return scheduler
