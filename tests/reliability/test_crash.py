"""Crash safety: the node is SIGKILLed mid-push, mid-analysis and mid-delivery, then restarted.

Each restart happens only once every process of the node is gone (as systemd does),
and the node must carry on from its rows alone: nothing acknowledged is lost, a job
killed while running runs again, a delivery killed on the wire is sent again with the
same objects, and the PACS ends up with each object exactly once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest

from pacs_node.db.models import (
    DeliveryState,
    Instance,
    JobState,
    ObjectKind,
    StudyState,
)
from pacs_node.ml.phantom import generate_phantom, write_dicom_study
from tests.conftest import REPO, make_series, storescu, wait_until
from tests.orthanc import Orthanc
from tests.reliability.proxy import TcpProxy
from tests.reliability.support import (
    NodeDb,
    acknowledged,
    dataset_bytes,
    kill_node,
    push,
)

pytestmark = pytest.mark.integration

FAST_SENDING = {"first_retry_s": 1, "max_retry_s": 2, "jitter": 0, "breaker_failures": 3, "probe_interval_s": 1,
                "poll_interval_s": 0.3, "timeout_s": 10}


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A small synthetic chest CT (40 slices of 128 x 128, 2.5 mm) with one large nodule: (series folder, study UID)."""
    phantom = generate_phantom(424243, shape_zyx=(40, 128, 128), spacing_zyx_mm=(2.5, 2.5, 2.5), n_nodules=1,
                               nodule_types=["solid"], diameter_range_mm=(14.0, 20.0), keep_labels=False)
    written = write_dicom_study(phantom, tmp_path_factory.mktemp("phantom") / "study")
    return Path(written.series_dir), phantom.study_uid


