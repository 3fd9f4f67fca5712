"""Retention on SQLite and PostgreSQL: which studies' files may go, marking, re-sent instances,
the file side's crash-safe order, and migration 0002 on a database made at 0001."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, select, text, update

from pacs_node.config import Destination, RetentionConfig, SendingConfig
from pacs_node.db import deliveries, queue, retention
from pacs_node.db.engine import alembic_config, make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.db.models import (
    Delivery,
    DeliveryState,
    FailureKind,
    Instance,
    JobState,
    ObjectKind,
    ReportObject,
    Study,
    StudyState,
    utcnow,
)
from pacs_node.housekeeping import Retention

KEEP_S = 3600.0
SENDING = SendingConfig(max_attempts=2, first_retry_s=1, jitter=0)
PACS = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def _engine(url: str) -> Engine:
    engine = make_engine(url)
    upgrade(engine)
    return engine


def _later(seconds: float) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


def _path(study: str, sop: str) -> str:
    return f"studies/{study}/{study}.1/{sop}.dcm"


def _receive(recorder: InstanceRecorder, study: str, sop: str, spool: Path | None = None) -> bool:
    """Record an instance (and write its file into ``spool`` when given), as the receiver does."""
    relative = _path(study, sop)
    if spool is not None:
        (spool / relative).parent.mkdir(parents=True, exist_ok=True)
        (spool / relative).write_bytes(b"DICM" * 25)
    return recorder.record(ReceivedInstance(
        sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid=study, series_uid=study + ".1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", relative_path=relative, size_bytes=100, calling_ae="CT1",
        patient_id="P1", patient_name="Doe^Jane", modality="CT"))


def _finished_study(engine: Engine, study: str = "1.2.3", instances: int = 2, spool: Path | None = None,
                    state: JobState = JobState.DONE, report: bool = False) -> tuple[int, int]:
    """A study received, completed and analysed; (study id, job id)."""
    recorder = InstanceRecorder(engine)
    for number in range(1, instances + 1):
        _receive(recorder, study, f"{study}.1.{number}", spool)
    [study_pk] = queue.complete_quiet_studies(engine, 1, now=_later(10))
    job = queue.claim_job(engine, "w", 600, 3)
    objects = []
    if report:
        relative = f"reports/{study}/{study}.9.1.dcm"
        if spool is not None:
            (spool / relative).parent.mkdir(parents=True, exist_ok=True)
            (spool / relative).write_bytes(b"SR" * 10)
        objects = [(ObjectKind.SR, SR_CLASS, f"{study}.9.1", relative)]
    queue.finish_job(engine, job, "w", state, result={}, objects=objects)
    return study_pk, job.id


def _purgeable(engine: Engine, seconds_later: float) -> list[int]:
    return retention.purgeable_studies(engine, KEEP_S, now=_later(seconds_later))


def test_finished_study_without_destinations_is_purgeable_after_keep(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _finished_study(engine)
    assert _purgeable(engine, KEEP_S - 60) == [], "kept for keep_days after the job finished"
    assert _purgeable(engine, KEEP_S + 60) == [study_pk]
    engine.dispose()


def test_failed_job_counts_as_finished(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _finished_study(engine, state=JobState.FAILED)
    assert _purgeable(engine, KEEP_S + 60) == [study_pk]
    engine.dispose()


def test_pending_delivery_is_not_purged_until_it_is_sent_and_keep_passed(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, job = _finished_study(engine, report=True)
    deliveries.queue_deliveries(engine, job, [PACS])
    assert _purgeable(engine, 30 * 86400) == [], "a queued delivery keeps everything"
    claimed = deliveries.claim_delivery(engine, "w")
    assert _purgeable(engine, 30 * 86400) == [], "a delivery being sent keeps everything"
    deliveries.record_outcome(engine, claimed, "w", FailureKind.TRANSIENT, "refused", SENDING)
    assert _purgeable(engine, 30 * 86400) == [], "a delivery waiting to retry keeps everything"
    with engine.begin() as connection:
        connection.execute(update(Delivery).values(next_attempt_at=utcnow()))
    claimed = deliveries.claim_delivery(engine, "w")
    deliveries.record_outcome(engine, claimed, "w", None, "", SENDING)
    assert _purgeable(engine, KEEP_S - 60) == [], "keep_days count from the delivery"
    assert _purgeable(engine, KEEP_S + 60) == [study_pk]
    engine.dispose()


def test_permanently_failed_or_given_up_delivery_is_purged(database_url: str) -> None:
    engine = _engine(database_url)
    refused, refused_job = _finished_study(engine, "1.2.3", report=True)
    given_up, given_up_job = _finished_study(engine, "1.2.4", report=True)
    deliveries.queue_deliveries(engine, refused_job, [PACS])
    deliveries.queue_deliveries(engine, given_up_job, [PACS])
    for _ in range(3):
        with engine.begin() as connection:
            connection.execute(update(Delivery).where(Delivery.state == DeliveryState.PENDING)
                               .values(next_attempt_at=utcnow()))
        while (claimed := deliveries.claim_delivery(engine, "w")) is not None:
            kind = FailureKind.PERMANENT if claimed.job_pk == refused_job else FailureKind.TRANSIENT
            deliveries.record_outcome(engine, claimed, "w", kind, "no", SENDING)
    with engine.connect() as connection:
        assert set(connection.scalars(select(Delivery.state))) == {DeliveryState.FAILED}
    assert _purgeable(engine, KEEP_S + 60) == [refused, given_up]
    engine.dispose()


def test_reopened_or_unfinished_study_is_not_purged(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _finished_study(engine)
    recorder = InstanceRecorder(engine)
    assert _receive(recorder, "1.2.3", "1.2.3.1.9")
    assert _purgeable(engine, KEEP_S + 60) == [], "receiving again"
    queue.complete_quiet_studies(engine, 1, now=_later(10))
    assert _purgeable(engine, KEEP_S + 60) == [], "its new job is queued"
    queue.claim_job(engine, "w", 600, 3)
    assert _purgeable(engine, KEEP_S + 60) == [], "its new job is running"
    assert retention.mark_purged(engine, study_pk, KEEP_S, False, now=_later(KEEP_S + 60)) is None
    engine.dispose()


def test_marking_keeps_rows_and_a_resent_instance_revives_its_row_and_reopens_the_study(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _finished_study(engine, report=True)
    mark = retention.mark_purged(engine, study_pk, KEEP_S, include_reports=False, now=_later(KEEP_S + 60))
    assert mark is not None and mark.study_uid == "1.2.3" and mark.instances == 2
    assert retention.mark_purged(engine, study_pk, KEEP_S, False, now=_later(KEEP_S + 60)) is None, "once"
    with engine.connect() as connection:
        assert all(connection.scalars(select(Instance.purged_at.is_not(None))))
        assert connection.scalar(select(ReportObject.purged_at)) is None, "reports kept by default"
    recorder = InstanceRecorder(engine)
    assert recorder.is_stored("1.2.3.1.1") is None, "a purged instance is no duplicate"
    assert _receive(recorder, "1.2.3", "1.2.3.1.1") is True, "stored again"
    assert _receive(recorder, "1.2.3", "1.2.3.1.1") is False, "now a duplicate again"
    assert recorder.is_stored("1.2.3.1.1") == _path("1.2.3", "1.2.3.1.1")
    with engine.connect() as connection:
        study = connection.execute(select(Study.state, Study.purged_at).where(Study.id == study_pk)).one()
        live = connection.scalars(select(Instance.sop_instance_uid).where(Instance.purged_at.is_(None))).all()
    assert study.state == StudyState.RECEIVING and study.purged_at is None
    assert live == ["1.2.3.1.1"]
    usage = retention.spool_usage(engine)
    assert (usage.instances, usage.purged_instances, usage.purged_studies) == (1, 1, 0)
    engine.dispose()


def test_purged_reports_are_reported_to_resend(database_url: str) -> None:
    engine = _engine(database_url)
    study_pk, _ = _finished_study(engine, report=True)
    assert retention.reports_purged(engine, "1.2.3") is False
    retention.mark_purged(engine, study_pk, KEEP_S, include_reports=True, now=_later(KEEP_S + 60))
    assert retention.reports_purged(engine, "1.2.3") is True
    assert retention.reports_purged(engine, "9.9.9") is False
    engine.dispose()


def test_sweep_deletes_files_and_folders_keeps_rows_and_reports(database_url: str, tmp_path: Path) -> None:
    engine = _engine(database_url)
    spool = tmp_path / "spool"
    _finished_study(engine, "1.2.3", spool=spool, report=True)
    _finished_study(engine, "1.2.4", spool=spool)
    sweeper = Retention(engine, spool, "n1", RetentionConfig(keep_days=0))
    totals = sweeper.sweep()
    assert (totals.studies, totals.files, totals.bytes) == (2, 4, 400)
    assert list((spool / "studies").iterdir()) == [], "study and series folders removed"
    assert (spool / "reports/1.2.3/1.2.3.9.1.dcm").exists(), "keep_reports defaults to true"
    assert list((spool / "purging/n1").iterdir()) == []
    with engine.connect() as connection:
        assert len(connection.scalars(select(Instance.id)).all()) == 4, "rows stay"
    assert sweeper.sweep().studies == 0
    engine.dispose()


def test_sweep_without_keep_reports_deletes_report_files(database_url: str, tmp_path: Path) -> None:
    engine = _engine(database_url)
    spool = tmp_path / "spool"
    _finished_study(engine, "1.2.3", spool=spool, report=True)
    Retention(engine, spool, "n1", RetentionConfig(keep_days=0, keep_reports=False)).sweep()
    assert not (spool / "reports/1.2.3").exists()
    assert retention.reports_purged(engine, "1.2.3")
    engine.dispose()


def test_instance_stored_again_during_a_purge_keeps_its_file(database_url: str, tmp_path: Path) -> None:
    """Marked purged, then a scanner re-sends one instance (row, then file) before the folder moves."""
    engine = _engine(database_url)
    spool = tmp_path / "spool"
    study_pk, _ = _finished_study(engine, spool=spool)
    mark = retention.mark_purged(engine, study_pk, 0, False)
    _receive(InstanceRecorder(engine), "1.2.3", "1.2.3.1.2", spool)
    sweeper = Retention(engine, spool, "n1", RetentionConfig(keep_days=0))
    assert sweeper._delete(mark.study_uid) == (1, 100)
    assert (spool / _path("1.2.3", "1.2.3.1.2")).exists(), "the acknowledged instance keeps its file"
    assert not (spool / _path("1.2.3", "1.2.3.1.1")).exists()
    engine.dispose()


def test_recover_finishes_an_interrupted_purge(database_url: str, tmp_path: Path) -> None:
    """Crash after marking (files still in studies/) and after moving (files in the trash)."""
    engine = _engine(database_url)
    spool = tmp_path / "spool"
    first, _ = _finished_study(engine, "1.2.3", spool=spool)
    second, _ = _finished_study(engine, "1.2.4", spool=spool)
    _finished_study(engine, "1.2.5", spool=spool)  # not purged
    retention.mark_purged(engine, first, 0, False)
    retention.mark_purged(engine, second, 0, False)
    trash = spool / "purging/n1/crashed/studies"
    trash.mkdir(parents=True)
    (spool / "studies/1.2.4").rename(trash / "1.2.4")
    _receive(InstanceRecorder(engine), "1.2.4", "1.2.4.1.1")  # stored again: its row is live
    totals = Retention(engine, spool, "n1", RetentionConfig(keep_days=1)).recover()
    assert totals.files == 3
    assert sorted(p.name for p in (spool / "studies").iterdir()) == ["1.2.4", "1.2.5"]
    assert (spool / _path("1.2.4", "1.2.4.1.1")).exists(), "restored from the trash"
    assert not (spool / "purging/n1/crashed").exists()
    assert len(list((spool / "studies/1.2.5").rglob("*.dcm"))) == 2, "a study not purged is untouched"
    engine.dispose()


def test_migration_0002_upgrades_a_database_made_at_0001(database_url: str) -> None:
    engine = make_engine(database_url)
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
    with engine.begin() as connection:
        assert "purged_at" not in {c["name"] for c in inspect(connection).get_columns("instances")}
        connection.execute(text("INSERT INTO patients (id, patient_key, patient_id, patient_name, birth_date) "
                                "VALUES (1, 'P1^', 'P1', '', '')"))
        connection.execute(text(
            "INSERT INTO studies (id, study_uid, patient_pk, study_date, accession_number, description, state, "
            "first_received_at, last_received_at) VALUES (1, '1.2.3', 1, '', '', '', 'complete', "
            ":t, :t)"), {"t": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)})
    upgrade(engine)
    with engine.connect() as connection:
        for table in ("studies", "instances", "report_objects"):
            assert "purged_at" in {c["name"] for c in inspect(connection).get_columns(table)}
        head = ScriptDirectory.from_config(config).get_current_head()  # 0002 and every later migration ran
        assert connection.scalar(text("SELECT version_num FROM alembic_version")) == head
        assert connection.execute(select(Study.study_uid, Study.purged_at)).one() == ("1.2.3", None)
    assert retention.spool_usage(engine).purged_studies == 0
    engine.dispose()


def test_resend_says_when_retention_deleted_the_report_files(database_url: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pacs_node.cli import app
    from tests.conftest import write_config

    engine = _engine(database_url)
    study_pk, _ = _finished_study(engine, report=True)
    config = write_config(tmp_path, 11112, database_url, destinations=[
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}])
    retention.mark_purged(engine, study_pk, 0, include_reports=True)
    result = CliRunner().invoke(app, ["resend", "1.2.3", "--config", str(config)])
    assert result.exit_code == 1
    assert "deleted by retention" in result.output
    with engine.connect() as connection:
        assert connection.scalar(select(Delivery.id)) is None, "nothing queued"
    engine.dispose()
