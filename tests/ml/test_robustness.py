"""Other scanners' conventions do not break the front end: the large nodule is still found.

Each case is one a user would notice: padding outside the reconstruction circle
(stored three ways), a patient table with a sealed cushion, a prone feet-first
patient, low-dose noise, lungs cut by a small field of view.  The detector uses
the bundled model at its operating point (the card's ``report_score``) with smaller
candidate quotas, so that a run takes seconds: a large nodule is among the
strongest blobs anyway.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pacs_node.analyze.series import Rejection, check_series
from pacs_node.imaging.volume import volume_from_datasets
from pacs_node.ml.canonical import orient
from pacs_node.ml.detector import Detector
from pacs_node.ml.lungs import lung_mask
from pacs_node.ml.phantom import PlantedNodule, Tissue
from pacs_node.ml.phantom import conventions as cv
from pacs_node.ml.phantom.encoding import (
    SIGNED_1024,
    SIGNED_HU,
    UNSIGNED_1024,
    Padding,
    PixelEncoding,
    encode_series,
    reread,
)
from pacs_node.ml.preprocess import (
    FrontEndConfig,
    fine_grid,
    harmonise_noise,
    parenchyma_noise_hu,
)
from tests.ml._fixtures import find_phantom

MODEL = Path(__file__).resolve().parents[2] / "models" / "lung-nodule-synthetic-v1"
#: Candidates per pass (solid, ground-glass) in these tests; the card allows hundreds.
QUOTAS = (60, 40)


@pytest.fixture(scope="module")
def detector() -> Detector:
    loaded = Detector.load(MODEL)
    fe = loaded.card.front_end
    passes = tuple(replace(p, max_candidates=q) for p, q in zip(fe.candidates.passes, QUOTAS, strict=True))
    card = replace(loaded.card, front_end=replace(fe, candidates=replace(fe.candidates, passes=passes)))
    return Detector(card, loaded.model)


@pytest.fixture(scope="module")
def study() -> tuple[cv.Scan, PlantedNodule, float]:
    """A small phantom with one solid nodule of 10 to 16 mm, and its lung volume (mL).

    As generated, the model finds the nodule with a score close to 1, far above its
    operating point, so a miss below means the convention broke something.
    """
    phantom, nodule = find_phantom(lambda n: n.diameter_mm >= 10.0, first_seed=930, n_nodules=1,
                                   nodule_types=["solid"], diameter_range_mm=(10.0, 16.0))
    scan = cv.scan_from_phantom(phantom)
    return scan, nodule, lung_mask(orient(scan.volume)).lung_ml


def _through_dicom(scan: cv.Scan, encoding: PixelEncoding, padding: Padding | None = None,
                   reverse_instances: bool = False) -> object:
    """The volume the node builds from the series a scanner with these conventions sends."""
    return volume_from_datasets(reread(encode_series(scan.volume, encoding, padding,
                                                     reverse_instances=reverse_instances)))


def _assert_found(detector: Detector, volume: object, nodule: PlantedNodule, lung_ml: float) -> None:
    result = detector.run(volume)  # type: ignore[arg-type]
    distances = [float(np.linalg.norm(np.subtract(f.center_lps_mm, nodule.centre_xyz_mm))) for f in result.findings]
    assert any(d < nodule.diameter_mm / 2 for d in distances), \
        f"the {nodule.diameter_mm:.1f} mm nodule was missed; findings at {distances} mm from it"
    assert abs(result.lung_ml / lung_ml - 1.0) < 0.03, f"lung volume {result.lung_ml:.0f} mL, expected {lung_ml:.0f}"


@pytest.mark.parametrize(("encoding", "padding"), [
    (SIGNED_HU, Padding(-2000)),  # -2000 HU, Pixel Padding Value set
    (SIGNED_1024, Padding(-2000, tagged=False)),  # GE's -3024 HU, no padding attributes
    (UNSIGNED_1024, Padding(63536)),  # GE's unsigned variant: +62512 HU unless the padding value is honoured
], ids=["pad-2000-tagged", "pad-3024-untagged", "unsigned-pad-63536-tagged"])
def test_the_large_nodule_is_found_whatever_the_padding_and_stored_values(
        detector: Detector, study: tuple[cv.Scan, PlantedNodule, float], encoding: PixelEncoding,
        padding: Padding) -> None:
    scan, nodule, lung_ml = study
    _assert_found(detector, _through_dicom(scan, encoding, padding), nodule, lung_ml)


def test_the_large_nodule_is_found_on_a_couch_with_a_sealed_cushion(
        detector: Detector, study: tuple[cv.Scan, PlantedNodule, float]) -> None:
    scan, nodule, lung_ml = study
    on_couch = cv.add_couch(cv.remove_table(scan), cover_mm=6.0)
    _assert_found(detector, on_couch.volume, nodule, lung_ml)


def test_the_large_nodule_is_found_in_a_prone_feet_first_patient(
        detector: Detector, study: tuple[cv.Scan, PlantedNodule, float]) -> None:
    scan, nodule, lung_ml = study
    prone = cv.add_couch(cv.reposition(cv.remove_table(scan), "FFP"), cover_mm=6.0)  # the couch under the chest
    datasets = reread(encode_series(prone.volume, UNSIGNED_1024, reverse_instances=True))
    assert [float(v) for v in datasets[0].ImageOrientationPatient] == [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
    _assert_found(detector, volume_from_datasets(datasets), nodule, lung_ml)


def test_the_large_nodule_is_found_in_low_dose_noise(
        detector: Detector, study: tuple[cv.Scan, PlantedNodule, float]) -> None:
    scan, nodule, lung_ml = study
    noisy = cv.add_noise(scan, np.random.default_rng(0), sigma_hu=80.0)
    _assert_found(detector, noisy.volume, nodule, lung_ml)


def test_a_sharp_kernel_is_smoothed_back_to_the_training_noise_and_a_standard_one_is_left_alone(
        study: tuple[cv.Scan, PlantedNodule, float]) -> None:
    scan, _, _ = study
    config = FrontEndConfig()
    # on this phantom's 1.6 mm pixels, resampled to 1 mm, noise looks smoother than it is: be generous
    sharp = cv.add_noise(cv.sharpen(scan, 1.5, 1.6), np.random.default_rng(0), 120.0, 0.35)
    for changed, smoothed in ((scan, False), (sharp, True)):
        oriented = orient(changed.volume)
        lungs = lung_mask(oriented, config.lungs)
        raw = fine_grid(oriented, lungs, replace(config, smooth_above_noise_hu=None))
        grid, noise, width = harmonise_noise(raw, lungs, config)
        assert (width > 0) == smoothed, f"noise {noise:.0f} HU, smoothed {width} mm"
        if smoothed:
            assert noise > config.smooth_above_noise_hu >= parenchyma_noise_hu(grid, lungs)


def test_padding_becomes_air_and_the_rest_keeps_its_hu(study: tuple[cv.Scan, PlantedNodule, float]) -> None:
    scan, _, _ = study
    original = np.asarray(orient(scan.volume).array)
    outside = Padding(0).outside(*original.shape[1:])
    for encoding, padding in ((UNSIGNED_1024, Padding(63536, range_limit=65535)), (SIGNED_1024, Padding(-2000))):
        volume = _through_dicom(scan, encoding, padding)
        array = np.asarray(orient(volume).array)  # type: ignore[arg-type]
        assert np.all(array[:, outside] == -1024.0), "padding must read as air"
        assert np.array_equal(array[:, ~outside], original[:, ~outside])


def test_a_padding_value_read_with_the_wrong_sign_still_marks_the_padding(
        study: tuple[cv.Scan, PlantedNodule, float]) -> None:
    scan, _, _ = study
    datasets = encode_series(scan.volume, SIGNED_1024, Padding(-2000))
    for ds in datasets:  # a writer that put -2000 into an unsigned VR
        del ds.PixelPaddingValue
        ds.add_new(0x00280120, "US", 63536)
    array = np.asarray(volume_from_datasets(reread(datasets)).array)
    assert array.min() == -1024.0


@pytest.mark.parametrize("encoding", [SIGNED_HU, PixelEncoding(signed=False, intercept=-1024.0, slope=0.5),
                                      PixelEncoding(signed=True, intercept=0.0, slope=2.0)],
                         ids=["signed-intercept-0", "unsigned-slope-0.5", "signed-slope-2"])
def test_stored_value_conventions_give_the_same_hu(study: tuple[cv.Scan, PlantedNodule, float],
                                                   encoding: PixelEncoding) -> None:
    scan, _, _ = study
    volume = orient(_through_dicom(scan, encoding))  # type: ignore[arg-type]
    assert np.max(np.abs(np.asarray(volume.array) - np.asarray(orient(scan.volume).array))) <= encoding.slope / 2


def test_lungs_cut_by_a_small_field_of_view_stay_in_the_mask(study: tuple[cv.Scan, PlantedNodule, float]) -> None:
    scan, _, _ = study
    columns = np.nonzero((np.asarray(scan.labels.array) == Tissue.LUNG).any(axis=(0, 1)))[0]  # type: ignore[union-attr]
    width_mm = (columns[-1] - columns[0]) * scan.spacing_mm[2]
    cropped = cv.crop_field_of_view(scan, 0.85 * width_mm)  # a targeted reconstruction narrower than the lungs
    labels = np.asarray(cropped.labels.array)  # type: ignore[union-attr]
    lung = labels == Tissue.LUNG
    border = lung[:, :, 0] | lung[:, :, -1]
    assert border.any(), "the crop must cut through a lung for this test"
    mask = lung_mask(orient(cropped.volume))
    k, j, i = np.nonzero(lung)
    pick = np.random.default_rng(0).choice(len(k), 5000, replace=False)
    points = np.array([cropped.volume.affine @ [k[p], j[p], i[p], 1.0] for p in pick])[:, :3]
    assert mask.filled.lookup(points).mean() > 0.9


def test_five_millimetre_slices_are_turned_away_by_the_series_gate(
        study: tuple[cv.Scan, PlantedNodule, float]) -> None:
    scan, _, _ = study
    datasets = encode_series(cv.reslice(scan, 5.0).volume)
    verdict = check_series("1.2.3", [(Path(f"{i}.dcm"), ds) for i, ds in enumerate(datasets)])
    assert isinstance(verdict, Rejection)
    assert verdict.reason == "slice spacing 5.00 mm > 3.0 mm"


@pytest.mark.parametrize("change", [
    lambda s: cv.rotate_in_plane(s, 15.0),
    lambda s: cv.shift_in_plane(s, 20.0, -12.0),
    lambda s: cv.reposition(s, "HFDL"),
    lambda s: cv.crop_field_of_view(s, 200.0),
    lambda s: cv.reslice(s, 1.0),
], ids=["rotate", "shift", "decubitus", "small-fov", "reslice"])
def test_conventions_keep_the_truth_on_the_nodule(study: tuple[cv.Scan, PlantedNodule, float], change) -> None:
    scan, _, _ = study
    changed = change(scan)
    labels = np.asarray(changed.labels.array) == Tissue.NODULE
    centre = (changed.volume.affine @ np.r_[np.argwhere(labels).mean(axis=0), 1.0])[:3]
    assert np.linalg.norm(centre - np.asarray(changed.nodules[0].centre_xyz_mm)) < 1.0
