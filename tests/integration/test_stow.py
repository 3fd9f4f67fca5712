"""Sending reports over DICOMweb STOW-RS to a real Orthanc with its DICOMweb plugin.

Arrival with the same objects and UIDs as C-STORE, refused credentials, an outage ridden out
with retries and QIDO-RS probes; HTTPS with a bearer token through HAProxy, the way a hospital
puts a PACS's DICOMweb behind a TLS gateway (Debian's Orthanc 1.10 crashes on its own first
HTTPS request here).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from pacs_node.config import load_settings
from pacs_node.db.deliveries import queue_deliveries
from pacs_node.db.models import DeliveryState
from pacs_node.report.sr import read_findings
from tests.conftest import RunningNode, free_port, wait_until
from tests.integration.test_send import FAST_RETRIES, _deliveries, _destination, _engine, _report_for_received_study
from tests.haproxy import HAPROXY, MISSING, HAProxy
from tests.orthanc import Orthanc
from tests.report import findings
from tests.tls_certs import Pki, make_pki

pytestmark = pytest.mark.integration

USER, PASSWORD = "pacs-node", "right-password"
TOKEN = "s3cret-t0ken"


@pytest.fixture
def orthanc_web(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc with DICOMweb under /dicom-web/ and HTTP basic auth (one registered user)."""
    server = Orthanc(tmp_path / "orthanc-web", dicom_port=free_port(), http_port=free_port(), dicomweb=True,
                     users={USER: PASSWORD})
    server.start()
    yield server
    server.stop()


def _web(orthanc: Orthanc, folder: Path, password: str = PASSWORD) -> dict:
    secret = folder / "stow.password"
    secret.write_text(password + "\n")
    return {"name": "web", "protocol": "dicomweb", "url": f"{orthanc.url}/dicom-web",
            "auth": {"type": "basic", "username": USER, "password_file": str(secret)}}


def _queue_all(node: RunningNode, job: int) -> None:
    engine = _engine(node)
    queue_deliveries(engine, job, load_settings(node.config).destinations)
    engine.dispose()


def _pacs_node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pacs_node", *args], capture_output=True, text=True, timeout=60)


def test_stow_stores_the_same_objects_with_the_same_uids_as_c_store(node_factory, orthanc, orthanc_web,
                                                                     tmp_path: Path) -> None:
    node = node_factory(destinations=[_destination(orthanc), _web(orthanc_web, tmp_path)], sending=FAST_RETRIES)
    report = _report_for_received_study(node, tmp_path)
    _queue_all(node, report["job"])
    wait_until(lambda: [d.state for d in _deliveries(node)] == [DeliveryState.SENT] * 2, timeout=60)
    over_dimse = {i["SOPInstanceUID"]: i for i in orthanc.instances()}
    over_stow = {i["SOPInstanceUID"]: i for i in orthanc_web.instances()}
    assert set(over_stow) == set(over_dimse) == {report["sr_uid"], *report["sc_uids"]}
    assert {i["StudyInstanceUID"] for i in over_stow.values()} == {report["study_uid"]}
    assert {i["SeriesInstanceUID"] for i in over_stow.values()} == {i["SeriesInstanceUID"] for i in over_dimse.values()}
    # STOW-RS posts the spool's files as they are: Orthanc keeps them byte for byte
    spool = {path.stem: path.read_bytes() for path in (node.spool / "reports" / report["study_uid"]).glob("*.dcm")}
    for orthanc_id in orthanc_web.get("/instances"):
        uid = orthanc_web.get(f"/instances/{orthanc_id}/simplified-tags")["SOPInstanceUID"]
        stored = orthanc_web.get_bytes(f"/instances/{orthanc_id}/file")
        assert stored == spool[uid]
        if uid == report["sr_uid"]:
            (tmp_path / "sr.dcm").write_bytes(stored)
    assert [round(f["diameter_mm"], 1) for f in read_findings(pydicom.dcmread(tmp_path / "sr.dcm"))] == \
        [f.diameter_mm for f in findings()]
    assert "event=delivery_sent" in node.output()
    echo = _pacs_node("echo", "--destination", "web", "--config", str(node.config))
    assert echo.returncode == 0 and f"QIDO-RS {orthanc_web.url}/dicom-web: success" in echo.stdout, echo.stderr


def test_wrong_credentials_fail_permanently_at_once_with_the_reason(node_factory, orthanc_web, tmp_path: Path) -> None:
    node = node_factory(destinations=[_web(orthanc_web, tmp_path, password="wrong-password")], sending=FAST_RETRIES)
    report = _report_for_received_study(node, tmp_path)
    _queue_all(node, report["job"])
    [failed] = wait_until(lambda: [d for d in _deliveries(node) if d.state == DeliveryState.FAILED], timeout=30)
    assert failed.attempts == 1
    assert failed.last_error.startswith("permanent: HTTP 401 Unauthorized: the server refused our credentials")
    wait_until(lambda: "event=delivery_failed" in node.output(), timeout=10)
    assert [(d.state, d.attempts) for d in _deliveries(node)] == [(DeliveryState.FAILED, 1)], "no retry"
    assert orthanc_web.get("/instances") == []
    assert "wrong-password" not in node.output()
    echo = _pacs_node("echo", "--destination", "web", "--config", str(node.config))
    assert echo.returncode == 1 and "HTTP 401 Unauthorized" in echo.stderr
    anonymous = _pacs_node("echo", f"{orthanc_web.url}/dicom-web")
    assert anonymous.returncode == 1 and "the server refused our credentials" in anonymous.stderr


