"""Finding the prior study on a source: C-FIND (Study Root) at STUDY, then SERIES level.

The prior is the most recent earlier study of the same patient (PatientID, and
IssuerOfPatientID when the current study has one) within the look-back window that has
a CT series that passes the analysis's series gate (:class:`SeriesGate`: enough slices,
slices no thicker than the analysis takes, as far as the source says); its CT series is
the thinnest of those, then the one with the most instances.  A study whose CT series
all fail the gate (a scout, a 5 mm reconstruction only) is passed over for an older one.  PACS treat ``ModalitiesInStudy`` unevenly, so it is asked for
but a study is judged by its series: one that lists modalities without CT is skipped,
one that lists none is looked at.  Dates are filtered on our side too: the query asks
for the window up to the current study's date, and a same-day study counts only when
its StudyTime is earlier.  Our own earlier SR in the prior study (Modality SR, series
number :data:`~pacs_node.analyze.pipeline.SR_SERIES_NUMBER`) is noted for later slices.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import Dataset
from pynetdicom import Association
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND_MODEL

from pacs_node.analyze.pipeline import MANUFACTURER, SR_SERIES_NUMBER
from pacs_node.config import PriorsConfig, PriorSource
from pacs_node.priors.association import Cancel, SourceUnavailable, associate, close
from pacs_node.receive.spool import InvalidUID, validate_uid

#: Candidate studies looked at, newest first, before giving up on finding a CT series.
MAX_CANDIDATES = 10


@dataclass(frozen=True)
class CurrentStudy:
    """What the query needs of the study being analysed."""

    study_uid: str
    patient_id: str
    issuer_of_patient_id: str
    study_date: str  #: YYYYMMDD ("" when the study has none: today is used)
    study_time: str = ""


@dataclass(frozen=True)
class RemoteSeries:
    """A series on the source."""

    series_uid: str
    modality: str
    series_number: int | None
    instances: int | None
    slice_thickness: float | None = None


@dataclass(frozen=True)
class SeriesGate:
    """What a prior's CT series must be to be compared: the ``[analysis]`` series gate, on C-FIND answers.

    A source that does not return a series' instance count or slice thickness is given
    the benefit of the doubt; the analysis checks the retrieved slices again.
    """

    min_slices: int = 30
    max_slice_thickness_mm: float = 3.0

    def passes(self, series: RemoteSeries) -> bool:
        """Whether the source's answer about ``series`` leaves it eligible."""
        if series.instances is not None and series.instances < self.min_slices:
            return False
        return series.slice_thickness is None or series.slice_thickness <= self.max_slice_thickness_mm

    def choose(self, ct: list[RemoteSeries]) -> RemoteSeries | None:
        """The series to compare with: the thinnest that passes, then the one with most instances."""
        eligible = [s for s in ct if self.passes(s)]
        if not eligible:
            return None
        return min(eligible, key=lambda s: (s.slice_thickness is None, s.slice_thickness or 0.0, -(s.instances or 0)))


@dataclass(frozen=True)
class PriorStudy:
    """The prior found on a source: its CT series, and our earlier SR when there is one."""

    source: PriorSource
    study_uid: str
    study_date: str
    ct: RemoteSeries
    our_sr: RemoteSeries | None = None
    our_sr_uid: str | None = None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        return int(_text(ds, keyword))
    except ValueError:
        return None


def _find(assoc: Association, query: Dataset, cancel: Cancel) -> Iterator[Dataset]:
    """The identifiers a C-FIND returns; :class:`SourceUnavailable` on a failure status or no answer."""
    for status, identifier in assoc.send_c_find(query, FIND_MODEL):
        cancel.check()
        if not status or "Status" not in status:
            raise SourceUnavailable("no C-FIND response (timeout or abort)")
        code = int(status.Status)
        if code in (0xFF00, 0xFF01):
            if identifier is not None:
                yield identifier
        elif code != 0x0000:
            raise SourceUnavailable(f"C-FIND status 0x{code:04X}")


def _parse_date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _earlier(date: dt.date, time: str, current_date: dt.date, current_time: str) -> bool:
    if date != current_date:
        return date < current_date
    return bool(time and current_time) and time.ljust(6, "0")[:6] < current_time.ljust(6, "0")[:6]


