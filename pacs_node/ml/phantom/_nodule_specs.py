"""What to plant: number, type, size, margin, location and attenuation of the nodules,
from the classic ranges or from the wide nodule family."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pacs_node.ml.phantom.truth import LOCATIONS, MARGINS, NODULE_TYPES
from pacs_node.ml.phantom.variation import FAMILIES, Variation, family_rng

#: Wide nodule family: type probabilities (solid, part-solid, ground-glass, calcified).
WIDE_TYPE_P = (0.45, 0.17, 0.23, 0.15)
#: Wide nodule family: location probabilities, in the order of ``LOCATIONS``.
WIDE_LOCATION_P = (0.28, 0.26, 0.16, 0.14, 0.16)
#: Wide nodule family: probabilities of 0 to 6 nodules per study.
WIDE_COUNT_P = (0.12, 0.2, 0.2, 0.18, 0.13, 0.1, 0.07)
#: Wide nodule family: margin probabilities per type, in the order of ``MARGINS``.
WIDE_MARGIN_P = {
    "solid": (0.25, 0.25, 0.22, 0.28),
    "part-solid": (0.25, 0.25, 0.2, 0.3),
    "ground-glass": (0.5, 0.15, 0.0, 0.35),
    "calcified": (0.6, 0.25, 0.0, 0.15),
}
#: Ground glass above the local parenchyma (HU): ground-glass nodules, part-solid ones.
GGN_ABOVE_LUNG_HU = (100.0, 350.0)
PART_SOLID_ABOVE_LUNG_HU = (120.0, 400.0)


@dataclass(frozen=True)
class _NoduleSpec:
    type: str
    margin: str
    location: str
    diameter: float
    core: float | None  # solid core (part-solid) or calcified core (central calcification)
    hu: float  # body: ground glass, solid or calcium
    hu_core: float | None
    site: str = ""  # wide juxtapleural nodules: "costal" or "diaphragm"
    cavity_wall: float | None = None  # wall thickness (mm) of a cavitary nodule
    hu_above_lung: float | None = None  # ground glass set relative to the local parenchyma (HU)

    def shrunk(self, k: float) -> _NoduleSpec:
        """The same nodule ``k`` times smaller (core and cavity wall too)."""
        return _NoduleSpec(
            self.type, self.margin, self.location, self.diameter * k, None if self.core is None else self.core * k,
            self.hu, self.hu_core, self.site, None if self.cavity_wall is None else self.cavity_wall * k,
            self.hu_above_lung,
        )


def _nodule_streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """The wide nodule family's streams: specs, sites and shapes (all from ``family_rng``)."""
    a, b, c = family_rng(seed, "nodules").spawn(3)
    return a, b, c


