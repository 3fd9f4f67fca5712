"""Reading back a TID 1500 report made by :func:`pacs_node.report.sr.build_report`."""

from __future__ import annotations

import math
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pacs_node.report.codes import (
    BORDER_SHAPE,
    CAD_SUMMARY,
    CERTAINTY_OF_FINDING,
    CHANGE,
    CHANGE_CODES,
    COMMENT,
    DIAMETER,
    LONG_AXIS,
    LUNG_RADS_CATEGORY,
    LUNG_RADS_CODES,
    MEAN_ATTENUATION,
    NODULE_TYPE,
    NODULE_TYPE_CODES,
    NOT_ANALYSED_REASON,
    PRIOR_DIAMETER,
    PRIOR_VOLUME,
    QUALITATIVE_EVALUATIONS,
    SHORT_AXIS,
    SOLID_CORE,
    SPICULATED,
    VOLUME,
    VOLUME_CHANGE,
    VOLUME_DOUBLING_TIME,
)
from pacs_node.report.context import OutcomeStatus, nodule_name

_NODULE_TYPES = {code.value: kind for kind, code in NODULE_TYPE_CODES.items()}
_LUNG_RADS = {code.value: category for category, code in LUNG_RADS_CODES.items()}
_CHANGES = {code.value: trend for trend, code in CHANGE_CODES.items()}


_Group = hd.sr.MeasurementsAndQualitativeEvaluations


def _measurement(group: _Group, name: Code) -> float | None:
    found = group.get_measurements(name=name)
    return float(found[0].value) if found else None


def _evaluation(group: _Group, name: Code) -> hd.sr.CodedConcept | None:
    found = group.get_qualitative_evaluations(name=name)
    value = found[0].value if found else None
    return value if isinstance(value, hd.sr.CodedConcept) else None


def _coordinates(group: _Group, name: Code) -> Dataset | None:
    """The SCOORD or SCOORD3D item a measurement is inferred from (TID 300 INFERRED FROM)."""
    found = group.get_measurements(name=name)
    for item in getattr(found[0][0], "ContentSequence", []) if found else []:
        if item.ValueType in ("SCOORD", "SCOORD3D") and item.RelationshipType == "INFERRED FROM":
            return item
    return None


def _is_code(value: hd.sr.CodedConcept | None, code: Code) -> bool:
    return value is not None and value == code


