"""Recording received instances in batches, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.db.models import Instance, Series


def _engine(url: str) -> Engine:
    engine = make_engine(url)
    upgrade(engine)
    return engine


def _instance(sop: str, series: str = "1.2.3.1") -> ReceivedInstance:
    return ReceivedInstance(
        sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid="1.2.3", series_uid=series,
        transfer_syntax_uid="1.2.840.10008.1.2.1", relative_path=f"studies/1.2.3/{series}/{sop}.dcm",
        size_bytes=10, calling_ae="CT1", patient_id="P1", modality="CT",
    )


def _count(engine: Engine, model: type) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(model)) or 0


def test_a_batch_is_visible_to_other_connections_when_committed(database_url: str) -> None:
    """The rename into studies/ follows the commit: no file is ever visible without its row."""
    engine = _engine(database_url)
    recorder = InstanceRecorder(engine)
    assert recorder.record_batch([_instance("1.2.3.1.1"), _instance("1.2.3.1.2")]) == [True, True]
    assert _count(engine, Instance) == 2
    recorder.sync_log()
    assert recorder.record_batch([_instance("1.2.3.1.2"), _instance("1.2.3.1.3")]) == [False, True]
    assert recorder.stored_file("1.2.3.1.3") == ("studies/1.2.3/1.2.3.1/1.2.3.1.3.dcm", 10)
    recorder.close()
    engine.dispose()


def test_a_failed_batch_commits_nothing_and_leaves_no_stale_series_ids(database_url: str) -> None:
    engine = _engine(database_url)
    recorder = InstanceRecorder(engine)
    bad = replace(_instance("1.2.3.1.2"), size_bytes=None)  # type: ignore[arg-type]
    with pytest.raises(IntegrityError):
        recorder.record_batch([_instance("1.2.3.1.1"), bad])
    assert _count(engine, Instance) == 0 and _count(engine, Series) == 0
    # the series row inserted by the failed batch was rolled back: it is inserted again, not taken from a cache
    assert recorder.record_batch([_instance("1.2.3.1.1")]) == [True]
    assert _count(engine, Series) == 1
    recorder.close()
    engine.dispose()


def test_only_the_batch_connection_commits_without_syncing(tmp_path: Path) -> None:
    """SQLite: the batch connection's commits wait for sync_log; it never goes back to the pool,
    so every other user of the engine keeps synchronous=FULL."""
    engine = _engine(f"sqlite:///{tmp_path / 'node.db'}")
    recorder = InstanceRecorder(engine)
    recorder.record_batch([_instance("1.2.3.1.1")])
    assert (tmp_path / "node.db-wal").exists()
    recorder.sync_log()
    recorder.close()
    with engine.connect() as first, engine.connect() as second:
        for connection in (first, second):
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    engine.dispose()
