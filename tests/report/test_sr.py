"""The TID 1500 SR: valid DICOM, findings read back, circles on the right slice."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.report.codes import PRIVATE_SCHEME, lobe_site
from pacs_node.report.context import (
    NO_NODULES_DETECTED,
    NOT_FOR_DIAGNOSTIC_USE,
    AlgorithmInfo,
    DeviceInfo,
    ReportOutcome,
    ai_statement,
)
from pacs_node.report.geometry import locate, patient_coordinates
from pacs_node.report.identity import SeriesIdentity
from pacs_node.report.read import read_findings, read_study_summary
from pacs_node.report.sr import build_report
from tests.report import BLOBS, SPACING_ZYX_MM, dciodvfy, findings, write_series

ALGORITHM = AlgorithmInfo(name="pacs-node-detector", version="0.1.0", synthetic_data=True)
DEVICE = DeviceInfo(
    manufacturer="pacs-node project", model_name="pacs-node", software_version="0.1.0", device_serial="node-01"
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """The test series, read back from disk, in shuffled order."""
    paths = write_series(tmp_path_factory.mktemp("ct"))
    datasets = [pydicom.dcmread(path) for path in paths]
    random.Random(7).shuffle(datasets)
    return datasets


def _build(
    source: Sequence[Dataset],
    nodules: Sequence[Finding],
    outcome: ReportOutcome | None = None,
    algorithm: AlgorithmInfo = ALGORITHM,
) -> tuple[hd.sr.Comprehensive3DSR, dict[str, str]]:
    uids = {"series": generate_uid(), "sop": generate_uid()}
    report = build_report(
        source,
        nodules,
        outcome=outcome or ReportOutcome.analysed(),
        algorithm=algorithm,
        device=DEVICE,
        identity=SeriesIdentity(uids["series"], 901).instance(uids["sop"], 3),
    )
    return report, uids


def _content(report: Dataset) -> hd.sr.MeasurementReport:
    """The report's TID 1500 content, typed (as highdicom types it when reading)."""
    return hd.sr.Comprehensive3DSR.from_dataset(report).content


def _saved(report: Dataset, tmp_path: Path) -> Dataset:
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.mark.parametrize("case", ["nodules", "no_nodules", "not_analysable"])
def test_report_passes_dciodvfy_without_errors(case: str, source: list[Dataset], tmp_path: Path) -> None:
    if case == "nodules":
        report, _ = _build(source, findings())
    elif case == "no_nodules":
        report, _ = _build(source, [])
    else:
        report, _ = _build(source, [], ReportOutcome.not_analysable("slice spacing 5.0 mm > 3.0 mm"))
    path = tmp_path / f"{case}.dcm"
    report.save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy(path)
    assert errors == []
    # The only warnings: dciodvfy does not know our private coding scheme designator.
    assert all(PRIVATE_SCHEME in warning for warning in warnings), warnings


def test_findings_read_back_from_file(source: list[Dataset], tmp_path: Path) -> None:
    expected = findings()
    report, _ = _build(source, expected)
    read = read_findings(_saved(report, tmp_path))
    assert [n["name"] for n in read] == ["Nodule 1", "Nodule 2"]
    assert [n["tracking_id"] for n in read] == [f"Cornerstone3DTools@^0.1.0:CircleROI:Nodule {i}" for i in (1, 2)]
    for nodule, finding in zip(read, expected, strict=True):
        assert nodule["tracking_uid"] == finding.tracking_uid
        assert np.allclose(nodule["center_lps_mm"], finding.center_lps_mm, atol=1.0)
        assert nodule["long_axis_mm"] == pytest.approx(finding.long_axis_mm, abs=0.05)
        assert nodule["short_axis_mm"] == pytest.approx(finding.short_axis_mm, abs=0.05)
        assert nodule["diameter_mm"] == pytest.approx(finding.diameter_mm, abs=1e-6)
        assert nodule["volume_mm3"] == pytest.approx(finding.volume_mm3, abs=0.5)
        assert nodule["mean_hu"] == pytest.approx(finding.mean_hu, abs=0.05)
        assert nodule["score"] == pytest.approx(finding.score, abs=1e-6)
        assert nodule["nodule_type"] == finding.nodule_type.value
        assert nodule["lung_rads"] == finding.lung_rads.value
        assert nodule["spiculated"] is finding.spiculated
    assert read[0]["solid_core_mm"] is None and read[1]["solid_core_mm"] == pytest.approx(6.5)
    assert [n["lung_rads"] for n in read] == ["2", "4X"]
    assert (read[0]["finding_site"], read[0]["laterality"]) == ("Upper lobe of right lung", "Right")
    assert (read[1]["finding_site"], read[1]["laterality"]) == ("Lower lobe of left lung", "Left")


