"""Group commit: instances of concurrent associations share a transaction and a flush, and
every instance is answered success only once its file, name and row are durable."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import OperationalError

from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.db.models import Instance
from pacs_node.receive.dimse import Command, Request, Status
from pacs_node.receive.part10 import file_meta
from pacs_node.receive.policy import AssociationPolicy
from pacs_node.receive.scp import StoreResult
from pacs_node.receive.server import AssociationSlots, StorageServer, open_listener
from pacs_node.receive.spool import Spool
from pacs_node.receive.store import SpoolingSink
from tests.conftest import make_series, storescu, wait_until
from tests.reliability.support import dataset_bytes
from tests.reliability.wire import CT_IMAGE_STORAGE, EXPLICIT_LE, encode_dataset

BAD_SOP = "1.2.3.1.666"


class ObservedRecorder(InstanceRecorder):
    """A real recorder that can hold its first batch (so that others gather behind it), counts
    batches and log syncs, and can be told to fail like a broken database or disk."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.hold_first = threading.Event()
        self.hold_first.set()
        self.batches: list[int] = []
        self.log_syncs = 0
        self.database_down = False
        self.log_sync_fails = False

    def record_batch(self, instances: Sequence[ReceivedInstance]) -> list[bool]:
        self.batches.append(len(instances))
        if len(self.batches) == 1:
            assert self.hold_first.wait(10)
        if self.database_down:
            raise OperationalError("INSERT INTO instances", {}, ConnectionError("server closed the connection"))
        return super().record_batch(instances)

    def _record(self, connection: Connection, instance: ReceivedInstance) -> bool:
        if instance.sop_instance_uid == BAD_SOP:  # a row the database refuses: NOT NULL violated
            instance = replace(instance, size_bytes=None)  # type: ignore[arg-type]
        return super()._record(connection, instance)

    def sync_log(self) -> None:
        self.log_syncs += 1
        if self.log_sync_fails:
            raise OSError(errno.EIO, "Input/output error")
        super().sync_log()


@dataclass
class Node:
    spool: Spool
    recorder: ObservedRecorder
    sink: SpoolingSink
    engine: Engine

    def rows(self) -> dict[str, str]:
        with self.engine.connect() as connection:
            return dict(connection.execute(select(Instance.sop_instance_uid, Instance.path)).all())

    def files(self) -> list[Path]:
        return sorted((self.spool.root / "studies").rglob("*.dcm"))


@pytest.fixture
def node(database_url: str, tmp_path: Path) -> Iterator[Node]:
    engine = make_engine(database_url)
    upgrade(engine)
    spool = Spool(tmp_path / "spool")
    recorder = ObservedRecorder(engine)
    sink = SpoolingSink(spool, recorder)
    yield Node(spool, recorder, sink, engine)
    recorder.hold_first.set()
    sink.close()
    spool.close()
    engine.dispose()


