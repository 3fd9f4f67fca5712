"""The detector: model folders are checked, findings land on nodules in LPS mm whatever the geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacs_node.imaging.findings import Finding
from pacs_node.imaging.volume import read_dicom_volume
from pacs_node.ml.detector import Detector
from pacs_node.ml.modelcard import Inference, ModelError
from pacs_node.ml.phantom import Phantom, PlantedNodule, write_dicom_study

from tests.ml._fixtures import find_phantom

MODEL = Path(__file__).resolve().parents[2] / "models" / "lung-nodule-synthetic-v1"


@pytest.fixture(scope="module")
def detector() -> Detector:
    assert (MODEL / "model.toml").is_file(), f"the bundled model is missing at {MODEL}"
    return Detector.load(MODEL)


def test_load_refuses_a_folder_without_weights(tmp_path: Path) -> None:
    shutil.copy(MODEL / "model.toml", tmp_path / "model.toml")
    with pytest.raises(ModelError, match="no weights file 'weights.pt'"):
        Detector.load(tmp_path)


def test_load_refuses_a_folder_without_a_card(tmp_path: Path) -> None:
    shutil.copy(MODEL / "weights.pt", tmp_path / "weights.pt")
    with pytest.raises(ModelError, match="has no model.toml"):
        Detector.load(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        Detector.load(tmp_path / "nowhere")


def test_load_refuses_weights_that_do_not_match_the_card(tmp_path: Path) -> None:
    shutil.copy(MODEL / "weights.pt", tmp_path / "weights.pt")
    card = (MODEL / "model.toml").read_text()
    (tmp_path / "model.toml").write_text(card.replace("hidden = 128", "hidden = 64"))
    with pytest.raises(ModelError, match="do not match the architecture"):
        Detector.load(tmp_path)
    with open(tmp_path / "weights.pt", "ab") as fh:
        fh.write(b"\0")
    (tmp_path / "model.toml").write_text(card)
    with pytest.raises(ModelError, match="SHA-256"):
        Detector.load(tmp_path)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Phantom, PlantedNodule, Path]:
    phantom, nodule = find_phantom(lambda n: n.diameter_mm >= 12.0, first_seed=500, n_nodules=1,
                                   nodule_types=["solid"], diameter_range_mm=(12.0, 20.0))
    written = write_dicom_study(phantom, tmp_path_factory.mktemp("study"))
    return phantom, nodule, written.series_dir


def _flip_in_plane(series: Path, out: Path) -> list[Path]:
    """Rewrite a series with rows and columns reversed (orientation -1 0 0 / 0 -1 0), same anatomy."""
    out.mkdir()
    paths = []
    for path in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        rows, cols = int(ds.Rows), int(ds.Columns)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1, ::-1]).tobytes()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + (cols - 1) * dx, y + (rows - 1) * dy, z]
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        ds.save_as(out / path.name)
        paths.append(out / path.name)
    return paths


def _on_nodule(findings: list[Finding], nodule: PlantedNodule) -> Finding:
    assert findings, "no finding at the operating point"
    best = findings[0]
    d = np.linalg.norm(np.array(best.center_lps_mm) - np.array(nodule.centre_xyz_mm))
    assert d <= nodule.diameter_mm / 2, f"top finding {d:.1f} mm from the nodule (radius {nodule.diameter_mm / 2:.1f})"
    return best


def test_findings_land_on_the_nodule_for_any_slice_order_and_orientation(detector, study, tmp_path: Path) -> None:
    _, nodule, series = study
    files = sorted(series.glob("*.dcm"))
    volume = read_dicom_volume(files[::-1])
    variants = {
        "dicom": volume,
        "reversed slices": volume.flip_spatial([0]),
        "rows and columns swapped": volume.permute_spatial_axes([0, 2, 1]),
        "dicom flipped in-plane": read_dicom_volume(_flip_in_plane(series, tmp_path / "flipped")),
    }
    found = {}
    for name, v in variants.items():
        best = _on_nodule(detector.detect(v), nodule)
        found[name] = best
        assert isinstance(best, Finding) and 0 <= best.score <= 1
        assert best.long_axis_mm >= best.short_axis_mm > 0 and best.volume_mm3 > 0
        assert abs(best.diameter_mm - nodule.diameter_mm) < 0.5 * nodule.diameter_mm, (name, best.diameter_mm)
    ref = np.array(found["dicom"].center_lps_mm)
    for name, f in found.items():
        assert np.linalg.norm(np.array(f.center_lps_mm) - ref) < 1.5, name
        assert f.nodule_type == found["dicom"].nodule_type


def test_run_reports_timings_and_candidates(detector, study) -> None:
    _, _, series = study
    result = detector.run(read_dicom_volume(sorted(series.glob("*.dcm"))))
    for step in ("lung_mask", "resample", "candidates", "classify", "merge", "measure", "total"):
        assert result.timings_s[step] >= 0
    assert 0 < result.n_candidates <= detector.card.front_end.candidates.max_candidates
    assert result.lung_ml > 100


def test_flip_averaging_gives_the_same_outputs_for_a_mirrored_volume(detector) -> None:  # noqa: ANN001
    """With all eight flips averaged, mirroring the grid mirrors the centres and keeps the scores."""
    import dataclasses

    from pacs_node.ml.canonical import Grid

    rng = np.random.default_rng(3)
    array = rng.normal(-800, 60, size=(40, 40, 40)).astype(np.float32)
    array[17:24, 15:22, 18:25] = 30.0  # a small solid blob off-centre
    grid = Grid(array, np.eye(4))  # identity affine: positions are (z, y, x) indices
    mirrored = Grid(array[:, :, ::-1].copy(), np.eye(4))
    points = np.array([[20.5, 18.5, 21.5], [10.5, 30.5, 12.5]])  # patch centres lie between voxels
    mirrored_points = points * [1, 1, -1] + [0, 0, 39]
    eight = Detector(dataclasses.replace(detector.card, inference=Inference(flips=8)), detector.model)
    a = eight.score_candidates(grid, points)
    b = eight.score_candidates(mirrored, mirrored_points)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.diameter_mm, b.diameter_mm, rtol=1e-4)
    np.testing.assert_allclose(a.centres_lps_mm, b.centres_lps_mm * [1, 1, -1] + [0, 0, 39], atol=1e-3)
    one = Detector(dataclasses.replace(detector.card, inference=Inference(flips=1)), detector.model)
    assert not np.allclose(one.score_candidates(grid, points).score, one.score_candidates(mirrored, mirrored_points).score,
                           rtol=1e-4, atol=1e-5), "without averaging the network is not mirror-symmetric"


def test_only_candidates_above_the_gate_get_the_extra_flips(detector) -> None:  # noqa: ANN001
    import dataclasses

    from pacs_node.ml.canonical import Grid

    rng = np.random.default_rng(5)
    array = rng.normal(-800, 80, size=(48, 48, 48)).astype(np.float32)
    array[20:27, 20:27, 20:27] = 20.0
    grid = Grid(array, np.eye(4))
    points = np.concatenate([[[23.5, 23.5, 23.5]], rng.uniform(12, 36, size=(11, 3))])

    def scored(**inference: float):  # noqa: ANN202
        return Detector(dataclasses.replace(detector.card, inference=Inference(**inference)), detector.model
                        ).score_candidates(grid, points)

    one, eight = scored(flips=1), scored(flips=8)
    gate = float(np.median(one.score))
    gated = scored(flips=8, rescore_above=gate)
    above = one.score >= gate
    assert 0 < above.sum() < len(points)
    np.testing.assert_allclose(gated.score[above], eight.score[above], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gated.score[~above], one.score[~above], rtol=1e-5, atol=1e-6)


def test_card_refuses_an_unknown_number_of_flips(tmp_path: Path) -> None:
    shutil.copytree(MODEL, tmp_path / "m", ignore=shutil.ignore_patterns("checkpoints"))
    card = tmp_path / "m" / "model.toml"
    text = card.read_text()
    assert "\nflips = 8\n" in text
    card.write_text(text.replace("\nflips = 8\n", "\nflips = 3\n"))
    with pytest.raises(ModelError, match="flips must be 1, 2, 4 or 8"):
        Detector.load(tmp_path / "m")


def test_inference_network_and_patches_give_what_the_plain_ones_give(detector: Detector) -> None:
    """Folded BatchNorms in channels-last layout score as the model does; context patches are ``avg_pool3d``."""
    import torch
    import torch.nn.functional as F

    from pacs_node.ml.canonical import Grid
    from pacs_node.ml.network import normalise_hu
    from pacs_node.ml.patches import extract_patches

    rng = np.random.default_rng(7)
    grid = Grid(rng.normal(-700, 300, size=(40, 50, 60)).astype(np.float32), np.eye(4))
    centres = np.array([[20, 25, 30], [0, 3, 59], [39, 49, 1], [10, 40, 12]])
    fine, context = extract_patches(grid, centres, 24)
    padded = np.pad(grid.array, 48, mode="edge")
    cubes = np.stack([padded[z:z + 48, y:y + 48, x:x + 48] for z, y, x in centres + 48 - 24])
    with torch.no_grad():
        pooled = F.avg_pool3d(torch.from_numpy(cubes)[:, None], 2, 2)[:, 0].numpy()
    np.testing.assert_array_equal(context, pooled)
    _, context16 = extract_patches(grid, centres, 24, dtype=np.int16)
    np.testing.assert_array_equal(context16, np.rint(pooled).astype(np.int16))
    x = normalise_hu(np.stack([fine, context], axis=1), detector.card.network.hu_window)
    with torch.inference_mode():
        plain = detector.model(x)
        fused = detector._net(x.contiguous(memory_format=torch.channels_last_3d))
    for a, b in zip(plain, fused, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)


def test_merge_keeps_the_best_of_each_cluster() -> None:
    from pacs_node.ml.detector import Scored, merge

    centres = np.array([[0.0, 0, 0], [3.0, 0, 0], [9.0, 0, 0], [0, 20.0, 0], [0, 26.0, 0], [50.0, 0, 0]])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.01])
    diameter = np.array([4.0, 4.0, 4.0, 14.0, 4.0, 4.0])
    kept = merge(Scored(centres, score, np.zeros((6, 4)), diameter), 0.05, 4.0)
    # 1 is within 4 mm of 0; 3 is 6 mm from 4 but within half of its own 14 mm; 5 is below the floor
    assert kept == [4, 0, 2]


def test_a_centre_pushed_past_the_scanned_slices_is_moved_back_onto_them() -> None:
    """A predicted offset at the edge of the scan must not leave a finding beside the series
    (the SR could not place it, and the whole study would go unreported)."""
    import highdicom as hd

    from pacs_node.ml.detector import clip_to_volume

    affine = np.array([[1.6, 0, 0, -150.0], [0, 1.6, 0, -150.0], [0, 0, 1.25, -300.0], [0, 0, 0, 1]])
    volume = hd.Volume(np.zeros((192, 192, 48), np.float32), affine, coordinate_system="PATIENT")
    inside, below, beyond = (-100.0, -90.0, -280.0), (-100.0, -90.0, -303.0), (200.0, -90.0, -260.0)
    clipped = clip_to_volume(np.array([inside, below, beyond]), volume)
    np.testing.assert_allclose(clipped[0], inside)  # inside the scan: unchanged
    np.testing.assert_allclose(clipped[1], (-100.0, -90.0, -300.0))  # onto the first slice
    np.testing.assert_allclose(clipped[2], (-150.0 + 1.6 * 191, -90.0, -260.0))  # onto the last column
    assert clip_to_volume(np.empty((0, 3)), volume).shape == (0, 3)
