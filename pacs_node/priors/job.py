"""The analysis job with its prior: looked up alongside the analysis, never waited for past ``max_wait_s``."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from pacs_node.analyze.pipeline import Analysis
from pacs_node.config import Settings
from pacs_node.db.models import PriorStatus
from pacs_node.db.priors import LookupRow, record_lookup
from pacs_node.db.queue import ClaimedJob
from pacs_node.priors.association import Cancel
from pacs_node.priors.lookup import PriorFinder, prior_json
from pacs_node.worker import JobOutcome, JobRunner

log = logging.getLogger(__name__)

#: Seconds a cancelled lookup gets to wind down (its association is aborted at once).
_WIND_DOWN_S = 5.0


class WithPriors:
    """A job runner that also finds the study's prior: ``result["prior"]`` and a ``prior_lookups`` row.

    The lookup runs in its own thread while ``runner`` analyses; the job then waits for it
    at most until ``max_wait_s`` after the job started, and past that cancels it (aborting
    the association in use) and records the prior as unavailable.  An
    :class:`~pacs_node.analyze.pipeline.Analysis` runner asks for it once a series is
    analysed (so detection and lookup overlap), compares with it and states it in the report.
    """

    def __init__(self, runner: JobRunner, settings: Settings, finder: PriorFinder | None = None) -> None:
        self.runner = runner
        self.finder = finder or PriorFinder(settings)
        self.max_wait_s = settings.priors.max_wait_s

    def __call__(self, engine: Engine, job: ClaimedJob) -> JobOutcome:
        deadline = time.monotonic() + self.max_wait_s
        cancel = Cancel()
        found: list[LookupRow] = []

        def look() -> None:
            try:
                found.append(self.finder.lookup(engine, job.study_pk, cancel))
            except Exception as exc:  # the job goes on without its prior
                log.warning("event=prior_lookup_failed job=%d error=%s", job.id, type(exc).__name__)
                found.append(LookupRow(PriorStatus.UNAVAILABLE, reason=f"lookup failed: {type(exc).__name__}"))

        thread = threading.Thread(target=look, name=f"prior-{job.id}", daemon=True)
        thread.start()
        settled: list[LookupRow] = []

        def settle() -> LookupRow:
            """The lookup's row, waiting for it until the deadline at most (once)."""
            if not settled:
                settled.append(self._settle(thread, found, cancel, deadline))
            return settled[0]

        try:
            if isinstance(self.runner, Analysis):  # its report states the prior
                outcome = self.runner(engine, job, prior=settle)
            else:
                outcome = self.runner(engine, job)
        except BaseException:
            cancel.cancel()
            raise
        row = settle()
        record_lookup(engine, job.study_pk, job.id, row)
        log.info("event=prior_recorded job=%d status=%s", job.id, row.status.value)
        return JobOutcome({**outcome.result, "prior": prior_json(row)}, outcome.objects)

    def _settle(self, thread: threading.Thread, found: list[LookupRow], cancel: Cancel, deadline: float) -> LookupRow:
        """Wait for the lookup until ``deadline``, then cancel it; its row, or why there is none."""
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            cancel.cancel()
            thread.join(_WIND_DOWN_S)
        row = found[0] if found else LookupRow(
            PriorStatus.UNAVAILABLE, reason=f"no answer within max_wait_s ({self.max_wait_s:g} s)")
        if row.status is PriorStatus.UNAVAILABLE and cancel.cancelled.is_set():
            row = LookupRow(PriorStatus.UNAVAILABLE, source=row.source, study_uid=row.study_uid,
                            study_date=row.study_date, series_uid=row.series_uid,
                            reason=f"no prior within max_wait_s ({self.max_wait_s:g} s): {row.reason}")
        return row
