"""TID 1500 Comprehensive 3D SR with the nodules found in one CT series, and its reader.

One report per analysed series, in the source's study, in a new series whose description
states the outcome (``AI lung nodules: 2 found, Lung-RADS 4X (...)``, ``...: none
detected``, ``...: not analysed``), so a viewer's series list shows it unopened.  Its
content tree (DICOM PS3.16 TID 1500 "Measurement Report")::

    Imaging Measurement Report (126000, DCM)
      language, observer context (our device), procedure reported (24627-2, LN, "CT Chest")
      Image Library (111028, DCM): the slices the circles are drawn on
      Imaging Measurements (126010, DCM)
        per nodule, one TID 1501 Measurement Group:
          Tracking Identifier "Cornerstone3DTools@^0.1.0:CircleROI:Nodule <n>" and
              Tracking Unique Identifier = Finding.tracking_uid
          Finding: Nodule; algorithm; finding site (lobe or lung)
          TID 300 measurements: mean diameter INFERRED FROM a CIRCLE (SCOORD) on the slice
              nearest the centre; long axis; short axis; [solid component]; certainty of
              finding; volume INFERRED FROM the centre (SCOORD3D POINT, frame of
              reference); mean attenuation
          qualitative evaluations: nodule type, Lung-RADS category, [border shape:
              spiculated] (CODE), then a Comment (TEXT): "Nodule <n>: 5.7 mm solid,
              Lung-RADS 2 (AI-generated, not for diagnostic use)"
      Qualitative Evaluations (C0034375, UMLS): CAD processing summary, study
          Lung-RADS category, "Nodule: Absent" when none, reason when not analysable,
          and the AI / not-for-diagnostic-use statements as TEXT comments

Why this layout (OHIF Viewer 3.13 and its ``@cornerstonejs/adapters``; details in
docs/viewer.md): OHIF loads a group as an editable, tracked measurement only when its
Tracking Identifier starts with a tool's tag (here its circle tool) and the group's first
NUM carries the SCOORD (TID 300 INFERRED FROM); a group with a SCOORD at its top level
(TID 1410) or with a CIRCLE found by graphic type is never loaded.  OHIF merges groups
by Tracking Unique Identifier, so one group per nodule; it labels a measurement with its
first Comment, lists Comments before the numbers and shows five lines, hence the label
first and the diameter as first NUM.
Tracking Identifier is free text and TID 1501 row 12 allows text qualitative
evaluations, so the report stays a standard TID 1500.

Coordinates: centres are patient coordinates (LPS, mm) in the source's frame of
reference; SCOORD graphic data are image coordinates (column, row) in pixels, with
(0, 0) at the top-left corner of the top-left pixel (so a pixel's centre is at +0.5).
Mapping goes through :mod:`highdicom.spatial`.

Coded concepts (and why the private scheme ``99PACSNODE``) are in
:mod:`pacs_node.report.codes`; the nearest-slice geometry in
:mod:`pacs_node.report.geometry`; reading a report back in :mod:`pacs_node.report.read`.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pacs_node.imaging.findings import Finding, study_category
from pacs_node.report.codes import (
    ABSENT,
    BORDER_SHAPE,
    CAD_SUMMARY,
    CERTAINTY_OF_FINDING,
    CHANGE,
    CHANGE_CODES,
    COMMENT,
    CT_CHEST,
    DAYS,
    DIAMETER,
    ENGLISH,
    HU,
    LONG_AXIS,
    LUNG_RADS_CATEGORY,
    LUNG_RADS_CODES,
    MEAN_ATTENUATION,
    MM,
    MM3,
    NODULE,
    NODULE_TYPE,
    NODULE_TYPE_CODES,
    NOT_ANALYSED_REASON,
    PERCENT,
    PRIOR_DIAMETER,
    PRIOR_VOLUME,
    PRIVATE_CODING_SCHEME,
    QUALITATIVE_EVALUATIONS,
    SHORT_AXIS,
    SOLID_CORE,
    SPICULATED,
    VOLUME,
    VOLUME_CHANGE,
    VOLUME_DOUBLING_TIME,
    lobe_key,
    lobe_site,
)
from pacs_node.report.context import (
    LUNG_RADS_NOTE,
    NO_NODULES_DETECTED,
    NOT_FOR_DIAGNOSTIC_USE,
    REVISED_REPORT,
    AlgorithmInfo,
    DeviceInfo,
    ReportOutcome,
    ai_statement,
    device_observer,
    nodule_label,
    report_description,
    short_ai_statement,
    tracking_identifier,
)
from pacs_node.report.geometry import SlicePosition, circle_radius_px, locate
from pacs_node.report.identity import ObjectIdentity
from pacs_node.report.prior import PriorStatement, prior_items
from pacs_node.report.read import read_findings, read_study_summary

# Re-exported: callers import the report's inputs and its readers with build_report.
__all__ = ["AlgorithmInfo", "DeviceInfo", "ReportOutcome", "build_report", "read_findings", "read_study_summary"]

# -- building --------------------------------------------------------------------------


def _tracking(index: int, finding: Finding) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(identifier=tracking_identifier(index), uid=finding.tracking_uid)


def _nodule_group(
    index: int,
    finding: Finding,
    position: SlicePosition,
    algorithm: AlgorithmInfo,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The TID 1501 group of one nodule (see the module docstring for its layout).

    ``position`` is the finding's centre located in the source series (:func:`locate`).
    """
    radius_px = circle_radius_px(position.image, finding.long_axis_mm / 2)
    circle = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
        graphic_data=np.array(
            [[position.column, position.row], [position.column + radius_px, position.row]], dtype=float
        ),
        source_image=hd.sr.SourceImageForRegion.from_source_image(position.image),
    )
    centre = hd.sr.CoordinatesForMeasurement3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([finding.center_lps_mm], dtype=float),
        frame_of_reference_uid=position.image.FrameOfReferenceUID,
    )
    measurements = [
        hd.sr.Measurement(name=DIAMETER, value=finding.diameter_mm, unit=MM, referenced_coordinates=[circle]),
        hd.sr.Measurement(name=LONG_AXIS, value=round(finding.long_axis_mm, 1), unit=MM),
        hd.sr.Measurement(name=SHORT_AXIS, value=round(finding.short_axis_mm, 1), unit=MM),
    ]
    if finding.solid_core_mm is not None:
        measurements.append(hd.sr.Measurement(name=SOLID_CORE, value=round(finding.solid_core_mm, 1), unit=MM))
    measurements += [
        hd.sr.Measurement(name=CERTAINTY_OF_FINDING, value=round(100 * finding.score, 4), unit=PERCENT),
        hd.sr.Measurement(
            name=VOLUME, value=float(round(finding.volume_mm3)), unit=MM3, referenced_coordinates=[centre]
        ),
        hd.sr.Measurement(name=MEAN_ATTENUATION, value=round(finding.mean_hu, 1), unit=HU),
    ]
    measurements += _change_measurements(finding)
    evaluations = [
        hd.sr.QualitativeEvaluation(name=NODULE_TYPE, value=NODULE_TYPE_CODES[finding.nodule_type]),
        hd.sr.QualitativeEvaluation(name=LUNG_RADS_CATEGORY, value=LUNG_RADS_CODES[finding.lung_rads]),
    ]
    if finding.comparison is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=CHANGE, value=CHANGE_CODES[finding.comparison.trend]))
    if finding.spiculated:
        evaluations.append(hd.sr.QualitativeEvaluation(name=BORDER_SHAPE, value=SPICULATED))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(index, finding),
        finding_type=NODULE,
        algorithm_id=algorithm_id,
        finding_sites=[lobe_site(finding.lobe)],
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    # Row 12 of TID 1501 allows text answers too: OHIF labels the measurement with it.
    label = f"{nodule_label(index, finding)} ({short_ai_statement(algorithm)})"
    group[0].ContentSequence.append(_text(COMMENT, label))
    return group


