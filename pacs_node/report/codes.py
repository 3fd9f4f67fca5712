"""Coded concepts of the reports, and the private coding scheme ``99PACSNODE``.

Coding choices
--------------
Standard codes (DCM, SCT, UCUM, LN) where one fits: Nodule (27925004, SCT), finding
site Lung (39607008, SCT) or the lobe with its laterality, Long axis (103339001, SCT),
Short axis (103340004, SCT), Diameter (81827009, SCT) = Lung-RADS mean diameter,
Volume (118565006, SCT, mm3), Mean Attenuation Coefficient (112181, DCM, [hnsf'U]),
Border shape (112015, DCM) = Spiculated (112136, DCM), CAD Processing and Findings
Summary (111017, DCM) with CID 6047 values, Absent (272519000, SCT).  The other
objects: Key Object Selection title Of Interest (113000, DCM, CID 7010); segment
property category Morphologically Abnormal Structure (49755003, SCT, CID 7150) with
type Nodule; segmentation algorithm family Artificial Intelligence (123110, DCM,
CID 7162).

The detection score is a detector confidence, not a probability of malignancy, so it
is not (111047, DCM, "Probability of cancer"); it is stored as (111012, DCM,
"Certainty of Finding") in percent (0-100, UCUM "%"), the concept and unit CAD SR
templates use for how certain the algorithm is that the detected finding is real.
It is an uncalibrated model score.

No standard codes exist for Lung-RADS categories, and no SNOMED CT codes for the four
nodule attenuation types could be verified, so both use the private coding scheme
``99PACSNODE`` (declared in the CodingSchemeIdentificationSequence):

========== ========================================================
code       meaning
========== ========================================================
LUNGRADS   Lung-RADS v2022 category (concept name)
LR-1 ...   Lung-RADS 1 - Negative, 2, 3, 4A, 4B, 4X (values)
NODTYPE    Nodule attenuation type (concept name)
SOLID      Solid; PARTSOLID Part-solid; GGN Ground-glass; CALCIFIED Calcified
SOLIDCORE  Solid component mean diameter (mm, part-solid nodules)
NOTANALYSED Reason the series was not analysed (TEXT)
========== ========================================================
"""

from __future__ import annotations

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from pacs_node.imaging.findings import LungRads, NoduleType

PRIVATE_SCHEME = "99PACSNODE"
PRIVATE_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name="pacs-node private codes",
    version="1",
    responsible_organization="pacs-node project",
)

LUNG_RADS_CATEGORY = Code("LUNGRADS", PRIVATE_SCHEME, "Lung-RADS v2022 category")
LUNG_RADS_CODES: dict[LungRads, Code] = {
    category: Code(f"LR-{category.value}", PRIVATE_SCHEME, f"Lung-RADS {category.value} - {category.meaning}")
    for category in LungRads
}
NODULE_TYPE = Code("NODTYPE", PRIVATE_SCHEME, "Nodule attenuation type")
NODULE_TYPE_CODES: dict[NoduleType, Code] = {
    NoduleType.SOLID: Code("SOLID", PRIVATE_SCHEME, "Solid"),
    NoduleType.PART_SOLID: Code("PARTSOLID", PRIVATE_SCHEME, "Part-solid"),
    NoduleType.GROUND_GLASS: Code("GGN", PRIVATE_SCHEME, "Ground-glass"),
    NoduleType.CALCIFIED: Code("CALCIFIED", PRIVATE_SCHEME, "Calcified"),
}
SOLID_CORE = Code("SOLIDCORE", PRIVATE_SCHEME, "Solid component mean diameter")
NOT_ANALYSED_REASON = Code("NOTANALYSED", PRIVATE_SCHEME, "Reason the series was not analysed")
#: Follow-up (no standard code exists for these; see REFERENCE: VDT, change class).
PRIOR_DIAMETER = Code("PRIORDIAM", PRIVATE_SCHEME, "Mean diameter on the prior CT")
PRIOR_VOLUME = Code("PRIORVOL", PRIVATE_SCHEME, "Volume on the prior CT")
VOLUME_CHANGE = Code("VOLCHANGE", PRIVATE_SCHEME, "Volume change since the prior CT")
VOLUME_DOUBLING_TIME = Code("VDT", PRIVATE_SCHEME, "Volume doubling time")
CHANGE = Code("CHANGE", PRIVATE_SCHEME, "Change since the prior CT")
CHANGE_CODES: dict[str, Code] = {
    "new": Code("NEW", PRIVATE_SCHEME, "New"),
    "growing": Code("GROWING", PRIVATE_SCHEME, "Growing"),
    "slowly growing": Code("SLOWGROWING", PRIVATE_SCHEME, "Slowly growing"),
    "stable": Code("STABLE", PRIVATE_SCHEME, "Stable"),
    "shrinking": Code("SHRINKING", PRIVATE_SCHEME, "Shrinking"),
}

