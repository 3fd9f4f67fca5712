"""TID 1500 Comprehensive 3D SR with the nodules found in one CT series, and its reader.

One report per analysed series, in the source's study, in a new series.  Its content
tree (DICOM PS3.16 TID 1500 "Measurement Report")::

    Imaging Measurement Report (126000, DCM)
      language, observer context (our device), procedure reported (24627-2, LN, "CT Chest")
      Image Library (111028, DCM): every slice of the analysed series
      Imaging Measurements (126010, DCM)
        per nodule, two Measurement Groups sharing Tracking Identifier "Nodule <n>"
        and Tracking Unique Identifier = Finding.tracking_uid:
          TID 1410 planar group: CIRCLE (SCOORD) on the slice nearest the centre,
              long axis, short axis, mean diameter, [solid component], certainty of
              finding, nodule type, Lung-RADS category, [border shape: spiculated]
          TID 1411 volumetric group: centre as a SCOORD3D POINT in the frame of
              reference, volume, mean attenuation
      Qualitative Evaluations (C0034375, UMLS): CAD processing summary, study
          Lung-RADS category, "Nodule: Absent" when none, reason when not analysable,
          and the AI / not-for-diagnostic-use statements as TEXT comments

Why two groups per nodule: TID 1410 (and highdicom's
:class:`highdicom.sr.PlanarROIMeasurementsAndQualitativeEvaluations`) holds exactly one
region, and highdicom forbids per-measurement coordinates inside ROI groups.  A
second TID 1411 group with the same tracking identifiers carries the 3D point; the
standard links groups of one lesion by Tracking Unique Identifier, and OHIF merges
groups by that UID, then draws the first SCOORD it finds (the circle: the planar
group comes first).  The 3D measurements (volume, mean attenuation) sit in the
volumetric group, the in-plane ones in the planar group.

Coordinates: centres are patient coordinates (LPS, mm) in the source's frame of
reference; SCOORD graphic data are image coordinates (column, row) in pixels, with
(0, 0) at the top-left corner of the top-left pixel (so a pixel's centre is at +0.5).
Mapping goes through :mod:`highdicom.spatial`.

Coding choices
--------------
Standard codes (DCM, SCT, UCUM, LN) where one fits: Nodule (27925004, SCT), finding
site Lung (39607008, SCT) or the lobe with its laterality, Long axis (103339001, SCT),
Short axis (103340004, SCT), Diameter (81827009, SCT) = Lung-RADS mean diameter,
Volume (118565006, SCT, mm3), Mean Attenuation Coefficient (112181, DCM, [hnsf'U]),
Border shape (112015, DCM) = Spiculated (112136, DCM), CAD Processing and Findings
Summary (111017, DCM) with CID 6047 values, Absent (272519000, SCT).

The detection score is a detector confidence, not a probability of malignancy, so it
is not (111047, DCM, "Probability of cancer"); it is stored as (111012, DCM,
"Certainty of Finding") in percent (0-100, UCUM "%"), the concept and unit CAD SR
templates use for how certain the algorithm is that the detected finding is real.
It is an uncalibrated model score.

No standard codes exist for Lung-RADS categories, and no SNOMED CT codes for the four
nodule attenuation types could be verified, so both use the private coding scheme
``99PACSNODE`` (declared in the CodingSchemeIdentificationSequence):

========== ========================================================
code       meaning
========== ========================================================
LUNGRADS   Lung-RADS v2022 category (concept name)
LR-1 ...   Lung-RADS 1 - Negative, 2, 3, 4A, 4B, 4X (values)
NODTYPE    Nodule attenuation type (concept name)
SOLID      Solid; PARTSOLID Part-solid; GGN Ground-glass; CALCIFIED Calcified
SOLIDCORE  Solid component mean diameter (mm, part-solid nodules)
NOTANALYSED Reason the series was not analysed (TEXT)
========== ========================================================
"""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pacs_node.analyze.findings import Finding, LungRads, NoduleType, study_category

# -- codes -----------------------------------------------------------------------------

PRIVATE_SCHEME = "99PACSNODE"
PRIVATE_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name="pacs-node private codes",
    version="1",
    responsible_organization="pacs-node project",
)

