"""Behaviour of the generator's families of variation and rendering styles (non-nodule part).

Volumes are small (at most 48 slices of 128 x 128) so each test runs in seconds.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest

from pacs_node.ml.phantom import HU_MAX, HU_MIN, Phantom, Tissue, generate_phantom
from pacs_node.ml.phantom.variation import Variation

SMALL: dict[str, Any] = {"shape_zyx": (40, 96, 96)}
#: sha256 of (volume_hu, labels) of the classic generator at the commit before families existed
CLASSIC_SHA256 = {
    0: ("ad786f12eb9b719459beefdc59d4bba7f299f9ba3c67c3980c5c71e86bc7f8a1",
        "03e1dd0ddb95f8696168a76e6b2ef72bc3084c4c5ba197b38c6e6e621d6999a9"),
    7: ("20edc8d16379230b50c300d911cf0908d89362900a86b873fe0d2eb527c7c57c",
        "010e254573932b84c8906eaf04252b98de3192b2fc4f3fc3192cf31696456d28"),
}
CLASSIC_KW: dict[int, dict[str, Any]] = {0: SMALL, 7: {"shape_zyx": (32, 80, 80), "spacing_zyx_mm": (2.5, 2.0, 2.0)}}


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _only(*families: str, styles: tuple[str, ...] = ("classic",)) -> Variation:
    return Variation(frozenset(families), styles)


@pytest.mark.parametrize("seed", sorted(CLASSIC_SHA256))
@pytest.mark.parametrize("variation", [None, Variation.classic()])
def test_classic_generator_is_bit_identical_to_v1(seed: int, variation: Variation | None) -> None:
    p = generate_phantom(seed, **CLASSIC_KW[seed], variation=variation)
    assert p.labels is not None
    assert (_sha(p.volume_hu), _sha(p.labels)) == CLASSIC_SHA256[seed]
    assert p.acquisition["style"] == "classic"
    assert "airway_rings" not in p.acquisition


def test_same_seed_and_variation_give_the_same_study() -> None:
    v = Variation.wide()
    kw: dict[str, Any] = {"shape_zyx": (20, 80, 80), "spacing_zyx_mm": (3.0, 4.0, 4.0)}
    a = generate_phantom(3, **kw, variation=v)
    b = generate_phantom(3, **kw, variation=v)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    assert a.labels is not None and b.labels is not None
    assert np.array_equal(a.labels, b.labels)
    assert a.acquisition == b.acquisition


def test_wide_studies_have_no_nan_and_stay_in_the_stored_hu_range() -> None:
    for seed in range(3):
        p = generate_phantom(seed, shape_zyx=(20, 80, 80), spacing_zyx_mm=(3.0, 4.0, 4.0), variation=Variation.wide())
        assert p.volume_hu.dtype == np.int16
        assert HU_MIN <= int(p.volume_hu.min()) and int(p.volume_hu.max()) <= HU_MAX
        assert p.labels is not None and set(np.unique(p.labels)) <= {int(t) for t in Tissue}
        assert np.count_nonzero(p.labels == Tissue.LUNG) > 500


def test_wide_parenchyma_spans_minus_900_to_minus_750_hu() -> None:
    drawn, measured = [], []
    for seed in range(10):
        p = generate_phantom(seed, shape_zyx=(12, 48, 48), spacing_zyx_mm=(6.0, 6.0, 6.0),
                             variation=_only("parenchyma"), n_nodules=0)
        drawn.append(float(p.acquisition["parenchyma_hu"]))
        assert p.labels is not None
        measured.append(float(np.median(p.volume_hu[p.labels == Tissue.LUNG])))
    assert all(-900.0 <= d <= -750.0 for d in drawn)
    assert min(drawn) < -860.0 and max(drawn) > -790.0
    # the lungs follow the drawn density (vessels, gradients and dependent density move the median)
    assert np.corrcoef(drawn, measured)[0, 1] > 0.6
    assert max(measured) - min(measured) > 60.0


def _axial_rings(p: Phantom) -> int:
    """Air lumens (labelled airway, below -700 HU) that are closed rings in an axial slice."""
    from scipy import ndimage as ndi

    assert p.labels is not None
    n = 0
    for k in range(p.shape_zyx[0]):
        lumen = (p.labels[k] == Tissue.AIRWAY) & (p.volume_hu[k] < -700)
        lab, m = ndi.label(lumen)
        if m == 0:
            continue
        sizes = ndi.sum(lumen, lab, range(1, m + 1))
        for i in np.nonzero((sizes >= 2) & (sizes <= 60))[0]:
            blob = lab == i + 1
            ring = ndi.binary_dilation(blob, iterations=1) & ~blob
            if np.mean(p.labels[k][ring] == Tissue.AIRWAY) > 0.6:
                n += 1
    return n


def test_wide_airways_add_air_rings_with_walls_in_axial_slices() -> None:
    kw: dict[str, Any] = {"shape_zyx": (40, 128, 128), "spacing_zyx_mm": (1.5, 1.2, 1.2), "n_nodules": 0}
    classic = generate_phantom(4, **kw)
    wide = generate_phantom(4, **kw, variation=_only("airways"))
    assert int(wide.acquisition["airway_rings"]) >= 10
    assert _axial_rings(wide) > 2 * _axial_rings(classic) + 10


def test_wide_acquisition_draws_thick_slices_and_fine_pixels() -> None:
    thick, pixels, kernels = [], [], set()
    for seed in range(12):
        p = generate_phantom(seed, shape_zyx=(16, 64, 64), spacing_zyx_mm=(1.0, 4.0, 4.0),
                             variation=_only("acquisition"), n_nodules=0)
        thick.append(float(p.acquisition["slice_thickness_mm"]))
        kernels.add(str(p.acquisition["kernel"]))
    assert all(0.6 <= t <= 3.0 for t in thick)
    assert sum(t > 1.0 for t in thick) >= 4  # slice thickness > spacing
    assert len(kernels) >= 3
    from pacs_node.ml.phantom._study import _draw_wide_grid

    for seed in range(40):
        pixels.append(_draw_wide_grid(np.random.default_rng(seed))[1])
    assert min(pixels) < 0.6 and max(pixels) > 0.9


def test_thick_slices_blur_along_z() -> None:
    from pacs_node.ml.phantom._acquisition import _slice_profile

    assert _slice_profile(1.0, 1.0) is None
    w = _slice_profile(3.0, 0.625)
    assert w is not None and abs(float(w.sum()) - 1.0) < 1e-5
    assert len(w) >= 5 and float(w.max()) < 0.35


def test_switching_one_family_leaves_the_others_draws_unchanged() -> None:
    kw: dict[str, Any] = {"shape_zyx": (24, 64, 64), "spacing_zyx_mm": (3.0, 4.0, 4.0), "n_nodules": 0}
    keys = ("parenchyma_hu", "emphysema", "dependent_hu", "kernel", "slice_thickness_mm", "noise_std_hu",
            "fissure_hu", "pleural_thickening_mm")
    with_body = generate_phantom(9, **kw, variation=_only("parenchyma", "acquisition", "pleura", "body"))
    without = generate_phantom(9, **kw, variation=_only("parenchyma", "acquisition", "pleura"))
    assert with_body.acquisition["lung_height_mm"] != without.acquisition["lung_height_mm"]
    assert {k: with_body.acquisition[k] for k in keys} == {k: without.acquisition[k] for k in keys}
    # a classic family keeps its classic draw when another family is widened
    classic = generate_phantom(9, **kw)
    only_acq = generate_phantom(9, **kw, variation=_only("acquisition"))
    assert classic.acquisition["parenchyma_hu"] == only_acq.acquisition["parenchyma_hu"]
    assert classic.acquisition["body_half_width_mm"] == only_acq.acquisition["body_half_width_mm"]


def test_wide_families_draw_their_mimics() -> None:
    kw: dict[str, Any] = {"shape_zyx": (24, 80, 80), "spacing_zyx_mm": (4.0, 4.0, 4.0), "n_nodules": 0}
    totals: dict[str, int] = {}
    for seed in range(4):
        p = generate_phantom(seed, **kw, variation=Variation.wide(without=("nodules",)))
        for k in ("vessel_ends", "airway_rings", "fibrosis_bands", "atelectasis_plates", "scars", "plaques"):
            totals[k] = totals.get(k, 0) + int(p.acquisition.get(k, 0))
    assert totals["vessel_ends"] >= 20 and totals["airway_rings"] >= 20
    assert totals["fibrosis_bands"] + totals["atelectasis_plates"] + totals["scars"] >= 3


def test_styles_render_measurably_different_lungs() -> None:
    """Same seed, same (classic) acquisition and noise: only the style's rendering differs."""
    from scipy import ndimage as ndi
    from scipy.stats import skew

    kw: dict[str, Any] = {"shape_zyx": (9, 160, 160), "spacing_zyx_mm": (1.0, 0.7, 0.7), "n_nodules": 0}
    for seed in (1, 2):
        vols = {}
        for style in ("classic", "lobular", "mottled"):
            p = generate_phantom(seed, **kw, variation=_only(styles=(style,)))
            assert p.acquisition["style"] == style
            vols[style] = p.volume_hu.astype(np.float64)
            if style == "classic":
                assert p.labels is not None
                lung = ndi.binary_erosion(p.labels == Tissue.LUNG, iterations=3)
        sel = lung & np.all([v < -600.0 for v in vols.values()], axis=0)  # parenchyma, not vessels
        assert sel.sum() > 1000
        names = sorted(vols)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                assert float((vols[a] - vols[b])[sel].std()) > 20.0, (seed, a, b)
        # septa, centrilobular dots and clumpy mottling skew the parenchyma's histogram to dense values
        sk = {k: float(skew(v[sel])) for k, v in vols.items()}
        assert sk["lobular"] > sk["classic"] + 0.3 and sk["mottled"] > sk["classic"] + 0.3, sk


