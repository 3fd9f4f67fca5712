"""Behind HAProxy in TCP mode with ``send-proxy-v2``: the allow-list binds AE titles to the scanners' addresses.

Everything runs on loopback: HAProxy connects to the node from 127.0.0.2 (its ``source``), the
scanners connect to HAProxy from 127.0.0.1 (storescu) or 127.0.0.5 (pynetdicom's ``bind_address``).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs_node.db.models import Instance
from tests.conftest import make_series, storescu, wait_until
from tests.haproxy import HAPROXY, MISSING, HAProxy
from tests.reliability.support import NodeDb
from tests.reliability.wire import ABORT, associate_rq, proxy_v2, read_pdu

BALANCER = "127.0.0.2"  #: HAProxy's address as the node sees it
SCANNER_5 = "127.0.0.5"  #: a second scanner's address


def _balancer(folder: Path, backend_port: int) -> HAProxy:
    """HAProxy in TCP mode relaying to one node with PROXY v2, health checks (LOCAL headers) included."""
    return HAProxy(folder, "tcp", f"""frontend dicom
    bind 127.0.0.1:{{port}}
    default_backend receivers
backend receivers
    source {BALANCER}
    server node 127.0.0.1:{backend_port} send-proxy-v2 check inter 200ms check-send-proxy
""", timeout_s=60).start()


def _echo_from(source: str, port: int, calling_ae: str) -> bool:
    """Whether an association from ``source`` to ``port`` is accepted (then released)."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS_NODE", bind_address=(source, 0))
    established = assoc.is_established
    if established:
        assoc.release()
    return established


@pytest.fixture
def node_behind_haproxy(node_factory, tmp_path: Path) -> Iterator[tuple]:  # noqa: ANN001
    if not HAPROXY.exists():
        pytest.skip(MISSING)
    node = node_factory(node={
        "receive_processes": 2,
        "proxy_protocol": {"trusted": [BALANCER], "required": True},
        "allowed_callers": [{"ae_title": "CT_ONE", "host": "127.0.0.1"}, {"ae_title": "CT_FIVE", "host": SCANNER_5},
                            {"ae_title": "CT_BALANCED", "host": BALANCER}],
    }, logging={"level": "DEBUG"})
    balancer = _balancer(tmp_path / "haproxy", node.port)
    yield node, balancer
    balancer.stop()


def test_allow_list_sees_the_scanners_behind_haproxy(node_behind_haproxy, tmp_path: Path) -> None:  # noqa: ANN001
    node, balancer = node_behind_haproxy
    db = NodeDb(node.database_url)
    try:
        pushed = storescu(balancer.port, make_series(tmp_path / "one", slices=3), calling_ae="CT_ONE")
        assert pushed.returncode == 0, pushed.stderr
        wait_until(lambda: db.count(Instance) == 3, timeout=10)
        as_balancer = storescu(balancer.port, make_series(tmp_path / "lb", slices=2, seed=1), calling_ae="CT_BALANCED")
        assert as_balancer.returncode != 0 and "Calling AE Title Not Recognized" in as_balancer.stderr, \
            "the TCP peer is HAProxy at 127.0.0.2, but the caller is storescu at 127.0.0.1"
        assert _echo_from(SCANNER_5, balancer.port, "CT_FIVE")
        assert not _echo_from(SCANNER_5, balancer.port, "CT_ONE")
        assert db.count(Instance) == 3
    finally:
        db.close()
    # the node logs an association after the caller has its answer: wait for the last one
    wait_until(lambda: f"peer={SCANNER_5} calling_ae=CT_ONE" in node.output(), timeout=10)
    log = node.output()
    assert re.search(r"event=association_accepted assoc=\d+ peer=127\.0\.0\.1 calling_ae=CT_ONE", log)
    assert f"peer={SCANNER_5} calling_ae=CT_FIVE" in log and f"peer={SCANNER_5} calling_ae=CT_ONE" in log
    assert "peer=127.0.0.1 calling_ae=CT_BALANCED called_ae=PACS_NODE reason=CALLING_AE_NOT_RECOGNIZED" in log
    assert re.search(rf"event=proxy_header assoc=\d+ balancer={BALANCER} command=LOCAL", log), "HAProxy's health checks"
    assert "event=proxy_header_invalid" not in log, "HAProxy's health checks (LOCAL headers) are served quietly"


def test_no_header_from_the_balancer_and_forged_headers_from_others(node_behind_haproxy) -> None:  # noqa: ANN001
    node, _ = node_behind_haproxy
    assert not _echo_from(BALANCER, node.port, "CT_BALANCED"), "a balancer's connection must start with a header"
    wait_until(lambda: "event=proxy_header_invalid" in node.output())
    assert f"peer={BALANCER} reason='no PROXY header from a balancer'" in node.output()
    assert _echo_from("127.0.0.1", node.port, "CT_ONE"), "a scanner that is not a balancer is served as itself"
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as forger:
        forger.sendall(proxy_v2(SCANNER_5) + associate_rq(calling_ae="CT_FIVE"))
        assert read_pdu(forger)[0] == ABORT, "a header from a peer that is not a balancer is not believed"
    wait_until(lambda: "reason=unexpected first PDU" in node.output())
    assert node.output().count("event=proxy_header_invalid") == 1
