"""Fetching the prior's series into the spool: C-GET (preferred) or C-MOVE.

C-GET brings the instances back on our own association (we act as storage SCP on it),
so the PACS needs to know only our AE title; each instance goes through the node's
normal durable storage (:class:`~pacs_node.receive.store.SpoolingSink`: row, rename,
fsync).  C-MOVE asks the PACS to send them to ``move_destination``, our listener, which
stores them as any received instance.  Either way the study was recorded as a prior
(:func:`pacs_node.db.priors.begin_retrieval`) before the first instance arrived, so the
completion sweep never queues it for analysis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydicom import Dataset
from pynetdicom import Association, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedCTImageStorage,
    EnhancedSRStorage,
    StudyRootQueryRetrieveInformationModelGet as GET_MODEL,
    StudyRootQueryRetrieveInformationModelMove as MOVE_MODEL,
)

from pacs_node.config import PriorsConfig, PriorSource
from pacs_node.priors.association import Cancel, SourceUnavailable, associate, close
from pacs_node.receive.dimse import Command, Request, Status
from pacs_node.receive.part10 import file_meta
from pacs_node.receive.spool import SpoolFull
from pacs_node.receive.object_sink import ObjectStoreSink
from pacs_node.receive.store import InvalidInstance, SpoolingSink, read_header

log = logging.getLogger(__name__)

#: What a prior holds that we keep: the CT and our SR (fewer contexts, so every PACS accepts the roles).
STORAGE_CLASSES = [CTImageStorage, EnhancedCTImageStorage, Comprehensive3DSRStorage, ComprehensiveSRStorage,
                   EnhancedSRStorage]


class _GetStore:
    """The C-STORE handler of a C-GET association: only instances of the asked-for study are kept."""

    def __init__(self, sink: SpoolingSink | ObjectStoreSink, study_uid: str, source_ae: str) -> None:
        self.sink, self.study_uid, self.source_ae = sink, study_uid, source_ae
        self.stored = 0

    def __call__(self, event: evt.Event) -> int:
        primitive = event.request
        request = Request(Command.C_STORE_RQ, int(primitive.MessageID), str(primitive.AffectedSOPClassUID),
                          str(primitive.AffectedSOPInstanceUID), True)
        syntax = str(event.context.transfer_syntax)
        try:
            partial = self.sink.begin()
        except SpoolFull:
            return Status.OUT_OF_RESOURCES
        try:
            partial.write(file_meta(request, syntax, self.source_ae))
            partial.write(primitive.DataSet.getvalue())
            if read_header(partial, request, syntax, self.source_ae).study_uid != self.study_uid:
                partial.discard()
                return Status.DATASET_MISMATCH
        except InvalidInstance as exc:
            partial.discard()
            return exc.status
        except OSError:
            partial.discard()
            return Status.OUT_OF_RESOURCES
        result = self.sink.complete(partial, request, syntax, self.source_ae)
        if result.status == Status.SUCCESS:
            self.stored += 1
        return result.status


def _identifier(study_uid: str, series_uid: str) -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid
    return query


def _final(responses, cancel: Cancel, what: str) -> Dataset:  # noqa: ANN001 - pynetdicom's generator
    """The last response of a C-GET/C-MOVE; :class:`SourceUnavailable` when it failed."""
    last = None
    for status, _ in responses:
        cancel.check()
        if not status or "Status" not in status:
            raise SourceUnavailable(f"no {what} response (timeout or abort)")
        last = status
    code = int(last.Status) if last is not None else -1
    if code not in (0x0000, 0xB000):
        raise SourceUnavailable(f"{what} status 0x{code:04X}" if code >= 0 else f"no {what} response")
    return last


def retrieve(source: PriorSource, study_uid: str, series_uids: Sequence[str], sink: SpoolingSink | ObjectStoreSink,
             config: PriorsConfig, calling_ae: str, cancel: Cancel) -> int:
    """Fetch ``series_uids`` of a study from ``source``; returns how many instances were stored
    (C-GET) or reported completed by the source (C-MOVE).

    Raises
    ------
    SourceUnavailable
        When the source cannot be reached or the retrieval fails.
    """
    if source.retrieve == "move":
        return _move(source, study_uid, series_uids, config, calling_ae, cancel)
    handler = _GetStore(sink, study_uid, source.ae_title)
    assoc = associate(source, calling_ae, [GET_MODEL, *STORAGE_CLASSES], config.retrieve_timeout_s, cancel,
                      ext_neg=[build_role(uid, scp_role=True) for uid in STORAGE_CLASSES],
                      evt_handlers=[(evt.EVT_C_STORE, handler)])
    try:
        for series_uid in series_uids:
            last = _final(assoc.send_c_get(_identifier(study_uid, series_uid), GET_MODEL), cancel, "C-GET")
            failed = int(last.get("NumberOfFailedSuboperations", 0) or 0)
            if failed:
                log.warning("event=prior_instances_failed count=%d method=get", failed)
    finally:
        close(assoc, cancel)
    return handler.stored


def _move(source: PriorSource, study_uid: str, series_uids: Sequence[str], config: PriorsConfig,
          calling_ae: str, cancel: Cancel) -> int:
    destination = config.move_destination or calling_ae
    assoc: Association = associate(source, calling_ae, [MOVE_MODEL], config.retrieve_timeout_s, cancel)
    completed = 0
    try:
        for series_uid in series_uids:
            last = _final(assoc.send_c_move(_identifier(study_uid, series_uid), destination, MOVE_MODEL), cancel,
                          "C-MOVE")
            completed += int(last.get("NumberOfCompletedSuboperations", 0) or 0)
    finally:
        close(assoc, cancel)
    return completed
