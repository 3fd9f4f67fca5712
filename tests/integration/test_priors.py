"""Finding and fetching the prior (issue 12): Orthanc as the query/retrieve source.

The node runs with analysis off (pass-through): the prior is looked up by the job either way;
the re-report test runs the bundled model, with a second Orthanc as the PACS the reports go to.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, func, select

from pacs_node.analyze.pipeline import SR_SERIES_NUMBER
from pacs_node.config import Destination
from pacs_node.db.models import (
    Instance, Job, JobKind, JobState, PriorLookup, PriorRetrieval, RetrievalState, Series, Study,
)
from pacs_node.ml.phantom import FollowUp, generate_followup, write_followup
from pacs_node.report.read import read_findings, read_study_summary
from pacs_node.report.identity import ObjectIdentity
from pacs_node.report.sr import AlgorithmInfo, DeviceInfo, ReportOutcome, build_report
from pacs_node.send.scu import send_files
from pacs_node.status import render_status
from tests.conftest import REPO, RunningNode, free_port, make_series, storescu, wait_until
from tests.integration.test_end_to_end import _reports
from tests.orthanc import Orthanc

pytestmark = pytest.mark.integration

PATIENT = "PRIOR-PAT-0042"
NODE_AE = "PACS_NODE"


def _orthanc(tmp_path: Path, node_port: int) -> Orthanc:
    node = {"AET": NODE_AE, "Host": "127.0.0.1", "Port": node_port, "AllowEcho": True, "AllowFind": True,
            "AllowGet": True, "AllowMove": True, "AllowStore": True}
    server = Orthanc(tmp_path / "orthanc", dicom_port=free_port(), http_port=free_port(), modalities={"node": node})
    server.start()
    return server


@pytest.fixture
def pacs(tmp_path: Path):  # noqa: ANN201
    """Orthanc that knows the node (AE title and the port it will listen on) for find, get and move."""
    port = free_port()
    server = _orthanc(tmp_path, port)
    yield server, port
    server.stop()


def _priors(source: dict, **extra: object) -> dict:
    return {"priors": {"enabled": True, "query_timeout_s": 5, "retrieve_timeout_s": 10, "max_wait_s": 20, **extra,
                       "sources": [source]}}


def _source(server: Orthanc, **extra: object) -> dict:
    return {"name": "orthanc", "ae_title": server.ae_title, "host": "127.0.0.1", "port": server.dicom_port, **extra}


def _push_to_pacs(server: Orthanc, files: list[Path]) -> None:
    assert storescu(server.dicom_port, files, called_ae=server.ae_title).returncode == 0


def _our_sr(series: list[Path], out: Path) -> Path:
    """An SR of ours in the prior study, as an earlier analysis would have sent it."""
    source = [pydicom.dcmread(path) for path in series]
    sr = build_report(source, [], outcome=ReportOutcome.analysed(),
                      algorithm=AlgorithmInfo("pacs-node-test-detector", "0.0.1", synthetic_data=True),
                      device=DeviceInfo("pacs-node project", "pacs-node", "0.1.0", "test-node"),
                      identity=ObjectIdentity.fresh(SR_SERIES_NUMBER))
    sr.save_as(out, enforce_file_format=True)
    return out


def _job_result(node: RunningNode, study_uid: str, timeout: float = 40) -> dict:
    engine = create_engine(node.database_url)

    def done() -> str | None:
        with engine.connect() as connection:
            return connection.scalar(
                select(Job.result).join(Study, Study.id == Job.study_pk)
                .where(Study.study_uid == study_uid, Job.state == JobState.DONE))

    try:
        return json.loads(wait_until(done, timeout=timeout, interval=0.2))
    finally:
        engine.dispose()


def test_prior_is_found_fetched_kept_apart_and_not_analysed(pacs, node_factory, tmp_path: Path) -> None:
    server, port = pacs
    prior = make_series(tmp_path / "prior", slices=12, patient_id=PATIENT, study_date="20250102")
    older = make_series(tmp_path / "older", slices=6, seed=1, patient_id=PATIENT, study_date="20240105")
    stranger = make_series(tmp_path / "stranger", slices=4, seed=2, patient_id="SOMEONE-ELSE", study_date="20251201")
    sr_path = _our_sr(prior, tmp_path / "our-sr.dcm")
    for files in (prior, older, stranger):
        _push_to_pacs(server, files)
    destination = Destination(name="orthanc", ae_title=server.ae_title, host="127.0.0.1", port=server.dicom_port)
    assert send_files(destination, [sr_path], "STORESCU", 10).failure is None  # storescu has no 3D SR context
    prior_uid = str(pydicom.dcmread(prior[0]).StudyInstanceUID)
    sr = pydicom.dcmread(sr_path)

    # the prior's series passes the analysis's series gate (the 6-slice older one would not)
    node = node_factory(node={"port": port}, analysis={"min_slices": 8}, **_priors(_source(server)))
    current = make_series(tmp_path / "current", slices=12, seed=3, patient_id=PATIENT, study_date="20260105")
    assert storescu(node.port, current).returncode == 0
    result = _job_result(node, str(pydicom.dcmread(current[0]).StudyInstanceUID))

    found = result["prior"]
    assert found["status"] == "found", found
    assert found["study_uid"] == prior_uid, "the most recent earlier CT study of the same patient"
    assert found["study_date"] == "20250102"
    assert found["series_uid"] == str(pydicom.dcmread(prior[0]).SeriesInstanceUID)
    assert found["instances"] == 12
    assert found["our_sr_uid"] == str(sr.SOPInstanceUID)
    assert result["step"] == "pass-through", "the current study itself is analysed as before"

    engine = create_engine(node.database_url)
    time.sleep(3)  # several quiet periods and sweeps: the prior study is complete by now
    with engine.connect() as connection:
        study = connection.execute(select(Study.id, Study.state).where(Study.study_uid == prior_uid)).one()
        assert study.state.value == "complete"
        assert connection.scalar(select(func.count()).select_from(Job).where(Job.study_pk == study.id)) == 0, \
            "a fetched prior is never queued for analysis"
        paths = connection.scalars(select(Instance.path).join(Series).where(Series.study_pk == study.id)).all()
        assert len(paths) == 13, "the CT series and our SR"
        retrieval = connection.execute(
            select(PriorRetrieval.study_uid, PriorRetrieval.state, PriorRetrieval.method)).one()
        assert tuple(retrieval) == (prior_uid, RetrievalState.DONE, "get")
        link = connection.execute(select(PriorLookup.prior_study_uid, PriorLookup.our_sr_series_uid)).one()
        assert tuple(link) == (prior_uid, str(sr.SeriesInstanceUID))
    assert all((node.spool / path).is_file() for path in paths)
    assert "priors: 1 studies had a prior" in render_status(engine)
    assert "prior (fetched; not analysed)" in render_status(engine)
    engine.dispose()
    log = node.output()
    assert "event=prior_lookup" in log and "status=found" in log
    for secret in (PATIENT, prior_uid, str(sr.SOPInstanceUID)):
        assert secret not in log, "no patient data or UIDs in the log at INFO"

    # The prior is in the database now: a second follow-up does not fetch it again.
    again = make_series(tmp_path / "again", slices=12, seed=4, patient_id=PATIENT, study_date="20260105")
    assert storescu(node.port, again).returncode == 0
    second = _job_result(node, str(pydicom.dcmread(again[0]).StudyInstanceUID))["prior"]
    assert (second["status"], second["study_uid"], second["instances"]) == ("found", prior_uid, 12)
    assert "not fetched again" in second["reason"]


def test_no_prior_in_pacs(pacs, node_factory, tmp_path: Path) -> None:
    server, port = pacs
    _push_to_pacs(server, make_series(tmp_path / "stranger", slices=4, patient_id="SOMEONE-ELSE", study_date="20250101"))
    node = node_factory(node={"port": port}, **_priors(_source(server)))
    current = make_series(tmp_path / "current", slices=8, seed=3, patient_id=PATIENT, study_date="20260105")
    assert storescu(node.port, current).returncode == 0
    found = _job_result(node, str(pydicom.dcmread(current[0]).StudyInstanceUID))["prior"]
    assert found["status"] == "none" and found["study_uid"] is None
    assert "no earlier CT study" in found["reason"]


def test_pacs_down_is_recorded_and_does_not_hold_the_job(pacs, node_factory, tmp_path: Path) -> None:
    server, port = pacs
    server.stop()
    node = node_factory(node={"port": port}, **_priors(_source(server)))
    current = make_series(tmp_path / "current", slices=8, patient_id=PATIENT, study_date="20260105")
    assert storescu(node.port, current).returncode == 0
    result = _job_result(node, str(pydicom.dcmread(current[0]).StudyInstanceUID))
    assert result["prior"]["status"] == "unavailable"
    assert "orthanc: no association: connection refused" in result["prior"]["reason"]
    assert result["seconds"] < 20


def test_a_source_that_never_answers_is_given_up_after_max_wait_s(node_factory, tmp_path: Path) -> None:
    """A PACS that accepts the connection and then says nothing: the job waits max_wait_s, no longer."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        source = {"name": "silent", "ae_title": "SILENT", "host": "127.0.0.1", "port": silent.getsockname()[1]}
        node = node_factory(**{"priors": {"enabled": True, "query_timeout_s": 60, "max_wait_s": 2,
                                          "sources": [source]}})
        current = make_series(tmp_path / "current", slices=8, patient_id=PATIENT, study_date="20260105")
        assert storescu(node.port, current).returncode == 0
        result = _job_result(node, str(pydicom.dcmread(current[0]).StudyInstanceUID))
    assert result["prior"]["status"] == "unavailable"
    assert "max_wait_s (2 s)" in result["prior"]["reason"]
    assert result["seconds"] < 2 + 6


