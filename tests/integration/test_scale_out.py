"""Issue 14 on one machine: HAProxy in front of two receivers, two workers, PostgreSQL and S3, and failures.

Everything runs on loopback.  HAProxy (TCP mode, ``send-proxy-v2``, connecting from 127.0.0.2)
balances the scanner's associations round-robin over two receive-and-send processes; two
analyse-only processes run the bundled model; all four share a fresh PostgreSQL schema and a
moto S3 bucket (``tests/storage/s3_server.py``); Orthanc is the PACS.  Then a receiver is
SIGKILLed mid-association (the scanner re-sends through HAProxy), a worker is SIGKILLed mid-job
(its lease runs out, the job is taken over), and the other worker is SIGSTOPped past its lease
and resumed once its job was taken over: its late result is refused (``event=job_lost``).

Each process is frozen (SIGSTOP) at the moment its log or the database says it is mid-way, so
"mid-association" and "mid-job" hold however fast the machine is; nothing waits a fixed time.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from pacs_node.db.models import Delivery, DeliveryState, Instance, Job, JobState, ObjectKind, ReportObject, Study
from pacs_node.ml.phantom import generate_phantom, write_dicom_study
from tests.conftest import (
    POSTGRES_URL,
    REPO,
    _postgres_reachable,
    free_port,
    fresh_postgres_schema,
    storescu,
    wait_until,
    write_config,
)
from tests.haproxy import HAPROXY, MISSING, HAProxy
from tests.reliability.support import NodeDb, acknowledged, push
from tests.storage.s3_server import S3Server, check_rows_against_objects, sha256_of_data_set
from tests.storage.s3_server import s3_server  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

BALANCER = "127.0.0.2"  #: HAProxy's address as the receivers see it
SCANNER = "127.0.0.1"  #: storescu's address, which the receivers learn from the PROXY header
LEASE_S = 8.0  #: short, so a lost worker's job comes back soon (recovery runs every max(10, lease/4) s)
SPLIT_STUDIES = 3  #: studies sent in two halves, one through each receiver
#: Phantoms the bundled model analyses (seed 4243 is not one: its nodule's centre is found outside the series,
#: and building the SR fails; see the report of issue 14).
SEEDS = (4242, 4244, 4245, 424243)
SUCCESS = "Received Store Response (Success)"
JOB_STARTED = re.compile(r"event=job_started job=(\d+) study=\d+ attempt=(\d+)")


class Serve:
    """One ``pacs-node serve`` process of the cluster, restartable under its name and config (as systemd does)."""

    def __init__(self, name: str, config: Path) -> None:
        self.name = name
        self.config = config
        self.logs: list[Path] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> Serve:
        log = self.config.parent / f"{self.name}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("w") as sink:
            self.process = subprocess.Popen([sys.executable, "-m", "pacs_node", "serve", "--config", str(self.config)],
                                            stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def wait_started(self, timeout: float = 180) -> None:
        assert self.process is not None
        log = self.logs[-1]
        wait_until(lambda: self.process.poll() is not None or "event=node_started" in log.read_text(),
                   timeout=timeout, interval=0.2)
        assert self.process.poll() is None, f"{self.name} exited:\n{log.read_text()}"

    def output(self) -> str:
        """The logs of every run of this process, oldest first."""
        return "".join(log.read_text() for log in self.logs)

    def signal(self, sig: int) -> None:
        assert self.process is not None and self.process.poll() is None, f"{self.name} is not running"
        self.process.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a stopped process handles SIGTERM only once resumed
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Cluster:
    database_url: str
    db: NodeDb
    s3: S3Server
    orthanc: object  # tests.orthanc.Orthanc
    balancer: HAProxy
    receivers: list[Serve]
    workers: list[Serve]


def _balancer(folder: Path, ports: list[int]) -> HAProxy:
    """HAProxy in TCP mode, round-robin (so consecutive associations alternate), PROXY v2 to each receiver;
    a refused connection is retried on the other receiver (``option redispatch``)."""
    servers = "".join(f"    server rx{n} 127.0.0.1:{port} send-proxy-v2 check inter 200ms fall 2 rise 2 "
                      f"check-send-proxy\n" for n, port in enumerate(ports, start=1))
    return HAProxy(folder, "tcp", f"""frontend dicom
    bind 127.0.0.1:{{port}}
    default_backend receivers
