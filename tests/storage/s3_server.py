"""An S3 server on a loopback port for tests: moto's (``moto[server]``).

No real S3 server is packaged for Debian or PyPI, so moto stands in.  Its objects live in
this test process and survive :meth:`S3Server.stop`: started again on the same port, the
server holds what it held, like an object store back from an outage.  Moto does not check
``ChecksumSHA256`` or ``Content-MD5`` on PUT (AWS, MinIO and Ceph do), so tests compare
the objects' SHA-256 with the files sent themselves.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer
from sqlalchemy import create_engine, select

from pacs_node.db.models import Instance
from tests.conftest import free_port, listening, wait_until
from tests.reliability.support import dataset_bytes

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"


class S3Server:
    """A moto S3 server on 127.0.0.1 with one bucket."""

    def __init__(self) -> None:
        self.port = free_port()
        # moto keeps every server's buckets in this process: a bucket of its own per server
        self.bucket = f"pacs-node-{secrets.token_hex(6)}"
        self._server: ThreadedMotoServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_until(lambda: listening(self.port), timeout=10)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self):  # noqa: ANN201 - boto3's client type is generated
        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def keys(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``, by key."""
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
        return found

    def config(self, **extra: object) -> dict:
        """The ``[storage.s3]`` table of a node using this server."""
        return {"bucket": self.bucket, "endpoint_url": self.url, "region": "us-east-1",
                "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, **extra}


def sha256_of_data_set(data: bytes | Path) -> str:
    """SHA-256 of a Part 10 file's data set (after the File Meta Information, which the node rewrites)."""
    if isinstance(data, Path):
        return hashlib.sha256(dataset_bytes(data)).hexdigest()
    (group_length,) = struct.unpack_from("<I", data, 140)  # as dataset_bytes, for bytes from the bucket
    return hashlib.sha256(data[144 + group_length:]).hexdigest()


def check_rows_against_objects(database_url: str, server: S3Server) -> dict[str, str]:
    """Every live instance row names an object; returns SOP Instance UID → SHA-256 of its object's data set."""
    objects = server.keys("studies/")
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Instance.sop_instance_uid, Instance.path)
                                      .where(Instance.purged_at.is_(None))).all()
    finally:
        engine.dispose()
    kept = {}
    for sop, key in rows:
        assert key in objects, f"row of {sop} names {key}, which the bucket lacks"
        kept[sop] = sha256_of_data_set(objects[key])
    return kept


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on a free loopback port with an empty bucket of its own."""
    server = S3Server()
    server.start()
    server.client().create_bucket(Bucket=server.bucket)
    yield server
    server.stop()
