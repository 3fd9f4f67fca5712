"""Segmentation: valid DICOM, one segment per nodule tied to the SR, frames on the nodules."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import SegmentationStorage, generate_uid

from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.report.context import AlgorithmInfo, DeviceInfo, ReportOutcome
from pacs_node.report.identity import ObjectIdentity
from pacs_node.report.read import read_findings
from pacs_node.report.seg import build_seg, spheroid_axes_mm
from pacs_node.report.sr import build_report
from tests.report import BLOBS, NODULE_HU, dciodvfy, findings, write_series

ALGORITHM = AlgorithmInfo(name="pacs-node-detector", version="0.1.0", synthetic_data=True)
DEVICE = DeviceInfo(
    manufacturer="pacs-node project", model_name="pacs-node", software_version="0.1.0", device_serial="node-01"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    return [pydicom.dcmread(path) for path in reversed(write_series(tmp_path_factory.mktemp("ct")))]


def _saved(source: Sequence[Dataset], nodules: Sequence[Finding], tmp_path: Path) -> tuple[Path, Dataset]:
    seg = build_seg(source, nodules, algorithm=ALGORITHM, device=DEVICE, identity=ObjectIdentity.fresh(9905))
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def _frames(ds: Dataset) -> dict[int, list[tuple[str, np.ndarray]]]:
    """Segment number -> [(source SOP Instance UID, frame)] read from the file with pydicom."""
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0]
    frames: dict[int, list[tuple[str, np.ndarray]]] = defaultdict(list)
    for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, pixels, strict=True):
        # With one segment, highdicom puts its identification in the shared functional groups.
        identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        segment = int(identification[0].ReferencedSegmentNumber)
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        frames[segment].append((uid, frame))
    return frames


def test_seg_passes_dciodvfy_without_errors_or_warnings(source: list[Dataset], tmp_path: Path) -> None:
    path, _ = _saved(source, findings(), tmp_path)
    assert dciodvfy(path) == ([], [])


def test_segments_are_the_nodules_with_the_sr_tracking_identifiers(source: list[Dataset], tmp_path: Path) -> None:
    nodules = findings()
    path, ds = _saved(source, nodules, tmp_path)
    assert ds.SOPClassUID == SegmentationStorage and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == source[0].StudyInstanceUID and ds.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert ds.SeriesDescription == "AI nodule segmentation (not for diagnostic use)"
    sr = build_report(source, nodules, outcome=ReportOutcome.analysed(), algorithm=ALGORITHM, device=DEVICE,
                      identity=ObjectIdentity.fresh(9901))
    in_sr = [(f["tracking_id"], f["tracking_uid"]) for f in read_findings(sr)]
    seg = hd.seg.segread(path)
    segments = [seg.get_segment_description(n) for n in seg.segment_numbers]
    assert [(s.tracking_id, str(s.tracking_uid)) for s in segments] == in_sr
    assert [s.segment_label for s in segments] == ["Nodule 1", "Nodule 2"]
    for segment in segments:
        assert (segment.segmented_property_category.value, segment.segmented_property_category.scheme_designator) == (
            "49755003", "SCT")
        assert (segment.segmented_property_type.value, segment.segmented_property_type.scheme_designator) == (
            "27925004", "SCT")
        assert segment.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert segment.algorithm_identification[0].AlgorithmName == ALGORITHM.name
    assert [s.anatomic_regions[0].meaning for s in segments] == ["Upper lobe of right lung", "Lower lobe of left lung"]


def test_frames_cover_the_nodule_centres_and_only_slices_with_nodule_voxels(
    source: list[Dataset], tmp_path: Path
) -> None:
    nodules = findings()
    _, ds = _saved(source, nodules, tmp_path)
    by_uid = {str(s.SOPInstanceUID): s for s in source}
    frames = _frames(ds)
    assert sorted(frames) == [1, 2]
    for number, (blob, finding) in enumerate(zip(BLOBS, nodules, strict=True), start=1):
        k, row, column = blob.index_zyx
        z_centre = blob.center_lps_mm[2]
        nearest = min(source, key=lambda s: abs(float(s.ImagePositionPatient[2]) - z_centre))
        centre = {uid: frame for uid, frame in frames[number]}[str(nearest.SOPInstanceUID)]
        assert centre[int(row), int(column)] == 1, "the centre voxel is in its segment"
        assert all(frame.any() for _, frame in frames[number]), "no empty frames"
        depth = spheroid_axes_mm(finding)[1]
        expected = {str(s.SOPInstanceUID) for s in source if abs(float(s.ImagePositionPatient[2]) - z_centre) < depth}
        assert {uid for uid, _ in frames[number]} == expected
        inside = hu_inside = 0
        for uid, frame in frames[number]:
            ct = by_uid[uid]
            hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
            inside += int(frame.sum())
            hu_inside += int((hu[frame.astype(bool)] == NODULE_HU).sum())
        assert hu_inside / inside > 0.85, "the spheroid lies on the nodule drawn in the CT"


def test_frames_sit_at_their_source_slices(source: list[Dataset], tmp_path: Path) -> None:
    _, ds = _saved(source, findings(), tmp_path)
    by_uid = {str(s.SOPInstanceUID): s for s in source}
    for item in ds.PerFrameFunctionalGroupsSequence:
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = item.PlanePositionSequence[0].ImagePositionPatient
        assert [float(v) for v in position] == pytest.approx([float(v) for v in by_uid[uid].ImagePositionPatient])


def test_nodule_smaller_than_a_voxel_still_has_its_centre_frame(source: list[Dataset], tmp_path: Path) -> None:
    blob = BLOBS[0]
    k, row, column = blob.index_zyx
    tiny = Finding(center_lps_mm=blob.center_lps_mm, long_axis_mm=0.3, short_axis_mm=0.2, volume_mm3=0.01,
                   nodule_type=NoduleType.SOLID, score=0.5)
    _, ds = _saved(source, [tiny], tmp_path)
    [(_, frame)] = _frames(ds)[1]
    assert frame[int(row), int(column)] == 1 and frame.sum() == 1


def test_without_findings_there_is_no_segmentation(source: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="at least one finding"):
        build_seg(source, [], algorithm=ALGORITHM, device=DEVICE, identity=ObjectIdentity.fresh(9905))
