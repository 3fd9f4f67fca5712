"""C-STORE SCU (pynetdicom): send stored objects to one destination and say how it went.

Every failure is classed by its cause: *transient* ones (connection refused, timeouts,
aborts, out-of-resources statuses) are worth retrying later; *permanent* ones (AE title
not recognised, SOP class refused, cannot understand) are not, and stop at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from pacs_node.config import Destination
from pacs_node.db.models import FailureKind
from pacs_node.send._tcp import NO_DELAY
from pacs_node.tls import client_tls_args, tls_failure

#: A-ASSOCIATE-RJ reasons (result permanent) that no retry will change.
_PERMANENT_REJECTS = {(1, 1, 2), (1, 1, 3), (1, 1, 7), (1, 2, 2)}


@dataclass(frozen=True)
class SendOutcome:
    """How a send went: ``failure`` is ``None`` when every object was stored."""

    sent: int
    failure: FailureKind | None = None
    reason: str = ""


def classify_status(status: int) -> FailureKind | None:
    """``None`` for success and warnings, else whether a C-STORE status is worth retrying.

    PS3.4 B.2.3: 0xA7xx refused, out of resources (retry); 0xA9xx data set does not
    match SOP class and 0xCxxx cannot understand (permanent); 0x0122 SOP class not
    supported (permanent); 0x0110 processing failure and anything else (retry).
    """
    if status == 0x0000 or status in (0x0001, 0x0107, 0x0116) or (status & 0xF000) == 0xB000:
        return None
    if (status & 0xFF00) in (0xA900,) or (status & 0xF000) == 0xC000 or status in (0x0122, 0x0124, 0x0211):
        return FailureKind.PERMANENT
    return FailureKind.TRANSIENT



def send_files(destination: Destination, paths: Sequence[Path], calling_ae: str, timeout_s: float) -> SendOutcome:
    """Send ``paths`` over one association (DICOM TLS when the destination has ``tls``); stops at
    the first failure."""
    assert destination.ae_title and destination.host and destination.port, "a DIMSE destination"
    datasets = [dcmread(path) for path in paths]
    tls_args = client_tls_args(destination.tls, destination.host)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title, evt_handlers=NO_DELAY, tls_args=tls_args
    )
    if assoc.is_rejected:
        rejection = assoc.acceptor.primitive
        triple = (rejection.result, rejection.result_source, rejection.diagnostic)
        kind = FailureKind.PERMANENT if triple in _PERMANENT_REJECTS else FailureKind.TRANSIENT
        return SendOutcome(0, kind, f"association rejected (result {triple[0]}, source {triple[1]}, reason {triple[2]})")
    if not assoc.is_established:
        failure = tls_failure(tls_args)
        if failure:
            return SendOutcome(0, FailureKind.TRANSIENT, f"no association: TLS failed: {failure}")
        return SendOutcome(0, FailureKind.TRANSIENT, "no association: connection refused, timed out or aborted")
    sent = 0
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for ds in datasets:
            if str(ds.SOPClassUID) not in accepted:
                return SendOutcome(sent, FailureKind.PERMANENT, f"SOP class {ds.SOPClassUID.name} refused")
            status = assoc.send_c_store(ds)
            if not status or "Status" not in status:
                return SendOutcome(sent, FailureKind.TRANSIENT, "no C-STORE response (timeout or abort)")
            kind = classify_status(int(status.Status))
            if kind is not None:
                comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
                return SendOutcome(sent, kind, f"C-STORE status 0x{int(status.Status):04X}{comment}")
            sent += 1
    finally:
        if assoc.is_established:
            assoc.release()
    return SendOutcome(sent)
