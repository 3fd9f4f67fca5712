"""A node with ``[storage] backend = "s3"``: DCMTK's storescu pushes, a moto S3 server on loopback stores.

No real S3 server is packaged for Debian or PyPI; moto[server] stands in (``tests/storage/s3_server.py``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, select

from pacs_node.db.models import Instance, Job, JobState, ReportObject
from tests.conftest import DCMTK_ENV, REPO, STORESCU, make_series, storescu, wait_until
from tests.reliability.support import acknowledged
from tests.storage.s3_server import S3Server, check_rows_against_objects, sha256_of_data_set
from tests.storage.s3_server import s3_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration


def _rows(database_url: str, *columns, where=()):  # noqa: ANN001, ANN002, ANN202
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(*columns).where(*where)).all()
    finally:
        engine.dispose()


def test_series_is_stored_in_s3_analysed_sent_and_purged(node_factory, s3_server: S3Server, orthanc,
                                                          tmp_path: Path) -> None:
    series = make_series(tmp_path / "series", slices=12)
    node = node_factory(
        storage={"backend": "s3", "s3": s3_server.config()},
        analysis={"enabled": True, "models_dir": str(REPO / "models")},
        destinations=[{"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}],
        sending={"poll_interval_s": 0.3},
        retention={"keep_days": 0.0001, "sweep_interval_s": 0.5},  # 8.6 s after the job
    )
    result = storescu(node.port, series[0].parent)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Received Store Response (Success)") == len(series)
    # rows and objects, and each object is the data set that was sent
    kept = check_rows_against_objects(node.database_url, s3_server)
    sent = {pydicom.dcmread(p).SOPInstanceUID: sha256_of_data_set(p) for p in series}
    assert kept == sent
    assert not list((node.spool / "studies").rglob("*.dcm"))  # nothing stored on the local disk
    # the job reads the series from the bucket (its headers pick the series) and writes its report there
    [job] = wait_until(lambda: [j for j in _rows(node.database_url, Job.state, Job.result)
                                if j.state in (JobState.DONE, JobState.FAILED)], timeout=90)
    assert job.state == JobState.DONE, job.result
    assert "12 slices" in str(job.result), job.result  # the gate saw every slice (fewer than min_slices)
    reports = _rows(node.database_url, ReportObject.path)
    assert reports and all(key.startswith("reports/") for (key,) in reports)
    assert {key for (key,) in reports} <= set(s3_server.keys("reports/"))
    # the dispatcher fetches the report from the bucket and sends it: Orthanc holds our SR
    study_uid = pydicom.dcmread(series[0]).StudyInstanceUID
    wait_until(lambda: any(orthanc.get(f"/instances/{i}/simplified-tags").get("Modality") == "SR"
                           and orthanc.get(f"/instances/{i}/simplified-tags")["StudyInstanceUID"] == study_uid
                           for i in orthanc.get("/instances")), timeout=60, interval=0.5)
    # retention deletes the instances' objects by their keys; the reports stay (keep_reports)
    wait_until(lambda: not s3_server.keys("studies/"), timeout=60, interval=0.5)
    assert all(row.purged_at is not None for row in _rows(node.database_url, Instance.purged_at))
    assert {key for (key,) in reports} <= set(s3_server.keys("reports/"))
    assert node.stop() == 0


def test_s3_outage_mid_push_refuses_with_a700_and_loses_nothing_acknowledged(
        node_factory, s3_server: S3Server, tmp_path: Path) -> None:
    first = make_series(tmp_path / "first", slices=12, seed=1)
    big = make_series(tmp_path / "big", slices=80, seed=2)
    node = node_factory(storage={"backend": "s3", "s3": s3_server.config(timeout_s=2)}, retention={"enabled": False})
    assert storescu(node.port, first[0].parent).returncode == 0
    scanner = subprocess.Popen([STORESCU, "-v", "-aet", "STORESCU", "-aec", "PACS_NODE", "127.0.0.1", str(node.port),
                                "+sd", str(big[0].parent)], env=DCMTK_ENV, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(_rows(node.database_url, Instance.id)) >= len(first) + 10, timeout=60, interval=0.01)
    s3_server.stop()
    _, pushed = scanner.communicate(timeout=120)
    acked = acknowledged(pushed)
    assert "Received Store Response (Refused: OutOfResources)" in pushed
    assert 10 <= len(acked) < len(big)
    # nothing acknowledged is lost: a row and an object with the sent data set for each
    s3_server.start()
    kept = check_rows_against_objects(node.database_url, s3_server)
    for path in [*first, *map(Path, acked)]:
        assert kept[pydicom.dcmread(path).SOPInstanceUID] == sha256_of_data_set(path)
    # the store is back: the scanner's re-send stores the rest, the acknowledged ones once
    again = storescu(node.port, big[0].parent)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("Received Store Response (Success)") == len(big)
    kept = check_rows_against_objects(node.database_url, s3_server)
    assert len(kept) == len(first) + len(big)
    assert len(s3_server.keys("studies/")) == len(kept)  # no second object for an acknowledged instance
    assert node.stop() == 0
