"""Registration of a synthetic follow-up pair (small phantoms) on the lung masks."""

from __future__ import annotations

import numpy as np
import pytest

from pacs_node.compare import Registration, RegistrationParams, register
from pacs_node.ml.canonical import orient
from pacs_node.ml.cases import phantom_volume
from pacs_node.ml.lungs import LungMaskParams, lung_mask
from pacs_node.ml.phantom.followup import FollowUp, Reposition, generate_followup

ARGS = {"shape_zyx": (72, 128, 128), "spacing_zyx_mm": (2.5, 2.0, 2.0), "n_nodules": 5, "n_new": 0,
        "courses": ["stable"]}


def _pair(rep: Reposition, seed: int = 930500) -> FollowUp:
    return generate_followup(seed, 2, repositions=[rep], slice_spacings_mm=[2.0], **ARGS)


def _lesion_errors(fu: FollowUp, reg: Registration) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) between current and prior truth centres of each lesion, unmapped and mapped."""
    a, b = fu.timepoints
    pa = np.array([st.centre_xyz_mm for st in a.lesions])
    pb = np.array([st.centre_xyz_mm for st in b.lesions])
    return np.linalg.norm(pa - pb, axis=1), np.linalg.norm(reg.map_points(pa) - pb, axis=1)


@pytest.fixture(scope="module")
def rigid_pair() -> tuple[FollowUp, Registration]:
    fu = _pair(Reposition(shift_mm=(4.0, -5.0, 25.0), rotation_deg=(1.5, -1.0, 4.0)))
    a, b = fu.timepoints
    return fu, register(phantom_volume(a.phantom), phantom_volume(b.phantom))


def test_recovers_a_known_rigid_move(rigid_pair: tuple[FollowUp, Registration]) -> None:
    fu, reg = rigid_pair
    before, after = _lesion_errors(fu, reg)
    assert before.min() > 20.0 and after.max() < 3.0
    truth = fu.timepoints[1].reposition.matrix()  # breathing is the identity here: the move is rigid
    assert np.allclose(reg.rigid_matrix[:3, :3], truth[:3, :3], atol=0.02)
    assert np.allclose(reg.matrix @ np.linalg.inv(reg.matrix), np.eye(4))
    assert reg.dice > 0.9 and reg.surface_distance_mm < 2.5 < reg.initial_surface_distance_mm
    assert set(reg.to_dict()) >= {"matrix_4x4", "dice", "surface_distance_mm"}


def test_affine_takes_up_a_deeper_breath_hold() -> None:
    fu = _pair(Reposition(shift_mm=(-3.0, 2.0, -30.0), rotation_deg=(0.0, 1.0, -3.0), si_stretch=1.05), 930501)
    a, b = fu.timepoints
    la, lb = (lung_mask(orient(phantom_volume(t.phantom)), LungMaskParams(grid_mm=4.0)) for t in (a, b))
    reg = register(None, None, prior_lungs=la, current_lungs=lb)
    rigid = register(None, None, RegistrationParams(affine=False), prior_lungs=la, current_lungs=lb)
    _, after = _lesion_errors(fu, reg)
    _, after_rigid = _lesion_errors(fu, rigid)
    assert after.max() < 4.0 and after.mean() <= after_rigid.mean()
    assert np.linalg.det(reg.matrix[:3, :3]) == pytest.approx(1.05, abs=0.03)


def test_needs_a_volume_or_a_mask() -> None:
    with pytest.raises(ValueError, match="volume or its lung mask"):
        register(None, None)