def _change_measurements(finding: Finding) -> list[hd.sr.Measurement]:
    """The prior's size, the volume change and the VDT of a nodule matched on the prior CT
    (after the nodule's own numbers, so a viewer's first lines stay the same)."""
    change = finding.comparison.change if finding.comparison is not None else None
    if change is None:
        return []
    items = [
        hd.sr.Measurement(name=PRIOR_DIAMETER, value=change.prior_diameter_mm, unit=MM),
        hd.sr.Measurement(name=PRIOR_VOLUME, value=float(round(change.prior_volume_mm3)), unit=MM3),
    ]
    if change.volume_change_percent is not None:
        items.append(hd.sr.Measurement(name=VOLUME_CHANGE, value=round(change.volume_change_percent, 1), unit=PERCENT))
    if change.vdt_days is not None:
        items.append(hd.sr.Measurement(name=VOLUME_DOUBLING_TIME, value=round(change.vdt_days), unit=DAYS))
    return items


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _code(name: Code, value: Code) -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _study_evaluations(
    findings: Sequence[Finding], outcome: ReportOutcome, algorithm: AlgorithmInfo, device: DeviceInfo,
    prior: PriorStatement | None = None, revised: bool = False,
) -> list[hd.sr.ContentItem]:
    """Items of the report-level Qualitative Evaluations container (with ``prior``: what was
    found of the prior CT, :mod:`pacs_node.report.prior`; ``revised``: it replaces an earlier report)."""
    summary = codes.cid6047
    items: list[hd.sr.ContentItem] = [_text(COMMENT, REVISED_REPORT)] if revised else []
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
        items.extend(prior_items(prior) if prior is not None else [_text(COMMENT, LUNG_RADS_NOTE)])
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
    prior: PriorStatement | None = None,
    revised: bool = False,
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
    observer = device_observer(device)
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
            measurements.ContentSequence.extend(_nodule_group(index, finding, position, algorithm, algorithm_id))
        content.append(measurements)
    evaluations = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=contains)
    evaluations.ContentSequence = hd.sr.ContentSequence(
        _study_evaluations(findings, outcome, algorithm, device, prior, revised))
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
                lobe_key(finding.lobe)


