"""The running node over real associations: DCMTK's storescu as the scanner."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, func, select

from pacs_node.db.models import Instance, Job, JobState, Study, StudyState
from tests.conftest import DCMTK_ENV, ECHOSCU, RunningNode, storescu, wait_until
from tests.reliability.support import children

pytestmark = pytest.mark.integration


def _count(node: RunningNode, model: type, *where) -> int:  # noqa: ANN002
    engine = create_engine(node.database_url)
    try:
        with engine.connect() as connection:
            return connection.scalar(select(func.count()).select_from(model).where(*where)) or 0
    finally:
        engine.dispose()


def _jobs(node: RunningNode) -> list:
    engine = create_engine(node.database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(Job.id, Job.state, Job.result).order_by(Job.id)).all()
    finally:
        engine.dispose()


def _stored_files(node: RunningNode) -> list[Path]:
    return sorted((node.spool / "studies").rglob("*.dcm"))


def test_pushed_series_is_stored_completed_and_queued(database_url: str, node_factory, ct_series) -> None:
    node = node_factory(database_url)
    result = storescu(node.port, ct_series[0].parent)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == len(ct_series)
    files = _stored_files(node)
    assert len(files) == len(ct_series) == _count(node, Instance)
    # what was sent is what was kept, byte for byte in its data set
    sent = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in ct_series}
    for path in files:
        kept = pydicom.dcmread(path)
        assert kept.PixelData == sent[kept.SOPInstanceUID].PixelData
        assert kept.file_meta.SourceApplicationEntityTitle == "STORESCU"
    jobs = wait_until(lambda: [j for j in _jobs(node) if j.state == JobState.DONE], timeout=30)
    assert len(jobs) == 1
    outcome = json.loads(jobs[0].result)
    assert outcome["step"] == "pass-through" and outcome["analysis_performed"] is False
    assert outcome["series_uid"] == next(iter(sent.values())).SeriesInstanceUID
    assert outcome["instances"] == len(ct_series)
    assert _count(node, Study, Study.state == StudyState.COMPLETE) == 1


def test_duplicate_push_stores_nothing_twice(node_factory, ct_series) -> None:
    node = node_factory()
    assert storescu(node.port, ct_series[0].parent).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in _stored_files(node)}
    again = storescu(node.port, ct_series[0].parent)
    assert again.returncode == 0
    assert again.stderr.count("Received Store Response (Success)") == len(ct_series)
    assert {p: p.stat().st_mtime_ns for p in _stored_files(node)} == before
    assert _count(node, Instance) == len(ct_series)


def test_wrong_called_ae_is_rejected(node_factory, ct_series) -> None:
    node = node_factory()
    refused = storescu(node.port, ct_series[0], called_ae="ANY-SCP")
    assert refused.returncode != 0 and "Called AE Title Not Recognized" in refused.stderr


def test_full_disk_answers_out_of_resources_and_node_keeps_serving(node_factory, ct_series) -> None:
    node = node_factory(storage={"min_free_mb": 10**9})
    refused = storescu(node.port, ct_series[0])
    assert "Received Store Response (Refused: OutOfResources)" in refused.stderr
    assert _count(node, Instance) == 0 and _stored_files(node) == []
    echo = subprocess.run([ECHOSCU, "-aec", "PACS_NODE", "127.0.0.1", str(node.port)], env=DCMTK_ENV,
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0


def test_compressed_transfer_syntax_is_stored_as_sent(node_factory, ct_series, tmp_path: Path) -> None:
    node = node_factory()
    compressed = tmp_path / "jls.dcm"
    subprocess.run(["/usr/bin/dcmcjpls", str(ct_series[0]), str(compressed)], check=True, timeout=60)
    result = storescu(node.port, compressed, extra=["-xt", "-R", "+C"])  # propose JPEG-LS lossless first
    assert result.returncode == 0, result.stderr
    [stored] = _stored_files(node)
    assert str(pydicom.dcmread(stored).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.80"
    assert pydicom.dcmread(stored).pixel_array.shape == (64, 64)


def test_garbage_and_hostile_pdus_do_not_stop_the_node(node_factory, ct_series) -> None:
    node = node_factory()
    for payload in (b"GET / HTTP/1.1\r\n\r\n", b"\x01\x00" + struct.pack(">I", 0xFFFFFFF0), b"\x01\x00\x00\x00\x00\x04abcd"):
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
            sock.sendall(payload)
            sock.settimeout(5)
            reply = sock.recv(10)
            assert reply[:1] == b"\x07", "expected an A-ABORT"
    assert storescu(node.port, ct_series[0]).returncode == 0


def test_extra_associations_are_rejected_not_hung(node_factory, ct_series) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    node = node_factory(node={"max_associations": 1, "receive_processes": 2})  # the limit spans processes
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(CTImageStorage)
    held = ae.associate("127.0.0.1", node.port, ae_title="PACS_NODE")
    assert held.is_established
    try:
        started = time.monotonic()
        refused = storescu(node.port, ct_series[0])
        assert refused.returncode != 0
        assert "Local Limit Exceeded" in refused.stderr
        assert time.monotonic() - started < 10
    finally:
        held.release()
    assert storescu(node.port, ct_series[0]).returncode == 0


def test_sigterm_stops_cleanly_and_queued_jobs_wait_for_next_start(node_factory, ct_series, tmp_path: Path) -> None:
    node = node_factory(folder=tmp_path / "node", worker={"enabled": False})
    assert storescu(node.port, ct_series[0].parent).returncode == 0
    wait_until(lambda: [j for j in _jobs(node) if j.state == JobState.QUEUED], timeout=30)
    assert node.stop(signal.SIGTERM, timeout=30) == 0
    assert "event=node_stopped" in node.output()
    restarted = node_factory(folder=tmp_path / "node", database_url=node.database_url)
    done = wait_until(lambda: [j for j in _jobs(restarted) if j.state == JobState.DONE], timeout=30)
    assert len(done) == 1


def test_status_and_echo_commands(node_factory, ct_series) -> None:
    node = node_factory()
    assert storescu(node.port, ct_series[0].parent).returncode == 0
    wait_until(lambda: [j for j in _jobs(node) if j.state == JobState.DONE], timeout=30)
    status = subprocess.run([sys.executable, "-m", "pacs_node", "status", "--config", str(node.config)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "complete" in status.stdout and f"{len(ct_series):>9}" in status.stdout
    assert "pass-through: no analysis performed" in status.stdout
    echo = subprocess.run([sys.executable, "-m", "pacs_node", "echo", f"PACS_NODE@127.0.0.1:{node.port}"],
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode == 0 and "success" in echo.stdout
    node.stop()
    failed = subprocess.run([sys.executable, "-m", "pacs_node", "echo", f"PACS_NODE@127.0.0.1:{node.port}",
                             "--timeout", "3"], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "failed" in failed.stderr


def test_receiver_process_that_dies_is_replaced(node_factory, ct_series) -> None:
    node = node_factory(node={"receive_processes": 2})
    [child] = wait_until(lambda: [c for c in children(node.process.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()], timeout=20)
    wait_until(lambda: "event=receiver_started process=1" in node.output(), timeout=20)
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: "event=receiver_died process=1" in node.output(), timeout=20)
    wait_until(lambda: node.output().count("event=receiver_started process=1") == 2, timeout=20)
    for _ in range(4):  # connections land on either process; all are served
        assert storescu(node.port, ct_series[0].parent).returncode == 0
    receivers = children(node.process.pid)
    assert receivers
    assert node.stop() == 0
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in receivers), timeout=20)


def test_serve_reports_a_taken_port_and_exits(tmp_path: Path) -> None:
    from tests.conftest import write_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        config = write_config(tmp_path, taken.getsockname()[1], f"sqlite:///{tmp_path / 'db'}")
        result = subprocess.run([sys.executable, "-m", "pacs_node", "serve", "--config", str(config)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Address already in use" in result.stderr
