"""The analysis job with ``[priors]``: the SR states what the lookup found, compares with a found
prior (detect, register, match, change), and never waits past ``max_wait_s``; with
``recheck_minutes`` an unavailable prior is looked up again and the study re-reported."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from pacs_node.analyze.pipeline import Analysis
from pacs_node.db import queue
from pacs_node.db.models import JobKind, JobState, ObjectKind, PriorLookup, PriorStatus, Study, utcnow
from pacs_node.db.priors import LookupRow
from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.ml.phantom import generate_followup, write_followup
from pacs_node.priors.job import WithPriors
from pacs_node.report.context import REVISED_REPORT
from pacs_node.report.read import read_findings, read_study_summary
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


def _settings(settings, max_wait_s: float, **priors: float):  # noqa: ANN001, ANN202
    sources = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 11999}]
    return settings.model_copy(update={"priors": settings.priors.model_copy(
        update={"enabled": True, "max_wait_s": max_wait_s, "sources": sources, **priors})})


@pytest.mark.parametrize(("row", "delay_s", "max_wait_s", "status", "sentence"), [
    (LookupRow(PriorStatus.NONE, source="pacs", reason="no earlier CT study of the patient"), 0.0, 30, "none",
     "No prior chest CT available for comparison"),
    (LookupRow(PriorStatus.FOUND, source="pacs", study_uid=PRIOR_UID, study_date="20251130"), 30.0, 1.0,
     "unavailable",  # the PACS is too slow: the report does not wait for it
     "Prior CT could not be retrieved (no prior within max_wait_s (1 s): cancelled)"),
])
def test_the_report_states_a_prior_it_could_not_compare(study, row: LookupRow, delay_s: float,  # noqa: ANN001, F811
                                                        max_wait_s: float, status: str, sentence: str) -> None:
    phantom, series_dir, settings, engine = study
    settings = _settings(settings, max_wait_s)
    _receive(series_dir, settings.storage.spool_dir, engine)
    runner = WithPriors(Analysis(settings, TruthDetector(phantom.nodules)), settings, finder=_Finder(row, delay_s))
    started = time.monotonic()
    outcome = runner(engine, _job(engine))
    assert time.monotonic() - started < max_wait_s + 10, "never waits past max_wait_s"
    summary = read_study_summary(pydicom.dcmread(settings.storage.spool_dir / outcome.objects[0][3]))
    assert any(comment.startswith(sentence) for comment in summary["comments"]), summary["comments"]
    assert summary["compared_with_prior"] is False and summary["prior_study_uid"] is None
    assert outcome.result["prior"]["status"] == status, "the job result and the report agree"


class _TruthPerStudy:
    """The planted nodules of whichever time point a volume is (told apart by its origin)."""

    name, version, synthetic_data = "truth", "0", True

    def __init__(self, timepoints) -> None:  # noqa: ANN001
        self.timepoints = timepoints

    def detect(self, volume) -> list[Finding]:  # noqa: ANN001
        corner = np.asarray(volume.affine)[:3, 3]
        tp = min(self.timepoints, key=lambda t: min(np.linalg.norm(corner - np.asarray(c)) for c in _corners(t)))
        return [Finding(tuple(n.centre_xyz_mm), n.diameter_mm, n.diameter_mm, np.pi / 6 * n.diameter_mm**3,
                        NoduleType(n.type), 0.9) for n in tp.phantom.nodules]


def _corners(tp) -> list[tuple[float, float, float]]:  # noqa: ANN001
    """Where a volume of this time point may start: its first or its last slice."""
    p = tp.phantom
    top = np.asarray(p.origin_xyz_mm, dtype=float)
    bottom = top + np.array([0.0, 0.0, (p.volume_hu.shape[0] - 1) * p.spacing_zyx_mm[0]])
    return [tuple(top), tuple(bottom)]


def test_a_found_prior_is_compared_nodule_by_nodule(study, tmp_path: Path) -> None:  # noqa: ANN001, F811
    _, _, settings, engine = study
    settings = _settings(settings, 60)
    fu = generate_followup(930500, 2, interval_days=365, shape_zyx=(72, 160, 160), spacing_zyx_mm=(2.5, 1.8, 1.8),
                           n_nodules=3, nodule_types=["solid"], diameter_range_mm=(6.0, 12.0),
                           courses=["growing", "stable", "resolving"], vdt_days=300.0, n_new=1)
    write_followup(fu, tmp_path / "patient")
    _receive(tmp_path / "patient" / "t0" / "series", settings.storage.spool_dir, engine)  # the prior, fetched
    prior_job = _job(engine)  # (a fetched prior has no job in the node; here it is just stored)
    assert prior_job is not None
    _receive(tmp_path / "patient" / "t1" / "series", settings.storage.spool_dir, engine)
    baseline = fu.timepoints[0].phantom
    row = LookupRow(PriorStatus.FOUND, source="pacs", study_uid=baseline.study_uid, study_date="20260101",
                    series_uid=baseline.series_uid, instances=72)
    runner = WithPriors(Analysis(settings, _TruthPerStudy(fu.timepoints)), settings, finder=_Finder(row))
    outcome = runner(engine, _job(engine))
    sr = pydicom.dcmread(settings.storage.spool_dir / outcome.objects[0][3])
    summary = read_study_summary(sr)
    assert summary["compared_with_prior"] is True and summary["prior_study_uid"] == baseline.study_uid
    assert any("not seen on this CT" in c for c in summary["comments"]), "the resolved nodule is reported"
    truth = {s.lesion_id: s for s in fu.timepoints[1].lesions}
    current = fu.timepoints[1].phantom.nodules
    changes = {}
    for found in read_findings(sr):
        nearest = min(range(len(current)), key=lambda i: np.linalg.norm(np.subtract(current[i].centre_xyz_mm,
                                                                                    found["center_lps_mm"])))
        lesion = truth[[s for s in fu.timepoints[1].lesions if s.change != "resolved"][nearest].lesion_id]
        changes[lesion.change] = found
    assert set(changes) == {"growing", "stable", "new"}
    assert changes["new"]["prior_diameter_mm"] is None and changes["new"]["change"] == "new"
    grown = changes["growing"]
    assert grown["change"] in ("growing", "stable")  # > 1.5 mm of mean diameter, or less for a small one
    assert grown["vdt_days"] == pytest.approx(300, rel=0.25), "VDT within 25 % of the truth"
    assert changes["stable"]["change"] == "stable"
    assert outcome.result["series"][0]["comparison"]["matched"] == 2


def test_our_earlier_report_is_the_prior_and_its_tracking_uids_carry_over(study, tmp_path: Path) -> None:  # noqa: ANN001, F811
    from pacs_node.analyze.pipeline import DeviceInfo, SR_SERIES_NUMBER
    from pacs_node.report.identity import ObjectIdentity
    from pacs_node.report.sr import AlgorithmInfo, ReportOutcome, build_report

    _, _, settings, engine = study
    settings = _settings(settings, 60)
    fu = generate_followup(930501, 2, interval_days=365, shape_zyx=(72, 160, 160), spacing_zyx_mm=(2.5, 1.8, 1.8),
                           n_nodules=2, nodule_types=["solid"], diameter_range_mm=(8.0, 12.0),
                           courses=["growing", "stable"], vdt_days=300.0, n_new=0)
    write_followup(fu, tmp_path / "patient")
    detector = _TruthPerStudy(fu.timepoints)
    baseline_folder = tmp_path / "patient" / "t0" / "series"
    earlier = detector.detect(pacs_volume(baseline_folder))  # what our report said last year
    source = [pydicom.dcmread(path) for path in sorted(baseline_folder.glob("*.dcm"))]
    report = build_report(source, earlier, outcome=ReportOutcome.analysed(), device=DeviceInfo("pacs-node project",
                          "pacs-node", "0.1.0", "t"), algorithm=AlgorithmInfo("truth", "0", synthetic_data=True),
                          identity=ObjectIdentity.fresh(SR_SERIES_NUMBER))
    (tmp_path / "our-sr").mkdir()
    report.save_as(tmp_path / "our-sr" / "sr.dcm", enforce_file_format=True)
    _receive(baseline_folder, settings.storage.spool_dir, engine)
    _receive(tmp_path / "our-sr", settings.storage.spool_dir, engine)
    assert _job(engine) is not None  # (the prior study's own job, left aside)
    _receive(tmp_path / "patient" / "t1" / "series", settings.storage.spool_dir, engine)
    baseline = fu.timepoints[0].phantom
    row = LookupRow(PriorStatus.FOUND, source="pacs", study_uid=baseline.study_uid, study_date="20260101",
                    series_uid=baseline.series_uid, instances=72, our_sr_uid=str(report.SOPInstanceUID))
    calls = []
    detector.detect = (lambda volume, seen=detector.detect: calls.append(volume) or seen(volume))  # type: ignore[method-assign]
    outcome = WithPriors(Analysis(settings, detector), settings, finder=_Finder(row))(engine, _job(engine))
    assert len(calls) == 1, "only the current CT is detected on: the prior's nodules come from our report"
    assert outcome.result["series"][0]["comparison"]["prior_findings_from"] == "our earlier report"
    sr = pydicom.dcmread(settings.storage.spool_dir / outcome.objects[0][3])
    now = read_findings(sr)
    assert {n["tracking_uid"] for n in now} == {f.tracking_uid for f in earlier}, "each nodule keeps its Tracking UID"
    assert all(n["prior_diameter_mm"] is not None for n in now)


def pacs_volume(folder: Path):  # noqa: ANN201
    from pacs_node.imaging.volume import volume_from_datasets

    return volume_from_datasets([pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))])


# -- re-reporting when the prior becomes available ([priors] recheck_minutes) ------------------

DOWN = LookupRow(PriorStatus.UNAVAILABLE, reason="pacs: no association: connection refused")


def _lookups(engine) -> list:  # noqa: ANN001
    with engine.connect() as connection:
        return connection.execute(select(PriorLookup).order_by(PriorLookup.id)).all()


def _finish(engine, job, outcome) -> None:  # noqa: ANN001
    """What the worker does with an outcome: the job, its objects and deliveries in one transaction."""
    assert queue.finish_job(engine, job, "t", JobState.DONE, result=outcome.result, objects=outcome.objects)


def _due(engine, minutes: float = 1) -> list[int]:  # noqa: ANN001
    """Queue the rechecks due ``minutes`` (and a second) from now."""
    return queue.queue_rechecks(engine, now=utcnow() + dt.timedelta(minutes=minutes, seconds=1))


def _predecessors(sr) -> list[str]:  # noqa: ANN001
    return [str(sop.ReferencedSOPInstanceUID) for study in sr.get("PredecessorDocumentsSequence", [])
            for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence]


@pytest.fixture
def followup(study, tmp_path: Path):  # noqa: ANN001, ANN201, F811
    """A prior (received as if fetched) and the current study with its claimed job; rechecks every minute."""
    _, _, settings, engine = study
    settings = _settings(settings, 30, recheck_minutes=1, recheck_hours=2)
    fu = generate_followup(930502, 2, interval_days=365, shape_zyx=(72, 160, 160), spacing_zyx_mm=(2.5, 1.8, 1.8),
                           n_nodules=2, nodule_types=["solid"], diameter_range_mm=(8.0, 12.0),
                           courses=["growing", "stable"], vdt_days=300.0, n_new=1)
    write_followup(fu, tmp_path / "patient")
    _receive(tmp_path / "patient" / "t0" / "series", settings.storage.spool_dir, engine)
    assert _job(engine) is not None  # (the prior's own job, left aside: a fetched prior has none)
    _receive(tmp_path / "patient" / "t1" / "series", settings.storage.spool_dir, engine)
    job = _job(engine)
    assert queue.claim_job(engine, "t", 600, 3) is None
    baseline = fu.timepoints[0].phantom
    found = LookupRow(PriorStatus.FOUND, source="pacs", study_uid=baseline.study_uid, study_date="20260101",
                      series_uid=baseline.series_uid, instances=72)
    return settings, engine, _TruthPerStudy(fu.timepoints), job, found


def test_a_study_is_re_reported_when_its_prior_becomes_available(followup) -> None:  # noqa: ANN001
    settings, engine, detector, job, found = followup
    spool = settings.storage.spool_dir
    first = WithPriors(Analysis(settings, detector), settings, finder=_Finder(DOWN))(engine, job)
    _finish(engine, job, first)
    first_sr = pydicom.dcmread(spool / first.objects[0][3])
    assert read_study_summary(first_sr)["comments"][0].startswith("Prior CT could not be retrieved (pacs: no assoc")
    assert first.result["prior"]["recheck_at"] is not None
    [row] = _lookups(engine)
    assert row.recheck_at is not None and row.recheck_until is not None

    assert _due(engine, minutes=0.5) == [], "not due before recheck_minutes"
    assert _due(engine) == [job.study_pk]
    assert _due(engine) == [], "queued once"
    recheck = queue.claim_job(engine, "t", 600, 3)
    assert recheck.kind is JobKind.REREPORT and recheck.study_pk == job.study_pk
    still_down = WithPriors(Analysis(settings, detector), settings, finder=_Finder(DOWN))(engine, recheck)
    assert not still_down.objects, "nothing new while the prior is unavailable"
    assert still_down.result["step"] == "prior-recheck" and still_down.result["prior"]["status"] == "unavailable"
    _finish(engine, recheck, still_down)
    older, newer = _lookups(engine)
    assert older.recheck_at is None and newer.recheck_at is not None, "the next recheck is planned"
    assert newer.recheck_until == older.recheck_until, "within the same window"

    assert _due(engine) == [job.study_pk]
    rereport = queue.claim_job(engine, "t", 600, 3)
    second = WithPriors(Analysis(settings, detector), settings, finder=_Finder(found))(engine, rereport)
    _finish(engine, rereport, second)
    sr = pydicom.dcmread(spool / second.objects[0][3])
    summary = read_study_summary(sr)
    assert summary["compared_with_prior"] is True and summary["prior_study_uid"] == found.study_uid
    assert summary["comments"][:2] == [REVISED_REPORT, "Compared with the prior CT of 2026-01-01: Lung-RADS "
                                       "categories use the follow-up rules."]
    assert str(sr.SOPInstanceUID) != str(first_sr.SOPInstanceUID)
    assert _predecessors(sr) == [str(first_sr.SOPInstanceUID)], "the first SR is its predecessor"
    now, before = read_findings(sr), read_findings(first_sr)
    assert len(now) == len(before) == 3
    assert {n["tracking_uid"] for n in now} == {n["tracking_uid"] for n in before}, "the same Tracking UIDs"
    assert all(n["change"] is not None for n in now), "each nodule compared with the prior"
    images = lambda outcome: {uid for kind, _, uid, _ in outcome.objects if kind is ObjectKind.KEY_IMAGE}  # noqa: E731
    assert images(second) and not images(second) & images(first), "new key images"
    assert second.result["rereport"] == {"revises_job": job.id, "predecessor_sr_uids": [str(first_sr.SOPInstanceUID)]}
    assert second.result["series"][0]["revises"]["tracking_uids_kept"] == 3
    assert second.result["prior"] == {**second.result["prior"], "status": "found", "recheck_at": None}
    assert _due(engine, minutes=200) == [], "no recheck once re-reported"


def test_a_recheck_that_finds_no_prior_stops_without_a_report(followup) -> None:  # noqa: ANN001
    settings, engine, detector, job, _ = followup
    _finish(engine, job, WithPriors(Analysis(settings, detector), settings, finder=_Finder(DOWN))(engine, job))
    assert _due(engine) == [job.study_pk]
    recheck = queue.claim_job(engine, "t", 600, 3)
    none = LookupRow(PriorStatus.NONE, source="pacs", reason="no earlier CT study within 1826 days")
    outcome = WithPriors(Analysis(settings, detector), settings, finder=_Finder(none))(engine, recheck)
    assert not outcome.objects and outcome.result["rereported"] is False
    _finish(engine, recheck, outcome)
    assert [row.recheck_at for row in _lookups(engine)] == [None, None]
    assert _due(engine, minutes=200) == []


def test_no_recheck_past_recheck_hours(followup) -> None:  # noqa: ANN001
    settings, engine, detector, job, _ = followup
    with engine.begin() as connection:  # the study completed 3 h ago (recheck_hours = 2)
        connection.execute(update(Study).where(Study.id == job.study_pk)
                           .values(completed_at=utcnow() - dt.timedelta(hours=3)))
    outcome = WithPriors(Analysis(settings, detector), settings, finder=_Finder(DOWN))(engine, job)
    assert outcome.result["prior"]["recheck_at"] is None
    [row] = _lookups(engine)
    assert row.recheck_at is None and row.recheck_until is not None


def test_without_recheck_minutes_nothing_is_planned(followup) -> None:  # noqa: ANN001
    settings, engine, detector, job, _ = followup
    settings = _settings(settings, 30, recheck_minutes=0)
    outcome = WithPriors(Analysis(settings, detector), settings, finder=_Finder(DOWN))(engine, job)
    assert outcome.result["prior"]["status"] == "unavailable" and outcome.result["prior"]["recheck_at"] is None
    assert [row.recheck_at for row in _lookups(engine)] == [None]