LUNG_RADS_CATEGORY = Code("LUNGRADS", PRIVATE_SCHEME, "Lung-RADS v2022 category")
LUNG_RADS_CODES: dict[LungRads, Code] = {
    category: Code(f"LR-{category.value}", PRIVATE_SCHEME, f"Lung-RADS {category.value} - {category.meaning}")
    for category in LungRads
}
NODULE_TYPE = Code("NODTYPE", PRIVATE_SCHEME, "Nodule attenuation type")
NODULE_TYPE_CODES: dict[NoduleType, Code] = {
    NoduleType.SOLID: Code("SOLID", PRIVATE_SCHEME, "Solid"),
    NoduleType.PART_SOLID: Code("PARTSOLID", PRIVATE_SCHEME, "Part-solid"),
    NoduleType.GROUND_GLASS: Code("GGN", PRIVATE_SCHEME, "Ground-glass"),
    NoduleType.CALCIFIED: Code("CALCIFIED", PRIVATE_SCHEME, "Calcified"),
}
SOLID_CORE = Code("SOLIDCORE", PRIVATE_SCHEME, "Solid component mean diameter")
NOT_ANALYSED_REASON = Code("NOTANALYSED", PRIVATE_SCHEME, "Reason the series was not analysed")

NODULE: Code = codes.SCT.Nodule
LUNG: Code = codes.SCT.Lung
LONG_AXIS: Code = codes.SCT.LongAxis
SHORT_AXIS: Code = codes.SCT.ShortAxis
DIAMETER: Code = codes.SCT.Diameter
VOLUME: Code = codes.SCT.Volume
MEAN_ATTENUATION: Code = codes.DCM.MeanAttenuationCoefficient
CERTAINTY_OF_FINDING: Code = codes.DCM.CertaintyOfFinding
BORDER_SHAPE: Code = codes.DCM.BorderShape
SPICULATED: Code = codes.DCM.Spiculated
ABSENT: Code = codes.SCT.Absent
COMMENT: Code = codes.DCM.Comment
CAD_SUMMARY: Code = codes.DCM.CADProcessingAndFindingsSummary
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
ENGLISH = hd.sr.CodedConcept(value="en-US", scheme_designator="RFC5646", meaning="English (United States)")
CT_CHEST = Code("24627-2", "LN", "CT Chest")

MM: Code = codes.UCUM.Millimeter
MM3: Code = codes.UCUM.CubicMillimeter
HU: Code = codes.UCUM.HounsfieldUnit
PERCENT: Code = codes.UCUM.Percent

_RIGHT: Code = codes.SCT.Right
_LEFT: Code = codes.SCT.Left
#: Lobe codes (SCT) with their laterality, keyed by the usual abbreviation.
LOBES: dict[str, tuple[Code, Code]] = {
    "RUL": (Code("42400003", "SCT", "Upper lobe of right lung"), _RIGHT),
    "RML": (Code("72481006", "SCT", "Middle lobe of right lung"), _RIGHT),
    "RLL": (Code("266005", "SCT", "Lower lobe of right lung"), _RIGHT),
    "LUL": (Code("44714003", "SCT", "Upper lobe of left lung"), _LEFT),
    "LLL": (Code("41224006", "SCT", "Lower lobe of left lung"), _LEFT),
}

# -- statements ------------------------------------------------------------------------

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE - model trained on synthetic data only"
NO_NODULES_DETECTED = "No lung nodules detected."
LUNG_RADS_NOTE = (
    "Lung-RADS v2022 categories are computed from the AI measurements with the baseline "
    "screening table; no comparison with prior examinations was made."
)


class OutcomeStatus(enum.StrEnum):
    """Whether a series was analysed."""

    ANALYSED = "analysed"
    NOT_ANALYSABLE = "not_analysable"


