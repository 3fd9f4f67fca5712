"""Volume loading: DICOM and LUNA16 of the same phantom agree on voxels and geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pacs_node.imaging.luna16 import LUNA16_SUBSET
from pacs_node.imaging.volume import NotAnalysable, index_to_world, read_dicom_volume, read_mhd_volume, world_to_index
from pacs_node.ml.phantom import generate_phantom, write_dicom_study, write_luna16


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    folder = tmp_path_factory.mktemp("phantom")
    phantom = generate_phantom(11, shape_zyx=(40, 96, 96), n_nodules=1)
    written = write_dicom_study(phantom, folder / "dicom")
    write_luna16([phantom], folder / "luna16")
    mhd = next((folder / "luna16" / LUNA16_SUBSET).glob("*.mhd"))
    dicom_files = sorted(Path(written.series_dir).glob("*.dcm"))
    return phantom, dicom_files, mhd


def test_dicom_and_luna16_agree(phantom_files) -> None:
    phantom, dicom_files, mhd = phantom_files
    from_dicom = read_dicom_volume(dicom_files[::-1])  # order on disk must not matter
    from_luna = read_mhd_volume(mhd)
    assert from_dicom.spatial_shape == from_luna.spatial_shape == phantom.volume_hu.shape
    nodule = np.array(phantom.nodules[0].centre_xyz_mm)
    for volume in (from_dicom, from_luna):
        k, j, i = np.rint(world_to_index(volume, nodule)[0]).astype(int)
        assert volume.array[k, j, i] == phantom.volume_hu[tuple(np.rint(phantom.world_to_voxel(nodule)).astype(int))]
        half_voxel = np.array(phantom.spacing_zyx_mm[::-1]) / 2 + 1e-6
        assert np.all(np.abs(index_to_world(volume, [k, j, i])[0] - nodule) <= half_voxel)
    matched = from_dicom.match_geometry(from_luna)
    assert np.allclose(matched.affine, from_luna.affine, atol=1e-4)
    assert np.array_equal(matched.array, from_luna.array)


def test_too_few_slices_is_not_analysable(phantom_files) -> None:
    _, dicom_files, _ = phantom_files
    with pytest.raises(NotAnalysable, match="at least 2 slices"):
        read_dicom_volume(dicom_files[:1])


def test_missing_slice_is_not_analysable(phantom_files) -> None:
    _, dicom_files, _ = phantom_files
    with pytest.raises(NotAnalysable, match="regular volume"):
        read_dicom_volume(dicom_files[:10] + dicom_files[11:])
