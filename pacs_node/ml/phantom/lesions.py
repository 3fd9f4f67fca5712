"""Nodules over a follow-up series (*lesions*): their courses, their size at each time
point and the truth per time point.

A lesion keeps its ``lesion_id``, its shape (turned with the patient) and its type;
only its size changes, by similarity about its centre, with volume
``V(t) = V(t_first) * 2 ** ((t - t_first) / vdt_days)`` (``vdt_days < 0``: the volume
halves every ``|vdt_days|``; ``None``: constant), diameter kept within 1 to 40 mm.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pacs_node.ml.phantom._geometry import _Canvas
from pacs_node.ml.phantom._nodule_sites import _find_site
from pacs_node.ml.phantom._nodules import _nodule_shape, _NoduleSpec, _Shape
from pacs_node.ml.phantom._tubes import _Segment
from pacs_node.ml.phantom.generate import _Anatomy
from pacs_node.ml.phantom.reposition import Reposition
from pacs_node.ml.phantom.truth import Phantom, Tissue

Course = Literal["stable", "growing", "shrinking", "resolving", "new"]
Change = Literal["baseline", "new", "stable", "growing", "shrinking", "resolved"]
#: the courses a baseline nodule can take
BASELINE_COURSES: tuple[str, ...] = ("stable", "growing", "shrinking", "resolving")
_MAX_DIAMETER_MM = 40.0
_MIN_DIAMETER_MM = 1.0


@dataclass(frozen=True)
class Lesion:
    """One nodule over the whole follow-up: its course and when it is present.

    ``vdt_days`` is the volume doubling time (days; negative: halving time of a
    shrinking nodule; ``None``: constant volume).  Present at time points
    ``first`` to ``last`` inclusive (``last`` ``None``: to the end).
    """

    lesion_id: int
    course: Course
    vdt_days: float | None
    first: int
    last: int | None
    centre_xyz_mm: tuple[float, float, float]  # baseline LPS mm
    spec: _NoduleSpec  # size at ``first``
    shape: _Shape

    def present(self, k: int) -> bool:
        return self.first <= k and (self.last is None or k <= self.last)

    def diameter_at(self, days_since_first: float) -> float:
        """Volume-equivalent diameter (mm) ``days_since_first`` after it first shows (capped at 1 to 40 mm)."""
        d = self.spec.diameter
        if self.vdt_days is not None:
            d *= 2.0 ** (days_since_first / (3.0 * self.vdt_days))
        return float(np.clip(d, _MIN_DIAMETER_MM, _MAX_DIAMETER_MM))


@dataclass(frozen=True)
class LesionState:
    """Truth of one lesion at one time point (LPS mm of that time point).

    ``change`` compares with the previous time point: ``baseline`` (time point 0),
    ``new``, ``stable``, ``growing``, ``shrinking`` or ``resolved`` (absent now,
    present before; ``centre_xyz_mm`` is then where it was, moved with the patient,
    and size fields are ``None``).  ``vdt_days``: ``dt * ln 2 / ln(V / V_prev)``, ``None``
    where the volume did not change or there is no previous volume.  ``volume_mm3`` is
    that of the nominal sphere of ``diameter_mm``; ``drawn_volume_mm3`` counts the
    voxels labelled nodule around the centre (smaller where the chest wall, the
    mediastinum or the grid's edge clips the nodule, and for lobulated outlines; ``None``
    without labels).
    """

    lesion_id: int
    change: Change
    centre_xyz_mm: tuple[float, float, float]
    diameter_mm: float | None
    volume_mm3: float | None
    type: str
    vdt_days: float | None
    drawn_volume_mm3: float | None = None

    def to_dict(self) -> dict[str, object]:
        r = (lambda v, n: None if v is None else round(float(v), n))  # noqa: E731
        return {"lesion_id": self.lesion_id, "change": self.change,
                "centre_xyz_mm": [round(float(v), 3) for v in self.centre_xyz_mm],
                "diameter_mm": r(self.diameter_mm, 3), "volume_mm3": r(self.volume_mm3, 2), "type": self.type,
                "vdt_days": r(self.vdt_days, 2), "drawn_volume_mm3": r(self.drawn_volume_mm3, 2)}


def _drawn(p: Phantom, lesions: list[Lesion], states: list[LesionState]) -> list[LesionState]:
    """``states`` with the volume (mm3) labelled nodule in each present lesion's drawing box."""
    if p.labels is None:
        return states
    out = []
    for st in states:
        if st.diameter_mm is not None:
            les = lesions[st.lesion_id]
            reach = (les.shape.reach - 1.5) * st.diameter_mm / les.spec.diameter + 1.5
            lo = np.floor(p.world_to_voxel(np.array(st.centre_xyz_mm) - reach)).astype(int)
            hi = np.ceil(p.world_to_voxel(np.array(st.centre_xyz_mm) + reach)).astype(int) + 1
            box = tuple(slice(max(0, a), max(0, b)) for a, b in zip(lo, hi, strict=True))
            n = np.count_nonzero(p.labels[box] == Tissue.NODULE)
            st = dataclasses.replace(st, drawn_volume_mm3=float(n * math.prod(p.spacing_zyx_mm)))
        out.append(st)
    return out


