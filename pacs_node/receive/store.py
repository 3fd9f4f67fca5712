"""The instance sink: check a received data set, then have it recorded and made durable.

The C-STORE is answered only once the file's bytes, its name under ``studies/`` and its
row are durable; ``group_commit.py`` does that for the instances of all associations
together and says precisely what is durable when.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import struct
import zlib

from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.filereader import read_partial
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from sqlalchemy.exc import OperationalError

from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.receive.dimse import Request, Status
from pacs_node.receive.group_commit import DATABASE_UNAVAILABLE, INTERNAL_ERROR, SPOOL_FAILED, GroupCommit
from pacs_node.receive.header import LAST_TAG, TAGS as HEADER_TAGS, read_header as read_raw_header
from pacs_node.receive.part10 import PREAMBLE
from pacs_node.receive.scp import StoreResult
from pacs_node.receive.spool import InvalidUID, PartialFile, Spool, validate_uid

log = logging.getLogger(__name__)

_META_START = len(PREAMBLE)


def _past_header(tag, vr, length) -> bool:  # noqa: ANN001 - pydicom's stop_when signature
    return tag > LAST_TAG


class InvalidInstance(ValueError):
    """A data set we refuse, with the DICOM status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_NEEDED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_PN_DELIMITERS = {0x5C, 0x3D, 0x5E}


def _decode(raw: dict[str, bytes]) -> dict[str, str]:
    terms = raw.get("SpecificCharacterSet", b"").decode("ascii", "replace").strip(" \x00").split("\\")
    encodings = convert_encodings([term.strip() for term in terms])
    values = {}
    for keyword, value in raw.items():
        delimiters = _PN_DELIMITERS if keyword == "PatientName" else set()
        values[keyword] = decode_bytes(value, encodings, delimiters).strip(" \x00")
    return values


