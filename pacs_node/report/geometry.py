"""Where patient points (LPS, mm) fall in a CT series: nearest slice, image coordinates.

Image coordinates are (column, row) in pixels, with (0, 0) at the top-left corner of
the top-left pixel (so a pixel's centre is at +0.5), as SCOORD uses them.  Mapping
goes through :mod:`highdicom.spatial`.  Shared by every report object that places a
finding on the CT: SR, key images, KOS, presentation state and segmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset


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


def ring_radius_px(image: Dataset, long_axis_mm: float) -> float:
    """Radius of a ring drawn around a nodule: half its long axis plus a margin, pixels.

    The margin (4 pixels on a 512-pixel image, proportionally more on larger ones,
    at least 3) keeps the ring off the nodule's edge.  The key images and the
    presentation state draw the same ring.
    """
    scale = max(int(image.Columns), int(image.Rows)) / 512
    return circle_radius_px(image, long_axis_mm / 2) + max(3.0, 4 * scale)
