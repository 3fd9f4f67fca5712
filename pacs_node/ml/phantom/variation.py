"""How widely the generator varies a study: families of variation and rendering styles.

The classic generator (``Variation.classic()``, the default) draws every study from
the ranges the v1 model was trained on, and a seed gives the same study as before.
Domain randomisation widens the generator along independent *families*; each family
can be switched on or off, so that a model can be trained without one family and
tested on it (leave-one-family-out).  A *style* is a whole-study look (how the
parenchyma texture, the vessels and the nodule surfaces are rendered); styles are
distinct renderers, not ranges, so a model trained on some styles can be tested on
the others (cross-style).

Families
--------
``body``
    Body habitus and lung shape, diaphragm height, heart size, mediastinal width.
``parenchyma``
    Lung density (-900 to -750 HU) and gradients, texture, emphysema, fibrosis
    bands, atelectasis, scars.
``vessels``
    Vessel density, calibre, branching, contrast-enhanced or not, vessel ends near
    the pleura.
``airways``
    Airways with walls down to sub-segmental level, seen along and across (wall
    rings), mucus plugs.
``pleura``
    Fissures, pleural thickening and plaques, partial volume over the diaphragm
    dome and along the pleura.
``nodules``
    Irregular, lobulated, spiculated and cavitary shapes; perifissural,
    juxtapleural, juxtavascular and juxtamediastinal sites; faint ground glass.
``acquisition``
    Kernels, noise texture and dose, slice thickness 0.6 to 3 mm, pixel spacing 0.5
    to 0.98 mm, motion, beam hardening and streaks.

Random draws of a wide family come from their own generator streams, so switching
a family on or off leaves the draws of the others unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

FAMILIES: tuple[str, ...] = ("body", "parenchyma", "vessels", "airways", "pleura", "nodules", "acquisition")
#: Rendering styles; ``classic`` is the v1 generator's look.
STYLES: tuple[str, ...] = ("classic", "lobular", "mottled")


def _check(names: Iterable[str], allowed: tuple[str, ...], what: str) -> frozenset[str]:
    names = frozenset(names)
    unknown = sorted(names - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; known: {', '.join(allowed)}")
    return names


@dataclass(frozen=True)
class Variation:
    """Which families the generator draws widely, and which styles it may render.

    Attributes
    ----------
    families
        Families drawn from the wide ranges; the others keep the classic ranges.
    styles
        Styles a study may be rendered in (one drawn per study, uniformly).
    """

    families: frozenset[str] = field(default_factory=frozenset)
    styles: tuple[str, ...] = ("classic",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", _check(self.families, FAMILIES, "families"))
        if not self.styles:
            raise ValueError("styles must name at least one style")
        _check(self.styles, STYLES, "styles")
        object.__setattr__(self, "styles", tuple(dict.fromkeys(self.styles)))

    @classmethod
    def classic(cls) -> Variation:
        """The v1 generator: classic ranges, classic style."""
        return cls()

    @classmethod
    def wide(cls, without: Iterable[str] = (), styles: Iterable[str] = STYLES) -> Variation:
        """Every family wide except ``without``, rendered in any of ``styles``."""
        return cls(frozenset(FAMILIES) - _check(without, FAMILIES, "families"), tuple(styles))

    def is_wide(self, family: str) -> bool:
        """Whether ``family`` (one of :data:`FAMILIES`) is drawn from its wide ranges."""
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
        return family in self.families

    def draw_style(self, seed: int) -> str:
        """The style of the study with this seed (always ``classic`` for the classic generator)."""
        if len(self.styles) == 1:
            return self.styles[0]
        return self.styles[int(style_rng(seed).integers(len(self.styles)))]

    @property
    def is_classic(self) -> bool:
        return not self.families and self.styles == ("classic",)

    def to_dict(self) -> dict[str, list[str]]:
        return {"families": sorted(self.families), "styles": list(self.styles)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Variation:
        return cls(frozenset(d.get("families", ())), tuple(d.get("styles", ("classic",))))  # type: ignore[arg-type]


def family_rng(seed: int, family: str) -> np.random.Generator:
    """The random stream of one wide family for a study seed (independent of every other stream)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(1000 + FAMILIES.index(family),)))


def style_rng(seed: int) -> np.random.Generator:
    """The random stream that draws a study's style and the style's own details."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(2000,)))
