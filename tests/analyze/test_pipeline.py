"""The analysis job end to end on the database and spool, with a detector that reports
the phantom's truth (the real detector is tested in tests/ml)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pydicom
import pytest

from pacs_node.analyze.pipeline import Analysis
from pacs_node.config import Settings
from pacs_node.db import queue
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder
from pacs_node.db.models import ObjectKind, utcnow
from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.ml.phantom import generate_phantom, write_dicom_study
from pacs_node.receive.spool import Spool
from pacs_node.receive.store import SpoolingSink
from pacs_node.report.sr import read_findings, read_study_summary


class TruthDetector:
    """Reports each planted nodule exactly (a stand-in with the detector's interface)."""

    name, version, synthetic_data = "truth", "0", True

    def __init__(self, nodules) -> None:  # noqa: ANN001
        self.nodules = nodules

    def detect(self, volume) -> list[Finding]:  # noqa: ANN001
        return [Finding(tuple(n.centre_xyz_mm), n.diameter_mm, n.diameter_mm * 0.9, 0.52 * n.diameter_mm**3,
                        NoduleType(n.type), 0.9) for n in self.nodules]


def _receive(folder: Path, spool_root: Path, engine) -> None:  # noqa: ANN001
    """Store files as the receiver does (spool + rows)."""
    from pacs_node.receive.dimse import Request
    from pacs_node.receive.part10 import file_meta

    spool = Spool(spool_root, node_name="t")
    sink = SpoolingSink(spool, InstanceRecorder(engine))
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        request = Request(1, 1, ds.SOPClassUID, ds.SOPInstanceUID, True)
        partial = sink.begin()
        data = path.read_bytes()
        offset = 132 + 12 + int.from_bytes(data[140:144], "little")
        partial.write(file_meta(request, ds.file_meta.TransferSyntaxUID, "TEST") + data[offset:])
        assert sink.complete(partial, request, ds.file_meta.TransferSyntaxUID, "TEST").status == 0
    sink.close()
    spool.close()


@pytest.fixture
def study(tmp_path: Path):  # noqa: ANN201
    phantom = generate_phantom(3, shape_zyx=(40, 128, 128), spacing_zyx_mm=(2.0, 1.5, 1.5), n_nodules=2)
    written = write_dicom_study(phantom, tmp_path / "study")
    settings = Settings.model_validate({"storage": {"spool_dir": str(tmp_path / "spool"),
                                                    "database_url": f"sqlite:///{tmp_path / 'db'}"}})
    engine = make_engine(settings.storage.database_url)
    upgrade(engine)
    return phantom, Path(written.series_dir), settings, engine


def _job(engine):  # noqa: ANN001, ANN202
    queue.complete_quiet_studies(engine, 1, now=utcnow() + dt.timedelta(seconds=10))
    return queue.claim_job(engine, "t", 600, 3)


def test_analysed_study_gets_report_and_key_images(study) -> None:  # noqa: ANN001
    phantom, series_dir, settings, engine = study
    _receive(series_dir, settings.storage.spool_dir, engine)
    outcome = Analysis(settings, TruthDetector(phantom.nodules))(engine, _job(engine))
    assert outcome.result["analysis_performed"] is True and outcome.result["findings"] == 2
    assert set(outcome.result["timings_s"]) >= {"select_s", "load_s", "detect_s", "report_s"}
    kinds = [kind for kind, *_ in outcome.objects]
    assert kinds == [ObjectKind.SR, ObjectKind.KEY_IMAGE, ObjectKind.KEY_IMAGE, ObjectKind.KEY_IMAGE]
    sr = pydicom.dcmread(settings.storage.spool_dir / outcome.objects[0][3])
    assert sr.StudyInstanceUID == phantom.study_uid
    found = read_findings(sr)
    for nodule, finding in zip(sorted(phantom.nodules, key=lambda n: n.centre_xyz_mm),
                               sorted(found, key=lambda f: f["center_lps_mm"])):
        assert max(abs(a - b) for a, b in zip(nodule.centre_xyz_mm, finding["center_lps_mm"])) < 1.0


def test_study_with_too_few_slices_gets_a_report_that_says_why(study, tmp_path: Path) -> None:  # noqa: ANN001
    phantom, series_dir, settings, engine = study
    short = tmp_path / "short"
    short.mkdir()
    for path in sorted(series_dir.glob("*.dcm"))[:10]:
        shutil.copy(path, short)
    _receive(short, settings.storage.spool_dir, engine)
    outcome = Analysis(settings, TruthDetector(phantom.nodules))(engine, _job(engine))
    assert outcome.result["analysis_performed"] is False
    assert "only 10 slices; at least 30 needed" in outcome.result["reason"]
    sr = pydicom.dcmread(settings.storage.spool_dir / outcome.objects[0][3])
    summary = read_study_summary(sr)
    assert "only 10 slices" in str(summary)


@pytest.mark.parametrize("tool", ["/usr/bin/dcmcjpls", "/usr/bin/dcmcrle", "/usr/bin/dcmcjpeg"])
def test_compressed_series_are_analysed_like_uncompressed(study, tmp_path: Path, tool: str) -> None:  # noqa: ANN001
    import subprocess

    from pacs_node.imaging.volume import read_dicom_volume

    phantom, series_dir, settings, engine = study
    compressed = tmp_path / "compressed"
    compressed.mkdir()
    for path in sorted(series_dir.glob("*.dcm")):
        subprocess.run([tool, str(path), str(compressed / path.name)], check=True, timeout=60)
    assert pydicom.dcmread(next(compressed.glob("*.dcm"))).file_meta.TransferSyntaxUID.is_compressed
    lossless = read_dicom_volume(sorted(compressed.glob("*.dcm")))
    original = read_dicom_volume(sorted(series_dir.glob("*.dcm")))
    assert (lossless.array == original.array).all()
    _receive(compressed, settings.storage.spool_dir, engine)
    outcome = Analysis(settings, TruthDetector(phantom.nodules))(engine, _job(engine))
    assert outcome.result["analysis_performed"] is True and outcome.result["findings"] == 2


EVERY_OBJECT = {"name": "viewer", "ae_title": "VIEW", "host": "127.0.0.1", "port": 104,
                "objects": ["sr", "key_image", "kos", "gsps", "seg"]}


def _wanting_every_object(settings: Settings) -> Settings:
    return Settings.model_validate({"storage": {"spool_dir": str(settings.storage.spool_dir),
                                                "database_url": settings.storage.database_url},
                                    "destinations": [EVERY_OBJECT]})


def test_destinations_that_want_them_get_kos_gsps_and_seg(study) -> None:  # noqa: ANN001
    phantom, series_dir, settings, engine = study
    settings = _wanting_every_object(settings)
    _receive(series_dir, settings.storage.spool_dir, engine)
    outcome = Analysis(settings, TruthDetector(phantom.nodules))(engine, _job(engine))
    kinds = [kind for kind, *_ in outcome.objects]
    assert kinds == [ObjectKind.SR, *[ObjectKind.KEY_IMAGE] * 3, ObjectKind.KOS, ObjectKind.GSPS, ObjectKind.SEG]
    read = {kind: pydicom.dcmread(settings.storage.spool_dir / path) for kind, _, _, path in outcome.objects}
    assert {ds.Modality for ds in read.values()} == {"SR", "OT", "KO", "PR", "SEG"}
    assert {ds.StudyInstanceUID for ds in read.values()} == {phantom.study_uid}
    assert len({ds.SeriesInstanceUID for ds in read.values()}) == 5, "each kind in its own series"
    assert [int(read[k].SeriesNumber) for k in (ObjectKind.KOS, ObjectKind.GSPS, ObjectKind.SEG)] == [9903, 9904, 9905]
    key_images = {uid for kind, _, uid, _ in outcome.objects if kind == ObjectKind.KEY_IMAGE}
    flagged = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
               for i in read[ObjectKind.KOS].ContentSequence if i.ValueType == "IMAGE"}
    assert key_images < flagged
    tracking = sorted(f["tracking_uid"] for f in read_findings(read[ObjectKind.SR]))
    assert sorted(s.TrackingUID for s in read[ObjectKind.SEG].SegmentSequence) == tracking
    assert sorted(g.GraphicObjectSequence[0].TrackingUID
                  for g in read[ObjectKind.GSPS].GraphicAnnotationSequence) == tracking