def test_prior_fetched_with_c_move_to_the_listener(pacs, node_factory, tmp_path: Path) -> None:
    server, port = pacs
    prior = make_series(tmp_path / "prior", slices=10, patient_id=PATIENT, study_date="20250102")
    _push_to_pacs(server, prior)
    prior_uid = str(pydicom.dcmread(prior[0]).StudyInstanceUID)
    node = node_factory(node={"port": port}, analysis={"min_slices": 8}, **_priors(_source(server, retrieve="move")))
    current = make_series(tmp_path / "current", slices=8, seed=3, patient_id=PATIENT, study_date="20260105")
    assert storescu(node.port, current).returncode == 0
    found = _job_result(node, str(pydicom.dcmread(current[0]).StudyInstanceUID))["prior"]
    assert (found["status"], found["study_uid"], found["instances"]) == ("found", prior_uid, 10)
    engine = create_engine(node.database_url)
    time.sleep(3)
    with engine.connect() as connection:
        study_pk = connection.scalar(select(Study.id).where(Study.study_uid == prior_uid))
        assert connection.scalar(select(func.count()).select_from(Job).where(Job.study_pk == study_pk)) == 0
        assert connection.scalar(select(PriorRetrieval.method)) == "move"
    engine.dispose()


def growing_and_stable(folder: Path) -> FollowUp:
    """A synthetic patient's two CTs a year apart (written under ``folder``): two solid nodules
    of 12 to 16 mm, one growing (VDT 250 days), one stable."""
    fu = generate_followup(930600, 2, interval_days=365, shape_zyx=(64, 192, 192), spacing_zyx_mm=(2.0, 1.6, 1.6),
                           n_nodules=2, nodule_types=["solid"], diameter_range_mm=(12.0, 16.0),
                           courses=["growing", "stable"], vdt_days=250.0, n_new=0)
    write_followup(fu, folder)
    return fu


