"""The S3 blob store against a moto S3 server on loopback."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from pacs_node.config.sections import S3Storage, StorageConfig
from pacs_node.storage.base import StoreUnavailable, instance_key, read_dataset, report_key
from pacs_node.storage.s3 import S3Store
from tests.conftest import make_series
from tests.storage.s3_server import S3Server

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


def _store(server: S3Server, tmp_path: Path, **extra: object) -> S3Store:
    return S3Store(S3Storage(**server.config(**extra)), tmp_path / "fetched")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_instance_keys_are_new_for_every_copy() -> None:
    first, second = instance_key(STUDY, SERIES, SOP), instance_key(STUDY, SERIES, SOP)
    assert first != second
    assert first.startswith(f"studies/{STUDY}/{SERIES}/{SOP}/") and first.endswith(".dcm")
    assert report_key(STUDY, SOP) == f"reports/{STUDY}/{SOP}.dcm"
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        instance_key(STUDY, SERIES, "../etc")


def test_put_file_stores_the_same_bytes_under_the_prefix(s3_server: S3Server, tmp_path: Path) -> None:
    [path] = make_series(tmp_path / "series", slices=1)
    store = _store(s3_server, tmp_path, prefix="node-a/")
    key = instance_key(STUDY, SERIES, SOP)
    store.put_file(path, key, _sha256(path))
    objects = s3_server.keys()
    assert list(objects) == [f"node-a/{key}"]
    assert hashlib.sha256(objects[f"node-a/{key}"]).hexdigest() == _sha256(path)
    assert store.size(key) == path.stat().st_size
    assert read_dataset(store, key).SOPInstanceUID == dcmread(path).SOPInstanceUID
    store.close()


def test_fetched_copies_a_series_locally_and_removes_the_copies(s3_server: S3Server, tmp_path: Path) -> None:
    paths = make_series(tmp_path / "series", slices=12)
    store = _store(s3_server, tmp_path, parallel_reads=4)
    keys = {}
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        keys[path] = instance_key(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        store.put_file(path, keys[path], _sha256(path))
    missing = instance_key(STUDY, SERIES, SOP)
    with store.fetched([*keys.values(), missing]) as local:
        assert missing not in local
        assert {_sha256(local[key]) for key in keys.values()} == {_sha256(path) for path in paths}
        copies = list(local.values())
    assert not any(copy.exists() for copy in copies)
    assert store.size(missing) is None
    with pytest.raises(FileNotFoundError):
        store.read(missing)
    store.close()


def test_delete_and_older_than_list_exact_keys(s3_server: S3Server, tmp_path: Path) -> None:
    [path] = make_series(tmp_path / "series", slices=1)
    store = _store(s3_server, tmp_path, prefix="p/")
    kept, deleted = instance_key(STUDY, SERIES, SOP), instance_key(STUDY, SERIES, SOP)
    for key in (kept, deleted):
        store.put_file(path, key, _sha256(path))
    assert sorted(key for key, _ in store.older_than("studies/", 0)) == sorted([kept, deleted])
    assert list(store.older_than("studies/", 3600)) == []
    store.delete([deleted, "studies/never/stored.dcm"])
    assert list(s3_server.keys()) == [f"p/{kept}"]
    store.close()


def test_a_stopped_server_raises_store_unavailable_and_is_used_again_when_back(
        s3_server: S3Server, tmp_path: Path) -> None:
    [path] = make_series(tmp_path / "series", slices=1)
    store = _store(s3_server, tmp_path, timeout_s=2)
    store.check()
    s3_server.stop()
    key = instance_key(STUDY, SERIES, SOP)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="PUT"):
        store.put_file(path, key, _sha256(path))
    with pytest.raises(StoreUnavailable, match="HEAD bucket"):
        store.check()
    assert time.monotonic() - started < 15
    s3_server.start()
    store.put_file(path, key, _sha256(path))
    assert store.size(key) == path.stat().st_size
    store.close()


def test_a_missing_bucket_fails_the_check(s3_server: S3Server, tmp_path: Path) -> None:
    store = S3Store(S3Storage(**{**s3_server.config(), "bucket": "no-such-bucket"}), tmp_path)
    with pytest.raises(StoreUnavailable):
        store.check()
    store.close()


def test_s3_backend_needs_its_table_and_both_keys() -> None:
    with pytest.raises(ValueError, match=r"\[storage.s3\]"):
        StorageConfig(backend="s3")
    with pytest.raises(ValueError, match="both access_key_id and secret_access_key"):
        S3Storage(bucket="abc", access_key_id="x")
    with pytest.raises(ValueError):
        S3Storage(bucket="Not_A_Bucket")
    config = StorageConfig(backend="s3", s3={"bucket": "abc"})
    assert config.s3 is not None and config.s3.verify_tls is True  # TLS verified unless turned off


def test_s3_settings_load_from_toml_and_errors_never_echo_a_secret(tmp_path: Path) -> None:
    from pacs_node.config import ConfigError, load_settings

    path = tmp_path / "node.toml"
    path.write_text('[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "pacs-objects"\n'
                    'endpoint_url = "https://minio.example.org:9000"\nprefix = "node-a/"\n')
    settings = load_settings(path, environ={})
    assert settings.storage.backend == "s3" and settings.storage.s3 is not None
    assert settings.storage.s3.prefix == "node-a/" and settings.storage.s3.verify_tls is True
    path.write_text('[storage]\nbackend = "s3"\n[storage.s3]\nbucket = "pacs-objects"\n'
                    'access_key_id = "AKIAEXAMPLE"\nsecret_access_key = 17\n')
    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})
    assert "storage.s3.secret_access_key" in str(error.value) and "17" not in str(error.value)
    path.write_text('[storage]\nbackend = "s3"\n')
    with pytest.raises(ConfigError, match=r"\[storage.s3\]"):
        load_settings(path, environ={})


def test_readiness_reports_an_object_store_that_does_not_answer(s3_server: S3Server, tmp_path: Path) -> None:
    from pacs_node.db.engine import make_engine
    from pacs_node.housekeeping import DiskGuard
    from pacs_node.monitoring.health import DatabaseProbe, NodeHealth

    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    probe = DatabaseProbe(engine)
    store = _store(s3_server, tmp_path)
    health = NodeHealth(probe, tmp_path, DiskGuard(tmp_path, 0, 0), None, lambda: True, store=store)
    assert health.readiness()["object_store"] is None
    s3_server.stop()
    started = time.monotonic()
    assert "HEAD bucket" in (health.readiness()["object_store"] or "")
    assert time.monotonic() - started < 5
    probe.close()
    store.close()
    engine.dispose()