def test_a_study_without_findings_gets_no_kos_gsps_or_seg(study) -> None:  # noqa: ANN001
    _, series_dir, settings, engine = study
    settings = _wanting_every_object(settings)
    _receive(series_dir, settings.storage.spool_dir, engine)
    outcome = Analysis(settings, TruthDetector([]))(engine, _job(engine))
    assert outcome.result["analysis_performed"] is True and outcome.result["findings"] == 0
    assert [kind for kind, *_ in outcome.objects] == [ObjectKind.SR, ObjectKind.KEY_IMAGE]


def test_an_extra_object_that_fails_is_left_out_with_a_warning(  # noqa: ANN001
    study, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from pacs_node.analyze import pipeline

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise ValueError("odd geometry")

    monkeypatch.setattr(pipeline, "build_seg", broken)
    phantom, series_dir, settings, engine = study
    settings = _wanting_every_object(settings)
    _receive(series_dir, settings.storage.spool_dir, engine)
    outcome = Analysis(settings, TruthDetector(phantom.nodules))(engine, _job(engine))
    assert ObjectKind.SEG not in [kind for kind, *_ in outcome.objects]
    assert [kind for kind, *_ in outcome.objects][-2:] == [ObjectKind.KOS, ObjectKind.GSPS]
    assert "event=object_skipped kind=seg error=ValueError" in caplog.text