@dataclass(frozen=True)
class ReportOutcome:
    """What became of the analysis of one series.

    Attributes
    ----------
    status
        Analysed, or not analysable.
    reason
        Why the series could not be analysed (required then, e.g. "slice spacing
        5.0 mm > 3.0 mm"); must be empty for an analysed series.
    """

    status: OutcomeStatus
    reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", OutcomeStatus(self.status))
        if self.status is OutcomeStatus.NOT_ANALYSABLE and not (self.reason or "").strip():
            raise ValueError("reason is required when status is not_analysable")
        if self.status is OutcomeStatus.ANALYSED and self.reason:
            raise ValueError(f"reason must be empty when status is analysed, got {self.reason!r}")

    @classmethod
    def analysed(cls) -> ReportOutcome:
        return cls(OutcomeStatus.ANALYSED)

    @classmethod
    def not_analysable(cls, reason: str) -> ReportOutcome:
        return cls(OutcomeStatus.NOT_ANALYSABLE, reason)

    @property
    def is_analysed(self) -> bool:
        return self.status is OutcomeStatus.ANALYSED


def _check_lo(argument: str, value: str) -> None:
    """DICOM LO: non-empty here, at most 64 characters, no backslash or control characters."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{argument} must be a non-empty string, got {value!r}")
    if len(value) > 64 or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{argument} must fit DICOM LO (<= 64 characters, no backslash), got {value!r}")


@dataclass(frozen=True)
class AlgorithmInfo:
    """The detection algorithm, as TID 4019 Algorithm Identification names it.

    Attributes
    ----------
    name, version
        Algorithm name and version.
    synthetic_data
        True when the model was trained on synthetic data only: every object then
        says it is not for diagnostic use.
    """

    name: str
    version: str
    synthetic_data: bool

    def __post_init__(self) -> None:
        _check_lo("name", self.name)
        _check_lo("version", self.version)


@dataclass(frozen=True)
class DeviceInfo:
    """This node, as the observer device and the equipment that made the objects.

    Attributes
    ----------
    manufacturer, model_name, software_version, device_serial
        Written to the General Equipment module and the SR observer context.
    """

    manufacturer: str
    model_name: str
    software_version: str
    device_serial: str

    def __post_init__(self) -> None:
        for argument in ("manufacturer", "model_name", "software_version", "device_serial"):
            _check_lo(argument, getattr(self, argument))

    @property
    def uid(self) -> str:
        """Device Observer UID: the same for the same device across runs and versions.

        A 2.25 UID of a name-based UUID (RFC 4122 version 5) of manufacturer, model
        name and serial number.
        """
        name = "\x1f".join(("pacs-node device", self.manufacturer, self.model_name, self.device_serial))
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def ai_statement(algorithm: AlgorithmInfo, device: DeviceInfo) -> str:
    """The sentence every object carries: it is AI output, by what, unverified."""
    return (
        f"AI-generated result: produced automatically by {algorithm.name} {algorithm.version} "
        f"on {device.model_name} {device.software_version} ({device.manufacturer}); "
        "not reviewed by a physician."
    )


def series_description(kind: str, algorithm: AlgorithmInfo) -> str:
    """A series description (<= 64 characters) that says AI and, if so, not for diagnosis."""
    suffix = " (not for diagnostic use)" if algorithm.synthetic_data else " (unverified)"
    return f"AI {kind}{suffix}"[:64]


# -- geometry --------------------------------------------------------------------------


def image_coordinates(image: Dataset, points_lps_mm: np.ndarray) -> np.ndarray:
    """Map patient points into one image's pixel matrix.

    Parameters
    ----------
    image
        A single-frame image with Image Position/Orientation (Patient) and Pixel Spacing.
    points_lps_mm
        ``N x 3`` patient coordinates (LPS, mm).

    Returns
    -------
    numpy.ndarray
        ``N x 3``: column and row in image coordinates (pixels; the top-left corner of
        the top-left pixel is (0, 0), so pixel centres are at +0.5, as SCOORD uses them),
        and the signed distance from the image plane along its normal, mm.
    """
    transformer = hd.spatial.ReferenceToImageTransformer(
        image_position=[float(v) for v in image.ImagePositionPatient],
        image_orientation=[float(v) for v in image.ImageOrientationPatient],
        pixel_spacing=[float(v) for v in image.PixelSpacing],
    )
    return transformer(np.atleast_2d(np.asarray(points_lps_mm, dtype=float)))


def patient_coordinates(image: Dataset, image_points: np.ndarray) -> np.ndarray:
    """Inverse of :func:`image_coordinates` for points in the image plane.

    Parameters
    ----------
    image
        The image the (column, row) points refer to.
    image_points
        ``N x 2`` image coordinates (column, row), pixels.

    Returns
    -------
    numpy.ndarray
        ``N x 3`` patient coordinates (LPS, mm).
    """
    transformer = hd.spatial.ImageToReferenceTransformer(
        image_position=[float(v) for v in image.ImagePositionPatient],
        image_orientation=[float(v) for v in image.ImageOrientationPatient],
        pixel_spacing=[float(v) for v in image.PixelSpacing],
    )
    return transformer(np.atleast_2d(np.asarray(image_points, dtype=float)))


@dataclass(frozen=True)
class SlicePosition:
    """Where a patient point falls in a series: its nearest slice and its place there.

    Attributes
    ----------
    image
        The slice whose plane is nearest to the point.
    column, row
        Image coordinates of the point projected onto that slice (pixels, SCOORD
        convention).
    distance_mm
        Signed distance of the point from the slice plane along its normal, mm.
    """

    image: Dataset
    column: float
    row: float
    distance_mm: float


def locate(source: Sequence[Dataset], point_lps_mm: Sequence[float]) -> SlicePosition:
    """Find the slice of ``source`` nearest to a patient point (LPS, mm).

    Raises
    ------
    ValueError
        When the point lies more than half a slice gap outside the stack of slices, or
        outside the image in-plane: the finding and the series do not belong together.
    """
    if not source:
        raise ValueError("source must hold at least one image")
    point = np.asarray(point_lps_mm, dtype=float).reshape(1, 3)
    placed = [(image, image_coordinates(image, point)[0]) for image in source]
    offsets = np.sort([coords[2] for _, coords in placed])
    gaps = np.diff(offsets)
    gaps = gaps[gaps > 1e-3]
    if gaps.size:
        half_gap = float(np.median(gaps)) / 2
    else:
        half_gap = float(source[0].get("SliceThickness") or 1.0) / 2
    image, (column, row, distance) = min(placed, key=lambda item: abs(item[1][2]))
    if abs(distance) > half_gap + 1e-3:
        raise ValueError(
            f"point {tuple(point[0])} lies {abs(distance):.1f} mm from the nearest slice "
            f"(slice gap {2 * half_gap:.2f} mm): outside the series"
        )
    if not (0 <= column <= int(image.Columns) and 0 <= row <= int(image.Rows)):
        raise ValueError(f"point {tuple(point[0])} maps to column {column:.1f}, row {row:.1f}: outside the image")
    return SlicePosition(image=image, column=float(column), row=float(row), distance_mm=float(distance))


def circle_radius_px(image: Dataset, radius_mm: float) -> float:
    """A radius in mm as pixels along the image rows (Pixel Spacing's column spacing)."""
    return radius_mm / float(image.PixelSpacing[1])


def lobe_site(lobe: str | None) -> hd.sr.FindingSite:
    """The finding site of a nodule: lung, or its lobe with laterality.

    Parameters
    ----------
    lobe
        None, or a lobe as "RUL", "RML", "RLL", "LUL", "LLL" or spelled out
        ("right upper lobe", "left_lower", ...), case-insensitive.
    """
    if lobe is None:
        return hd.sr.FindingSite(anatomic_location=LUNG)
    key = _lobe_key(lobe)
    location, laterality = LOBES[key]
    return hd.sr.FindingSite(anatomic_location=location, laterality=laterality)


def _lobe_key(lobe: str) -> str:
    words = lobe.lower().replace("_", " ").replace("-", " ").split()
    words = [w for w in words if w not in ("lobe", "lung", "of", "the")]
    if len(words) == 1 and words[0].upper() in LOBES:
        return words[0].upper()
    side = {"right": "R", "left": "L"}.get(words[0], "") if words else ""
    level = {"upper": "U", "middle": "M", "lower": "L"}.get(words[1], "") if len(words) == 2 else ""
    key = f"{side}{level}L"
    if key not in LOBES:
        raise ValueError(f"unknown lobe {lobe!r}: use one of {', '.join(LOBES)}")
    return key


# -- building --------------------------------------------------------------------------


def _tracking(index: int, finding: Finding) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(identifier=f"Nodule {index}", uid=finding.tracking_uid)


def _nodule_groups(
    index: int,
    finding: Finding,
    position: SlicePosition,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> tuple[
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
    hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations,
]:
    """The planar (circle, 2D measures) and volumetric (point, 3D measures) groups.

    ``position`` is the finding's centre located in the source series (:func:`locate`).
    """
    radius_px = circle_radius_px(position.image, finding.long_axis_mm / 2)
    circle = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array(
            [[position.column, position.row], [position.column + radius_px, position.row]], dtype=float
        ),
        source_image=hd.sr.SourceImageForRegion.from_source_image(position.image),
    )
    site = lobe_site(finding.lobe)
    planar_measurements = [
        hd.sr.Measurement(name=LONG_AXIS, value=round(finding.long_axis_mm, 1), unit=MM),
        hd.sr.Measurement(name=SHORT_AXIS, value=round(finding.short_axis_mm, 1), unit=MM),
        hd.sr.Measurement(name=DIAMETER, value=finding.diameter_mm, unit=MM),
    ]
    if finding.solid_core_mm is not None:
        planar_measurements.append(hd.sr.Measurement(name=SOLID_CORE, value=round(finding.solid_core_mm, 1), unit=MM))
    planar_measurements.append(
        hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=round(100 * finding.score, 4), unit=PERCENT)
    )
    evaluations = [
        hd.sr.QualitativeEvaluation(name=NODULE_TYPE, value=NODULE_TYPE_CODES[finding.nodule_type]),
        hd.sr.QualitativeEvaluation(name=LUNG_RADS_CATEGORY, value=LUNG_RADS_CODES[finding.lung_rads]),
    ]
    if finding.spiculated:
        evaluations.append(hd.sr.QualitativeEvaluation(name=BORDER_SHAPE, value=SPICULATED))
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(index, finding),
        referenced_region=circle,
        finding_type=NODULE,
        algorithm_id=algorithm_id,
        finding_sites=[site],
        measurements=planar_measurements,
        qualitative_evaluations=evaluations,
    )
    point = hd.sr.VolumeSurface(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.center_lps_mm], dtype=float),
        frame_of_reference_uid=position.image.FrameOfReferenceUID,
        source_series=hd.sr.SourceSeriesForSegmentation(position.image.SeriesInstanceUID),
    )
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(index, finding),
        referenced_volume_surface=point,
        finding_type=NODULE,
        algorithm_id=algorithm_id,
        finding_sites=[site],
        measurements=[
            hd.sr.Measurement(name=VOLUME, value=float(round(finding.volume_mm3)), unit=MM3),
            hd.sr.Measurement(name=MEAN_ATTENUATION, value=round(finding.mean_hu, 1), unit=HU),
        ],
    )
    return planar, volumetric


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _code(name: Code, value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _study_evaluations(
    findings: Sequence[Finding], outcome: ReportOutcome, algorithm: AlgorithmInfo, device: DeviceInfo
) -> list[hd.sr.ContentItem]:
    """Items of the report-level Qualitative Evaluations container."""
    summary = codes.cid6047
    items: list[hd.sr.ContentItem] = []
    if not outcome.is_analysed:
        items.append(_code(CAD_SUMMARY, summary.NoAlgorithmsSucceededWithoutFindings))
        items.append(_text(NOT_ANALYSED_REASON, str(outcome.reason)))
    elif findings:
        items.append(_code(CAD_SUMMARY, summary.AllAlgorithmsSucceededWithFindings))
    else:
        items.append(_code(CAD_SUMMARY, summary.AllAlgorithmsSucceededWithoutFindings))
        items.append(_code(NODULE, ABSENT))
        items.append(_text(COMMENT, NO_NODULES_DETECTED))
    if outcome.is_analysed:
        items.append(_code(LUNG_RADS_CATEGORY, LUNG_RADS_CODES[study_category(list(findings))]))
        items.append(_text(COMMENT, LUNG_RADS_NOTE))
    else:
        items.append(_text(COMMENT, f"Series not analysed: {outcome.reason}"))
    items.append(_text(COMMENT, ai_statement(algorithm, device)))
    if algorithm.synthetic_data:
        items.append(_text(COMMENT, NOT_FOR_DIAGNOSTIC_USE))
    return items


def _image_library(images: Sequence[Dataset]) -> hd.sr.ImageLibrary:
    """TID 1600 Image Library of the slices the circles are drawn on, in slice order.

    Only those: every analysed slice is listed as evidence already (Current Requested
    Procedure Evidence Sequence), and library entries with their descriptors cost
    about 4 kB each.
    """
    unique = {str(ds.SOPInstanceUID): ds for ds in images}
    return hd.sr.ImageLibrary(hd.spatial.sort_datasets(list(unique.values())))


def _measurement_report(
    source: Sequence[Dataset],
    findings: Sequence[Finding],
    outcome: ReportOutcome,
    algorithm: AlgorithmInfo,
    device: DeviceInfo,
) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree.

    Built item by item (with highdicom's templates) rather than with
    :class:`highdicom.sr.MeasurementReport`, which needs at least one measurement
    group and has no report-level Qualitative Evaluations.  Without nodules the report
    has neither Image Library nor Imaging Measurements; TID 1500 needs one of Imaging
    Measurements, Derived Imaging Measurements or Qualitative Evaluations, and the
    last is always there.
    """
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device.uid,
            name=f"{device.model_name} {device.software_version}"[:64],
            manufacturer_name=device.manufacturer,
            model_name=device.model_name,
            serial_number=device.device_serial,
        ),
    )
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version)
    root = hd.sr.ContainerContentItem(name=codes.cid7021.ImagingMeasurementReport, template_id="1500")
    content = hd.sr.ContentSequence()
    content.extend(hd.sr.LanguageOfContentItemAndDescendants(ENGLISH))
    content.extend(hd.sr.ObservationContext(observer_person_context=None, observer_device_context=observer))
    content.append(
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=CT_CHEST,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    positions = [locate(source, finding.center_lps_mm) for finding in findings]
    if positions:
        content.extend(_image_library([position.image for position in positions]))
        measurements = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurements, relationship_type=contains)
        measurements.ContentSequence = hd.sr.ContentSequence()
        for index, (finding, position) in enumerate(zip(findings, positions, strict=True), start=1):
            for group in _nodule_groups(index, finding, position, algorithm_id):
                measurements.ContentSequence.extend(group)
        content.append(measurements)
    evaluations = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=contains)
    evaluations.ContentSequence = hd.sr.ContentSequence(_study_evaluations(findings, outcome, algorithm, device))
    content.append(evaluations)
    root.ContentSequence = content
    return hd.sr.MeasurementReport.from_sequence([root], copy=False)


def _check_source(source: Sequence[Dataset]) -> None:
    if not source:
        raise ValueError("source must hold the slices of the analysed series, got none")
    for attribute in ("StudyInstanceUID", "SeriesInstanceUID"):
        values = {str(ds.get(attribute, "")) for ds in source}
        if len(values) != 1 or "" in values:
            raise ValueError(f"source must come from one series: {attribute} values {sorted(values)}")


def _check_findings(findings: Sequence[Finding], outcome: ReportOutcome, source: Sequence[Dataset]) -> None:
    if not outcome.is_analysed and findings:
        raise ValueError(f"a series that was not analysed cannot have findings, got {len(findings)}")
    uids = [f.tracking_uid for f in findings]
    if len(set(uids)) != len(uids):
        raise ValueError("findings must have distinct tracking_uid values")
    if findings:
        frames = {str(ds.get("FrameOfReferenceUID", "")) for ds in source}
        if len(frames) != 1 or "" in frames:
            raise ValueError(f"source slices must share one FrameOfReferenceUID, got {sorted(frames)}")
        for finding in findings:
            if finding.lobe is not None:
                _lobe_key(finding.lobe)


def build_report(
    source: Sequence[Dataset],
    findings: Sequence[Finding],
    *,
    outcome: ReportOutcome,
    algorithm: AlgorithmInfo,
    device: DeviceInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    instance_number: int = 1,
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 Comprehensive 3D SR for one analysed CT series.

    Parameters
    ----------
    source
        The CT slices of the series, any order; patient and study attributes are
        copied from them, and all of them are listed as evidence and in the image
        library.
    findings
        Nodules, numbered "Nodule 1", "Nodule 2", ... in this order; their centres are
        patient coordinates (LPS, mm) in the slices' frame of reference.  Empty for a
        series without nodules or one that was not analysed.
    outcome
        Analysed, or not analysable with the reason the report states.
    algorithm, device
        What produced the findings, for the observer context and the statements.
    series_instance_uid, sop_instance_uid
        UIDs chosen once per analysis by the caller, so that a re-sent report is the
        same object.
    series_number, instance_number
        Series and instance numbers of the report.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The report, in the source's study, ready for ``save_as``.

    Raises
    ------
    ValueError
        When the source is not one series, findings come with a not-analysable
        outcome, tracking UIDs repeat, a lobe is unknown, or a finding lies outside
        the series.
    """
    _check_source(source)
    _check_findings(findings, outcome, source)
    content = _measurement_report(source, findings, outcome, algorithm, device)
    report = hd.sr.Comprehensive3DSR(
        evidence=list(source),
        content=content[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=device.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description("lung nodule report", algorithm),
        manufacturer_model_name=device.model_name,
        software_versions=device.software_version,
        device_serial_number=device.device_serial,
        coding_schemes=[PRIVATE_CODING_SCHEME],
    )
    report.CompletionFlagDescription = (
        "AI-generated, unverified; NOT FOR DIAGNOSTIC USE" if algorithm.synthetic_data else "AI-generated, unverified"
    )
    return report


# -- reading ---------------------------------------------------------------------------

_NODULE_TYPES = {code.value: kind for kind, code in NODULE_TYPE_CODES.items()}
_LUNG_RADS = {code.value: category for category, code in LUNG_RADS_CODES.items()}


_Group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations


def _measurement(group: _Group, name: Code) -> float | None:
    found = group.get_measurements(name=name)
    return float(found[0].value) if found else None


def _evaluation(group: _Group, name: Code) -> hd.sr.CodedConcept | None:
    found = group.get_qualitative_evaluations(name=name)
    value = found[0].value if found else None
    return value if isinstance(value, hd.sr.CodedConcept) else None


def _is_code(value: hd.sr.CodedConcept | None, code: Code) -> bool:
    return value is not None and value == code


def _as_report(sr_dataset: Dataset) -> hd.sr.MeasurementReport:
    document = hd.sr.Comprehensive3DSR.from_dataset(sr_dataset, copy=True)
    content = document.content
    if not isinstance(content, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 Measurement Report")
    return content


def read_findings(sr_dataset: Dataset) -> list[dict[str, Any]]:
    """Read the nodules of a report made by :func:`build_report`.

    Parameters
    ----------
    sr_dataset
        The SR (as built or as read from a file).

    Returns
    -------
    list[dict]
        One dict per nodule, in report order, with keys ``tracking_id`` ("Nodule 1"),
        ``tracking_uid``, ``center_lps_mm`` (x, y, z; LPS mm), ``long_axis_mm``,
        ``short_axis_mm``, ``diameter_mm``, ``solid_core_mm`` (or None),
        ``volume_mm3``, ``mean_hu``, ``score`` (0-1), ``nodule_type``
        (:class:`NoduleType` value, e.g. "solid"), ``lung_rads`` ("1" ... "4X"),
        ``spiculated``, ``finding_site`` (code meaning), ``laterality`` (meaning or
        None), and ``circle``: ``{"sop_instance_uid", "center_col_row", "radius_px"}``
        in image coordinates of the referenced slice.
    """
    report = _as_report(sr_dataset)
    volumetric = {str(g.tracking_uid): g for g in report.get_volumetric_roi_measurement_groups()}
    nodules = []
    for group in report.get_planar_roi_measurement_groups():
        uid = str(group.tracking_uid)
        region = group.roi
        if not isinstance(region, hd.sr.ImageRegion):
            raise ValueError(f"measurement group {uid} has no image region (SCOORD)")
        data = np.asarray(region.value, dtype=float)
        nodule_type = _evaluation(group, NODULE_TYPE)
        category = _evaluation(group, LUNG_RADS_CATEGORY)
        certainty = _measurement(group, CERTAINTY_OF_FINDING)
        site = group.finding_sites[0] if group.finding_sites else None
        volume_group = volumetric.get(uid)
        center = None
        volume = mean_hu = None
        if volume_group is not None:
            surface = volume_group.roi
            if isinstance(surface, hd.sr.VolumeSurface):
                points = np.asarray(surface.graphic_data, dtype=float).reshape(-1, 3)
                center = (float(points[0, 0]), float(points[0, 1]), float(points[0, 2]))
            volume = _measurement(volume_group, VOLUME)
            mean_hu = _measurement(volume_group, MEAN_ATTENUATION)
        nodules.append(
            {
                "tracking_id": group.tracking_identifier,
                "tracking_uid": uid,
                "center_lps_mm": center,
                "long_axis_mm": _measurement(group, LONG_AXIS),
                "short_axis_mm": _measurement(group, SHORT_AXIS),
                "diameter_mm": _measurement(group, DIAMETER),
                "solid_core_mm": _measurement(group, SOLID_CORE),
                "volume_mm3": volume,
                "mean_hu": mean_hu,
                "score": None if certainty is None else certainty / 100,
                "nodule_type": None if nodule_type is None else _NODULE_TYPES[nodule_type.value].value,
                "lung_rads": None if category is None else _LUNG_RADS[category.value].value,
                "spiculated": _is_code(_evaluation(group, BORDER_SHAPE), SPICULATED),
                "finding_site": None if site is None else site.value.meaning,
                "laterality": None if site is None or site.laterality is None else site.laterality.meaning,
                "circle": {
                    "sop_instance_uid": str(
                        region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                    ),
                    "center_col_row": (float(data[0, 0]), float(data[0, 1])),
                    "radius_px": float(math.dist(data[0], data[1])),
                },
            }
        )
    return nodules


def read_study_summary(sr_dataset: Dataset) -> dict[str, Any]:
    """Read the report-level statements of a report made by :func:`build_report`.

    Returns
    -------
    dict
        ``outcome`` ("analysed" or "not_analysable"), ``reason`` (or None),
        ``nodules_detected`` (bool), ``lung_rads`` (study category, or None when not
        analysed), ``comments`` (the TEXT comments, in order).
    """
    report = _as_report(sr_dataset)
    root = report[0]
    containers = [item for item in root.ContentSequence if _concept(item) == QUALITATIVE_EVALUATIONS]
    summary: dict[str, Any] = {
        "outcome": OutcomeStatus.ANALYSED.value,
        "reason": None,
        "nodules_detected": False,
        "lung_rads": None,
        "comments": [],
    }
    for item in containers[0].ContentSequence if containers else []:
        name = _concept(item)
        if item.ValueType == "CODE":
            value = item.ConceptCodeSequence[0]
            if name == CAD_SUMMARY:
                if value.CodeValue == codes.cid6047.NoAlgorithmsSucceededWithoutFindings.value:
                    summary["outcome"] = OutcomeStatus.NOT_ANALYSABLE.value
                summary["nodules_detected"] = value.CodeValue == codes.cid6047.AllAlgorithmsSucceededWithFindings.value
            elif name == LUNG_RADS_CATEGORY:
                summary["lung_rads"] = _LUNG_RADS[value.CodeValue].value
        elif item.ValueType == "TEXT":
            if name == NOT_ANALYSED_REASON:
                summary["reason"] = item.TextValue
            elif name == COMMENT:
                summary["comments"].append(item.TextValue)
    return summary


def _concept(item: Dataset) -> Code:
    concept = item.ConceptNameCodeSequence[0]
    return Code(concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning)
