"""Candidate generation finds planted nodules of every type, inside the lungs."""

from __future__ import annotations

import numpy as np
import pytest

from pacs_node.ml.datasets import phantom_volume
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
