"""STOW-RS sending and the QIDO-RS probe against a small local HTTP server: request, credentials, response classes."""

from __future__ import annotations

import email.parser
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from pacs_node.config import Destination
from pacs_node.db.models import FailureKind
from pacs_node.send.dicomweb import dicomweb_answers, dicomweb_echo
from pacs_node.send.echo import EchoError
from pacs_node.send.stow import multipart_body, parse_stow_response, send_stow
from tests.conftest import free_port
from tests.tls_certs import Pki, make_pki

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@dataclass
class FakeStow:
    """Answers every request with the next queued reply (default 200 ``{}``) and keeps what it got."""

    url: str
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    replies: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)

    def reply(self, status: int, body: bytes | dict = b"", **headers: str) -> None:
        if isinstance(body, dict):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/dicom+json", **headers}
        self.replies.append((status, {k.replace("_", "-"): v for k, v in headers.items()}, body))


@contextmanager
def _serving(tls: ssl.SSLContext | None = None) -> Iterator[FakeStow]:
    """A :class:`FakeStow` on a free loopback port, over TLS with ``tls``."""
    server_state = FakeStow("")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            server_state.requests.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
            status, headers, body = server_state.replies.pop(0) if server_state.replies else (200, {}, b"{}")
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    server_state.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}/dicom-web"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake_stow() -> Iterator[FakeStow]:
    with _serving() as server:
        yield server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _destination(url: str, **extra: object) -> Destination:
    return Destination.model_validate({"name": "web", "protocol": "dicomweb", "url": url, **extra})


def _objects(folder: Path) -> list[tuple[Path, Dataset]]:
    """An SR-class and a Secondary Capture Part 10 file (minimal data sets: only their UIDs matter here)."""
    folder.mkdir(exist_ok=True)
    made = []
    for sop_class in (COMPREHENSIVE_3D_SR, SecondaryCaptureImageStorage):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientName = generate_uid(), generate_uid(), "Doe^Jane"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        made.append((path, ds))
    return made


