"""Synthetic follow-up series: one patient re-positioned over time, nodules that grow,
shrink, resolve and appear, with truth per time point (small volumes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from pacs_node.ml.phantom import (
    FollowUp,
    Phantom,
    Reposition,
    Tissue,
    generate_followup,
    generate_phantom,
    write_followup,
)

SHAPE, SPACING = (56, 112, 112), (1.6, 1.6, 1.6)
ARGS = {"shape_zyx": SHAPE, "spacing_zyx_mm": SPACING, "n_nodules": 4, "diameter_range_mm": (8.0, 13.0),
        "nodule_types": ["solid"]}
MOVE = Reposition(shift_mm=(3.0, -4.0, 22.0), rotation_deg=(1.5, -1.0, 3.0), si_stretch=1.04)
VDT = 365.0


@pytest.fixture(scope="module")
def fu() -> FollowUp:
    return generate_followup(21, 3, interval_days=[180.0, 365.0], courses=["growing", "stable", "shrinking",
                             "resolving"], vdt_days=VDT, n_new=1, repositions=[MOVE, MOVE],
                             slice_spacings_mm=[1.6, 2.0], **ARGS)


def _nodule_voxels(p: Phantom, centre: tuple[float, float, float], r_mm: float) -> int:
    """NODULE labels within ``r_mm`` of ``centre`` (LPS mm)."""
    assert p.labels is not None
    k, j, i = np.indices(p.labels.shape)
    x, y, z = p.voxel_to_world((k, j, i))
    near = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= r_mm**2
    return int(np.count_nonzero(near & (p.labels == Tissue.NODULE)))


def test_baseline_is_the_ordinary_phantom_of_the_seed(fu: FollowUp) -> None:
    p = generate_phantom(21, **ARGS)
    t0 = fu.timepoints[0].phantom
    assert np.array_equal(p.volume_hu, t0.volume_hu) and np.array_equal(p.labels, t0.labels)
    assert [n.to_dict() for n in p.nodules] == [n.to_dict() for n in t0.nodules]
    assert p.acquisition == t0.acquisition and p.study_uid == t0.study_uid


def test_reposition_round_trips_and_its_matrix_is_rigid() -> None:
    rep = Reposition(shift_mm=(3.0, -4.0, 22.0), rotation_deg=(1.5, -1.0, 3.0), si_stretch=1.04,
                     centre_xyz_mm=(5.0, 10.0, -20.0), apex_z_mm=60.0, floor_z_mm=-180.0)
    pts = np.random.default_rng(0).uniform(-250.0, 150.0, (200, 3))
    assert np.allclose(rep.inverse(rep.forward(pts)), pts, atol=1e-9)
    m = rep.matrix()
    assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3)) and math.isclose(np.linalg.det(m[:3, :3]), 1.0)
    # the lungs stretch by si_stretch between floor and apex; above the apex nothing moves
    assert np.allclose(rep.breathe(np.array([60.0, 100.0, -180.0])), [60.0, 100.0, 60.0 - 1.04 * 240.0])


def test_later_time_points_show_the_same_anatomy_moved_as_the_truth_says(fu: FollowUp) -> None:
    t0, t1 = fu.timepoints[0].phantom, fu.timepoints[1].phantom
    rep = fu.timepoints[1].reposition
    assert rep.shift_mm == MOVE.shift_mm and rep.si_stretch == MOVE.si_stretch
    assert t1.origin_xyz_mm[2] != t0.origin_xyz_mm[2] and t1.frame_of_reference_uid != t0.frame_of_reference_uid
    assert t0.labels is not None and t1.labels is not None
    k, j, i = np.indices(t1.labels.shape)
    xyz = np.stack(t1.voxel_to_world((k, j, i)), axis=-1).reshape(-1, 3)
    kji = np.rint(np.stack(t0.world_to_voxel(rep.inverse(xyz).T), axis=-1)).astype(int)
    inside = np.all((kji >= 0) & (kji < np.array(t0.shape_zyx)), axis=1)
    assert inside.mean() > 0.8
    back = t0.labels[tuple(kji[inside].T)]
    now = t1.labels.reshape(-1)[inside]
    for tissues in ((Tissue.LUNG, Tissue.VESSEL, Tissue.AIRWAY, Tissue.NODULE), (Tissue.BONE,)):
        a, b = np.isin(back, tissues), np.isin(now, tissues)
        dice = 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))
        assert dice > 0.95, (tissues, dice)
    # the same check against the untransformed grid fails: the patient did move
    same = np.rint(np.stack(t0.world_to_voxel(xyz.T), axis=-1)).astype(int)
    ok = np.all((same >= 0) & (same < np.array(t0.shape_zyx)), axis=1)
    a, b = np.isin(t0.labels[tuple(same[ok].T)], (Tissue.BONE,)), np.isin(t1.labels.reshape(-1)[ok], (Tissue.BONE,))
    assert 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)) < 0.7


def test_courses_identities_and_vdt_in_the_truth(fu: FollowUp) -> None:
    les = {x.lesion_id: x for x in fu.lesions}
    n_base = len(fu.timepoints[0].phantom.nodules)
    assert [les[i].course for i in range(n_base)] == ["growing", "stable", "shrinking", "resolving"][:n_base]
    days = [tp.day for tp in fu.timepoints]
    assert days == [0.0, 180.0, 545.0]
    for tp in fu.timepoints[1:]:
        prev = {s.lesion_id: s for s in fu.timepoints[tp.index - 1].lesions}
        present = [s for s in tp.lesions if s.diameter_mm is not None]
        assert [n.diameter_mm for n in tp.phantom.nodules] == pytest.approx([s.diameter_mm for s in present])
        for s in tp.lesions:
            course = les[s.lesion_id].course
            if s.change in ("growing", "shrinking"):
                assert s.vdt_days == pytest.approx(VDT if course in ("growing", "new") else -VDT)
                dt = tp.day - fu.timepoints[tp.index - 1].day
                assert s.volume_mm3 / prev[s.lesion_id].volume_mm3 == pytest.approx(2.0 ** (dt / s.vdt_days))
            expected = {"growing": "growing", "stable": "stable", "shrinking": "shrinking"}.get(course)
            if expected:
                assert s.change == expected
    assert fu.timepoints[0].lesions[0].change == "baseline"


def test_resolved_nodules_are_gone_and_new_ones_appear(fu: FollowUp) -> None:
    les = fu.lesions
    resolving = [x for x in les if x.course == "resolving"]
    new = [x for x in les if x.course == "new"]
    assert resolving and new, "the fixture needs a resolving and a new nodule"
    for x in resolving:
        k = x.last + 1
        st = next(s for s in fu.timepoints[k].lesions if s.lesion_id == x.lesion_id)
        assert st.change == "resolved" and st.diameter_mm is None
        assert _nodule_voxels(fu.timepoints[k].phantom, st.centre_xyz_mm, 0.6 * x.spec.diameter) == 0
    for x in new:
        assert all(s.lesion_id != x.lesion_id for s in fu.timepoints[x.first - 1].lesions)
        st = next(s for s in fu.timepoints[x.first].lesions if s.lesion_id == x.lesion_id)
        assert st.change == "new"
        assert _nodule_voxels(fu.timepoints[x.first].phantom, st.centre_xyz_mm, 0.6 * st.diameter_mm) > 20


def test_measured_volume_ratio_follows_the_vdt() -> None:
    # one free solid nodule doubling in volume between two scans of the same slice spacing
    fu = generate_followup(19, 2, interval_days=VDT, courses=["growing"], vdt_days=VDT, n_new=0,
                           repositions=[MOVE], slice_spacings_mm=[SPACING[0]], shape_zyx=SHAPE,
                           spacing_zyx_mm=SPACING, n_nodules=1, diameter_range_mm=(12.0, 12.0),
                           nodule_types=["solid"])
    (a,), (b,) = (tp.lesions for tp in fu.timepoints)
    assert fu.lesions[0].spec.location == "free" and fu.lesions[0].spec.diameter == 12.0
    va = _nodule_voxels(fu.timepoints[0].phantom, a.centre_xyz_mm, 0.75 * b.diameter_mm)
    vb = _nodule_voxels(fu.timepoints[1].phantom, b.centre_xyz_mm, 0.75 * b.diameter_mm)
    assert fu.lesions[0].spec.margin == "smooth"
    assert vb / va == pytest.approx(2.0, rel=0.05)
    vox = math.prod(SPACING)
    assert va * vox == pytest.approx(a.volume_mm3, rel=0.05) and vb * vox == pytest.approx(b.volume_mm3, rel=0.05)
    assert (a.drawn_volume_mm3, b.drawn_volume_mm3) == (va * vox, vb * vox)


def test_written_series_share_the_patient_with_own_uids_and_dates(fu: FollowUp, tmp_path: Path) -> None:
    path = write_followup(fu, tmp_path / "patient")
    doc = json.loads(path.read_text())
    assert [t["dir"] for t in doc["timepoints"]] == ["t0", "t1", "t2"]
    assert [t["study_date"] for t in doc["timepoints"]] == ["20260101", "20260630", "20270630"]
    seen = []
    for t in doc["timepoints"]:
        ds = pydicom.dcmread(sorted((tmp_path / "patient" / t["dir"] / "series").glob("*.dcm"))[0])
        assert ds.PatientID == doc["patient_id"] and ds.StudyDate == t["study_date"]
        assert ds.StudyInstanceUID == t["study_uid"] and ds.SeriesInstanceUID == t["series_uid"]
        seen.append((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID))
        truth = json.loads((tmp_path / "patient" / t["dir"] / "truth.json").read_text())
        assert [n["lesion_id"] for n in truth["nodules"]] == [s["lesion_id"] for s in t["lesions"]
                                                               if s["diameter_mm"] is not None]
        assert truth["followup"]["from_baseline"]["matrix_4x4"] == t["from_baseline"]["matrix_4x4"]
    assert all(len(set(col)) == 3 for col in zip(*seen, strict=True))
    assert {x["course"] for x in doc["lesions"]} >= {"growing", "stable", "shrinking", "resolving", "new"}


def test_followup_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="courses"):
        generate_followup(1, 2, courses=["exploding"])
    with pytest.raises(ValueError, match="interval_days"):
        generate_followup(1, 3, interval_days=[100.0])
    from pacs_node.ml.phantom.variation import Variation

    with pytest.raises(ValueError, match="classic nodules"):
        generate_followup(1, 2, variation=Variation.wide())


def test_cli_writes_followups_in_dicom_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pacs_node import cli
    from pacs_node.ml import phantom as ph

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(ph, "generate_followups", lambda *a, **kw: calls.append((*a, kw)) or [tmp_path])
    runner = CliRunner()
    r = runner.invoke(cli.app, ["phantom", "--out", str(tmp_path), "--followup", "3", "--interval-days", "90"])
    assert r.exit_code == 0, r.output
    assert calls[0][1:4] == (1, 0, 3) and calls[0][4]["interval_days"] == 90.0
    r = runner.invoke(cli.app, ["phantom", "--out", str(tmp_path), "--followup", "2", "--format", "luna16"])
    assert r.exit_code == 2