def _modalities(identifier: Dataset) -> set[str]:
    value = identifier.get("ModalitiesInStudy") or []
    values = [value] if isinstance(value, str) else list(value)  # one value comes back as a plain string
    return {str(m).strip().upper() for m in values} - {""}


def _studies(assoc: Association, current: CurrentStudy, lookback_days: int, cancel: Cancel) -> list[tuple]:
    """``(date, time, study_uid)`` of earlier studies that may hold a CT, newest first."""
    today = _parse_date(current.study_date) or dt.datetime.now(dt.timezone.utc).date()
    start = today - dt.timedelta(days=lookback_days)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = current.patient_id
    if current.issuer_of_patient_id:
        query.IssuerOfPatientID = current.issuer_of_patient_id
    query.StudyDate = f"{start:%Y%m%d}-{today:%Y%m%d}"
    query.StudyTime = query.StudyInstanceUID = query.ModalitiesInStudy = ""
    found = []
    for identifier in _find(assoc, query, cancel):
        if _text(identifier, "PatientID") not in ("", current.patient_id):
            continue  # a source that ignores the key: never another patient's study
        try:
            uid = validate_uid(_text(identifier, "StudyInstanceUID"), "StudyInstanceUID")
        except InvalidUID:
            continue
        date = _parse_date(_text(identifier, "StudyDate"))
        modalities = _modalities(identifier)
        if uid == current.study_uid or date is None or date < start or (modalities and "CT" not in modalities):
            continue
        time = _text(identifier, "StudyTime")
        if _earlier(date, time, today, current.study_time):
            found.append((date, time, uid))
    return sorted(found, reverse=True)


def _series(assoc: Association, study_uid: str, cancel: Cancel) -> list[RemoteSeries]:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = query.Modality = query.SeriesNumber = query.NumberOfSeriesRelatedInstances = ""
    query.SliceThickness = query.Manufacturer = ""
    found = []
    for identifier in _find(assoc, query, cancel):
        try:
            uid = validate_uid(_text(identifier, "SeriesInstanceUID"), "SeriesInstanceUID")
        except InvalidUID:
            continue
        if _text(identifier, "Manufacturer") not in ("", MANUFACTURER) and _text(identifier, "Modality") == "SR":
            continue  # someone else's SR
        try:
            thickness = float(_text(identifier, "SliceThickness")) if _text(identifier, "SliceThickness") else None
        except ValueError:
            thickness = None
        found.append(RemoteSeries(uid, _text(identifier, "Modality").upper(), _int(identifier, "SeriesNumber"),
                                  _int(identifier, "NumberOfSeriesRelatedInstances"), thickness))
    return found


def _sop_uid(assoc: Association, study_uid: str, series_uid: str, cancel: Cancel) -> str | None:
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = study_uid, series_uid, ""
    for identifier in _find(assoc, query, cancel):
        try:
            return validate_uid(_text(identifier, "SOPInstanceUID"), "SOPInstanceUID")
        except InvalidUID:
            continue
    return None


def find_prior(source: PriorSource, current: CurrentStudy, config: PriorsConfig, calling_ae: str,
               cancel: Cancel, gate: SeriesGate | None = None) -> PriorStudy | None:
    """The prior study on ``source``, or ``None`` when it holds none (with a CT series through ``gate``).

    Raises
    ------
    SourceUnavailable
        When the source cannot be reached or fails a query (the message says why).
    """
    assoc = associate(source, calling_ae, [FIND_MODEL], config.query_timeout_s, cancel)
    try:
        for date, _, study_uid in _studies(assoc, current, config.lookback_days, cancel)[:MAX_CANDIDATES]:
            series = _series(assoc, study_uid, cancel)
            chosen = (gate or SeriesGate()).choose([s for s in series if s.modality == "CT"])
            if chosen is None:
                continue
            ours = next((s for s in series if s.modality == "SR" and s.series_number == SR_SERIES_NUMBER), None)
            sop = _sop_uid(assoc, study_uid, ours.series_uid, cancel) if ours else None
            return PriorStudy(source, study_uid, f"{date:%Y%m%d}", chosen, ours, sop)
        return None
    finally:
        close(assoc, cancel)
