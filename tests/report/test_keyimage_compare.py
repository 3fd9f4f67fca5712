"""Follow-up key images: a matched nodule's prior and current side by side, a new nodule says NEW."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from pacs_node.db.models import PriorStatus
from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.imaging.growth import Acquisition
from pacs_node.imaging.lungrads_followup import compare_nodule
from pacs_node.ml.ct_series import SeriesIdentity as CTIdentity
from pacs_node.ml.ct_series import write_ct_series
from pacs_node.report.context import ReportOutcome
from pacs_node.report.geometry import locate
from pacs_node.report.identity import SeriesIdentity
from pacs_node.report._drawing import window_hu
from pacs_node.report.keyimage_compare import PriorView, change_lines
from pacs_node.report.keyimages import RING, build_key_images, lung_window
from pacs_node.report.prior import PriorStatement
from tests.report import BLOBS, LUNG_HU, NODULE_HU, SPACING_ZYX_MM, dciodvfy, findings, write_series
from tests.report.test_keyimages import ALGORITHM, DEVICE

PRIOR_DATE = "20250101"
#: The prior CT: other pixel spacing, slice spacing, origin and size than the current one
#: (tests/report: 0.8 x 0.6 mm pixels, 1.25 mm slices, 64 x 64); its nodule (radius 2 mm)
#: lies on slice 10 at another place in the image than the current nodule 1.
PRIOR_SPACING_ZYX_MM = (2.0, 0.7, 0.7)
PRIOR_ORIGIN_XYZ_MM = (-25.0, -33.0, -110.0)
PRIOR_SHAPE_ZYX = (24, 72, 72)
PRIOR_NODULE_ZYX = (10, 30, 45)
PRIOR_RADIUS_MM = 2.0


def _prior_series(folder: Path) -> list[Dataset]:
    z, y, x = np.mgrid[: PRIOR_SHAPE_ZYX[0], : PRIOR_SHAPE_ZYX[1], : PRIOR_SHAPE_ZYX[2]].astype(float)
    (dz, dy, dx), (k, r, c) = PRIOR_SPACING_ZYX_MM, PRIOR_NODULE_ZYX
    volume = np.full(PRIOR_SHAPE_ZYX, LUNG_HU)
    volume[((z - k) * dz) ** 2 + ((y - r) * dy) ** 2 + ((x - c) * dx) ** 2 <= PRIOR_RADIUS_MM**2] = NODULE_HU
    identity = CTIdentity(study_date=PRIOR_DATE)
    paths = write_ct_series(volume, PRIOR_SPACING_ZYX_MM, PRIOR_ORIGIN_XYZ_MM, folder, identity)
    return [pydicom.dcmread(path) for path in paths]


def _prior_nodule() -> Finding:
    (dz, dy, dx), (k, r, c), (x0, y0, z0) = PRIOR_SPACING_ZYX_MM, PRIOR_NODULE_ZYX, PRIOR_ORIGIN_XYZ_MM
    current = findings()[0]
    return Finding((x0 + c * dx, y0 + r * dy, z0 + k * dz), 4.4, 3.8, current.volume_mm3 / 2, NoduleType.SOLID, 0.9)


@dataclasses.dataclass
class FollowUpCase:
    """A current and a prior series, the compared findings, the prior views and the key images."""

    current: list[Dataset]
    prior: list[Dataset]
    findings: list[Finding]
    views: list[PriorView | None]
    images: list[Dataset]


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> FollowUpCase:
    """Current nodule 1 matched on the prior (volume doubled in a year, thicker prior slices),
    nodule 2 new; key images built and read back from files."""
    folder = tmp_path_factory.mktemp("followup")
    current = [pydicom.dcmread(path) for path in write_series(folder / "current")]  # study date 2026-01-01
    prior = _prior_series(folder / "prior")
    grown, new = findings()
    before = _prior_nodule()
    compared = [
        dataclasses.replace(grown, comparison=compare_nodule(grown, before, 365, Acquisition(2.0, "STANDARD"),
                                                             Acquisition(1.25, "STANDARD"))),
        dataclasses.replace(new, comparison=compare_nodule(new, None, 365)),
    ]
    views = [PriorView.locate(prior, before, PRIOR_DATE), None]
    statement = PriorStatement(PriorStatus.FOUND, prior[0].StudyInstanceUID, PRIOR_DATE, compared=True)
    built = build_key_images(current, compared, outcome=ReportOutcome.analysed(), algorithm=ALGORITHM,
                             device=DEVICE, series=SeriesIdentity.fresh(9902),
                             sop_instance_uids=[generate_uid() for _ in range(3)], prior=statement, prior_views=views)
    images = []
    for number, image in enumerate(built):
        path = folder / f"key{number}.dcm"
        image.save_as(path, enforce_file_format=True)
        images.append(pydicom.dcmread(path))
    return FollowUpCase(current, prior, compared, views, images)


def _panels(image: Dataset, ct: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The prior (left) and current (right) panels of a two-panel key image, found by where
    the current slice's lung-window pixels are."""
    pixels, rows, columns = image.pixel_array, int(ct.Rows), int(ct.Columns)
    grey = lung_window(ct)
    right = pixels[:, -columns:, 0]
    top = max(range(pixels.shape[0] - rows + 1), key=lambda t: np.mean(right[t:t + rows] == grey))
    assert np.mean(right[top:top + rows] == grey) > 0.9, "the current panel is the current slice in the lung window"
    return pixels[top:top + rows, :columns], pixels[top:top + rows, -columns:]


