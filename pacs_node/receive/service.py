"""The receive stage of one process: spool, sink and listener built from settings."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from pacs_node.config import Settings
from pacs_node.db.ingest import InstanceRecorder
from pacs_node.receive.object_sink import ObjectStoreSink
from pacs_node.receive.policy import AssociationPolicy
from pacs_node.receive.proxy_protocol import ProxyGate
from pacs_node.receive.server import AssociationSlots, StorageServer
from pacs_node.receive.spool import Spool
from pacs_node.receive.store import SpoolingSink
from pacs_node.storage import BlobStore, open_store
from pacs_node.tls import server_context

if TYPE_CHECKING:
    from pacs_node.monitoring.metrics import NodeMetrics


@dataclass
class Receiver:
    """A storage SCP with the spool and sink it writes through (and the object store, if any)."""

    server: StorageServer
    sink: SpoolingSink | ObjectStoreSink
    spool: Spool
    store: BlobStore | None = None

    def start(self) -> None:
        self.server.start()

    def stop(self, grace_s: float) -> None:
        """Stop accepting, let associations finish, then release files and connections."""
        self.server.stop(grace_s)
        self.sink.close()
        self.spool.close()
        if self.store is not None:
            self.store.close()


def build_sink(settings: Settings, spool: Spool, store: BlobStore | None, recorder: InstanceRecorder,
               max_parallel: int) -> SpoolingSink | ObjectStoreSink:
    """The sink of ``[storage] backend``: the spool with group commit, or the object store ``store``."""
    if settings.storage.backend == "local":
        return SpoolingSink(spool, recorder, max_parallel=max_parallel)
    if store is None:
        raise ValueError("an object-store backend needs its store")
    return ObjectStoreSink(spool, store, recorder)


def build_receiver(settings: Settings, engine: Engine, listener: socket.socket, slots: AssociationSlots,
                   metrics: NodeMetrics | None = None) -> Receiver:
    """Everything one process needs to receive on ``listener``, counting into ``metrics``.

    The local backend writes the spool with group commit; an object store gets its own
    client in each receiving process (``spool_dir`` then holds partial files only).
    """
    node = settings.node
    spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb * 1024 * 1024, node.name)
    store = open_store(settings) if settings.storage.backend != "local" else None
    sink = build_sink(settings, spool, store, InstanceRecorder(engine), node.max_associations)
    server = StorageServer(
        listener,
        AssociationPolicy(node.ae_title, tuple(node.allowed_callers)),
        sink,
        slots,
        max_pdu=node.max_pdu_bytes,
        acse_timeout_s=node.acse_timeout_s,
        network_timeout_s=node.network_timeout_s,
        tls=server_context(node.tls) if node.tls is not None else None,  # built in each receiver process
        metrics=metrics,
        proxy=ProxyGate(node.proxy_protocol.trusted, node.proxy_protocol.required) if node.proxy_protocol else None,
    )
    return Receiver(server, sink, spool, store)
