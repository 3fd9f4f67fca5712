"""DICOM TLS for real: DCMTK scanners over TLS, clients that must be refused, reports to a TLS PACS.

Certificates are made at test time with the ``openssl`` CLI (``tests/tls_certs.py``), the way
docs/tls.md tells a hospital to make them.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select

from pacs_node.config import DestinationTLS, load_settings
from pacs_node.db.deliveries import queue_deliveries, record_objects
from pacs_node.db.models import (
    Delivery,
    DeliveryState,
    Instance,
    Job,
    JobState,
    ObjectKind,
)
from pacs_node.receive.spool import Spool
from pacs_node.report.identity import ObjectIdentity
from pacs_node.report.sr import AlgorithmInfo, DeviceInfo, ReportOutcome, build_report
from pacs_node.send.echo import EchoError, c_echo
from tests.conftest import (
    DCMTK_ENV,
    ECHOSCU,
    RunningNode,
    free_port,
    make_series,
    storescu,
    wait_until,
)
from tests.orthanc import Orthanc
from tests.report import findings, write_series
from tests.tls_certs import Identity, Pki, make_pki

pytestmark = pytest.mark.integration

AREA = "Access"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_node(node_factory, pki: Pki, **node: object) -> RunningNode:
    tls = {"cert_file": pki.node.cert, "key_file": pki.node.key, "ca_file": pki.ca, "require_client_cert": True}
    return node_factory(node={"tls": tls, **node})


def _tls(identity: Identity | None, ca: Path) -> list[str]:
    """storescu options: TLS with a client certificate (anonymous TLS without), verifying the node with ``ca``."""
    client = ["+tls", str(identity.key), str(identity.cert)] if identity else ["+tla"]
    return [*client, "+cf", str(ca)]


def _stored(node: RunningNode, series: list[Path]) -> tuple[int, int]:
    """(rows, files) of ``series`` in the node."""
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in series]
    engine = create_engine(node.database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(Instance.path).where(Instance.sop_instance_uid.in_(uids))).scalars().all()
    engine.dispose()
    return len(rows), sum((node.spool / path).is_file() for path in rows)


def _warnings(node: RunningNode, event: str) -> list[str]:
    return [line for line in node.output().splitlines() if f"event={event}" in line and "level=WARNING" in line]


def _tls_pids(node: RunningNode) -> set[str]:
    """The receiver processes that completed a TLS handshake."""
    return set(re.findall(r"event=tls_established assoc=\d+ pid=(\d+)", node.output()))


def test_scanner_with_trusted_certificate_stores_over_tls(node_factory, pki: Pki, tmp_path: Path,
                                                          record_outcome) -> None:
    node = _tls_node(node_factory, pki, receive_processes=2)  # the extra process builds its own context
    wait_until(lambda: "event=receiver_started process=1" in node.output(), timeout=30)
    series = make_series(tmp_path / "ct", slices=6, size=32)
    pushed = storescu(node.port, series[0].parent, extra=_tls(pki.scanner, pki.ca))
    assert pushed.returncode == 0, pushed.stderr
    assert _stored(node, series) == (6, 6)
    echoes = 0
    while len(_tls_pids(node)) < 2 and echoes < 20:  # the kernel hands each connection to one of the processes
        echo = subprocess.run([ECHOSCU, *_tls(pki.scanner, pki.ca), "-aec", "PACS_NODE", "127.0.0.1", str(node.port)], check=False,
                              env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        echoes += 1
    assert len(_tls_pids(node)) == 2
    cli = subprocess.run(
        [sys.executable, "-m", "pacs_node", "echo", f"PACS_NODE@127.0.0.1:{node.port}", "--tls-ca", str(pki.ca),
         "--tls-cert", str(pki.scanner.cert), "--tls-key", str(pki.scanner.key)],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0 and "success" in cli.stdout, cli.stderr
    assert "version=TLSv1.3" in node.output() and "client_cert='CT_SCANNER_1'" in node.output()
    assert "event=receiver_died" not in node.output() and "Traceback" not in node.output()
    record_outcome(area=AREA, fault="scanner on the TLS port with a certificate from the hospital CA",
                   tried="storescu +tls (6 instances), echoscu +tls and pacs-node echo --tls-*; 2 receiver processes",
                   cases=6 + echoes + 1,
                   outcome="TLS 1.3; 6 of 6 instances stored (rows and files); every C-ECHO answered; "
                           "both receiver processes completed handshakes")


def test_plain_tcp_client_on_tls_port_is_refused_and_node_keeps_serving(node_factory, pki: Pki, tmp_path: Path,
                                                                        record_outcome) -> None:
    node = _tls_node(node_factory, pki)
    plain = make_series(tmp_path / "plain", slices=3, size=32)
    refused = storescu(node.port, plain[0].parent)
    assert refused.returncode != 0
    assert _stored(node, plain) == (0, 0)
    assert any("reason='plain DICOM, not TLS'" in line for line in _warnings(node, "tls_handshake_failed"))
    secure = make_series(tmp_path / "secure", slices=3, size=32)
    assert storescu(node.port, secure[0].parent, extra=_tls(pki.scanner, pki.ca)).returncode == 0
    assert _stored(node, secure) == (3, 3)
    record_outcome(area=AREA, fault="plain TCP client on the TLS port", tried="storescu without +tls, 3 instances",
                   cases=3, outcome="handshake refused, 0 stored, WARNING logged; TLS storescu then stored 3 of 3")


def test_client_without_certificate_is_refused_when_required(node_factory, pki: Pki, tmp_path: Path,
                                                             record_outcome) -> None:
    node = _tls_node(node_factory, pki)
    series = make_series(tmp_path / "ct", slices=3, size=32)
    refused = storescu(node.port, series[0].parent, extra=_tls(None, pki.ca))
    assert refused.returncode != 0
    assert _stored(node, series) == (0, 0)
    with pytest.raises(EchoError, match="TLS failed"):
        c_echo("PACS_NODE", "127.0.0.1", node.port, timeout_s=10, tls=DestinationTLS(ca_file=pki.ca))
    reasons = [line for line in _warnings(node, "tls_handshake_failed") if "peer did not return a certificate" in line]
    assert len(reasons) == 2
    record_outcome(area=AREA, fault="TLS client without a certificate (require_client_cert = true)",
                   tried="storescu +tla (anonymous TLS, 3 instances) and a pynetdicom C-ECHO without a certificate",
                   cases=2, outcome="both handshakes refused, 0 stored, WARNING 'peer did not return a certificate'")


def test_client_certificate_from_untrusted_ca_is_refused(node_factory, pki: Pki, tmp_path: Path,
                                                         record_outcome) -> None:
    node = _tls_node(node_factory, pki)
    series = make_series(tmp_path / "ct", slices=3, size=32)
    refused = storescu(node.port, series[0].parent, extra=_tls(pki.rogue, pki.ca))
    assert refused.returncode != 0
    assert _stored(node, series) == (0, 0)
    [line] = _warnings(node, "tls_handshake_failed")
    assert "reason='certificate verify failed: unable to get local issuer certificate'" in line
    assert "ROGUE_SCANNER" not in node.output()
    record_outcome(area=AREA, fault="client certificate signed by a CA the node does not trust",
                   tried="storescu +tls with a rogue CA's certificate, 3 instances", cases=3,
                   outcome="handshake refused (certificate verify failed), 0 stored")


def test_stalled_handshake_does_not_hold_up_other_scanners(node_factory, pki: Pki, tmp_path: Path,
                                                           record_outcome) -> None:
    acse_timeout_s = 6.0
    node = _tls_node(node_factory, pki, acse_timeout_s=acse_timeout_s)
    series = make_series(tmp_path / "ct", slices=3, size=32)
    with socket.create_connection(("127.0.0.1", node.port)) as stalled:
        stalled.sendall(b"\x16\x03\x01")  # the start of a TLS record, then nothing
        started = time.monotonic()
        pushed = storescu(node.port, series[0].parent, extra=_tls(pki.scanner, pki.ca))
        elapsed = time.monotonic() - started
        assert pushed.returncode == 0, pushed.stderr
        assert elapsed < acse_timeout_s, "the stalled handshake held up the accept loop"
        assert _stored(node, series) == (3, 3)
        wait_until(lambda: any("reason='timed out'" in line for line in _warnings(node, "tls_handshake_failed")),
                   timeout=acse_timeout_s + 10)
        assert stalled.recv(1) == b"", "the node closed the stalled connection"
    record_outcome(area=AREA, fault="client stalls in the middle of the TLS handshake",
                   tried="3 bytes of a TLS record then silence, while storescu +tls sends 3 instances", cases=3,
                   outcome=f"storescu served in {elapsed:.1f} s (3 of 3 stored); stalled connection closed after "
                           f"the {acse_timeout_s:.0f} s ACSE timeout")


def _tls_destination(name: str, pacs: Orthanc, ca: Path, client: Identity | None) -> dict:
    tls: dict[str, object] = {"ca_file": ca}
    if client is not None:
        tls |= {"cert_file": client.cert, "key_file": client.key}
    return {"name": name, "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port, "tls": tls}


def _deliveries(node: RunningNode) -> dict[str, tuple[DeliveryState, str | None]]:
    engine = create_engine(node.database_url)
    with engine.connect() as connection:
        rows = connection.execute(select(Delivery.destination, Delivery.state, Delivery.last_error)).all()
    engine.dispose()
    return {row.destination: (row.state, row.last_error) for row in rows}


def test_report_is_delivered_to_a_tls_pacs(node_factory, pki: Pki, tmp_path: Path, record_outcome) -> None:
    pacs = Orthanc(tmp_path / "orthanc", dicom_port=free_port(), http_port=free_port(),
                   tls=(pki.pacs.cert, pki.pacs.key, pki.ca))
    pacs.start()
    try:
        destinations = [
            _tls_destination("tls-pacs", pacs, pki.ca, pki.node),
            _tls_destination("wrong-ca", pacs, pki.rogue_ca, pki.node),
            _tls_destination("no-client-cert", pacs, pki.ca, None),
        ]
        sending = {"first_retry_s": 30, "jitter": 0, "poll_interval_s": 0.3, "timeout_s": 5}
        node = node_factory(destinations=destinations, sending=sending)
        series = write_series(tmp_path / "ct")
        assert storescu(node.port, series[0].parent).returncode == 0
        engine = create_engine(node.database_url)
        job = wait_until(lambda: _done_job(engine), timeout=30)
        source = [pydicom.dcmread(path) for path in series]
        sr = build_report(source, findings(), outcome=ReportOutcome.analysed(),
                          algorithm=AlgorithmInfo("pacs-node-test-detector", "0.0.1", synthetic_data=True),
                          device=DeviceInfo("pacs-node project", "pacs-node", "0.1.0", "test-node"),
                          identity=ObjectIdentity.fresh(901))
        spool = Spool(node.spool, node_name="test-writer")
        stored = spool.write_dataset(sr, spool.report_path(sr.StudyInstanceUID, sr.SOPInstanceUID))
        spool.close()
        record_objects(engine, job, [(ObjectKind.SR, sr.SOPClassUID, sr.SOPInstanceUID, stored.relative_path)])
        queue_deliveries(engine, job, load_settings(node.config).destinations)
        engine.dispose()

        def settled() -> bool:  # sent, or attempted once and back to pending with a reason
            return all(state == DeliveryState.SENT or (state == DeliveryState.PENDING and error)
                       for state, error in _deliveries(node).values())

        wait_until(settled, timeout=30)
        deliveries = _deliveries(node)
        assert deliveries["tls-pacs"][0] == DeliveryState.SENT
        assert [i["SOPInstanceUID"] for i in pacs.instances()] == [sr.SOPInstanceUID]
        assert "TLS failed: certificate verify failed" in (deliveries["wrong-ca"][1] or "")
        assert "TLS failed" in (deliveries["no-client-cert"][1] or "")
        assert all(deliveries[name][0] == DeliveryState.PENDING for name in ("wrong-ca", "no-client-cert"))
    finally:
        pacs.stop()
    record_outcome(area=AREA, fault="destination PACS speaks DICOM TLS only (Orthanc, client certificate required)",
                   tried="one SR to three destinations: right CA + our certificate, wrong CA, no client certificate",
                   cases=3, outcome="SR stored once over TLS; the other two pending for retry with the TLS reason "
                                    f"({deliveries['wrong-ca'][1]!r})")


def _done_job(engine) -> int | None:
    with engine.connect() as connection:
        return connection.scalar(select(Job.id).where(Job.state == JobState.DONE))
