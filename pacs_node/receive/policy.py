"""Association policy: which peers may associate with us, and why not.

Kept apart from the protocol code so that the rules IT configures are in one small
place and can be tested without a network.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass

from pacs_node.config import AllowedCaller


class RejectReason(enum.Enum):
    """A-ASSOCIATE-RJ (result, source, reason) triples of PS3.8 9.3.4."""

    CALLING_AE_NOT_RECOGNIZED = (1, 1, 3)
    CALLED_AE_NOT_RECOGNIZED = (1, 1, 7)
    NO_REASON = (1, 1, 1)
    LOCAL_LIMIT_EXCEEDED = (2, 3, 2)
    TEMPORARY_CONGESTION = (2, 3, 1)

    @property
    def result(self) -> int:
        return self.value[0]

    @property
    def source(self) -> int:
        return self.value[1]

    @property
    def diagnostic(self) -> int:
        return self.value[2]


def _addresses(host: str) -> set[str]:
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


@dataclass(frozen=True)
class AssociationPolicy:
    """Who may associate: our AE title and an optional calling-AE allow-list."""

    ae_title: str
    allowed_callers: tuple[AllowedCaller, ...] = ()
    check_called_ae: bool = True

    def check(self, calling_ae: str, called_ae: str, peer_host: str) -> RejectReason | None:
        """``None`` when the association may proceed, else why it is rejected.

        ``calling_ae`` and ``called_ae`` are compared without padding; when a caller
        is bound to a host, the peer's address must be one of that host's addresses.
        """
        if self.check_called_ae and called_ae.strip() != self.ae_title:
            return RejectReason.CALLED_AE_NOT_RECOGNIZED
        if not self.allowed_callers:
            return None
        calling = calling_ae.strip()
        peer = str(ipaddress.ip_address(peer_host.split("%", 1)[0])) if peer_host else ""
        for caller in self.allowed_callers:
            if caller.ae_title != calling:
                continue
            if caller.host is None or peer in _addresses(caller.host):
                return None
        return RejectReason.CALLING_AE_NOT_RECOGNIZED
