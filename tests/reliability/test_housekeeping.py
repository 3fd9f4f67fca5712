"""Housekeeping against a real node: retention after delivery, a really full disk, the free-space guard.

The disk tests mount an 8 MB tmpfs as the spool (root only; skipped otherwise).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, create_engine, func, select

from pacs_node.config import load_settings
from pacs_node.db.deliveries import insert_deliveries, insert_objects
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.models import Delivery, DeliveryState, Instance, Job, JobState, ObjectKind, Study
from pacs_node.housekeeping import DiskGuard
from pacs_node.receive.spool import Spool
from pacs_node.worker import JobOutcome, Worker
from tests.conftest import RunningNode, make_series, storescu, wait_until

pytestmark = pytest.mark.integration

KEEP_S = 5.0
FAST_SENDING = {"first_retry_s": 1, "max_retry_s": 2, "jitter": 0, "poll_interval_s": 0.3, "timeout_s": 5}
_MB = 1024 * 1024


def _engine(node: RunningNode) -> Engine:
    return create_engine(node.database_url)


def _status(node: RunningNode) -> str:
    result = subprocess.run([sys.executable, "-m", "pacs_node", "status", "--config", str(node.config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _responses(result: subprocess.CompletedProcess) -> dict[str, int]:
    """How many C-STORE responses storescu saw, by status text."""
    counts: dict[str, int] = {}
    for status in re.findall(r"Received Store Response \(([^)]*)\)", result.stdout + result.stderr):
        counts[status] = counts.get(status, 0) + 1
    return counts


def _spool_files(spool: Path) -> list[Path]:
    return sorted((spool / "studies").rglob("*.dcm"))


def _live_rows(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(connection.execute(select(Instance.sop_instance_uid, Instance.path)
                                       .where(Instance.purged_at.is_(None))).all())


def _jobs(engine: Engine) -> list:
    with engine.connect() as connection:
        return connection.execute(select(Job.id, Job.state, Job.result).order_by(Job.id)).all()


def _inject_report(engine: Engine, node: RunningNode, job: int, source: Path) -> str:
    """Store a derived object as the job's report and owe it to the destinations, in one transaction."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 9902
    spool = Spool(node.spool, node_name="test-writer")
    stored = spool.write_dataset(ds, spool.report_path(ds.StudyInstanceUID, ds.SOPInstanceUID))
    spool.close()
    with engine.begin() as connection:
        insert_objects(connection, job, [(ObjectKind.KEY_IMAGE, ds.SOPClassUID, ds.SOPInstanceUID, stored.relative_path)])
        insert_deliveries(connection, job, load_settings(node.config).destinations)
    return ds.SOPInstanceUID


