"""The object-store sink: success only once the object is stored and its row committed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from pacs_node.config.sections import S3Storage
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.db.models import Instance
from pacs_node.receive.dimse import Command, Request, Status
from pacs_node.receive.object_sink import ObjectStoreSink
from pacs_node.receive.part10 import file_meta
from pacs_node.receive.scp import StoreResult
from pacs_node.receive.spool import Spool
from pacs_node.storage.s3 import S3Store
from tests.receive.test_group_commit import _dataset
from tests.reliability.wire import CT_IMAGE_STORAGE, EXPLICIT_LE
from tests.storage.s3_server import S3Server


class FlakyRecorder(InstanceRecorder):
    """A real recorder that can be told to fail like an unreachable database."""

    database_down = False

    def record(self, instance: ReceivedInstance) -> bool:
        if self.database_down:
            raise OperationalError("INSERT INTO instances", {}, ConnectionError("server closed the connection"))
        return super().record(instance)


@dataclass
class Sink:
    sink: ObjectStoreSink
    recorder: FlakyRecorder
    server: S3Server
    engine: object
    partials: list[Path] = field(default_factory=list)

    def send(self, sop: str) -> StoreResult:
        request = Request(Command.C_STORE_RQ, 1, CT_IMAGE_STORAGE, sop, True)
        partial = self.sink.begin()
        self.partials.append(partial.path)
        partial.write(file_meta(request, EXPLICIT_LE, "CT1"))
        partial.write(_dataset(sop))
        return self.sink.complete(partial, request, EXPLICIT_LE, "CT1")

    def rows(self) -> dict[str, str]:
        with self.engine.connect() as connection:  # type: ignore[attr-defined]
            return dict(connection.execute(select(Instance.sop_instance_uid, Instance.path)).all())


@pytest.fixture
def sink(s3_server: S3Server, tmp_path: Path) -> Iterator[Sink]:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    spool = Spool(tmp_path / "spool", node_name="t")
    store = S3Store(S3Storage(**s3_server.config(timeout_s=2)), tmp_path / "spool" / "fetched")
    recorder = FlakyRecorder(engine)
    yield Sink(ObjectStoreSink(spool, store, recorder), recorder, s3_server, engine)
    recorder.close()
    spool.close()
    store.close()
    engine.dispose()


def test_stored_instance_has_its_row_and_object_and_no_partial_file(sink: Sink) -> None:
    assert sink.send("1.2.3.1.1").status == Status.SUCCESS
    [(sop, key)] = sink.rows().items()
    objects = sink.server.keys()
    assert list(objects) == [key] and key.startswith("studies/1.2.3/1.2.3.1/1.2.3.1.1/")
    assert _dataset("1.2.3.1.1") in objects[key]
    assert not any(path.exists() for path in sink.partials)  # the received file is gone once stored


def test_resent_instance_is_a_duplicate_stored_once(sink: Sink) -> None:
    assert sink.send("1.2.3.1.1").status == Status.SUCCESS
    assert sink.send("1.2.3.1.1").status == Status.SUCCESS
    assert len(sink.server.keys()) == len(sink.rows()) == 1


def test_resent_instance_whose_object_is_gone_is_stored_again_under_a_new_key(sink: Sink) -> None:
    assert sink.send("1.2.3.1.1").status == Status.SUCCESS
    [old] = sink.rows().values()
    sink.server.client().delete_object(Bucket=sink.server.bucket, Key=old)
    assert sink.send("1.2.3.1.1").status == Status.SUCCESS
    [new] = sink.rows().values()
    assert new != old and list(sink.server.keys()) == [new]


def test_object_store_down_answers_a700_and_records_nothing(sink: Sink) -> None:
    sink.server.stop()
    result = sink.send("1.2.3.1.1")
    assert (result.status, result.comment) == (Status.OUT_OF_RESOURCES, "object store unavailable")
    assert sink.rows() == {}
    sink.server.start()
    assert sink.send("1.2.3.1.1").status == Status.SUCCESS


def test_database_down_answers_a700_and_takes_the_object_back(sink: Sink) -> None:
    sink.recorder.database_down = True
    result = sink.send("1.2.3.1.1")
    assert (result.status, result.comment) == (Status.OUT_OF_RESOURCES, "database unavailable")
    assert sink.rows() == {} and sink.server.keys() == {}
