"""A console app on a seeded SQLite database, with an admin and a viewer."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from pacs_node.config import ConsoleConfig, Destination, Settings, StorageConfig
from pacs_node.console.app import create_app
from pacs_node.console.context import NodeView
from pacs_node.db import users
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.models import (
    Delivery, DeliveryState, Instance, Job, JobState, ObjectKind, Patient, ReportObject, Role, Series, Study,
    StudyState, utcnow,
)
from pacs_node.housekeeping import DiskGuard
from pacs_node.logs import RecentEvents
from tests.conftest import free_port

PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "PID-938271"
STUDY_UID = "1.2.826.0.1.3680043.8.498.777001"
ADMIN, VIEWER = ("ada", "admin-password-1"), ("vic", "viewer-password-1")
RESULT = {"step": "analysis", "analysis_performed": True, "model": "lung-nodule-synthetic-v3 3.0", "findings": 2,
          "lung_rads": "4A", "series": [{"series_uid": "1.2.3.1", "outcome": "analysed", "findings": 2,
                                          "lung_rads": "4A", "slices": 3}],
          "rejected_series": [{"series_uid": "1.2.3.2", "reason": "only 1 slice"}], "timings_s": {"detect_s": 1.5}}


@dataclass
class Console:
    """The app, its database and the ids of what was seeded."""

    client: TestClient
    view: NodeView
    engine: Engine
    study: int
    failed_delivery: int
    tokens: dict[str, str]

    def login(self, who: tuple[str, str], client: TestClient | None = None) -> str:
        """Sign in with the form; returns the session's CSRF token."""
        client = client or self.client
        response = post_login(client, {"name": who[0], "password": who[1]}, follow_redirects=False)
        assert response.status_code == 303, response.text
        return client.get("/api/me").json()["csrf_token"]

    def fresh_client(self) -> TestClient:
        return TestClient(self.client.app)


def post_login(client: TestClient, data: dict[str, str], **kwargs: object):  # noqa: ANN201 - an httpx Response
    """Open the login form (its CSRF cookie and field), then post ``data`` with the token."""
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    return client.post("/login", data={**data, "csrf_token": token}, **kwargs)


def seed(engine: Engine) -> tuple[int, int]:
    """One complete, analysed study with a report, one sent and one failed delivery."""
    now = utcnow()
    with Session(engine) as session:
        patient = Patient(patient_key=PATIENT_ID, patient_id=PATIENT_ID, patient_name=PATIENT_NAME, birth_date="19600101")
        study = Study(study_uid=STUDY_UID, patient=patient, study_date="20261130", accession_number="ACC-55",
                      description="CT CHEST", state=StudyState.COMPLETE, first_received_at=now - dt.timedelta(minutes=5),
                      last_received_at=now - dt.timedelta(minutes=4), completed_at=now - dt.timedelta(minutes=3))
        for number, uid, count in ((2, "1.2.3.1", 3), (3, "1.2.3.2", 1)):
            series = Series(series_uid=uid, study=study, modality="CT", series_number=number, description=f"Lung {number}")
            for i in range(count):
                series.instances.append(Instance(sop_instance_uid=f"{uid}.{i}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                                 instance_number=i, transfer_syntax_uid="1.2.840.10008.1.2.1",
                                                 path=f"x/{uid}.{i}.dcm", size_bytes=1000))
            session.add(series)
        job = Job(study=study, state=JobState.DONE, attempts=1, started_at=now - dt.timedelta(minutes=3),
                  finished_at=now - dt.timedelta(minutes=2), result=json.dumps(RESULT))
        session.add(job)
        session.flush()
        session.add(ReportObject(job_pk=job.id, kind=ObjectKind.SR, sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22",
                                 sop_instance_uid="1.2.3.9.1", path="reports/sr.dcm"))
        session.add(Delivery(job_pk=job.id, destination="pacs", state=DeliveryState.SENT, attempts=1, sent_at=now))
        failed = Delivery(job_pk=job.id, destination="web", state=DeliveryState.FAILED, attempts=8,
                          last_error="gave up after 8 attempts: HTTP 503")
        session.add(failed)
        session.commit()
        return study.id, failed.id


def make_console(tmp_path: Path, **console: object) -> Console:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    settings = Settings(
        storage=StorageConfig(spool_dir=tmp_path / "spool", database_url=url, min_free_mb=0),
        destinations=[
            Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port()),
            Destination(name="web", protocol="dicomweb", url="https://pacs.example.org/dicom-web",
                        auth={"type": "bearer", "token": "s3cret-stow-token"}),
        ],
        console=ConsoleConfig(enabled=True, port=0, login_attempts=3, **console),
    )
    (tmp_path / "spool").mkdir(exist_ok=True)
    engine = make_engine(url)
    upgrade(engine)
    study, failed = seed(engine)
    users.add_user(engine, ADMIN[0], Role.ADMIN, ADMIN[1])
    users.add_user(engine, VIEWER[0], Role.VIEWER, VIEWER[1])
    tokens = {"admin": users.issue_token(engine, ADMIN[0]), "viewer": users.issue_token(engine, VIEWER[0])}
    view = NodeView(settings=settings, engine=engine, guard=DiskGuard(tmp_path / "spool", 0, 0),
                    started_at=utcnow() - dt.timedelta(hours=2), listener_up=lambda: True, model_loaded=lambda: True,
                    events=RecentEvents())
    return Console(TestClient(create_app(view)), view, engine, study, failed, tokens)


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    made = make_console(tmp_path)
    yield made
    made.engine.dispose()
