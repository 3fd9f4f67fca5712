"""The PROXY protocol (v2 binary, v1 text) from TCP load balancers in front of the storage SCP.

A balancer in TCP mode (HAProxy ``send-proxy-v2``) hides the caller's address; it opens each
connection to us with a header that names the caller.  Only connections from configured
balancer addresses are read for a header (anyone else could forge one) and the header is
read exactly, so what follows it (the A-ASSOCIATE-RQ, or a TLS ClientHello) stays on the
socket.  Specification: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from pacs_node.monitoring.metrics import NodeMetrics

log = logging.getLogger(__name__)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
#: The longest v1 line, CRLF included (the specification's own limit).
V1_MAX_BYTES = 107
#: The largest v2 address block, TLVs included, that we read (HAProxy's are well under 300 bytes).
V2_MAX_BLOCK_BYTES = 4096
_ADDRESS_BYTES = {1: 4, 2: 16}  # v2 address family -> bytes per address (INET, INET6)
_AF_UNSPEC, _AF_UNIX, _STREAM = 0, 3, 1


class InvalidProxyHeader(ValueError):
    """A malformed, truncated or unsupported PROXY header: the connection is closed."""


class NothingSent(Exception):
    """The peer closed, or sent nothing in time, before a first byte (a port check)."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a PROXY header says about the connection."""

    version: Literal[1, 2]
    #: LOCAL: the balancer's own connection (a health check), not relayed for a caller.
    command: Literal["PROXY", "LOCAL"] = "PROXY"
    #: The caller's (address, port); ``None`` when the header names none (LOCAL, UNKNOWN, UNSPEC).
    source: tuple[str, int] | None = None
    #: The address and port the caller connected to on the balancer.
    destination: tuple[str, int] | None = None


def _host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def v2_block_length(fixed: bytes) -> int:
    """Length of the address block after the 16 fixed bytes of a v2 header; ``InvalidProxyHeader`` if bad."""
    if fixed[:12] != V2_SIGNATURE:
        raise InvalidProxyHeader("not a PROXY v2 signature")
    if fixed[12] >> 4 != 2:
        raise InvalidProxyHeader(f"PROXY v2 header with version {fixed[12] >> 4}")
    if fixed[12] & 0x0F not in (0, 1):
        raise InvalidProxyHeader(f"PROXY v2 header with unknown command {fixed[12] & 0x0F}")
    (length,) = struct.unpack(">H", fixed[14:16])
    if length > V2_MAX_BLOCK_BYTES:
        raise InvalidProxyHeader(f"PROXY v2 address block of {length} bytes (at most {V2_MAX_BLOCK_BYTES})")
    return length


def decode_v2(fixed: bytes, block: bytes) -> ProxyHeader:
    """A v2 header from its 16 fixed bytes and its address block (TLVs are ignored)."""
    v2_block_length(fixed)
    if fixed[12] & 0x0F == 0:
        return ProxyHeader(2, "LOCAL")
    family, transport = fixed[13] >> 4, fixed[13] & 0x0F
    if family in (_AF_UNSPEC, _AF_UNIX):  # no IP address to serve the caller as: the connection's own
        return ProxyHeader(2)
    if family not in _ADDRESS_BYTES:
        raise InvalidProxyHeader(f"PROXY v2 header with unknown address family {family}")
    if transport != _STREAM:
        raise InvalidProxyHeader(f"PROXY v2 header for transport {transport}, not a TCP stream")
    size = _ADDRESS_BYTES[family]
    if len(block) < 2 * size + 4:
        protocol = "TCP4" if size == 4 else "TCP6"
        raise InvalidProxyHeader(f"PROXY v2 address block of {len(block)} bytes, too short for {protocol}")
    source, destination = ipaddress.ip_address(block[:size]), ipaddress.ip_address(block[size:2 * size])
    source_port, destination_port = struct.unpack(">HH", block[2 * size:2 * size + 4])
    return ProxyHeader(2, "PROXY", (_host(source), source_port), (_host(destination), destination_port))


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or (text != "0" and text.startswith("0")) or int(text) > 65535:
        raise InvalidProxyHeader(f"PROXY v1 header with port {text!r}")
    return int(text)


