"""Secondary Capture key images: valid DICOM, required attributes, ring on the nodule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from pacs_node.imaging.findings import Finding
from pacs_node.report.context import NOT_FOR_DIAGNOSTIC_USE, AlgorithmInfo, DeviceInfo, ReportOutcome
from pacs_node.report.geometry import locate
from pacs_node.report.identity import SeriesIdentity
from pacs_node.report.keyimages import RING, WARNING, build_key_images, lung_window
from tests.report import BLOBS, SPACING_ZYX_MM, dciodvfy, findings, write_series

ALGORITHM = AlgorithmInfo(name="pacs-node-detector", version="0.1.0", synthetic_data=True)
DEVICE = DeviceInfo(
    manufacturer="pacs-node project", model_name="pacs-node", software_version="0.1.0", device_serial="node-01"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in reversed(write_series(tmp_path_factory.mktemp("ct")))]


def _build(
    source: Sequence[Dataset],
    nodules: Sequence[Finding],
    outcome: ReportOutcome | None = None,
    algorithm: AlgorithmInfo = ALGORITHM,
) -> tuple[list[hd.sc.SCImage], str, list[str]]:
    series_uid = generate_uid()
    uids = [generate_uid() for _ in range(len(nodules) + 1)]
    images = build_key_images(
        source,
        nodules,
        outcome=outcome or ReportOutcome.analysed(),
        algorithm=algorithm,
        device=DEVICE,
        series=SeriesIdentity(series_uid, 902),
        sop_instance_uids=uids,
    )
    return images, series_uid, uids


@pytest.mark.parametrize("case", ["nodules", "no_nodules", "not_analysable"])
def test_key_images_pass_dciodvfy_without_errors_or_warnings(case: str, source: list[Dataset], tmp_path: Path) -> None:
    nodules = findings() if case == "nodules" else []
    outcome = ReportOutcome.not_analysable("no lungs found") if case == "not_analysable" else None
    images, _, _ = _build(source, nodules, outcome)
    assert len(images) == len(nodules) + 1
    for number, image in enumerate(images):
        path = tmp_path / f"{case}_{number}.dcm"
        image.save_as(path, enforce_file_format=True)
        assert dciodvfy(path) == ([], [])


def test_key_images_carry_the_required_attributes(source: list[Dataset], tmp_path: Path) -> None:
    nodules = findings()
    images, series_uid, uids = _build(source, nodules)
    saved = []
    for number, image in enumerate(images):
        image.save_as(tmp_path / f"{number}.dcm", enforce_file_format=True)
        saved.append(pydicom.dcmread(tmp_path / f"{number}.dcm"))
    assert [ds.SOPInstanceUID for ds in saved] == uids
    assert [ds.file_meta.MediaStorageSOPInstanceUID for ds in saved] == uids
    assert [int(ds.InstanceNumber) for ds in saved] == [1, 2, 3]
    for ds in saved:
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert ds.StudyInstanceUID == source[0].StudyInstanceUID
        assert ds.SeriesInstanceUID == series_uid != source[0].SeriesInstanceUID
        assert ds.SeriesNumber == 902
        assert ds.SeriesDescription == "AI nodule key images (not for diagnostic use)"
        assert ds.BurnedInAnnotation == "YES"
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == ("RGB", 3, 8)
        assert "AI algorithm pacs-node-detector 0.1.0" in ds.DerivationDescription
        assert NOT_FOR_DIAGNOSTIC_USE in ds.DerivationDescription
        assert NOT_FOR_DIAGNOSTIC_USE in ds.ImageComments
        assert ds.PatientID == source[0].PatientID
    for ds, finding in zip(saved[1:], nodules, strict=True):
        ct = locate(source, finding.center_lps_mm).image
        (reference,) = ds.SourceImageSequence
        assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
            ct.SOPClassUID,
            ct.SOPInstanceUID,
        )
        (purpose,) = reference.PurposeOfReferenceCodeSequence
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
            "121322",
            "DCM",
            "Source image for image processing operation",
        )
        assert [float(v) for v in ds.PixelSpacing] == [float(v) for v in ct.PixelSpacing]
        assert (ds.Rows, ds.Columns) == (ct.Rows, ct.Columns)
        assert list(ds.PatientOrientation) == ["L", "P"]
    overview = saved[0]
    assert {r.ReferencedSOPInstanceUID for r in overview.SourceImageSequence} == {
        locate(source, f.center_lps_mm).image.SOPInstanceUID for f in nodules
    }
    assert "PixelSpacing" not in overview  # a text page has no physical size
    assert overview.PatientOrientation in (None, "", [])


def test_ring_encloses_the_nodule_on_the_lung_window_slice(source: list[Dataset]) -> None:
    nodules = findings()
    images, _, _ = _build(source, nodules)
    for image, finding, blob in zip(images[1:], nodules, BLOBS, strict=True):
        pixels = image.pixel_array
        ring = np.all(pixels == RING, axis=-1)
        rows, columns = np.nonzero(ring)
        # Ring pixels around the nodule centre (labels in the text band are ring-coloured too).
        _, r0, c0 = blob.index_zyx
        near = np.hypot(rows - r0, columns - c0) < 12
        assert near.sum() > 20
        distances = np.hypot(rows[near] - r0, columns[near] - c0)
        radius_px = finding.long_axis_mm / 2 / SPACING_ZYX_MM[2]
        assert radius_px < np.median(distances) < radius_px + 6
        # Inside the ring: the CT in the lung window, untouched and grey.
        ct = locate(source, finding.center_lps_mm).image
        centre = pixels[int(r0), int(c0)]
        assert centre[0] == centre[1] == centre[2] == lung_window(ct)[int(r0), int(c0)]


def test_lung_window_maps_hu_to_grey_levels(source: list[Dataset]) -> None:
    ct = source[0].copy()
    hu = np.array([[-1400, -1350, -600, 150, 400]])
    ct.Rows, ct.Columns = hu.shape
    ct.RescaleIntercept = -2048
    ct.PixelData = (hu + 2048).astype("<u2").tobytes()
    assert lung_window(ct).tolist() == [[0, 0, 128, 255, 255]]


def test_overview_states_no_nodules_and_the_warning_in_its_pixels(source: list[Dataset]) -> None:
    images, _, _ = _build(source, [])
    (overview,) = images
    assert "SourceImageSequence" not in overview
    assert np.any(np.all(overview.pixel_array == WARNING, axis=-1))
    real, _, _ = _build(source, [], algorithm=AlgorithmInfo("pacs-node-detector", "1.0.0", synthetic_data=False))
    assert not np.any(np.all(real[0].pixel_array == WARNING, axis=-1))
    assert NOT_FOR_DIAGNOSTIC_USE not in real[0].ImageComments
    assert real[0].SeriesDescription == "AI nodule key images (unverified)"


def test_not_analysable_gives_one_overview_with_the_reason(source: list[Dataset]) -> None:
    images, _, _ = _build(source, [], ReportOutcome.not_analysable("no lungs found"))
    assert len(images) == 1
    assert np.any(np.all(images[0].pixel_array == WARNING, axis=-1))
    with pytest.raises(ValueError, match="not analysed cannot have findings"):
        _build(source, findings(), ReportOutcome.not_analysable("no lungs found"))


def test_uid_count_must_match_the_images(source: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="needs 3 UIDs"):
        build_key_images(
            source,
            findings(),
            outcome=ReportOutcome.analysed(),
            algorithm=ALGORITHM,
            device=DEVICE,
            series=SeriesIdentity.fresh(902),
            sop_instance_uids=[generate_uid(), generate_uid()],
        )


def test_series_without_geometry_still_gets_a_valid_overview(source: list[Dataset], tmp_path: Path) -> None:
    broken = [ds.copy() for ds in source]
    for ds in broken:
        del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.BodyPartExamined
    images, _, _ = _build(broken, [], ReportOutcome.not_analysable("no Image Position (Patient)"))
    path = tmp_path / "overview.dcm"
    images[0].save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == []
    # Without Body Part Examined, Laterality is present and empty (unknown), which dciodvfy notes.
    assert all("Laterality" in warning for warning in warnings), warnings