def _as_report(sr_dataset: Dataset) -> hd.sr.MeasurementReport:
    document = hd.sr.Comprehensive3DSR.from_dataset(sr_dataset, copy=True)
    content = document.content
    if not isinstance(content, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 Measurement Report")
    return content


def read_findings(sr_dataset: Dataset) -> list[dict[str, Any]]:
    """Read the nodules of a report made by :func:`pacs_node.report.sr.build_report`.

    Parameters
    ----------
    sr_dataset
        The SR (as built or as read from a file).

    Returns
    -------
    list[dict]
        One dict per nodule, in report order, with keys ``tracking_id`` (as stored,
        ``Cornerstone3DTools@^0.1.0:CircleROI:Nodule 1``), ``name`` ("Nodule 1"),
        ``tracking_uid``, ``center_lps_mm`` (x, y, z; LPS mm), ``long_axis_mm``,
        ``short_axis_mm``, ``diameter_mm``, ``solid_core_mm`` (or None), ``volume_mm3``, ``mean_hu``, ``score`` (0-1), ``nodule_type``
        (:class:`NoduleType` value, e.g. "solid"), ``lung_rads`` ("1" ... "4X"),
        ``spiculated``, at a follow-up ``change`` ("new", "growing", ...; else None),
        ``prior_diameter_mm``, ``prior_volume_mm3``, ``volume_change_percent``, ``vdt_days``
        (None when absent), ``finding_site`` (code meaning), ``laterality`` (meaning or
        None), and ``circle``: ``{"sop_instance_uid", "center_col_row", "radius_px"}``
        in image coordinates of the referenced slice.
    """
    report = _as_report(sr_dataset)
    nodules = []
    for group in report.get_image_measurement_groups():
        uid = str(group.tracking_uid)
        circle = _coordinates(group, DIAMETER)
        if circle is None or circle.ValueType != "SCOORD":
            raise ValueError(f"measurement group {uid} has no circle (SCOORD) on its diameter")
        data = np.asarray(circle.GraphicData, dtype=float).reshape(-1, 2)
        centre = _coordinates(group, VOLUME)
        nodule_type = _evaluation(group, NODULE_TYPE)
        category = _evaluation(group, LUNG_RADS_CATEGORY)
        certainty = _measurement(group, CERTAINTY_OF_FINDING)
        change = _evaluation(group, CHANGE)
        site = group.finding_sites[0] if group.finding_sites else None
        nodules.append(
            {
                "tracking_id": group.tracking_identifier,
                "name": nodule_name(str(group.tracking_identifier)),
                "tracking_uid": uid,
                "center_lps_mm": None if centre is None else tuple(float(v) for v in centre.GraphicData[:3]),
                "long_axis_mm": _measurement(group, LONG_AXIS),
                "short_axis_mm": _measurement(group, SHORT_AXIS),
                "diameter_mm": _measurement(group, DIAMETER),
                "solid_core_mm": _measurement(group, SOLID_CORE),
                "volume_mm3": _measurement(group, VOLUME),
                "mean_hu": _measurement(group, MEAN_ATTENUATION),
                "score": None if certainty is None else certainty / 100,
                "nodule_type": None if nodule_type is None else _NODULE_TYPES[nodule_type.value].value,
                "lung_rads": None if category is None else _LUNG_RADS[category.value].value,
                "spiculated": _is_code(_evaluation(group, BORDER_SHAPE), SPICULATED),
                "change": None if change is None else _CHANGES[change.value],
                "prior_diameter_mm": _measurement(group, PRIOR_DIAMETER),
                "prior_volume_mm3": _measurement(group, PRIOR_VOLUME),
                "volume_change_percent": _measurement(group, VOLUME_CHANGE),
                "vdt_days": _measurement(group, VOLUME_DOUBLING_TIME),
                "finding_site": None if site is None else site.value.meaning,
                "laterality": None if site is None or site.laterality is None else site.laterality.meaning,
                "circle": {
                    "sop_instance_uid": str(
                        circle.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                    ),
                    "center_col_row": (float(data[0, 0]), float(data[0, 1])),
                    "radius_px": float(math.dist(data[0], data[1])),
                },
            }
        )
    return nodules


def read_study_summary(sr_dataset: Dataset) -> dict[str, Any]:
    """Read the report-level statements of a report made by :func:`pacs_node.report.sr.build_report`.

    Returns
    -------
    dict
        ``outcome`` ("analysed" or "not_analysable"), ``reason`` (or None),
        ``nodules_detected`` (bool), ``lung_rads`` (study category, or None when not
        analysed), ``comments`` (the TEXT comments, in order), ``compared_with_prior``
        (True or False when the report states it, else None) and ``prior_study_uid``.
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
        "compared_with_prior": None,
        "prior_study_uid": None,
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
            elif name == codes.DCM.ComparisonWithPriorStudyDone:
                summary["compared_with_prior"] = value.CodeValue == codes.SCT.Yes.value
        elif item.ValueType == "UIDREF" and name == codes.DCM.StudyInstanceUID:
            summary["prior_study_uid"] = str(item.UID)
        elif item.ValueType == "TEXT":
            if name == NOT_ANALYSED_REASON:
                summary["reason"] = item.TextValue
            elif name == COMMENT:
                summary["comments"].append(item.TextValue)
    return summary


def _concept(item: Dataset) -> Code:
    concept = item.ConceptNameCodeSequence[0]
    return Code(concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning)
