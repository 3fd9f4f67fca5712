"""C-ECHO as an SCU (pynetdicom), to check that a DICOM node answers."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs_node.send._tcp import NO_DELAY
from pacs_node.tls import client_tls_args, tls_failure

if TYPE_CHECKING:
    from pacs_node.config import DestinationTLS

_TARGET = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d{1,5})$")


class EchoError(Exception):
    """The node did not answer the C-ECHO with success."""


def parse_target(target: str) -> tuple[str, str, int]:
    """Split ``AE@HOST:PORT`` (IPv6 hosts in brackets) into its parts."""
    match = _TARGET.match(target)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"{target!r} is not AE@HOST:PORT")
    return match["ae"], match["host"].strip("[]"), int(match["port"])



def c_echo(
    ae_title: str, host: str, port: int, calling_ae: str = "PACS_NODE", timeout_s: float = 10.0,
    tls: DestinationTLS | None = None,
) -> float:
    """Send one C-ECHO (over DICOM TLS with ``tls``); returns the round-trip seconds, or raises
    :class:`EchoError`."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    tls_args = client_tls_args(tls, host)
    started = time.monotonic()
    assoc = ae.associate(host, port, ae_title=ae_title, evt_handlers=NO_DELAY, tls_args=tls_args)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise EchoError("association rejected")
        if failure := tls_failure(tls_args):
            raise EchoError(f"TLS failed: {failure}")
        raise EchoError("no association (connection refused, timed out or aborted)")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    if not status or status.Status != 0x0000:
        code = f"0x{status.Status:04X}" if status else "none (timeout)"
        raise EchoError(f"status {code}")
    return time.monotonic() - started
