"""What every report object says about its making: outcome, algorithm, device, statements.

Shared by every report object: the SR (:mod:`pacs_node.report.sr`), the key images
(:mod:`pacs_node.report.keyimages`), the Key Object Selection (:mod:`pacs_node.report.kos`),
the presentation state (:mod:`pacs_node.report.gsps`) and the segmentation
(:mod:`pacs_node.report.seg`).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from pacs_node.imaging.findings import Finding, study_category

# -- statements ------------------------------------------------------------------------

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE - model trained on synthetic data only"
NO_NODULES_DETECTED = "No lung nodules detected."
#: The first comment of a report that replaces an earlier one of ours (its predecessor).
REVISED_REPORT = "Revised report: it replaces the earlier AI report of this study."
LUNG_RADS_NOTE = (
    "Lung-RADS v2022 categories are computed from the AI measurements with the baseline "
    "screening table; no comparison with prior examinations was made."
)


#: How OHIF (its ``@cornerstonejs/adapters``) recognises a measurement group it can load as
#: an editable circle: the group's Tracking Identifier starts with this text.  The
#: identifier is free text (TEXT, PS3.16 TID 4108), so the prefix keeps the SR standard.
VIEWER_TRACKING_PREFIX = "Cornerstone3DTools@^0.1.0:CircleROI"


def tracking_identifier(index: int) -> str:
    """Tracking Identifier of nodule ``index`` in the SR, the SEG and the presentation state."""
    return f"{VIEWER_TRACKING_PREFIX}:Nodule {index}"


def nodule_name(identifier: str) -> str:
    """"Nodule <n>" from a :func:`tracking_identifier` (or the identifier itself)."""
    return identifier.removeprefix(f"{VIEWER_TRACKING_PREFIX}:")


class OutcomeStatus(enum.StrEnum):
    """Whether a series was analysed."""

    ANALYSED = "analysed"
    NOT_ANALYSABLE = "not_analysable"


@dataclass(frozen=True)
class ReportOutcome:
    """What became of the analysis of one series.

    Attributes
    ----------
    status
        Analysed, or not analysable.
    reason
        Why the series could not be analysed (required then, e.g. "slice spacing
        5.0 mm > 3.0 mm"); must be empty for an analysed series.
    """

    status: OutcomeStatus
    reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", OutcomeStatus(self.status))
        if self.status is OutcomeStatus.NOT_ANALYSABLE and not (self.reason or "").strip():
            raise ValueError("reason is required when status is not_analysable")
        if self.status is OutcomeStatus.ANALYSED and self.reason:
            raise ValueError(f"reason must be empty when status is analysed, got {self.reason!r}")

    @classmethod
    def analysed(cls) -> ReportOutcome:
        return cls(OutcomeStatus.ANALYSED)

    @classmethod
    def not_analysable(cls, reason: str) -> ReportOutcome:
        return cls(OutcomeStatus.NOT_ANALYSABLE, reason)

    @property
    def is_analysed(self) -> bool:
        return self.status is OutcomeStatus.ANALYSED


def _check_lo(argument: str, value: str) -> None:
    """DICOM LO: non-empty here, at most 64 characters, no backslash or control characters."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{argument} must be a non-empty string, got {value!r}")
    if len(value) > 64 or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{argument} must fit DICOM LO (<= 64 characters, no backslash), got {value!r}")


@dataclass(frozen=True)
class AlgorithmInfo:
    """The detection algorithm, as TID 4019 Algorithm Identification names it.

    Attributes
    ----------
    name, version
        Algorithm name and version.
    synthetic_data
        True when the model was trained on synthetic data only: every object then
        says it is not for diagnostic use.
    """

    name: str
    version: str
    synthetic_data: bool

    def __post_init__(self) -> None:
        _check_lo("name", self.name)
        _check_lo("version", self.version)


