"""The storage SCP behind a balancer, in process: the allow-list sees the PROXY header's caller, with and without TLS."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator

import pytest

from pacs_node.config import AllowedCaller, DestinationTLS, NodeTLS
from pacs_node.monitoring.metrics import NodeMetrics
from pacs_node.receive.policy import AssociationPolicy
from pacs_node.receive.proxy_protocol import ProxyGate
from pacs_node.receive.server import AssociationSlots, StorageServer, open_listener
from pacs_node.tls import client_context, server_context
from tests.conftest import wait_until
from tests.reliability.wire import ABORT, ASSOCIATE_AC, ASSOCIATE_RJ, associate_rq, proxy_v2, read_pdu
from tests.tls_certs import Pki, make_pki

SCANNER = "192.0.2.10"  # the caller the balancer names; the TCP peer is always 127.0.0.1 here
POLICY = AssociationPolicy("PACS_NODE", (AllowedCaller(ae_title="CT_1", host=SCANNER),
                                         AllowedCaller(ae_title="CT_LB", host="127.0.0.1")))


def _server(gate: ProxyGate, tls: ssl.SSLContext | None = None) -> StorageServer:
    return StorageServer(open_listener("127.0.0.1", 0), POLICY, sink=None,  # type: ignore[arg-type]
                         slots=AssociationSlots(4), acse_timeout_s=5, tls=tls, metrics=NodeMetrics(), proxy=gate)


@pytest.fixture
def balanced() -> Iterator[StorageServer]:
    """A storage SCP that trusts 127.0.0.1 as its balancer."""
    scp = _server(ProxyGate(["127.0.0.1/32"]))
    scp.start()
    yield scp
    scp.stop(grace_s=0)


def _answer(port: int, data: bytes, then_close: bool = False) -> int | None:
    """The type of the PDU the server answers ``data`` with; ``None`` when it closes instead."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if then_close:
            sock.shutdown(socket.SHUT_WR)
        try:
            return read_pdu(sock)[0]
        except ConnectionError:
            return None


def _rejected(server: StorageServer, reason: str) -> float:
    return server.metrics.associations_rejected.labels(reason)._value.get()  # type: ignore[union-attr]


def test_the_allow_list_sees_the_caller_named_by_the_balancer(balanced: StorageServer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert _answer(balanced.port, proxy_v2(SCANNER) + associate_rq(calling_ae="CT_1")) == ASSOCIATE_AC
    assert _answer(balanced.port, proxy_v2("198.51.100.7") + associate_rq(calling_ae="CT_1")) == ASSOCIATE_RJ
    assert _answer(balanced.port, proxy_v2(SCANNER) + associate_rq(calling_ae="CT_LB")) == ASSOCIATE_RJ, \
        "the balancer's own address is not the caller's"
    assert _answer(balanced.port, b"PROXY TCP4 192.0.2.10 127.0.0.1 1 2\r\n" + associate_rq(calling_ae="CT_1")) \
        == ASSOCIATE_AC
    wait_until(lambda: "peer=198.51.100.7 calling_ae=CT_1" in caplog.text)
    assert f"event=association_accepted assoc=1 peer={SCANNER} calling_ae=CT_1" in caplog.text


def test_local_health_checks_are_the_balancer_itself(balanced: StorageServer) -> None:
    assert _answer(balanced.port, proxy_v2(None) + associate_rq(calling_ae="CT_LB")) == ASSOCIATE_AC
    assert _answer(balanced.port, proxy_v2(None) + associate_rq(calling_ae="CT_1")) == ASSOCIATE_RJ


def test_a_balancer_without_header_or_with_a_broken_one_is_closed(balanced: StorageServer,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    assert _answer(balanced.port, associate_rq(calling_ae="CT_LB")) is None
    assert _answer(balanced.port, proxy_v2(SCANNER)[:-3], then_close=True) is None  # truncated
    with socket.create_connection(("127.0.0.1", balanced.port)):
        pass  # a TCP health check: closed quietly
    wait_until(lambda: _rejected(balanced, "proxy_header_invalid") == 2, timeout=10)
    assert caplog.text.count("event=proxy_header_invalid") == 2
    assert "reason='no PROXY header from a balancer'" in caplog.text
    assert sum(balanced.slots.counts.get_obj()) == 0


def test_a_peer_that_is_not_a_balancer_is_not_believed(caplog: pytest.LogCaptureFixture) -> None:
    server = _server(ProxyGate(["10.0.0.0/8"]))
    server.start()
    try:
        assert _answer(server.port, proxy_v2(SCANNER) + associate_rq(calling_ae="CT_1")) == ABORT
        assert _answer(server.port, associate_rq(calling_ae="CT_LB")) == ASSOCIATE_AC  # itself, from 127.0.0.1
        wait_until(lambda: "reason=unexpected first PDU" in caplog.text)
        assert "proxy_header_invalid" not in caplog.text
    finally:
        server.stop(grace_s=0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_header_comes_before_the_tls_handshake(pki: Pki) -> None:
    tls = server_context(NodeTLS(cert_file=pki.node.cert, key_file=pki.node.key, ca_file=pki.ca))
    server = _server(ProxyGate(["127.0.0.1/32"]), tls)
    server.start()
    client = client_context(DestinationTLS(ca_file=pki.ca, cert_file=pki.scanner.cert, key_file=pki.scanner.key))
    try:
        for source, calling, expected in ((SCANNER, "CT_1", ASSOCIATE_AC), ("198.51.100.7", "CT_1", ASSOCIATE_RJ)):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
                raw.sendall(proxy_v2(source))
                with client.wrap_socket(raw, server_hostname="127.0.0.1") as secure:
                    secure.sendall(associate_rq(calling_ae=calling))
                    assert read_pdu(secure)[0] == expected
    finally:
        server.stop(grace_s=0)
