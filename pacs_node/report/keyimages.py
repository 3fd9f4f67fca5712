"""Secondary Capture key images: one per nodule, and one overview of all findings.

For viewers that show no SR graphics (Weasis, most PACS thumbnails), the findings
are burned into pictures, in the source's study and a new series:

- per nodule, the CT slice nearest its centre (:func:`pacs_node.report.geometry.locate`)
  in a lung window (width 1500 HU, level -600 HU), on the CT's own pixel grid with
  its Pixel Spacing, so a viewer's ruler still measures mm; the nodule is ringed and
  labelled with its number, mean diameter, type and Lung-RADS category; at a follow-up,
  a nodule new since the prior CT says "NEW since prior yyyy-mm-dd", and one matched on
  the prior shows prior and current side by side with both sizes, the volume change and
  the VDT (:mod:`pacs_node.report.keyimage_compare`, which says how the two panels share
  one Pixel Spacing and how the prior slice is referenced);
- one overview page listing every finding ("no nodules detected" when none; the
  reason when the series could not be analysed).

Every image carries the AI statement and, for a model trained on synthetic data
only, "NOT FOR DIAGNOSTIC USE" in its pixels, its Image Comments and its Derivation
Description; Burned In Annotation is YES.

Images are RGB (8 bits per sample).  A coloured ring and coloured text cannot be
mistaken for anatomy, which a white ring on a greyscale CT can (it looks like a
calcified rim), and RGB pixels are shown as stored: no VOI LUT of the viewer can
wash out the annotation or change the lung window that was burned in.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from pacs_node.imaging.findings import Finding, category_basis, study_category
from pacs_node.report._drawing import (
    BAND,
    LUNG_WINDOW_CENTER,
    LUNG_WINDOW_WIDTH,
    RING,
    TEXT,
    WARNING,
    Colour,
    disclaimer_lines,
    fit_font,
    font,
    lung_window,
    ring,
    text_block,
    wrap,
)
from pacs_node.report.context import (
    NO_NODULES_DETECTED,
    NOT_FOR_DIAGNOSTIC_USE,
    AlgorithmInfo,
    DeviceInfo,
    ReportOutcome,
    ai_statement,
    copy_body_part,
    nodule_label,
    series_description,
)
from pacs_node.report.geometry import SlicePosition, locate, ring_radius_px
from pacs_node.report.identity import ObjectIdentity, SeriesIdentity
from pacs_node.report.keyimage_compare import PriorView, caption, new_since_prior, render_comparison
from pacs_node.report.prior import PriorStatement

#: (121322, DCM, "Source image for image processing operation")
SOURCE_IMAGE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation

OVERVIEW_WIDTH = 768
OVERVIEW_MIN_HEIGHT = 512


def render_nodule(
    position: SlicePosition, finding: Finding, index: int, algorithm: AlgorithmInfo, remark: str | None = None,
) -> np.ndarray:
    """The key image of one nodule: its slice in the lung window, ringed and labelled.

    Parameters
    ----------
    position
        The nodule's centre located in the series (slice, column, row).
    finding
        The nodule; the ring's radius is half its long axis plus a margin, so the ring
        encloses the nodule without covering its edge.
    index
        The nodule's number, as in the SR ("Nodule <index>").
    algorithm
        For the burned-in statements.
    remark
        A second header line, e.g. "NEW since prior 2025-01-01".

    Returns
    -------
    numpy.ndarray
        ``rows x columns x 3`` uint8 RGB, on the slice's pixel grid.
    """
    grey = lung_window(position.image)
    rows, columns = grey.shape
    picture = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")
    draw = ImageDraw.Draw(picture)
    scale = max(columns, rows) / 512
    margin = max(2, round(6 * scale))
    header = [(f"{nodule_label(index, finding)} (AI score {finding.score:.2f})", RING)]
    if remark:
        header.append((remark, RING))
    footer = disclaimer_lines(algorithm)
    # One line per statement, in a font that fits the width; on images too small for
    # that (under about 300 pixels) lines are cut rather than wrapped over the anatomy.
    face, size = fit_font([*header, *footer], columns - 2 * margin, max(8, round(15 * scale)))
    line_height = round(size * 1.3)
    ring(draw, (position.column, position.row), ring_radius_px(position.image, finding.long_axis_mm), index, face,
         line_height=line_height, width=max(1, round(2 * scale)))
    footer_top = rows - len(footer) * line_height - margin
    for lines, top in ((header, 0), (footer, footer_top)):
        text_block(
            draw, lines, face, top=top, width=columns, margin=margin, line_height=line_height, band=True, wrap=False
        )
    return np.asarray(picture, dtype=np.uint8)


def overview_lines(
    source_image: Dataset,
    findings: Sequence[Finding],
    positions: Sequence[SlicePosition],
    outcome: ReportOutcome,
    algorithm: AlgorithmInfo,
    prior: PriorStatement | None = None,
) -> list[tuple[str, Colour]]:
    """The overview page's text lines and their colours (the prior's sentence after the summary)."""
    series = f"CT series {source_image.get('SeriesNumber', '')} {source_image.get('SeriesDescription', '')}".strip()
    lines: list[tuple[str, Colour]] = [(series, TEXT), ("", TEXT)]
    if not outcome.is_analysed:
        lines.append((f"Series not analysed: {outcome.reason}", WARNING))
    elif not findings:
        lines.append((NO_NODULES_DETECTED, TEXT))
        lines.append(("Lung-RADS (AI, baseline table): 1", TEXT))
    else:
        lines.append(
            (f"{len(findings)} nodule(s); Lung-RADS (AI, {category_basis(list(findings))}): "
             f"{study_category(list(findings)).value}", TEXT)
        )
        for index, (finding, position) in enumerate(zip(findings, positions, strict=True), start=1):
            where = f", {finding.lobe}" if finding.lobe else ""
            lines.append(
                (
                    f"{nodule_label(index, finding)}{where}; long/short axis {finding.long_axis_mm:.1f}/"
                    f"{finding.short_axis_mm:.1f} mm, volume {finding.volume_mm3:.0f} mm3, "
                    f"image {position.image.get('InstanceNumber', '?')}, AI score {finding.score:.2f}",
                    RING,
                )
            )
    if prior is not None and outcome.is_analysed:
        lines.append((prior.sentence(), TEXT))
    lines.append(("", TEXT))
    lines.extend(disclaimer_lines(algorithm))
    return lines


def render_overview(lines: Sequence[tuple[str, Colour]]) -> np.ndarray:
    """The overview page: its title and ``lines`` (:func:`overview_lines`: every finding, the statements).

    Returns
    -------
    numpy.ndarray
        ``height x 768 x 3`` uint8 RGB, at least 512 rows, more when the list is long.
    """
    width = OVERVIEW_WIDTH
    body = font(18)
    title_font = font(24)
    line_height = 26
    margin = 16
    title = "AI lung nodule findings"
    wrapped = sum(len(wrap(text, body, width - 2 * margin)) for text, _ in lines)
    height = max(OVERVIEW_MIN_HEIGHT, 2 * margin + 40 + wrapped * line_height)
    picture = Image.new("RGB", (width, height), BAND)
    draw = ImageDraw.Draw(picture)
    draw.text((margin, margin), title, fill=TEXT, font=title_font)
    text_block(
        draw, lines, body, top=margin + 40, width=width, margin=margin, line_height=line_height, band=False, wrap=True
    )
    return np.asarray(picture, dtype=np.uint8)


def _patient_orientation(image: Dataset) -> tuple[str, str]:
    """Patient Orientation of an image's row and column directions, e.g. ("L", "P").

    Each direction is named by its dominant LPS axis (oblique components dropped).
    """
    cosines = np.asarray([float(v) for v in image.ImageOrientationPatient]).reshape(2, 3)
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    names = []
    for direction in cosines:
        axis = int(np.argmax(np.abs(direction)))
        names.append(letters[axis][int(direction[axis] > 0)])
    return names[0], names[1]


def _source_reference(image: Dataset, spatial_locations_preserved: bool | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = image.SOPClassUID
    item.ReferencedSOPInstanceUID = image.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(SOURCE_IMAGE_PURPOSE)]
    if spatial_locations_preserved is not None:
        item.SpatialLocationsPreserved = "YES" if spatial_locations_preserved else "NO"
    return item


def _secondary_capture(
    reference: Dataset,
    pixels: np.ndarray,
    *,
    identity: ObjectIdentity,
    patient_orientation: tuple[str, str],
    algorithm: AlgorithmInfo,
    device: DeviceInfo,
) -> hd.sc.SCImage:
    """An 8-bit RGB SC image in ``reference``'s patient and study, made by our device."""
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        **identity.attributes(),
        patient_orientation=patient_orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description("nodule key images", algorithm),
        **device.equipment(),
    )


