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

from pacs_node.ml.luna16 import read_mhd


class NotAnalysable(ValueError):
    """Input that cannot become a CT volume; the message says why, for the report."""


def volume_from_datasets(datasets: Sequence[Dataset]) -> hd.Volume:
    """Build a HU volume from the slices of one CT series (any order).

    highdicom sorts the slices along their normal and checks that spacing and
    orientation are consistent; rescale slope and intercept are applied.

    Raises
    ------
    NotAnalysable
        When the slices do not form one regular volume.
    """
    if len(datasets) < 2:
        raise NotAnalysable(f"a volume needs at least 2 slices, got {len(datasets)}")
    try:
        volume = hd.get_volume_from_series(list(datasets), dtype=np.float32)
    except (ValueError, RuntimeError, KeyError, AttributeError) as exc:
        raise NotAnalysable(f"slices do not form one regular volume: {exc}") from exc
    return volume


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