@dataclass(frozen=True)
class DeviceInfo:
    """This node, as the observer device and the equipment that made the objects.

    Attributes
    ----------
    manufacturer, model_name, software_version, device_serial
        Written to the General Equipment module and the SR observer context.
    """

    manufacturer: str
    model_name: str
    software_version: str
    device_serial: str

    def __post_init__(self) -> None:
        for argument in ("manufacturer", "model_name", "software_version", "device_serial"):
            _check_lo(argument, getattr(self, argument))

    def equipment(self) -> dict[str, str]:
        """General Equipment keyword arguments of highdicom's SOP classes."""
        return {
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.model_name,
            "software_versions": self.software_version,
            "device_serial_number": self.device_serial,
        }

    @property
    def uid(self) -> str:
        """Device Observer UID: the same for the same device across runs and versions.

        A 2.25 UID of a name-based UUID (RFC 4122 version 5) of manufacturer, model
        name and serial number.
        """
        name = "\x1f".join(("pacs-node device", self.manufacturer, self.model_name, self.device_serial))
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def device_observer(device: DeviceInfo) -> hd.sr.ObserverContext:
    """Observer context (TID 1002/1004) of our device, as the SR and the KOS name it."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device.uid,
            name=f"{device.model_name} {device.software_version}"[:64],
            manufacturer_name=device.manufacturer,
            model_name=device.model_name,
            serial_number=device.device_serial,
        ),
    )


def ai_statement(algorithm: AlgorithmInfo, device: DeviceInfo) -> str:
    """The sentence every object carries: it is AI output, by what, unverified."""
    return (
        f"AI-generated result: produced automatically by {algorithm.name} {algorithm.version} "
        f"on {device.model_name} {device.software_version} ({device.manufacturer}); "
        "not reviewed by a physician."
    )


def series_description(kind: str, algorithm: AlgorithmInfo) -> str:
    """A series description (<= 64 characters) that says AI and, if so, not for diagnosis."""
    suffix = " (not for diagnostic use)" if algorithm.synthetic_data else " (unverified)"
    return f"AI {kind}{suffix}"[:64]


def outcome_summary(findings: Sequence[Finding], outcome: ReportOutcome) -> str:
    """The outcome in a few words: "2 nodules, Lung-RADS 4X", "no lung nodules detected", ..."""
    if not outcome.is_analysed:
        return "series not analysed"
    if not findings:
        return NO_NODULES_DETECTED.rstrip(".").lower()
    count = f"{len(findings)} nodule{'s' if len(findings) > 1 else ''}"
    return f"{count}, Lung-RADS {study_category(list(findings)).value}"


def report_description(findings: Sequence[Finding], outcome: ReportOutcome, algorithm: AlgorithmInfo) -> str:
    """The SR's series description: the outcome, as viewers list it before anyone opens the report."""
    return series_description(f"report: {outcome_summary(findings, outcome)}", algorithm)


def short_ai_statement(algorithm: AlgorithmInfo) -> str:
    """The AI statement in a few words, for labels drawn next to a finding."""
    if algorithm.synthetic_data:
        return "AI-generated, not for diagnostic use"
    return "AI-generated, not reviewed by a physician"


def nodule_label(index: int, finding: Finding) -> str:
    """One line naming a nodule as every object does: number, size, type, what it did since
    the prior CT (when compared: "new", "growing from 7.2 mm", ...), Lung-RADS category."""
    size = f"{finding.diameter_mm:.1f} mm {finding.nodule_type.value}"
    change = f", {finding.comparison.phrase()}" if finding.comparison is not None else ""
    return f"Nodule {index}: {size}{change}, Lung-RADS {finding.lung_rads.value}"


def copy_body_part(target: Dataset, reference: Dataset) -> None:
    """Body Part Examined from the CT, or else Laterality present and empty (unknown).

    General Series needs Laterality (type 2C) unless Body Part Examined names an
    unpaired part; the chest is one, so copying the CT's value settles it.
    """
    if reference.get("BodyPartExamined"):
        target.BodyPartExamined = reference.BodyPartExamined
    else:
        target.add_new("Laterality", "CS", None)
