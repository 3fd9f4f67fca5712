"""Priors in the database: a fetched prior is never queued, retention keeps it while compared against,
and an unavailable prior's recheck queues one re-report job when due."""

from __future__ import annotations

import datetime as dt
import threading

from alembic import command
from sqlalchemy import func, inspect, select, update

from pacs_node.db import priors, queue
from pacs_node.db.engine import alembic_config
from pacs_node.db.ingest import InstanceRecorder
from pacs_node.db.models import (
    Job, JobKind, JobState, PriorLookup, PriorRetrieval, PriorStatus, RetrievalState, Study, utcnow,
)
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
    assert priors.prior_counts(engine) == {"found": 1, "none": 1, "unavailable": 0, "rechecking": 0, "retrieved": 1}
    status = render_status(engine)
    assert "priors: 1 studies had a prior, 1 had none, 0 could not be looked up; 1 studies fetched as priors" in status
    assert "prior (fetched; not analysed)" in status
    engine.dispose()


DOWN = priors.LookupRow(PriorStatus.UNAVAILABLE, reason="pacs: no association")


def _unavailable(engine, study: str = "1.2.3", due_in_s: float = 60) -> tuple[int, int]:  # noqa: ANN001
    """A study analysed while its prior was unavailable, with a recheck in ``due_in_s``; (study id, job id)."""
    study_pk, job_pk = _finished_study(engine, study)
    priors.record_lookup(engine, study_pk, job_pk, DOWN, recheck_at=_later(due_in_s), recheck_until=_later(3600))
    return study_pk, job_pk


def _rereport_jobs(engine, study_pk: int) -> list[tuple[JobKind, JobState]]:  # noqa: ANN001
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            select(Job.kind, Job.state).where(Job.study_pk == study_pk, Job.kind == JobKind.REREPORT))]


def test_a_due_recheck_queues_one_rereport_job(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _unavailable(engine)
    other_pk, _ = _unavailable(engine, "1.2.4", due_in_s=600)
    assert queue.queue_rechecks(engine) == [], "not due yet"
    assert queue.queue_rechecks(engine, now=_later(61)) == [study_pk]
    assert queue.queue_rechecks(engine, now=_later(62)) == [], "taken: queued once"
    assert _rereport_jobs(engine, study_pk) == [(JobKind.REREPORT, JobState.QUEUED)]
    assert _rereport_jobs(engine, other_pk) == []
    claimed = queue.claim_job(engine, "w", 600, 3)
    assert (claimed.study_pk, claimed.kind) == (study_pk, JobKind.REREPORT)
    assert priors.prior_counts(engine)["rechecking"] == 1, "the other study's recheck is still planned"
    engine.dispose()


def test_racing_schedulers_queue_one_rereport_job(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _unavailable(engine)
    queued: list[int] = []
    start = threading.Barrier(6)

    def sweep() -> None:
        start.wait()
        queued.extend(queue.queue_rechecks(engine, now=_later(61)))

    threads = [threading.Thread(target=sweep) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert queued == [study_pk]
    assert len(_rereport_jobs(engine, study_pk)) == 1
    engine.dispose()


def test_only_the_newest_lookup_of_a_study_is_rechecked(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, job_pk = _unavailable(engine)
    priors.record_lookup(engine, study_pk, job_pk, DOWN, recheck_at=_later(120), recheck_until=_later(3600))
    with engine.connect() as connection:
        planned = connection.scalars(select(PriorLookup.recheck_at).order_by(PriorLookup.id)).all()
    assert planned[0] is None and planned[1] is not None, "a new lookup replaces the older row's recheck"
    assert queue.queue_rechecks(engine, now=_later(61)) == []
    assert queue.queue_rechecks(engine, now=_later(121)) == [study_pk]
    priors.record_lookup(engine, study_pk, job_pk, priors.LookupRow(PriorStatus.FOUND, "pacs", "1.2.9", "20250101"))
    assert priors.prior_counts(engine)["rechecking"] == 0
    engine.dispose()


def test_a_study_with_a_job_pending_or_receiving_again_waits(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _unavailable(engine)
    recorder = InstanceRecorder(engine)
    _receive(recorder, "1.2.3", "1.2.3.1.9")  # more images: the study is receiving again
    recorder.close()
    assert queue.queue_rechecks(engine, now=_later(61)) == []
    queue.complete_quiet_studies(engine, 1, now=_later(70))  # complete again: an analysis job is queued
    assert queue.queue_rechecks(engine, now=_later(71)) == [], "its own job will look the prior up"
    assert _rereport_jobs(engine, study_pk) == []
    with engine.connect() as connection:
        assert connection.scalar(select(PriorLookup.recheck_at)) is not None, "left for later, not dropped"
    engine.dispose()


def test_a_purged_study_is_not_rechecked(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _unavailable(engine)
    with engine.begin() as connection:
        connection.execute(update(Study).values(purged_at=utcnow()))
    assert queue.queue_rechecks(engine, now=_later(61)) == []
    assert _rereport_jobs(engine, study_pk) == []
    assert priors.prior_counts(engine)["rechecking"] == 0
    engine.dispose()


def test_status_counts_the_studies_to_be_looked_up_again(database_url: str) -> None:
    engine = _engine(database_url)
    _unavailable(engine)
    second, job = _finished_study(engine, "1.2.4")
    priors.record_lookup(engine, second, job, DOWN)
    assert priors.prior_counts(engine) == {"found": 0, "none": 0, "unavailable": 2, "rechecking": 1, "retrieved": 0}
    assert "2 could not be looked up (1 to be looked up again);" in render_status(engine)
    engine.dispose()


def test_migration_0005_adds_and_drops_job_kinds_and_rechecks(database_url: str) -> None:
    engine = _engine(database_url)
    _, job_pk = _unavailable(engine)
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    assert "kind" not in {column["name"] for column in inspect(engine).get_columns("jobs")}
    assert "recheck_at" not in {column["name"] for column in inspect(engine).get_columns("prior_lookups")}
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with engine.connect() as connection:
        assert connection.scalar(select(Job.kind).where(Job.id == job_pk)) is JobKind.ANALYSIS, "existing jobs"
        assert connection.scalar(select(PriorLookup.recheck_at)) is None
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