@functools.lru_cache(maxsize=64)
def _encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(deflated, implicit VR, little endian) of a transfer syntax."""
    uid = UID(transfer_syntax)
    return uid == DeflatedExplicitVRLittleEndian, uid.is_implicit_VR, uid.is_little_endian


def _header_values(partial: PartialFile, transfer_syntax: str) -> dict[str, str]:
    """The header attributes as text, from the in-memory head when possible.

    The File Meta Information is ours (``part10.py``), so it is skipped rather than
    parsed; pydicom reads the file only for deflated data sets or a head that ends
    before the attributes we need.
    """
    head = partial.head
    deflated, implicit, little = _encoding(transfer_syntax)
    if not deflated and len(head) >= _META_START + 12:
        (meta_length,) = struct.unpack_from("<I", head, _META_START + 8)
        raw = read_raw_header(head, _META_START + 12 + meta_length, implicit, little)
        if raw is not None and all(keyword in raw for keyword in _NEEDED):
            return _decode(raw)
    with open(partial.path, "rb") as fp:
        ds = read_partial(fp, stop_when=_past_header)
    return {keyword: str(ds.get(keyword) or "").strip() for keyword in HEADER_TAGS.values()}


#: What pydicom raises on a data set it cannot parse (an unknown VR raises NotImplementedError).
_UNPARSEABLE = (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError, OSError, LookupError,
                NotImplementedError, BytesLengthException, struct.error, zlib.error)


def _int(value: str) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def read_header(partial: PartialFile, request: Request, transfer_syntax: str, calling_ae: str) -> ReceivedInstance:
    """The identifying attributes of a partial file; :class:`InvalidInstance` if unusable."""
    try:
        values = _header_values(partial, transfer_syntax)
        sop_instance = validate_uid(values.get("SOPInstanceUID", ""), "SOPInstanceUID")
        sop_class = validate_uid(values.get("SOPClassUID", ""), "SOPClassUID")
        study = validate_uid(values.get("StudyInstanceUID", ""), "StudyInstanceUID")
        series = validate_uid(values.get("SeriesInstanceUID", ""), "SeriesInstanceUID")
    except InvalidUID as exc:
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, str(exc)) from exc
    except _UNPARSEABLE as exc:
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, "data set cannot be parsed") from exc
    if sop_instance != request.sop_instance_uid:
        raise InvalidInstance(Status.DATASET_MISMATCH, "SOPInstanceUID differs from the C-STORE request")
    if sop_class != request.sop_class_uid:
        raise InvalidInstance(Status.DATASET_MISMATCH, "SOPClassUID differs from the C-STORE request")
    return ReceivedInstance(
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        study_uid=study,
        series_uid=series,
        transfer_syntax_uid=transfer_syntax,
        relative_path="",
        size_bytes=0,
        calling_ae=calling_ae,
        patient_id=values.get("PatientID", ""),
        issuer_of_patient_id=values.get("IssuerOfPatientID", ""),
        patient_name=values.get("PatientName", ""),
        birth_date=values.get("PatientBirthDate", ""),
        study_date=values.get("StudyDate", ""),
        accession_number=values.get("AccessionNumber", ""),
        study_description=values.get("StudyDescription", ""),
        modality=values.get("Modality", ""),
        series_number=_int(values.get("SeriesNumber", "")),
        series_description=values.get("SeriesDescription", ""),
        instance_number=_int(values.get("InstanceNumber", "")),
    )


def refusal(exc: Exception, calling_ae: str) -> StoreResult:
    """The answer to an instance whose checking or storing raised ``exc``, logged (no PHI)."""
    if isinstance(exc, InvalidInstance):
        log.warning("event=instance_refused status=0x%04X reason=%r calling_ae=%s", exc.status, str(exc), calling_ae)
        return StoreResult(exc.status, str(exc))
    if isinstance(exc, OSError):
        log.error("event=spool_failed error=%s calling_ae=%s", type(exc).__name__, calling_ae)
        return SPOOL_FAILED
    if isinstance(exc, OperationalError):
        log.error("event=database_unavailable error=%s", type(exc.orig).__name__)
        return DATABASE_UNAVAILABLE
    log.error("event=store_failed calling_ae=%s", calling_ae, exc_info=exc)
    return INTERNAL_ERROR


class SpoolingSink:
    """Stores received instances in the spool and the database.

    A checked instance goes to the :class:`GroupCommit`, which answers once its row,
    file and name are durable.  A re-sent instance is a duplicate, answered at once and
    stored once, only when its row, its file and the file's size agree; otherwise
    (a crash left a row without its file, or a file cut short) it is stored again.
    ``max_parallel`` bounds how many instances are committed and flushed together.
    """

    def __init__(self, spool: Spool, recorder: InstanceRecorder, max_parallel: int = 16) -> None:
        self.spool = spool
        self.recorder = recorder
        self._commit = GroupCommit(spool, recorder, max_batch=max_parallel)

    def close(self) -> None:
        """Finish the instances in flight, then close the database connections."""
        self._commit.close()
        self.recorder.close()

    def begin(self) -> PartialFile:
        return self.spool.begin()

    def complete(self, partial: PartialFile, request: Request, transfer_syntax: str, calling_ae: str) -> StoreResult:
        try:
            header = read_header(partial, request, transfer_syntax, calling_ae)
            relative = self.spool.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
            if self._already_stored(header.sop_instance_uid, relative):
                partial.discard()
                log.debug("event=instance_duplicate calling_ae=%s", calling_ae)
                return StoreResult(Status.SUCCESS)
            instance = dataclasses.replace(header, relative_path=relative, size_bytes=partial.size())
        except Exception as exc:
            partial.discard()
            return refusal(exc, calling_ae)
        return self._commit.store(partial, instance)

    def _already_stored(self, sop_instance_uid: str, relative: str) -> bool:
        """Whether the instance's row names ``relative`` and the file there has the row's size."""
        try:
            size = self.spool.path_of(relative).stat().st_size
        except FileNotFoundError:
            return False
        return self.recorder.stored_file(sop_instance_uid) == (relative, size)
