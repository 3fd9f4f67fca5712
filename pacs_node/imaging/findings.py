"""Findings: one detected nodule, and its Lung-RADS v2022 category.

Positions are patient coordinates (LPS, mm) as DICOM uses them; sizes in mm and mm³.
Lung-RADS follows the ACR v2022 baseline-screening table: mean diameter is
(long axis + short axis) / 2, rounded to 0.1 mm before it is compared.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.uid import generate_uid

if TYPE_CHECKING:
    from pacs_node.imaging.lungrads_followup import NoduleComparison


class NoduleType(enum.StrEnum):
    """Attenuation type of a nodule."""

    SOLID = "solid"
    PART_SOLID = "part-solid"
    GROUND_GLASS = "ground-glass"
    CALCIFIED = "calcified"


class LungRads(enum.Enum):
    """Lung-RADS v2022 categories in increasing order of suspicion."""

    CATEGORY_1 = "1"
    CATEGORY_2 = "2"
    CATEGORY_3 = "3"
    CATEGORY_4A = "4A"
    CATEGORY_4B = "4B"
    CATEGORY_4X = "4X"

    @property
    def rank(self) -> int:
        return list(LungRads).index(self)

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    LungRads.CATEGORY_1: "Negative",
    LungRads.CATEGORY_2: "Benign appearance or behavior",
    LungRads.CATEGORY_3: "Probably benign",
    LungRads.CATEGORY_4A: "Suspicious",
    LungRads.CATEGORY_4B: "Very suspicious",
    LungRads.CATEGORY_4X: "Very suspicious, additional features",
}


def mean_diameter(long_axis_mm: float, short_axis_mm: float) -> float:
    """Lung-RADS mean diameter, rounded to 0.1 mm."""
    return round((long_axis_mm + short_axis_mm) / 2 + 1e-9, 1)


def lung_rads_category(
    nodule_type: NoduleType, diameter_mm: float, solid_core_mm: float | None = None, spiculated: bool = False
) -> LungRads:
    """Baseline Lung-RADS v2022 category of one nodule from its type and size.

    Parameters
    ----------
    nodule_type
        Attenuation type; benign (calcified) nodules are category 1.
    diameter_mm
        Mean diameter of the whole nodule, mm.
    solid_core_mm
        Mean diameter of the solid component of a part-solid nodule, mm.
    spiculated
        Category 3 or 4 nodules with additional suspicious features become 4X.
    """
    if diameter_mm < 0 or not math.isfinite(diameter_mm):
        raise ValueError(f"diameter_mm must be a non-negative number, got {diameter_mm!r}")
    if nodule_type == NoduleType.CALCIFIED:
        return LungRads.CATEGORY_1
    if nodule_type == NoduleType.GROUND_GLASS:
        category = LungRads.CATEGORY_2 if diameter_mm < 30 else LungRads.CATEGORY_3
    elif nodule_type == NoduleType.PART_SOLID:
        core = solid_core_mm or 0.0
        if diameter_mm < 6:
            category = LungRads.CATEGORY_2
        elif core < 6:
            category = LungRads.CATEGORY_3
        elif core < 8:
            category = LungRads.CATEGORY_4A
        else:
            category = LungRads.CATEGORY_4B
    elif diameter_mm < 6:
        category = LungRads.CATEGORY_2
    elif diameter_mm < 8:
        category = LungRads.CATEGORY_3
    elif diameter_mm < 15:
        category = LungRads.CATEGORY_4A
    else:
        category = LungRads.CATEGORY_4B
    if spiculated and category.rank >= LungRads.CATEGORY_3.rank:
        return LungRads.CATEGORY_4X
    return category


@dataclass(frozen=True)
class Finding:
    """One detected nodule.

    Attributes
    ----------
    center_lps_mm
        Centre in patient coordinates (LPS), mm.
    long_axis_mm, short_axis_mm
        Longest in-plane diameter and the longest diameter perpendicular to it, mm.
    volume_mm3
        Nodule volume, mm³.
    nodule_type
        Attenuation type.
    score
        Detection confidence in [0, 1].
    mean_hu
        Mean attenuation inside the nodule, HU.
    solid_core_mm
        Mean diameter of the solid component (part-solid nodules), mm.
    tracking_uid
        Stable identifier of this finding across re-sends of its reports.
    """

    center_lps_mm: tuple[float, float, float]
    long_axis_mm: float
    short_axis_mm: float
    volume_mm3: float
    nodule_type: NoduleType
    score: float
    mean_hu: float = 0.0
    solid_core_mm: float | None = None
    spiculated: bool = False
    lobe: str | None = None
    tracking_uid: str = field(default_factory=generate_uid)
    #: The nodule against the prior CT, at a follow-up screen (``None``: baseline, no prior).
    comparison: NoduleComparison | None = None

    def __post_init__(self) -> None:
        if len(self.center_lps_mm) != 3 or not all(math.isfinite(v) for v in self.center_lps_mm):
            raise ValueError(f"center_lps_mm must be three finite numbers, got {self.center_lps_mm!r}")
        if not 0 < self.short_axis_mm <= self.long_axis_mm + 1e-6:
            raise ValueError(
                f"need 0 < short_axis_mm <= long_axis_mm, got {self.short_axis_mm!r} and {self.long_axis_mm!r}"
            )
        if self.volume_mm3 < 0:
            raise ValueError(f"volume_mm3 must be >= 0, got {self.volume_mm3!r}")
        if not 0 <= self.score <= 1:
            raise ValueError(f"score must be in [0, 1], got {self.score!r}")
        object.__setattr__(self, "nodule_type", NoduleType(self.nodule_type))

    @property
    def diameter_mm(self) -> float:
        """Lung-RADS mean diameter, mm (0.1 mm)."""
        return mean_diameter(self.long_axis_mm, self.short_axis_mm)

    @property
    def lung_rads(self) -> LungRads:
        """The follow-up category when compared with a prior, else the baseline table's."""
        if self.comparison is not None:
            return self.comparison.category.category
        return lung_rads_category(self.nodule_type, self.diameter_mm, self.solid_core_mm, self.spiculated)


def category_basis(findings: list[Finding]) -> str:
    """What the Lung-RADS categories were computed with, for the reports' wording."""
    return "follow-up rules" if any(f.comparison is not None for f in findings) else "baseline table"


def study_category(findings: list[Finding]) -> LungRads:
    """The study's Lung-RADS category: the highest of its nodules, 1 with none."""
    return max((f.lung_rads for f in findings), key=lambda c: c.rank, default=LungRads.CATEGORY_1)
