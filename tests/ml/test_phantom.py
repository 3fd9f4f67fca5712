"""Behaviour of the synthetic chest CT generator and its writers.

Volumes are small (64 slices of 128 x 128 or less) so the module runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pacs_node.imaging.luna16 import ANNOTATION_COLUMNS, ANNOTATION_TYPE_COLUMNS, read_luna16_annotations, read_mhd
from pacs_node.ml.phantom import (
    NODULE_TYPES,
    NoduleType,
    Phantom,
    PlantedNodule,
    Tissue,
    generate_phantom,
    generate_studies,
    study_seed,
    write_dicom_study,
    write_luna16,
)

SMALL: dict[str, Any] = {"shape_zyx": (64, 128, 128), "spacing_zyx_mm": (2.5, 2.0, 2.0)}
ALL_TYPES: list[NoduleType] = ["solid", "part-solid", "ground-glass", "calcified"]


@pytest.fixture(scope="module")
def four_nodules() -> Phantom:
    """A study with one nodule of each type, large enough to measure on 2 mm voxels."""
    return generate_phantom(11, **SMALL, n_nodules=4, nodule_types=ALL_TYPES, diameter_range_mm=(16.0, 24.0))


@pytest.fixture(scope="module")
def tiny() -> Phantom:
    return generate_phantom(5, shape_zyx=(40, 64, 64), n_nodules=2, diameter_range_mm=(8.0, 14.0))


def _region(
    p: Phantom, centre_xyz: tuple[float, float, float], r_lo: float, r_hi: float, label: int | None = Tissue.NODULE
) -> np.ndarray:
    """HU of the voxels (with ``label``, if given) whose centres lie ``r_lo`` to ``r_hi`` mm from a point."""
    dz, dy, dx = p.spacing_zyx_mm
    k = np.arange(p.shape_zyx[0])[:, None, None]
    j = np.arange(p.shape_zyx[1])[None, :, None]
    i = np.arange(p.shape_zyx[2])[None, None, :]
    x, y, z = p.voxel_to_world((k, j, i))
    d = np.sqrt((x - centre_xyz[0]) ** 2 + (y - centre_xyz[1]) ** 2 + (z - centre_xyz[2]) ** 2)
    sel = (d >= r_lo) & (d <= r_hi)
    if label is not None:
        assert p.labels is not None
        sel &= p.labels == label
    assert sel.any(), "empty region"
    return p.volume_hu[sel].astype(np.float64)


def _by_type(p: Phantom, t: str) -> PlantedNodule:
    return next(n for n in p.nodules if n.type == t)


def test_same_seed_gives_same_study_and_different_seed_differs() -> None:
    a = generate_phantom(7, shape_zyx=(32, 64, 64), n_nodules=2)
    b = generate_phantom(7, shape_zyx=(32, 64, 64), n_nodules=2)
    c = generate_phantom(8, shape_zyx=(32, 64, 64), n_nodules=2)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    assert a.labels is not None and b.labels is not None
    assert np.array_equal(a.labels, b.labels)
    assert a.nodules == b.nodules
    assert (a.spacing_zyx_mm, a.origin_xyz_mm, a.series_uid) == (b.spacing_zyx_mm, b.origin_xyz_mm, b.series_uid)
    assert not np.array_equal(a.volume_hu, c.volume_hu) or a.nodules != c.nodules
    assert a.series_uid != c.series_uid


def test_default_geometry_is_a_clinical_chest_ct() -> None:
    from pacs_node.ml.phantom._study import _sample_study

    for seed in range(200):
        grid, _, body, _ = _sample_study(np.random.default_rng(seed), None, None)
        nz, ny, nx = grid.shape
        dz, dy, dx = grid.spacing
        assert (ny, nx) == (512, 512)
        assert 100 <= nz <= 400
        assert 0.625 <= dz <= 2.5
        assert 0.6 <= dx <= 0.9 and dy == dx
        assert nx * dx > 2 * body.W  # the body fits the field of view


def test_study_has_lungs_with_vessels_airways_and_bones(four_nodules: Phantom) -> None:
    p = four_nodules
    assert p.volume_hu.dtype == np.int16 and p.labels is not None and p.labels.dtype == np.uint8
    assert p.labels.shape == p.volume_hu.shape == SMALL["shape_zyx"]
    lung = p.labels == Tissue.LUNG
    assert 0.05 < lung.mean() < 0.5
    assert (p.labels == Tissue.VESSEL).sum() > 0.01 * lung.sum()
    assert (p.labels == Tissue.BONE).any() and (p.labels == Tissue.AIRWAY).any()


def test_lungs_are_air_like_and_outside_the_body_is_air(four_nodules: Phantom) -> None:
    p = four_nodules
    assert p.labels is not None
    assert -950.0 <= p.volume_hu[p.labels == Tissue.LUNG].mean() <= -750.0
    assert p.volume_hu[p.labels == Tissue.AIR].mean() < -950.0
    soft = p.volume_hu[p.labels == Tissue.SOFT]
    assert -150.0 < np.median(soft) < 100.0  # fat and muscle
    assert np.median(p.volume_hu[p.labels == Tissue.BONE]) > 150.0


def test_noise_is_in_the_ct_range_and_spatially_correlated() -> None:
    p = generate_phantom(4, shape_zyx=(12, 256, 256), spacing_zyx_mm=(1.25, 0.7, 0.7), n_nodules=0)
    assert p.labels is not None
    assert 15.0 <= float(p.acquisition["noise_std_hu"]) <= 50.0
    # noise in the air in front of the patient (top corners of the image)
    a = p.volume_hu[:, :32, :32].astype(np.float64)
    assert (p.labels[:, :32, :32] == Tissue.AIR).all()
    a -= a.mean()
    assert 8.0 < a.std() < 70.0
    neighbour = (a[:, :, :-1] * a[:, :, 1:]).mean() / (a * a).mean()
    assert abs(neighbour) > 0.1


@pytest.mark.parametrize(
    ("kind", "lo", "hi"),
    [("solid", -40.0, 100.0), ("ground-glass", -800.0, -300.0), ("calcified", 100.0, 3100.0)],
)
def test_nodule_centre_has_the_attenuation_of_its_type(four_nodules: Phantom, kind: str, lo: float, hi: float) -> None:
    n = _by_type(four_nodules, kind)
    core = n.solid_core_diameter_mm or n.diameter_mm
    values = _region(four_nodules, n.centre_xyz_mm, 0.0, 0.3 * core)
    assert lo <= np.median(values) <= hi, (kind, np.median(values), n)


def test_part_solid_nodule_has_a_solid_core_in_a_ground_glass_rim(four_nodules: Phantom) -> None:
    n = _by_type(four_nodules, "part-solid")
    assert n.solid_core_diameter_mm is not None and n.solid_core_diameter_mm < n.diameter_mm
    core = _region(four_nodules, n.centre_xyz_mm, 0.0, 0.3 * n.solid_core_diameter_mm + 1.0)
    r_core, r = n.solid_core_diameter_mm / 2, n.diameter_mm / 2
    rim = _region(four_nodules, n.centre_xyz_mm, r_core + 2.0, max(r_core + 3.0, r - 1.5))
    # a few-mm core is partial-volumed on 2 mm voxels: its densest voxels are solid
    assert np.percentile(core, 90) > -200.0
    assert np.median(core) > -350.0
    assert -800.0 <= np.median(rim) <= -250.0
    assert np.median(core) > np.median(rim) + 200.0


def test_nodules_stand_out_from_the_lung_around_them(four_nodules: Phantom) -> None:
    for n in four_nodules.nodules:
        inside = np.median(_region(four_nodules, n.centre_xyz_mm, 0.0, 0.3 * n.diameter_mm))
        assert inside > -750.0, n
    assert {n.type for n in four_nodules.nodules} == set(ALL_TYPES)


def test_planted_nodules_are_labelled_and_sit_where_truth_says(four_nodules: Phantom) -> None:
    p = four_nodules
    assert p.labels is not None
    for n in p.nodules:
        k, j, i = (int(round(v)) for v in p.world_to_voxel(n.centre_xyz_mm))
        assert p.labels[k, j, i] == Tissue.NODULE
        assert 3.0 <= n.diameter_mm <= 30.0


def test_nodule_locations_match_their_surroundings() -> None:
    p = generate_phantom(2, **SMALL, n_nodules=6, nodule_types=["solid"], diameter_range_mm=(8.0, 14.0))
    assert p.labels is not None
    dz, dy, dx = p.spacing_zyx_mm
    wall = (Tissue.SOFT, Tissue.BONE)
    seen = set()
    for n in p.nodules:
        k, j, i = (np.arange(s) for s in p.shape_zyx)
        x, y, z = p.voxel_to_world((k[:, None, None], j[None, :, None], i[None, None, :]))
        d = np.sqrt((x - n.centre_xyz_mm[0]) ** 2 + (y - n.centre_xyz_mm[1]) ** 2 + (z - n.centre_xyz_mm[2]) ** 2)
        near = p.labels[d <= n.diameter_mm / 2 + 1.5 * max(dz, dx)]
        touches_wall = np.isin(near, wall).any()
        if n.location == "juxtapleural":
            assert touches_wall, n
        if n.location == "free":
            assert not np.isin(p.labels[d <= n.diameter_mm / 2], wall).any(), n
        seen.add(n.location)
    assert seen  # at least one was placed


def test_about_a_fifth_of_default_studies_have_no_nodule_and_sizes_favour_4_to_12_mm() -> None:
    from pacs_node.ml.phantom._nodules import _draw_nodule_specs

    rng = np.random.default_rng(0)
    counts = [len(_draw_nodule_specs(rng, None, None, (3.0, 30.0))) for _ in range(2000)]
    assert 0.15 < np.mean(np.array(counts) == 0) < 0.25
    assert max(counts) <= 4
    sizes = np.array([s.diameter for _ in range(400) for s in _draw_nodule_specs(rng, 4, None, (3.0, 30.0))])
    assert sizes.min() >= 3.0 and sizes.max() <= 30.0
    assert np.mean((sizes >= 4.0) & (sizes <= 12.0)) > 0.6
    assert np.mean(sizes > 15.0) > 0.03
    kinds = {s.type for _ in range(100) for s in _draw_nodule_specs(rng, 4, None, (3.0, 30.0))}
    assert kinds == set(NODULE_TYPES)


def test_luna16_files_read_back_with_the_same_geometry_and_annotations(tmp_path: Path, tiny: Phantom) -> None:
    empty = generate_phantom(6, shape_zyx=(32, 64, 64), n_nodules=0)
    mhds = write_luna16([tiny, empty], tmp_path)
    assert [m.name for m in mhds] == [f"{tiny.series_uid}.mhd", f"{empty.series_uid}.mhd"]
    assert all(m.parent == tmp_path / "subset0" for m in mhds)
    header = mhds[0].read_text().splitlines()
    keys = [line.split(" = ")[0] for line in header]
    assert keys == [
        "ObjectType", "NDims", "BinaryData", "BinaryDataByteOrderMSB", "CompressedData", "TransformMatrix",
        "Offset", "CenterOfRotation", "AnatomicalOrientation", "ElementSpacing", "DimSize", "ElementType",
        "ElementDataFile",
    ]
    assert "TransformMatrix = 1 0 0 0 1 0 0 0 1" in header and "ElementType = MET_SHORT" in header
    assert "DimSize = 64 64 40" in header
    raw = mhds[0].with_suffix(".raw")
    assert raw.stat().st_size == tiny.volume_hu.size * 2
    # x runs fastest in the raw file
    assert np.array_equal(np.fromfile(raw, dtype="<i2")[:64], tiny.volume_hu[0, 0, :])

    img = read_mhd(mhds[0])
    assert np.array_equal(img.volume, tiny.volume_hu)
    assert np.allclose(img.spacing_zyx_mm, tiny.spacing_zyx_mm)
    assert np.allclose(img.origin_xyz_mm, tiny.origin_xyz_mm)
    assert np.array_equal(img.direction, np.eye(3))

    assert (tmp_path / "annotations.csv").read_text().splitlines()[0] == ",".join(ANNOTATION_COLUMNS)
    assert (tmp_path / "annotations_types.csv").read_text().splitlines()[0] == ",".join(ANNOTATION_TYPE_COLUMNS)
    rows = read_luna16_annotations(tmp_path / "annotations.csv")
    typed = read_luna16_annotations(tmp_path / "annotations_types.csv")
    assert len(rows) == len(typed) == len(tiny.nodules) > 0
    for row, t, n in zip(rows, typed, tiny.nodules, strict=True):
        assert row.seriesuid == tiny.series_uid
        assert np.allclose(row.centre_xyz_mm, n.centre_xyz_mm) and row.diameter_mm == pytest.approx(n.diameter_mm)
        assert (t.type, t.margin, t.location) == (n.type, n.margin, n.location)
        # the world centre, mapped with the header's Offset and ElementSpacing, is a nodule voxel
        kji = (np.array(row.centre_xyz_mm[::-1]) - np.array(img.origin_xyz_mm[::-1])) / np.array(img.spacing_zyx_mm)
        k, j, i = (int(round(v)) for v in kji)
        assert tiny.labels is not None and tiny.labels[k, j, i] == Tissue.NODULE


def test_dicom_series_reads_back_with_matching_geometry(tmp_path: Path, tiny: Phantom) -> None:
    written = write_dicom_study(tiny, tmp_path / "study")
    files = sorted(written.series_dir.glob("*.dcm"))
    assert len(files) == tiny.shape_zyx[0] == written.n_files
    datasets = [pydicom.dcmread(f) for f in files]
    first = datasets[0]
    assert first.SeriesInstanceUID == tiny.series_uid and first.StudyInstanceUID == tiny.study_uid
    assert np.allclose([float(v) for v in first.ImagePositionPatient], tiny.origin_xyz_mm, atol=1e-3)
    assert np.allclose([float(v) for v in first.PixelSpacing], tiny.spacing_zyx_mm[1:], atol=1e-5)
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    assert np.array_equal(hu.astype(np.int16), tiny.volume_hu)

    # highdicom's own geometry: the same world point holds the same voxel in both volumes
    # (highdicom may order the slices the other way round, so compare through LPS mm)
    vol = hd.get_volume_from_series(datasets, dtype=np.float64)
    assert sorted(np.round(vol.spacing, 4)) == sorted(np.round(tiny.spacing_zyx_mm, 4))
    for n in tiny.nodules:
        hd_idx = vol.map_reference_to_indices(np.array([n.centre_xyz_mm]), round_output=True)[0]
        our_idx = tuple(int(round(v)) for v in tiny.world_to_voxel(n.centre_xyz_mm))
        assert vol.array[tuple(hd_idx)] == tiny.volume_hu[our_idx]
        world = (vol.affine @ np.array([*hd_idx, 1.0]))[:3]
        assert np.allclose(world, tiny.voxel_to_world(our_idx), atol=0.5 * min(tiny.spacing_zyx_mm))

    truth = json.loads(written.truth_path.read_text())
    assert written.truth_path.parent == written.series_dir.parent
    assert truth["series_uid"] == tiny.series_uid and truth["coordinate_system"] == "LPS"
    assert truth["spacing_zyx_mm"] == list(tiny.spacing_zyx_mm)
    assert [PlantedNodule.from_dict(d) for d in truth["nodules"]] == [
        PlantedNodule.from_dict(n.to_dict()) for n in tiny.nodules
    ]


def test_generate_studies_writes_each_format(tmp_path: Path) -> None:
    small = {"shape_zyx": (24, 48, 48)}
    dirs = generate_studies(tmp_path / "dcm", 2, seed=1, fmt="dicom", **small)
    assert [d.name for d in dirs] == ["study_0000", "study_0001"]
    truths = [json.loads((d / "truth.json").read_text()) for d in dirs]
    assert truths[0]["seed"] == study_seed(1, 0) and truths[1]["seed"] == study_seed(1, 1)
    assert truths[0]["series_uid"] != truths[1]["series_uid"]
    mhds = generate_studies(tmp_path / "luna", 2, seed=1, fmt="luna16", **small)
    assert len(mhds) == 2 and all(m.exists() and m.with_suffix(".raw").exists() for m in mhds)
    assert (tmp_path / "luna" / "annotations.csv").exists()
    with pytest.raises(ValueError, match="fmt"):
        generate_studies(tmp_path, 1, seed=1, fmt="nifti")  # type: ignore[arg-type]
