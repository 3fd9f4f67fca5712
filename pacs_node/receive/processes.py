"""Extra receiver processes sharing the node's listening socket.

Python runs one thread at a time per process, so with several scanners sending at once
a single process saturates one core.  Extra processes accept on the same socket (the
kernel hands each connection to one of them) and share the association limit through a
counter in shared memory.  They only receive: every acknowledged instance is already
durable, so they can be stopped or killed at any time, and they die with the node.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
from multiprocessing.sharedctypes import SynchronizedArray
from pathlib import Path

from pacs_node.config import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        log.warning("event=receiver_orphan_guard_unavailable")


def _receiver_main(
    settings: Settings, listener: socket.socket, counts: SynchronizedArray, index: int, parent: int,
    metrics_dir: Path | None = None,
) -> None:
    _die_with_parent()
    if os.getppid() != parent:
        return  # the node died before the guard was armed
    if metrics_dir is not None:  # before anything imports prometheus_client (monitoring/multiprocess.py)
        from pacs_node.monitoring.multiprocess import use_directory

        use_directory(metrics_dir)
    from pacs_node.db.engine import make_engine
    from pacs_node.logs import configure_logging
    from pacs_node.monitoring.metrics import NodeMetrics
    from pacs_node.receive.server import AssociationSlots
    from pacs_node.receive.service import build_receiver
    from pacs_node.tls import TLSConfigError

    configure_logging(settings.logging.level, settings.logging.format)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    engine = make_engine(settings.storage.database_url)
    try:  # each process builds its own TLS context: an SSLContext cannot be pickled
        receiver = build_receiver(settings, engine, listener, AssociationSlots(settings.node.max_associations, counts, index),
                                  NodeMetrics(metrics_dir) if metrics_dir is not None else None)
    except TLSConfigError as exc:  # a certificate file changed since the node started
        log.error("event=receiver_failed process=%d reason=%r", index, str(exc))
        engine.dispose()
        return
    receiver.start()
    log.info("event=receiver_started process=%d", index)
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.error("event=receiver_orphaned process=%d", index)
            break
    receiver.stop(settings.node.shutdown_grace_s)
    engine.dispose()


class ReceiverProcesses:
    """Starts, watches and stops the extra receiver processes.

    With ``metrics_dir`` (the node's multiprocess metrics directory) they count into it.
    """

    def __init__(self, settings: Settings, listener: socket.socket, counts: SynchronizedArray,
                 metrics_dir: Path | None = None) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.listener = listener
        self.counts = counts
        self.count = len(counts) - 1  # entry 0 is the node's own receiver
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, multiprocessing.process.BaseProcess] = {}
        self._stopping = False

    def _spawn(self, index: int) -> None:
        process = self._context.Process(
            target=_receiver_main,
            args=(self.settings, self.listener, self.counts, index, os.getpid(), self.metrics_dir),
            name=f"pacs-node-receiver-{index}",
            daemon=True,
        )
        process.start()
        self._processes[index] = process

    def start(self) -> None:
        for index in range(1, self.count + 1):
            self._spawn(index)

    def supervise(self) -> None:
        """Replace a receiver process that died (called by the scheduler)."""
        for index, process in list(self._processes.items()):
            if not self._stopping and not process.is_alive():
                log.error("event=receiver_died process=%d exitcode=%s", index, process.exitcode)
                with self.counts.get_lock():
                    self.counts.get_obj()[index] = 0  # its associations ended with it
                self._spawn(index)

    def stop(self, grace_s: float) -> None:
        """SIGTERM every receiver process; kill those still running after the grace period."""
        self._stopping = True
        for process in self._processes.values():
            if process.is_alive():
                process.terminate()
        for process in self._processes.values():
            process.join(timeout=grace_s + 5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
