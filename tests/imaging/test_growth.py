"""Growth between a prior and a current nodule: Lung-RADS growth, volume change, VDT, caveats."""

from __future__ import annotations

import math

import pytest

from pacs_node.imaging.findings import Finding, NoduleType
from pacs_node.imaging.growth import Acquisition, Trend, compare, volume_doubling_time


def nodule(diameter_mm: float, volume_mm3: float | None = None, kind: NoduleType = NoduleType.SOLID,
           core_mm: float | None = None) -> Finding:
    volume = math.pi / 6 * diameter_mm**3 if volume_mm3 is None else volume_mm3
    return Finding((10.0, 20.0, 30.0), diameter_mm, diameter_mm, volume, kind, 0.9, solid_core_mm=core_mm)


def test_vdt_is_the_interval_when_the_volume_doubles_negative_when_it_halves_undefined_when_equal() -> None:
    assert volume_doubling_time(100.0, 200.0, 365.0) == pytest.approx(365.0)
    assert volume_doubling_time(200.0, 100.0, 90.0) == pytest.approx(-90.0)
    assert volume_doubling_time(100.0, 100.0, 365.0) is None
    assert volume_doubling_time(0.0, 100.0, 365.0) is None


def test_growth_is_more_than_1_5_mm_of_mean_diameter_within_12_months() -> None:
    assert compare(nodule(6.0), nodule(7.5), 365).trend == Trend.STABLE, "exactly 1.5 mm is not growth"
    assert compare(nodule(6.0), nodule(7.6), 365).trend == Trend.GROWING
    assert compare(nodule(6.0), nodule(7.6), 730).trend == Trend.SLOWLY_GROWING
    assert compare(nodule(8.0), nodule(6.4), 365).trend == Trend.SHRINKING
    # mean diameters are rounded to 0.1 mm before they are compared: 7.54 -> 7.5, 7.56 -> 7.6
    assert compare(nodule(6.0), nodule(7.54), 365).trend == Trend.STABLE
    assert compare(nodule(6.0), nodule(7.56), 365).trend == Trend.GROWING


def test_change_reports_sizes_volume_change_and_vdt() -> None:
    change = compare(nodule(8.0, 268.0), nodule(10.0, 524.0), 180)
    assert (change.prior_diameter_mm, change.current_diameter_mm, change.diameter_change_mm) == (8.0, 10.0, 2.0)
    assert change.volume_change_percent == pytest.approx((524 - 268) / 268 * 100)
    assert change.vdt_days == pytest.approx(180 * math.log(2) / math.log(524 / 268))
    assert change.caveats == ()


def test_small_volume_changes_and_different_acquisitions_make_the_vdt_a_caveat() -> None:
    small = compare(nodule(8.0, 268.0), nodule(8.2, 300.0), 365)
    assert small.vdt_days is not None and "within measurement variability" in small.caveats[0]
    thin, thick = Acquisition(1.0, "B30f"), Acquisition(2.5, "B70f")
    caveats = compare(nodule(8.0, 268.0), nodule(10.0, 524.0), 365, thin, thick).caveats
    assert any("slice thickness differs (1 mm then, 2.5 mm now)" in c for c in caveats)
    assert any("kernel differs (B30f then, B70f now)" in c for c in caveats)
    assert compare(nodule(8.0, 268.0), nodule(10.0, 524.0), 365, thin, Acquisition(1.2, "b30F")).caveats == ()


def test_a_new_or_grown_solid_core_is_growth_of_the_solid_component() -> None:
    part = NoduleType.PART_SOLID
    assert compare(nodule(10, kind=part), nodule(10, kind=part, core_mm=3.0), 365).solid_core_growing
    assert compare(nodule(10, kind=part, core_mm=3.0), nodule(10, kind=part, core_mm=4.6), 365).solid_core_growing
    assert not compare(nodule(10, kind=part, core_mm=3.0), nodule(10, kind=part, core_mm=4.5), 365).solid_core_growing


def test_a_prior_after_the_current_scan_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_days"):
        compare(nodule(6.0), nodule(6.0), -1)
