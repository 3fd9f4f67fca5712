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
