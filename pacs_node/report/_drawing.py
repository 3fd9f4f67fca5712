"""Pixels of the key images: the lung window, colours, text and rings.

Shared by the single-slice key images (:mod:`pacs_node.report.keyimages`) and the
prior/current comparison (:mod:`pacs_node.report.keyimage_compare`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut

from pacs_node.report.context import NOT_FOR_DIAGNOSTIC_USE, AlgorithmInfo

#: Lung window, HU.
LUNG_WINDOW_WIDTH = 1500.0
LUNG_WINDOW_CENTER = -600.0

RING = (255, 196, 0)
TEXT = (255, 255, 255)
WARNING = (255, 80, 80)
BAND = (0, 0, 0)

Colour = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Lines = Sequence[tuple[str, Colour]]


def hounsfield(image: Dataset) -> np.ndarray:
    """A CT slice's stored values as HU (Modality LUT: Rescale Slope/Intercept), ``rows x columns`` float."""
    return np.asarray(apply_modality_lut(image.pixel_array, image), dtype=float)


def window_hu(hu: np.ndarray) -> np.ndarray:
    """HU as 8-bit grey levels: the DICOM linear VOI function, width 1500 HU, centre -600 HU."""
    width, center = LUNG_WINDOW_WIDTH, LUNG_WINDOW_CENTER
    scaled = ((hu - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def lung_window(image: Dataset) -> np.ndarray:
    """Render one CT slice in the lung window as 8-bit grey levels.

    Returns
    -------
    numpy.ndarray
        ``rows x columns`` uint8.
    """
    return window_hu(hounsfield(image))


def font(size: int) -> Font:
    """Pillow's bundled font at ``size`` pixels; no system font is needed."""
    return ImageFont.load_default(size=size)


def wrap(text: str, font: Font, width: float) -> list[str]:
    """Break ``text`` into lines no wider than ``width`` pixels (a long word stays whole)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def wrap_lines(lines: Lines, font: Font, width: float) -> list[tuple[str, Colour]]:
    """:func:`wrap` every line, keeping its colour."""
    return [(piece, colour) for text, colour in lines for piece in wrap(text, font, width)]


def fit_font(lines: Lines, width: float, size: int, smallest: int = 8) -> tuple[Font, int]:
    """The largest font of at most ``size`` pixels (down to ``smallest``) whose lines fit ``width``.

    Returns the font and its size in pixels.
    """
    chosen = font(size)
    while size > smallest and any(chosen.getlength(text) > width for text, _ in lines):
        size -= 1
        chosen = font(size)
    return chosen, size


def text_block(
    draw: ImageDraw.ImageDraw,
    lines: Lines,
    font: Font,
    *,
    top: float,
    width: int,
    margin: int,
    line_height: int,
    band: bool,
    wrap: bool,
    left: int = 0,
) -> float:
    """Draw lines from ``top`` (pixels) on an optional black band; return the block's height.

    The block spans ``width`` pixels from ``left``.  With ``wrap`` long lines break at
    spaces; without, they are cut at the block's edge.
    """
    if wrap:
        lines = wrap_lines(lines, font, width - 2 * margin)
    height = len(lines) * line_height + margin
    if band:
        draw.rectangle([left, top, left + width, top + height], fill=BAND)
    y = top + margin / 2
    for text, colour in lines:
        draw.text((left + margin, y), text, fill=colour, font=font)
        y += line_height
    return height


def ring(
    draw: ImageDraw.ImageDraw, centre: tuple[float, float], radius: float, number: int, font: Font, *,
    line_height: int, width: int,
) -> None:
    """A ring of ``radius`` pixels around ``centre`` (image coordinates of the picture: column,
    row, (0, 0) at the top-left pixel's corner), numbered at its upper right."""
    # Image coordinates have (0, 0) at the top-left pixel's corner; PIL's at its centre.
    cx, cy = centre[0] - 0.5, centre[1] - 0.5
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], outline=RING, width=width)
    at = (cx + radius * 0.75 + 2, cy - radius * 0.75 - line_height)
    draw.text((at[0] + 1, at[1] + 1), str(number), fill=BAND, font=font)
    draw.text(at, str(number), fill=RING, font=font)


def disclaimer_lines(algorithm: AlgorithmInfo) -> list[tuple[str, Colour]]:
    """The AI statement and, for a model trained on synthetic data only, NOT FOR DIAGNOSTIC USE."""
    lines = [(f"AI-generated ({algorithm.name} {algorithm.version}), not reviewed by a physician", TEXT)]
    if algorithm.synthetic_data:
        lines.append((NOT_FOR_DIAGNOSTIC_USE, WARNING))
    return lines