def _sphere_volume(d: float) -> float:
    return math.pi / 6.0 * d**3


def _moved_shape(shape: _Shape, r: np.ndarray, f: float) -> _Shape:
    """``shape`` turned by rotation ``r`` and scaled by ``f`` about its centre."""
    return _Shape(rot=shape.rot @ r.T, axes=shape.axes * f, lobes=[(r @ c * f, rk * f) for c, rk in shape.lobes],
                  spicules=[_Segment(r @ s.p0 * f, r @ s.p1 * f, s.r0 * f, s.r1 * f) for s in shape.spicules],
                  reach=(shape.reach - 1.5) * f + 1.5)


def _vdt(rng: np.random.Generator, vdt_days: float | tuple[float, float]) -> float:
    if isinstance(vdt_days, (int, float)):
        return float(vdt_days)
    lo, hi = vdt_days
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _plan(anat: _Anatomy, record: list[tuple[np.ndarray, _NoduleSpec, _Shape]], n_tp: int,
          rng: np.random.Generator, courses: Sequence[str] | None, vdt_days: float | tuple[float, float],
          n_new: int | None, new_diameter_mm: tuple[float, float], canvas0: _Canvas, span_days: float) -> list[Lesion]:
    """The baseline nodules' courses, then the new nodules (sites found in the baseline scene)."""
    lesions: list[Lesion] = []
    for i, (c, spec, shape) in enumerate(record):
        course = courses[i % len(courses)] if courses else str(rng.choice(BASELINE_COURSES, p=[0.4, 0.3, 0.15, 0.15]))
        vdt = {"growing": _vdt(rng, vdt_days), "shrinking": -_vdt(rng, vdt_days)}.get(course)
        last = int(rng.integers(0, n_tp - 1)) if course == "resolving" and n_tp > 1 else None
        centre = (float(c[0]), float(c[1]), float(c[2]))
        lesions.append(Lesion(i, course, vdt, 0, last, centre, spec, shape))  # type: ignore[arg-type]
    if n_tp < 2:
        return lesions
    if n_new is None:
        n_new = int(rng.choice([0, 1, 2], p=[0.4, 0.4, 0.2]))
    placed = [(np.array(les.centre_xyz_mm), 0.5 * les.diameter_at(span_days)) for les in lesions]
    for _ in range(n_new):
        d = rng.uniform(*new_diameter_mm)
        spec = _NoduleSpec("solid", "smooth", "free", d, None, rng.uniform(5.0, 50.0), None)
        c = _find_site(canvas0, rng, spec, anat.lung_pts, anat.vessels, placed)
        if c is None:
            continue
        shape = _nodule_shape(rng, spec)
        vdt = _vdt(rng, vdt_days) if rng.random() < 0.6 else None
        les = Lesion(len(lesions), "new", vdt, int(rng.integers(1, n_tp)), None,
                     (float(c[0]), float(c[1]), float(c[2])), spec, shape)
        lesions.append(les)
        placed.append((c, 0.5 * les.diameter_at(span_days)))
    return lesions


def _states(lesions: list[Lesion], k: int, days: list[float], rep: Reposition) -> list[LesionState]:
    """Truth of the lesions present at ``k`` or resolved since ``k - 1``."""
    out = []
    for les in lesions:
        now, before = les.present(k), k > 0 and les.present(k - 1)
        if not now and not before:
            continue
        x, y, z = (float(v) for v in rep.forward(np.array(les.centre_xyz_mm))[0])
        c, kind = (x, y, z), les.spec.type
        if not now:
            out.append(LesionState(les.lesion_id, "resolved", c, None, None, kind, None))
            continue
        d = les.diameter_at(days[k] - days[les.first])
        change: Change = "baseline" if k == 0 else "new"
        vdt = None
        if before:
            ratio = (d / les.diameter_at(days[k - 1] - days[les.first])) ** 3
            change = "stable" if abs(ratio - 1.0) < 1e-9 else ("growing" if ratio > 1.0 else "shrinking")
            vdt = None if change == "stable" else (days[k] - days[k - 1]) * math.log(2.0) / math.log(ratio)
        out.append(LesionState(les.lesion_id, change, c, d, _sphere_volume(d), kind, vdt))
    return out