def test_mottled_texture_never_draws_a_blotch_as_dense_as_faint_ground_glass() -> None:
    """Its skewed clumps were drawn up to several hundred HU above the lung: unlabelled nodules."""
    from dataclasses import replace
    from types import SimpleNamespace

    from pacs_node.ml.phantom._lungmodel import MOTTLED_CAP_HU, _LungModel
    from pacs_node.ml.phantom._parenchyma import _draw_parenchyma

    rng = np.random.default_rng(5)
    par = replace(_draw_parenchyma(rng), tex_amp=35.0)  # the top of the wide range
    no_fissure_gap = SimpleNamespace(fissure_gap=0.0, fissure_amp=0.0)
    model = _LungModel(par, no_fissure_gap, None, "mottled", rng, rng, rng)  # type: ignore[arg-type]
    model.style_params.update(hurst=1.0, skew=0.9, gain=2.5)  # the most clumpy draw
    model.start((128, 128), 0.7, 0.0)
    hu, unit = zip(*(model._texture(None, None, z, z, None) for z in np.arange(0.0, 60.0, 1.5)))  # type: ignore[arg-type]
    hu_a, unit_a = np.array(hu), np.array(unit)
    assert (par.tex_amp * 2.5 * unit_a).max() > 250.0  # what the clumps would have been
    assert hu_a.max() <= MOTTLED_CAP_HU < 100.0
    assert hu_a.min() < -60.0  # the dark side (emphysema-like) is untouched
