"""Lung mask and canonical grid: coverage, juxtapleural nodules, padding, orientation."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest

from pacs_node.analyze.volume import NotAnalysable
from pacs_node.ml.canonical import orient, resample
from pacs_node.ml.datasets import phantom_volume
from pacs_node.ml.lungs import NoLungsFound, lung_mask
from pacs_node.ml.phantom import Phantom, PlantedNodule, Tissue

from tests.ml._fixtures import find_phantom


@pytest.fixture(scope="module")
def juxtapleural() -> tuple[Phantom, PlantedNodule]:
    return find_phantom(lambda n: n.location == "juxtapleural" and n.diameter_mm >= 8.0, n_nodules=3,
                        nodule_types=["solid"], diameter_range_mm=(8.0, 16.0))


def _world_points(p: Phantom, label: int, n: int = 5000) -> np.ndarray:
    k, j, i = np.nonzero(p.labels == label)
    pick = np.random.default_rng(0).choice(len(k), min(n, len(k)), replace=False)
    return np.array(p.voxel_to_world((k[pick], j[pick], i[pick]))).T


def test_lung_mask_covers_the_lungs_and_little_else(juxtapleural) -> None:
    p, _ = juxtapleural
    mask = lung_mask(orient(phantom_volume(p)))
    assert mask.filled.lookup(_world_points(p, Tissue.LUNG)).mean() > 0.9
    assert mask.region.lookup(_world_points(p, Tissue.LUNG)).mean() > 0.97
    wall = np.concatenate([_world_points(p, Tissue.SOFT), _world_points(p, Tissue.BONE)])
    assert mask.region.lookup(wall).mean() < 0.2
    assert mask.lung_ml > 300
    assert -950 < mask.parenchyma_hu < -700


def test_lung_mask_keeps_a_juxtapleural_nodule(juxtapleural) -> None:
    p, nodule = juxtapleural
    mask = lung_mask(orient(phantom_volume(p)))
    centre = np.array([nodule.centre_xyz_mm])
    assert mask.filled.lookup(centre)[0], "the nodule centre must be inside the filled lung"
    # the whole nodule body lies in the search region
    assert mask.region.lookup(_world_points(p, Tissue.NODULE)).mean() > 0.95


def test_padding_outside_the_reconstruction_circle_changes_nothing(juxtapleural) -> None:
    p, _ = juxtapleural
    volume = phantom_volume(p)
    padded = volume.array.copy()
    nz, ny, nx = padded.shape
    yy, xx = np.ogrid[:ny, :nx]
    outside = (yy - ny / 2) ** 2 + (xx - nx / 2) ** 2 > (0.5 * nx) ** 2
    padded[:, outside] = -3024.0
    a = lung_mask(orient(volume))
    b = lung_mask(orient(hd.Volume(padded, volume.affine, coordinate_system="PATIENT")))
    assert np.mean(a.filled.array != b.filled.array) < 0.002


def test_a_volume_without_lungs_is_not_analysable() -> None:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    soft = hd.Volume(np.full((20, 64, 64), 40.0, dtype=np.float32), affine, coordinate_system="PATIENT")
    with pytest.raises(NoLungsFound) as err:
        lung_mask(orient(soft))
    assert isinstance(err.value, NotAnalysable)


def test_orientation_and_slice_order_do_not_change_the_canonical_grid(juxtapleural) -> None:
    p, nodule = juxtapleural
    volume = phantom_volume(p)
    flipped = volume.flip_spatial([0, 2]).permute_spatial_axes([1, 0, 2])  # reversed slices, swapped axes
    grids = []
    for v in (volume, flipped):
        o = orient(v)
        grids.append(resample(o, np.zeros(3, int), np.array(o.spatial_shape), 2.0))
    assert np.allclose(grids[0].affine, grids[1].affine, atol=1e-6)
    assert np.array_equal(grids[0].array, grids[1].array)
    centre = grids[0].world_to_index(np.array([nodule.centre_xyz_mm]))[0]
    assert np.allclose(grids[0].index_to_world(centre)[0], nodule.centre_xyz_mm)