NODULE: Code = codes.SCT.Nodule
LUNG: Code = codes.SCT.Lung
LONG_AXIS: Code = codes.SCT.LongAxis
SHORT_AXIS: Code = codes.SCT.ShortAxis
DIAMETER: Code = codes.SCT.Diameter
VOLUME: Code = codes.SCT.Volume
MEAN_ATTENUATION: Code = codes.DCM.MeanAttenuationCoefficient
CERTAINTY_OF_FINDING: Code = codes.DCM.CertaintyOfFinding
BORDER_SHAPE: Code = codes.DCM.BorderShape
SPICULATED: Code = codes.DCM.Spiculated
ABSENT: Code = codes.SCT.Absent
COMMENT: Code = codes.DCM.Comment
CAD_SUMMARY: Code = codes.DCM.CADProcessingAndFindingsSummary
OF_INTEREST: Code = codes.DCM.OfInterest
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = codes.SCT.MorphologicallyAbnormalStructure
ARTIFICIAL_INTELLIGENCE: Code = codes.DCM.ArtificialIntelligence
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
ENGLISH = hd.sr.CodedConcept(value="en-US", scheme_designator="RFC5646", meaning="English (United States)")
CT_CHEST = Code("24627-2", "LN", "CT Chest")

MM: Code = codes.UCUM.Millimeter
MM3: Code = codes.UCUM.CubicMillimeter
HU: Code = codes.UCUM.HounsfieldUnit
PERCENT: Code = codes.UCUM.Percent
DAYS: Code = Code("d", "UCUM", "day")

_RIGHT: Code = codes.SCT.Right
_LEFT: Code = codes.SCT.Left
#: Lobe codes (SCT) with their laterality, keyed by the usual abbreviation.
LOBES: dict[str, tuple[Code, Code]] = {
    "RUL": (Code("42400003", "SCT", "Upper lobe of right lung"), _RIGHT),
    "RML": (Code("72481006", "SCT", "Middle lobe of right lung"), _RIGHT),
    "RLL": (Code("266005", "SCT", "Lower lobe of right lung"), _RIGHT),
    "LUL": (Code("44714003", "SCT", "Upper lobe of left lung"), _LEFT),
    "LLL": (Code("41224006", "SCT", "Lower lobe of left lung"), _LEFT),
}


def lobe_site(lobe: str | None) -> hd.sr.FindingSite:
    """The finding site of a nodule: lung, or its lobe with laterality.

    Parameters
    ----------
    lobe
        None, or a lobe as "RUL", "RML", "RLL", "LUL", "LLL" or spelled out
        ("right upper lobe", "left_lower", ...), case-insensitive.
    """
    if lobe is None:
        return hd.sr.FindingSite(anatomic_location=LUNG)
    key = lobe_key(lobe)
    location, laterality = LOBES[key]
    return hd.sr.FindingSite(anatomic_location=location, laterality=laterality)


def lobe_key(lobe: str) -> str:
    """The key of :data:`LOBES` for a lobe as :func:`lobe_site` accepts it.

    Raises
    ------
    ValueError
        When the lobe is not one of the five.
    """
    words = lobe.lower().replace("_", " ").replace("-", " ").split()
    words = [w for w in words if w not in ("lobe", "lung", "of", "the")]
    if len(words) == 1 and words[0].upper() in LOBES:
        return words[0].upper()
    side = {"right": "R", "left": "L"}.get(words[0], "") if words else ""
    level = {"upper": "U", "middle": "M", "lower": "L"}.get(words[1], "") if len(words) == 2 else ""
    key = f"{side}{level}L"
    if key not in LOBES:
        raise ValueError(f"unknown lobe {lobe!r}: use one of {', '.join(LOBES)}")
    return key
