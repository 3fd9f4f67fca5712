"""KOS, presentation state and segmentation in a real PACS (Orthanc): stored, read back, references
resolve in the study; and a node whose destination takes all five objects delivers all five."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from pacs_node.analyze.pipeline import Analysis
from pacs_node.config import Destination, load_settings
from pacs_node.imaging.findings import Finding
from pacs_node.report.context import AlgorithmInfo, DeviceInfo, ReportOutcome
from pacs_node.report.gsps import build_gsps
from pacs_node.report.identity import ObjectIdentity, SeriesIdentity
from pacs_node.report.keyimages import build_key_images
from pacs_node.report.kos import build_kos
from pacs_node.report.seg import build_seg
from pacs_node.report.sr import build_report
from pacs_node.send.scu import send_files
from tests.conftest import free_port, storescu, wait_until, write_config
from tests.orthanc import Orthanc
from tests.report import findings, write_series

pytestmark = pytest.mark.integration

ALGORITHM = AlgorithmInfo("pacs-node-test-detector", "0.0.1", synthetic_data=True)
DEVICE = DeviceInfo("pacs-node project", "pacs-node", "0.1.0", "test-node")
EVERY_OBJECT = ["sr", "key_image", "kos", "gsps", "seg"]
KINDS = {"1.2.840.10008.5.1.4.1.1.88.34": "sr", "1.2.840.10008.5.1.4.1.1.7": "key_image",
         "1.2.840.10008.5.1.4.1.1.88.59": "kos", "1.2.840.10008.5.1.4.1.1.11.1": "gsps",
         "1.2.840.10008.5.1.4.1.1.66.4": "seg"}


def _stored(orthanc: Orthanc) -> dict[str, dict]:
    """SOP Instance UID -> tags (with Orthanc's id) of everything Orthanc holds."""
    stored = {}
    for orthanc_id in orthanc.get("/instances"):
        tags = orthanc.get(f"/instances/{orthanc_id}/simplified-tags")
        stored[tags["SOPInstanceUID"]] = tags | {"orthanc_id": orthanc_id}
    return stored


def _read_back(orthanc: Orthanc, orthanc_id: str, folder: Path) -> Dataset:
    path = folder / f"{orthanc_id}.dcm"
    path.write_bytes(orthanc.get_bytes(f"/instances/{orthanc_id}/file"))
    return pydicom.dcmread(path)


def _references(kind: str, ds: Dataset) -> set[str]:
    """The instances an object refers to (what must exist in the study for it to work)."""
    if kind == "kos":
        images = [i for i in ds.ContentSequence if i.ValueType == "IMAGE"]
        return {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images}
    if kind == "gsps":
        return {i.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for i in s.ReferencedImageSequence}
    if kind == "seg":
        return {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                for f in ds.PerFrameFunctionalGroupsSequence}
    return set()


def test_kos_gsps_and_seg_are_stored_by_orthanc_and_read_back_unchanged(orthanc: Orthanc, tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct")
    assert storescu(orthanc.dicom_port, series[0].parent, called_ae=orthanc.ae_title).returncode == 0
    source = [pydicom.dcmread(path) for path in series]
    nodules = findings()
    common = {"algorithm": ALGORITHM, "device": DEVICE}
    key_images = build_key_images(source, nodules, outcome=ReportOutcome.analysed(), **common,
                                  series=SeriesIdentity.fresh(9902),
                                  sop_instance_uids=[generate_uid() for _ in range(3)])
    made = {
        "sr": build_report(source, nodules, outcome=ReportOutcome.analysed(), **common,
                           identity=ObjectIdentity.fresh(9901)),
        "kos": build_kos(source, nodules, key_images, **common, identity=ObjectIdentity.fresh(9903)),
        "gsps": build_gsps(source, nodules, **common, identity=ObjectIdentity.fresh(9904)),
        "seg": build_seg(source, nodules, **common, identity=ObjectIdentity.fresh(9905)),
    }
    paths = []
    for number, ds in enumerate([*made.values(), *key_images]):
        paths.append(tmp_path / f"object-{number}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    destination = Destination(name="orthanc", ae_title=orthanc.ae_title, host="127.0.0.1", port=orthanc.dicom_port)
    outcome = send_files(destination, paths, "PACS_NODE", timeout_s=30)
    assert (outcome.failure, outcome.sent) == (None, len(paths)), outcome.reason
    stored = _stored(orthanc)
    study = source[0].StudyInstanceUID
    for kind in ("kos", "gsps", "seg"):
        original = pydicom.dcmread(paths[list(made).index(kind)])
        tags = stored[original.SOPInstanceUID]
        assert (tags["StudyInstanceUID"], tags["SOPClassUID"], tags["Modality"]) == (
            study, original.SOPClassUID, original.Modality)
        back = _read_back(orthanc, tags["orthanc_id"], tmp_path)
        assert back == original, f"{kind} comes back from Orthanc element for element"
        references = _references(kind, back)
        assert references and references <= set(stored), f"every instance the {kind} refers to is in Orthanc"
        assert {stored[uid]["StudyInstanceUID"] for uid in references} == {study}


class TruthDetector:
    """Reports the test series' two nodules exactly (the real detector is tested in tests/ml)."""

    name, version, synthetic_data = "truth", "0", True

    def detect(self, volume) -> list[Finding]:  # noqa: ANN001
        return findings()


def test_destination_with_every_object_receives_all_five(orthanc: Orthanc, tmp_path: Path) -> None:
    """Scanner (storescu) -> node (in this process, the truth detector) -> two PACS: one takes all
    five objects, the other the default profile."""
    from pacs_node.node import Node

    port = free_port()
    (tmp_path / "node").mkdir()
    plain = Orthanc(tmp_path / "plain", dicom_port=free_port(), http_port=free_port(), ae_title="PLAIN")
    config = write_config(
        tmp_path / "node", port, f"sqlite:///{tmp_path / 'node.db'}",
        destinations=[
            {"name": "full", "ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port,
             "objects": EVERY_OBJECT},
            {"name": "plain", "ae_title": plain.ae_title, "host": "127.0.0.1", "port": plain.dicom_port},
        ],
        sending={"poll_interval_s": 0.3, "first_retry_s": 1},
    )
    settings = load_settings(config)
    node = Node(settings, runner=Analysis(settings, TruthDetector()))

    def kinds(pacs: Orthanc) -> Counter:
        return Counter(KINDS.get(tags["SOPClassUID"], "ct") for tags in _stored(pacs).values())

    plain.start()
    try:
        node.start()
        try:
            series = write_series(tmp_path / "ct")
            assert storescu(port, series[0].parent).returncode == 0
            expected = Counter({"sr": 1, "key_image": 3, "kos": 1, "gsps": 1, "seg": 1})
            assert wait_until(lambda: kinds(orthanc) == expected, timeout=90, interval=0.5)
            assert wait_until(lambda: kinds(plain) == Counter({"sr": 1, "key_image": 3}), timeout=30, interval=0.5)
        finally:
            node.stop()
    finally:
        plain.stop()
    stored = _stored(orthanc)
    study = pydicom.dcmread(series[0]).StudyInstanceUID
    assert {tags["StudyInstanceUID"] for tags in stored.values()} == {study}
    by_kind = {KINDS[tags["SOPClassUID"]]: tags for tags in stored.values()}  # one of each but key images
    gsps = _read_back(orthanc, by_kind["gsps"]["orthanc_id"], tmp_path)
    source = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(path) for path in series)}
    for finding, annotation in zip(findings(), gsps.GraphicAnnotationSequence, strict=True):
        image = source[annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID]
        assert abs(float(image.ImagePositionPatient[2]) - finding.center_lps_mm[2]) <= 1.25 / 2
    kos = _read_back(orthanc, by_kind["kos"]["orthanc_id"], tmp_path)
    assert _references("kos", kos) - set(source), "the key images are flagged"
