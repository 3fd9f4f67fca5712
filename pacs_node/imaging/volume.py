"""CT volumes: a DICOM series or a LUNA16 MetaImage, as HU voxels with their geometry.

Both load into a highdicom :class:`highdicom.Volume`: an array indexed
``[slice, row, column]`` in HU (float32) and an affine that maps those indices to
patient coordinates (LPS, mm).  Voxel indices never leave this module without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import BytesLengthException

from pacs_node.imaging.luna16 import read_mhd


class NotAnalysable(ValueError):
    """Input that cannot become a CT volume; the message says why, for the report."""


#: What building a volume raises on slices it cannot use (pydicom: NotImplementedError for an
#: unknown VR, BytesLengthException for a value of the wrong length).
_UNUSABLE = (ValueError, RuntimeError, KeyError, AttributeError, TypeError, NotImplementedError, BytesLengthException)


def volume_from_datasets(datasets: Sequence[Dataset]) -> hd.Volume:
    """Build a HU volume from the slices of one CT series (any order).

    highdicom sorts the slices along their normal and checks that spacing and
    orientation are consistent; rescale slope and intercept are applied.  Pixels
    that Pixel Padding Value (and Range Limit) mark as padding become air.

    Raises
    ------
    NotAnalysable
        When the slices do not form one regular volume.
    """
    if len(datasets) < 2:
        raise NotAnalysable(f"a volume needs at least 2 slices, got {len(datasets)}")
    try:
        volume = hd.get_volume_from_series(list(datasets), dtype=np.float32)
        _pad_to_air(volume, datasets)
    except _UNUSABLE as exc:
        raise NotAnalysable(f"slices do not form one regular volume: {exc}") from exc
    if not np.isfinite(volume.array).all():
        raise NotAnalysable("HU values are not finite numbers (check Rescale Slope and Intercept)")
    return volume


#: HU given to pixels that Pixel Padding Value (0028,0120), with Pixel Padding Range Limit
#: (0028,0121), marks as outside the reconstruction circle: air.  highdicom rescales them
#: like image pixels, so e.g. GE's 63536 in an unsigned image would be a +62512 HU ring.
PADDING_HU = -1024.0


def _padding_mask(ds: Dataset) -> np.ndarray | None:
    """Pixels of one slice that its padding attributes mark as padding (``None``: no usable attributes)."""
    value, limit = ds.get("PixelPaddingValue"), ds.get("PixelPaddingRangeLimit")
    if value is None:
        return None
    try:
        span = 1 << int(ds.get("BitsAllocated", 16))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        ends = [int(v) for v in (value, value if limit is None else limit)]
    except (TypeError, ValueError):
        return None
    # compare bit patterns: a value may be read as US in a signed image, or as SS in an unsigned one
    ends = [(v - span if v >= span // 2 else v) if signed else (v + span if v < 0 else v) for v in ends]
    stored = ds.pixel_array  # decoded (and cached) by highdicom already
    return (stored >= min(ends)) & (stored <= max(ends))


def _pad_to_air(volume: hd.Volume, datasets: Sequence[Dataset]) -> None:
    """Set the padding pixels of each slice (see :data:`PADDING_HU`) to air, in place."""
    array = volume.array
    for ds in datasets:
        mask = _padding_mask(ds)
        if mask is None or not mask.any():
            continue
        k = int(np.rint(world_to_index(volume, [float(v) for v in ds.ImagePositionPatient])[0, 0]))
        if 0 <= k < array.shape[0] and mask.shape == array.shape[1:]:
            array[k][mask] = PADDING_HU


def read_dicom_volume(paths: Sequence[Path]) -> hd.Volume:
    """Read DICOM files of one CT series into a HU volume."""
    return volume_from_datasets([dcmread(path) for path in paths])


def read_mhd_volume(mhd_path: Path) -> hd.Volume:
    """Read a LUNA16 ``.mhd``/``.raw`` volume (world coordinates are LPS mm).

    The MetaImage ``TransformMatrix`` rows are the directions of the x, y and z axes
    (ITK's convention); ``Offset`` is the centre of voxel ``[0, 0, 0]``.
    """
    image = read_mhd(mhd_path)
    direction_x, direction_y, direction_z = np.asarray(image.direction, dtype=float)
    spacing_z, spacing_y, spacing_x = image.spacing_zyx_mm
    affine = np.eye(4)
    affine[:3, 0] = direction_z * spacing_z
    affine[:3, 1] = direction_y * spacing_y
    affine[:3, 2] = direction_x * spacing_x
    affine[:3, 3] = image.origin_xyz_mm
    return hd.Volume(image.volume.astype(np.float32), affine, coordinate_system="PATIENT")


def world_to_index(volume: hd.Volume, points_lps_mm: np.ndarray) -> np.ndarray:
    """Continuous ``[slice, row, column]`` indices of LPS points (``N x 3``)."""
    points = np.atleast_2d(np.asarray(points_lps_mm, dtype=float))
    homogeneous = np.c_[points, np.ones(len(points))]
    return (np.linalg.inv(volume.affine) @ homogeneous.T).T[:, :3]


def index_to_world(volume: hd.Volume, indices: np.ndarray) -> np.ndarray:
    """LPS positions (mm) of continuous ``[slice, row, column]`` indices (``N x 3``)."""
    indices = np.atleast_2d(np.asarray(indices, dtype=float))
    homogeneous = np.c_[indices, np.ones(len(indices))]
    return (volume.affine @ homogeneous.T).T[:, :3]
