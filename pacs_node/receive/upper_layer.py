"""DICOM upper layer for the storage SCP: PDU framing and association negotiation.

pynetdicom decodes and encodes the association PDUs and negotiates presentation
contexts; this module adds the framing of a blocking socket so that P-DATA can be
read straight into one reusable buffer and streamed to disk (see ``scp.py``).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor

from pacs_node import __version__
from pacs_node.receive.dimse import VERIFICATION_SOP_CLASS
from pacs_node.receive.policy import AssociationPolicy, RejectReason

A_ASSOCIATE_RQ_TYPE = 0x01
P_DATA_TF_TYPE = 0x04
A_RELEASE_RQ_TYPE = 0x05
A_RELEASE_RP_TYPE = 0x06
A_ABORT_TYPE = 0x07

#: Root of our implementation class UID (a UUID-derived 2.25 UID fixed for pacs-node).
IMPLEMENTATION_CLASS_UID = "2.25.178094587614123096052196063434786532751"
IMPLEMENTATION_VERSION = f"PACSNODE_{__version__}"[:16]
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: An A-ASSOCIATE-RQ larger than this is hostile, not a request.
MAX_ASSOCIATE_RQ_BYTES = 256 * 1024

RELEASE_RP = bytes([A_RELEASE_RP_TYPE, 0]) + struct.pack(">I", 4) + b"\x00\x00\x00\x00"


class ProtocolError(Exception):
    """The peer broke the upper layer protocol; the association is aborted."""


class PeerClosed(ConnectionError):
    """The peer closed the connection."""


def abort_pdu(source: int = 2, reason: int = 0) -> bytes:
    """An A-ABORT PDU (source 0: service user, 2: service provider)."""
    return bytes([A_ABORT_TYPE, 0]) + struct.pack(">I", 4) + bytes([0, 0, source, reason])


def p_data_pdu(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF PDU holding one complete command PDV."""
    item = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    return bytes([P_DATA_TF_TYPE, 0]) + struct.pack(">I", len(item)) + item


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; :class:`PeerClosed` if the peer hangs up first."""
    while view:
        count = sock.recv_into(view)
        if count == 0:
            raise PeerClosed("peer closed the connection")
        view = view[count:]


def read_pdu_header(sock: socket.socket) -> tuple[int, int]:
    """Read a PDU header: (PDU type, length of what follows)."""
    header = bytearray(6)
    recv_exact(sock, memoryview(header))
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, length


def storage_contexts() -> list[PresentationContext]:
    """Every storage SOP class and Verification, each with every transfer syntax."""
    contexts = []
    for context in [*AllStoragePresentationContexts, build_context(VERIFICATION_SOP_CLASS)]:
        contexts.append(build_context(context.abstract_syntax, list(AllTransferSyntaxes)))
    return contexts


def _in_requestor_order(
    proposed: list[PresentationContext], supported: list[PresentationContext]
) -> list[PresentationContext]:
    """Our contexts with transfer syntaxes in the order the requestor proposed them.

    pynetdicom picks the acceptor's first match; reordering makes it honour the
    sender's preference, so a compressed image is stored as the modality sent it.
    """
    preference: dict[str, list[str]] = {}
    for context in proposed:
        order = preference.setdefault(str(context.abstract_syntax), [])
        order.extend(str(uid) for uid in context.transfer_syntax if str(uid) not in order)
    ordered = []
    for context in supported:
        wanted = preference.get(str(context.abstract_syntax))
        if wanted is None:
            continue  # not proposed: nothing to negotiate
        ours = {str(uid) for uid in context.transfer_syntax}
        acceptable = [uid for uid in wanted if uid in ours]
        if acceptable:
            ordered.append(build_context(context.abstract_syntax, acceptable))
    return ordered


@dataclass(frozen=True)
class Association:
    """What was agreed with the peer."""

    calling_ae: str
    called_ae: str
    peer_host: str
    #: Accepted context ID -> (abstract syntax, transfer syntax).
    contexts: dict[int, tuple[str, str]]
    peer_max_pdu: int


def _accept_pdu(request: A_ASSOCIATE, accepted: list[PresentationContext], roles: list, max_pdu: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = request.calling_ae_title
    primitive.called_ae_title = request.called_ae_title
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = accepted
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    primitive.user_information = [max_length, class_uid, version, *roles]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return pdu.encode()


def reject_pdu(reason: RejectReason) -> bytes:
    """An A-ASSOCIATE-RJ PDU for ``reason``."""
    primitive = A_ASSOCIATE()
    primitive.result = reason.result
    primitive.result_source = reason.source
    primitive.diagnostic = reason.diagnostic
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def negotiate(
    rq_body: bytes,
    peer_host: str,
    policy: AssociationPolicy,
    contexts: list[PresentationContext],
    max_pdu: int,
    over_limit: bool = False,
) -> tuple[Association | None, bytes, RejectReason | None, str, str]:
    """Answer an A-ASSOCIATE-RQ.

    Returns the association (``None`` when rejected), the PDU to send back, the
    rejection reason if any, and the calling and called AE titles as received.
    """
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(bytes([A_ASSOCIATE_RQ_TYPE, 0]) + struct.pack(">I", len(rq_body)) + rq_body)
        request = pdu.to_primitive()
        calling, called = request.calling_ae_title.strip(), request.called_ae_title.strip()
    except Exception as exc:  # pynetdicom raises several types on malformed PDUs
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ: {type(exc).__name__}") from exc
    reason = RejectReason.LOCAL_LIMIT_EXCEEDED if over_limit else policy.check(calling, called, peer_host)
    if reason is None and request.application_context_name != APPLICATION_CONTEXT:
        reason = RejectReason.NO_REASON
    if reason is not None:
        return None, reject_pdu(reason), reason, calling, called
    roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in request.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    proposed = request.presentation_context_definition_list
    for context in proposed:  # PS3.8 9.3.2.2: one abstract syntax, one or more transfer syntaxes
        if context.abstract_syntax is None or not context.transfer_syntax:
            raise ProtocolError(f"presentation context {context.context_id} lacks an abstract or transfer syntax")
    accepted, role_items = negotiate_as_acceptor(proposed, _in_requestor_order(proposed, contexts), roles or None)
    agreed = {
        cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in accepted
        if cx.result == 0x00
    }
    peer_max = request.maximum_length_received or 0
    association = Association(calling, called, peer_host, agreed, peer_max)
    return association, _accept_pdu(request, accepted, role_items or [], max_pdu), None, calling, called

