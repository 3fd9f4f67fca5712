"""Outages of the node's peers: the PACS stops for a while, the database goes away and comes back.

The node is never restarted here: it must notice, say so in its log and status, refuse
what it cannot keep, and carry on by itself once the peer is back.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import Engine, create_engine, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from pacs_node.config import Destination, Settings
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.models import (
    Delivery,
    DeliveryState,
    DestinationHealth,
    Instance,
    Job,
    JobState,
    ObjectKind,
    Patient,
    ReportObject,
    Study,
    StudyState,
)
from pacs_node.db.queue import ClaimedJob
from pacs_node.ml.phantom import generate_phantom, write_dicom_study
from pacs_node.send import dispatcher as dispatcher_module
from pacs_node.send.dispatcher import Dispatcher
from pacs_node.send.scu import SendOutcome
from pacs_node.worker import JobOutcome, Worker
from tests.conftest import (
    POSTGRES_URL,
    REPO,
    _postgres_reachable,
    make_series,
    storescu,
    wait_until,
)
from tests.reliability.proxy import TcpProxy
from tests.reliability.support import NodeDb, acknowledged, cli, dataset_bytes, push

pytestmark = pytest.mark.integration

#: Short retries so that a 20-40 s outage goes through retries, the breaker and its probes.
OUTAGE_SENDING = {"first_retry_s": 1, "max_retry_s": 2, "jitter": 0, "breaker_failures": 3, "probe_interval_s": 2,
                  "poll_interval_s": 0.3, "timeout_s": 5}
PACS_OUTAGE_S = 25.0
DATABASE_OUTAGE_S = 8.0


@pytest.fixture
def postgres_via_proxy() -> Iterator[tuple[str, str, TcpProxy]]:
    """A fresh PostgreSQL schema: (URL straight to the server, URL through a proxy the test owns, the proxy)."""
    if not _postgres_reachable():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: the database outage tests need it")
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    server = make_url(POSTGRES_URL)
    options = f"options=-csearch_path%3D{schema}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    with TcpProxy(server.port or 5432, server.host or "127.0.0.1") as proxy:
        proxied = server.set(port=proxy.port).render_as_string(hide_password=False)
        yield f"{POSTGRES_URL}{separator}{options}", f"{proxied}{separator}{options}", proxy
    with admin.connect() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


# --- the PACS stops ---------------------------------------------------------------------------------------------

def _paused(db: NodeDb) -> list:
    with db.engine.connect() as connection:
        return connection.execute(select(DestinationHealth.name, DestinationHealth.open_since)
                                  .where(DestinationHealth.open_since.is_not(None))).all()


def test_pacs_outage_pauses_the_destination_and_everything_arrives_once_after(
        node_factory, orthanc, tmp_path: Path, record_outcome) -> None:
    phantom = generate_phantom(424243, shape_zyx=(40, 128, 128), spacing_zyx_mm=(2.5, 2.5, 2.5), n_nodules=1,
                               nodule_types=["solid"], diameter_range_mm=(14.0, 20.0), keep_labels=False)
    series = Path(write_dicom_study(phantom, tmp_path / "study").series_dir)
    orthanc.stop()
    stopped_at = time.monotonic()
    node = node_factory(
        analysis={"enabled": True, "models_dir": str(REPO / "models")},
        destinations=[{"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}],
        sending=OUTAGE_SENDING,
    )
    db = NodeDb(node.database_url)
    assert storescu(node.port, series).returncode == 0
    # the analysis runs while the PACS is down; its delivery is tried, retried, then the destination is paused
    wait_until(lambda: _paused(db), timeout=120, interval=0.3)
    [delivery] = db.deliveries()
    assert delivery.state == DeliveryState.PENDING and delivery.attempts == OUTAGE_SENDING["breaker_failures"]
    assert "connection refused" in delivery.last_error
    status = cli("status", "--config", str(node.config))
    assert status.returncode == 0, status.stderr
    assert "destination orthanc PAUSED since" in status.stdout and "probed with C-ECHO" in status.stdout
    log = node.output()
    assert log.count("event=delivery_pending") == OUTAGE_SENDING["breaker_failures"]
    assert "event=destination_paused destination=orthanc failures=3" in log
    # while paused only C-ECHO probes go out, no more sends
    wait_until(lambda: node.output().count("event=destination_probe destination=orthanc answered=False") >= 2,
               timeout=30, interval=0.3)
    time.sleep(max(0.0, PACS_OUTAGE_S - (time.monotonic() - stopped_at)))
    assert [d.attempts for d in db.deliveries()] == [OUTAGE_SENDING["breaker_failures"]]
    outage_s = time.monotonic() - stopped_at
    orthanc.start()
    back_at = time.monotonic()
    wait_until(lambda: [d for d in db.deliveries() if d.state == DeliveryState.SENT], timeout=60, interval=0.2)
    arrived_s = time.monotonic() - back_at
    assert node.process.poll() is None, "the node was not restarted"
    log = node.output()
    assert "event=destination_resumed destination=orthanc reason=C-ECHO probe answered" in log
    [delivery] = db.deliveries()
    assert delivery.attempts == OUTAGE_SENDING["breaker_failures"] + 1 and _paused(db) == []
    objects = db.report_objects()
    stored = [t for t in orthanc.instances() if t["StudyInstanceUID"] == phantom.study_uid]
    assert sorted(t["SOPInstanceUID"] for t in stored) == sorted(o.sop_instance_uid for o in objects), "all, once"
    [sr] = [o.sop_instance_uid for o in objects if o.kind == ObjectKind.SR]
    assert [t["SOPInstanceUID"] for t in stored if t["Modality"] == "SR"] == [sr]
    assert "PAUSED" not in cli("status", "--config", str(node.config)).stdout
    probes = log.count("answered=False")
    db.close()
    record_outcome(
        area="Outages", fault=f"PACS (Orthanc) stopped for {outage_s:.0f} s",
        tried="phantom study analysed and its report delivered while Orthanc is down; retries 1-2 s, "
              "breaker after 3 failures, C-ECHO probe every 2 s; Orthanc started again, node not restarted",
        cases=len(objects),
        outcome=f"3 attempts, then destination paused (log event=destination_paused, status PAUSED), "
                f"{probes} failed probes and no sends while down; after the restart of Orthanc the probe "
                f"resumed it and all {len(objects)} objects arrived once in {arrived_s:.1f} s",
    )


# --- the database goes away -----------------------------------------------------------------------------------

def test_database_outage_refuses_stores_and_resumes_without_restart(
        node_factory, postgres_via_proxy, tmp_path: Path, record_outcome) -> None:
    direct, proxied, proxy = postgres_via_proxy
    node = node_factory(proxied, folder=tmp_path / "node", completion={"quiet_period_s": 2, "sweep_interval_s": 0.3})
    db = NodeDb(direct)
    first = make_series(tmp_path / "first", slices=12, seed=1)
    big = make_series(tmp_path / "big", slices=200, seed=2)
    later = make_series(tmp_path / "later", slices=12, seed=3)
    # a study arrives, and a second one is on the wire when the database goes away
    assert storescu(node.port, first[0].parent).returncode == 0
    scanner = push(node.port, big[0].parent)
    wait_until(lambda: db.count(Instance) >= len(first) + 31, timeout=60, interval=0.01)  # ≥ 30 acknowledged
    dropped = proxy.down()
    down_at = time.monotonic()
    _, pushed = scanner.communicate(timeout=60)
    acked = acknowledged(pushed)
    assert scanner.returncode != 0 and "Received Store Response (Refused: OutOfResources)" in pushed
    assert 30 <= len(acked) < len(big)
    # a new association during the outage: its first C-STORE is refused at once, nothing acknowledged
    started = time.monotonic()
    during = storescu(node.port, later[0].parent)
    refused_s = time.monotonic() - started
    assert during.returncode != 0 and refused_s < 10
    assert "Received Store Response (Refused: OutOfResources)" in during.stderr and acknowledged(during.stderr) == []
    # both pending studies pass their quiet period while the database is away
    time.sleep(max(0.0, DATABASE_OUTAGE_S - (time.monotonic() - down_at)))
    assert node.process.poll() is None
    log = node.output()
    assert "event=database_unavailable" in log
    assert "event=sweep_failed reason=database unavailable" in log
    assert log.count("event=sweep_failed") == 1, "one error line per outage and timer, not one per tick"
    assert [s.state for s in db.studies()] == [StudyState.RECEIVING] * 2
    outage_s = time.monotonic() - down_at
    proxy.up()
    back_at = time.monotonic()
    # the timers carry on: the pending studies complete and are processed, without a restart
    wait_until(lambda: len([j for j in db.jobs() if j.state == JobState.DONE]) == 2, timeout=30, interval=0.2)
    processed_s = time.monotonic() - back_at
    assert "event=sweep_resumed reason=database available" in node.output()
    rows = db.instances()
    for path in [*first, *map(Path, acked)]:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert uid in rows, "an acknowledged instance has no row"
        assert dataset_bytes(node.spool / rows[uid]) == dataset_bytes(path), "kept byte for byte"
    # the scanners send again: everything lands and is processed
    for folder in (later[0].parent, big[0].parent):
        result = storescu(node.port, folder)
        assert result.returncode == 0, result.stderr[-2000:]
    assert db.count(Instance) == len(first) + len(big) + len(later)

    def processed() -> list[int]:
        """Instances seen by the newest job of each study, once every study is complete and its job done."""
        latest = {j.study_pk: j for j in db.jobs()}
        if [s.state for s in db.studies()] != [StudyState.COMPLETE] * 3 or len(latest) != 3:
            return []
        if any(j.state != JobState.DONE for j in latest.values()):
            return []
        return sorted(json.loads(j.result)["instances"] for j in latest.values())

    assert wait_until(processed, timeout=30, interval=0.2) == sorted([len(first), len(big), len(later)])
    db.close()
    record_outcome(
        area="Outages", fault=f"database (PostgreSQL) unreachable for {outage_s:.0f} s",
        tried=f"node on PostgreSQL through a test proxy; proxy dropped {dropped} connection(s) mid-push of a "
              f"200-instance series and refused new ones; a new push during the outage; proxy back, no restart",
        cases=len(first) + len(big) + len(later),
        outcome=f"C-STORE answered A700 (Out of Resources) at once ({refused_s:.2f} s), storescu stopped; "
                f"{len(acked)} instances acknowledged before the drop all kept; log event=database_unavailable, "
                f"one sweep_failed line; {processed_s:.1f} s after the database came back both pending studies "
                f"were complete and processed; re-sent series landed",
    )


def _job_for_a_complete_study(url: str) -> int:
    engine = create_engine(url)
    with engine.begin() as connection:
        patient = connection.execute(insert(Patient).values(patient_key="^", patient_id="", patient_name="",
                                                            birth_date="").returning(Patient.id)).scalar_one()
        study = connection.execute(insert(Study).values(study_uid="1.2.3.4", patient_pk=patient,
                                                        state=StudyState.COMPLETE).returning(Study.id)).scalar_one()
        job = connection.execute(insert(Job).values(study_pk=study, state=JobState.QUEUED, attempts=0)
                                 .returning(Job.id)).scalar_one()
    engine.dispose()
    return job


def test_job_interrupted_by_a_database_outage_runs_again_not_failed(postgres_via_proxy, record_outcome) -> None:
    direct, proxied, proxy = postgres_via_proxy
    engine = make_engine(proxied)
    upgrade(engine)
    job_id = _job_for_a_complete_study(direct)
    runs: list[int] = []

    def runner(engine: Engine, job: ClaimedJob) -> JobOutcome:
        runs.append(job.attempts)
        if len(runs) == 1:
            proxy.down()  # the database goes away while the model runs
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        return JobOutcome({"step": "test", "instances": 0})

    worker = Worker(engine, "node-a", runner, lease_s=600, max_attempts=3)
    assert worker.run_once() == job_id
    db = NodeDb(direct)
    [job] = db.jobs()
    assert job.state == JobState.RUNNING, "held until the database is back, not failed"
    with pytest.raises(OperationalError):
        worker.run_once()  # still down: the scheduler's guard logs it
    proxy.up()
    assert worker.run_once() == job_id  # re-queued first, then claimed and run again
    [job] = db.jobs()
    assert job.state == JobState.DONE and job.attempts == 2 and runs == [1, 2]
    db.close()
    engine.dispose()
    record_outcome(
        area="Outages", fault="database lost while a job runs",
        tried="in-process worker on PostgreSQL through a proxy; the proxy drops all connections inside the job",
        cases=1,
        outcome="job not failed: held, re-queued by the worker's next tick once the database answered, run again "
                "and done (attempt 2)",
    )


def test_delivery_sent_during_a_database_outage_is_recorded_once_it_is_back(
        postgres_via_proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_outcome) -> None:
    direct, proxied, proxy = postgres_via_proxy
    engine = make_engine(proxied)
    upgrade(engine)
    job_id = _job_for_a_complete_study(direct)
    report = tmp_path / "reports" / "sr.dcm"
    report.parent.mkdir(parents=True)
    report.write_bytes(b"not read: the send is faked")
    direct_engine = create_engine(direct)
    with direct_engine.begin() as connection:
        connection.execute(insert(ReportObject).values(job_pk=job_id, kind=ObjectKind.SR, sop_class_uid="1.2",
                                                       sop_instance_uid="1.2.3.4.5", path="reports/sr.dcm"))
        connection.execute(insert(Delivery).values(job_pk=job_id, destination="pacs", kinds="sr",
                                                   state=DeliveryState.PENDING, attempts=0,
                                                   next_attempt_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)))
    direct_engine.dispose()
    settings = Settings.model_validate({
        "node": {"name": "node-a"},
        "storage": {"spool_dir": str(tmp_path), "database_url": proxied},
        "destinations": [Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)],
    })

    def send_while_the_database_goes(destination: Destination, paths: list[Path], calling_ae: str,
                                     timeout_s: float) -> SendOutcome:
        proxy.down()
        return SendOutcome(len(paths))

    monkeypatch.setattr(dispatcher_module, "send_files", send_while_the_database_goes)
    dispatcher = Dispatcher(engine, settings)
    with pytest.raises(OperationalError):
        dispatcher.run_once()
    db = NodeDb(direct)
    assert [d.state for d in db.deliveries()] == [DeliveryState.SENDING]
    proxy.up()
    assert dispatcher.run_once() is None  # records the outcome it kept, then finds nothing due
    [delivery] = db.deliveries()
    assert delivery.state == DeliveryState.SENT and delivery.attempts == 1
    db.close()
    engine.dispose()
    record_outcome(
        area="Outages", fault="database lost while a delivery is on the wire",
        tried="in-process dispatcher on PostgreSQL through a proxy; the proxy drops all connections during the send",
        cases=1,
        outcome="the outcome is kept and recorded (sent, 1 attempt) on the first tick after the database is back; "
                "the delivery is not left 'sending' for the 10-minute lease",
    )
