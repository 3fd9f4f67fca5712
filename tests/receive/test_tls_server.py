"""The storage SCP on TLS sockets, in process: C-ECHO, refused handshakes, shutdown of idle TLS associations."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs_node.config import DestinationTLS, NodeTLS
from pacs_node.receive.policy import AssociationPolicy
from pacs_node.receive.server import AssociationSlots, StorageServer, open_listener
from pacs_node.send.echo import EchoError, c_echo
from pacs_node.tls import client_tls_args, server_context
from tests.conftest import wait_until
from tests.tls_certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(pki: Pki) -> Iterator[StorageServer]:
    tls = server_context(NodeTLS(cert_file=pki.node.cert, key_file=pki.node.key, ca_file=pki.ca))
    scp = StorageServer(open_listener("127.0.0.1", 0), AssociationPolicy("PACS_NODE"), sink=None,  # type: ignore[arg-type]
                        slots=AssociationSlots(4), acse_timeout_s=5, tls=tls)
    scp.start()
    yield scp
    scp.stop(grace_s=0)


def _client(pki: Pki, ca: Path | None = None) -> DestinationTLS:
    return DestinationTLS(ca_file=ca or pki.ca, cert_file=pki.scanner.cert, key_file=pki.scanner.key)


def test_echo_over_tls_and_refused_handshakes_take_no_association_slot(server: StorageServer, pki: Pki,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    assert c_echo("PACS_NODE", "127.0.0.1", server.port, timeout_s=5, tls=_client(pki)) > 0
    with pytest.raises(EchoError, match="no association"):
        c_echo("PACS_NODE", "127.0.0.1", server.port, timeout_s=5)  # plain DICOM
    with pytest.raises(EchoError, match="TLS failed: certificate verify failed"):
        c_echo("PACS_NODE", "127.0.0.1", server.port, timeout_s=5, tls=_client(pki, ca=pki.rogue_ca))
    wait_until(lambda: caplog.text.count("event=tls_handshake_failed") == 2)
    assert "reason='plain DICOM, not TLS'" in caplog.text and "reason='tlsv1 alert unknown ca'" in caplog.text
    assert sum(server.slots.counts.get_obj()) == 0
    assert c_echo("PACS_NODE", "127.0.0.1", server.port, timeout_s=5, tls=_client(pki)) > 0


def test_port_check_is_not_a_warning(server: StorageServer, caplog: pytest.LogCaptureFixture) -> None:
    with socket.create_connection(("127.0.0.1", server.port)):
        pass
    time.sleep(0.3)
    assert "event=tls_handshake_failed" not in caplog.text


def test_stop_aborts_an_idle_tls_association(server: StorageServer, pki: Pki) -> None:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS_NODE", tls_args=client_tls_args(_client(pki), "127.0.0.1"))
    assert assoc.is_established
    wait_until(lambda: server.active_associations() == 1)
    started = time.monotonic()
    server.stop(grace_s=0.2)
    assert time.monotonic() - started < 5
    assert server.active_associations() == 0
    wait_until(lambda: not assoc.is_established, timeout=10)
