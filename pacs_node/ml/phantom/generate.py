"""Generate one synthetic chest CT study from one integer seed.

The anatomy is analytic (body wall, lungs, mediastinum, heart, spine, ribs, diaphragm),
the pulmonary vessel and airway trees are grown into the lungs and drawn segment by
segment inside each segment's bounding box, nodules are drawn inside their own
boxes, and a CT acquisition (point spread, kernel sharpening, spatially correlated
noise, streaks, calibration offsets) is applied slab by slab.  Nothing is computed
over the full volume per object, so a 512 x 512 x 300 study takes seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydicom.uid import generate_uid

from pacs_node.ml.phantom._acquisition import _acquire, _sample_acquisition
from pacs_node.ml.phantom._anatomy import _render_base, _render_mediastinum
from pacs_node.ml.phantom._geometry import _Canvas, _sample_lung_points
from pacs_node.ml.phantom._nodules import _draw_nodule_specs, _place_and_render_nodules
from pacs_node.ml.phantom._study import _sample_study
from pacs_node.ml.phantom._vessels import _render_trees
from pacs_node.ml.phantom.truth import NODULE_TYPES, NoduleType, Phantom


def generate_phantom(
    seed: int,
    *,
    shape_zyx: tuple[int, int, int] | None = None,
    spacing_zyx_mm: tuple[float, float, float] | None = None,
    n_nodules: int | None = None,
    nodule_types: Sequence[NoduleType] | None = None,
    diameter_range_mm: tuple[float, float] = (3.0, 30.0),
    keep_labels: bool = True,
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

    Returns
    -------
    Phantom
        The study; ``volume_hu`` is ``int16`` HU indexed ``[z, y, x]``.
    """
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
    seq = np.random.SeedSequence(int(seed))
    rng_anat, rng_tree, rng_nod, rng_acq = (np.random.default_rng(s) for s in seq.spawn(4))
    grid, pose, body, look = _sample_study(rng_anat, shape_zyx, spacing_zyx_mm)
    canvas = _Canvas.empty(grid)
    _render_base(canvas, pose, body, look, rng_anat)
    roots = _render_mediastinum(canvas, pose, body, look)
    lung_pts = _sample_lung_points(canvas, rng_tree, 150_000)
    vessels = _render_trees(canvas, pose, body, look, rng_tree, roots, lung_pts)
    specs = _draw_nodule_specs(rng_nod, n_nodules, nodule_types, diameter_range_mm)
    nodules = _place_and_render_nodules(canvas, rng_nod, specs, lung_pts, vessels, diameter_range_mm[0])
    acq = _sample_acquisition(rng_acq, grid, pose, body)
    volume = _acquire(canvas, body, pose, acq, rng_acq)
    ident = [f"pacs-node-phantom-{int(seed)}"]
    info: dict[str, float | int | str | bool] = {
        "body_half_width_mm": round(body.W, 1),
        "body_half_depth_mm": round(0.5 * (body.Da + body.Dp), 1),
        "lung_height_mm": round(body.H, 1),
        "contrast": look.contrast,
        "patient_roll_deg": round(math.degrees(pose.theta), 2),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in acq.summary().items()},
    }
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