def _finish(
    image: hd.sc.SCImage,
    reference: Dataset,
    sources: Sequence[Dataset],
    derivation: str,
    algorithm: AlgorithmInfo,
    device: DeviceInfo,
    caption: str = "",
    spatial_locations_preserved: bool | None = None,
) -> hd.sc.SCImage:
    """Attributes every key image carries.

    Body Part Examined comes from the CT (``reference``); without it, Laterality
    (type 2C) is present and empty, meaning unknown.  Image Comments hold ``caption``
    (what the image shows, if anything needs saying), then the AI statements.
    """
    copy_body_part(image, reference)
    image.BurnedInAnnotation = "YES"
    image.RecognizableVisualFeatures = "NO"
    image.LossyImageCompression = "00"
    image.ConversionType = "WSD"
    image.DerivationDescription = derivation[:1024]
    statements = [ai_statement(algorithm, device)]
    if algorithm.synthetic_data:
        statements.append(NOT_FOR_DIAGNOSTIC_USE)
    image.ImageComments = " ".join([caption, *statements] if caption else statements)
    if sources:
        unique = {str(ds.SOPInstanceUID): ds for ds in sources}
        image.SourceImageSequence = [_source_reference(ds, spatial_locations_preserved) for ds in unique.values()]
    return image


def _derivation(what: str, algorithm: AlgorithmInfo) -> str:
    text = f"{what}; findings of AI algorithm {algorithm.name} {algorithm.version} burned in."
    if algorithm.synthetic_data:
        text += f" {NOT_FOR_DIAGNOSTIC_USE}."
    return text