def test_server_down_is_retried_probed_with_qido_and_delivered_once_it_is_up(node_factory, orthanc_web,
                                                                               tmp_path: Path) -> None:
    node = node_factory(destinations=[_web(orthanc_web, tmp_path)], sending=FAST_RETRIES)
    report = _report_for_received_study(node, tmp_path)
    orthanc_web.stop()
    _queue_all(node, report["job"])
    wait_until(lambda: "event=destination_paused destination=web" in node.output(), timeout=60)
    log = node.output()
    assert "probe=QIDO-RS" in log and "reason='connection refused or host unreachable'" in log
    [pending] = _deliveries(node)
    assert pending.state == DeliveryState.PENDING and pending.attempts >= FAST_RETRIES["breaker_failures"]
    status = _pacs_node("status", "--config", str(node.config))
    assert "destination web PAUSED since" in status.stdout and "connection refused" in status.stdout
    orthanc_web.start()
    wait_until(lambda: [d for d in _deliveries(node) if d.state == DeliveryState.SENT], timeout=60)
    assert "event=destination_resumed destination=web reason=QIDO-RS probe answered" in node.output()
    uids = [i["SOPInstanceUID"] for i in orthanc_web.instances()]
    assert sorted(uids) == sorted([report["sr_uid"], *report["sc_uids"]]), "everything arrives, once"


class TlsGateway(HAProxy):
    """HAProxy terminating HTTPS with ``pki.pacs``'s certificate and requiring ``Bearer TOKEN``
    (401 otherwise) in front of an Orthanc's plain HTTP port."""

    def __init__(self, folder: Path, pki: Pki, backend_port: int) -> None:
        self.pki = pki
        folder.mkdir(parents=True, exist_ok=True)
        bundle = folder / "gateway.pem"
        bundle.write_text(pki.pacs.cert.read_text() + pki.pacs.key.read_text())
        super().__init__(folder, "http", f"""frontend dicomweb
    bind 127.0.0.1:{{port}} ssl crt {bundle}
    http-request return status 401 content-type text/plain string "bearer token required" unless {{ req.hdr(authorization) -m str "Bearer {TOKEN}" }}
    default_backend orthanc
backend orthanc
    server orthanc 127.0.0.1:{backend_port}
""")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dicom-web"


@pytest.fixture
def gateway(orthanc_plain_web: Orthanc, tmp_path: Path) -> Iterator[TlsGateway]:
    if not HAPROXY.exists():
        pytest.skip(MISSING)
    server = TlsGateway(tmp_path / "gateway", make_pki(tmp_path / "pki"), orthanc_plain_web.http_port).start()
    yield server
    server.stop()


@pytest.fixture
def orthanc_plain_web(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc with DICOMweb and no authentication of its own (the gateway does it)."""
    server = Orthanc(tmp_path / "orthanc-plain", dicom_port=free_port(), http_port=free_port(), dicomweb=True)
    server.start()
    yield server
    server.stop()


def _bearer(gateway: TlsGateway, folder: Path, token: str) -> dict:
    """A STOW-RS destination through the gateway, trusting the test CA, with ``token``."""
    secret = folder / "stow.token"
    secret.write_text(token + "\n")
    return {"name": "web-tls", "protocol": "dicomweb", "url": gateway.url, "tls": {"ca_file": str(gateway.pki.ca)},
            "auth": {"type": "bearer", "token_file": str(secret)}}


def test_https_with_a_bearer_token_through_a_tls_gateway(node_factory, gateway: TlsGateway,
                                                         orthanc_plain_web: Orthanc, tmp_path: Path) -> None:
    node = node_factory(destinations=[_bearer(gateway, tmp_path, TOKEN)], sending=FAST_RETRIES)
    report = _report_for_received_study(node, tmp_path)
    _queue_all(node, report["job"])
    wait_until(lambda: [d.state for d in _deliveries(node)] == [DeliveryState.SENT], timeout=60)
    uids = [i["SOPInstanceUID"] for i in orthanc_plain_web.instances()]
    assert sorted(uids) == sorted([report["sr_uid"], *report["sc_uids"]])
    assert TOKEN not in node.output()
    echo = _pacs_node("echo", "--destination", "web-tls", "--config", str(node.config))
    assert echo.returncode == 0 and f"QIDO-RS {gateway.url}: success" in echo.stdout, echo.stderr


def test_a_wrong_bearer_token_is_refused_by_the_gateway_for_good(node_factory, gateway: TlsGateway,
                                                                 orthanc_plain_web: Orthanc, tmp_path: Path) -> None:
    node = node_factory(destinations=[_bearer(gateway, tmp_path, "wrong-token")], sending=FAST_RETRIES)
    report = _report_for_received_study(node, tmp_path)
    _queue_all(node, report["job"])
    [failed] = wait_until(lambda: [d for d in _deliveries(node) if d.state == DeliveryState.FAILED], timeout=30)
    assert failed.attempts == 1 and failed.last_error.startswith("permanent: HTTP 401 Unauthorized")
    assert orthanc_plain_web.get("/instances") == []
