"""Matching prior to current nodules: known transforms, distractors, the gate, order."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pacs_node.compare import MatchParams, NoduleSite, match_nodules
from pacs_node.imaging.findings import Finding, NoduleType


def _transform() -> np.ndarray:
    """A typical re-positioning: 3 degrees roll, 1.5 pitch, 4 % S-I stretch, 30 mm along the table (LPS mm)."""
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xz", [1.5, 3.0], degrees=True).as_matrix() @ np.diag([1.0, 1.0, 1.04])
    m[:3, 3] = [5.0, -3.0, 30.0]
    return m


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.atleast_2d(pts) @ m[:3, :3].T + m[:3, 3]


def _sites(centres: np.ndarray, diameters: list[float]) -> list[NoduleSite]:
    return [NoduleSite(tuple(float(v) for v in c), d) for c, d in zip(centres, diameters, strict=True)]


@pytest.fixture()
def scene() -> tuple[list[NoduleSite], list[NoduleSite], dict[int, int | None], list[int]]:
    """Prior and current nodules; ``truth`` maps current index to prior index (``None``: new)."""
    rng = np.random.default_rng(7)
    m = _transform()
    prior_c = np.array([[-90.0, 20.0, -60.0], [-82.0, 24.0, -62.0],  # near neighbours 9 mm apart
                        [80.0, 0.0, -120.0], [60.0, 40.0, -20.0], [-60.0, -30.0, -180.0],
                        [100.0, 10.0, -90.0],  # resolves
                        [20.0, 60.0, -150.0]])
    prior_d = [5.0, 6.0, 12.0, 4.5, 22.0, 7.0, 8.0]
    moved = _apply(m, prior_c) + rng.normal(0.0, 1.0, prior_c.shape)
    keep = [0, 1, 2, 3, 4, 6]
    grow = [1.0, 1.2, 1.3, 1.0, 0.8, 1.0, 1.1]
    current = _sites(moved[keep], [prior_d[i] * grow[i] for i in keep])
    # new nodules: one far from all, one 14 mm from the resolved nodule's mapped place
    new_c = np.array([[0.0, -50.0, -40.0], _apply(m, prior_c[5])[0] + [0.0, 14.0, 0.0]])
    current += _sites(new_c, [6.0, 5.0])
    truth: dict[int, int | None] = {k: i for k, i in enumerate(keep)} | {6: None, 7: None}
    return _sites(prior_c, prior_d), current, truth, [5]


def test_known_transform_with_distractors(scene) -> None:  # type: ignore[no-untyped-def]
    prior, current, truth, resolved = scene
    m = match_nodules(prior, current, lambda p: _apply(_transform(), p))
    assert m.current_to_prior == [truth[j] for j in range(len(current))]
    assert m.new == [6, 7] and m.resolved == resolved
    assert all(x.distance_mm < 4.0 and x.residual_mm < 4.0 and x.distance_mm <= x.gate_mm for x in m.matches)


def test_order_does_not_matter(scene) -> None:  # type: ignore[no-untyped-def]
    prior, current, truth, _ = scene
    rng = np.random.default_rng(3)
    pp, cp = rng.permutation(len(prior)), rng.permutation(len(current))
    m = match_nodules([prior[i] for i in pp], [current[j] for j in cp], lambda p: _apply(_transform(), p))
    got = {int(cp[j]): (None if i is None else int(pp[i])) for j, i in enumerate(m.current_to_prior)}
    assert got == truth


def test_gate_rejects_far_pairs_and_scales_with_size() -> None:
    prior = [NoduleSite((0.0, 0.0, 0.0), 5.0)]
    for dist, matched in ((11.0, True), (13.0, False)):
        m = match_nodules(prior, [NoduleSite((dist, 0.0, 0.0), 5.0)])
        assert (m.current_to_prior == [0]) is matched
        assert (m.new, m.resolved) == (([], []) if matched else ([0], [0]))
    big = match_nodules([NoduleSite((0.0, 0.0, 0.0), 20.0)], [NoduleSite((0.0, 0.0, 18.0), 22.0)])
    assert big.current_to_prior == [0] and big.matches[0].gate_mm == pytest.approx(22.0)
    wide = match_nodules(prior, [NoduleSite((14.0, 0.0, 0.0), 5.0)], params=MatchParams(min_gate_mm=15.0))
    assert wide.current_to_prior == [0]


def test_refinement_undoes_a_residual_shift() -> None:
    """All nodules 9 mm off after registration: two neighbours 12 mm apart would be paired wrongly without it."""
    prior_c = np.array([[0.0, 0.0, 0.0], [12.0, 0.0, 0.0], [80.0, 30.0, 20.0], [-70.0, 10.0, -40.0],
                        [40.0, -50.0, 60.0], [-30.0, 60.0, 30.0], [60.0, 60.0, -60.0], [-60.0, -60.0, 50.0]])
    prior = _sites(prior_c, [5.0] * len(prior_c))
    current = _sites(prior_c + [9.0, 0.0, 0.0], [5.0] * len(prior_c))
    plain = match_nodules(prior, current, params=MatchParams(refine_rounds=0))
    assert plain.current_to_prior[0] == 1  # the prior's right neighbour lies 3 mm from it
    m = match_nodules(prior, current)
    assert m.current_to_prior == list(range(len(prior_c)))
    assert max(x.residual_mm for x in m.matches) < 2.0 < min(x.distance_mm for x in m.matches)


def test_one_to_one_and_empty_lists() -> None:
    prior = [NoduleSite((0.0, 0.0, 0.0), 6.0)]
    two = [NoduleSite((2.0, 0.0, 0.0), 6.0), NoduleSite((-3.0, 0.0, 0.0), 6.0)]
    m = match_nodules(prior, two)
    assert m.current_to_prior == [0, None] and m.new == [1] and m.resolved == []
    assert match_nodules([], two).new == [0, 1]
    assert match_nodules(prior, []).resolved == [0]
    assert match_nodules([], []).matches == []


def test_takes_findings() -> None:
    f = Finding((10.0, 20.0, -30.0), 7.0, 5.0, 100.0, NoduleType.SOLID, 0.9)
    g = Finding((11.0, 21.0, -10.0), 8.0, 6.0, 150.0, NoduleType.SOLID, 0.8)
    m = match_nodules([f], [g], lambda p: p + [0.0, 0.0, 20.0])
    assert m.current_to_prior == [0] and m.matches[0].distance_mm == pytest.approx(np.sqrt(2.0))