def build_key_images(
    source: Sequence[Dataset],
    findings: Sequence[Finding],
    *,
    outcome: ReportOutcome,
    algorithm: AlgorithmInfo,
    device: DeviceInfo,
    series: SeriesIdentity,
    sop_instance_uids: Sequence[str],
    prior: PriorStatement | None = None,
    prior_views: Sequence[PriorView | None] = (),
) -> list[hd.sc.SCImage]:
    """Build the key images of one analysed CT series.

    Parameters
    ----------
    source
        The CT slices of the series, any order (with pixel data).
    findings
        Nodules, numbered 1, 2, ... in this order as in the SR; centres in patient
        coordinates (LPS, mm).  Empty without nodules or when not analysed.
    outcome, algorithm, device
        As for :func:`pacs_node.report.sr.build_report`.
    series
        The key image series (UID and number), chosen once per analysis by the caller.
    sop_instance_uids
        One UID per image: the overview first, then one per finding in order
        (``1 + len(findings)`` UIDs); Instance Numbers run 1 (overview), 2, ...
    prior
        What was found of the prior CT (``[priors]`` on): its sentence on the overview,
        its date on the image of a nodule new since then.
    prior_views
        Empty, or one per finding: the prior slice of a nodule matched on the prior CT
        (its image shows prior and current side by side,
        :mod:`pacs_node.report.keyimage_compare`), ``None`` for the others.

    Returns
    -------
    list[highdicom.sc.SCImage]
        The overview, then one image per nodule, in the source's study.

    Raises
    ------
    ValueError
        When the number of UIDs or prior views does not match, findings come with a
        not-analysable outcome, a finding lies outside the series, or a finding with a
        prior view has no change since the prior.
    """
    if not source:
        raise ValueError("source must hold the slices of the analysed series, got none")
    if not outcome.is_analysed and findings:
        raise ValueError(f"a series that was not analysed cannot have findings, got {len(findings)}")
    if len(sop_instance_uids) != 1 + len(findings):
        raise ValueError(
            f"sop_instance_uids needs {1 + len(findings)} UIDs (overview + one per finding), "
            f"got {len(sop_instance_uids)}"
        )
    if prior_views and len(prior_views) != len(findings):
        raise ValueError(f"prior_views needs one entry per finding ({len(findings)}), got {len(prior_views)}")
    positions = [locate(source, finding.center_lps_mm) for finding in findings]
    reference = min(source, key=lambda ds: int(ds.get("InstanceNumber") or 0))
    overview = _secondary_capture(
        reference,
        render_overview(overview_lines(reference, findings, positions, outcome, algorithm, prior)),
        identity=series.instance(sop_instance_uids[0], 1),
        patient_orientation=("L", "P"),  # placeholder, emptied below
        algorithm=algorithm,
        device=device,
    )
    # A text page has no anatomy: Patient Orientation (type 2) is present and empty.
    overview.add_new("PatientOrientation", "CS", None)
    images = [
        _finish(
            overview,
            reference,
            [position.image for position in positions],
            _derivation("Text summary of the AI analysis of the CT series", algorithm),
            algorithm,
            device,
        )
    ]
    views = list(prior_views) or [None] * len(findings)
    for index, (finding, position, view, uid) in enumerate(
        zip(findings, positions, views, sop_instance_uids[1:], strict=True), start=1
    ):
        identity = series.instance(uid, index + 1)
        if view is None:
            images.append(_nodule_image(position, finding, index, identity, prior, algorithm, device))
        else:
            images.append(_comparison_image(position, finding, index, view, identity, algorithm, device))
    return images


