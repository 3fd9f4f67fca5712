"""Lung-RADS v2022 categories at a follow-up screen: new, growing and stable nodules.

At baseline every nodule is categorised by size and type
(:func:`pacs_node.imaging.findings.lung_rads_category`).  At follow-up it depends on
what the nodule did since the prior CT (:mod:`pacs_node.imaging.growth`):

New (no match on the prior)
    solid < 4 mm → 2, 4 to < 6 → 3, 6 to < 8 → 4A, ≥ 8 → 4B; part-solid < 6 mm in total → 3,
    otherwise its new solid component < 4 mm → 4A, ≥ 4 mm → 4B (a part-solid nodule whose
    core was not measured counts as a core under 4 mm); ground glass < 30 mm → 2, ≥ 30 → 3.
Growing (mean diameter up by more than 1.5 mm within 12 months)
    solid < 8 mm → 4A, ≥ 8 → 4B; part-solid with a new or growing solid component: the
    core < 4 mm → 4A, ≥ 4 → 4B (otherwise by size, as at baseline); ground glass stays 2
    while < 30 mm, 3 from 30 mm.
Not growing (stable, shrinking, or slowly growing over more than 12 months)
    A nodule that reached a higher size band is re-categorised by size, growth or not; a
    slowly growing one keeps its size category.  A stable or shrinking one steps down as
    v2022's stepped management says, from the category its prior size gave:
    3 → 2 when the interval is about 6 months or more (≥ 150 days), 4A → 3 at about 3
    months (≥ 75 days) and → 2 at an annual screen (≥ 330 days); 1 and 2 stay as their
    size gives; 4B and 4X stay (only a benign work-up lowers them, which the images do not
    show).  A slowly growing solid or part-solid nodule may warrant 4B: the radiologist
    decides (:attr:`FollowUpCategory.note` says so).
Calcified (benign) nodules are 1 in every case; spiculation makes a 3 or 4 a 4X, as at
baseline.  The juxtapleural and perifissural rules need shape features the node does not
measure, so they are not applied.

What we chose where the ACR text leaves room: the thresholds of 150, 75 and 330 days
(the scheduled 6-month, 3-month and annual CTs, early), "within 12 months" up to 13
months (:data:`pacs_node.imaging.growth.GROWTH_WINDOW_DAYS`), and 4A stable at an annual
screen → 2 (v1.1's "category 3 or 4A unchanged for ≥ 3 months"; v2022's steps lead there
too over consecutive screens).
"""

from __future__ import annotations

from dataclasses import dataclass

from pacs_node.imaging.findings import Finding, LungRads, NoduleType
from pacs_node.imaging.growth import Acquisition, Change, Trend, compare

#: Shortest intervals (days) for the stepped-management downgrades.
SIX_MONTHS_DAYS = 150.0
THREE_MONTHS_DAYS = 75.0
ANNUAL_DAYS = 330.0


@dataclass(frozen=True)
class FollowUpCategory:
    """A nodule's follow-up category, the rule that gave it, and a note for the radiologist."""

    category: LungRads
    rule: str
    note: str = ""


def _spiculated(finding: Finding, category: LungRads, rule: str) -> FollowUpCategory:
    if finding.spiculated and category.rank >= LungRads.CATEGORY_3.rank:
        return FollowUpCategory(LungRads.CATEGORY_4X, rule + ", spiculated")
    return FollowUpCategory(category, rule)


def _core(finding: Finding) -> float:
    return finding.solid_core_mm or 0.0


def _new(finding: Finding) -> FollowUpCategory:
    d = finding.diameter_mm
    if finding.nodule_type == NoduleType.GROUND_GLASS:
        return _spiculated(finding, LungRads.CATEGORY_2 if d < 30 else LungRads.CATEGORY_3, "new ground-glass")
    if finding.nodule_type == NoduleType.PART_SOLID:
        if d < 6:
            return _spiculated(finding, LungRads.CATEGORY_3, "new part-solid < 6 mm")
        core = LungRads.CATEGORY_4A if _core(finding) < 4 else LungRads.CATEGORY_4B
        return _spiculated(finding, core, "new part-solid, by its solid component")
    bands = ((4, LungRads.CATEGORY_2), (6, LungRads.CATEGORY_3), (8, LungRads.CATEGORY_4A))
    category = next((c for limit, c in bands if d < limit), LungRads.CATEGORY_4B)
    return _spiculated(finding, category, "new solid")


