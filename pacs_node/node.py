"""A running node: the one place where the engine, spool, listener, worker and
scheduler are created and handed to each other."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pacs_node.analyze.passthrough import record_series_for_analysis
from pacs_node.config import Settings, redacted_database_url
from pacs_node.db import deliveries, queue
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.housekeeping import DiskGuard, Retention
from pacs_node.logs import RecentEvents
from pacs_node.monitoring.health import DatabaseProbe, NodeHealth
from pacs_node.monitoring.metrics import NodeMetrics, ScrapeCollector
from pacs_node.receive.processes import ReceiverProcesses
from pacs_node.receive.server import AssociationSlots, open_listener
from pacs_node.receive.service import build_receiver
from pacs_node.receive.spool import Spool
from pacs_node.storage import BlobStore, open_store, remove_fetched
from pacs_node.storage.sweep import ObjectRetention
from pacs_node.schedule import build_scheduler
from pacs_node.send.dispatcher import Dispatcher
from pacs_node.worker import JobRunner, Worker

if TYPE_CHECKING:
    from pacs_node.console.server import ConsoleServer

log = logging.getLogger(__name__)


def _console(node: Node) -> ConsoleServer | None:
    """The IT console's server for ``node``, when ``[console] enabled``."""
    if not node.settings.console.enabled:
        return None
    from pacs_node.console.app import create_app
    from pacs_node.console.context import NodeView
    from pacs_node.console.server import ConsoleServer

    view = NodeView(
        settings=node.settings,
        engine=node.engine,
        guard=node.guard,
        started_at=datetime.now(UTC),
        listener_up=node.receiver.server.accepting if node.receiver else None,
        model_loaded=lambda: node.model_loaded,
        events=node.events,
        metrics=node.metrics,
        health=node.health,
    )
    return ConsoleServer(create_app(view), node.settings.console)


def _job_runner(settings: Settings, store: BlobStore) -> JobRunner:
    """The analysis pipeline with the configured model, or the pass-through when analysis is off."""
    if not settings.analysis.enabled:
        return record_series_for_analysis
    from pacs_node.analyze.pipeline import Analysis
    from pacs_node.ml.detector import Detector

    return Analysis(settings, Detector.load(settings.analysis.model_dir), store)


