"""Synthetic follow-up series: several CT studies of one synthetic patient over time.

Time point 0 is the ordinary phantom of the seed (bit for bit what
:func:`.generate_phantom` makes with the same arguments).  A later time point is the
baseline scene *before* its nodules (body, lungs, vessels, airways, parenchyma) moved
by a :class:`.Reposition` (rigid move on the table plus another breath-hold depth) and
resampled onto a new grid (same in-plane grid, possibly another slice spacing), with
the nodules redrawn on it, and a freshly drawn acquisition (kernel, noise, artefacts).

Each nodule (a *lesion*, with a ``lesion_id`` kept across time points) keeps its shape,
turned with the patient; only its size changes, by similarity about its centre, with
volume ``V(t) = V(t_first) * 2 ** ((t - t_first) / vdt_days)`` (``vdt_days < 0``: the
volume halves every ``|vdt_days|``).  Courses: ``stable``, ``growing``, ``shrinking``,
``resolving`` (stable until it disappears) and ``new`` (appears at a later time point,
then stable or growing).  Only classic nodules can be followed (the wide nodule family
and the non-classic styles draw shapes this module cannot re-scale).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.uid import generate_uid

from pacs_node.ml.phantom._acquisition import _acquire, _sample_acquisition, _sample_wide_acquisition
from pacs_node.ml.phantom._nodules import _NoduleSpec, _render_nodule, _Shape
from pacs_node.ml.phantom._study import _SLICE_SPACINGS
from pacs_node.ml.phantom.generate import _check_args, _child, _draw_anatomy, _finish, _study_info
from pacs_node.ml.phantom.lesions import (
    BASELINE_COURSES,
    Change,
    Course,
    Lesion,
    LesionState,
    _drawn,
    _moved_shape,
    _plan,
    _states,
)
from pacs_node.ml.phantom.reposition import Reposition, _draw_reposition, _followup_grid, _followup_pose, _resample
from pacs_node.ml.phantom.truth import NoduleType, Phantom, PlantedNodule
from pacs_node.ml.phantom.variation import Variation

__all__ = ["BASELINE_COURSES", "Change", "Course", "FollowUp", "Lesion", "LesionState", "TimePoint",
           "generate_followup"]

_TAG = 0xF0110  # the follow-up streams of a seed: SeedSequence([seed, _TAG, time point])


@dataclass(frozen=True, eq=False)
class TimePoint:
    """One study of the follow-up: its day after baseline, the phantom, how the patient
    lies relative to the baseline (identity at time point 0) and the lesions' truth
    (``phantom.nodules`` are the present lesions, in the same order)."""

    index: int
    day: float
    phantom: Phantom
    reposition: Reposition
    lesions: list[LesionState]


@dataclass(frozen=True, eq=False)
class FollowUp:
    """A follow-up series of one synthetic patient (``seed``)."""

    seed: int
    timepoints: list[TimePoint]
    lesions: list[Lesion]


def generate_followup(
    seed: int,
    n_timepoints: int = 2,
    *,
    interval_days: float | Sequence[float] = 365.0,
    shape_zyx: tuple[int, int, int] | None = None,
    spacing_zyx_mm: tuple[float, float, float] | None = None,
    n_nodules: int | None = None,
    nodule_types: Sequence[NoduleType] | None = None,
    diameter_range_mm: tuple[float, float] = (3.0, 30.0),
    courses: Sequence[str] | None = None,
    vdt_days: float | tuple[float, float] = (90.0, 900.0),
    n_new: int | None = None,
    new_diameter_mm: tuple[float, float] = (4.0, 10.0),
    repositions: Sequence[Reposition] | None = None,
    slice_spacings_mm: Sequence[float] | None = None,
    keep_labels: bool = True,
    variation: Variation | None = None,
) -> FollowUp:
    """Generate ``n_timepoints`` studies of one synthetic patient (see the module docstring).

    Parameters
    ----------
    seed, shape_zyx, spacing_zyx_mm, n_nodules, nodule_types, diameter_range_mm, keep_labels, variation
        As :func:`.generate_phantom`, for the baseline (time point 0 is that phantom).
    interval_days
        Days between consecutive time points (one value, or one per interval).
    courses
        Course of baseline nodule ``i``: ``courses[i % len(courses)]`` from
        :data:`BASELINE_COURSES`; default drawn (stable 40 %, growing 30 %,
        shrinking 15 %, resolving 15 %).
    vdt_days
        Volume doubling (growing, new) or halving (shrinking) time in days: a fixed
        value, or a range drawn log-uniformly.
    n_new
        Nodules appearing after baseline (solid, smooth, free); default 0 to 2.
    new_diameter_mm
        Range of their diameter (mm) when they appear.
    repositions
        Re-positioning of time points 1, 2, ... (shift, rotation, ``si_stretch``); its
        pivot and stretch anchors are replaced by the patient's.  Default drawn
        (:func:`.reposition._draw_reposition`).
    slice_spacings_mm
        Slice spacing (mm) of time points 1, 2, ...; default the baseline's or, in
        half of the studies, another clinical spacing (at most 400 slices).

    Returns
    -------
    FollowUp
        The time points, each with its phantom and truth, and the lesions' courses.
    """
    _check_args(seed, n_nodules, nodule_types, diameter_range_mm)
    if n_timepoints < 1:
        raise ValueError(f"n_timepoints must be >= 1, got {n_timepoints}")
    gaps = [float(interval_days)] * (n_timepoints - 1) if isinstance(interval_days, (int, float)) \
        else [float(v) for v in interval_days]
    if len(gaps) != n_timepoints - 1 or any(g <= 0 for g in gaps):
        raise ValueError(f"interval_days must be positive, one per interval, got {interval_days!r}")
    if courses is not None and (not courses or any(c not in BASELINE_COURSES for c in courses)):
        raise ValueError(f"courses must be a non-empty list of {BASELINE_COURSES}, got {courses!r}")
    for name, seq in (("repositions", repositions), ("slice_spacings_mm", slice_spacings_mm)):
        if seq is not None and len(seq) != n_timepoints - 1:
            raise ValueError(f"{name} needs one entry per later time point ({n_timepoints - 1}), got {len(seq)}")
    variation = variation or Variation.classic()
    if variation.is_wide("nodules") or variation.styles != ("classic",):
        raise ValueError("follow-ups need classic nodules: no wide 'nodules' family, classic style only")
    days = [0.0, *np.cumsum(gaps).tolist()]
    anat = _draw_anatomy(seed, shape_zyx, spacing_zyx_mm, variation)
    vol0, lab0 = anat.canvas.vol.copy(), anat.canvas.lab.copy()
    canvas0 = dataclasses.replace(anat.canvas, vol=vol0, lab=lab0)
    record: list[tuple[np.ndarray, _NoduleSpec, _Shape]] = []
    base = _finish(anat, n_nodules, nodule_types, diameter_range_mm, keep_labels, record)
    body, pose0, g0 = anat.body, anat.pose, anat.grid
    lesions = _plan(anat, record, n_timepoints, np.random.default_rng([int(seed), _TAG, 0]), courses, vdt_days,
                    n_new, new_diameter_mm, canvas0, days[-1])
    centre = pose0.to_world(np.array([[0.0, 0.0, 0.5 * body.H]]))[0]
    anchors = {"centre_xyz_mm": tuple(float(v) for v in centre), "apex_z_mm": float(pose0.zoff + body.H),
               "floor_z_mm": float(pose0.zoff - body.dome_post - max(body.dome_l, 0.0))}
    still = Reposition(**anchors)  # type: ignore[arg-type]
    tps = [TimePoint(0, 0.0, base, still, _drawn(base, lesions, _states(lesions, 0, days, still)))]
    for k in range(1, n_timepoints):
        rng_pos, rng_acq, rng_tex = (np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), _TAG, k])
                                     .spawn(3))
        rep = _draw_reposition(rng_pos, centre, anchors["apex_z_mm"], anchors["floor_z_mm"])  # type: ignore[arg-type]
        if repositions is not None:
            rep = dataclasses.replace(repositions[k - 1], **anchors)  # type: ignore[arg-type]
        span = (g0.shape[0] - 1) * g0.spacing[0]
        other = [v for v in _SLICE_SPACINGS if span / v < 400.0] or [g0.spacing[0]]
        dz = g0.spacing[0] if rng_pos.random() < 0.5 else float(rng_pos.choice(other))
        if slice_spacings_mm is not None:
            dz = float(slice_spacings_mm[k - 1])
        grid = _followup_grid(g0, rep, dz, (body.W, 0.5 * (body.Da + body.Dp)))
        canvas = _resample(vol0, lab0, g0, grid, rep)
        pose = _followup_pose(pose0, rep)
        states = _states(lesions, k, days, rep)
        nodules = []
        for les, st in zip([les for les in lesions if les.present(k) or les.present(k - 1)], states, strict=True):
            if st.diameter_mm is None:
                continue
            f = st.diameter_mm / les.spec.diameter
            spec = les.spec.shrunk(f)
            c = np.array(st.centre_xyz_mm)
            _render_nodule(canvas, _child(rng_tex), c, spec, _moved_shape(les.shape, rep.rotation, f))
            nodules.append(PlantedNodule(st.centre_xyz_mm, spec.diameter, spec.type,  # type: ignore[arg-type]
                                         spec.margin, spec.location,  # type: ignore[arg-type]
                                         spec.core, spec.hu, spec.hu_core))
        if anat.rng_wide_acq is not None:
            acq = _sample_wide_acquisition(_child(rng_acq), grid, pose, body)
        else:
            acq = _sample_acquisition(rng_acq, grid, pose, body)
        volume = _acquire(canvas, body, pose, acq, rng_acq)
        info = {**_study_info(anat, grid, pose, acq), "followup_timepoint": k, "followup_day": days[k]}
        ident = [f"pacs-node-phantom-{int(seed)}", f"followup-{k}"]
        ph = Phantom(volume_hu=volume, spacing_zyx_mm=grid.spacing, origin_xyz_mm=grid.origin, nodules=nodules,
                     seed=int(seed), labels=canvas.lab if keep_labels else None, acquisition=info,
                     study_uid=generate_uid(entropy_srcs=ident + ["study"]),
                     series_uid=generate_uid(entropy_srcs=ident + ["series"]),
                     frame_of_reference_uid=generate_uid(entropy_srcs=ident + ["for"]))
        tps.append(TimePoint(k, days[k], ph, rep, _drawn(ph, lesions, states)))
    return FollowUp(int(seed), tps, lesions)
