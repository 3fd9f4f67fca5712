"""The instance sink for an object store (``[storage] backend = "s3"``).

A data set is received into a partial file under the spool's ``incoming/`` as on the
local path, checked, hashed, PUT under a new immutable key with its SHA-256 (which the
store verifies), and only then recorded; the C-STORE is answered with success once the
object is stored *and* its row committed.  An object-store error answers A700 and
stores no row.  A PUT whose row fails is deleted again; if even that fails, the object
has no row and the orphan sweep (``storage/sweep.py``) deletes it later.

Each association thread does its own PUT and commit: the round trip to the store, not
the local flush, is what an instance waits for here, so batching buys little.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

from pacs_node.db.ingest import InstanceRecorder
from pacs_node.receive.dimse import Request, Status
from pacs_node.receive.scp import StoreResult
from pacs_node.receive.spool import PartialFile, Spool
from pacs_node.receive.store import read_header, refusal
from pacs_node.storage.base import BlobStore, StoreUnavailable, instance_key

log = logging.getLogger(__name__)

STORE_UNAVAILABLE = StoreResult(Status.OUT_OF_RESOURCES, "object store unavailable")


def file_sha256(path: object) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fp:  # type: ignore[arg-type]
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ObjectStoreSink:
    """Stores received instances in a :class:`BlobStore` and their rows in the database.

    ``spool`` only holds partial files while they arrive.  A re-sent instance whose row
    names an object of the row's size is a duplicate, answered at once.
    """

    def __init__(self, spool: Spool, store: BlobStore, recorder: InstanceRecorder) -> None:
        self.spool = spool
        self.store = store
        self.recorder = recorder

    def close(self) -> None:
        self.recorder.close()

    def begin(self) -> PartialFile:
        return self.spool.begin()

    def complete(self, partial: PartialFile, request: Request, transfer_syntax: str, calling_ae: str) -> StoreResult:
        try:
            return self._complete(partial, request, transfer_syntax, calling_ae)
        except StoreUnavailable as exc:
            log.error("event=object_store_failed reason=%r calling_ae=%s", str(exc), calling_ae)
            return STORE_UNAVAILABLE
        except Exception as exc:
            return refusal(exc, calling_ae)
        finally:
            partial.discard()

    def _complete(self, partial: PartialFile, request: Request, transfer_syntax: str, calling_ae: str) -> StoreResult:
        header = read_header(partial, request, transfer_syntax, calling_ae)
        size = partial.close()
        stored = self.recorder.stored_file(header.sop_instance_uid)
        if stored is not None and self.store.size(stored[0]) == stored[1]:
            log.debug("event=instance_duplicate calling_ae=%s", calling_ae)
            return StoreResult(Status.SUCCESS)
        key = instance_key(header.study_uid, header.series_uid, header.sop_instance_uid)
        self.store.put_file(partial.path, key, file_sha256(partial.path))
        instance = dataclasses.replace(header, relative_path=key, size_bytes=size)
        try:
            if not self.recorder.record(instance):  # a live row whose object is gone: it names the new one
                self.recorder.repoint(instance)
        except BaseException:
            self._forget(key)
            raise
        log.debug("event=instance_stored key=%s", key)
        return StoreResult(Status.SUCCESS)

    def _forget(self, key: str) -> None:
        """Delete an object whose row was not committed (else the orphan sweep does)."""
        try:
            self.store.delete([key])
        except StoreUnavailable as exc:
            log.warning("event=orphan_left key=%s reason=%r (the orphan sweep deletes it)", key, str(exc))
