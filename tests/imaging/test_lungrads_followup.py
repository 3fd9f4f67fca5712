"""Lung-RADS v2022 at follow-up: new, growing, stable and stepped-down nodules."""

from __future__ import annotations

import pytest

from pacs_node.imaging.findings import LungRads, NoduleType
from pacs_node.imaging.growth import compare
from pacs_node.imaging.lungrads_followup import followup_category, study_followup_category
from tests.imaging.test_growth import nodule

SOLID, PART, GGN, CALC = NoduleType.SOLID, NoduleType.PART_SOLID, NoduleType.GROUND_GLASS, NoduleType.CALCIFIED
C = LungRads


@pytest.mark.parametrize(("diameter", "kind", "core", "expected"), [
    (3.9, SOLID, None, C.CATEGORY_2), (4.0, SOLID, None, C.CATEGORY_3), (5.9, SOLID, None, C.CATEGORY_3),
    (6.0, SOLID, None, C.CATEGORY_4A), (8.0, SOLID, None, C.CATEGORY_4B),
    (5.9, PART, 2.0, C.CATEGORY_3), (9.0, PART, 3.9, C.CATEGORY_4A), (9.0, PART, 4.0, C.CATEGORY_4B),
    (9.0, PART, None, C.CATEGORY_4A), (29.9, GGN, None, C.CATEGORY_2), (30.0, GGN, None, C.CATEGORY_3),
    (12.0, CALC, None, C.CATEGORY_1),
])
def test_new_nodules_have_their_own_thresholds(diameter: float, kind: NoduleType, core: float | None,
                                               expected: LungRads) -> None:
    assert followup_category(nodule(diameter, kind=kind, core_mm=core), None, None).category == expected


@pytest.mark.parametrize(("before", "after", "kind", "expected"), [
    (5.0, 6.6, SOLID, C.CATEGORY_4A), (7.0, 8.6, SOLID, C.CATEGORY_4B), (20.0, 22.0, GGN, C.CATEGORY_2),
    (29.0, 31.0, GGN, C.CATEGORY_3),
])
def test_growing_nodules(before: float, after: float, kind: NoduleType, expected: LungRads) -> None:
    prior, current = nodule(before, kind=kind), nodule(after, kind=kind)
    assert followup_category(current, prior, compare(prior, current, 365)).category == expected


def test_a_part_solid_nodule_is_categorised_by_its_new_or_growing_solid_component() -> None:
    prior, grown_core = nodule(10.0, kind=PART, core_mm=2.0), nodule(11.7, kind=PART, core_mm=4.2)
    assert followup_category(grown_core, prior, compare(prior, grown_core, 365)).category == C.CATEGORY_4B
    same_core = nodule(11.7, kind=PART, core_mm=2.0)
    result = followup_category(same_core, prior, compare(prior, same_core, 365))
    assert result.category == C.CATEGORY_3 and "by size" in result.rule


@pytest.mark.parametrize(("diameter", "days", "expected"), [
    (7.0, 180, C.CATEGORY_2), (7.0, 90, C.CATEGORY_3),   # category 3: steps down at 6 months
    (10.0, 90, C.CATEGORY_3), (10.0, 30, C.CATEGORY_4A), (10.0, 365, C.CATEGORY_2),  # 4A: 3 months, annual
    (16.0, 365, C.CATEGORY_4B), (4.0, 365, C.CATEGORY_2),
])
def test_stable_nodules_step_down_as_v2022_manages_them(diameter: float, days: float, expected: LungRads) -> None:
    prior, current = nodule(diameter), nodule(diameter + 0.3)
    assert followup_category(current, prior, compare(prior, current, days)).category == expected


def test_a_nodule_that_reaches_a_higher_size_band_is_recategorised_without_growth() -> None:
    prior, current = nodule(7.4), nodule(8.8)  # +1.4 mm: not growth, but 3 -> 4A by size
    result = followup_category(current, prior, compare(prior, current, 365))
    assert result.category == C.CATEGORY_4A and result.rule == "reached a higher size band"


def test_slow_growth_is_left_to_the_radiologist_with_a_note() -> None:
    prior, current = nodule(9.0), nodule(11.0)
    result = followup_category(current, prior, compare(prior, current, 800))
    assert result.category == C.CATEGORY_4A and "slow growth" in result.note, "by size: slow growth is not stability"


def test_spiculation_and_the_study_category() -> None:
    spiculated = nodule(6.5)
    spiculated = type(spiculated)(**{**spiculated.__dict__, "spiculated": True})
    assert followup_category(spiculated, None, None).category == C.CATEGORY_4X
    categories = [followup_category(nodule(3.0), None, None), followup_category(nodule(9.0), None, None)]
    assert study_followup_category(categories) == C.CATEGORY_4B
    assert study_followup_category([]) == C.CATEGORY_1


def test_a_matched_nodule_needs_its_change() -> None:
    with pytest.raises(ValueError, match="needs its change"):
        followup_category(nodule(6.0), nodule(6.0), None)