def test_circle_is_on_the_nearest_slice_and_its_centre_maps_back(source: list[Dataset], tmp_path: Path) -> None:
    report, _ = _build(source, findings())
    by_uid = {str(ds.SOPInstanceUID): ds for ds in source}
    for nodule, blob in zip(read_findings(_saved(report, tmp_path)), BLOBS, strict=True):
        image = by_uid[nodule["circle"]["sop_instance_uid"]]
        # write_ct_series numbers slices from 1 along +z; the blob's slice is round(k).
        assert int(image.InstanceNumber) == round(blob.index_zyx[0]) + 1
        column, row = nodule["circle"]["center_col_row"]
        back = patient_coordinates(image, [[column, row]])[0]
        assert np.allclose(back[:2], blob.center_lps_mm[:2], atol=1.0)
        assert abs(back[2] - blob.center_lps_mm[2]) <= SPACING_ZYX_MM[0] / 2 + 1e-6
        # The pixel under the centre is the nodule itself, not the lung around it.
        hu = image.pixel_array[int(row), int(column)] * float(image.RescaleSlope) + float(image.RescaleIntercept)
        assert hu > 0
        # Radius: half the long axis, in pixels along a row (column spacing 0.6 mm).
        assert nodule["circle"]["radius_px"] == pytest.approx(
            findings()[BLOBS.index(blob)].long_axis_mm / 2 / SPACING_ZYX_MM[2], rel=1e-4
        )


def _items(group: Dataset, value_type: str) -> list[Dataset]:
    return [item for item in group.ContentSequence if item.ValueType == value_type]


def test_each_nodule_is_one_group_that_ohif_loads_as_a_tracked_circle(source: list[Dataset]) -> None:
    """What OHIF 3.13 (@cornerstonejs/adapters) needs to load a nodule as an editable circle:
    a Tracking Identifier starting with its circle tool's tag, one group per tracking UID,
    the circle (SCOORD) INFERRED FROM on the group's first NUM, no SCOORD at the top level;
    its label is the first Comment, shown first among the five lines it shows."""
    nodules = findings()
    report, _ = _build(source, nodules)
    content = _content(report)
    groups = content.get_image_measurement_groups()
    assert [g.tracking_uid for g in groups] == [f.tracking_uid for f in nodules]
    assert content.get_planar_roi_measurement_groups() == content.get_volumetric_roi_measurement_groups() == []
    for index, (group, finding, blob) in enumerate(zip(groups, nodules, BLOBS, strict=True), start=1):
        item = group[0]
        assert item.ContentTemplateSequence[0].TemplateIdentifier == "1501"
        assert group.tracking_identifier == f"Cornerstone3DTools@^0.1.0:CircleROI:Nodule {index}"
        assert not _items(item, "SCOORD") and not _items(item, "SCOORD3D")
        first, *others = _items(item, "NUM")
        assert first.ConceptNameCodeSequence[0].CodeMeaning == "Diameter"
        [circle] = first.ContentSequence
        assert (circle.ValueType, circle.GraphicType, circle.RelationshipType) == ("SCOORD", "CIRCLE", "INFERRED FROM")
        assert circle.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPClassUID == pydicom.uid.CTImageStorage
        coordinates = {n.ConceptNameCodeSequence[0].CodeMeaning: n.ContentSequence[0] for n in others
                       if "ContentSequence" in n}
        assert list(coordinates) == ["Volume"], "one circle per nodule, drawn once"
        centre = coordinates["Volume"]
        assert (centre.ValueType, centre.GraphicType) == ("SCOORD3D", "POINT")
        assert centre.ReferencedFrameOfReferenceUID == source[0].FrameOfReferenceUID
        assert np.allclose(centre.GraphicData, blob.center_lps_mm)
        comments = [(t.ConceptNameCodeSequence[0].CodeValue, t.TextValue) for t in _items(item, "TEXT")
                    if t.ConceptNameCodeSequence[0].CodeValue == "121106"]
        assert comments == [("121106", f"Nodule {index}: {finding.diameter_mm:.1f} mm {finding.nodule_type.value}, "
                             f"Lung-RADS {finding.lung_rads.value} (AI-generated, not for diagnostic use)")]
        meanings = [n.ConceptNameCodeSequence[0].CodeMeaning for n in _items(item, "NUM")]
        assert meanings[:3] == ["Diameter", "Long axis", "Short axis"]


