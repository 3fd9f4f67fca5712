"""A running node: the one place where the engine, spool, listener, worker and
scheduler are created and handed to each other."""

from __future__ import annotations

import logging
import threading

from pacs_node.analyze.passthrough import record_series_for_analysis
from pacs_node.config import Settings, redacted_database_url
from pacs_node.db import queue
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder
from pacs_node.receive.policy import AssociationPolicy
from pacs_node.receive.server import StorageServer
from pacs_node.receive.spool import Spool
from pacs_node.receive.store import SpoolingSink
from pacs_node.schedule import build_scheduler
from pacs_node.worker import JobRunner, Worker

log = logging.getLogger(__name__)


class Node:
    """Receives, completes studies and runs jobs until :meth:`stop`."""

    def __init__(self, settings: Settings, runner: JobRunner = record_series_for_analysis) -> None:
        self.settings = settings
        self.engine = make_engine(settings.storage.database_url)
        upgrade(self.engine)
        self.spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb * 1024 * 1024)
        removed = self.spool.clean_incoming()
        if removed:
            log.warning("event=partial_files_removed count=%d reason=unacknowledged at last stop", removed)
        requeued = queue.requeue_abandoned(self.engine, worker=settings.node.name)
        if requeued:
            log.warning("event=jobs_requeued count=%d reason=running at last stop", requeued)
        node = settings.node
        self.sink = SpoolingSink(self.spool, InstanceRecorder(self.engine), max_parallel=node.max_associations)
        self.server = StorageServer(
            node.bind_address,
            node.port,
            AssociationPolicy(node.ae_title, tuple(node.allowed_callers)),
            self.sink,
            max_associations=node.max_associations,
            max_pdu=node.max_pdu_bytes,
            acse_timeout_s=node.acse_timeout_s,
            network_timeout_s=node.network_timeout_s,
        )
        worker_settings = settings.worker
        self.worker = (
            Worker(self.engine, node.name, runner, worker_settings.lease_s, worker_settings.max_attempts)
            if worker_settings.enabled
            else None
        )
        self.scheduler = build_scheduler(settings, self.engine, self.worker)
        self.stopped = threading.Event()

    def start(self) -> None:
        """Start listening and the timers."""
        self.server.start()
        self.scheduler.start()
        log.info(
            "event=node_started ae_title=%s address=%s port=%d database=%s worker=%s",
            self.settings.node.ae_title,
            self.settings.node.bind_address,
            self.server.port,
            redacted_database_url(self.settings.storage.database_url),
            "on" if self.worker else "off",
        )

    def stop(self) -> None:
        """Stop cleanly: no new associations, finish in-flight stores, leave queued jobs."""
        log.info("event=node_stopping")
        if self.worker is not None:
            self.worker.stopping.set()
        self.server.stop(self.settings.node.shutdown_grace_s)
        self.scheduler.shutdown(wait=True)
        self.sink.close()
        self.spool.close()
        self.engine.dispose()
        self.stopped.set()
        log.info("event=node_stopped")
