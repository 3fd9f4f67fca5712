"""One association of the storage SCP: C-ECHO and streamed C-STORE.

Data set fragments are written to a spool file as they arrive; the response is sent
only after the instance sink has made the file durable and committed its row.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pacs_node.receive import upper_layer as ul
from pacs_node.receive.dimse import Command, MalformedCommand, Request, Status, decode_request, encode_response
from pacs_node.receive.part10 import file_meta
from pacs_node.receive.spool import PartialFile, SpoolFull

if TYPE_CHECKING:
    from pacs_node.monitoring.metrics import NodeMetrics

log = logging.getLogger(__name__)

#: Tolerance over our advertised maximum PDU before a P-DATA is treated as hostile.
PDU_SLACK_BYTES = 64 * 1024
_MAX_COMMAND_BYTES = 64 * 1024


@dataclass(frozen=True)
class StoreResult:
    """The status to answer a C-STORE with, and a comment for failures."""

    status: int
    comment: str = ""


class InstanceSink(Protocol):
    """Where received instances go (see ``receive/store.py``)."""

    def begin(self) -> PartialFile:
        """A new partial file; raises :class:`SpoolFull` when there is no room."""

    def complete(self, partial: PartialFile, request: Request, transfer_syntax: str, calling_ae: str) -> StoreResult:
        """Make the file durable, record it, and say what to answer."""


class _Store:
    """A C-STORE whose data set is being received."""

    def __init__(self, request: Request, context_id: int, partial: PartialFile | None, failure: StoreResult | None):
        self.request = request
        self.context_id = context_id
        self.partial = partial
        self.failure = failure
        self.received = 0  #: data set bytes received so far


class AssociationHandler:
    """Serves one accepted association until release, abort or shutdown."""

    def __init__(
        self,
        sock: socket.socket,
        association: ul.Association,
        sink: InstanceSink,
        max_pdu: int,
        stopping: threading.Event,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.sock = sock
        self.association = association
        self.sink = sink
        self.max_pdu = max_pdu
        self.stopping = stopping
        self.metrics = metrics
        self.buffer = bytearray(max_pdu + PDU_SLACK_BYTES)
        self.command = bytearray()
        self.store: _Store | None = None
        self.stored = 0

    def run(self) -> str:
        """Serve until the association ends; returns how it ended."""
        try:
            while True:
                if self.stopping.is_set() and self.store is None:
                    self.sock.sendall(ul.abort_pdu(source=2))
                    return "aborted: node shutting down"
                pdu_type, length = ul.read_pdu_header(self.sock)
                if pdu_type == ul.P_DATA_TF_TYPE:
                    if length > len(self.buffer):
                        raise ul.ProtocolError(f"P-DATA-TF of {length} bytes exceeds the maximum")
                    view = memoryview(self.buffer)[:length]
                    ul.recv_exact(self.sock, view)
                    self._p_data(view)
                elif pdu_type == ul.A_RELEASE_RQ_TYPE:
                    self._drain(length)
                    self.sock.sendall(ul.RELEASE_RP)
                    return "released"
                elif pdu_type == ul.A_ABORT_TYPE:
                    return "aborted by peer"
                else:
                    raise ul.ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}")
        except ul.ProtocolError as exc:
            self._send_quietly(ul.abort_pdu(source=2, reason=0))
            return f"aborted: {exc}"
        except (ul.PeerClosed, TimeoutError, ConnectionError, OSError) as exc:
            return f"connection lost: {type(exc).__name__}"
        finally:
            if self.store is not None and self.store.partial is not None:
                self.store.partial.discard()

    def _drain(self, length: int) -> None:
        if length > 1024:
            raise ul.ProtocolError("oversized A-RELEASE-RQ")
        ul.recv_exact(self.sock, memoryview(bytearray(length)))

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def _p_data(self, pdu: memoryview) -> None:
        offset, end = 0, len(pdu)
        while offset < end:
            if offset + 6 > end:
                raise ul.ProtocolError("truncated PDV item")
            item_length, context_id, control = struct.unpack_from(">IBB", pdu, offset)
            if item_length < 2 or offset + 4 + item_length > end:
                raise ul.ProtocolError("PDV item length out of bounds")
            if context_id not in self.association.contexts:
                raise ul.ProtocolError(f"PDV on context {context_id}, which was not accepted")
            fragment = pdu[offset + 6 : offset + 4 + item_length]
            offset += 4 + item_length
            if control & 0x01:
                self._command_fragment(fragment, context_id, last=bool(control & 0x02))
            else:
                self._dataset_fragment(fragment, context_id, last=bool(control & 0x02))

    def _command_fragment(self, fragment: memoryview, context_id: int, last: bool) -> None:
        if self.store is not None:
            raise ul.ProtocolError("command fragment while a data set was expected")
        self.command += fragment
        if len(self.command) > _MAX_COMMAND_BYTES:
            raise ul.ProtocolError("command set too large")
        if not last:
            return
        try:
            request = decode_request(bytes(self.command))
        except MalformedCommand as exc:
            raise ul.ProtocolError(f"malformed command set: {exc}") from exc
        finally:
            self.command.clear()
        if request.command == Command.C_ECHO_RQ:
            self._respond(context_id, request, StoreResult(Status.SUCCESS))
        elif request.command == Command.C_STORE_RQ and request.has_dataset:
            self.store = self._begin_store(request, context_id)
        else:
            raise ul.ProtocolError(f"unsupported DIMSE command 0x{request.command:04X}")

    def _begin_store(self, request: Request, context_id: int) -> _Store:
        abstract_syntax, _ = self.association.contexts[context_id]
        if request.sop_class_uid != abstract_syntax:
            return _Store(request, context_id, None, StoreResult(Status.DATASET_MISMATCH, "SOP class differs from context"))
        try:
            partial = self.sink.begin()
        except SpoolFull:
            return _Store(request, context_id, None, StoreResult(Status.OUT_OF_RESOURCES, "spool disk is full"))
        except OSError as exc:
            log.error("event=spool_error error=%s", type(exc).__name__)
            return _Store(request, context_id, None, StoreResult(Status.OUT_OF_RESOURCES, "cannot write to spool"))
        try:
            partial.write(file_meta(request, self.association.contexts[context_id][1], self.association.calling_ae))
        except OSError:
            partial.discard()
            return _Store(request, context_id, None, StoreResult(Status.OUT_OF_RESOURCES, "cannot write to spool"))
        return _Store(request, context_id, partial, None)

    def _dataset_fragment(self, fragment: memoryview, context_id: int, last: bool) -> None:
        store = self.store
        if store is None or context_id != store.context_id:
            raise ul.ProtocolError("data set fragment without a matching command")
        store.received += len(fragment)
        if store.partial is not None:
            try:
                store.partial.write(fragment)
            except OSError as exc:
                store.partial.discard()
                store.partial = None
                log.error("event=spool_write_failed error=%s", type(exc).__name__)
                store.failure = StoreResult(Status.OUT_OF_RESOURCES, "cannot write to spool")
        if not last:
            return
        self.store = None
        if store.failure is not None or store.partial is None:
            result = store.failure or StoreResult(Status.PROCESSING_FAILURE, "internal error")
        else:
            transfer_syntax = self.association.contexts[context_id][1]
            result = self.sink.complete(store.partial, store.request, transfer_syntax, self.association.calling_ae)
            if result.status == Status.SUCCESS:
                self.stored += 1
        self._respond(context_id, store.request, result)
        if self.metrics is not None:
            self.metrics.store_answered(result.status, store.received)

    def _respond(self, context_id: int, request: Request, result: StoreResult) -> None:
        self.sock.sendall(ul.p_data_pdu(context_id, encode_response(request, result.status, result.comment)))
