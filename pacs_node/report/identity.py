"""Where a new object goes: its series and instance UIDs and numbers, chosen once per analysis."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import RE_VALID_UID, generate_uid


def _check_uid(value: str, name: str) -> None:
    if len(value) > 64 or not RE_VALID_UID.match(value):
        raise ValueError(f"{name} is not a valid UID: {value!r}")


@dataclass(frozen=True)
class SeriesIdentity:
    """A new series: its Series Instance UID and Series Number (from 1)."""

    series_instance_uid: str
    series_number: int

    def __post_init__(self) -> None:
        _check_uid(self.series_instance_uid, "series_instance_uid")
        if self.series_number < 1:
            raise ValueError(f"series_number must be 1 or more, got {self.series_number}")

    @classmethod
    def fresh(cls, series_number: int) -> SeriesIdentity:
        """A series with a newly generated UID."""
        return cls(generate_uid(), series_number)

    def instance(self, sop_instance_uid: str | None = None, instance_number: int = 1) -> ObjectIdentity:
        """An object of this series (a newly generated SOP Instance UID unless given)."""
        return ObjectIdentity(self, sop_instance_uid or generate_uid(), instance_number)


@dataclass(frozen=True)
class ObjectIdentity:
    """A new object: its series, SOP Instance UID and Instance Number (from 1).

    The caller chooses it once per analysis, so a re-sent object is the same object.
    """

    series: SeriesIdentity
    sop_instance_uid: str
    instance_number: int = 1

    def __post_init__(self) -> None:
        _check_uid(self.sop_instance_uid, "sop_instance_uid")
        if self.instance_number < 1:
            raise ValueError(f"instance_number must be 1 or more, got {self.instance_number}")

    @classmethod
    def fresh(cls, series_number: int) -> ObjectIdentity:
        """The first object of a new series, with newly generated UIDs."""
        return SeriesIdentity.fresh(series_number).instance()

    def attributes(self) -> dict[str, str | int]:
        """The four keyword arguments highdicom's SOP class constructors take for these."""
        return {
            "series_instance_uid": self.series.series_instance_uid,
            "series_number": self.series.series_number,
            "sop_instance_uid": self.sop_instance_uid,
            "instance_number": self.instance_number,
        }