def _nodule_image(
    position: SlicePosition, finding: Finding, index: int, identity: ObjectIdentity,
    prior: PriorStatement | None, algorithm: AlgorithmInfo, device: DeviceInfo,
) -> hd.sc.SCImage:
    """One nodule on its slice; a nodule new since the prior says so."""
    slice_ = position.image
    comparison = finding.comparison
    new = comparison is not None and comparison.prior is None
    remark = new_since_prior(prior.study_date if prior is not None else "") if new else None
    image = _secondary_capture(
        slice_,
        render_nodule(position, finding, index, algorithm, remark),
        identity=identity,
        patient_orientation=_patient_orientation(slice_),
        algorithm=algorithm,
        device=device,
    )
    # Same pixel grid as the CT: its Pixel Spacing, as written, keeps rulers in mm.
    image.PixelSpacing = list(slice_.PixelSpacing)
    derivation = _derivation(
        f"CT image {slice_.get('InstanceNumber', '')} rendered in lung window "
        f"W{LUNG_WINDOW_WIDTH:.0f}/L{LUNG_WINDOW_CENTER:.0f} on its own pixel grid; nodule {index} ringed",
        algorithm,
    )
    comment = f"{nodule_label(index, finding)}: {remark}." if remark else ""
    return _finish(image, slice_, [slice_], derivation, algorithm, device, comment)


def _comparison_image(
    position: SlicePosition, finding: Finding, index: int, view: PriorView, identity: ObjectIdentity,
    algorithm: AlgorithmInfo, device: DeviceInfo,
) -> hd.sc.SCImage:
    """One nodule matched on the prior: prior and current side by side (:mod:`~pacs_node.report.keyimage_compare`)."""
    slice_, before = position.image, view.position.image
    image = _secondary_capture(
        slice_,
        render_comparison(position, finding, index, view, algorithm),
        identity=identity,
        patient_orientation=_patient_orientation(slice_),  # the prior panel is resampled to the same directions
        algorithm=algorithm,
        device=device,
    )
    # Both panels are on the current slice's pixel spacing (the prior's resampled to it).
    image.PixelSpacing = list(slice_.PixelSpacing)
    derivation = _derivation(
        f"Prior CT image {before.get('InstanceNumber', '')} resampled (bilinear) to the pixel spacing of current CT "
        f"image {slice_.get('InstanceNumber', '')}, side by side, in lung window "
        f"W{LUNG_WINDOW_WIDTH:.0f}/L{LUNG_WINDOW_CENTER:.0f}; nodule {index} ringed on both",
        algorithm,
    )
    return _finish(image, slice_, [slice_, before], derivation, algorithm, device,
                   caption(finding, index, view, slice_), spatial_locations_preserved=False)