def test_a_prior_back_online_gets_the_study_re_reported(node_factory, tmp_path: Path) -> None:
    """The source holding the prior is down when the follow-up arrives: the first SR says the prior
    could not be retrieved; once the source is back, a recheck fetches it and a second SR version
    with the comparison replaces the first (its predecessor), its nodules keeping their Tracking UIDs."""
    port = free_port()
    source = _orthanc(tmp_path / "source", port)  # the archive holding last year's CT
    pacs = Orthanc(tmp_path / "pacs", dicom_port=free_port(), http_port=free_port())  # where reports go
    pacs.start()
    try:
        fu = growing_and_stable(tmp_path / "patient")
        prior, current = (fu.timepoints[i].phantom for i in (0, 1))
        _push_to_pacs(source, sorted((tmp_path / "patient" / "t0" / "series").glob("*.dcm")))
        source.stop()
        node = node_factory(node={"port": port}, analysis={"enabled": True, "models_dir": str(REPO / "models")},
                            **_priors(_source(source), max_wait_s=60, query_timeout_s=2, recheck_minutes=0.05,
                                      recheck_hours=1),
                            destinations=[{"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1",
                                           "port": pacs.dicom_port}], sending={"poll_interval_s": 0.3})
        assert storescu(node.port, tmp_path / "patient" / "t1" / "series").returncode == 0
        [first] = wait_until(lambda: _reports(pacs, current.study_uid, tmp_path)[0], timeout=240, interval=1.0)
        said = read_study_summary(first)
        assert said["compared_with_prior"] is False
        assert any(c.startswith("Prior CT could not be retrieved (orthanc: no association") for c in said["comments"])
        before = read_findings(first)
        assert before, "the model finds the nodules"

        source.start()  # the archive is back: the next recheck (every 3 s) fetches the prior
        srs = wait_until(lambda: (found := _reports(pacs, current.study_uid, tmp_path)[0]) and len(found) == 2
                         and found, timeout=240, interval=1.0)
        [second] = [sr for sr in srs if "PredecessorDocumentsSequence" in sr]
        [predecessor] = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert predecessor.ReferencedSOPInstanceUID == first.SOPInstanceUID, "the new version names the first"
        assert second.SOPInstanceUID != first.SOPInstanceUID
        summary = read_study_summary(second)
        assert summary["compared_with_prior"] is True and summary["prior_study_uid"] == prior.study_uid
        assert summary["comments"][0].startswith("Revised report")
        now = read_findings(second)
        assert {n["tracking_uid"] for n in now} == {n["tracking_uid"] for n in before}, "same Tracking UIDs"
        assert [n for n in now if n["prior_diameter_mm"] is not None], "compared nodule by nodule"

        engine = create_engine(node.database_url)
        with engine.connect() as connection:
            jobs = connection.execute(
                select(Job.kind, Job.result).join(Study, Study.id == Job.study_pk)
                .where(Study.study_uid == current.study_uid, Job.state == JobState.DONE).order_by(Job.id)).all()
        assert jobs[0].kind is JobKind.ANALYSIS and json.loads(jobs[0].result)["prior"]["recheck_at"]
        assert all(kind is JobKind.REREPORT for kind, _ in jobs[1:])
        last = json.loads(jobs[-1].result)
        assert last["rereport"]["predecessor_sr_uids"] == [str(first.SOPInstanceUID)]
        assert last["prior"]["status"] == "found" and last["prior"]["recheck_at"] is None
        status = render_status(engine)
        assert "re-report with the prior" in status and "1 studies had a prior" in status
        engine.dispose()
        log = node.output()
        assert "event=prior_recheck_queued" in log and "event=study_rereported" in log
        for secret in (current.study_uid, prior.study_uid, str(first.SOPInstanceUID)):
            assert secret not in log, "no patient data or UIDs in the log at INFO"
    finally:
        source.stop()
        pacs.stop()