def _style_detail_rng(seed: int) -> np.random.Generator:
    """Nodule details of a non-classic style (surfaces, texture): a child of ``style_rng``'s sequence."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(2000, FAMILIES.index("nodules"))))


def _draw_nodule_specs(
    rng: np.random.Generator, n: int | None, types: Sequence[str] | None, drange: tuple[float, float],
    *, variation: Variation | None = None, style: str = "classic", seed: int = 0,
) -> list[_NoduleSpec]:
    """Draw number, type, size, margin, location and attenuation of the nodules.

    Classic draws come from ``rng``; with the wide nodule family every draw comes
    from the family's own stream of ``seed`` and ``rng`` is left untouched.
    """
    if variation is not None and variation.is_wide("nodules"):
        return _draw_wide_specs(_nodule_streams(seed)[0], n, types, drange)
    if n is None:
        n = 0 if rng.random() < 0.2 else int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1]))
    lo, hi = drange
    specs = []
    for i in range(n):
        t = types[i % len(types)] if types else str(rng.choice(NODULE_TYPES, p=[0.55, 0.12, 0.18, 0.15]))
        d = rng.uniform(12.0, 30.0) if rng.random() < 0.15 else math.exp(rng.normal(math.log(7.0), 0.42))
        if t == "calcified":
            d = min(d, rng.uniform(5.0, 12.0))
        elif t in ("ground-glass", "part-solid"):
            d = max(d, rng.uniform(6.0, 14.0))
        d = float(np.clip(d, lo, hi))
        margin_p = {
            "solid": [0.5, 0.3, 0.2],
            "part-solid": [0.4, 0.3, 0.3],
            "ground-glass": [0.7, 0.3, 0.0],
            "calcified": [0.85, 0.15, 0.0],
        }[t]
        margin = str(rng.choice(MARGINS[:3], p=margin_p))
        location = str(rng.choice(LOCATIONS[:3], p=[0.5, 0.3, 0.2]))
        core: float | None = None
        hu_core: float | None = None
        if t == "solid":
            hu = rng.uniform(5.0, 50.0)
        elif t == "ground-glass":
            hu = rng.uniform(-720.0, -450.0)
        elif t == "part-solid":
            hu = rng.uniform(-700.0, -450.0)
            core = float(np.clip(d * rng.uniform(0.25, 0.55), min(2.0, 0.5 * d), d - 1.5))
            hu_core = rng.uniform(0.0, 45.0)
        else:
            if rng.random() < 0.6:
                hu = rng.uniform(200.0, 900.0)
            else:
                hu = rng.uniform(10.0, 45.0)
                core = d * rng.uniform(0.5, 0.72)
                hu_core = rng.uniform(250.0, 900.0)
        specs.append(_NoduleSpec(t, margin, location, d, core, float(hu), hu_core))
    return specs


def _wide_diameter(rng: np.random.Generator) -> float:
    """36 % 3-6 mm (log-uniform), 36 % 6-10 mm, 28 % 10-30 mm (log-uniform)."""
    u = rng.random()
    if u < 0.36:
        return math.exp(rng.uniform(math.log(3.0), math.log(6.0)))
    if u < 0.72:
        return rng.uniform(6.0, 10.0)
    return math.exp(rng.uniform(math.log(10.0), math.log(30.0)))


def _draw_wide_specs(
    rng: np.random.Generator, n: int | None, types: Sequence[str] | None, drange: tuple[float, float],
) -> list[_NoduleSpec]:
    """The wide nodule family: 0 to 6 nodules, 3 to 30 mm, every type, margin and site."""
    if n is None:
        n = int(rng.choice(len(WIDE_COUNT_P), p=WIDE_COUNT_P))
    lo, hi = drange
    specs = []
    for i in range(n):
        location = str(rng.choice(LOCATIONS, p=WIDE_LOCATION_P))
        type_p = (0.85, 0.0, 0.05, 0.1) if location == "perifissural" else WIDE_TYPE_P
        t = types[i % len(types)] if types else str(rng.choice(NODULE_TYPES, p=type_p))
        d = _wide_diameter(rng)
        if t == "calcified" and d > 14.0 and rng.random() < 0.7:
            d = rng.uniform(4.0, 14.0)
        elif t == "part-solid":
            d = max(d, rng.uniform(6.0, 12.0))
        elif t == "ground-glass":
            d = max(d, rng.uniform(5.0, 10.0))
        if location == "perifissural":
            d = min(d, rng.uniform(8.0, 14.0))
        d = float(np.clip(d, lo, hi))
        margin = "smooth" if location == "perifissural" else str(rng.choice(MARGINS, p=WIDE_MARGIN_P[t]))
        site = ("diaphragm" if rng.random() < 0.35 else "costal") if location == "juxtapleural" else ""
        core: float | None = None
        hu_core: float | None = None
        cavity_wall: float | None = None
        above: float | None = None
        if t == "solid":
            hu = rng.uniform(-20.0, 65.0)
            if d >= 8.0 and location != "perifissural" and rng.random() < 0.15:
                thin = rng.random() < 0.4
                cavity_wall = rng.uniform(1.0, 2.5) if thin else d / 2.0 * rng.uniform(0.3, 0.5)
        elif t == "ground-glass":
            above = rng.uniform(*GGN_ABOVE_LUNG_HU)
            hu = -850.0 + above
        elif t == "part-solid":
            above = rng.uniform(*PART_SOLID_ABOVE_LUNG_HU)
            hu = -850.0 + above
            core = float(np.clip(d * rng.uniform(0.15, 0.8), min(1.5, 0.5 * d), d - 1.0))
            hu_core = rng.uniform(-10.0, 60.0)
        elif rng.random() < 0.55:
            hu = rng.uniform(180.0, 1000.0)
        else:
            hu = rng.uniform(0.0, 50.0)
            core = d * rng.uniform(0.3, 0.75)
            hu_core = rng.uniform(200.0, 1000.0)
        specs.append(_NoduleSpec(t, margin, location, d, core, float(hu), hu_core, site, cavity_wall, above))
    return specs
