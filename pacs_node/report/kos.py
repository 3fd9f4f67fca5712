"""Key Object Selection document: flags the key images and the CT slices with findings.

PACS that show "key images" (a star on the study, a key-image filter) read them from
a Key Object Selection document (PS3.3 A.35.4, content TID 2010).  This one is titled
Of Interest (113000, DCM) and holds, in this order:

- the observer context: our device (as in the SR);
- a Key Object Description (113012, DCM) listing the nodules and the AI statement;
- IMAGE references to the key images (:mod:`pacs_node.report.keyimages`: the overview,
  then one per nodule) and, after them, to the CT slices nearest each nodule's centre
  (:func:`pacs_node.report.geometry.locate`; each slice once, in nodule order).

Every referenced instance is listed as evidence (Current Requested Procedure
Evidence Sequence), all in the source's study.

Only a series with findings gets one: without nodules the only key image is the
overview page that says so, and flagging it Of Interest would mark a negative study
as having key images in the PACS's worklist.  A destination that takes "kos" must
also take "key_image" (:class:`pacs_node.config.Destination` checks), so the
references resolve in its PACS.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset

from pacs_node.imaging.findings import Finding, category_basis, study_category
from pacs_node.report.codes import OF_INTEREST
from pacs_node.report.context import (
    NOT_FOR_DIAGNOSTIC_USE,
    AlgorithmInfo,
    DeviceInfo,
    ai_statement,
    device_observer,
    nodule_label,
    series_description,
)
from pacs_node.report.geometry import locate
from pacs_node.report.identity import ObjectIdentity


def _description(
    findings: Sequence[Finding], slices: Sequence[Dataset], algorithm: AlgorithmInfo, device: DeviceInfo
) -> str:
    """The Key Object Description: the nodules, where they are, and the AI statement."""
    lines = [
        f"AI lung nodule findings: {len(findings)} nodule(s); "
        f"Lung-RADS (AI, {category_basis(list(findings))}) {study_category(list(findings)).value}."
    ]
    for index, (finding, image) in enumerate(zip(findings, slices, strict=True), start=1):
        lines.append(f"{nodule_label(index, finding)} (CT image {image.get('InstanceNumber', '?')}).")
    lines.append(ai_statement(algorithm, device))
    if algorithm.synthetic_data:
        lines.append(NOT_FOR_DIAGNOSTIC_USE)
    return "\n".join(lines)


def build_kos(
    source: Sequence[Dataset],
    findings: Sequence[Finding],
    key_images: Sequence[Dataset],
    *,
    algorithm: AlgorithmInfo,
    device: DeviceInfo,
    identity: ObjectIdentity,
) -> hd.ko.KeyObjectSelectionDocument:
    """Build the "Of Interest" Key Object Selection of one analysed CT series.

    Parameters
    ----------
    source
        The CT slices of the series, any order (headers suffice).
    findings
        At least one nodule, in the SR's order; centres in patient coordinates (LPS, mm).
    key_images
        The key images of the same analysis (:func:`pacs_node.report.keyimages.build_key_images`),
        all referenced in their order.
    algorithm, device
        As for :func:`pacs_node.report.sr.build_report`.
    identity
        Series and instance of the new object (UIDs and numbers), chosen once per
        analysis by the caller, so that a re-sent object is the same object.

    Raises
    ------
    ValueError
        Without findings or key images, when the key images belong to another study,
        or when a finding lies outside the series.
    """
    if not findings:
        raise ValueError("a key object selection needs at least one finding to flag")
    if not key_images:
        raise ValueError("key_images must hold the key images of the analysis, got none")
    study = {str(ds.StudyInstanceUID) for ds in [*source, *key_images]}
    if len(study) != 1:
        raise ValueError(f"source and key images must belong to one study, got {sorted(study)}")
    slices = [locate(source, finding.center_lps_mm).image for finding in findings]
    unique_slices = list({str(ds.SOPInstanceUID): ds for ds in slices}.values())
    referenced = [*key_images, *unique_slices]
    observer = device_observer(device)
    content = hd.ko.KeyObjectSelection(
        document_title=OF_INTEREST,
        referenced_objects=referenced,
        observer_device_context=observer,
        description=_description(findings, slices, algorithm, device),
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=referenced,
        content=content,
        **identity.attributes(),
        **device.equipment(),
        series_description=series_description("key objects", algorithm),
    )
