"""Sending reports to a real PACS (Orthanc): arrival, outages, permanent refusals, resend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select

from pacs_node.config import load_settings
from pacs_node.db.deliveries import queue_deliveries, record_objects
from pacs_node.db.models import Delivery, DeliveryState, Job, JobState, ObjectKind
from pacs_node.receive.spool import Spool
from pacs_node.report.identity import SeriesIdentity
from pacs_node.report.keyimages import build_key_images
from pacs_node.report.sr import AlgorithmInfo, DeviceInfo, ReportOutcome, build_report, read_findings
from tests.conftest import RunningNode, storescu, wait_until
from tests.report import findings, write_series

pytestmark = pytest.mark.integration

FAST_RETRIES = {"first_retry_s": 1, "max_retry_s": 2, "jitter": 0, "breaker_failures": 3, "probe_interval_s": 1,
                "poll_interval_s": 0.3, "timeout_s": 5}
ALGORITHM = AlgorithmInfo("pacs-node-test-detector", "0.0.1", synthetic_data=True)
DEVICE = DeviceInfo("pacs-node project", "pacs-node", "0.1.0", "test-node")


def _destination(orthanc, **overrides) -> dict:  # noqa: ANN001
    return {"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port} | overrides


def _engine(node: RunningNode):  # noqa: ANN202
    return create_engine(node.database_url)


def _deliveries(node: RunningNode) -> list:
    engine = _engine(node)
    with engine.connect() as connection:
        rows = connection.execute(select(Delivery.id, Delivery.state, Delivery.attempts, Delivery.last_error)
                                  .order_by(Delivery.id)).all()
    engine.dispose()
    return rows


def _report_for_received_study(node: RunningNode, tmp_path: Path) -> dict:
    """Push a CT series, wait for its job, then store an SR and key images as an analysis would."""
    series = write_series(tmp_path / "ct")
    assert storescu(node.port, series[0].parent).returncode == 0
    engine = _engine(node)

    def done_job() -> int | None:
        with engine.connect() as connection:
            return connection.scalar(select(Job.id).where(Job.state == JobState.DONE))

    job = wait_until(done_job, timeout=30)
    source = [pydicom.dcmread(path) for path in series]
    sr_uid, sc_uids = generate_uid(), [generate_uid() for _ in range(3)]
    sr = build_report(source, findings(), outcome=ReportOutcome.analysed(), algorithm=ALGORITHM, device=DEVICE,
                      identity=SeriesIdentity.fresh(901).instance(sr_uid))
    images = build_key_images(source, findings(), outcome=ReportOutcome.analysed(), algorithm=ALGORITHM,
                              device=DEVICE, series=SeriesIdentity.fresh(902), sop_instance_uids=sc_uids)
    spool = Spool(node.spool, node_name="test-writer")
    study_uid = source[0].StudyInstanceUID
    objects = []
    for kind, ds in [(ObjectKind.SR, sr), *((ObjectKind.KEY_IMAGE, image) for image in images)]:
        stored = spool.write_dataset(ds, spool.report_path(study_uid, ds.SOPInstanceUID))
        objects.append((kind, ds.SOPClassUID, ds.SOPInstanceUID, stored.relative_path))
    spool.close()
    record_objects(engine, job, objects)
    engine.dispose()
    return {"job": job, "study_uid": study_uid, "sr_uid": sr_uid, "sc_uids": sc_uids}


def test_report_and_key_images_arrive_in_the_study(node_factory, orthanc, tmp_path: Path) -> None:
    node = node_factory(destinations=[_destination(orthanc)], sending=FAST_RETRIES)
    report = _report_for_received_study(node, tmp_path)
    engine = _engine(node)
    queue_deliveries(engine, report["job"], load_settings(node.config).destinations)
    engine.dispose()
    wait_until(lambda: [d for d in _deliveries(node) if d.state == DeliveryState.SENT], timeout=30)
    stored = {i["SOPInstanceUID"]: i for i in orthanc.instances()}
    assert set(stored) == {report["sr_uid"], *report["sc_uids"]}
    assert {i["StudyInstanceUID"] for i in stored.values()} == {report["study_uid"]}
    assert stored[report["sr_uid"]]["Modality"] == "SR"
    [sr_id] = [i for i in orthanc.get("/instances")
               if orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == report["sr_uid"]]
    sr_file = tmp_path / "from-orthanc.dcm"
    sr_file.write_bytes(orthanc.get_bytes(f"/instances/{sr_id}/file"))
    read_back = read_findings(pydicom.dcmread(sr_file))
    assert [round(f["diameter_mm"], 1) for f in read_back] == [f.diameter_mm for f in findings()]


def test_outage_is_retried_and_everything_arrives_once(node_factory, orthanc, tmp_path: Path) -> None:
    node = node_factory(destinations=[_destination(orthanc)], sending=FAST_RETRIES)
    report = _report_for_received_study(node, tmp_path)
    orthanc.stop()
    engine = _engine(node)
    queue_deliveries(engine, report["job"], load_settings(node.config).destinations)
    engine.dispose()
    wait_until(lambda: any(d.attempts >= 2 and d.state == DeliveryState.PENDING for d in _deliveries(node)), timeout=30)
    status = subprocess.run([sys.executable, "-m", "pacs_node", "status", "--config", str(node.config)],
                            capture_output=True, text=True, timeout=60)
    assert "deliveries failed or retrying" in status.stdout
    orthanc.start()
    wait_until(lambda: [d for d in _deliveries(node) if d.state == DeliveryState.SENT], timeout=60)
    uids = [i["SOPInstanceUID"] for i in orthanc.instances()]
    assert sorted(uids) == sorted([report["sr_uid"], *report["sc_uids"]]), "everything arrives, once"
    assert "event=delivery_pending" in node.output() and "event=delivery_sent" in node.output()


def test_permanent_refusal_stops_at_once_and_resend_redelivers_the_same_objects(node_factory, orthanc,
                                                                                tmp_path: Path) -> None:
    wrong = _destination(orthanc, name="wrong-ae", ae_title="NOT_ORTHANC")
    right = _destination(orthanc)
    # a generous time-out: on a loaded machine a 5 s association attempt can time out
    # (transient, retried) before the rejection this test is about arrives
    node = node_factory(destinations=[wrong, right], sending={**FAST_RETRIES, "timeout_s": 30})
    report = _report_for_received_study(node, tmp_path)
    engine = _engine(node)
    queue_deliveries(engine, report["job"], load_settings(node.config).destinations)
    engine.dispose()
    wait_until(lambda: len([d for d in _deliveries(node) if d.state in (DeliveryState.SENT, DeliveryState.FAILED)]) == 2,
               timeout=30)
    failed = [d for d in _deliveries(node) if d.state == DeliveryState.FAILED]
    assert len(failed) == 1 and failed[0].attempts == 1
    assert "permanent: association rejected" in failed[0].last_error
    first = sorted(i["SOPInstanceUID"] for i in orthanc.instances())
    resent = subprocess.run([sys.executable, "-m", "pacs_node", "resend", report["study_uid"], "--config",
                             str(node.config)], capture_output=True, text=True, timeout=60)
    assert resent.returncode == 0, resent.stderr
    wait_until(lambda: len([d for d in _deliveries(node) if d.state == DeliveryState.SENT]) == 2, timeout=30)
    assert sorted(i["SOPInstanceUID"] for i in orthanc.instances()) == first, "same objects, no duplicates"
