"""DICOM Segmentation of the nodules: one binary segment per nodule on the CT's grid.

Segments
--------
Segment *n* is "Nodule <n>", with the SR's Tracking Identifier
(:func:`pacs_node.report.context.tracking_identifier`, ending in "Nodule <n>") and Tracking UID (``Finding.tracking_uid``), so a viewer can tie a segment to its
measurement group.  Property category Morphologically Abnormal Structure (49755003,
SCT), type Nodule (27925004, SCT); anatomic region the nodule's lobe or the lung;
algorithm type AUTOMATIC with the detection algorithm (family Artificial
Intelligence, 123110 DCM).

Masks are derived, not segmented
--------------------------------
A :class:`pacs_node.imaging.findings.Finding` carries a centre, long and short
in-plane axes and a volume, but no voxel mask and no direction of the long axis.
Each segment is therefore a spheroid drawn on the source CT geometry:

- in-plane, a circle of radius ``sqrt(long/2 * short/2)`` (the area of the measured
  ellipse, whose orientation is unknown);
- along the slice normal, semi-axis ``c`` from the volume, ``V = 4/3 pi r^2 c``,
  kept between 0.5 and 1.5 times ``r`` (a sphere when the volume is 0);
- a pixel belongs to the segment when its centre lies inside; the pixel holding the
  nodule's centre on its nearest slice always does, so even a nodule smaller than a
  voxel has a frame there.

The SEG holds only frames with segment pixels (BINARY, one frame per slice and
segment), and references only the CT slices it covers.  Frames carry the slices' own
plane positions, so OHIF and other viewers overlay them on the CT.

A series without findings (or one that was not analysed) gets no segmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset

from pacs_node.imaging.findings import Finding
from pacs_node.report.codes import (
    ARTIFICIAL_INTELLIGENCE,
    LOBES,
    LUNG,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    NODULE,
    lobe_key,
)
from pacs_node.report.context import (
    AlgorithmInfo,
    DeviceInfo,
    copy_body_part,
    series_description,
    tracking_identifier,
)
from pacs_node.report.geometry import image_coordinates, locate
from pacs_node.report.identity import ObjectIdentity
from pacs_node.report.keyimages import RING

CONTENT_LABEL = "AI_NODULES"


def spheroid_axes_mm(finding: Finding) -> tuple[float, float]:
    """In-plane radius and semi-axis along the slice normal of a finding's spheroid, mm."""
    radius = math.sqrt(finding.long_axis_mm * finding.short_axis_mm) / 2
    if finding.volume_mm3 <= 0:
        return radius, radius
    depth = 3 * finding.volume_mm3 / (4 * math.pi * radius**2)
    return radius, min(max(depth, 0.5 * radius), 1.5 * radius)


def slice_mask(image: Dataset, finding: Finding) -> np.ndarray:
    """``rows x columns`` bool: the pixels of ``image`` whose centres lie in the finding's spheroid."""
    rows, columns = int(image.Rows), int(image.Columns)
    radius, depth = spheroid_axes_mm(finding)
    column, row, distance = image_coordinates(image, np.array([finding.center_lps_mm]))[0]
    if abs(distance) >= depth:
        return np.zeros((rows, columns), dtype=bool)
    in_plane = radius * math.sqrt(1 - (distance / depth) ** 2)
    row_mm, column_mm = (float(v) for v in image.PixelSpacing)
    dy = (np.arange(rows) + 0.5 - row) * row_mm
    dx = (np.arange(columns) + 0.5 - column) * column_mm
    return dy[:, None] ** 2 + dx[None, :] ** 2 <= in_plane**2


def nodule_masks(source: Sequence[Dataset], findings: Sequence[Finding]) -> tuple[list[Dataset], np.ndarray]:
    """The slices any nodule touches, in source order, and their masks.

    Returns
    -------
    tuple[list[pydicom.Dataset], numpy.ndarray]
        The slices, and a ``slices x rows x columns x findings`` uint8 array (1 inside).
    """
    masks: dict[str, np.ndarray] = {}
    for number, finding in enumerate(findings):
        nearest = locate(source, finding.center_lps_mm)
        depth = spheroid_axes_mm(finding)[1]
        for image in source:
            distance = image_coordinates(image, np.array([finding.center_lps_mm]))[0, 2]
            if abs(distance) >= depth and image is not nearest.image:
                continue
            mask = slice_mask(image, finding)
            if image is nearest.image:
                mask[min(int(nearest.row), mask.shape[0] - 1), min(int(nearest.column), mask.shape[1] - 1)] = True
            if mask.any():
                uid = str(image.SOPInstanceUID)
                if uid not in masks:
                    masks[uid] = np.zeros((*mask.shape, len(findings)), dtype=np.uint8)
                masks[uid][:, :, number] = mask
    touched = [image for image in source if str(image.SOPInstanceUID) in masks]
    return touched, np.stack([masks[str(image.SOPInstanceUID)] for image in touched])


def _segment(
    number: int, finding: Finding, algorithm_id: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    """The description of segment ``number``: the nodule, as the SR tracks it."""
    region = LOBES[lobe_key(finding.lobe)][0] if finding.lobe else LUNG
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=f"Nodule {number}",
        segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=NODULE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_id,
        tracking_uid=finding.tracking_uid,
        tracking_id=tracking_identifier(number),
        anatomic_regions=[region],
        display_color=hd.color.CIELabColor.from_rgb(*RING),
    )


def build_seg(
    source: Sequence[Dataset],
    findings: Sequence[Finding],
    *,
    algorithm: AlgorithmInfo,
    device: DeviceInfo,
    identity: ObjectIdentity,
) -> hd.seg.Segmentation:
    """Build the binary segmentation of the findings of one analysed CT series.

    Parameters
    ----------
    source
        The CT slices of the series, any order (headers suffice).
    findings
        At least one nodule, numbered (segment 1, 2, ...) in this order as in the SR.
    algorithm, device
        As for :func:`pacs_node.report.sr.build_report`.
    identity
        Series and instance of the new object (UIDs and numbers), chosen once per
        analysis by the caller, so that a re-sent object is the same object.

    Raises
    ------
    ValueError
        Without findings, with an unknown lobe, or when a finding lies outside the series.
    """
    if not findings:
        raise ValueError("a segmentation needs at least one finding")
    slices, masks = nodule_masks(hd.spatial.sort_datasets(list(source)), findings)
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.name, family=ARTIFICIAL_INTELLIGENCE, version=algorithm.version
    )
    description = series_description("nodule segmentation", algorithm)
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(n, f, algorithm_id) for n, f in enumerate(findings, start=1)],
        **identity.attributes(),
        **device.equipment(),
        content_label=CONTENT_LABEL,
        content_description=description,
        series_description=description,
        omit_empty_frames=True,
    )
    copy_body_part(seg, slices[0])
    return seg