class Node:
    """Receives, completes studies and runs jobs until :meth:`stop`.

    Metrics are counted only when the console, which serves them, is on. ``metrics_dir``: the
    run's multiprocess metrics directory, already set up by the caller
    (``pacs_node/monitoring/multiprocess.py``); without it, metrics count in this process only.
    """

    def __init__(self, settings: Settings, runner: JobRunner | None = None, metrics_dir: Path | None = None) -> None:
        self.settings = settings
        counting = settings.console.enabled
        metrics_dir = metrics_dir if counting else None
        self.metrics = NodeMetrics(metrics_dir) if counting else None
        if counting and metrics_dir is None and settings.node.receive_processes > 1:
            log.warning("event=metrics_single_process reason=no multiprocess directory: "
                        "the extra receiver processes' counts are left out of /metrics")
        node = settings.node
        analysing = node.has("analyse") and settings.worker.enabled
        #: The blob store the stages of this process share (built here, handed down).
        self.store = open_store(settings)
        runner = (runner or _job_runner(settings, self.store)) if analysing else None
        #: The analysis model is in memory, or this process needs none (analysis off, or not its role).
        self.model_loaded = runner is None or not settings.analysis.enabled or getattr(runner, "detector", None) is not None
        if runner is not None and settings.priors.enabled:
            from pacs_node.priors.job import WithPriors

            runner = WithPriors(runner, settings, store=self.store)
        self.engine = make_engine(settings.storage.database_url)
        upgrade(self.engine)
        removed = Spool(settings.storage.spool_dir, node_name=settings.node.name).clean_incoming()
        remove_fetched(settings)
        if removed:
            log.warning("event=partial_files_removed count=%d reason=unacknowledged at last stop", removed)
        storage = settings.storage
        self.guard = DiskGuard(storage.spool_dir, storage.min_free_mb, storage.warn_free_mb)
        # the spool's housekeeping belongs to the process that receives into it
        self.retention: Retention | ObjectRetention | None
        if storage.backend == "s3" and node.has("receive"):  # the orphan sweep runs with retention off too
            assert storage.s3 is not None
            self.retention = ObjectRetention(self.engine, self.store, settings.retention, storage.s3.orphan_age_s)
        else:
            self.retention = (Retention(self.engine, storage.spool_dir, node.name, settings.retention)
                              if settings.retention.enabled and node.has("receive") else None)
        if self.retention is not None:
            purged = self.retention.recover()
            if self.metrics is not None:
                self.metrics.purged(purged)
        if runner is not None:
            requeued = queue.requeue_abandoned(self.engine, worker=node.name)
            if requeued:
                log.warning("event=jobs_requeued count=%d reason=running at last stop", requeued)
        sending = node.has("send") and bool(settings.destinations)
        if sending:
            resumed = deliveries.requeue_abandoned(self.engine, worker=node.name)
            if resumed:
                log.warning("event=deliveries_requeued count=%d reason=sending at last stop", resumed)
        self.receiver, self.extra_receivers = None, None
        if node.has("receive"):
            listener = open_listener(node.bind_address, node.port)
            counts = multiprocessing.get_context("spawn").Array("i", node.receive_processes)
            self.receiver = build_receiver(settings, self.engine, listener,
                                           AssociationSlots(node.max_associations, counts), self.metrics)
            self.extra_receivers = (ReceiverProcesses(settings, listener, counts, metrics_dir)
                                    if node.receive_processes > 1 else None)
        worker_settings = settings.worker
        self.worker = (
            Worker(self.engine, node.name, runner, worker_settings.lease_s, worker_settings.max_attempts,
                   settings.destinations, has_room=self.guard.has_room, metrics=self.metrics)
            if runner is not None
            else None
        )
        self.dispatcher = Dispatcher(self.engine, settings, self.metrics, store=self.store) if sending else None
        self.scheduler = build_scheduler(settings, self.engine, self.worker, self.dispatcher,
                                         guard=self.guard, retention=self.retention, metrics=self.metrics)
        self.probe = DatabaseProbe(self.engine)
        if self.metrics is not None:
            self.metrics.registry.register(
                ScrapeCollector(self.probe, self.guard, [d.name for d in settings.destinations]))
        self.health = NodeHealth(self.probe, storage.spool_dir, self.guard,
                                 self.receiver.server.accepting if self.receiver else None, lambda: self.model_loaded,
                                 store=self.store)
        self.scheduler.add_job(self.health.heartbeat, "interval", seconds=1, id="heartbeat")
        if self.extra_receivers is not None:
            self.scheduler.add_job(self.extra_receivers.supervise, "interval", seconds=5, id="receiver-supervision")
        #: The newest log records for the console's events page, while it runs.
        self.events = RecentEvents() if settings.console.enabled else None
        self.console = _console(self)
        self.stopped = threading.Event()

    def start(self) -> None:
        """Start listening and the timers."""
        if self.events is not None:
            logging.getLogger().addHandler(self.events)
        if self.extra_receivers is not None:
            self.extra_receivers.start()
        if self.receiver is not None:
            self.receiver.start()
        self.scheduler.start()
        if self.console is not None:
            self.console.start()
        log.info(
            "event=node_started roles=%s ae_title=%s address=%s port=%s database=%s worker=%s sender=%s",
            ",".join(self.settings.node.roles),
            self.settings.node.ae_title,
            self.settings.node.bind_address,
            self.receiver.server.port if self.receiver else "-",
            redacted_database_url(self.settings.storage.database_url),
            "on" if self.worker else "off",
            "on" if self.dispatcher else "off",
        )
        if self.metrics is not None:
            log.info("event=metrics_ready mode=%s dir=%s", "multiprocess" if self.metrics.multiprocess_dir
                     else "single-process", self.metrics.multiprocess_dir or "-")

    def stop(self) -> None:
        """Stop cleanly: no new associations, finish in-flight stores, leave queued jobs."""
        log.info("event=node_stopping")
        if self.worker is not None:
            self.worker.stopping.set()
        grace = self.settings.node.shutdown_grace_s
        if self.extra_receivers is not None:
            self.extra_receivers.stop(grace)
        if self.receiver is not None:
            self.receiver.stop(grace)
        self.scheduler.shutdown(wait=True)
        if self.console is not None:
            self.console.stop()
        if self.events is not None:
            logging.getLogger().removeHandler(self.events)
        self.probe.close()
        self.store.close()
        self.engine.dispose()
        self.stopped.set()
        log.info("event=node_stopped")
