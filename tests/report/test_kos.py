"""Key Object Selection: valid DICOM, "Of Interest", references the key images and the CT slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import KeyObjectSelectionDocumentStorage, generate_uid

from pacs_node.imaging.findings import Finding
from pacs_node.report.context import NOT_FOR_DIAGNOSTIC_USE, AlgorithmInfo, DeviceInfo, ReportOutcome
from pacs_node.report.identity import ObjectIdentity, SeriesIdentity
from pacs_node.report.keyimages import build_key_images
from pacs_node.report.kos import build_kos
from tests.report import BLOBS, dciodvfy, findings, write_series

ALGORITHM = AlgorithmInfo(name="pacs-node-detector", version="0.1.0", synthetic_data=True)
DEVICE = DeviceInfo(
    manufacturer="pacs-node project", model_name="pacs-node", software_version="0.1.0", device_serial="node-01"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in reversed(write_series(tmp_path_factory.mktemp("ct")))]


def _key_images(source: Sequence[Dataset], nodules: Sequence[Finding]) -> list[Dataset]:
    return build_key_images(source, nodules, outcome=ReportOutcome.analysed(), algorithm=ALGORITHM, device=DEVICE,
                            series=SeriesIdentity.fresh(9902),
                            sop_instance_uids=[generate_uid() for _ in range(1 + len(nodules))])


def _saved(source: Sequence[Dataset], nodules: Sequence[Finding], key_images: Sequence[Dataset],
           tmp_path: Path) -> tuple[Path, Dataset]:
    kos = build_kos(source, nodules, key_images, algorithm=ALGORITHM, device=DEVICE,
                    identity=ObjectIdentity.fresh(9903))
    path = tmp_path / "kos.dcm"
    kos.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def _nearest_slice(source: Sequence[Dataset], z_mm: float) -> Dataset:
    return min(source, key=lambda ds: abs(float(ds.ImagePositionPatient[2]) - z_mm))


def test_kos_passes_dciodvfy_without_errors_or_warnings(source: list[Dataset], tmp_path: Path) -> None:
    nodules = findings()
    path, _ = _saved(source, nodules, _key_images(source, nodules), tmp_path)
    assert dciodvfy(path) == ([], [])


def test_kos_is_of_interest_and_references_key_images_then_ct_slices(source: list[Dataset], tmp_path: Path) -> None:
    nodules = findings()
    key_images = _key_images(source, nodules)
    path, ds = _saved(source, nodules, key_images, tmp_path)
    assert ds.SOPClassUID == KeyObjectSelectionDocumentStorage and ds.Modality == "KO"
    assert ds.StudyInstanceUID == source[0].StudyInstanceUID and ds.PatientID == source[0].PatientID
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113000", "DCM", "Of Interest")
    slices = [_nearest_slice(source, blob.center_lps_mm[2]) for blob in BLOBS]
    expected = [*(ki.SOPInstanceUID for ki in key_images), *(s.SOPInstanceUID for s in slices)]
    items = [i for i in ds.ContentSequence if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items] == expected
    evidence = {
        (series.SeriesInstanceUID, sop.ReferencedSOPInstanceUID)
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {(ki.SeriesInstanceUID, ki.SOPInstanceUID) for ki in key_images} | {
        (s.SeriesInstanceUID, s.SOPInstanceUID) for s in slices}
    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(path))
    assert kos.resolve_reference(slices[0].SOPInstanceUID)[1] == source[0].SeriesInstanceUID


def test_description_lists_the_nodules_and_the_statements(source: list[Dataset], tmp_path: Path) -> None:
    nodules = findings()
    _, ds = _saved(source, nodules, _key_images(source, nodules), tmp_path)
    [description] = [i.TextValue for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "113012"]
    assert "2 nodule(s); Lung-RADS (AI, baseline table) 4X" in description
    assert f"Nodule 1: {nodules[0].diameter_mm:.1f} mm solid, Lung-RADS 2" in description
    assert "AI-generated result" in description and NOT_FOR_DIAGNOSTIC_USE in description
    observer = [i for i in ds.ContentSequence if i.RelationshipType == "HAS OBS CONTEXT"]
    assert any(i.ValueType == "UIDREF" and i.UID == DEVICE.uid for i in observer)


def test_nodules_on_one_slice_reference_it_once(source: list[Dataset], tmp_path: Path) -> None:
    nodules = [findings()[0], findings()[0]]
    _, ds = _saved(source, nodules, _key_images(source, nodules), tmp_path)
    uids = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in ds.ContentSequence if i.ValueType == "IMAGE"]
    assert len(uids) == len(set(uids)) == 3 + 1


def test_without_findings_there_is_no_key_object_selection(source: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="at least one finding"):
        build_kos(source, [], _key_images(source, []), algorithm=ALGORITHM, device=DEVICE,
                  identity=ObjectIdentity.fresh(9903))


def test_key_images_of_another_study_are_rejected(source: list[Dataset]) -> None:
    nodules = findings()
    key_images = _key_images(source, nodules)
    key_images[0].StudyInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="one study"):
        build_kos(source, nodules, key_images, algorithm=ALGORITHM, device=DEVICE,
                  identity=ObjectIdentity.fresh(9903))
