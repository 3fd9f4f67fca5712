"""The PROXY protocol reader: v2 and v1 headers read exactly, malformed ones refused, and whom the gate believes."""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator

import pytest

from pacs_node.receive.proxy_protocol import (
    V2_SIGNATURE, InvalidProxyHeader, NothingSent, ProxyGate, ProxyHeader, decode_v1, read_proxy_header,
)
from tests.reliability.wire import proxy_v2

REST = b"\x01\x00rest of the stream"  # what follows the header (an A-ASSOCIATE-RQ starts with 0x01)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _read(pair: tuple[socket.socket, socket.socket], data: bytes, close: bool = False,
          timeout_s: float = 2.0) -> ProxyHeader | None:
    ours, theirs = pair
    theirs.sendall(data)
    if close:
        theirs.shutdown(socket.SHUT_WR)
    return read_proxy_header(ours, timeout_s)


def _rest(pair: tuple[socket.socket, socket.socket]) -> bytes:
    pair[0].settimeout(2)
    return pair[0].recv(len(REST) + 10)


def test_v2_tcp4_names_the_caller_and_leaves_what_follows(pair) -> None:  # noqa: ANN001
    header = _read(pair, proxy_v2("192.0.2.10", "10.0.0.1") + REST)
    assert header == ProxyHeader(2, "PROXY", ("192.0.2.10", 40000), ("10.0.0.1", 11112))
    assert _rest(pair) == REST


def test_v2_tcp6_with_tlvs_and_ipv4_mapped_source(pair) -> None:  # noqa: ANN001
    tlvs = b"\x04" + struct.pack(">H", 5) + b"noop!"  # PP2_TYPE_NOOP, skipped
    assert _read(pair, proxy_v2("2001:db8::7", "2001:db8::1", tlvs=tlvs) + REST).source == ("2001:db8::7", 40000)
    assert _rest(pair) == REST
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(proxy_v2("::ffff:192.0.2.44", "::1"))
        assert read_proxy_header(ours, 2.0).source == ("192.0.2.44", 40000)  # type: ignore[union-attr]


def test_v2_local_is_the_balancers_own_connection(pair) -> None:  # noqa: ANN001
    assert _read(pair, proxy_v2(None) + REST) == ProxyHeader(2, "LOCAL")
    assert _rest(pair) == REST


def test_v2_unspec_family_names_no_caller(pair) -> None:  # noqa: ANN001
    assert _read(pair, V2_SIGNATURE + bytes([0x21, 0x00, 0, 0]) + REST) == ProxyHeader(2)
    assert _rest(pair) == REST


@pytest.mark.parametrize(("data", "reason"), [
    (b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + bytes(12), "not a PROXY v2 signature"),
    (V2_SIGNATURE + bytes([0x11, 0x11, 0, 12]) + bytes(12), "version 1"),
    (V2_SIGNATURE + bytes([0x22, 0x11, 0, 12]) + bytes(12), "unknown command 2"),
    (V2_SIGNATURE + bytes([0x21, 0x12, 0, 12]) + bytes(12), "transport 2, not a TCP stream"),
    (V2_SIGNATURE + bytes([0x21, 0x41, 0, 12]) + bytes(12), "unknown address family 4"),
    (V2_SIGNATURE + bytes([0x21, 0x21, 0, 12]) + bytes(12), "12 bytes, too short for TCP6"),
    (V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack(">H", 5000), "5000 bytes (at most 4096)"),
])
def test_malformed_v2_headers_are_refused(pair, data: bytes, reason: str) -> None:  # noqa: ANN001
    with pytest.raises(InvalidProxyHeader, match=reason.replace("(", r"\(").replace(")", r"\)")):
        _read(pair, data)


def test_truncated_headers_are_refused(pair) -> None:  # noqa: ANN001
    with pytest.raises(InvalidProxyHeader, match="truncated"):
        _read(pair, proxy_v2("192.0.2.10")[:20], close=True)


def test_a_stalled_header_times_out(pair) -> None:  # noqa: ANN001
    with pytest.raises(InvalidProxyHeader, match="ACSE timeout"):
        _read(pair, V2_SIGNATURE[:8], timeout_s=0.3)


