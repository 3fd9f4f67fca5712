"""Candidate generation finds planted nodules of every type, inside the lungs."""

from __future__ import annotations

from dataclasses import replace

import highdicom as hd
import numpy as np
import pytest

from pacs_node.ml.cases import phantom_volume
from pacs_node.ml.phantom import NODULE_TYPES, Phantom, generate_phantom
from pacs_node.ml.preprocess import FrontEnd, FrontEndConfig, run_front_end

from tests.ml._fixtures import SMALL


@pytest.fixture(scope="module")
def four_types() -> tuple[Phantom, FrontEnd]:
    p = generate_phantom(3, **SMALL, n_nodules=4, nodule_types=list(NODULE_TYPES), diameter_range_mm=(7.0, 16.0))
    return p, run_front_end(phantom_volume(p))


def test_candidates_find_planted_nodules_of_each_type(four_types) -> None:
    p, fe = four_types
    assert sorted(n.type for n in p.nodules) == sorted(NODULE_TYPES)
    for n in p.nodules:
        d = np.linalg.norm(fe.candidates.centres_lps_mm - np.array(n.centre_xyz_mm), axis=1)
        assert d.min() <= n.diameter_mm / 2, f"{n.type} {n.location} {n.diameter_mm:.1f} mm: nearest {d.min():.1f} mm"


def test_candidates_are_bounded_and_inside_the_lung_region(four_types) -> None:
    _, fe = four_types
    params = FrontEndConfig().candidates
    assert 0 < len(fe.candidates) <= params.max_candidates
    assert fe.lungs.region.lookup(fe.candidates.centres_lps_mm).all()
    assert np.all(fe.candidates.blobness >= params.min_blobness_hu)
    allowed = np.array([s for bp in params.passes for s in bp.scales_mm])
    assert all(np.isclose(s, allowed, atol=1e-4).any() for s in np.unique(fe.candidates.scale_mm))


def test_a_faint_ground_glass_nodule_in_a_dark_lung_gets_a_candidate(four_types) -> None:
    """Lung at about -930 HU and a ground-glass nodule 100 HU above it, darker than the fixed floor."""
    p, _ = four_types
    ggn = next(n for n in p.nodules if n.type == "ground-glass")
    volume = phantom_volume(p)
    arr = volume.array.copy()
    centre = np.array(p.world_to_voxel(ggn.centre_xyz_mm)).ravel()
    k, j, i = np.indices(arr.shape)
    r_mm = np.sqrt(((k - centre[0]) * p.spacing_zyx_mm[0]) ** 2 + ((j - centre[1]) * p.spacing_zyx_mm[1]) ** 2
                   + ((i - centre[2]) * p.spacing_zyx_mm[2]) ** 2)
    arr[r_mm <= ggn.diameter_mm / 2 + 1.0] = -740.0  # the nodule and its blurred rim
    arr[arr < -300] -= 90.0
    dark = hd.Volume(np.maximum(arr, -1024.0), volume.affine, coordinate_system="PATIENT")
    # quotas out of the way: this is about the density floor, not the ranking
    base = FrontEndConfig()
    uncapped = tuple(replace(bp, max_candidates=3000) for bp in base.candidates.passes)
    fixed = replace(base, candidates=replace(base.candidates, passes=uncapped))
    relative = replace(fixed, candidates=replace(fixed.candidates, min_above_parenchyma_hu=60.0))

    def nearest(config: FrontEndConfig) -> float:
        fe = run_front_end(dark, config)
        assert fe.lungs.parenchyma_hu < -900
        return float(np.linalg.norm(fe.candidates.centres_lps_mm - np.array(ggn.centre_xyz_mm), axis=1).min())

    assert nearest(fixed) > ggn.diameter_mm / 2
    assert nearest(relative) <= ggn.diameter_mm / 2


def test_blobness_where_gives_the_same_values_there_and_zero_elsewhere() -> None:
    from pacs_node.ml.candidates import blobness

    rng = np.random.default_rng(3)
    image = rng.normal(-800, 40, size=(30, 34, 38)).astype(np.float32)
    image[10:16, 12:18, 14:20] = 0.0
    where = np.zeros(image.shape, dtype=bool)
    where[5:25, 8:30, 10:30] = True
    full = blobness(image, 1.5)
    part = blobness(image, 1.5, where=where)
    assert full.max() > 100
    np.testing.assert_array_equal(part[where], full[where])
    assert not part[~where].any()
