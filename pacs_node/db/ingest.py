"""Recording received instances: patient, study, series and instance rows.

This is the receive path's only database code, so it is written for speed: Core
statements, one transaction per batch of instances (:meth:`InstanceRecorder.record_batch`,
whose commit on SQLite is made durable by :meth:`InstanceRecorder.sync_log`), and a
per-process cache of the series rows already known.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.dialects import postgresql, sqlite

from pacs_node.db.engine import unsynced_commits
from pacs_node.db.models import Instance, Patient, Series, Study, StudyState, utcnow

_CACHE_SIZE = 2048
#: A study's last-received time is written at most this often per process; the
#: completion sweep adds it to the quiet period, so completion is never early.
TOUCH_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ReceivedInstance:
    """The attributes of a received instance that the database keeps."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    relative_path: str
    size_bytes: int
    calling_ae: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    study_date: str = ""
    accession_number: str = ""
    study_description: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None


class InstanceRecorder:
    """Writes instance rows; safe to share between association threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # Built once: composing a statement per instance costs more than running it.
        instances = Instance.__table__
        self._insert_instance = (
            self._insert(instances)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
            .returning(instances.c.id)
        )
        self._touch_study = (
            update(Study.__table__)
            .where(Study.__table__.c.id == bindparam("study_pk"))
            .values(last_received_at=bindparam("now"), state=StudyState.RECEIVING.value, purged_at=None)
        )
        # An instance whose file retention deleted is stored again: its row comes back.
        self._revive_instance = (
            update(instances)
            .where(instances.c.sop_instance_uid == bindparam("sop"), instances.c.purged_at.is_not(None))
            .values(purged_at=None, path=bindparam("path"), size_bytes=bindparam("size"),
                    transfer_syntax_uid=bindparam("syntax"), calling_ae=bindparam("ae"), received_at=bindparam("now"))
        )
        self._series_ids: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()
        # One connection per receiving thread, kept open: a pool checkout and its
        # reset cost more than the insert itself.
        self._local = threading.local()
        self._connections: list[Connection] = []
        # The batch connection commits without syncing where it can; _log is then what to fsync.
        self._batch: Connection | None = None
        self._log: Path | None = None

    def is_stored(self, sop_instance_uid: str) -> str | None:
        """The spool path of an instance already stored (and not purged), or ``None``."""
        stored = self.stored_file(sop_instance_uid)
        return stored[0] if stored else None

    def stored_file(self, sop_instance_uid: str) -> tuple[str, int] | None:
        """(spool path, size in bytes) of an instance already stored and not purged, or ``None``."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(Instance.path, Instance.size_bytes)
                .where(Instance.sop_instance_uid == sop_instance_uid, Instance.purged_at.is_(None))
            ).first()
        return (row.path, row.size_bytes) if row else None

    def record_batch(self, instances: Sequence[ReceivedInstance]) -> list[bool]:
        """Commit the rows of ``instances`` in one transaction; for each, whether it was new
        (as :meth:`record`).  Call from one thread at a time.

        The commit is visible to every connection when this returns, but on SQLite it is
        durable only after :meth:`sync_log`.  If anything fails nothing is committed, the
        cached row ids are dropped, and the error is raised.
        """
        connection = self._batch_connection()
        try:
            with connection.begin():
                return [self._record(connection, instance) for instance in instances]
        except Exception as exc:
            self.forget()  # ids cached inside the rolled-back transaction name no rows
            if isinstance(exc, DBAPIError):
                self._batch = None
                connection.invalidate()
                connection.close()
            raise

    def sync_log(self) -> None:
        """Make what :meth:`record_batch` committed durable: fdatasync SQLite's write-ahead
        log, as its own synchronous commits do (nothing to do where commits are durable by
        themselves, as on PostgreSQL)."""
        log = self._log
        if log is None:
            return
        try:
            fd = os.open(log, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # checkpointed and removed: the commits are in the database file
            fd = os.open(log.with_name(log.name.removesuffix("-wal")), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _batch_connection(self) -> Connection:
        if self._batch is None or self._batch.closed or self._batch.invalidated:
            self._batch = self.engine.connect()
            self._log = unsynced_commits(self._batch)
        return self._batch

    def record(self, instance: ReceivedInstance) -> bool:
        """Commit the rows for ``instance``; ``False`` if it was already recorded.

        A new instance marks its study as receiving again and moves its last-received
        time, which is what the completion sweep watches (at most every
        :data:`TOUCH_INTERVAL_S` per study and process).  An instance whose file
        retention deleted counts as new: its row is revived and its study re-opened.
        """
        connection = self._connection()
        try:
            with connection.begin():
                return self._record(connection, instance)
        except DBAPIError:
            self._drop_connection()
            raise

    def repoint(self, instance: ReceivedInstance) -> None:
        """Have the live row of ``instance`` name its new object (its earlier one is gone)."""
        table = Instance.__table__
        connection = self._connection()
        try:
            with connection.begin():
                connection.execute(
                    update(table)
                    .where(table.c.sop_instance_uid == instance.sop_instance_uid, table.c.purged_at.is_(None))
                    .values(path=instance.relative_path, size_bytes=instance.size_bytes,
                            transfer_syntax_uid=instance.transfer_syntax_uid, calling_ae=instance.calling_ae,
                            received_at=utcnow()))
        except DBAPIError:
            self._drop_connection()
            raise

    def _connection(self) -> Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None or connection.closed or connection.invalidated:
            connection = self.engine.connect()
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            connection.invalidate()
            connection.close()

    def close(self) -> None:
        """Close the connections held by receiving threads and the batch connection."""
        with self._lock:
            connections, self._connections = self._connections, []
        if self._batch is not None:
            connections.append(self._batch)
            self._batch = None
        for connection in connections:
            try:
                connection.close()
            except DBAPIError:
                pass

    def _record(self, connection: Connection, instance: ReceivedInstance) -> bool:
        study_pk, series_pk = self._series(connection, instance)
        now = utcnow()
        row_id = connection.execute(
            self._insert_instance,
            {
                "sop_instance_uid": instance.sop_instance_uid,
                "sop_class_uid": instance.sop_class_uid,
                "series_pk": series_pk,
                "instance_number": instance.instance_number,
                "transfer_syntax_uid": instance.transfer_syntax_uid,
                "path": instance.relative_path,
                "size_bytes": instance.size_bytes,
                "calling_ae": instance.calling_ae,
                "received_at": now,
            },
        ).scalar()
        if row_id is None:
            revived = connection.execute(self._revive_instance, {
                "sop": instance.sop_instance_uid, "path": instance.relative_path, "size": instance.size_bytes,
                "syntax": instance.transfer_syntax_uid, "ae": instance.calling_ae, "now": now,
            }).rowcount
            if not revived:
                return False
            connection.execute(self._touch_study, {"study_pk": study_pk, "now": now})
            return True
        if self._due_for_touch(study_pk):
            connection.execute(self._touch_study, {"study_pk": study_pk, "now": now})
        return True

    def _due_for_touch(self, study_pk: int) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(study_pk, -TOUCH_INTERVAL_S) < TOUCH_INTERVAL_S:
                return False
            if len(self._touched) > _CACHE_SIZE:
                self._touched.clear()
            self._touched[study_pk] = now
            return True

    def _series(self, connection: Connection, instance: ReceivedInstance) -> tuple[int, int]:
        with self._lock:
            known = self._series_ids.get(instance.series_uid)
            if known is not None:
                self._series_ids.move_to_end(instance.series_uid)
                return known
        ids = self._ensure_series(connection, instance)
        with self._lock:
            self._series_ids[instance.series_uid] = ids
            if len(self._series_ids) > _CACHE_SIZE:
                self._series_ids.popitem(last=False)
        return ids

    def forget(self) -> None:
        """Drop cached row ids (after rows were deleted, e.g. by retention)."""
        with self._lock:
            self._series_ids.clear()
            self._touched.clear()

    def _upsert(self, connection: Connection, model: type, key: str, values: dict) -> int:
        connection.execute(self._insert(model).values(**values).on_conflict_do_nothing(index_elements=[key]))
        return connection.scalar(select(model.id).where(getattr(model, key) == values[key]))

    def _ensure_series(self, connection: Connection, instance: ReceivedInstance) -> tuple[int, int]:
        patient_key = f"{instance.patient_id}^{instance.issuer_of_patient_id}"[:130]
        patient_pk = self._upsert(
            connection,
            Patient,
            "patient_key",
            {
                "patient_key": patient_key,
                "patient_id": instance.patient_id[:64],
                "patient_name": instance.patient_name[:324],
                "birth_date": instance.birth_date[:8],
            },
        )
        now = utcnow()
        study_pk = self._upsert(
            connection,
            Study,
            "study_uid",
            {
                "study_uid": instance.study_uid,
                "patient_pk": patient_pk,
                "study_date": instance.study_date[:8],
                "accession_number": instance.accession_number[:16],
                "description": instance.study_description[:64],
                "state": StudyState.RECEIVING,
                "first_received_at": now,
                "last_received_at": now,
            },
        )
        series_pk = self._upsert(
            connection,
            Series,
            "series_uid",
            {
                "series_uid": instance.series_uid,
                "study_pk": study_pk,
                "modality": instance.modality[:16],
                "series_number": instance.series_number,
                "description": instance.series_description[:64],
            },
        )
        return study_pk, series_pk