def test_v1_text_headers(pair) -> None:  # noqa: ANN001
    header = _read(pair, b"PROXY TCP4 192.0.2.10 10.0.0.1 40000 11112\r\n" + REST)
    assert header == ProxyHeader(1, "PROXY", ("192.0.2.10", 40000), ("10.0.0.1", 11112))
    assert _rest(pair) == REST
    assert decode_v1(b"PROXY TCP6 2001:db8::7 2001:db8::1 0 11112\r\n").source == ("2001:db8::7", 0)
    assert decode_v1(b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n") == ProxyHeader(1)


@pytest.mark.parametrize(("line", "reason"), [
    (b"PROXY TCP4 192.0.2.10 10.0.0.1 040000 11112\r\n", "port '040000'"),
    (b"PROXY TCP4 192.0.2.10 10.0.0.1 70000 11112\r\n", "port '70000'"),
    (b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "not TCP4"),
    (b"PROXY TCP4 192.0.2.300 10.0.0.1 1 2\r\n", "invalid address"),
    (b"PROXY UDP4 192.0.2.1 10.0.0.1 1 2\r\n", "TCP4|TCP6|UNKNOWN"),
    (b"PROXY TCP4 192.0.2.1  10.0.0.1 1 2\r\n", "TCP4|TCP6|UNKNOWN"),
])
def test_malformed_v1_lines_are_refused(line: bytes, reason: str) -> None:
    with pytest.raises(InvalidProxyHeader, match=reason.replace("|", r"\|")):
        decode_v1(line)


def test_v1_too_long_or_not_proxy(pair) -> None:  # noqa: ANN001
    with pytest.raises(InvalidProxyHeader, match="within 107 bytes"):
        _read(pair, b"PROXY TCP4 " + b"1" * 200)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"POST / HTTP/1.1\r\n")
        with pytest.raises(InvalidProxyHeader, match="not a PROXY v1 line"):
            read_proxy_header(ours, 2.0)


def test_no_header_consumes_nothing_and_silence_is_not_a_header(pair) -> None:  # noqa: ANN001
    assert _read(pair, REST) is None
    assert _rest(pair) == REST
    pair[1].shutdown(socket.SHUT_WR)
    with pytest.raises(NothingSent, match="closed"):
        read_proxy_header(pair[0], 2.0)


class _Counted:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def association_rejected(self, reason: str) -> None:
        self.reasons.append(reason)


def test_gate_trusts_only_listed_balancers() -> None:
    gate = ProxyGate(["127.0.0.2/32", "10.0.0.0/8", "fd00::/64"])
    assert [gate.trusts(h) for h in ("127.0.0.2", "10.200.1.1", "fd00::9", "127.0.0.1", "fd01::1", "name")] == [
        True, True, True, False, False, False]


def test_gate_believes_balancers_only(pair, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    ours, theirs = pair
    forged = proxy_v2("192.0.2.10") + REST
    theirs.sendall(forged)
    gate = ProxyGate(["10.0.0.0/8"])
    assert gate.caller(ours, "127.0.0.1", 1, 2.0) == "127.0.0.1"  # not a balancer: served as itself
    assert ours.recv(len(forged)) == forged  # and its forged header is left for DICOM to refuse
    theirs.sendall(forged)
    assert ProxyGate(["127.0.0.1/32"]).caller(ours, "127.0.0.1", 2, 2.0) == "192.0.2.10"
    assert ours.gettimeout() == 2.0
    assert "proxy_header_invalid" not in caplog.text


def test_gate_refuses_a_balancer_without_header_when_required(pair, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    ours, theirs = pair
    theirs.sendall(REST)
    metrics = _Counted()
    with caplog.at_level(logging.WARNING):
        assert ProxyGate(["127.0.0.1/32"]).caller(ours, "127.0.0.1", 7, 2.0, metrics) is None  # type: ignore[arg-type]
    assert "event=proxy_header_invalid assoc=7 peer=127.0.0.1 reason='no PROXY header from a balancer'" in caplog.text
    assert metrics.reasons == ["proxy_header_invalid"]
    assert ProxyGate(["127.0.0.1/32"], required=False).caller(ours, "127.0.0.1", 8, 2.0) == "127.0.0.1"
    assert ours.recv(len(REST)) == REST  # served as the balancer, nothing consumed
    theirs.sendall(proxy_v2(None))  # LOCAL: the balancer itself
    assert ProxyGate(["127.0.0.1/32"]).caller(ours, "127.0.0.1", 9, 2.0) == "127.0.0.1"


def test_gate_counts_malformed_headers_but_not_port_checks(pair, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    ours, theirs = pair
    metrics = _Counted()
    gate = ProxyGate(["127.0.0.1/32"])
    theirs.sendall(V2_SIGNATURE + bytes([0x21, 0x11, 0, 4]) + bytes(4))
    assert gate.caller(ours, "127.0.0.1", 3, 2.0, metrics) is None  # type: ignore[arg-type]
    assert "reason='PROXY v2 address block of 4 bytes, too short for TCP4'" in caplog.text
    theirs.close()
    assert gate.caller(ours, "127.0.0.1", 4, 2.0, metrics) is None  # type: ignore[arg-type]
    assert metrics.reasons == ["proxy_header_invalid"]
    assert caplog.text.count("event=proxy_header_invalid") == 1
