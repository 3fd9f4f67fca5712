"""An S3-compatible bucket as the blob store (boto3).

Every PUT carries the object's SHA-256 (``ChecksumSHA256``), which the server checks
before it stores anything, so an object under a key is always the whole file we hashed.
Keys in the database are relative; the configured ``prefix`` is added here only.
Reads for a job are fetched into a temporary folder under the spool, in parallel.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydicom import Dataset

from pacs_node.config.sections import S3Storage
from pacs_node.storage.base import StoreUnavailable

log = logging.getLogger(__name__)

_MISSING = {"404", "NoSuchKey", "NotFound"}
_DELETE_CHUNK = 1000  # the most keys one DeleteObjects takes


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _unavailable(exc: Exception, what: str) -> StoreUnavailable:
    reason = _code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return StoreUnavailable(f"object store {what} failed: {reason}")


@contextmanager
def _errors(what: str, key: str) -> Iterator[None]:
    """A missing object as :class:`FileNotFoundError` (naming ``key``); any other S3 error as
    :class:`StoreUnavailable` (naming the request ``what``)."""
    try:
        yield
    except ClientError as exc:
        if _code(exc) in _MISSING:
            raise FileNotFoundError(key) from exc
        raise _unavailable(exc, what) from exc
    except BotoCoreError as exc:
        raise _unavailable(exc, what) from exc


def _client(session: boto3.session.Session, config: S3Storage, timeout_s: float, attempts: int,
            **options: int) -> object:
    """An S3 client of ``session`` for the configured endpoint and TLS verification."""
    return session.client(
        "s3", endpoint_url=config.endpoint_url,
        verify=str(config.verify_tls) if isinstance(config.verify_tls, Path) else config.verify_tls,
        config=Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                      retries={"max_attempts": attempts, "mode": "standard"},
                      s3={"addressing_style": "path"} if config.endpoint_url else None, **options),
    )


class S3Store:
    """Objects in one bucket under ``config.prefix``; ``fetch_root`` takes files fetched for readers."""

    kind = "s3"

    def __init__(self, config: S3Storage, fetch_root: Path) -> None:
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.fetch_root = Path(fetch_root)
        session = boto3.session.Session(
            aws_access_key_id=config.access_key_id, aws_secret_access_key=config.secret_access_key,
            region_name=config.region,
        )
        self.client = _client(session, config, config.timeout_s, attempts=2,
                              max_pool_connections=max(10, config.parallel_reads * 2))
        #: /readyz asks this one: a short timeout and no retries.
        self.probe_client = _client(session, config, 2, attempts=1)

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"key {key!r} is not a relative key")
        return self.prefix + key

    def _put(self, key: str, body: object, sha256: bytes) -> None:
        """PUT ``body`` under ``key`` with its SHA-256, which the server checks before storing."""
        checksum = base64.b64encode(sha256).decode("ascii")
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body,
                                   ChecksumSHA256=checksum, ContentType="application/dicom")
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, "PUT") from exc

    def put_file(self, path: Path, key: str, sha256_hex: str) -> None:
        with open(path, "rb") as body:
            self._put(key, body, bytes.fromhex(sha256_hex))

    def write_dataset(self, dataset: Dataset, key: str) -> int:
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        self._put(key, data, hashlib.sha256(data).digest())
        return len(data)

    def size(self, key: str) -> int | None:
        try:
            with _errors("HEAD", key):
                return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except FileNotFoundError:
            return None

    def read(self, key: str) -> bytes:
        with _errors("GET", key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def _download(self, key: str, target: Path) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with _errors("GET", key):
                self.client.download_file(self.bucket, self._key(key), str(target))
        except FileNotFoundError:
            return False
        return True

    @contextmanager
    def fetched(self, keys: Sequence[str]) -> Iterator[dict[str, Path]]:
        folder = self.fetch_root / secrets.token_hex(8)
        folder.mkdir(parents=True)
        try:
            targets = {key: folder / key for key in dict.fromkeys(keys)}
            with ThreadPoolExecutor(max_workers=self.config.parallel_reads, thread_name_prefix="s3-read") as pool:
                found = dict(zip(targets, pool.map(lambda item: self._download(*item), targets.items())))
            yield {key: path for key, path in targets.items() if found[key]}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def delete(self, keys: Sequence[str]) -> int:
        keys = list(keys)
        for start in range(0, len(keys), _DELETE_CHUNK):
            chunk = keys[start : start + _DELETE_CHUNK]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in chunk], "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise _unavailable(exc, "DELETE") from exc
            if answer.get("Errors"):
                raise StoreUnavailable(f"object store DELETE failed for {len(answer['Errors'])} objects: "
                                       f"{answer['Errors'][0].get('Code')}")
        return len(keys)

    def older_than(self, prefix: str, age_s: float) -> Iterator[tuple[str, int]]:
        cutoff = time.time() - age_s
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    if item["LastModified"].timestamp() < cutoff:
                        yield item["Key"].removeprefix(self.prefix), int(item["Size"])
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, "LIST") from exc

    def check(self) -> None:
        try:
            self.probe_client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc, "HEAD bucket") from exc

    def close(self) -> None:
        self.client.close()
        self.probe_client.close()
