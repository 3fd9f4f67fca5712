"""Associations with a prior source: TCP_NODELAY, DICOM TLS, a reason when it fails, cancellable."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, Association

from pacs_node.config import PriorSource
from pacs_node.send._tcp import NO_DELAY
from pacs_node.tls import client_tls_args, tls_failure

TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class SourceUnavailable(Exception):
    """A source could not be asked or did not answer; the message says why (no patient data)."""


class Cancel:
    """Lets the job give up on a lookup: aborts the association in use and stops the next step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._assoc: Association | None = None
        self.cancelled = threading.Event()

    def use(self, assoc: Association | None) -> None:
        """The association to abort on :meth:`cancel` (``None``: none open)."""
        with self._lock:
            self._assoc = assoc
        if assoc is not None and self.cancelled.is_set():
            assoc.abort()

    def check(self) -> None:
        """Raise :class:`SourceUnavailable` once cancelled."""
        if self.cancelled.is_set():
            raise SourceUnavailable("gave up: max_wait_s passed")

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            assoc = self._assoc
        if assoc is not None and assoc.is_alive():
            assoc.abort()


def associate(
    source: PriorSource, calling_ae: str, abstract_syntaxes: Sequence[str], timeout_s: float, cancel: Cancel,
    ext_neg: list | None = None, evt_handlers: list | None = None,
) -> Association:
    """An established association with ``source``; :class:`SourceUnavailable` saying why otherwise."""
    cancel.check()
    tls_args = client_tls_args(source.tls, source.host)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    for syntax in abstract_syntaxes:
        ae.add_requested_context(syntax, TRANSFER_SYNTAXES)
    assoc = ae.associate(source.host, source.port, ae_title=source.ae_title, ext_neg=ext_neg,
                         evt_handlers=[*NO_DELAY, *(evt_handlers or [])], tls_args=tls_args)
    if assoc.is_rejected:
        rejection = assoc.acceptor.primitive
        raise SourceUnavailable(f"association rejected (result {rejection.result}, source {rejection.result_source}, "
                                f"reason {rejection.diagnostic}): is our AE title known to the source?")
    if not assoc.is_established:
        failure = tls_failure(tls_args)
        raise SourceUnavailable(f"no association: TLS failed: {failure}" if failure
                                else "no association: connection refused, timed out or aborted")
    cancel.use(assoc)
    return assoc


def close(assoc: Association, cancel: Cancel) -> None:
    """Release ``assoc`` (if still up) and forget it."""
    cancel.use(None)
    if assoc.is_established:
        assoc.release()
