"""Priors in the database: a fetched prior is never queued, retention keeps it while compared against."""

from __future__ import annotations

import datetime as dt

from alembic import command
from sqlalchemy import func, inspect, select, update

from pacs_node.db import priors, queue
from pacs_node.db.engine import alembic_config
from pacs_node.db.ingest import InstanceRecorder
from pacs_node.db.models import Job, PriorLookup, PriorRetrieval, PriorStatus, RetrievalState, Study, utcnow
from pacs_node.status import render_status
from tests.db.test_retention import KEEP_S, _engine, _finished_study, _later, _purgeable, _receive


def _jobs(engine, study_pk: int) -> int:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(Job).where(Job.study_pk == study_pk))


def _retrieved_study(engine, study: str = "1.2.9") -> int:  # noqa: ANN001
    priors.begin_retrieval(engine, study, "pacs", "get")
    recorder = InstanceRecorder(engine)
    _receive(recorder, study, f"{study}.1.1")
    _receive(recorder, study, f"{study}.1.2")
    recorder.close()
    priors.finish_retrieval(engine, study, 2)
    with engine.connect() as connection:
        return connection.scalar(select(Study.id).where(Study.study_uid == study))


def test_a_fetched_prior_is_completed_without_a_job(database_url: str) -> None:
    engine = _engine(database_url)
    prior_pk = _retrieved_study(engine)
    recorder = InstanceRecorder(engine)
    _receive(recorder, "1.2.3", "1.2.3.1.1")
    recorder.close()
    completed = queue.complete_quiet_studies(engine, 1, now=_later(10))
    with engine.connect() as connection:
        current_pk = connection.scalar(select(Study.id).where(Study.study_uid == "1.2.3"))
        state = connection.execute(select(PriorRetrieval.state, PriorRetrieval.instances)).one()
    assert sorted(completed) == sorted([prior_pk, current_pk])
    assert _jobs(engine, prior_pk) == 0 and _jobs(engine, current_pk) == 1
    assert tuple(state) == (RetrievalState.DONE, 2)
    assert priors.is_retrieved(engine, "1.2.9") and not priors.is_retrieved(engine, "1.2.3")
    engine.dispose()


def test_a_prior_is_kept_while_studies_compare_against_it(database_url: str) -> None:
    engine = _engine(database_url)
    prior_pk = _retrieved_study(engine)
    queue.complete_quiet_studies(engine, 1, now=_later(10))
    assert _purgeable(engine, KEEP_S - 60) == []
    assert _purgeable(engine, KEEP_S + 60) == [prior_pk], "keep_days after it was fetched"
    current_pk, job_pk = _finished_study(engine, "1.2.3")
    priors.record_lookup(engine, current_pk, job_pk, priors.LookupRow(PriorStatus.FOUND, "pacs", "1.2.9", "20250101"))
    with engine.begin() as connection:
        connection.execute(update(PriorLookup).values(created_at=_later(KEEP_S)))
    assert prior_pk not in _purgeable(engine, KEEP_S + 60), "a job compared against it since"
    assert prior_pk in _purgeable(engine, 2 * KEEP_S + 60)
    engine.dispose()


def test_a_study_analysed_long_ago_and_fetched_again_as_a_prior_is_not_purged_at_once(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _finished_study(engine, "1.2.9")
    with engine.begin() as connection:
        connection.execute(update(Job).values(finished_at=utcnow() - dt.timedelta(days=30)))
    priors.begin_retrieval(engine, "1.2.9", "pacs", "move")
    recorder = InstanceRecorder(engine)
    _receive(recorder, "1.2.9", "1.2.9.1.3")
    recorder.close()
    assert queue.complete_quiet_studies(engine, 1, now=_later(10)) == [study_pk]
    assert _jobs(engine, study_pk) == 1, "not analysed again"
    assert _purgeable(engine, 60) == []
    assert _purgeable(engine, KEEP_S + 60) == [study_pk]
    engine.dispose()


def test_counts_and_status(database_url: str) -> None:
    engine = _engine(database_url)
    _retrieved_study(engine)
    queue.complete_quiet_studies(engine, 1, now=_later(10))
    first, job1 = _finished_study(engine, "1.2.3")
    second, job2 = _finished_study(engine, "1.2.4")
    priors.record_lookup(engine, first, job1, priors.LookupRow(PriorStatus.UNAVAILABLE, reason="down"))
    priors.record_lookup(engine, first, job1, priors.LookupRow(PriorStatus.FOUND, "pacs", "1.2.9", "20250101"))
    priors.record_lookup(engine, second, job2, priors.LookupRow(PriorStatus.NONE, "pacs"))
    assert priors.prior_counts(engine) == {"found": 1, "none": 1, "unavailable": 0, "retrieved": 1}
    status = render_status(engine)
    assert "priors: 1 studies had a prior, 1 had none, 0 could not be looked up; 1 studies fetched as priors" in status
    assert "prior (fetched; not analysed)" in status
    engine.dispose()


def test_migration_0004_creates_and_drops_the_prior_tables(database_url: str) -> None:
    engine = _engine(database_url)
    assert {"prior_retrievals", "prior_lookups"} <= set(inspect(engine).get_table_names())
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    assert "prior_lookups" not in inspect(engine).get_table_names()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert {"prior_retrievals", "prior_lookups"} <= set(inspect(engine).get_table_names())
    engine.dispose()
