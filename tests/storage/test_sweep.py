"""Retention and the orphan sweep on an object store: exact keys, and objects no row claims."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from pydicom import dcmread

from pacs_node.config import RetentionConfig
from pacs_node.config.sections import S3Storage
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.storage.base import instance_key
from pacs_node.storage.s3 import S3Store
from pacs_node.storage.sweep import ObjectRetention
from tests.conftest import make_series
from tests.storage.s3_server import S3Server


def test_orphan_sweep_deletes_old_objects_no_live_row_claims(s3_server: S3Server, tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    store = S3Store(S3Storage(**s3_server.config()), tmp_path / "fetched")
    [path] = make_series(tmp_path / "series", slices=1)
    ds = dcmread(path, stop_before_pixels=True)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    # the row's object, an earlier copy whose row now names the newer one, and a PUT whose row never committed
    claimed, replaced = (instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) for _ in range(2))
    uncommitted = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, "1.2.3.999")
    for key in (claimed, replaced, uncommitted):
        store.put_file(path, key, digest)
    recorder = InstanceRecorder(engine)
    assert recorder.record(ReceivedInstance(
        sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID, study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID, transfer_syntax_uid="1.2.840.10008.1.2.1", relative_path=claimed,
        size_bytes=path.stat().st_size, calling_ae="SCANNER"))
    recorder.close()
    young = ObjectRetention(engine, store, RetentionConfig(enabled=False), orphan_age_s=3600)
    assert young.sweep_orphans() == (0, 0)  # too young: their rows may be committing
    time.sleep(1.1)  # S3 times objects to the second
    old = ObjectRetention(engine, store, RetentionConfig(enabled=False), orphan_age_s=0.001)
    assert old.sweep_orphans()[0] == 2
    assert list(s3_server.keys()) == [claimed]
    store.close()
    engine.dispose()