def _analysing(destination_port: int, orthanc: Orthanc) -> dict:
    return {
        "analysis": {"enabled": True, "models_dir": str(REPO / "models")},
        "destinations": [{"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                          "port": destination_port}],
        "sending": FAST_SENDING,
    }


def _in_orthanc(orthanc: Orthanc, study_uid: str) -> list[dict]:
    return [tags for tags in orthanc.instances() if tags["StudyInstanceUID"] == study_uid]


def _assert_report_arrived_once(db: NodeDb, orthanc: Orthanc, study_uid: str) -> tuple[str, int]:
    """Orthanc holds exactly the objects the DB recorded for the study's one done job; (SR UID, objects)."""
    [done] = [j for j in db.jobs() if j.state == JobState.DONE]
    objects = db.report_objects()
    assert {o.job_pk for o in objects} == {done.id}, "objects of one job only"
    [sr_uid] = [o.sop_instance_uid for o in objects if o.kind == ObjectKind.SR]
    stored = _in_orthanc(orthanc, study_uid)
    assert len(stored) == len(objects), f"Orthanc has {len(stored)} instances for {len(objects)} objects"
    assert sorted(t["SOPInstanceUID"] for t in stored) == sorted(o.sop_instance_uid for o in objects)
    [sr] = [t for t in stored if t["Modality"] == "SR"]
    assert sr["SOPInstanceUID"] == sr_uid
    key_images = [t for t in stored if t["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.7"]
    assert len(key_images) == len(objects) - 1 >= 1
    return sr_uid, len(objects)


def test_sigkill_mid_push_loses_no_acknowledged_instance(node_factory, tmp_path: Path, record_outcome) -> None:
    series = make_series(tmp_path / "series", slices=400, size=128)
    node = node_factory(folder=tmp_path / "node")
    db = NodeDb(node.database_url)
    scanner = push(node.port, series[0].parent)
    # storescu waits for each response: with 41 rows, at least 40 were acknowledged
    wait_until(lambda: db.count(Instance) >= 41, timeout=60, interval=0.01)
    kill_node(node)
    killed_at = time.monotonic()
    _, log = scanner.communicate(timeout=60)
    done = acknowledged(log)
    assert 40 <= len(done) < len(series), "the kill should land mid-push"
    # whatever the kill interrupted, every file visible under studies/ is complete
    visible = sorted((node.spool / "studies").rglob("*.dcm"))
    for path in visible:
        assert pydicom.dcmread(path).PixelData
    restarted = node_factory(folder=tmp_path / "node", database_url=node.database_url, node={"port": node.port})
    assert list((restarted.spool / "incoming").rglob("*.part")) == [], "partial files are cleaned at start"
    rows = db.instances()
    for path in done:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert uid in rows, "an acknowledged instance has no row"
        assert dataset_bytes(restarted.spool / rows[uid]) == dataset_bytes(path), "kept byte for byte"
    # a row is committed before its file is renamed into place: at most the one instance in flight has no file
    visible_paths = {path.relative_to(node.spool).as_posix() for path in visible}
    assert visible_paths <= set(rows.values()) and len(set(rows.values()) - visible_paths) <= 1
    # the study's timer survived the crash: it completes from its rows, and is processed once
    [first] = wait_until(lambda: [j for j in db.jobs() if j.state == JobState.DONE], timeout=30)
    recovered_s = time.monotonic() - killed_at
    assert json.loads(first.result)["instances"] == len(rows)
    time.sleep(2)  # several sweeps: no second job for the same completion
    assert len(db.jobs()) == 1 and first.attempts == 1
    # the scanner re-sends the whole series: the rest arrives, nothing twice, one more job for the new instances
    again = storescu(restarted.port, series[0].parent)
    assert again.returncode == 0, again.stderr
    assert db.count(Instance) == len(series) == len(list((restarted.spool / "studies").rglob("*.dcm")))
    second = wait_until(lambda: [j for j in db.jobs() if j.state == JobState.DONE and j.id != first.id], timeout=30)
    assert len(second) == 1 and json.loads(second[0].result)["instances"] == len(series)
    assert [s.state for s in db.studies()] == [StudyState.COMPLETE]
    db.close()
    record_outcome(
        area="Crash safety", fault="SIGKILL mid-association",
        tried=f"storescu pushes {len(series)} CT instances (128×128); node SIGKILLed after ≥40 stored; restart",
        cases=len(series),
        outcome=f"{len(done)} acknowledged before the kill, all with row and byte-identical file; no partial "
                f"file visible; study completed from its rows {recovered_s:.1f} s after the kill and was processed "
                f"once; re-push stored the other {len(series) - len(rows)} once",
    )


def test_sigkill_mid_analysis_runs_the_job_again_and_one_report_arrives(
        node_factory, orthanc, phantom_series, tmp_path: Path, record_outcome) -> None:
    series, study_uid = phantom_series
    config = _analysing(orthanc.dicom_port, orthanc)
    node = node_factory(folder=tmp_path / "node", **config)
    db = NodeDb(node.database_url)
    assert storescu(node.port, series).returncode == 0
    wait_until(lambda: [j for j in db.jobs() if j.state == JobState.RUNNING], timeout=60)
    time.sleep(1.5)  # inside the model: the detector takes 10 s or more
    kill_node(node)
    killed_at = time.monotonic()
    [killed] = db.jobs()
    assert killed.state == JobState.RUNNING and db.report_objects() == [] and db.deliveries() == []
    restarted = node_factory(folder=tmp_path / "node", database_url=node.database_url, node={"port": node.port},
                             **config)
    wait_until(lambda: [d for d in db.deliveries() if d.state == DeliveryState.SENT], timeout=180, interval=0.3)
    recovered_s = time.monotonic() - killed_at
    assert "event=jobs_requeued count=1 reason=running at last stop" in restarted.output()
    [job] = db.jobs()
    assert job.id == killed.id and job.state == JobState.DONE and job.attempts == 2
    [delivery] = db.deliveries()
    assert delivery.attempts == 1
    _, objects = _assert_report_arrived_once(db, orthanc, study_uid)
    db.close()
    record_outcome(
        area="Crash safety", fault="SIGKILL mid-analysis",
        tried="40-slice phantom study analysed by the bundled detector; node SIGKILLed 1.5 s after the job "
              "started (job row running); restart",
        cases=1,
        outcome=f"job re-queued at start and run again (attempt 2); one SR + {objects - 1} key image(s) in "
                f"Orthanc, SR UID as recorded; delivered {recovered_s:.0f} s after the kill",
    )


def test_sigkill_mid_delivery_sends_the_same_objects_again_once(
        node_factory, orthanc, phantom_series, tmp_path: Path, record_outcome) -> None:
    series, study_uid = phantom_series
    with TcpProxy(orthanc.dicom_port, throttle_bps=48_000) as slow_link:  # the PACS accepts slowly
        config = _analysing(slow_link.port, orthanc)
        node = node_factory(folder=tmp_path / "node", **config)
        db = NodeDb(node.database_url)
        assert storescu(node.port, series).returncode == 0

        def partly_delivered() -> bool:
            sending = [d for d in db.deliveries() if d.state == DeliveryState.SENDING]
            return bool(sending) and len(_in_orthanc(orthanc, study_uid)) >= 1

        wait_until(partly_delivered, timeout=120, interval=0.1)
        kill_node(node)
        killed_at = time.monotonic()
        objects = db.report_objects()
        before = len(_in_orthanc(orthanc, study_uid))
        [killed] = db.deliveries()
        assert killed.state == DeliveryState.SENDING and 1 <= before < len(objects), "killed on the wire"
        slow_link.throttle_bps = None
        restarted = node_factory(folder=tmp_path / "node", database_url=node.database_url, node={"port": node.port},
                                 **config)
        wait_until(lambda: [d for d in db.deliveries() if d.state == DeliveryState.SENT], timeout=60, interval=0.2)
        recovered_s = time.monotonic() - killed_at
    [delivery] = db.deliveries()
    assert delivery.id == killed.id and delivery.attempts == 2
    assert "event=deliveries_requeued count=1" in restarted.output()
    assert db.report_objects() == objects, "the same objects, nothing regenerated"
    [job] = db.jobs()
    assert job.attempts == 1
    _, count = _assert_report_arrived_once(db, orthanc, study_uid)
    db.close()
    record_outcome(
        area="Crash safety", fault="SIGKILL mid-delivery",
        tried=f"report of a phantom study sent over a slow link (48 kB/s); node SIGKILLed with the delivery "
              f"'sending' and {before} of {count} objects in Orthanc; restart",
        cases=count,
        outcome=f"delivery re-queued at start (not left 'sending'), sent again {recovered_s:.1f} s after the kill; "
                f"Orthanc holds exactly {count} instances, SR UID as recorded",
    )