def build_report(
    source: Sequence[Dataset],
    findings: Sequence[Finding],
    *,
    outcome: ReportOutcome,
    algorithm: AlgorithmInfo,
    device: DeviceInfo,
    identity: ObjectIdentity,
    prior: PriorStatement | None = None,
    previous_versions: Sequence[Dataset] = (),
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
    identity
        Series and instance of the new object (UIDs and numbers), chosen once per
        analysis by the caller, so that a re-sent object is the same object.
    prior
        What was found of the patient's prior CT (``[priors]`` on), stated in the
        report-level evaluations; ``None``: priors are not looked up.
    previous_versions
        Our earlier SRs this one replaces (a re-report; at least their SOP Class, SOP
        Instance, Study and Series Instance UIDs): listed in the Predecessor Documents
        Sequence, and the report says it is a revision.  Its findings should keep their
        Tracking UIDs (:mod:`pacs_node.analyze.revision`).

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
    content = _measurement_report(source, findings, outcome, algorithm, device, prior, bool(previous_versions))
    report = hd.sr.Comprehensive3DSR(
        evidence=list(source),
        content=content[0],
        **identity.attributes(),
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=list(previous_versions) or None,
        series_description=report_description(findings, outcome, algorithm),
        **device.equipment(),
        coding_schemes=[PRIVATE_CODING_SCHEME],
    )
    report.CompletionFlagDescription = (
        "AI-generated, unverified; NOT FOR DIAGNOSTIC USE" if algorithm.synthetic_data else "AI-generated, unverified"
    )
    return report
