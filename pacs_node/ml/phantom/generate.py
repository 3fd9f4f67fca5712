"""Generate one synthetic chest CT study from one integer seed.

The anatomy is analytic (body wall, lungs, mediastinum, heart, spine, ribs, diaphragm),
the pulmonary vessel and airway trees are grown into the lungs and drawn segment by
segment inside each segment's bounding box, nodules are drawn inside their own
boxes, and a CT acquisition (point spread, kernel sharpening, spatially correlated
noise, streaks, calibration offsets) is applied slab by slab.  Nothing is computed
over the full volume per object, so a 512 x 512 x 300 study takes seconds.

With a :class:`.Variation`, each wide family draws its study-level parameters from
its own stream (:func:`.variation.family_rng`) first, then the objects it adds
(airway rings, mucus plugs, bullae, bands, plaques, vessel ends) from a child of
that stream, so switching one family on or off leaves the others' draws unchanged;
the classic streams are consumed exactly as by the classic generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.uid import generate_uid

from pacs_node.ml.phantom._acquisition import _Acq, _acquire, _sample_acquisition, _sample_wide_acquisition
from pacs_node.ml.phantom._airways import _draw_airways, _render_airway_extras
from pacs_node.ml.phantom._anatomy import _render_base, _render_mediastinum
from pacs_node.ml.phantom._geometry import _Canvas, _Grid, _Pose, _sample_lung_points
from pacs_node.ml.phantom._lungmodel import _LungModel
from pacs_node.ml.phantom._nodules import _draw_nodule_specs, _NoduleSpec, _place_and_render_nodules, _Shape
from pacs_node.ml.phantom._parenchyma import _draw_parenchyma, _Parenchyma, _render_lesions
from pacs_node.ml.phantom._pleura import _draw_pleura, _Pleura, _render_plaques
from pacs_node.ml.phantom._study import _Body, _Look, _sample_study
from pacs_node.ml.phantom._tubes import _Segment
from pacs_node.ml.phantom._vessels import BRANCHING, _draw_vessels, _render_trees, _render_vessel_ends
from pacs_node.ml.phantom.truth import NODULE_TYPES, NoduleType, Phantom
from pacs_node.ml.phantom.variation import FAMILIES, Variation, family_rng, style_rng


def _child(rng: np.random.Generator) -> np.random.Generator:
    """An independent stream for the objects a family adds, after its study-level draws."""
    return np.random.default_rng(int(rng.integers(2**63)))


def generate_phantom(
    seed: int,
    *,
    shape_zyx: tuple[int, int, int] | None = None,
    spacing_zyx_mm: tuple[float, float, float] | None = None,
    n_nodules: int | None = None,
    nodule_types: Sequence[NoduleType] | None = None,
    diameter_range_mm: tuple[float, float] = (3.0, 30.0),
    keep_labels: bool = True,
    variation: Variation | None = None,
) -> Phantom:
    """Generate one synthetic chest CT study.

    Parameters
    ----------
    seed
        Everything random is drawn from ``numpy`` generators seeded from this alone.
    shape_zyx
        Volume shape ``(nz, ny, nx)``.  Default: 512 x 512 in-plane and enough slices
        (100 to 400) to cover the chest.  With a shape but no spacing, the spacing is
        chosen so that the field of view fits the body and the slices cover the chest.
    spacing_zyx_mm
        Voxel spacing (mm).  Default: slice spacing 0.625 to 2.5 mm, pixel spacing 0.6
        to 0.9 mm chosen from the body size.  If both shape and spacing are given and
        the field of view is smaller than the chest, a random part of the chest is
        covered (and the body may be trimmed laterally).
    n_nodules
        Number of nodules to plant.  Default: none in about a fifth of studies, else
        1 to 4.  A nodule that does not fit is made smaller (not below the range's
        minimum) or left out, so small volumes may get fewer.
    nodule_types
        If given, nodule ``i`` has type ``nodule_types[i % len(nodule_types)]``;
        otherwise types are drawn (solid most often).
    diameter_range_mm
        Range of nodule diameters (mm), within 3 to 30 by default; the distribution
        favours 4 to 12 mm.
    keep_labels
        Keep the :class:`Tissue` label volume in :attr:`Phantom.labels`.
    variation
        Families drawn from wide ranges and styles allowed (:mod:`.variation`);
        default :meth:`Variation.classic`, the v1 generator (same seed, same study).

    Returns
    -------
    Phantom
        The study; ``volume_hu`` is ``int16`` HU indexed ``[z, y, x]``.
    """
    _check_args(seed, n_nodules, nodule_types, diameter_range_mm)
    anat = _draw_anatomy(seed, shape_zyx, spacing_zyx_mm, variation or Variation.classic())
    return _finish(anat, n_nodules, nodule_types, diameter_range_mm, keep_labels)


def _check_args(seed: int, n_nodules: int | None, nodule_types: Sequence[NoduleType] | None,
                diameter_range_mm: tuple[float, float]) -> None:
    """Raise ``ValueError`` on arguments :func:`generate_phantom` refuses."""
    if not 0.0 < diameter_range_mm[0] <= diameter_range_mm[1]:
        raise ValueError(f"diameter_range_mm must be increasing and positive, got {diameter_range_mm}")
    if nodule_types is not None:
        bad = [t for t in nodule_types if t not in NODULE_TYPES]
        if bad or not nodule_types:
            raise ValueError(f"nodule_types must be a non-empty list of {NODULE_TYPES}, got {nodule_types!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if n_nodules is not None and n_nodules < 0:
        raise ValueError(f"n_nodules must be >= 0, got {n_nodules}")


@dataclass
class _Anatomy:
    """A study drawn up to its nodules: the canvas and what the later stages read."""

    seed: int
    variation: Variation
    style: str
    grid: _Grid
    pose: _Pose
    body: _Body
    look: _Look
    canvas: _Canvas
    lung_pts: np.ndarray  # world LPS mm
    vessels: list[_Segment]
    par: _Parenchyma
    pleura: _Pleura
    bronchus_r_min: float
    mimics: dict[str, int]
    rng_nod: np.random.Generator
    rng_acq: np.random.Generator
    rng_wide_acq: np.random.Generator | None


def _draw_anatomy(
    seed: int,
    shape_zyx: tuple[int, int, int] | None,
    spacing_zyx_mm: tuple[float, float, float] | None,
    variation: Variation,
) -> _Anatomy:
    """Everything :func:`generate_phantom` draws before the nodules (same streams, same order)."""
    seq = np.random.SeedSequence(int(seed))
    # the classic streams; each wide family draws from its own (variation.family_rng)
    rng_anat, rng_tree, rng_nod, rng_acq = (np.random.default_rng(s) for s in seq.spawn(4))
    style = variation.draw_style(seed)
    wide = {f: family_rng(seed, f) if variation.is_wide(f) else None for f in FAMILIES if f != "nodules"}
    grid, pose, body, look = _sample_study(rng_anat, shape_zyx, spacing_zyx_mm, wide["body"], wide["acquisition"])
    # study-level draws of the wide families, each from its own stream, before any object
    rng_p, rng_pl, rng_v, rng_aw = wide["parenchyma"], wide["pleura"], wide["vessels"], wide["airways"]
    par = _draw_parenchyma(rng_p) if rng_p is not None else _Parenchyma.classic(look)
    pleura = _draw_pleura(rng_pl, body) if rng_pl is not None else _Pleura.classic(body, look)
    body.fissures = pleura.fissures
    ends_params = None
    if rng_v is not None:
        look, ends_params = _draw_vessels(rng_v, look)
    airways = _draw_airways(rng_aw) if rng_aw is not None else None
    rng_style = style_rng(seed)
    model = None
    if style != "classic" or rng_p is not None or rng_pl is not None:
        model = _LungModel(par, pleura, body, style, _child(rng_style), _child(rng_p or family_rng(seed, "parenchyma")),
                           _child(rng_pl or family_rng(seed, "pleura")))
    canvas = _Canvas.empty(grid)
    _render_base(canvas, pose, body, look, rng_anat, model)
    roots = _render_mediastinum(canvas, pose, body, look)
    lung_pts = _sample_lung_points(canvas, rng_tree, 150_000)
    rng_grow = rng_tree
    if rng_v is not None or style != "classic":
        rng_grow = _child(rng_v if rng_v is not None else rng_style)
    ends: list[tuple[np.ndarray, float, float]] | None = [] if ends_params is not None else None
    vessels = _render_trees(canvas, pose, body, look, rng_grow, roots, lung_pts, BRANCHING[style],
                            airways.walls if airways is not None else None, ends)
    # the mimics each wide family adds (before the nodules, so that nodules stay on top)
    mimics: dict[str, int] = {}
    if airways is not None and rng_aw is not None:
        mimics.update(_render_airway_extras(canvas, airways, _child(rng_aw), lung_pts, look.artery))
    if rng_p is not None:
        mimics.update(_render_lesions(canvas, pose, body, par, _child(rng_p), lung_pts))
    if rng_pl is not None:
        mimics.update(_render_plaques(canvas, pleura, _child(rng_pl), lung_pts))
    if ends_params is not None and ends is not None and rng_v is not None:
        mimics["vessel_ends"] = _render_vessel_ends(canvas, _child(rng_v), lung_pts, ends, ends_params)
    return _Anatomy(
        seed=int(seed), variation=variation, style=style, grid=grid, pose=pose, body=body, look=look, canvas=canvas,
        lung_pts=lung_pts, vessels=vessels, par=par, pleura=pleura,
        bronchus_r_min=airways.walls.r_min if airways else look.bronchus_r_min, mimics=mimics,
        rng_nod=rng_nod, rng_acq=rng_acq, rng_wide_acq=wide["acquisition"],
    )


def _finish(
    anat: _Anatomy,
    n_nodules: int | None,
    nodule_types: Sequence[NoduleType] | None,
    diameter_range_mm: tuple[float, float],
    keep_labels: bool,
    record: list[tuple[np.ndarray, _NoduleSpec, _Shape]] | None = None,
) -> Phantom:
    """Plant the nodules and acquire: the rest of :func:`generate_phantom` (consumes the canvas).

    ``record`` (classic nodules only) receives each planted nodule's centre, spec and shape.
    """
    seed, variation, style, canvas = anat.seed, anat.variation, anat.style, anat.canvas
    grid, pose, body = anat.grid, anat.pose, anat.body
    rng_nod, rng_acq = anat.rng_nod, anat.rng_acq
    specs = _draw_nodule_specs(rng_nod, n_nodules, nodule_types, diameter_range_mm, variation=variation,
                               style=style, seed=seed)
    nodules = _place_and_render_nodules(canvas, rng_nod, specs, anat.lung_pts, anat.vessels, diameter_range_mm[0],
                                        variation=variation, style=style, seed=seed, body=body, pose=pose,
                                        record=record)
    acq = _sample_acquisition(rng_acq, grid, pose, body)
    rng_noise = rng_acq
    if anat.rng_wide_acq is not None:
        acq = _sample_wide_acquisition(anat.rng_wide_acq, grid, pose, body)
        rng_noise = _child(anat.rng_wide_acq)
    volume = _acquire(canvas, body, pose, acq, rng_noise)
    ident = [f"pacs-node-phantom-{int(seed)}"]
    info = _study_info(anat, grid, pose, acq)
    return Phantom(
        volume_hu=volume,
        spacing_zyx_mm=grid.spacing,
        origin_xyz_mm=grid.origin,
        nodules=nodules,
        seed=int(seed),
        labels=canvas.lab if keep_labels else None,
        acquisition=info,
        study_uid=generate_uid(entropy_srcs=ident + ["study"]),
        series_uid=generate_uid(entropy_srcs=ident + ["series"]),
        frame_of_reference_uid=generate_uid(entropy_srcs=ident + ["for"]),
    )


def _study_info(anat: _Anatomy, grid: _Grid, pose: _Pose, acq: _Acq) -> dict[str, float | int | str | bool]:
    """Study-level parameters for :attr:`Phantom.acquisition` (body, look, pose, acquisition, mimics)."""
    body, look, par, pleura = anat.body, anat.look, anat.par, anat.pleura
    style, variation = anat.style, anat.variation
    return {
        "body_half_width_mm": round(body.W, 1),
        "body_half_depth_mm": round(0.5 * (body.Da + body.Dp), 1),
        "lung_height_mm": round(body.H, 1),
        "contrast": look.contrast,
        "patient_roll_deg": round(math.degrees(pose.theta), 2),
        "style": style,
        "wide_families": ",".join(sorted(variation.families)) or "none",
        "slice_thickness_mm": round(max(acq.slice_thickness_mm, grid.spacing[0]), 3),
        "parenchyma_hu": round(par.hu, 1),
        "emphysema": round(par.emph, 3),
        "dependent_hu": round(par.dep_amp, 1),
        "fissure_hu": round(pleura.fissure_amp, 1),
        "pleural_thickening_mm": round(pleura.thick_mm, 2),
        "vessel_density": round(look.vessel_density, 3),
        "bronchus_r_min_mm": round(anat.bronchus_r_min, 3),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in acq.summary().items()},
        **anat.mimics,
    }
