"""The key image of a nodule matched on the prior CT: prior and current side by side.

Left the prior CT's axial slice nearest the prior nodule's centre ("PRIOR yyyy-mm-dd", its
mean diameter and volume), right the current slice ("CURRENT yyyy-mm-dd", the same now), the
nodule ringed on both; beneath, the interval, the volume change, the VDT (or why there is
none), the trend, the follow-up Lung-RADS category and, in red, why the VDT is unreliable
(slice thickness or kernel differ, change within measurement variability).  Titles and
text sit in bands above and below the panels, never over the anatomy.

Scale (Pixel Spacing): both panels are on one mm scale, the current slice's.  The current
panel is the current slice on its own pixel grid; the prior panel is the prior slice
resampled (bilinear, in HU, then lung-windowed) onto a grid of the same size, Pixel Spacing
and row/column directions, shifted so that the prior nodule falls on the same pixel as the
current one (the prior is not registered otherwise: a rotation between the scans stays
visible).  The key image therefore states the current slice's Pixel Spacing, and a viewer's
ruler measures mm on either panel (not across the gap between them).  Where the prior grid
leaves the prior image the panel is black.

References: Source Image Sequence names both the current and the prior slice (purpose
121322, "Source image for image processing operation"; Spatial Locations Preserved NO,
since neither panel keeps its source's pixel positions).  The General Image module's Source
Image Sequence holds SOP Class and Instance UIDs only, with no study, and does not require
the same study: the prior slice (in the prior study, which the PACS holds) is referenced
like the current one.  highdicom's ``SCImage`` takes no source references; they are set on
the built image, as for every key image (:mod:`pacs_node.report.keyimages`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset
from scipy.ndimage import map_coordinates

from pacs_node.imaging.findings import Finding
from pacs_node.imaging.growth import Change
from pacs_node.imaging.lungrads_followup import NoduleComparison
from pacs_node.report._drawing import (
    BAND,
    RING,
    TEXT,
    WARNING,
    Colour,
    disclaimer_lines,
    font,
    hounsfield,
    lung_window,
    ring,
    text_block,
    window_hu,
    wrap_lines,
)
from pacs_node.report.context import AlgorithmInfo, nodule_label
from pacs_node.report.geometry import SlicePosition, image_coordinates, locate, patient_coordinates, ring_radius_px
from pacs_node.report.prior import display_date


@dataclass(frozen=True)
class PriorView:
    """What a matched nodule's key image shows of the prior CT.

    Attributes
    ----------
    position
        The prior slice nearest the prior nodule's centre (with its pixels) and the centre
        there; only this slice of the prior series is kept.
    finding
        The nodule on the prior CT (centre in the prior's patient coordinates, LPS mm).
    study_date
        The prior study's date (DICOM DA, YYYYMMDD).
    """

    position: SlicePosition
    finding: Finding
    study_date: str

    @classmethod
    def locate(cls, datasets: Sequence[Dataset], finding: Finding, study_date: str) -> PriorView:
        """The view of ``finding`` in the prior series ``datasets`` (any order, with pixel data).

        Raises
        ------
        ValueError
            When the finding's centre lies outside the series.
        """
        return cls(locate(datasets, finding.center_lps_mm), finding, study_date)


def new_since_prior(study_date: str) -> str:
    """The remark on a new nodule's key image: "NEW since prior yyyy-mm-dd"."""
    return f"NEW since prior {display_date(study_date)}"


def _vdt(change: Change) -> str:
    if change.vdt_days is None:
        return "VDT undefined"
    if change.vdt_days < 0:
        return "no VDT (volume decreasing)"
    return f"VDT {change.vdt_days:.0f} days"


def _change(comparison: NoduleComparison) -> Change:
    if comparison.change is None:
        raise ValueError("a side-by-side key image needs a nodule matched on the prior (comparison.change)")
    return comparison.change


def change_lines(comparison: NoduleComparison) -> list[tuple[str, Colour]]:
    """The lines beneath the panels: interval, volume change, VDT, trend, follow-up category,
    then the category's note and each reason the VDT is unreliable (red)."""
    change = _change(comparison)
    volume = ("volume change unknown" if change.volume_change_percent is None
              else f"volume {change.volume_change_percent:+.0f}%")
    category = comparison.category
    lines = [(f"Interval {change.interval_days:.0f} days, {volume}, {_vdt(change)}, {comparison.trend}; "
              f"follow-up Lung-RADS {category.category.value} ({category.rule})", TEXT)]
    if category.note:
        lines.append((category.note, TEXT))
    lines.extend((f"VDT unreliable: {caveat}", WARNING) for caveat in change.caveats)
    return lines


def panel_titles(comparison: NoduleComparison, view: PriorView, current: Dataset) -> tuple[list[str], list[str]]:
    """The prior's and the current panel's titles: "PRIOR yyyy-mm-dd", "6.0 mm, 113 mm3"."""
    change = _change(comparison)
    return (
        [f"PRIOR {display_date(view.study_date)}",
         f"{change.prior_diameter_mm:.1f} mm, {change.prior_volume_mm3:.0f} mm3"],
        [f"CURRENT {display_date(str(current.get('StudyDate', '')))}",
         f"{change.current_diameter_mm:.1f} mm, {change.current_volume_mm3:.0f} mm3"],
    )


def caption(finding: Finding, index: int, view: PriorView, current: Dataset) -> str:
    """The image's text in one paragraph (for Image Comments)."""
    comparison = finding.comparison
    if comparison is None:
        raise ValueError("a side-by-side key image needs a compared finding (finding.comparison)")
    prior, now = panel_titles(comparison, view, current)
    lines = [nodule_label(index, finding), f"{prior[0]}: {prior[1]}", f"{now[0]}: {now[1]}",
             *(text for text, _ in change_lines(comparison))]
    return ". ".join(line.rstrip(".") for line in lines) + "."


def prior_panel(view: PriorView, current: SlicePosition) -> np.ndarray:
    """The prior slice in the lung window on the current slice's pixel grid.

    The grid has the current slice's size, Pixel Spacing and row/column directions and is
    shifted so that the prior nodule's centre (projected onto its slice) falls on the
    current nodule's image coordinates.  Pixels outside the prior image are black.

    Returns
    -------
    numpy.ndarray
        ``rows x columns`` uint8, rows and columns of the current slice.
    """
    image, prior = current.image, view.position.image
    rows, columns = int(image.Rows), int(image.Columns)
    row, column = np.mgrid[:rows, :columns] + 0.5  # pixel centres, image coordinates
    shift = (patient_coordinates(prior, [[view.position.column, view.position.row]])
             - patient_coordinates(image, [[current.column, current.row]]))
    points = patient_coordinates(image, np.column_stack([column.ravel(), row.ravel()])) + shift
    placed = image_coordinates(prior, points)
    at_column, at_row = placed[:, 0], placed[:, 1]
    inside = (at_column >= 0) & (at_column <= int(prior.Columns)) & (at_row >= 0) & (at_row <= int(prior.Rows))
    hu = map_coordinates(hounsfield(prior), [at_row - 0.5, at_column - 0.5], order=1, mode="nearest")
    grey = np.where(inside, window_hu(hu), 0).astype(np.uint8)
    return grey.reshape(rows, columns)


def render_comparison(
    current: SlicePosition, finding: Finding, index: int, view: PriorView, algorithm: AlgorithmInfo,
) -> np.ndarray:
    """The two-panel key image of a matched nodule.

    Parameters
    ----------
    current
        The nodule's centre located in the current series.
    finding
        The current nodule, with its :class:`~pacs_node.imaging.lungrads_followup.NoduleComparison`.
    index
        The nodule's number, as in the SR.
    view
        The prior slice and nodule.
    algorithm
        For the burned-in statements.

    Returns
    -------
    numpy.ndarray
        ``(title + rows + text) x (2 * columns + gap) x 3`` uint8 RGB, both panels on the
        current slice's pixel spacing (rows, columns: the current slice's).

    Raises
    ------
    ValueError
        When the finding was not matched on the prior.
    """
    comparison = finding.comparison
    if comparison is None:
        raise ValueError("a side-by-side key image needs a compared finding (finding.comparison)")
    slice_ = current.image
    rows, columns = int(slice_.Rows), int(slice_.Columns)
    scale = max(columns, rows) / 512
    margin, gap = max(2, round(6 * scale)), max(2, round(8 * scale))
    width = 2 * columns + gap
    size = max(8, round(15 * scale))
    face, line_height = font(size), round(size * 1.3)
    titles = [wrap_lines([(title, TEXT if n == 0 else RING) for n, title in enumerate(panel)], face,
                         columns - 2 * margin) for panel in panel_titles(comparison, view, slice_)]
    title_height = max(len(lines) for lines in titles) * line_height + margin
    below = wrap_lines([(f"{nodule_label(index, finding)} (AI score {finding.score:.2f})", RING),
                        *change_lines(comparison), *disclaimer_lines(algorithm)], face, width - 2 * margin)
    height = title_height + rows + len(below) * line_height + margin
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    canvas[:] = BAND
    canvas[title_height:title_height + rows, :columns] = prior_panel(view, current)[:, :, None]
    canvas[title_height:title_height + rows, columns + gap:] = lung_window(slice_)[:, :, None]
    picture = Image.fromarray(canvas, mode="RGB")
    draw = ImageDraw.Draw(picture)
    common = {"margin": margin, "line_height": line_height, "band": False, "wrap": False}
    for left, lines in zip((0, columns + gap), titles, strict=True):
        text_block(draw, lines, face, top=0, width=columns, left=left, **common)
    for left, nodule in ((0, view.finding), (columns + gap, finding)):
        ring(draw, (left + current.column, title_height + current.row), ring_radius_px(slice_, nodule.long_axis_mm),
             index, face, line_height=line_height, width=max(1, round(2 * scale)))
    text_block(draw, below, face, top=title_height + rows, width=width, **common)
    return np.asarray(picture, dtype=np.uint8)
