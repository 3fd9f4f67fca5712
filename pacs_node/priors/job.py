"""The analysis job with its prior: looked up alongside the analysis, never waited for past ``max_wait_s``;
and the re-report job, which looks an unavailable prior up again and re-reports once it is found."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine

from pacs_node.analyze.pipeline import Analysis
from pacs_node.analyze.revision import Revision, earlier_reports
from pacs_node.config import Settings
from pacs_node.db.models import JobKind, PriorStatus, utcnow
from pacs_node.db.priors import LookupRow, record_lookup, study_dates
from pacs_node.db.queue import ClaimedJob
from pacs_node.priors.association import Cancel
from pacs_node.priors.lookup import PriorFinder, prior_json
from pacs_node.priors.recheck import RecheckPolicy
from pacs_node.storage import BlobStore, open_store
from pacs_node.worker import JobOutcome, JobRunner

log = logging.getLogger(__name__)

#: Seconds a cancelled lookup gets to wind down (its association is aborted at once).
_WIND_DOWN_S = 5.0


class _Lookup:
    """One prior lookup in its own thread, waited for at most until ``max_wait_s`` after it started."""

    def __init__(self, finder: PriorFinder, engine: Engine, job: ClaimedJob, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self.deadline = time.monotonic() + max_wait_s
        self.cancel = Cancel()
        self._found: list[LookupRow] = []
        self._settled: list[LookupRow] = []
        self._thread = threading.Thread(target=self._look, args=(finder, engine, job), name=f"prior-{job.id}",
                                        daemon=True)
        self._thread.start()

    def _look(self, finder: PriorFinder, engine: Engine, job: ClaimedJob) -> None:
        try:
            self._found.append(finder.lookup(engine, job.study_pk, self.cancel))
        except Exception as exc:  # the job goes on without its prior
            log.warning("event=prior_lookup_failed job=%d error=%s", job.id, type(exc).__name__)
            self._found.append(LookupRow(PriorStatus.UNAVAILABLE, reason=f"lookup failed: {type(exc).__name__}"))

    def settle(self) -> LookupRow:
        """The lookup's row, waiting for it until the deadline at most, then cancelling it (once)."""
        if not self._settled:
            self._thread.join(max(0.0, self.deadline - time.monotonic()))
            if self._thread.is_alive():
                self.cancel.cancel()
                self._thread.join(_WIND_DOWN_S)
            row = self._found[0] if self._found else LookupRow(
                PriorStatus.UNAVAILABLE, reason=f"no answer within max_wait_s ({self.max_wait_s:g} s)")
            if row.status is PriorStatus.UNAVAILABLE and self.cancel.cancelled.is_set():
                row = LookupRow(PriorStatus.UNAVAILABLE, source=row.source, study_uid=row.study_uid,
                                study_date=row.study_date, series_uid=row.series_uid,
                                reason=f"no prior within max_wait_s ({self.max_wait_s:g} s): {row.reason}")
            self._settled.append(row)
        return self._settled[0]


