"""How a nodule changed between a prior CT and the current one: sizes then and now, volume
change, volume doubling time, and whether it grew in the Lung-RADS sense.

Definitions (ACR Lung-RADS v2022; NELSON and BTS for volumes):

- **Mean diameter** is (long + short axis) / 2, rounded to 0.1 mm, on both scans before
  they are compared (:func:`pacs_node.imaging.findings.mean_diameter`).
- **Growth** is a mean diameter up by *more than* 1.5 mm within 12 months (exactly 1.5 mm
  is not growth).  The same increase over a longer interval is reported as *slow growth*:
  Lung-RADS leaves its category to the radiologist (it may be 4B); this module does not
  call it growth.  We accept up to 13 months as "within 12" (annual screens drift).
- **Shrinking** is a mean diameter down by more than 1.5 mm; anything else is *stable*.
- **Volume change** is (V2 - V1) / V1 * 100 %; **VDT** = interval * ln 2 / ln(V2 / V1) in
  days: undefined when the volume is unchanged, negative when it shrinks.  Below a 25 %
  volume change the VDT is within measurement variability (same-day rescans differ by up
  to about 25 %), and between scans of different slice thickness or reconstruction kernel
  it is unreliable: :attr:`Change.caveats` says so.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from pacs_node.imaging.findings import Finding

#: Mean-diameter increase (mm) that Lung-RADS calls growth, when exceeded.
GROWTH_MM = 1.5
#: Longest interval (days) still taken as "within 12 months".
GROWTH_WINDOW_DAYS = 396.0
#: Volume change (%) below which a VDT is within measurement variability.
MIN_VDT_CHANGE_PERCENT = 25.0


class Trend(enum.StrEnum):
    """What a matched nodule did between the two scans."""

    GROWING = "growing"
    SLOWLY_GROWING = "slowly growing"
    STABLE = "stable"
    SHRINKING = "shrinking"


@dataclass(frozen=True)
class Acquisition:
    """What makes two scans' volumes comparable: slice thickness (mm) and kernel."""

    slice_thickness_mm: float | None = None
    kernel: str | None = None


@dataclass(frozen=True)
class Change:
    """A matched nodule, prior and current.

    Attributes
    ----------
    interval_days
        Days from the prior scan to the current one.
    prior_diameter_mm, current_diameter_mm
        Lung-RADS mean diameters (0.1 mm).
    diameter_change_mm
        Current minus prior mean diameter (0.1 mm).
    prior_volume_mm3, current_volume_mm3
        Volumes (mm³).
    volume_change_percent
        (V2 - V1) / V1 * 100, or ``None`` without a prior volume.
    vdt_days
        Volume doubling time (days); negative when shrinking, ``None`` when the volume is
        unchanged or unknown.
    trend
        Growing (Lung-RADS), slowly growing, stable or shrinking.
    solid_core_growing
        The solid component of a part-solid nodule is new or grew by more than 1.5 mm.
    caveats
        Why the VDT should not be trusted, if it should not.
    """

    interval_days: float
    prior_diameter_mm: float
    current_diameter_mm: float
    diameter_change_mm: float
    prior_volume_mm3: float
    current_volume_mm3: float
    volume_change_percent: float | None
    vdt_days: float | None
    trend: Trend
    solid_core_growing: bool
    caveats: tuple[str, ...] = ()


def volume_doubling_time(prior_mm3: float, current_mm3: float, interval_days: float) -> float | None:
    """VDT in days: ``interval * ln 2 / ln(current / prior)``; ``None`` when undefined.

    Negative for a shrinking nodule; undefined for an unchanged, empty or unknown volume.
    """
    if prior_mm3 <= 0 or current_mm3 <= 0 or current_mm3 == prior_mm3 or interval_days <= 0:
        return None
    return interval_days * math.log(2.0) / math.log(current_mm3 / prior_mm3)


def _trend(change_mm: float, interval_days: float) -> Trend:
    if change_mm > GROWTH_MM + 1e-9:
        return Trend.GROWING if interval_days <= GROWTH_WINDOW_DAYS else Trend.SLOWLY_GROWING
    if change_mm < -GROWTH_MM - 1e-9:
        return Trend.SHRINKING
    return Trend.STABLE


def _core_growing(prior: Finding, current: Finding) -> bool:
    now = current.solid_core_mm or 0.0
    then = prior.solid_core_mm or 0.0
    return now > 0 and (then == 0 or now - then > GROWTH_MM + 1e-9)


def compare(prior: Finding, current: Finding, interval_days: float,
            prior_scan: Acquisition | None = None, current_scan: Acquisition | None = None) -> Change:
    """How ``prior`` became ``current`` over ``interval_days``.

    Raises
    ------
    ValueError
        When the interval is negative (the prior is after the current scan).
    """
    if interval_days < 0 or not math.isfinite(interval_days):
        raise ValueError(f"interval_days must be a non-negative number, got {interval_days!r}")
    before, after = prior.diameter_mm, current.diameter_mm
    delta = round(after - before, 1)
    percent = None if prior.volume_mm3 <= 0 else (current.volume_mm3 - prior.volume_mm3) / prior.volume_mm3 * 100
    vdt = volume_doubling_time(prior.volume_mm3, current.volume_mm3, interval_days)
    caveats = []
    if vdt is not None and percent is not None and abs(percent) < MIN_VDT_CHANGE_PERCENT:
        caveats.append(f"volume changed by {percent:+.0f} %, within measurement variability (< 25 %)")
    if prior_scan is not None and current_scan is not None:
        a, b = prior_scan.slice_thickness_mm, current_scan.slice_thickness_mm
        if a is not None and b is not None and abs(a - b) > 0.25:
            caveats.append(f"slice thickness differs ({a:g} mm then, {b:g} mm now): volumes are not comparable")
        if prior_scan.kernel and current_scan.kernel and prior_scan.kernel.strip().lower() != current_scan.kernel.strip().lower():
            caveats.append(f"reconstruction kernel differs ({prior_scan.kernel} then, {current_scan.kernel} now)")
    return Change(
        interval_days=float(interval_days),
        prior_diameter_mm=before,
        current_diameter_mm=after,
        diameter_change_mm=delta,
        prior_volume_mm3=float(prior.volume_mm3),
        current_volume_mm3=float(current.volume_mm3),
        volume_change_percent=percent,
        vdt_days=vdt,
        trend=_trend(delta, interval_days),
        solid_core_growing=_core_growing(prior, current),
        caveats=tuple(caveats),
    )

