"""Presentation state: valid DICOM, rings and labels on the right slices and pixels, lung window."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage, generate_uid

from pacs_node.imaging.findings import Finding
from pacs_node.report.context import AlgorithmInfo, DeviceInfo, tracking_identifier
from pacs_node.report.gsps import build_gsps
from pacs_node.report.identity import ObjectIdentity
from tests.report import BLOBS, NODULE_HU, SPACING_ZYX_MM, dciodvfy, findings, write_series

ALGORITHM = AlgorithmInfo(name="pacs-node-detector", version="0.1.0", synthetic_data=True)
DEVICE = DeviceInfo(
    manufacturer="pacs-node project", model_name="pacs-node", software_version="0.1.0", device_serial="node-01"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in reversed(write_series(tmp_path_factory.mktemp("ct")))]


def _saved(source: Sequence[Dataset], nodules: Sequence[Finding], tmp_path: Path,
           algorithm: AlgorithmInfo = ALGORITHM) -> tuple[Path, Dataset]:
    state = build_gsps(source, nodules, algorithm=algorithm, device=DEVICE, identity=ObjectIdentity.fresh(9904))
    path = tmp_path / "gsps.dcm"
    state.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def _nearest_slice(source: Sequence[Dataset], z_mm: float) -> Dataset:
    return min(source, key=lambda ds: abs(float(ds.ImagePositionPatient[2]) - z_mm))


def test_gsps_passes_dciodvfy_without_errors_or_warnings(source: list[Dataset], tmp_path: Path) -> None:
    path, _ = _saved(source, findings(), tmp_path)
    assert dciodvfy(path) == ([], [])


def test_gsps_round_trips_with_the_lung_window_on_every_slice(source: list[Dataset], tmp_path: Path) -> None:
    _, ds = _saved(source, findings(), tmp_path)
    assert ds.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage and ds.Modality == "PR"
    assert ds.StudyInstanceUID == source[0].StudyInstanceUID and ds.PatientID == source[0].PatientID
    assert ds.SeriesDescription == "AI nodule marks (not for diagnostic use)" and ds.ContentLabel == "AI_NODULES"
    [series] = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedImageSequence} == {s.SOPInstanceUID for s in source}
    [window] = ds.SoftcopyVOILUTSequence
    assert (float(window.WindowCenter), float(window.WindowWidth), window.WindowCenterWidthExplanation) == (
        -600.0, 1500.0, "LUNG")
    assert float(ds.RescaleIntercept) == float(source[0].RescaleIntercept) and ds.RescaleType == "HU"
    assert ds.PresentationLUTShape == "IDENTITY"


def test_circles_lie_on_the_nearest_slices_at_the_nodule_centres(source: list[Dataset], tmp_path: Path) -> None:
    nodules = findings()
    _, ds = _saved(source, nodules, tmp_path)
    assert len(ds.GraphicAnnotationSequence) == len(BLOBS)
    for blob, finding, annotation in zip(BLOBS, nodules, ds.GraphicAnnotationSequence, strict=True):
        expected = _nearest_slice(source, blob.center_lps_mm[2])
        [reference] = annotation.ReferencedImageSequence
        assert reference.ReferencedSOPInstanceUID == expected.SOPInstanceUID
        [circle] = annotation.GraphicObjectSequence
        assert circle.GraphicType == "CIRCLE" and circle.GraphicAnnotationUnits == "PIXEL"
        (cx, cy), edge = np.reshape(circle.GraphicData, (2, 2))
        _, row, column = blob.index_zyx
        # Pixel (row, column) has its centre at image coordinates (column + 0.5, row + 0.5).
        assert (cx, cy) == pytest.approx((column + 0.5, row + 0.5), abs=1e-3)
        hu = expected.pixel_array[int(cy), int(cx)] * float(expected.RescaleSlope) + float(expected.RescaleIntercept)
        assert hu == pytest.approx(NODULE_HU, abs=1), "the circle's centre is on the nodule in the CT's pixels"
        radius_mm = abs(edge[0] - cx) * SPACING_ZYX_MM[2]
        assert finding.long_axis_mm / 2 < radius_mm < finding.long_axis_mm, "the ring encloses the nodule, closely"


def test_labels_name_size_type_category_and_the_ai_statement(source: list[Dataset], tmp_path: Path) -> None:
    nodules = findings()
    _, ds = _saved(source, nodules, tmp_path)
    for index, (finding, annotation) in enumerate(zip(nodules, ds.GraphicAnnotationSequence, strict=True), start=1):
        [text] = annotation.TextObjectSequence
        label = text.UnformattedTextValue
        assert f"Nodule {index}: {finding.diameter_mm:.1f} mm {finding.nodule_type.value}" in label
        assert f"Lung-RADS {finding.lung_rads.value}" in label
        assert "AI-generated, not for diagnostic use" in label
        left, top = text.BoundingBoxTopLeftHandCorner
        right, bottom = text.BoundingBoxBottomRightHandCorner
        assert 0 <= left < right <= int(source[0].Columns) and 0 <= top < bottom <= int(source[0].Rows)
        [circle] = annotation.GraphicObjectSequence
        (cx, cy), (ex, _) = np.reshape(circle.GraphicData, (2, 2))
        ax, ay = text.AnchorPoint
        assert (ax, abs(ay - cy)) == pytest.approx((cx, abs(ex - cx)), abs=1e-3), "anchor on the ring's top or bottom"
        assert text.AnchorPointVisibility == "Y"
        for item in (text, circle):
            assert (item.TrackingID, item.TrackingUID) == (tracking_identifier(index), finding.tracking_uid)
            assert item.GraphicGroupID == index
    assert [g.GraphicGroupLabel for g in ds.GraphicGroupSequence] == ["Nodule 1", "Nodule 2"]
    [layer] = ds.GraphicLayerSequence
    assert {a.GraphicLayer for a in ds.GraphicAnnotationSequence} == {layer.GraphicLayer}


def test_real_data_model_labels_say_unreviewed(source: list[Dataset], tmp_path: Path) -> None:
    real = AlgorithmInfo(name="pacs-node-detector", version="1.0.0", synthetic_data=False)
    _, ds = _saved(source, findings()[:1], tmp_path, real)
    label = ds.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert "AI-generated, not reviewed by a physician" in label and "diagnostic" not in label
    assert ds.SeriesDescription == "AI nodule marks (unverified)"


def test_without_findings_there_is_no_presentation_state(source: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="at least one finding"):
        build_gsps(source, [], algorithm=ALGORITHM, device=DEVICE, identity=ObjectIdentity.fresh(9904))
