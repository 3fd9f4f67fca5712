"""Lung-RADS v2022 categories from size and type, and Finding validation."""

from __future__ import annotations

import pytest

from pacs_node.imaging.findings import (
    Finding,
    LungRads,
    NoduleType,
    lung_rads_category,
    mean_diameter,
    study_category,
)

S, P, G, C = NoduleType.SOLID, NoduleType.PART_SOLID, NoduleType.GROUND_GLASS, NoduleType.CALCIFIED


@pytest.mark.parametrize(
    "kind,diameter,core,expected",
    [
        (S, 5.9, None, "2"), (S, 6.0, None, "3"), (S, 7.9, None, "3"), (S, 8.0, None, "4A"),
        (S, 14.9, None, "4A"), (S, 15.0, None, "4B"), (S, 29.0, None, "4B"),
        (P, 5.9, 3.0, "2"), (P, 12.0, 5.9, "3"), (P, 12.0, 6.0, "4A"), (P, 12.0, 7.9, "4A"), (P, 20.0, 8.0, "4B"),
        (G, 29.9, None, "2"), (G, 30.0, None, "3"),
        (C, 25.0, None, "1"),
    ],
)
def test_lung_rads_table(kind: NoduleType, diameter: float, core: float | None, expected: str) -> None:
    assert lung_rads_category(kind, diameter, core).value == expected


def test_spiculation_upgrades_category_3_and_4_only() -> None:
    assert lung_rads_category(S, 7.0, spiculated=True) is LungRads.CATEGORY_4X
    assert lung_rads_category(S, 4.0, spiculated=True) is LungRads.CATEGORY_2


def test_mean_diameter_rounds_to_tenth() -> None:
    assert mean_diameter(8.0, 7.9) == 8.0  # 7.95 -> 8.0: category 4A, not 3
    assert mean_diameter(6.1, 5.8) == 6.0


def test_study_category_is_the_highest() -> None:
    small = Finding((0, 0, 0), 5, 4, 50, S, 0.9)
    large = Finding((10, 0, 0), 16, 15, 1800, S, 0.8)
    assert study_category([small, large]) is LungRads.CATEGORY_4B
    assert study_category([]) is LungRads.CATEGORY_1


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"short_axis_mm": 9.0}, "short_axis_mm"),
        ({"score": 1.5}, "score"),
        ({"center_lps_mm": (0.0, float("nan"), 0.0)}, "center_lps_mm"),
        ({"nodule_type": "blob"}, "blob"),
    ],
)
def test_invalid_findings_are_refused(kwargs: dict, message: str) -> None:
    values = {"center_lps_mm": (0.0, 0.0, 0.0), "long_axis_mm": 8.0, "short_axis_mm": 6.0, "volume_mm3": 200.0,
              "nodule_type": S, "score": 0.5} | kwargs
    with pytest.raises(ValueError, match=message):
        Finding(**values)