backend receivers
    balance roundrobin
    retries 3
    option redispatch
    source {BALANCER}
{servers}""", timeout_s=120)


@pytest.fixture
def cluster(s3_server: S3Server, orthanc, tmp_path: Path) -> Iterator[Cluster]:  # noqa: ANN001 - fixture
    if not HAPROXY.exists():
        pytest.fail(MISSING)
    if not _postgres_reachable():
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} (the scale-out test needs it)")
    destination = {"name": "orthanc", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}
    processes: list[Serve] = []
    balancer, db = None, None
    with fresh_postgres_schema() as database_url:
        shared = {
            "storage": {"backend": "s3", "s3": s3_server.config()},  # the spool (partial files, fetches) per process
            "completion": {"quiet_period_s": 3.0, "sweep_interval_s": 0.3},
            "worker": {"poll_interval_s": 0.3, "lease_s": LEASE_S, "max_attempts": 5},
            "destinations": [destination],  # workers record the deliveries, receivers send them
        }

        def process(name: str, port: int, **sections: dict) -> Serve:
            (tmp_path / name).mkdir()
            serve = Serve(name, write_config(tmp_path / name, port, database_url, **shared, **sections))
            processes.append(serve)
            return serve

        try:
            ports = [free_port(), free_port()]
            receivers = [process(f"rx{n}", port, sending={"poll_interval_s": 0.3},
                                 node={"name": f"rx{n}", "roles": ["receive", "send"], "port": port,
                                       "proxy_protocol": {"trusted": [BALANCER]}})
                         for n, port in enumerate(ports, start=1)]
            workers = [process(f"worker-{x}", free_port(), node={"name": f"worker-{x}", "roles": ["analyse"]},
                               analysis={"enabled": True, "models_dir": str(REPO / "models")})
                       for x in "ab"]
            for receiver in receivers:  # one after the other: the first creates the schema
                receiver.start().wait_started()
            balancer = _balancer(tmp_path / "haproxy", ports).start()
            db = NodeDb(database_url)
            yield Cluster(database_url, db, s3_server, orthanc, balancer, receivers, workers)
        finally:
            for serve in processes:
                serve.stop()
            if balancer is not None:
                balancer.stop()
            if db is not None:
                db.close()


def _study(folder: Path, seed: int) -> tuple[str, list[Path]]:
    """A small phantom chest CT with one nodule: its Study Instance UID and files (sorted)."""
    phantom = generate_phantom(seed, shape_zyx=(48, 192, 192), spacing_zyx_mm=(1.25, 1.6, 1.6),
                               n_nodules=1, nodule_types=["solid"], diameter_range_mm=(12.0, 18.0))
    series = Path(write_dicom_study(phantom, folder).series_dir)
    return phantom.study_uid, sorted(series.glob("*.dcm"))


def _served_by(receivers: list[Serve], calling_ae: str) -> int:
    """Which receiver accepted ``calling_ae``'s association, seeing the scanner's address (not HAProxy's)."""
    accepted = re.compile(rf"event=association_accepted assoc=\d+ peer={re.escape(SCANNER)} calling_ae={calling_ae} ")
    found = wait_until(lambda: [n for n, r in enumerate(receivers) if accepted.search(r.output())], timeout=10)
    assert len(found) == 1, f"{calling_ae} was accepted by {len(found)} receivers"
    return found[0]


def _job_starts(log: str) -> list[tuple[int, int]]:
    """(job, attempt) of each ``event=job_started`` in a worker's log, in order."""
    return [(int(job), int(attempt)) for job, attempt in JOB_STARTED.findall(log)]


def _job(db: NodeDb, job_id: int):  # noqa: ANN202 - a row
    """(state, holder, attempts) of one job."""
    return db.rows(select(Job.state, Job.claimed_by, Job.attempts).where(Job.id == job_id))[0]


def _freeze_mid_job(worker: Serve, job_id: int, attempt: int, db: NodeDb) -> None:
    """SIGSTOP ``worker`` and check it was mid-way through ``job_id``: the job runs under its claim, not done."""
    worker.signal(signal.SIGSTOP)
    state, holder, attempts = _job(db, job_id)
    assert (state, holder, attempts) == (JobState.RUNNING, worker.name, attempt), \
        f"job {job_id} was {state} under {holder} (attempt {attempts}) when {worker.name} was stopped"
    assert f"event=job_done job={job_id} " not in worker.output()


def test_studies_split_over_receivers_survive_killed_and_paused_processes(cluster: Cluster, tmp_path: Path) -> None:
    receivers, (worker_a, worker_b) = cluster.receivers, cluster.workers
    url, db = cluster.database_url, cluster.db
    studies = [_study(tmp_path / f"study{n}", seed) for n, seed in enumerate(SEEDS)]
    study_uids = [uid for uid, _ in studies]

    # several studies, each split across both receivers: two associations, which HAProxy alternates
    for n, (_, files) in enumerate(studies[:SPLIT_STUDIES]):
        half = len(files) // 2
        for part, chunk in (("A", files[:half]), ("B", files[half:])):
            pushed = storescu(cluster.balancer.port, chunk, calling_ae=f"SCAN{n}{part}")
            assert pushed.returncode == 0, pushed.stderr
            assert pushed.stderr.count(SUCCESS) == len(chunk)
    for n in range(SPLIT_STUDIES):
        assert _served_by(receivers, f"SCAN{n}A") != _served_by(receivers, f"SCAN{n}B"), f"study {n} was not split"

    # a receiver is SIGKILLed mid-association: frozen once some of the study is stored, then killed
    last_files = studies[-1][1]
    scanner_log = tmp_path / "scanner.log"
    scanner = push(cluster.balancer.port, last_files[0].parent, calling_ae="SCANLAST", log=scanner_log)
    wait_until(lambda: len(db.rows(select(Instance.id).where(Instance.calling_ae == "SCANLAST"))) >= 5,
               timeout=60, interval=0.01)
    victim = receivers[_served_by(receivers, "SCANLAST")]
    victim.signal(signal.SIGSTOP)
    assert scanner.poll() is None, "the association ended before its receiver was stopped"
    victim.kill()
    scanner.wait(timeout=60)
    acked = acknowledged(scanner_log.read_text())
    assert len(acked) < len(last_files)
    kept = check_rows_against_objects(url, cluster.s3)  # what the killed receiver acknowledged is kept
    for path in map(Path, acked):
        assert kept[pydicom.dcmread(path).SOPInstanceUID] == sha256_of_data_set(path)

    # the scanner re-sends the study through HAProxy (again, while the balancer still tries the dead receiver)
    def resend() -> subprocess.CompletedProcess | None:
        result = storescu(cluster.balancer.port, last_files[0].parent, calling_ae="SCANLAST")
        return result if result.returncode == 0 else None

    resent = wait_until(resend, timeout=60, interval=0.5)
    assert resent.stderr.count(SUCCESS) == len(last_files)
    survivor = next(r for r in receivers if r is not victim)
    assert "calling_ae=SCANLAST " in survivor.output()
    victim.start().wait_started()  # systemd restarts it

    # two workers; one is SIGKILLed mid-job
    for worker in (worker_a, worker_b):
        worker.start()
    for worker in (worker_a, worker_b):
        worker.wait_started()
    job_1, attempt_1 = wait_until(lambda: _job_starts(worker_a.output()), timeout=180, interval=0.02)[0]
    _freeze_mid_job(worker_a, job_1, attempt_1, db)
    worker_a.kill()

    # the other is SIGSTOPped on its next job, past its lease
    seen = len(_job_starts(worker_b.output()))
    job_2, attempt_2 = wait_until(lambda: _job_starts(worker_b.output())[seen:], timeout=180, interval=0.02)[0]
    _freeze_mid_job(worker_b, job_2, attempt_2, db)

    def requeued(job_id: int, attempt: int) -> bool:
        state, _, attempts = _job(db, job_id)
        return state == JobState.QUEUED or attempts > attempt

    wait_until(lambda: requeued(job_1, attempt_1) and requeued(job_2, attempt_2), timeout=LEASE_S + 60, interval=0.5)
    assert any("reason=lease expired" in r.output() for r in receivers), "a receiver's recovery sweep requeued them"

    # the killed worker comes back under its name and takes the paused worker's job over; then the paused one resumes
    worker_a.start().wait_started()

    def taken_over() -> bool:
        _, holder, attempts = _job(db, job_2)
        return holder == worker_a.name and attempts > attempt_2

    wait_until(taken_over, timeout=180, interval=0.2)
    worker_b.signal(signal.SIGCONT)
    wait_until(lambda: f"event=job_lost job={job_2} " in worker_b.output(), timeout=120, interval=0.2)
    assert f"event=job_done job={job_2} " not in worker_b.output(), "the paused worker's late result is refused"

    # every study is analysed to one result, delivered once
    def settled() -> list | None:
        jobs = db.rows(select(Study.study_uid, Job.id, Job.state, Job.claimed_by, Job.result, Job.error)
                       .join(Job, Job.study_pk == Study.id))
        assert not [job for job in jobs if job.state == JobState.FAILED], jobs
        if any(job.state in (JobState.QUEUED, JobState.RUNNING) for job in jobs):
            return None
        return jobs if {job.study_uid for job in jobs if job.state == JobState.DONE} == set(study_uids) else None

    jobs = wait_until(settled, timeout=300, interval=0.5)
    done = [job for job in jobs if job.state == JobState.DONE]
    assert Counter(job.study_uid for job in done) == Counter(study_uids), done
    assert all(job.state in (JobState.DONE, JobState.SUPERSEDED) for job in jobs), jobs  # superseded: study re-opened
    assert all('"analysis_performed": true' in job.result for job in done), [job.result for job in done]
    by_id = {job.id: job for job in jobs}
    assert by_id[job_2].claimed_by == worker_a.name, "the result recorded is the one of the attempt that took over"
    assert by_id[job_1].state == JobState.DONE

    done_ids = [job.id for job in done]
    wait_until(lambda: [state for (state,) in db.rows(select(Delivery.state).where(Delivery.job_pk.in_(done_ids)))]
               == [DeliveryState.SENT] * len(done), timeout=120, interval=0.5)
    reports = db.rows(select(ReportObject.job_pk, ReportObject.kind, ReportObject.sop_instance_uid,
                             ReportObject.path, ReportObject.purged_at))
    assert {row.job_pk for row in reports} == set(done_ids), "objects only of the jobs whose result was recorded"
    ours = {row.sop_instance_uid for row in reports if row.kind == ObjectKind.SR}
    in_pacs = [tags for tags in cluster.orthanc.instances() if tags["Modality"] == "SR"]
    assert Counter(tags["StudyInstanceUID"] for tags in in_pacs) == Counter(study_uids), "one SR per study in the PACS"
    assert {tags["SOPInstanceUID"] for tags in in_pacs} == ours

    # every acknowledged instance has its row and an object with the data set sent; no row names a missing object
    kept = check_rows_against_objects(url, cluster.s3)
    sent = {pydicom.dcmread(path).SOPInstanceUID: sha256_of_data_set(path) for _, files in studies for path in files}
    assert kept == sent
    objects = set(cluster.s3.keys("reports/"))
    missing = [row.path for row in reports if row.purged_at is None and row.path not in objects]
    assert not missing, f"report rows name objects the bucket lacks: {missing}"
    # the paused worker wrote its report objects before its result was refused: left for the orphan sweep
    assert len(objects) > len(reports)