def test_delivered_study_files_are_purged_and_a_resent_study_is_stored_and_processed_again(
        node_factory, orthanc, tmp_path: Path, record_outcome) -> None:
    destination = {"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    node = node_factory(destinations=[destination], sending=FAST_SENDING,
                        retention={"enabled": True, "keep_days": KEEP_S / 86400, "sweep_interval_s": 0.5})
    series = make_series(tmp_path / "ct", slices=8, size=64)
    engine = _engine(node)
    assert storescu(node.port, series[0].parent).returncode == 0
    assert len(_spool_files(node.spool)) == 8

    def done_job() -> int | None:
        return next((job.id for job in _jobs(engine) if job.state == JobState.DONE), None)

    job = wait_until(done_job, timeout=30)
    report_uid = _inject_report(engine, node, job, series[0])

    def delivered() -> bool:
        with engine.connect() as connection:
            return connection.scalar(select(Delivery.state)) == DeliveryState.SENT

    wait_until(delivered, timeout=30)
    sent_at = time.monotonic()
    assert report_uid in {i["SOPInstanceUID"] for i in orthanc.instances()}
    assert len(_spool_files(node.spool)) == 8, "kept for keep_days after delivery"
    wait_until(lambda: not _spool_files(node.spool), timeout=KEEP_S + 20)
    purged_after = time.monotonic() - sent_at
    assert purged_after >= KEEP_S - 1.5
    assert not list((node.spool / "studies").iterdir()), "study and series folders removed"
    with engine.connect() as connection:
        rows = connection.execute(select(Instance.purged_at)).scalars().all()
        study_purged = connection.scalar(select(Study.purged_at))
    assert len(rows) == 8 and all(rows) and study_purged is not None, "rows stay, marked purged"
    assert len(list((node.spool / "reports").rglob("*.dcm"))) == 1, "report kept for resend"
    status = _status(node)
    assert re.search(r"^\s+\d+\s+purged\s", status, re.MULTILINE), status
    assert "retention purged 1 studies (8 files" in status
    purged_line = re.search(r"event=retention_purged studies=1 files=8 bytes=(\d+)", node.output())
    assert purged_line, node.output()
    study_uid = pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID
    assert study_uid not in "\n".join(line for line in node.output().splitlines() if "INFO" in line)
    resent = subprocess.run([sys.executable, "-m", "pacs_node", "resend", study_uid, "--config", str(node.config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert resent.returncode == 0, resent.stderr

    again = storescu(node.port, series[0].parent)
    assert again.returncode == 0 and _responses(again) == {"Success": 8}
    assert len(_spool_files(node.spool)) == 8, "stored again, not taken for duplicates"
    assert len(_live_rows(engine)) == 8

    def second_job() -> list:
        done = [job for job in _jobs(engine) if job.state == JobState.DONE]
        return done if len(done) == 2 else []

    second = wait_until(second_job, timeout=30)[-1]
    assert '"instances": 8' in second.result, "analysed again with every instance it has files for"
    engine.dispose()
    record_outcome(area="Housekeeping", fault=f"retention, keep_days = {KEEP_S:.0f} s",
                   tried="8-instance study pushed with storescu, pass-through job, report delivered to Orthanc; "
                         "then the same study pushed again",
                   cases=8,
                   outcome=f"8 files ({purged_line.group(1)} bytes) deleted {purged_after:.1f} s after delivery, "
                           "folders removed, 8 rows kept and marked purged, report kept (resend works); "
                           "re-sent study stored again (8/8 files) and processed by a second job")


def _mount_tmpfs(mount_point: Path, size: str = "8m") -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs as the spool")
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip() or result.returncode}")


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs mounted where the node of ``node_factory`` keeps its spool."""
    mount_point = tmp_path / "node" / "spool"
    _mount_tmpfs(mount_point)
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def _fill(spool: Path, name: str, leave_free_bytes: int) -> Path:
    """A filler file that leaves about ``leave_free_bytes`` free on the spool's filesystem."""
    import shutil

    filler = spool / name
    size = max(0, shutil.disk_usage(spool).free - leave_free_bytes)
    with filler.open("wb") as fp:
        fp.write(b"\0" * size)
        fp.flush()
        os.fsync(fp.fileno())
    return filler


def _check_spool_consistent(spool: Path, engine: Engine) -> int:
    """Every file under studies/ is complete and has its row, every live row its file; returns the count."""
    files = _spool_files(spool)
    rows = _live_rows(engine)
    assert sorted(rows.values()) == sorted(p.relative_to(spool).as_posix() for p in files)
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert ds.SOPInstanceUID == path.stem
    assert not [p for p in (spool / "incoming").rglob("*.part") if p.stat().st_size], "no partial file left"
    return len(files)


def test_disk_full_refuses_with_a700_keeps_every_acknowledged_instance_and_recovers(
        small_spool: Path, node_factory, tmp_path: Path, record_outcome) -> None:
    node = node_factory(storage={"min_free_mb": 0, "warn_free_mb": 0})
    series = make_series(tmp_path / "ct", slices=16, size=256)  # about 130 KB per instance
    filler = _fill(small_spool, "filler", leave_free_bytes=_MB)
    first = storescu(node.port, series[0].parent, extra=["-nh"])  # go on after a refusal
    responses = _responses(first)
    stored, refused = responses.get("Success", 0), responses.get("Refused: OutOfResources", 0)
    assert stored > 0 and refused > 0 and stored + refused == 16, first.stdout + first.stderr
    engine = _engine(node)
    assert _check_spool_consistent(small_spool, engine) == stored, "acknowledged means kept, nothing more"
    assert "event=spool_write_failed error=OSError" in node.output()
    assert node.process.poll() is None, "the node keeps serving"
    filler.unlink()
    second = storescu(node.port, series[0].parent)
    assert second.returncode == 0 and _responses(second) == {"Success": 16}, second.stdout + second.stderr
    assert _check_spool_consistent(small_spool, engine) == 16
    engine.dispose()
    record_outcome(area="Outages", fault="disk full (8 MB tmpfs spool, filler leaving 1 MB)",
                   tried="16 CT instances of 130 KB pushed with storescu, min_free_mb = 0; filler deleted; "
                         "the same push again without restart",
                   cases=16,
                   outcome=f"{stored} stored, {refused} refused with A700 Out of Resources, 0 partial files, "
                           "every acknowledged instance has its file and row; all 16 stored after space freed")


def test_min_free_guard_refuses_before_the_disk_is_full_defers_jobs_and_resumes(
        small_spool: Path, node_factory, tmp_path: Path, record_outcome) -> None:
    node = node_factory(storage={"min_free_mb": 4, "warn_free_mb": 6, "space_check_interval_s": 0.2})
    early = make_series(tmp_path / "early", slices=4, size=64)
    late = make_series(tmp_path / "late", slices=4, size=64)
    engine = _engine(node)
    low = _fill(small_spool, "filler-1", leave_free_bytes=5 * _MB)
    wait_until(lambda: "event=spool_space_low" in node.output(), timeout=10)
    assert storescu(node.port, early[0].parent).returncode == 0, "above the minimum: stored"
    full = _fill(small_spool, "filler-2", leave_free_bytes=3 * _MB)
    wait_until(lambda: "event=spool_space_exhausted" in node.output(), timeout=10)
    refused = storescu(node.port, late[0].parent, extra=["-nh"])
    assert _responses(refused) == {"Refused: OutOfResources": 4}, refused.stdout + refused.stderr
    wait_until(lambda: "event=jobs_deferred" in node.output(), timeout=20)
    wait_until(lambda: [job.state for job in _jobs(engine)] == [JobState.QUEUED], timeout=20)
    status = _status(node)
    assert [job.state for job in _jobs(engine)] == [JobState.QUEUED], "the early study's job waits for space"
    assert re.search(r"spool: [\d.]+ MB free \(warn below 6 MB, C-STORE refused and jobs wait below 4 MB\)", status)
    time.sleep(1.0)  # several checks while still full
    low.unlink()
    full.unlink()
    wait_until(lambda: [job.state for job in _jobs(engine)] == [JobState.DONE], timeout=20)
    assert storescu(node.port, late[0].parent).returncode == 0
    wait_until(lambda: "event=spool_space_recovered" in node.output(), timeout=20)  # the next space check
    time.sleep(1.0)  # more checks with space back: none may log again
    log = node.output()
    counts = {event: log.count(f"event={event}") for event in
              ("spool_space_low", "spool_space_exhausted", "spool_space_recovered", "jobs_deferred", "jobs_resumed")}
    assert counts == dict.fromkeys(counts, 1), counts
    assert re.search(r"WARNING.*event=spool_space_low", log)
    assert _check_spool_consistent(small_spool, engine) == 8
    engine.dispose()
    record_outcome(area="Outages", fault="spool below min_free_mb (4 MB; filler files on an 8 MB tmpfs)",
                   tried="study pushed at 5 MB free, filler down to 3 MB free, second study pushed, fillers deleted, "
                         "second study pushed again without restart",
                   cases=8,
                   outcome="4 stored, 4 refused with A700 before the disk was full; its job deferred while low and "
                           "run once space returned; warn/exhausted/recovered/deferred/resumed each logged once")


def test_space_check_logs_each_crossing_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    guard = DiskGuard(tmp_path, min_free_mb=100, warn_free_mb=200)
    free = iter([500, 150, 150, 50, 50, 150, 500, 500])
    guard.free_bytes = lambda: next(free) * _MB  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="pacs_node.housekeeping"):
        levels = [guard.check() for _ in range(8)]
    assert levels == ["ok", "low", "low", "full", "full", "low", "ok", "ok"]
    events = [record.getMessage().split()[0] for record in caplog.records]
    assert events == ["event=spool_space_low", "event=spool_space_exhausted", "event=spool_space_low",
                      "event=spool_space_recovered"]
    assert [r.levelname for r in caplog.records] == ["WARNING", "ERROR", "WARNING", "INFO"]


def test_worker_waits_for_space_without_claiming(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    room = [False]
    worker = Worker(engine, "w", lambda *_: JobOutcome({}), 60, 3, has_room=lambda: room[0])
    with caplog.at_level(logging.INFO, logger="pacs_node.worker"):
        assert worker.run_once() is None and worker.run_once() is None
        room[0] = True
        assert worker.run_once() is None  # empty queue
    assert [r.getMessage().split()[0] for r in caplog.records] == ["event=jobs_deferred", "event=jobs_resumed"]
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Job)) == 0
    engine.dispose()
