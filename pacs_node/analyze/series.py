"""Which series of a study to analyse, and why the others were left out.

The gate works on headers only (no pixel data): CT, axial, enough slices, a slice
spacing within limits, one consistent geometry, no non-image objects, no gantry tilt,
no missing slices.  Localizer images are left out of a series (a series of localizers
only is rejected).  Among the series that pass, thinner slices win.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Body parts that are clearly not a chest CT (others, and an empty value, pass).
NOT_CHEST = {"HEAD", "BRAIN", "SKULL", "NECK", "PELVIS", "KNEE", "ANKLE", "FOOT", "HAND", "WRIST", "ELBOW",
             "SHOULDER", "HIP", "LSPINE", "CSPINE", "EXTREMITY", "LEG", "ARM"}
_AXIAL_COS = 0.95  # the slice normal within about 18 degrees of the patient's S axis
_GAP_FACTOR = 1.5
#: What pydicom raises converting an attribute it cannot decode: an unknown VR, a value of the wrong length.
_UNDECODABLE = (NotImplementedError, BytesLengthException)


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


def _number(ds: Dataset, keyword: str) -> float | None:
    """A single finite number; 0 when absent or empty, ``None`` when not one number."""
    value = ds.get(keyword)
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _strings(ds: Dataset, keyword: str) -> list[str]:
    """The values of a multi-valued text attribute, upper case (one value is a list of one)."""
    value = ds.get(keyword)
    if value is None:
        return []
    return [str(v).upper() for v in value] if isinstance(value, MultiValue) else [str(value).upper()]


def check_series(
    series_uid: str,
    headers: Sequence[tuple[Path, Dataset]],
    *,
    min_slices: int = 30,
    max_slice_spacing_mm: float = 3.0,
) -> SeriesChoice | Rejection:
    """Pass or reject one series from its headers; see the module docstring."""
    try:
        return _check_series(series_uid, headers, min_slices, max_slice_spacing_mm)
    except _UNDECODABLE:
        reason = "header attributes cannot be decoded (unknown VR or a value of the wrong length)"
        return Rejection(series_uid, "", reason)


def _check_series(
    series_uid: str, headers: Sequence[tuple[Path, Dataset]], min_slices: int, max_slice_spacing_mm: float
) -> SeriesChoice | Rejection:
    first = headers[0][1]
    description = str(first.get("SeriesDescription", "") or "")
    modality = str(first.get("Modality", "") or "")

    def reject(reason: str) -> Rejection:
        return Rejection(series_uid, description, reason)

    if modality != "CT":
        return reject(f"modality {modality or 'unknown'} is not CT")
    if any(str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE for _, ds in headers):
        return reject("not all instances are single-frame CT images (CT Image Storage)")
    axial = [(path, ds) for path, ds in headers if "LOCALIZER" not in _strings(ds, "ImageType")]
    if not axial:
        return reject("localizer (scout) images")
    headers, first = axial, axial[0][1]  # a scout stored in the axial series is left out
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
    spacings = [_vector(ds, "PixelSpacing", 2) for _, ds in headers]
    if any(s is None or np.any(s <= 0) for s in spacings):
        return reject("pixel spacing missing or invalid")
    grids = {(ds.get("Rows"), ds.get("Columns"), tuple(s)) for (_, ds), s in zip(headers, spacings, strict=True)}
    if len(grids) != 1:
        return reject("slices have different sizes or pixel spacings")
    row, column = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, column)
    if abs(normal[2]) < _AXIAL_COS:
        return reject("not axial: the slice normal is more than 18 degrees from the patient's axis")
    tilt = _number(first, "GantryDetectorTilt")
    if tilt is None:
        return reject("gantry tilt is not one number")
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
