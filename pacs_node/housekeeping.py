"""Housekeeping, file side: retention of spool files and the disk-space guard.

Retention order, per study (see ``db/retention.py`` for which studies):

1. mark the study, its instances (and report objects) purged, in one transaction;
2. rename ``studies/<study>`` (and ``reports/<study>``) into this node's
   ``purging/<node>/<batch>/`` folder: one atomic rename takes the files out of the spool;
3. move back any file whose row is live again: an instance that a scanner re-sent
   between 1 and 2 (its row is committed before its file is renamed into place, so a
   file that reached the moved folder has a row that step 3 sees);
4. delete the rest.

A crash after 1 leaves files that no row claims: ``recover`` (at start) and every sweep
finish the job.  Nothing ever leaves a live row without its file.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from pacs_node.config import RetentionConfig
from pacs_node.db import retention
from pacs_node.receive.spool import InvalidUID, fsync_dir, validate_name, validate_uid

log = logging.getLogger(__name__)

_MB = 1024 * 1024
#: Spool folders that hold a folder per study.
STUDY_FOLDERS = ("studies", "reports")


@dataclass(frozen=True)
class PurgeTotals:
    """What one sweep deleted."""

    studies: int = 0
    files: int = 0
    bytes: int = 0


class Retention:
    """Deletes the received files of finished studies ``keep_days`` after they settled."""

    def __init__(self, engine: Engine, spool_root: Path, node_name: str, config: RetentionConfig,
                 batch: int = 50) -> None:
        self.engine = engine
        self.root = Path(spool_root)
        self.trash = self.root / "purging" / validate_name(node_name)
        self.keep_s = config.keep_days * 86400.0
        self.keep_reports = config.keep_reports
        self.batch = batch

    @property
    def _folders(self) -> tuple[str, ...]:
        return STUDY_FOLDERS[:1] if self.keep_reports else STUDY_FOLDERS

    def sweep(self) -> PurgeTotals:
        """Purge every eligible study; logs one ``retention_purged`` line when any was."""
        studies = files = size = 0
        leftover_files, leftover_bytes = self._empty_trash()
        after = 0
        while True:
            candidates = retention.purgeable_studies(self.engine, self.keep_s, after=after, limit=self.batch)
            for study_pk in candidates:
                mark = retention.mark_purged(self.engine, study_pk, self.keep_s, not self.keep_reports)
                if mark is None:
                    continue  # re-opened or taken by another process meanwhile
                try:
                    removed, removed_bytes = self._delete(mark.study_uid)
                except OSError as exc:
                    log.error("event=retention_failed study=%d error=%s (files are removed at the next start)",
                              study_pk, type(exc).__name__)
                    continue
                log.debug("event=study_purged study=%d files=%d bytes=%d", study_pk, removed, removed_bytes)
                studies, files, size = studies + 1, files + removed, size + removed_bytes
            if len(candidates) < self.batch:
                break
            after = candidates[-1]
        if studies or leftover_files:
            log.info("event=retention_purged studies=%d files=%d bytes=%d",
                     studies, files + leftover_files, size + leftover_bytes)
        return PurgeTotals(studies, files + leftover_files, size + leftover_bytes)

    def recover(self) -> PurgeTotals:
        """Finish purges a crash interrupted: study folders whose rows say purged, and the trash."""
        files, size = self._empty_trash()
        names = [entry.name for folder in self._folders if (self.root / folder).is_dir()
                 for entry in os.scandir(self.root / folder) if entry.is_dir()]
        purged = retention.purged_among(self.engine, sorted(set(names)))
        for study_uid in sorted(purged):
            try:
                removed, removed_bytes = self._delete(study_uid)
            except OSError as exc:
                log.error("event=retention_failed error=%s (left for the next start)", type(exc).__name__)
                continue
            files, size = files + removed, size + removed_bytes
        if files:
            log.warning("event=retention_recovered studies=%d files=%d bytes=%d reason=purge interrupted",
                        len(purged), files, size)
        return PurgeTotals(len(purged), files, size)

    def _delete(self, study_uid: str) -> tuple[int, int]:
        """Take a purged study's folders out of the spool and delete them; (files, bytes)."""
        try:
            study_uid = validate_uid(study_uid, "StudyInstanceUID")
        except InvalidUID:
            return 0, 0  # never stored under a path (the receiver refuses such UIDs)
        batch = self.trash / secrets.token_hex(8)
        moved = False
        for folder in self._folders:
            source = self.root / folder / study_uid
            if not source.is_dir():
                continue
            target = batch / folder / study_uid
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(source, target)
            except FileNotFoundError:
                continue  # another process took it
            moved = True
        return self._empty(batch) if moved else (0, 0)

    def _empty_trash(self) -> tuple[int, int]:
        if not self.trash.is_dir():
            return 0, 0
        files = size = 0
        for batch in sorted(self.trash.iterdir()):
            try:
                removed, removed_bytes = self._empty(batch)
            except OSError as exc:
                log.error("event=retention_failed error=%s (trash emptied at the next sweep)", type(exc).__name__)
                continue
            files, size = files + removed, size + removed_bytes
        return files, size

    def _empty(self, batch: Path) -> tuple[int, int]:
        """Restore the files of ``batch`` that rows claim again, delete the rest; (files, bytes)."""
        found: dict[str, Path] = {}
        for folder, _, names in os.walk(batch):
            for name in names:
                path = Path(folder) / name
                found[path.relative_to(batch).as_posix()] = path
        for relative in retention.live_paths(self.engine, sorted(found)):
            self._restore(found.pop(relative), self.root / relative)
        size = 0
        for path in found.values():
            try:
                size += path.stat().st_size
            except FileNotFoundError:
                pass
        shutil.rmtree(batch, ignore_errors=True)
        return len(found), size

    def _restore(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return  # stored again meanwhile: the new copy of the same instance stays
        os.rename(source, target)
        fsync_dir(target.parent)
        log.info("event=retention_restored_file reason=instance stored again during purge")


class DiskGuard:
    """The spool filesystem's free space against ``min_free_mb`` (refuse, defer) and ``warn_free_mb``.

    :meth:`check` runs on a timer and logs each crossing once; :meth:`has_room` is asked
    by the worker before it claims a job (reports need space too).  The receiver refuses
    C-STOREs by itself (``Spool.begin``), so nothing here needs a restart to resume.
    """

    OK, LOW, FULL = "ok", "low", "full"

    def __init__(self, spool_root: Path, min_free_mb: int, warn_free_mb: int) -> None:
        self.root = Path(spool_root)
        self.min_free_bytes = min_free_mb * _MB
        self.warn_free_bytes = warn_free_mb * _MB
        self.level = self.OK

    def free_bytes(self) -> int:
        """Bytes available on the spool's filesystem."""
        return shutil.disk_usage(self.root).free

    def has_room(self) -> bool:
        """``False`` while free space is below ``min_free_mb`` (never when it is 0)."""
        return not self.min_free_bytes or self.free_bytes() >= self.min_free_bytes

    def check(self) -> str:
        """Classify free space (ok, low, full) and log when that changed."""
        free = self.free_bytes()
        if self.min_free_bytes and free < self.min_free_bytes:
            level = self.FULL
        elif self.warn_free_bytes and free < self.warn_free_bytes:
            level = self.LOW
        else:
            level = self.OK
        if level != self.level:
            free_mb = free // _MB
            if level == self.FULL:
                log.error("event=spool_space_exhausted free_mb=%d min_free_mb=%d action=C-STORE refused with A700, "
                          "jobs deferred", free_mb, self.min_free_bytes // _MB)
            elif level == self.LOW:
                log.warning("event=spool_space_low free_mb=%d warn_free_mb=%d", free_mb, self.warn_free_bytes // _MB)
            else:
                log.info("event=spool_space_recovered free_mb=%d", free_mb)
            self.level = level
        return level