def test_uids_passed_in_are_the_uids_written(source: list[Dataset], tmp_path: Path) -> None:
    report, uids = _build(source, findings())
    saved = _saved(report, tmp_path)
    assert saved.SeriesInstanceUID == uids["series"]
    assert saved.SOPInstanceUID == saved.file_meta.MediaStorageSOPInstanceUID == uids["sop"]
    assert saved.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert saved.StudyInstanceUID == source[0].StudyInstanceUID
    assert saved.SeriesInstanceUID != source[0].SeriesInstanceUID
    assert (saved.SeriesNumber, saved.InstanceNumber, saved.Modality) == (901, 3, "SR")
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in saved.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in source}


def test_source_order_does_not_change_the_report(source: list[Dataset]) -> None:
    nodules = findings()
    shuffled = _build(source, nodules)[0]
    ordered = _build(sorted(source, key=lambda ds: int(ds.InstanceNumber)), nodules)[0]
    assert read_findings(shuffled) == read_findings(ordered)


def test_study_summary_gives_the_highest_category_and_the_statements(source: list[Dataset]) -> None:
    report, _ = _build(source, findings())
    summary = read_study_summary(report)
    assert summary["outcome"] == "analysed"
    assert summary["nodules_detected"] is True
    assert summary["lung_rads"] == "4X"
    assert ai_statement(ALGORITHM, DEVICE) in summary["comments"]
    assert NOT_FOR_DIAGNOSTIC_USE in summary["comments"]
    assert "not for diagnostic use" in report.SeriesDescription.lower()
    assert "NOT FOR DIAGNOSTIC USE" in report.CompletionFlagDescription
    assert (report.CompletionFlag, report.VerificationFlag, report.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )


