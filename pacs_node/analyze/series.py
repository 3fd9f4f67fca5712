"""Which series of a study to analyse, and why the others were left out.

The gate works on headers only (no pixel data): CT, axial, enough slices, a slice
spacing within limits, one consistent geometry, no localizers or non-image objects,
no gantry tilt, no missing slices.  Among the series that pass, thinner slices win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Body parts that are clearly not a chest CT (others, and an empty value, pass).
NOT_CHEST = {"HEAD", "BRAIN", "SKULL", "NECK", "PELVIS", "KNEE", "ANKLE", "FOOT", "HAND", "WRIST", "ELBOW",
             "SHOULDER", "HIP", "LSPINE", "CSPINE", "EXTREMITY", "LEG", "ARM"}
_AXIAL_COS = 0.95  # the slice normal within about 18 degrees of the patient's S axis
_GAP_FACTOR = 1.5


@dataclass(frozen=True)
class SeriesChoice:
    """A series that passed the gate, its files sorted along the slice normal."""

    series_uid: str
    paths: tuple[Path, ...]
    slice_spacing_mm: float
    description: str


@dataclass(frozen=True)
class Rejection:
    """A series left out, and why (a sentence for the report and the log)."""

    series_uid: str
    description: str
    reason: str


def _vector(ds: Dataset, keyword: str, length: int) -> np.ndarray | None:
    value = ds.get(keyword)
    try:
        vector = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (length,) and np.all(np.isfinite(vector)) else None


def check_series(
    series_uid: str,
    headers: Sequence[tuple[Path, Dataset]],
    *,
    min_slices: int = 30,
    max_slice_spacing_mm: float = 3.0,
) -> SeriesChoice | Rejection:
    """Pass or reject one series from its headers; see the module docstring."""
    first = headers[0][1]
    description = str(first.get("SeriesDescription", "") or "")
    modality = str(first.get("Modality", "") or "")

    def reject(reason: str) -> Rejection:
        return Rejection(series_uid, description, reason)

    if modality != "CT":
        return reject(f"modality {modality or 'unknown'} is not CT")
    if any(str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE for _, ds in headers):
        return reject("not all instances are single-frame CT images (CT Image Storage)")
    if any("LOCALIZER" in [str(t).upper() for t in (ds.get("ImageType") or [])] for _, ds in headers):
        return reject("localizer (scout) images")
    body_part = str(first.get("BodyPartExamined", "") or "").upper()
    if body_part in NOT_CHEST:
        return reject(f"body part {body_part} is not chest")
    if len(headers) < min_slices:
        return reject(f"only {len(headers)} slices; at least {min_slices} needed")
    orientations = [_vector(ds, "ImageOrientationPatient", 6) for _, ds in headers]
    positions = [_vector(ds, "ImagePositionPatient", 3) for _, ds in headers]
    if any(o is None for o in orientations) or any(p is None for p in positions):
        return reject("image position or orientation missing")
    if any(not np.allclose(o, orientations[0], atol=1e-3) for o in orientations):
        return reject("slices have different orientations")
    grids = {(ds.get("Rows"), ds.get("Columns"), tuple(float(v) for v in ds.get("PixelSpacing") or ())) for _, ds in headers}
    if len(grids) != 1:
        return reject("slices have different sizes or pixel spacings")
    row, column = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, column)
    if abs(normal[2]) < _AXIAL_COS:
        return reject("not axial: the slice normal is more than 18 degrees from the patient's axis")
    tilt = float(first.get("GantryDetectorTilt", 0) or 0)
    if abs(tilt) > 0.5:
        return reject(f"gantry tilt of {tilt:.1f} degrees is not supported")
    along = np.array([float(np.dot(p, normal)) for p in positions])
    order = np.argsort(along)
    steps = np.diff(along[order])
    if np.any(steps < 1e-3):
        return reject("two slices share one position (duplicate or mixed acquisitions)")
    offsets = np.array([p - along[i] * normal for i, p in enumerate(positions)])
    if np.max(np.linalg.norm(offsets - offsets[0], axis=1)) > 0.5 * max(np.median(steps), 1.0):
        return reject("slice positions drift sideways (gantry tilt or sheared stack)")
    spacing = float(np.median(steps))
    if spacing > max_slice_spacing_mm:
        return reject(f"slice spacing {spacing:.2f} mm > {max_slice_spacing_mm:.1f} mm")
    if np.max(steps) > _GAP_FACTOR * spacing:
        gap_at = int(np.argmax(steps))
        return reject(f"missing slices: a gap of {steps[gap_at]:.2f} mm where the spacing is {spacing:.2f} mm")
    return SeriesChoice(series_uid, tuple(headers[i][0] for i in order), spacing, description)


def choose_series(
    series: dict[str, Sequence[tuple[Path, Dataset]]],
    *,
    analyse_all: bool = False,
    min_slices: int = 30,
    max_slice_spacing_mm: float = 3.0,
) -> tuple[list[SeriesChoice], list[Rejection]]:
    """The series to analyse (the thinnest, or all that pass) and the rejected ones."""
    passed, rejected = [], []
    for series_uid, headers in series.items():
        if not headers:
            continue
        outcome = check_series(series_uid, headers, min_slices=min_slices, max_slice_spacing_mm=max_slice_spacing_mm)
        (passed if isinstance(outcome, SeriesChoice) else rejected).append(outcome)
    passed.sort(key=lambda choice: (round(choice.slice_spacing_mm, 3), -len(choice.paths)))
    if analyse_all:
        return passed, rejected
    for extra in passed[1:]:
        rejected.append(Rejection(extra.series_uid, extra.description, "another series of the study has thinner slices"))
    return passed[:1], rejected
