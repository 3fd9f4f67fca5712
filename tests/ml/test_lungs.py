"""Lung mask and canonical grid: coverage, juxtapleural nodules, padding, orientation."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from scipy import ndimage as ndi

from pacs_node.imaging.volume import NotAnalysable
from pacs_node.ml.canonical import orient, resample
from pacs_node.ml.cases import phantom_volume
from pacs_node.ml.lungs import LungMaskParams, NoLungsFound, lung_mask
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


#: The search region of the v2 front end (lobes kept, 10 mm margin into the wall).
V2_LUNGS = LungMaskParams(margin_mm=10.0, lobe_gap_mm=12.0)


def _with_planes(p: Phantom, z_mm: tuple[float, ...], x_mm: float, thickness_mm: float = 6.0) -> hd.Volume:
    """The phantom with soft-tissue plates cutting its lungs: axial planes at ``z_mm`` and a sagittal one at ``x_mm``.

    Like fissures drawn thick or fibrotic bands, they split the lungs into separate
    air components (lobes).
    """
    volume = phantom_volume(p)
    arr = volume.array.copy()
    k, j, i = np.indices(arr.shape)
    world = volume.affine[:3, :3] @ np.stack([k.ravel(), j.ravel(), i.ravel()]) + volume.affine[:3, 3:4]
    x, z = world[0].reshape(arr.shape), world[2].reshape(arr.shape)
    lung = np.isin(np.asarray(p.labels), (Tissue.LUNG, Tissue.VESSEL, Tissue.AIRWAY))
    plate = np.abs(x - x_mm) < thickness_mm / 2
    for zc in z_mm:
        plate |= np.abs(z - zc) < thickness_mm / 2
    arr[lung & plate] = 20.0
    return hd.Volume(arr, volume.affine, coordinate_system="PATIENT")


def test_lobes_split_off_by_dense_plates_stay_lung(juxtapleural) -> None:
    p, _ = juxtapleural
    lung_pts = _world_points(p, Tissue.LUNG, 20000)
    z_lo, z_hi = np.percentile(lung_pts[:, 2], [30, 60])
    x_mid = float(np.median(lung_pts[:, 0]))
    volume = orient(_with_planes(p, (z_lo, z_hi), x_mid))
    # six pieces now; the classic rule keeps the three largest
    classic = lung_mask(volume, LungMaskParams())
    v2 = lung_mask(volume, V2_LUNGS)
    assert classic.filled.lookup(lung_pts).mean() < 0.85
    assert v2.filled.lookup(lung_pts).mean() > 0.9
    wall = np.concatenate([_world_points(p, Tissue.SOFT), _world_points(p, Tissue.BONE)])
    assert v2.region.lookup(wall).mean() < 0.4  # a rim of wall, not the body


def test_a_broad_based_nodule_centred_on_the_pleura_is_in_the_search_region(juxtapleural) -> None:
    p, _ = juxtapleural
    lung = np.asarray(p.labels == Tissue.LUNG)
    wall = ndi.binary_dilation(np.asarray(p.labels == Tissue.SOFT)) & lung
    k, j, i = np.nonzero(wall)
    rng = np.random.default_rng(3)
    volume = phantom_volume(p)
    arr = volume.array.copy()
    kk, jj, ii = np.indices(arr.shape)
    spacing = np.array(p.spacing_zyx_mm)
    centres = []
    for s in rng.choice(len(k), 4, replace=False):
        r2 = ((kk - k[s]) * spacing[0]) ** 2 + ((jj - j[s]) * spacing[1]) ** 2 + ((ii - i[s]) * spacing[2]) ** 2
        arr[r2 <= 10.0**2] = 35.0  # a 20 mm nodule, its centre on the lung surface
        centres.append(np.array(p.voxel_to_world((k[s], j[s], i[s]))).ravel())
    embedded = orient(hd.Volume(arr, volume.affine, coordinate_system="PATIENT"))
    assert lung_mask(embedded, V2_LUNGS).region.lookup(np.array(centres)).all()


def test_dilation_and_closing_on_the_masks_box_equal_those_on_the_whole_volume() -> None:
    from pacs_node.ml.lungs import _close, _dilate

    rng = np.random.default_rng(4)
    mask = np.zeros((40, 50, 60), dtype=bool)
    mask[8:20, 5:30, 30:58] = rng.random((12, 25, 28)) < 0.3
    spacing = np.array([2.5, 1.6, 1.6])
    for r in (4.0, 10.0):
        whole = ndi.distance_transform_edt(~mask, sampling=spacing) <= r
        np.testing.assert_array_equal(_dilate(mask, r, spacing), whole)
    pad = int(np.ceil(16.0 / 1.6)) + 1
    outside = ndi.distance_transform_edt(~np.pad(mask, pad), sampling=spacing) > 16.0
    closed = (ndi.distance_transform_edt(~outside, sampling=spacing) > 16.0)[pad:-pad, pad:-pad, pad:-pad]
    np.testing.assert_array_equal(_close(mask, 16.0, spacing), closed)