def test_no_nodules_is_stated_explicitly(source: list[Dataset]) -> None:
    report, _ = _build(source, [])
    summary = read_study_summary(report)
    assert summary["nodules_detected"] is False
    assert summary["lung_rads"] == "1"
    assert NO_NODULES_DETECTED in summary["comments"]
    assert read_findings(report) == []
    evaluations = report.content[0].ContentSequence[-1].ContentSequence
    coded = {
        (i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
        for i in evaluations
        if i.ValueType == "CODE"
    }
    assert ("27925004", "272519000") in coded  # Nodule: Absent
    assert ("111017", "111241") in coded  # CAD summary: all algorithms succeeded; without findings


def test_not_analysable_report_says_why(source: list[Dataset]) -> None:
    report, _ = _build(source, [], ReportOutcome.not_analysable("slice spacing 5.0 mm > 3.0 mm"))
    summary = read_study_summary(report)
    assert summary["outcome"] == "not_analysable"
    assert summary["reason"] == "slice spacing 5.0 mm > 3.0 mm"
    assert summary["lung_rads"] is None
    assert NOT_FOR_DIAGNOSTIC_USE in summary["comments"]
    with pytest.raises(ValueError, match="not analysed cannot have findings"):
        _build(source, findings(), ReportOutcome.not_analysable("no lungs"))


def test_real_data_model_report_is_ai_labelled_without_the_synthetic_warning(source: list[Dataset]) -> None:
    algorithm = AlgorithmInfo(name="pacs-node-detector", version="1.0.0", synthetic_data=False)
    report, _ = _build(source, findings(), algorithm=algorithm)
    comments = read_study_summary(report)["comments"]
    assert ai_statement(algorithm, DEVICE) in comments
    assert NOT_FOR_DIAGNOSTIC_USE not in comments
    assert report.SeriesDescription.startswith("AI ")


def test_observer_is_our_device_and_groups_name_the_algorithm(source: list[Dataset]) -> None:
    report, _ = _build(source, findings())
    (observer,) = _content(report).get_observer_contexts()
    attributes = observer.observer_identifying_attributes
    assert attributes.uid == DEVICE.uid
    assert attributes.name == "pacs-node 0.1.0"
    assert attributes.manufacturer_name == "pacs-node project"
    for group in _content(report).get_image_measurement_groups():
        texts = {
            item.ConceptNameCodeSequence[0].CodeValue: item.TextValue
            for item in group[0].ContentSequence
            if item.ValueType == "TEXT"
        }
        assert (texts["111001"], texts["111003"]) == ("pacs-node-detector", "0.1.0")
    schemes = {item.CodingSchemeDesignator for item in report.CodingSchemeIdentificationSequence}
    assert PRIVATE_SCHEME in schemes
    assert (report.Manufacturer, report.ManufacturerModelName, report.SoftwareVersions) == (
        "pacs-node project",
        "pacs-node",
        "0.1.0",
    )


def test_finding_outside_the_series_is_rejected(source: list[Dataset]) -> None:
    outside = Finding(
        center_lps_mm=(0.0, 0.0, 500.0),
        long_axis_mm=6,
        short_axis_mm=5,
        volume_mm3=90,
        nodule_type=NoduleType.SOLID,
        score=0.5,
    )
    with pytest.raises(ValueError, match="outside the series"):
        _build(source, [outside])


def test_repeated_tracking_uids_are_rejected(source: list[Dataset]) -> None:
    first = findings()[0]
    with pytest.raises(ValueError, match="distinct tracking_uid"):
        _build(source, [first, first])


@pytest.mark.parametrize(
    "lobe,meaning,side",
    [
        (None, "Lung", None),
        ("RML", "Middle lobe of right lung", "Right"),
        ("right upper lobe", "Upper lobe of right lung", "Right"),
        ("left_lower", "Lower lobe of left lung", "Left"),
        ("lul", "Upper lobe of left lung", "Left"),
    ],
)
def test_lobe_spellings_map_to_site_and_laterality(lobe: str | None, meaning: str, side: str | None) -> None:
    site = lobe_site(lobe)
    assert site.value.meaning == meaning
    assert (site.laterality.meaning if site.laterality else None) == side


def test_unknown_lobe_is_rejected(source: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="unknown lobe"):
        lobe_site("lingula")
    odd = Finding(
        center_lps_mm=BLOBS[0].center_lps_mm,
        long_axis_mm=6,
        short_axis_mm=5,
        volume_mm3=90,
        nodule_type=NoduleType.SOLID,
        score=0.5,
        lobe="lingula",
    )
    with pytest.raises(ValueError, match="unknown lobe"):
        _build(source, [odd])


def test_locate_picks_the_nearest_slice_for_any_source_order(source: list[Dataset]) -> None:
    position = locate(source, BLOBS[0].center_lps_mm)
    assert int(position.image.InstanceNumber) == 16
    assert position.distance_mm == pytest.approx(0.3 * SPACING_ZYX_MM[0], abs=1e-6)
    assert (position.column, position.row) == pytest.approx((40.5, 20.5))


def test_outcome_needs_a_reason_only_when_not_analysable() -> None:
    with pytest.raises(ValueError, match="reason is required"):
        ReportOutcome.not_analysable("  ")
    with pytest.raises(ValueError, match="reason must be empty"):
        ReportOutcome("analysed", "why")
    assert ReportOutcome("not_analysable", "no lungs").is_analysed is False


def test_device_and_algorithm_fields_must_fit_dicom() -> None:
    with pytest.raises(ValueError, match="manufacturer"):
        DeviceInfo(manufacturer="", model_name="m", software_version="1", device_serial="s")
    with pytest.raises(ValueError, match="name"):
        AlgorithmInfo(name="x" * 65, version="1", synthetic_data=True)
    same = DeviceInfo(manufacturer="a", model_name="b", software_version="1", device_serial="s")
    assert same.uid == DeviceInfo(manufacturer="a", model_name="b", software_version="2", device_serial="s").uid


def test_series_without_geometry_still_gets_a_valid_not_analysable_report(
    source: list[Dataset], tmp_path: Path
) -> None:
    broken = [ds.copy() for ds in source]
    for ds in broken:
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
    report, _ = _build(broken, [], ReportOutcome.not_analysable("no Image Position (Patient)"))
    path = tmp_path / "broken.dcm"
    report.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == []
    assert read_study_summary(pydicom.dcmread(path))["reason"] == "no Image Position (Patient)"
