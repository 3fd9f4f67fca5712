"""The instance sink: check a received data set, make it durable, record it.

Order matters for "acknowledged means kept": the file is fsynced and renamed before
its row is committed, and the C-STORE is answered only after both.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import zlib
from concurrent.futures import ThreadPoolExecutor

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from sqlalchemy.exc import IntegrityError, OperationalError

from pacs_node.db.ingest import InstanceRecorder, ReceivedInstance
from pacs_node.receive.dimse import Request, Status
from pacs_node.receive.scp import StoreResult
from pacs_node.receive.spool import InvalidUID, PartialFile, Spool, validate_uid

log = logging.getLogger(__name__)

#: Every attribute we record lies at or before (0020,0013) Instance Number.
_LAST_HEADER_TAG = 0x00200013


def _past_header(tag, vr, length) -> bool:  # noqa: ANN001 - pydicom's stop_when signature
    return tag > _LAST_HEADER_TAG


class InvalidInstance(ValueError):
    """A data set we refuse, with the DICOM status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _text(ds, keyword: str) -> str:  # noqa: ANN001 - pydicom Dataset
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(ds, keyword: str) -> int | None:  # noqa: ANN001
    value = ds.get(keyword)
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _parse_header(partial: PartialFile):  # noqa: ANN202 - pydicom Dataset
    """Parse from the in-memory head; read the file when the head stops too early."""
    try:
        ds = read_partial(io.BytesIO(partial.head), stop_when=_past_header)
        if "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds and "SOPInstanceUID" in ds:
            return ds
    except (EOFError, ValueError, OSError, zlib.error):
        pass
    with open(partial.path, "rb") as fp:
        return read_partial(fp, stop_when=_past_header)


def read_header(partial: PartialFile, request: Request, transfer_syntax: str, calling_ae: str) -> ReceivedInstance:
    """The identifying attributes of a partial file; :class:`InvalidInstance` if unusable."""
    try:
        ds = _parse_header(partial)
        sop_instance = validate_uid(str(ds.get("SOPInstanceUID", "")), "SOPInstanceUID")
        sop_class = validate_uid(str(ds.get("SOPClassUID", "")), "SOPClassUID")
        study = validate_uid(str(ds.get("StudyInstanceUID", "")), "StudyInstanceUID")
        series = validate_uid(str(ds.get("SeriesInstanceUID", "")), "SeriesInstanceUID")
    except InvalidUID as exc:
        raise InvalidInstance(Status.CANNOT_UNDERSTAND, str(exc)) from exc
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError, OSError) as exc:
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
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"),
        study_date=_text(ds, "StudyDate"),
        accession_number=_text(ds, "AccessionNumber"),
        study_description=_text(ds, "StudyDescription"),
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        instance_number=_int(ds, "InstanceNumber"),
    )


class SpoolingSink:
    """Stores received instances in the spool and the database.

    The row is committed while the file is being fsynced (both wait on the disk);
    the file is renamed into place only after both, and a stored instance counts as
    a duplicate only when its row and its file both exist, so a crash between the
    two never turns a re-sent instance into a lost one.
    """

    def __init__(self, spool: Spool, recorder: InstanceRecorder, max_parallel: int = 16) -> None:
        self.spool = spool
        self.recorder = recorder
        self._database = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="ingest-db")

    def close(self) -> None:
        """Wait for row commits in flight."""
        self._database.shutdown(wait=True)

    def begin(self) -> PartialFile:
        return self.spool.begin()

    def complete(self, partial: PartialFile, request: Request, transfer_syntax: str, calling_ae: str) -> StoreResult:
        try:
            header = read_header(partial, request, transfer_syntax, calling_ae)
            relative = self.spool.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
            if self.spool.path_of(relative).exists() and self.recorder.is_stored(header.sop_instance_uid) == relative:
                partial.discard()
                log.debug("event=instance_duplicate calling_ae=%s", calling_ae)
                return StoreResult(Status.SUCCESS)
            instance = dataclasses.replace(header, relative_path=relative, size_bytes=partial.size())
            row = self._database.submit(self._record, instance)
            try:
                partial.sync()
            finally:
                result = row.result()
            if result.status != Status.SUCCESS:
                partial.discard()
                return result
            self.spool.commit(partial, relative)
            return result
        except InvalidInstance as exc:
            partial.discard()
            log.warning("event=instance_refused status=0x%04X reason=%r calling_ae=%s", exc.status, str(exc), calling_ae)
            return StoreResult(exc.status, str(exc))
        except OSError as exc:
            partial.discard()
            log.error("event=spool_failed error=%s calling_ae=%s", type(exc).__name__, calling_ae)
            return StoreResult(Status.OUT_OF_RESOURCES, "cannot write to spool")
        except OperationalError as exc:
            partial.discard()
            log.error("event=database_unavailable error=%s", type(exc.orig).__name__)
            return StoreResult(Status.OUT_OF_RESOURCES, "database unavailable")
        except Exception:
            partial.discard()
            log.exception("event=store_failed calling_ae=%s", calling_ae)
            return StoreResult(Status.PROCESSING_FAILURE, "internal error; see the node's log")

    def _record(self, instance: ReceivedInstance) -> StoreResult:
        for attempt in range(2):
            try:
                new = self.recorder.record(instance)
                break
            except IntegrityError:
                if attempt:
                    raise
                self.recorder.forget()  # cached series row was removed meanwhile
            except OperationalError as exc:
                log.error("event=database_unavailable error=%s", type(exc.orig).__name__)
                return StoreResult(Status.OUT_OF_RESOURCES, "database unavailable")
        log.debug("event=instance_stored new=%s path=%s", new, instance.relative_path)
        return StoreResult(Status.SUCCESS)