class WithPriors:
    """A job runner that also finds the study's prior: ``result["prior"]`` and a ``prior_lookups`` row.

    For an analysis job the lookup runs in its own thread while ``runner`` analyses; the job
    then waits for it at most until ``max_wait_s`` after the job started, and past that
    cancels it (aborting the association in use) and records the prior as unavailable.  An
    :class:`~pacs_node.analyze.pipeline.Analysis` runner asks for it once a series is
    analysed (so detection and lookup overlap), compares with it and states it in the report.

    With ``[priors] recheck_minutes`` an analysed study whose prior was unavailable gets a
    recheck (:mod:`pacs_node.priors.recheck`); its re-report job looks the prior up alone
    first: still unavailable, it plans the next recheck and makes nothing; none, it stops;
    found, it analyses again with the prior and replaces our earlier reports with new
    versions (:mod:`pacs_node.analyze.revision`).
    """

    def __init__(self, runner: JobRunner, settings: Settings, finder: PriorFinder | None = None,
                 store: BlobStore | None = None) -> None:
        self.runner = runner
        #: Where our earlier reports are read (the analysing runner's store, when it has one).
        self.store = store or getattr(runner, "store", None) or open_store(settings)
        self.finder = finder or PriorFinder(settings, self.store)
        self.max_wait_s = settings.priors.max_wait_s
        #: The runner when it analyses: it compares with the prior, and only its reports can be re-reported.
        self.analysis = runner if isinstance(runner, Analysis) else None
        self.recheck = RecheckPolicy.from_config(settings.priors) if self.analysis is not None else None

    def __call__(self, engine: Engine, job: ClaimedJob) -> JobOutcome:
        if job.kind is JobKind.REREPORT:
            return self._rereport(engine, job)
        lookup = _Lookup(self.finder, engine, job, self.max_wait_s)
        try:
            if self.analysis is not None:  # its report states the prior
                outcome = self.analysis(engine, job, prior=lookup.settle)
            else:
                outcome = self.runner(engine, job)
        except BaseException:
            lookup.cancel.cancel()
            raise
        analysed = bool(outcome.result.get("analysis_performed"))  # a report there is to revise later
        return self._record(engine, job, lookup.settle(), outcome, recheck=analysed)

    def _rereport(self, engine: Engine, job: ClaimedJob) -> JobOutcome:
        """Look the prior up again; re-report the study with it once it is found."""
        row = _Lookup(self.finder, engine, job, self.max_wait_s).settle()
        if row.status is not PriorStatus.FOUND:
            log.info("event=prior_recheck job=%d study=%d status=%s", job.id, job.study_pk, row.status.value)
            return self._record(engine, job, row, _not_rereported(f"the prior is {row.status.value}: {row.reason}"),
                                recheck=row.status is PriorStatus.UNAVAILABLE)
        revision, why_not = self._revision(engine, job)
        if revision is None or self.analysis is None:
            log.warning("event=prior_recheck job=%d study=%d status=found rereported=no reason=%r", job.id,
                        job.study_pk, why_not)
            return self._record(engine, job, row, _not_rereported(why_not), recheck=False)
        outcome = self.analysis(engine, job, prior=lambda: row, revision=revision)
        predecessors = [s["revises"]["sr_uid"] for s in outcome.result.get("series", []) if "revises" in s]
        log.info("event=study_rereported job=%d study=%d revises_job=%d reports=%d", job.id, job.study_pk,
                 revision.job_pk, len(predecessors))
        result = {**outcome.result, "rereport": {"revises_job": revision.job_pk, "predecessor_sr_uids": predecessors}}
        return self._record(engine, job, row, JobOutcome(result, outcome.objects), recheck=False)

    def _revision(self, engine: Engine, job: ClaimedJob) -> tuple[Revision | None, str]:
        """Our earlier reports of the study to replace; or ``None`` and why the study is not re-reported."""
        if self.analysis is None:
            return None, "analysis is off on this node"
        if study_dates(engine, job.study_pk).purged_at is not None:
            return None, "the study's images were purged"
        revision = earlier_reports(engine, self.store, job.study_pk)
        return (revision, "") if revision is not None else (None, "our earlier report of the study is gone")

    def _record(self, engine: Engine, job: ClaimedJob, row: LookupRow, outcome: JobOutcome,
                recheck: bool) -> JobOutcome:
        """Record the lookup (planning its recheck when ``recheck`` and it was unavailable); the outcome with it."""
        recheck_at = until = None
        if recheck and row.status is PriorStatus.UNAVAILABLE and self.recheck is not None:
            completed_at = study_dates(engine, job.study_pk).completed_at or utcnow()
            recheck_at, until = self.recheck.next_recheck(completed_at, utcnow())
            if recheck_at is None:
                log.info("event=prior_recheck_expired job=%d study=%d", job.id, job.study_pk)
        record_lookup(engine, job.study_pk, job.id, row, recheck_at, until)
        log.info("event=prior_recorded job=%d status=%s recheck_at=%s", job.id, row.status.value,
                 recheck_at.isoformat(timespec="seconds") if recheck_at else "-")
        return JobOutcome({**outcome.result, "prior": prior_json(row, recheck_at)}, outcome.objects)


def _not_rereported(reason: str) -> JobOutcome:
    """The outcome of a recheck that made nothing."""
    return JobOutcome({"step": "prior-recheck", "rereported": False, "reason": reason})
