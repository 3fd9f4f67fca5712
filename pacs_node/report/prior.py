"""What a report says about the patient's prior CT: found, none, or could not be retrieved.

Lung-RADS at a follow-up screen depends on the prior, so a report must say plainly whether
one was compared.  The job looks the prior up (``[priors]``, :mod:`pacs_node.priors`) and
compares with it where it can (:mod:`pacs_node.analyze.followup`); otherwise every category is
from the baseline table, and the statement says why.  In the SR's report-level Qualitative
Evaluations:

- Comparison with Prior Study Done (122140, DCM): Yes or No (SCT);
- Study Instance UID (110180, DCM) of the prior, when one was found;
- a Comment with the sentence of :meth:`PriorStatement.sentence`, then one per prior nodule
  not seen now.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom.sr.codedict import codes

from pacs_node.db.models import PriorStatus
from pacs_node.report.codes import COMMENT


def display_date(yyyymmdd: str) -> str:
    """A DICOM date (YYYYMMDD) as yyyy-mm-dd, or "unknown date"."""
    if len(yyyymmdd) == 8 and yyyymmdd.isdigit():
        return f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:]}"
    return "unknown date"


@dataclass(frozen=True)
class PriorStatement:
    """The prior CT as the report states it.

    Attributes
    ----------
    status
        Found, none found, or not retrievable.
    study_uid, study_date
        The prior study (``found`` only); date as DICOM DA (YYYYMMDD).
    reason
        Why none was found, it could not be retrieved, or it was not compared (no patient data).
    compared
        Whether the findings were compared with it.
    resolved
        One sentence per prior nodule that has no match now.
    """

    status: PriorStatus
    study_uid: str | None = None
    study_date: str = ""
    reason: str | None = None
    compared: bool = False
    resolved: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.status == PriorStatus.FOUND and not self.study_uid:
            raise ValueError("a found prior needs its study_uid")
        if self.compared and self.status != PriorStatus.FOUND:
            raise ValueError(f"cannot have compared with a prior that is {self.status.value}")

    def sentence(self) -> str:
        """One plain sentence for the radiologist."""
        baseline = "Lung-RADS categories use the baseline screening table"
        if self.status == PriorStatus.FOUND:
            if self.compared:
                return (f"Compared with the prior CT of {display_date(self.study_date)}: Lung-RADS categories use the "
                        "follow-up rules.")
            why = f" ({self.reason})" if self.reason else ""
            return f"Prior CT of {display_date(self.study_date)} retrieved but not compared{why}: {baseline}."
        if self.status == PriorStatus.NONE:
            return f"No prior chest CT available for comparison: {baseline}."
        return (f"Prior CT could not be retrieved ({self.reason or 'no reason given'}): {baseline}; "
                "compare when it is available (Lung-RADS 0 may apply).")


def prior_items(statement: PriorStatement) -> list[hd.sr.ContentItem]:
    """The report-level Qualitative Evaluations items that state ``statement``."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(name=codes.DCM.ComparisonWithPriorStudyDone,
                              value=codes.SCT.Yes if statement.compared else codes.SCT.No,
                              relationship_type=contains),
    ]
    if statement.study_uid:
        items.append(hd.sr.UIDRefContentItem(name=codes.DCM.StudyInstanceUID, value=statement.study_uid,
                                             relationship_type=contains))
    items.append(hd.sr.TextContentItem(name=COMMENT, value=statement.sentence(), relationship_type=contains))
    items.extend(hd.sr.TextContentItem(name=COMMENT, value=line, relationship_type=contains)
                 for line in statement.resolved)
    return items
