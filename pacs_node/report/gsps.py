"""Grayscale Softcopy Presentation State: the nodules marked on the original CT slices.

Many PACS viewers ignore SR measurements but apply a presentation state: this one
makes them show, on the CT series itself (not on burned-in copies),

- per nodule, on the slice nearest its centre (:func:`pacs_node.report.geometry.locate`),
  a CIRCLE in PIXEL units around it (the same ring as on its key image:
  :func:`pacs_node.report.geometry.ring_radius_px`) and a text label with its number,
  mean diameter, type, Lung-RADS category and the AI statement, boxed above the ring
  (below it when there is no room above) with a visible anchor line to the ring;
- a lung window (VOI LUT width 1500 HU, centre -600 HU, as the key images) on every
  slice of the series, with the slices' own Modality LUT (Rescale Slope/Intercept).

Circle and label of a nodule form one Graphic Group "Nodule <n>" and carry the SR's
Tracking Identifier (ending in "Nodule <n>") and Tracking UID (``Finding.tracking_uid``), all on
one graphic layer.  Graphic coordinates are image coordinates (column, row) with
(0, 0) at the top-left corner of the top-left pixel, as in the SR's SCOORDs.

A presentation state needs something to present: a series without findings (or one
that was not analysed) gets none.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from pacs_node.imaging.findings import Finding
from pacs_node.report.context import (
    AlgorithmInfo,
    DeviceInfo,
    copy_body_part,
    nodule_label,
    series_description,
    short_ai_statement,
    tracking_identifier,
)
from pacs_node.report.geometry import SlicePosition, locate, ring_radius_px
from pacs_node.report.identity import ObjectIdentity
from pacs_node.report.keyimages import LUNG_WINDOW_CENTER, LUNG_WINDOW_WIDTH, RING

#: Presentation State Identification: Content Label (CS) and the graphic layer's name.
CONTENT_LABEL = "AI_NODULES"
LAYER = "AI_NODULES"


def _circle(position: SlicePosition, radius: float) -> np.ndarray:
    """CIRCLE graphic data: the centre, then a point on the circle inside the image."""
    columns = float(position.image.Columns)
    cx, cy = position.column, position.row
    radius = min(radius, max(cx, columns - cx))
    edge_x = cx + radius if cx + radius <= columns else cx - radius
    return np.array([[cx, cy], [edge_x, cy]], dtype=float)


def _label_box(position: SlicePosition, radius: float) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    """Bounding box (left, top, right, bottom) of a label and its anchor on the ring.

    The box is about half the image wide and two text lines high, centred over the
    ring, moved sideways to stay inside the image; it sits below the ring when the
    space above is too small.  The anchor is the ring's top (or bottom) point.
    """
    columns, rows = float(position.image.Columns), float(position.image.Rows)
    width = min(columns - 2, max(0.5 * columns, 8.0))
    height = min(rows / 4, max(0.07 * rows, 8.0))
    gap = max(1.0, 0.01 * rows)
    left = float(np.clip(position.column - width / 2, 1, columns - 1 - width))
    cx, cy = position.column, position.row
    if cy - radius - gap - height >= 1:
        top, anchor = cy - radius - gap - height, (cx, cy - radius)
    else:
        top = min(cy + radius + gap, rows - 1 - height)
        anchor = (cx, min(cy + radius, rows))
    return (left, top, left + width, top + height), anchor


def _annotation(
    index: int, finding: Finding, position: SlicePosition, algorithm: AlgorithmInfo, layer: hd.pr.GraphicLayer
) -> tuple[hd.pr.GraphicGroup, hd.pr.GraphicAnnotation]:
    """The graphic group and annotation (ring and label) of one nodule on its slice."""
    tracking = {"tracking_id": tracking_identifier(index), "tracking_uid": finding.tracking_uid}
    label = nodule_label(index, finding)
    group = hd.pr.GraphicGroup(graphic_group_id=index, label=f"Nodule {index}", description=label)
    radius = ring_radius_px(position.image, finding.long_axis_mm)
    circle = hd.pr.GraphicObject(
        graphic_type=hd.pr.GraphicTypeValues.CIRCLE,
        graphic_data=_circle(position, radius),
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        graphic_group=group,
        **tracking,
    )
    box, anchor = _label_box(position, radius)
    text = hd.pr.TextObject(
        text_value=f"{label}\r\n{short_ai_statement(algorithm)}",
        units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=box,
        anchor_point=anchor,
        anchor_point_visible=True,
        text_justification=hd.pr.TextJustificationValues.CENTER,
        graphic_group=group,
        **tracking,
    )
    annotation = hd.pr.GraphicAnnotation(
        referenced_images=[position.image], graphic_layer=layer, graphic_objects=[circle], text_objects=[text]
    )
    return group, annotation


def build_gsps(
    source: Sequence[Dataset],
    findings: Sequence[Finding],
    *,
    algorithm: AlgorithmInfo,
    device: DeviceInfo,
    identity: ObjectIdentity,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Build the presentation state that marks the findings on the CT series.

    Parameters
    ----------
    source
        The CT slices of the analysed series, any order; all of them are referenced
        (the lung window applies to the whole series).
    findings
        At least one nodule, numbered 1, 2, ... in this order as in the SR; centres
        in patient coordinates (LPS, mm).
    algorithm, device
        As for :func:`pacs_node.report.sr.build_report`.
    identity
        Series and instance of the new object (UIDs and numbers), chosen once per
        analysis by the caller, so that a re-sent object is the same object.

    Raises
    ------
    ValueError
        Without findings, or when a finding lies outside the series.
    """
    if not findings:
        raise ValueError("a presentation state needs at least one finding to mark")
    slices = hd.spatial.sort_datasets(list(source))
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER,
        order=1,
        description="AI lung nodule marks",
        display_color=hd.color.CIELabColor.from_rgb(*RING),
    )
    groups, annotations = [], []
    for index, finding in enumerate(findings, start=1):
        group, annotation = _annotation(index, finding, locate(slices, finding.center_lps_mm), algorithm, layer)
        groups.append(group)
        annotations.append(annotation)
    # One-item lists: highdicom 0.28 splits a plain string explanation into one value per letter.
    window = hd.pr.SoftcopyVOILUTTransformation(
        window_center=[LUNG_WINDOW_CENTER], window_width=[LUNG_WINDOW_WIDTH], window_explanation=["LUNG"]
    )
    state = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=slices,
        **identity.attributes(),
        **device.equipment(),
        content_label=CONTENT_LABEL,
        content_description=series_description("nodule marks", algorithm),
        graphic_annotations=annotations,
        graphic_layers=[layer],
        graphic_groups=groups,
        voi_lut_transformations=[window],
        series_description=series_description("nodule marks", algorithm),
    )
    copy_body_part(state, slices[0])
    return state