def _growing(finding: Finding, change: Change) -> FollowUpCategory:
    d = finding.diameter_mm
    if finding.nodule_type == NoduleType.GROUND_GLASS:
        return _spiculated(finding, LungRads.CATEGORY_2 if d < 30 else LungRads.CATEGORY_3, "growing ground-glass")
    if finding.nodule_type == NoduleType.PART_SOLID:
        if change.solid_core_growing:
            core = LungRads.CATEGORY_4A if _core(finding) < 4 else LungRads.CATEGORY_4B
            return _spiculated(finding, core, "part-solid with a new or growing solid component")
        return FollowUpCategory(finding.lung_rads, "growing part-solid, solid component unchanged: by size")
    category = LungRads.CATEGORY_4A if d < 8 else LungRads.CATEGORY_4B
    return _spiculated(finding, category, "growing solid")


def _not_growing(prior: Finding, finding: Finding, change: Change) -> FollowUpCategory:
    before, now = prior.lung_rads, finding.lung_rads
    note = ("grew by more than 1.5 mm over more than 12 months (slow growth): Lung-RADS allows 4B; "
            "radiologist to decide") if change.trend == Trend.SLOWLY_GROWING else ""
    if now.rank > before.rank:
        return FollowUpCategory(now, "reached a higher size band", note)
    if change.trend == Trend.SLOWLY_GROWING:  # not stable: no step down
        return FollowUpCategory(now, "slow growth: by size", note)
    days = change.interval_days
    if before == LungRads.CATEGORY_3 and days >= SIX_MONTHS_DAYS:
        return FollowUpCategory(LungRads.CATEGORY_2, "category 3 stable or smaller at 6 months or later", note)
    if before == LungRads.CATEGORY_4A and days >= ANNUAL_DAYS:
        return FollowUpCategory(LungRads.CATEGORY_2, "category 4A stable or smaller at an annual screen", note)
    if before == LungRads.CATEGORY_4A and days >= THREE_MONTHS_DAYS:
        return FollowUpCategory(LungRads.CATEGORY_3, "category 4A stable or smaller at 3 months or later", note)
    if before.rank >= LungRads.CATEGORY_4B.rank:
        return FollowUpCategory(before, "category 4B or 4X stays without a benign work-up", note)
    return FollowUpCategory(now, "stable: by size", note)


def followup_category(current: Finding, prior: Finding | None, change: Change | None) -> FollowUpCategory:
    """The Lung-RADS v2022 category of ``current`` at a follow-up screen.

    Parameters
    ----------
    current
        The nodule on the current CT.
    prior
        The same nodule on the prior CT, or ``None`` if it is new.
    change
        :func:`pacs_node.imaging.growth.compare` of the two (required with ``prior``).

    Raises
    ------
    ValueError
        When ``prior`` is given without ``change``.
    """
    if current.nodule_type == NoduleType.CALCIFIED:
        return FollowUpCategory(LungRads.CATEGORY_1, "benign calcification")
    if prior is None:
        return _new(current)
    if change is None:
        raise ValueError("a matched nodule needs its change (pacs_node.imaging.growth.compare)")
    if change.trend == Trend.GROWING:
        return _growing(current, change)
    return _not_growing(prior, current, change)


def study_followup_category(categories: list[FollowUpCategory]) -> LungRads:
    """The study's category: the highest of its nodules', 1 without nodules."""
    return max((c.category for c in categories), key=lambda c: c.rank, default=LungRads.CATEGORY_1)



@dataclass(frozen=True)
class NoduleComparison:
    """A current nodule against the prior CT: its match there (``None``: new), the change and
    the follow-up category.  Carried by :attr:`pacs_node.imaging.findings.Finding.comparison`."""

    prior: Finding | None
    change: Change | None
    category: FollowUpCategory

    @property
    def trend(self) -> str:
        """"new", or the change's trend ("growing", "slowly growing", "stable", "shrinking")."""
        return "new" if self.change is None else self.change.trend.value

    def phrase(self) -> str:
        """A few words for labels: "new", "growing from 7.2 mm", "stable", ..."""
        if self.change is None:
            return "new"
        if self.change.trend in (Trend.GROWING, Trend.SLOWLY_GROWING, Trend.SHRINKING):
            return f"{self.change.trend.value} from {self.change.prior_diameter_mm:.1f} mm"
        return "stable"


def compare_nodule(current: Finding, prior: Finding | None, interval_days: float,
                   prior_scan: Acquisition | None = None, current_scan: Acquisition | None = None) -> NoduleComparison:
    """``current`` compared with its match on the prior CT (``None`` if it is new)."""
    change = None if prior is None else compare(prior, current, interval_days, prior_scan, current_scan)
    return NoduleComparison(prior, change, followup_category(current, prior, change))