def _grey(panel: np.ndarray) -> np.ndarray:
    """Grey levels of an RGB panel; the coloured ring and text are 0."""
    grey = panel[..., 0].astype(int)
    return np.where((panel[..., 0] == panel[..., 1]) & (panel[..., 1] == panel[..., 2]), grey, 0)


def _coloured(pixels: np.ndarray) -> int:
    """How many pixels are not grey (ring and label colours, anti-aliased too)."""
    return int(np.sum((pixels[..., 0] != pixels[..., 1]) | (pixels[..., 1] != pixels[..., 2])))


def test_key_images_of_a_follow_up_pass_dciodvfy(case: FollowUpCase, tmp_path: Path) -> None:
    for number, image in enumerate(case.images):
        path = tmp_path / f"{number}.dcm"
        image.save_as(path, enforce_file_format=True)
        assert dciodvfy(path) == ([], []), number


def test_a_matched_nodule_shows_prior_and_current_side_by_side(case: FollowUpCase) -> None:
    image, ct = case.images[1], locate(case.current, case.findings[0].center_lps_mm).image
    assert int(image.Columns) >= 2 * int(ct.Columns) and int(image.Rows) > int(ct.Rows)
    assert image.StudyInstanceUID == ct.StudyInstanceUID
    # One mm scale for both panels: the current slice's, the prior resampled to it.
    assert [float(v) for v in image.PixelSpacing] == [float(v) for v in ct.PixelSpacing]
    prior, current = _panels(image, ct)
    assert prior.std() > 0 and current.std() > 0
    assert np.mean(np.any(prior != current, axis=-1)) > 0.05
    # The prior nodule sits where the current one does, at the current pixel spacing: its
    # width in mm on the prior (5 voxels of 0.7 mm through its centre) spans 0.6 mm columns
    # and 0.8 mm rows on the panel, not 0.7 mm pixels.
    _, r0, c0 = (round(v) for v in BLOBS[0].index_zyx)
    lung, solid = (int(window_hu(np.array(hu))) for hu in (LUNG_HU, NODULE_HU))
    fill = np.clip((_grey(prior) - lung) / (solid - lung), 0, 1)  # the nodule's share of each pixel
    assert fill[r0, c0] == 1
    native = (lung_window(case.views[0].position.image) >= solid)[PRIOR_NODULE_ZYX[1]].sum() * PRIOR_SPACING_ZYX_MM[2]
    row_dy, column_dx = SPACING_ZYX_MM[1:]
    assert fill[r0, c0 - 8:c0 + 9].sum() == pytest.approx(native / column_dx, abs=0.3)
    assert fill[r0 - 8:r0 + 9, c0].sum() == pytest.approx(native / row_dy, abs=0.3)
    assert np.sum(_grey(current) >= solid) > np.sum(fill == 1), "the current nodule is larger"
    for panel in (prior, current):
        rows, columns = np.nonzero(np.all(panel == RING, axis=-1))
        assert np.sum(np.hypot(rows - r0, columns - c0) < 12) > 10, "ringed on both panels"


