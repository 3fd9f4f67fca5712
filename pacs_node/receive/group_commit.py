"""Group commit: one transaction and one flush for the instances of every association.

An association thread hands a received instance (its complete partial file and its row)
to :meth:`GroupCommit.store` and waits.  One committer thread takes every instance
waiting at that moment, from all associations, as a batch, and:

1. commits their rows in one transaction, not yet synced (SQLite in WAL mode; on
   PostgreSQL the commit is durable here: one server flush for the batch);
2. renames their files into ``studies/``, after the commit, so that no file is ever
   visible without its row;
3. starts the batch's flush: every file, every folder whose entries changed and SQLite's
   write-ahead log are fsynced side by side, so the filesystem's journal takes them in
   one commit;
4. answers every instance of the batch when the last of those fsyncs returns.

The committer does not wait for a flush: the next batch is committed and flushed beside
it, and the filesystem merges flushes that overlap.  So one association waits for one
flush per instance, and concurrent associations share theirs (their rows one transaction,
their folders and the log one fsync per batch, and the journal's commits).

**What is durable when an instance is answered with success**: its bytes and inode (fsync
of the file), its name under ``studies/`` (fsync of its folder, and of the folders above
it until this process has fsynced them once) and its row (fsync of the log, or
PostgreSQL's commit).  A failure answers every instance it concerns with a failure status
(A700 for the disk or the database, 0110 for a row the database refuses) and takes their
files back out of ``studies/``: nothing of theirs is acknowledged, and since a row without
its file is no duplicate, the scanner's re-send stores them again.  The exception is a
file that replaces an earlier copy of the same instance (a re-send that is not a
duplicate, e.g. in another transfer syntax): that earlier copy may have been
acknowledged, so the new one is fsynced *before* it replaces it (the old order, for
this rare case) and is never taken back out.

Flushed together, an instance that was not acknowledged may be left by a power loss with
its row and its name but not all of its bytes.  The filesystem's ordered data (ext4's
default, XFS, btrfs) never shows a size whose bytes were not written, so
:class:`~pacs_node.receive.store.SpoolingSink` takes an instance for already stored only
when its row, its file and the file's size agree.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import OperationalError

from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.receive.dimse import Status
from pacs_node.receive.scp import StoreResult
from pacs_node.receive.spool import PartialFile, Spool, fsync_dir

log = logging.getLogger(__name__)

SPOOL_FAILED = StoreResult(Status.OUT_OF_RESOURCES, "cannot write to spool")
DATABASE_UNAVAILABLE = StoreResult(Status.OUT_OF_RESOURCES, "database unavailable")
INTERNAL_ERROR = StoreResult(Status.PROCESSING_FAILURE, "internal error; see the node's log")
STOPPING = StoreResult(Status.OUT_OF_RESOURCES, "node is stopping")


@dataclass
class _Pending:
    """An instance waiting for its batch, and the answer its association waits for."""

    partial: PartialFile
    instance: ReceivedInstance
    answer: Future[StoreResult] = field(default_factory=Future)
    folders: set[Path] = field(default_factory=set)
    #: Placed over an earlier copy of the same instance (a re-send that was not a duplicate):
    #: fsynced before it replaced that copy, and never taken back out.
    replaced: bool = False


def _fail(batch: list[_Pending], result: StoreResult) -> None:
    """Answer the instances of ``batch`` not answered yet with ``result``, deleting their files
    wherever they are (in ``incoming/`` or already placed)."""
    for pending in batch:
        if not pending.answer.done():
            if not pending.replaced:  # a replacing copy is durable and the only one left
                pending.partial.discard()
            pending.answer.set_result(result)


class _Flush:
    """The fsyncs of one batch, run side by side; the last to finish answers the batch."""

    def __init__(self, placed: list[_Pending], spool: Spool, recorder: InstanceRecorder) -> None:
        self.spool = spool
        self.recorder = recorder
        self.placed = placed
        self.folders = set().union(*(pending.folders for pending in placed))
        self._left = len(placed) + len(self.folders) + 1
        self._lock = threading.Lock()

    def start(self, pool: ThreadPoolExecutor) -> None:
        # The log first: its pages were just written, where the files' write-back began on receipt.
        self.log_sync = pool.submit(self.recorder.sync_log)
        self.files = [pool.submit(pending.partial.sync) for pending in self.placed]
        self.folder_syncs = {folder: pool.submit(fsync_dir, folder) for folder in self.folders}
        for future in (*self.files, *self.folder_syncs.values(), self.log_sync):
            future.add_done_callback(self._one_done)

    def _one_done(self, _: Future) -> None:
        with self._lock:
            self._left -= 1
            if self._left:
                return
        try:
            self._answer()
        except Exception:  # never leave an association waiting
            log.exception("event=group_commit_failed instances=%d", len(self.placed))
            _fail(self.placed, INTERNAL_ERROR)

    def _answer(self) -> None:
        failed_folders = {folder for folder, done in self.folder_syncs.items() if done.exception() is not None}
        self.spool.folders_durable(self.folders - failed_folders)
        for pending, file_sync in zip(self.placed, self.files):
            error = file_sync.exception() or self.log_sync.exception() or next(
                (self.folder_syncs[f].exception() for f in pending.folders if f in failed_folders), None)
            if error is None:
                pending.answer.set_result(StoreResult(Status.SUCCESS))
            else:
                log.error("event=spool_failed error=%s calling_ae=%s", type(error).__name__,
                          pending.instance.calling_ae)
                _fail([pending], SPOOL_FAILED)


class GroupCommit:
    """Commits and flushes received instances in batches; shared by all associations of a process.

    Parameters
    ----------
    spool, recorder
        Where files and rows go; the recorder's batch methods are used from the
        committer thread only.
    max_batch
        The most instances in one batch; ``3 * max_batch`` threads (at most 64) run the
        fsyncs of the batches in flight.
    """

    def __init__(self, spool: Spool, recorder: InstanceRecorder, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.spool = spool
        self.recorder = recorder
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        # Enough threads for the fsyncs of a file, its folder and the log per instance in flight.
        self._fsyncs = ThreadPoolExecutor(max_workers=min(64, max_batch * 3), thread_name_prefix="ingest-fsync")
        self._committer = threading.Thread(target=self._run, name="ingest-commit", daemon=True)
        self._committer.start()

    def store(self, partial: PartialFile, instance: ReceivedInstance) -> StoreResult:
        """Record, place and flush ``instance`` with the others waiting; returns once it is
        durable (success) or failed.  ``partial`` is consumed either way."""
        pending = _Pending(partial, instance)
        with self._lock:
            if self._closed:
                partial.discard()
                return STOPPING
            self._queue.put(pending)
        return pending.answer.result()

    def waiting(self) -> int:
        """Instances handed over and not yet taken into a batch."""
        return self._queue.qsize()

    def close(self) -> None:
        """Finish the instances handed over so far, then stop."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._committer.join()
        self._fsyncs.shutdown(wait=True)

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                self._commit(batch)
            except Exception:  # never leave an association waiting
                log.exception("event=group_commit_failed instances=%d", len(batch))
                _fail(batch, INTERNAL_ERROR)

    def _commit(self, batch: list[_Pending]) -> None:
        recorded = self._record(batch)
        placed = []
        for pending in recorded:
            try:
                replacing = (self.spool.root / pending.instance.relative_path).exists()
                if replacing:  # an earlier copy may be acknowledged: ours must be durable before it goes
                    pending.partial.sync()
                pending.folders = self.spool.place(pending.partial, pending.instance.relative_path)
                pending.replaced = replacing
            except OSError as exc:
                log.error("event=spool_failed error=%s calling_ae=%s", type(exc).__name__, pending.instance.calling_ae)
                _fail([pending], SPOOL_FAILED)
                continue
            placed.append(pending)
        if not placed:
            return
        _Flush(placed, self.spool, self.recorder).start(self._fsyncs)

    def _record(self, batch: list[_Pending]) -> list[_Pending]:
        """Commit the rows of ``batch``; returns the instances recorded, having failed the others.

        When the batch's transaction fails for a reason other than the database being
        unreachable, each instance is tried once more in a transaction of its own: one bad
        row fails alone, and a series row that retention deleted is inserted again (the
        failed transaction dropped the cached ids).
        """
        try:
            self._record_together(batch)
            return batch
        except OperationalError as exc:
            log.error("event=database_unavailable error=%s instances=%d", type(exc.orig).__name__, len(batch))
            _fail(batch, DATABASE_UNAVAILABLE)
            return []
        except Exception as exc:
            log.warning("event=rows_retried_alone error=%s instances=%d", type(exc).__name__, len(batch))
        recorded = []
        for pending in batch:
            try:
                self._record_together([pending])
                recorded.append(pending)
            except OperationalError as exc:
                log.error("event=database_unavailable error=%s", type(exc.orig).__name__)
                _fail([pending], DATABASE_UNAVAILABLE)
            except Exception:
                log.exception("event=store_failed calling_ae=%s", pending.instance.calling_ae)
                _fail([pending], INTERNAL_ERROR)
        return recorded

    def _record_together(self, batch: list[_Pending]) -> None:
        new = self.recorder.record_batch([pending.instance for pending in batch])
        for pending, is_new in zip(batch, new):
            log.debug("event=instance_stored new=%s path=%s", is_new, pending.instance.relative_path)