def decode_v1(line: bytes) -> ProxyHeader:
    """A v1 header from its line, CRLF included: ``PROXY TCP4 source destination sport dport``."""
    if not line.startswith(V1_PREFIX) or not line.endswith(b"\r\n") or len(line) > V1_MAX_BYTES:
        raise InvalidProxyHeader("not a PROXY v1 line")
    fields = line[:-2].decode("ascii", "replace").split(" ")
    if fields[1] == "UNKNOWN":
        return ProxyHeader(1)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise InvalidProxyHeader("PROXY v1 line is not 'PROXY TCP4|TCP6|UNKNOWN source destination ports'")
    try:
        source, destination = ipaddress.ip_address(fields[2]), ipaddress.ip_address(fields[3])
    except ValueError:
        raise InvalidProxyHeader("PROXY v1 line with an invalid address") from None
    if source.version != int(fields[1][3]) or destination.version != source.version:
        raise InvalidProxyHeader(f"PROXY v1 line with addresses that are not {fields[1]}")
    return ProxyHeader(1, "PROXY", (_host(source), _v1_port(fields[4])), (_host(destination), _v1_port(fields[5])))


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise InvalidProxyHeader("PROXY header incomplete when the ACSE timeout ran out")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            raise InvalidProxyHeader("PROXY header incomplete when the ACSE timeout ran out") from None
        if not chunk:
            raise InvalidProxyHeader("PROXY header truncated: the connection closed in the middle of it")
        data += chunk
    return bytes(data)


def read_proxy_header(sock: socket.socket, timeout_s: float) -> ProxyHeader | None:
    """Read a PROXY header (v2 or v1) from ``sock`` within ``timeout_s``, and not a byte more.

    Returns ``None``, consuming nothing, when the first byte starts neither version.
    Raises :class:`NothingSent` when no byte came, :class:`InvalidProxyHeader` when the
    header is malformed or incomplete, ``OSError`` when the connection fails.  Leaves the
    socket's timeout changed.
    """
    deadline = time.monotonic() + timeout_s
    sock.settimeout(timeout_s)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except TimeoutError:
        raise NothingSent("nothing sent before the ACSE timeout") from None
    if not first:
        raise NothingSent("closed without sending a byte")
    if first == V2_SIGNATURE[:1]:
        fixed = _recv_exact(sock, 16, deadline)
        return decode_v2(fixed, _recv_exact(sock, v2_block_length(fixed), deadline))
    if first != V1_PREFIX[:1]:
        return None
    line = b""
    while not line.endswith(b"\r\n"):
        if len(line) >= V1_MAX_BYTES or (len(line) <= len(V1_PREFIX) and not V1_PREFIX.startswith(line)):
            raise InvalidProxyHeader(f"not a PROXY v1 line within {V1_MAX_BYTES} bytes")
        line += _recv_exact(sock, 1, deadline)
    return decode_v1(line)


class ProxyGate:
    """Which peers are load balancers, and which caller a connection from one stands for.

    ``required``: a balancer's connection without a header is closed (else it is served as
    the balancer itself).  Peers that are not balancers are always served as themselves.
    """

    def __init__(self, trusted: Iterable[str], required: bool = True) -> None:
        self.networks = tuple(ipaddress.ip_network(network) for network in trusted)
        self.required = required

    def trusts(self, host: str) -> bool:
        """``True`` when ``host`` (an IP address) is one of the balancers."""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def caller(self, sock: socket.socket, peer: str, serial: int, timeout_s: float,
               metrics: NodeMetrics | None = None) -> str | None:
        """The address to serve the connection from ``peer`` as; ``None``: close it.

        A refusal is logged (``event=proxy_header_invalid``) and counted; ``sock`` is left
        with ``timeout_s`` as its timeout.
        """
        if not self.trusts(peer):
            return peer
        try:
            header = read_proxy_header(sock, timeout_s)
        except NothingSent as exc:
            log.debug("event=connection_closed_before_proxy_header assoc=%d peer=%s reason=%r", serial, peer, str(exc))
            return None
        except InvalidProxyHeader as exc:
            return self._refuse(peer, serial, str(exc), metrics)
        except OSError as exc:
            log.debug("event=connection_lost_before_proxy_header assoc=%d peer=%s error=%s",
                      serial, peer, type(exc).__name__)
            return None
        finally:
            sock.settimeout(timeout_s)
        if header is None:
            return self._refuse(peer, serial, "no PROXY header from a balancer", metrics) if self.required else peer
        if header.source is None:  # LOCAL (a health check) or no address: the balancer's own connection
            log.debug("event=proxy_header assoc=%d balancer=%s command=%s", serial, peer, header.command)
            return peer
        log.debug("event=proxy_header assoc=%d balancer=%s peer=%s version=%d", serial, peer, header.source[0],
                  header.version)
        return header.source[0]

    @staticmethod
    def _refuse(peer: str, serial: int, reason: str, metrics: NodeMetrics | None) -> None:
        log.warning("event=proxy_header_invalid assoc=%d peer=%s reason=%r", serial, peer, reason)
        if metrics is not None:
            metrics.association_rejected("proxy_header_invalid")
        return None
