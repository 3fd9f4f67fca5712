"""The dispatcher: sends due deliveries and probes paused destinations.

Called on a timer by the scheduler; all state is in the database (``db/deliveries.py``),
so a dispatcher can stop at any moment and another one carries on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from pacs_node.config import Destination, Settings
from pacs_node.db import deliveries
from pacs_node.db.models import DeliveryState, FailureKind
from pacs_node.send.dicomweb import dicomweb_answers
from pacs_node.send.echo import EchoError, c_echo
from pacs_node.send.scu import SendOutcome, send_files
from pacs_node.send.stow import send_stow
from pacs_node.storage import BlobStore, open_store

if TYPE_CHECKING:
    from pacs_node.monitoring.metrics import NodeMetrics

log = logging.getLogger(__name__)


class Dispatcher:
    """Delivers report objects to the configured destinations."""

    def __init__(self, engine: Engine, settings: Settings, metrics: NodeMetrics | None = None,
                 store: BlobStore | None = None) -> None:
        self.engine = engine
        #: Where the report objects are read (fetched for the send from an object store).
        self.store = store if store is not None else open_store(settings)
        self.metrics = metrics
        self.settings = settings
        self.worker = settings.node.name
        self.destinations = {d.name: d for d in settings.destinations}
        #: A send whose outcome the database could not take yet; recorded before the next claim,
        #: so a database outage never leaves a delivery 'sending'.
        self._unrecorded: tuple[deliveries.ClaimedDelivery, SendOutcome] | None = None

    def run_once(self) -> int | None:
        """Send one due delivery; returns its id, or ``None`` when nothing is due."""
        if self._unrecorded is not None:
            self._record(*self._unrecorded)  # raises while the database is still unavailable
        claimed = deliveries.claim_delivery(self.engine, self.worker)
        if claimed is None:
            return None
        try:
            outcome = self._send(claimed)
        except OperationalError:
            outcome = SendOutcome(0, FailureKind.TRANSIENT, "database unavailable")
        self._unrecorded = (claimed, outcome)
        self._record(claimed, outcome)
        return claimed.id

    def _record(self, claimed: deliveries.ClaimedDelivery, outcome: SendOutcome) -> None:
        destination = self.destinations.get(claimed.destination)
        state = deliveries.record_outcome(
            self.engine, claimed, self.worker, outcome.failure, outcome.reason, self.settings.sending,
            probe=_probe_name(destination),
        )
        self._unrecorded = None
        if state is None:
            log.warning("event=delivery_lost delivery=%d job=%d destination=%s attempt=%d "
                        "reason=lease ran out and another attempt took it over", claimed.id, claimed.job_pk,
                        claimed.destination, claimed.attempts)
            return
        if self.metrics is not None:
            outcome_label = {DeliveryState.SENT: "sent", DeliveryState.PENDING: "retry"}.get(state, "failed")
            self.metrics.deliveries.labels(claimed.destination, outcome_label).inc()
        level = logging.INFO if outcome.failure is None else logging.WARNING
        log.log(
            level,
            "event=delivery_%s delivery=%d job=%d destination=%s attempt=%d objects=%d reason=%r",
            state.value, claimed.id, claimed.job_pk, claimed.destination, claimed.attempts, outcome.sent, outcome.reason,
        )

    def _send(self, claimed: deliveries.ClaimedDelivery) -> SendOutcome:
        destination = self.destinations.get(claimed.destination)
        if destination is None:
            return SendOutcome(0, FailureKind.PERMANENT, "destination is no longer configured")
        objects = deliveries.objects_of(self.engine, claimed.job_pk, claimed.kinds)
        if not objects:
            return SendOutcome(0)  # this destination wants nothing the job produced
        keys = [row.path for row in objects]
        timeout_s = destination.timeout_s or self.settings.sending.timeout_s
        try:
            with self.store.fetched(keys) as local:
                missing = [key.rsplit("/", 1)[-1] for key in keys if key not in local]
                if missing:
                    where = "spool" if self.store.kind == "local" else f"{self.store.kind} store"
                    return SendOutcome(0, FailureKind.PERMANENT,
                                       f"report files missing from the {where}: {', '.join(missing)}")
                paths = [local[key] for key in keys]
                if destination.protocol == "dicomweb":
                    return send_stow(destination, paths, timeout_s)
                return send_files(destination, paths, self.settings.node.ae_title, timeout_s)
        except (OSError, ValueError, RuntimeError) as exc:  # StoreUnavailable is an OSError: retried
            return SendOutcome(0, FailureKind.TRANSIENT, f"{type(exc).__name__}: {exc}")

    def probe(self) -> None:
        """Probe each paused destination whose probe is due (C-ECHO, or QIDO-RS for DICOMweb); reopen those that answer."""
        for name in deliveries.destinations_to_probe(self.engine):
            destination = self.destinations.get(name)
            if destination is None:
                continue
            answered = self._answers(destination)
            deliveries.record_probe(self.engine, name, answered, self.settings.sending, probe=_probe_name(destination))
            log.log(logging.INFO if answered else logging.WARNING,
                    "event=destination_probe destination=%s answered=%s", name, answered)

    def _answers(self, destination: Destination) -> bool:
        timeout_s = destination.timeout_s or self.settings.sending.timeout_s
        if destination.protocol == "dicomweb":
            return dicomweb_answers(destination, timeout_s)
        assert destination.ae_title and destination.host and destination.port  # validated for "dimse"
        try:
            c_echo(destination.ae_title, destination.host, destination.port,
                   calling_ae=self.settings.node.ae_title, timeout_s=timeout_s, tls=destination.tls)
            return True
        except EchoError:
            return False


def _probe_name(destination: Destination | None) -> str:
    """What a paused destination is probed with, for the log."""
    return "QIDO-RS" if destination is not None and destination.protocol == "dicomweb" else "C-ECHO"