def _dataset(sop: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.1"
    ds.PatientID, ds.Modality, ds.BitsAllocated = "P1", "CT", 8
    ds.PixelData = sop.encode() * 100
    return encode_dataset(ds)


def _send(sink: SpoolingSink, sop: str) -> StoreResult:
    """What an association does with a received C-STORE: stream it to a partial file, complete it."""
    request = Request(Command.C_STORE_RQ, 1, CT_IMAGE_STORAGE, sop, True)
    partial = sink.begin()
    partial.write(file_meta(request, EXPLICIT_LE, "CT1"))
    partial.write(_dataset(sop))
    return sink.complete(partial, request, EXPLICIT_LE, "CT1")


def _send_together(node: Node, sops: list[str]) -> list[StoreResult]:
    """The first instance's batch is held until all the others wait behind it, then released."""
    node.recorder.hold_first.clear()
    with ThreadPoolExecutor(len(sops)) as associations:
        first = associations.submit(_send, node.sink, sops[0])
        wait_until(lambda: node.recorder.batches == [1])
        others = [associations.submit(_send, node.sink, sop) for sop in sops[1:]]
        wait_until(lambda: node.sink._commit.waiting() == len(sops) - 1)
        node.recorder.hold_first.set()
        return [first.result(30)] + [other.result(30) for other in others]


def _sops(count: int) -> list[str]:
    return [f"1.2.3.1.{number}" for number in range(1, count + 1)]


def test_instances_waiting_together_share_one_transaction_and_one_log_sync(node: Node) -> None:
    sops = _sops(8)
    results = _send_together(node, sops)
    assert [r.status for r in results] == [Status.SUCCESS] * 8
    assert node.recorder.batches == [1, 7], "the seven that waited were committed together"
    assert node.recorder.log_syncs == 2
    rows = node.rows()
    assert sorted(rows) == sorted(sops)
    assert [p.relative_to(node.spool.root).as_posix() for p in node.files()] == sorted(rows.values())
    for sop in sops:
        assert dataset_bytes(node.spool.path_of(rows[sop])) == _dataset(sop), "kept byte for byte"


def test_a_failed_commit_fails_every_waiting_instance_and_stores_nothing(node: Node) -> None:
    node.recorder.database_down = True
    results = _send_together(node, _sops(5))
    assert results == [StoreResult(Status.OUT_OF_RESOURCES, "database unavailable")] * 5
    assert node.recorder.batches == [1, 4]
    assert node.rows() == {} and node.files() == []
    node.recorder.database_down = False  # the database is back: the scanner's re-send is stored
    assert [_send(node.sink, sop).status for sop in _sops(5)] == [Status.SUCCESS] * 5
    assert len(node.rows()) == len(node.files()) == 5


def test_a_failed_flush_acknowledges_nothing_of_the_batch_and_a_resend_stores_it_again(node: Node) -> None:
    node.recorder.log_sync_fails = True
    results = _send_together(node, _sops(4))
    assert results == [StoreResult(Status.OUT_OF_RESOURCES, "cannot write to spool")] * 4
    assert node.files() == [], "files of a failed flush are taken back out of studies/"
    assert len(node.rows()) == 4, "the rows were committed before the flush"
    node.recorder.log_sync_fails = False
    assert [_send(node.sink, sop).status for sop in _sops(4)] == [Status.SUCCESS] * 4
    rows = node.rows()
    assert len(rows) == 4 and sorted(rows.values()) == [p.relative_to(node.spool.root).as_posix() for p in node.files()]


def test_a_row_the_database_refuses_fails_alone(node: Node) -> None:
    sops = _sops(3)
    results = _send_together(node, [sops[0], sops[1], BAD_SOP, sops[2]])
    assert [r.status for r in results] == [Status.SUCCESS, Status.SUCCESS, Status.PROCESSING_FAILURE, Status.SUCCESS]
    assert node.recorder.batches == [1, 3, 1, 1, 1], "the failed batch of three was retried one by one"
    assert sorted(node.rows()) == sorted(sops)
    assert len(node.files()) == 3


def test_a_resent_instance_is_stored_once(node: Node) -> None:
    assert _send(node.sink, "1.2.3.1.1").status == Status.SUCCESS
    [stored] = node.files()
    written = stored.stat().st_mtime_ns
    assert _send(node.sink, "1.2.3.1.1").status == Status.SUCCESS
    assert node.files() == [stored] and stored.stat().st_mtime_ns == written, "not written again"
    assert node.recorder.batches == [1]


def test_a_file_cut_short_by_a_crash_is_no_duplicate(node: Node) -> None:
    """Power lost while flushing: the row and the name survived, not all the bytes."""
    assert _send(node.sink, "1.2.3.1.1").status == Status.SUCCESS
    [stored] = node.files()
    whole = stored.read_bytes()
    stored.write_bytes(whole[: len(whole) // 2])
    assert _send(node.sink, "1.2.3.1.1").status == Status.SUCCESS
    assert stored.read_bytes() == whole and len(node.rows()) == 1


def test_a_copy_that_replaces_an_acknowledged_one_is_durable_first_and_never_taken_out(node: Node) -> None:
    """A re-send that is no duplicate (here: the stored copy is short) replaces the stored
    file; should its flush then fail, the instance is not lost: the new copy was fsynced
    before the rename and stays in place."""
    assert _send(node.sink, "1.2.3.1.1").status == Status.SUCCESS
    [stored] = node.files()
    whole = stored.read_bytes()
    stored.write_bytes(whole[:-10])  # the size no longer agrees with the row: stored again
    node.recorder.log_sync_fails = True
    assert _send(node.sink, "1.2.3.1.1").status == Status.OUT_OF_RESOURCES
    assert node.files() == [stored] and stored.read_bytes() == whole, "the replacing copy stays, whole"


def test_a_row_without_its_file_is_no_duplicate(node: Node) -> None:
    """Killed after the commit, before the rename: the re-send stores the file."""
    assert _send(node.sink, "1.2.3.1.1").status == Status.SUCCESS
    [stored] = node.files()
    stored.unlink()
    assert _send(node.sink, "1.2.3.1.1").status == Status.SUCCESS
    assert node.files() == [stored] and len(node.rows()) == 1


def test_instances_handed_over_after_close_are_refused(node: Node) -> None:
    node.sink._commit.close()
    assert _send(node.sink, "1.2.3.1.1") == StoreResult(Status.OUT_OF_RESOURCES, "node is stopping")
    assert node.files() == [] and node.rows() == {}


def test_concurrent_associations_all_get_their_rows(node: Node, tmp_path: Path) -> None:
    """Four scanners push at once over loopback (DCMTK storescu): every instance acknowledged has
    its row and its file, byte for byte."""
    series = [make_series(tmp_path / f"series{index}", slices=15, size=32, seed=index) for index in range(4)]
    server = StorageServer(open_listener("127.0.0.1", 0), AssociationPolicy("PACS_NODE"), node.sink,
                           AssociationSlots(8))
    server.start()
    try:
        with ThreadPoolExecutor(4) as scanners:
            pushes = list(scanners.map(lambda files: storescu(server.port, files[0].parent), series))
    finally:
        server.stop(grace_s=1)
    for push in pushes:
        assert push.returncode == 0, push.stderr
        assert push.stderr.count("Received Store Response (Success)") == 15
    rows = node.rows()
    assert len(rows) == 60 == len(node.files())
    for files in series:
        for path in files:
            uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(node.spool.path_of(rows[uid])) == dataset_bytes(path)