def _sop_item(uid: str, reason: int | None = None) -> dict:
    item = {"00081150": {"vr": "UI", "Value": [SecondaryCaptureImageStorage]}, "00081155": {"vr": "UI", "Value": [uid]}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def _response(stored: list[str], failed: list[tuple[str, int]]) -> dict:
    return {"00081198": {"vr": "SQ", **({"Value": [_sop_item(u, r) for u, r in failed]} if failed else {})},
            "00081199": {"vr": "SQ", **({"Value": [_sop_item(u) for u in stored]} if stored else {})}}


def test_multipart_body_carries_each_file_unchanged() -> None:
    parts = [b"\x00" * 128 + b"DICM first", b"\x00" * 128 + b"DICM second\r\n--not-a-boundary"]
    body, content_type = multipart_body(parts)
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert [p.get_content_type() for p in message.get_payload()] == ["application/dicom"] * 2
    assert [p.get_payload(decode=True) for p in message.get_payload()] == parts


def test_files_are_posted_unchanged_to_studies_with_a_bearer_token_read_at_each_send(fake_stow: FakeStow,
                                                                                       tmp_path: Path) -> None:
    objects = _objects(tmp_path / "spool")
    token = tmp_path / "token"
    token.write_text("first-token\n")
    destination = _destination(fake_stow.url + "/", auth={"type": "bearer", "token_file": str(token)})
    fake_stow.reply(200, _response([ds.SOPInstanceUID for _, ds in objects], []))
    outcome = send_stow(destination, [path for path, _ in objects], timeout_s=5)
    assert (outcome.sent, outcome.failure) == (2, None)
    method, path, headers, body = fake_stow.requests[0]
    assert (method, path) == ("POST", "/dicom-web/studies")
    assert headers["Authorization"] == "Bearer first-token"
    assert headers["Accept"] == "application/dicom+json"
    message = email.parser.BytesParser().parsebytes(f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
    assert message.get_param("type") == "application/dicom"
    assert [p.get_payload(decode=True) for p in message.get_payload()] == [path.read_bytes() for path, _ in objects]
    token.write_text("rotated-token\n")
    send_stow(destination, [objects[0][0]], timeout_s=5)
    assert fake_stow.requests[1][2]["Authorization"] == "Bearer rotated-token"


def test_basic_auth_is_sent(fake_stow: FakeStow, tmp_path: Path) -> None:
    objects = _objects(tmp_path / "spool")
    destination = _destination(fake_stow.url, auth={"type": "basic", "username": "node", "password": "s3cret"})
    assert send_stow(destination, [objects[0][0]], timeout_s=5).failure is None
    assert fake_stow.requests[0][2]["Authorization"] == "Basic bm9kZTpzM2NyZXQ="


@pytest.mark.parametrize(
    "status,failed_reasons,headers,kind,words",
    [
        (200, [], {}, None, ""),
        (202, [], {"Warning": "299 coerced"}, None, ""),  # stored with warnings
        (202, [0xA700], {}, FailureKind.TRANSIENT,
         "HTTP 202 Accepted: 1 of 2 instances not stored: instance 2 (Secondary Capture Image Storage): 0xA700 out of resources"),
        (202, [0xC000], {}, FailureKind.PERMANENT, "0xC000 cannot understand"),
        (200, [0x0122], {}, FailureKind.PERMANENT, "HTTP 200 OK: 1 of 2 instances not stored"),
        (409, [0x0110], {}, FailureKind.PERMANENT, "HTTP 409 Conflict: 1 of 2 instances not stored"),
        (409, [0xA700], {}, FailureKind.TRANSIENT, "0xA700 out of resources"),
        (400, [], {}, FailureKind.PERMANENT, "HTTP 400 Bad Request"),
        (401, [], {}, FailureKind.PERMANENT, "HTTP 401 Unauthorized: the server refused our credentials"),
        (403, [], {}, FailureKind.PERMANENT, "HTTP 403 Forbidden"),
        (404, [], {}, FailureKind.PERMANENT, "no DICOMweb service at this url"),
        (413, [], {}, FailureKind.PERMANENT, "HTTP 413"),
        (415, [], {}, FailureKind.PERMANENT, "HTTP 415"),
        (302, [], {"Location": "https://elsewhere/dicom-web/studies"}, FailureKind.PERMANENT, "redirected to https://elsewhere"),
        (408, [], {}, FailureKind.TRANSIENT, "HTTP 408 Request Timeout"),
        (429, [], {"Retry-After": "30"}, FailureKind.TRANSIENT, "HTTP 429 Too Many Requests (retry after 30)"),
        (500, [], {}, FailureKind.TRANSIENT, "HTTP 500 Internal Server Error"),
        (503, [], {}, FailureKind.TRANSIENT, "HTTP 503 Service Unavailable"),
    ],
)
def test_responses_are_classed_like_c_store_statuses(fake_stow: FakeStow, tmp_path: Path, status: int,
                                                     failed_reasons: list[int], headers: dict[str, str],
                                                     kind: FailureKind | None, words: str) -> None:
    objects = _objects(tmp_path / "spool")
    uids = [ds.SOPInstanceUID for _, ds in objects]
    failed = [(uids[1], reason) for reason in failed_reasons]
    fake_stow.reply(status, _response([u for u in uids if u not in {f for f, _ in failed}], failed), **headers)
    outcome = send_stow(_destination(fake_stow.url), [path for path, _ in objects], timeout_s=5)
    assert outcome.failure == kind
    assert words in outcome.reason
    assert not any(uid in outcome.reason for uid in uids), "no UIDs in reasons (they are logged above DEBUG)"
    assert "Doe" not in outcome.reason


def test_xml_responses_are_read_too(fake_stow: FakeStow, tmp_path: Path) -> None:
    objects = _objects(tmp_path / "spool")
    failed_uid = objects[0][1].SOPInstanceUID
    xml = f"""<?xml version="1.0" encoding="utf-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI" keyword="ReferencedSOPInstanceUID"><Value number="1">{failed_uid}</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US" keyword="FailureReason"><Value number="1">42752</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence" />
</NativeDicomModel>""".encode()
    assert parse_stow_response(xml).failed == ((failed_uid, 0xA700),)
    fake_stow.reply(202, xml, Content_Type="application/dicom+xml")
    outcome = send_stow(_destination(fake_stow.url), [path for path, _ in objects], timeout_s=5)
    assert outcome.failure == FailureKind.TRANSIENT
    assert "instance 1 (Comprehensive 3D SR Storage): 0xA700 out of resources" in outcome.reason
    assert outcome.sent == 1


def test_unreadable_bodies_fall_back_to_the_http_status() -> None:
    assert parse_stow_response(b"<html>gateway error</p>") is None
    assert parse_stow_response(b"Internal error") is None
    assert parse_stow_response(b"") is None


def test_no_answer_is_transient(tmp_path: Path) -> None:
    paths = [path for path, _ in _objects(tmp_path / "spool")]
    refused = send_stow(_destination(f"http://127.0.0.1:{free_port()}/dicom-web"), paths, timeout_s=2)
    assert refused.failure == FailureKind.TRANSIENT and "connection refused" in refused.reason
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        timed_out = send_stow(_destination(f"http://127.0.0.1:{port}/dicom-web"), paths, timeout_s=0.5)
    assert timed_out.failure == FailureKind.TRANSIENT and "timed out" in timed_out.reason


def test_a_secret_gone_since_start_up_is_a_transient_failure_naming_the_file(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    destination = _destination("http://127.0.0.1:9/dicom-web", auth={"type": "bearer", "token_file": str(token)})
    token.unlink()
    outcome = send_stow(destination, [path for path, _ in _objects(tmp_path / "spool")], timeout_s=1)
    assert outcome.failure == FailureKind.TRANSIENT and f"token_file {token}" in outcome.reason


def test_qido_probe_checks_reachability(fake_stow: FakeStow) -> None:
    destination = _destination(fake_stow.url)
    fake_stow.reply(200, b"[]", Content_Type="application/dicom+json")
    assert dicomweb_echo(destination, timeout_s=5) >= 0
    method, path, headers, _ = fake_stow.requests[0]
    assert (method, path, headers["Accept"]) == ("GET", "/dicom-web/studies?limit=1", "application/dicom+json")
    fake_stow.reply(401)
    with pytest.raises(EchoError, match="HTTP 401 Unauthorized"):
        dicomweb_echo(destination, timeout_s=5)
    fake_stow.reply(401)
    assert dicomweb_answers(destination, timeout_s=5), "the server is up: deliveries will say why they fail"
    fake_stow.reply(503)
    assert not dicomweb_answers(destination, timeout_s=5)
    assert not dicomweb_answers(_destination(f"http://127.0.0.1:{free_port()}/dicom-web"), timeout_s=2)


def test_https_is_verified_against_the_configured_ca_and_name(pki: Pki, tmp_path: Path) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.pacs.cert, pki.pacs.key)  # a server certificate for 127.0.0.1 and localhost
    paths = [path for path, _ in _objects(tmp_path / "spool")]
    with _serving(context) as server:
        trusted = send_stow(_destination(server.url, tls={"ca_file": str(pki.ca)}), paths, timeout_s=5)
        assert trusted.failure is None and len(server.requests) == 1
        for tls, words in [({"ca_file": str(pki.rogue_ca)}, "TLS failed: certificate verify failed"),
                           (None, "TLS failed: certificate verify failed"),  # the system CAs do not know it
                           ({"ca_file": str(pki.ca), "server_hostname": "pacs.example.org"}, "Hostname mismatch")]:
            outcome = send_stow(_destination(server.url, **({"tls": tls} if tls else {})), paths, timeout_s=5)
            assert outcome.failure == FailureKind.TRANSIENT and words in outcome.reason, outcome.reason
        named = _destination(server.url, tls={"ca_file": str(pki.ca), "server_hostname": "localhost"})
        assert send_stow(named, paths, timeout_s=5).failure is None
        unverified = _destination(server.url, tls={"verify": False})
        assert send_stow(unverified, paths, timeout_s=5).failure is None
        echo = [sys.executable, "-m", "pacs_node", "echo", server.url]
        answered = subprocess.run([*echo, "--tls-ca", str(pki.ca)], capture_output=True, text=True, timeout=60)
        assert answered.returncode == 0 and f"QIDO-RS {server.url}: success" in answered.stdout, answered.stderr
        refused = subprocess.run(echo, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "TLS failed: certificate verify failed" in refused.stderr
