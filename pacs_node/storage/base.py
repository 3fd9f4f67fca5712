"""The blob store interface and its keys.

A key is a relative, ``/``-separated name built from validated UIDs.  A received
instance's key on an object store is immutable and new for every copy stored
(``studies/<study>/<series>/<sop>/<random>.dcm``): a re-send never overwrites an object
that a row or a retention sweep is looking at, and retention deletes exact keys.  The
local spool keeps its single path per instance (``studies/<study>/<series>/<sop>.dcm``),
whose replacement rules ``receive/group_commit.py`` owns.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from pydicom import Dataset, dcmread

from pacs_node.receive.spool import validate_uid


class StoreUnavailable(OSError):
    """The store could not be reached or refused an operation; the reason says which."""


def instance_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """A new immutable key for one stored copy of an instance; UIDs are validated."""
    return "/".join((
        "studies", validate_uid(study_uid, "StudyInstanceUID"), validate_uid(series_uid, "SeriesInstanceUID"),
        validate_uid(sop_uid, "SOPInstanceUID"), secrets.token_hex(8) + ".dcm",
    ))


def report_key(study_uid: str, sop_uid: str) -> str:
    """The key of an object we made (its SOP Instance UID is new, so the key is too)."""
    return "/".join(("reports", validate_uid(study_uid, "StudyInstanceUID"),
                     validate_uid(sop_uid, "SOPInstanceUID") + ".dcm"))


def read_dataset(store: BlobStore, key: str, **options: object) -> Dataset:
    """The data set stored under ``key`` (``options`` go to ``dcmread``); ``FileNotFoundError`` when there is none."""
    return dcmread(io.BytesIO(store.read(key)), **options)  # type: ignore[arg-type]


class BlobStore(Protocol):
    """Where objects live, by key.  Implementations are thread-safe."""

    #: "local" or "s3", for logs and health.
    kind: str

    def put_file(self, path: Path, key: str, sha256_hex: str) -> None:
        """Store the complete file ``path`` under ``key``; the store verifies ``sha256_hex``.

        Returns only once the object is durable; :class:`StoreUnavailable` otherwise."""

    def write_dataset(self, dataset: Dataset, key: str) -> int:
        """Store an object we made under ``key``, durably; returns its size in bytes."""

    def size(self, key: str) -> int | None:
        """The object's size in bytes, ``None`` when there is none."""

    def read(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` when there is none."""

    def fetched(self, keys: Sequence[str]) -> AbstractContextManager[dict[str, Path]]:
        """Local files holding the objects of ``keys`` (fetched in parallel), for the ``with``
        block; keys without an object are left out."""

    def delete(self, keys: Sequence[str]) -> int:
        """Delete the objects of ``keys`` (missing ones are no error); returns how many were asked."""

    def older_than(self, prefix: str, age_s: float) -> Iterator[tuple[str, int]]:
        """(key, size) of objects under ``prefix`` last written more than ``age_s`` ago."""

    def check(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers and is writable."""

    def close(self) -> None:
        """Release connections and threads."""
