"""Migration 0003 and the console's tables on SQLite and PostgreSQL: users, tokens, keys, audit, manual pause."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import inspect, insert

from pacs_node.config import SendingConfig
from pacs_node.db import audit, operator, users
from pacs_node.db.deliveries import claim_delivery, record_probe
from pacs_node.db.engine import alembic_config, make_engine, upgrade
from pacs_node.db.models import Delivery, Job, JobState, Patient, Role, Study, StudyState, utcnow


@pytest.fixture
def engine(database_url: str):  # noqa: ANN201
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_migration_creates_and_drops_the_console_tables(engine) -> None:  # noqa: ANN001
    tables = set(inspect(engine).get_table_names())
    assert {"users", "api_tokens", "audit_log", "console_keys"} <= tables
    assert {"paused_at", "paused_by"} <= {c["name"] for c in inspect(engine).get_columns("destination_health")}
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    inspector = inspect(engine)
    assert "users" not in inspector.get_table_names()
    assert "paused_at" not in {c["name"] for c in inspector.get_columns("destination_health")}
    upgrade(engine)
    assert "users" in inspect(engine).get_table_names()


def test_users_tokens_and_keys(engine) -> None:  # noqa: ANN001
    ada = users.add_user(engine, "ada", Role.ADMIN, "a long password")
    with pytest.raises(users.UserError):
        users.add_user(engine, "ada", Role.VIEWER, "a long password")
    assert users.authenticate(engine, "ada", "a long password") == ada
    assert users.authenticate(engine, "ada", "wrong password!") is None
    assert users.authenticate(engine, "nobody", "a long password") is None
    token = users.issue_token(engine, "ada")
    assert users.user_for_token(engine, token) == ada
    assert users.user_for_token(engine, token + "x") is None
    key = users.console_key(engine)
    assert len(key) > 40 and users.console_key(engine) == key
    users.disable_user(engine, "ada")
    assert users.user_by_id(engine, ada.id) is None
    assert [a.disabled for a in users.list_users(engine)] == [True]


def test_audit_rows_newest_first(engine) -> None:  # noqa: ANN001
    audit.record(engine, "ada", "pause", "destination pacs", "ok", "deliveries wait")
    audit.record(engine, "ada", "resume", "destination pacs", "ok")
    rows, total = audit.recent(engine, limit=1)
    assert total == 2 and [(r.action, r.outcome) for r in rows] == [("resume", "ok")]


def _study_with_delivery(engine) -> int:  # noqa: ANN001
    now = utcnow()
    with engine.begin() as connection:
        patient = connection.execute(insert(Patient).values(patient_key="k", patient_id="", patient_name="",
                                                            birth_date="").returning(Patient.id)).scalar_one()
        study = connection.execute(insert(Study).values(
            study_uid="1.2.3", patient_pk=patient, study_date="", accession_number="", description="",
            state=StudyState.COMPLETE, first_received_at=now, last_received_at=now).returning(Study.id)).scalar_one()
        job = connection.execute(insert(Job).values(study_pk=study, state=JobState.DONE, attempts=1,
                                                    created_at=now).returning(Job.id)).scalar_one()
        connection.execute(insert(Delivery).values(job_pk=job, destination="pacs", kinds="sr", state="pending",
                                                   attempts=0, next_attempt_at=now, created_at=now))
    return study


def test_manual_pause_outlasts_the_breaker(engine) -> None:  # noqa: ANN001
    _study_with_delivery(engine)
    assert operator.pause_destination(engine, "pacs", "ada")
    assert not operator.pause_destination(engine, "pacs", "ada")
    assert claim_delivery(engine, "w") is None
    record_probe(engine, "pacs", True, SendingConfig())  # the breaker closes; the pause stays
    assert claim_delivery(engine, "w") is None
    assert operator.resume_destination(engine, "pacs")
    assert not operator.resume_destination(engine, "pacs")
    claimed = claim_delivery(engine, "w")
    assert claimed is not None and operator.retry_delivery(engine, claimed.id) is False  # being sent


def test_requeue_analysis(engine) -> None:  # noqa: ANN001
    study = _study_with_delivery(engine)
    assert operator.requeue_analysis(engine, study) is None
    assert "queued or running" in operator.requeue_analysis(engine, study)
    assert operator.requeue_analysis(engine, 999) == "no such study"


def test_status_shows_a_manual_pause(engine) -> None:  # noqa: ANN001
    from pacs_node.status import render_status

    operator.pause_destination(engine, "pacs", "ada")
    assert "destination pacs PAUSED by ada at " in render_status(engine)


def test_migrations_match_the_models(engine) -> None:  # noqa: ANN001
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from pacs_node.db.models import Base

    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
