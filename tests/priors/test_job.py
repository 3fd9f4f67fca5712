"""The analysis job with ``[priors]``: the SR states what the lookup found, even when it is slow."""

from __future__ import annotations

import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from pacs_node.analyze.pipeline import Analysis
from pacs_node.db.models import PriorStatus
from pacs_node.db.priors import LookupRow
from pacs_node.priors.job import WithPriors
from pacs_node.report.read import read_study_summary
from tests.analyze.test_pipeline import TruthDetector, _job, _receive, study  # noqa: F401 - fixture

PRIOR_UID = generate_uid()


class _Finder:
    """A prior lookup that answers ``row`` after ``delay_s`` (or is cancelled)."""

    def __init__(self, row: LookupRow, delay_s: float = 0.0) -> None:
        self.row, self.delay_s = row, delay_s

    def lookup(self, engine, study_pk: int, cancel) -> LookupRow:  # noqa: ANN001
        if cancel.cancelled.wait(self.delay_s):
            return LookupRow(PriorStatus.UNAVAILABLE, source="pacs", reason="cancelled")
        return self.row


def _settings(settings, max_wait_s: float):  # noqa: ANN001, ANN202
    sources = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 11999}]
    return settings.model_copy(update={"priors": settings.priors.model_copy(
        update={"enabled": True, "max_wait_s": max_wait_s, "sources": sources})})


FOUND = LookupRow(PriorStatus.FOUND, source="pacs", study_uid=PRIOR_UID, study_date="20251130", instances=40)


@pytest.mark.parametrize(("row", "delay_s", "max_wait_s", "status", "uid", "sentence"), [
    (FOUND, 0.5, 30, "found", PRIOR_UID, "Prior CT of 2025-11-30 retrieved but not compared by this version"),
    (LookupRow(PriorStatus.NONE, source="pacs", reason="no earlier CT study of the patient"), 0.0, 30, "none", None,
     "No prior chest CT available for comparison"),
    (FOUND, 30.0, 1.0, "unavailable", None,  # the PACS is too slow: the report does not wait for it
     "Prior CT could not be retrieved (no prior within max_wait_s (1 s): cancelled)"),
])
def test_the_report_states_the_prior_the_job_found(study, row: LookupRow, delay_s: float,  # noqa: ANN001, F811
                                                   max_wait_s: float, status: str, uid: str | None,
                                                   sentence: str) -> None:
    phantom, series_dir, settings, engine = study
    settings = _settings(settings, max_wait_s)
    _receive(series_dir, settings.storage.spool_dir, engine)
    runner = WithPriors(Analysis(settings, TruthDetector(phantom.nodules)), settings, finder=_Finder(row, delay_s))
    started = time.monotonic()
    outcome = runner(engine, _job(engine))
    assert time.monotonic() - started < max_wait_s + 10, "never waits past max_wait_s"
    sr = pydicom.dcmread(settings.storage.spool_dir / outcome.objects[0][3])
    summary = read_study_summary(sr)
    assert any(comment.startswith(sentence) for comment in summary["comments"]), summary["comments"]
    assert summary["compared_with_prior"] is False and summary["prior_study_uid"] == uid
    assert outcome.result["prior"]["status"] == status, "the job result and the report agree"