def test_the_matched_image_states_both_sizes_the_vdt_and_why_it_is_unreliable(case: FollowUpCase) -> None:
    comments = case.images[1].ImageComments
    change = case.findings[0].comparison.change
    assert f"PRIOR 2025-01-01: {change.prior_diameter_mm:.1f} mm, {change.prior_volume_mm3:.0f} mm3" in comments
    assert f"CURRENT 2026-01-01: {change.current_diameter_mm:.1f} mm, {change.current_volume_mm3:.0f} mm3" in comments
    assert "Interval 365 days, volume +100%, VDT 365 days, growing" in comments
    assert f"follow-up Lung-RADS {case.findings[0].lung_rads.value}" in comments
    assert "VDT unreliable: slice thickness differs (2 mm then, 1.25 mm now)" in comments
    assert "AI-generated" in comments and "NOT FOR DIAGNOSTIC USE" in comments


def test_the_matched_image_references_the_current_and_the_prior_slice(case: FollowUpCase) -> None:
    current = locate(case.current, case.findings[0].center_lps_mm).image
    prior = case.views[0].position.image
    references = case.images[1].SourceImageSequence
    assert [r.ReferencedSOPInstanceUID for r in references] == [current.SOPInstanceUID, prior.SOPInstanceUID]
    assert prior.StudyInstanceUID != current.StudyInstanceUID
    assert all(r.SpatialLocationsPreserved == "NO" for r in references)
    assert prior.InstanceNumber == PRIOR_NODULE_ZYX[0] + 1, "the prior slice nearest the prior nodule"


def test_a_new_nodule_keeps_one_panel_and_says_new(case: FollowUpCase) -> None:
    image, ct = case.images[2], locate(case.current, case.findings[1].center_lps_mm).image
    assert (image.Rows, image.Columns) == (ct.Rows, ct.Columns)
    assert "NEW since prior 2025-01-01" in image.ImageComments
    (reference,) = image.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == ct.SOPInstanceUID
    plain = build_key_images(case.current, [dataclasses.replace(case.findings[1], comparison=None)],
                             outcome=ReportOutcome.analysed(), algorithm=ALGORITHM, device=DEVICE,
                             series=SeriesIdentity.fresh(9902), sop_instance_uids=[generate_uid(), generate_uid()])[1]
    header = slice(0, int(ct.Rows) // 3)
    assert _coloured(plain.pixel_array[header]) < _coloured(image.pixel_array[header]), "the NEW line is burned in"


@pytest.mark.parametrize(
    ("prior_volume", "expected"),
    [(50.0, "VDT 365 days"), (200.0, "no VDT (volume decreasing)"), (100.0, "VDT undefined")],
)
def test_the_vdt_line_says_what_the_change_allows(prior_volume: float, expected: str) -> None:
    current = Finding((0.0, 0.0, 0.0), 6.0, 6.0, 100.0, NoduleType.SOLID, 0.9)
    prior = dataclasses.replace(current, volume_mm3=prior_volume)
    (text, _), *_ = change_lines(compare_nodule(current, prior, 365))
    assert expected in text


def test_prior_views_must_match_the_findings(case: FollowUpCase) -> None:
    with pytest.raises(ValueError, match="prior_views needs one entry per finding"):
        build_key_images(case.current, case.findings, outcome=ReportOutcome.analysed(), algorithm=ALGORITHM,
                         device=DEVICE, series=SeriesIdentity.fresh(9902), sop_instance_uids=[generate_uid() for _ in range(3)],
                         prior_views=case.views[:1])
