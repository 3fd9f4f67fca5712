"""Housekeeping, object-store side: retention by exact key and the orphan sweep.

Retention marks a study purged (``db/retention.py``), then deletes exactly the keys its
purged rows name.  A re-send during the purge was stored under a new key and its row
revived with it, so it is never among them: immutable keys leave nothing to race on.

The orphan sweep deletes objects that no live row claims once they are older than
``orphan_age_s``: PUTs whose row never committed (a crash or a database failure between
the two), and objects of a purge that a crash interrupted.
"""

from __future__ import annotations

import logging
from sqlalchemy import Engine

from pacs_node.config import RetentionConfig
from pacs_node.db import retention
from pacs_node.housekeeping import STUDY_FOLDERS, PurgeTotals
from pacs_node.storage.base import BlobStore, StoreUnavailable

log = logging.getLogger(__name__)

class ObjectRetention:
    """Retention and orphan sweep for an object store; the interface of ``housekeeping.Retention``."""

    def __init__(self, engine: Engine, store: BlobStore, config: RetentionConfig, orphan_age_s: float,
                 batch: int = 50) -> None:
        self.engine = engine
        self.store = store
        self.keep_s = config.keep_days * 86400.0
        self.keep_reports = config.keep_reports
        self.orphan_age_s = orphan_age_s
        self.batch = batch
        #: Retention off ([retention] enabled = false): only orphans are deleted.
        self.purging = config.enabled

    def sweep(self) -> PurgeTotals:
        """Purge every eligible study, then delete old orphans; logs one line when anything went."""
        studies = files = 0
        after = 0
        while self.purging:
            candidates = retention.purgeable_studies(self.engine, self.keep_s, after=after, limit=self.batch)
            for study_pk in candidates:
                if retention.mark_purged(self.engine, study_pk, self.keep_s, not self.keep_reports) is None:
                    continue
                keys = retention.purged_keys(self.engine, study_pk)
                keys = sorted(set(keys) - retention.live_paths(self.engine, keys))
                try:
                    self.store.delete(keys)
                except StoreUnavailable as exc:
                    log.error("event=retention_failed study=%d reason=%r (the orphan sweep deletes them)",
                              study_pk, str(exc))
                    continue
                studies, files = studies + 1, files + len(keys)
            if len(candidates) < self.batch:
                break
            after = candidates[-1]
        orphans, orphan_bytes = self.sweep_orphans()
        if studies or orphans:
            log.info("event=retention_purged studies=%d files=%d orphans=%d", studies, files, orphans)
        # object sizes are not listed per purge; the bytes counted are the orphans'
        return PurgeTotals(studies, files + orphans, orphan_bytes)

    def recover(self) -> PurgeTotals:
        """Nothing to finish at start: an interrupted purge leaves orphans, which the sweep deletes."""
        return PurgeTotals()

    def sweep_orphans(self) -> tuple[int, int]:
        """Delete objects older than ``orphan_age_s`` that no live row claims; (objects, bytes)."""
        removed = size = 0
        try:
            for folder in STUDY_FOLDERS:
                for chunk in retention.chunked(self.store.older_than(folder + "/", self.orphan_age_s)):
                    claimed = retention.live_paths(self.engine, [key for key, _ in chunk])
                    orphans = [(key, n) for key, n in chunk if key not in claimed]
                    if orphans:
                        self.store.delete([key for key, _ in orphans])
                        removed, size = removed + len(orphans), size + sum(n for _, n in orphans)
        except StoreUnavailable as exc:
            log.error("event=orphan_sweep_failed reason=%r", str(exc))
        if removed:
            log.warning("event=orphans_deleted objects=%d bytes=%d reason=no row claims them", removed, size)
        return removed, size
