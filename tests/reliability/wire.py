"""A raw DICOM upper-layer client for hostile-input tests: every byte on the wire is ours.

PDUs are encoded with pynetdicom's PDU classes (valid ones) or by hand (broken ones);
command sets are Implicit VR Little Endian group 0000 elements (PS3.7 E.1).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
#: PDU types (PS3.8 9.3.1).
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 1, 2, 3, 4, 5, 6, 7
RELEASE_RQ_PDU = bytes([RELEASE_RQ, 0]) + struct.pack(">I", 4) + bytes(4)
#: The presentation contexts a test association proposes: (id, abstract syntax, transfer syntax).
DEFAULT_CONTEXTS = (
    (1, VERIFICATION, IMPLICIT_LE), (3, CT_IMAGE_STORAGE, EXPLICIT_LE), (5, MR_IMAGE_STORAGE, EXPLICIT_LE),
)


def associate_rq(
    contexts: Sequence[tuple[int, str, str]] = DEFAULT_CONTEXTS,
    called_ae: str = "PACS_NODE",
    calling_ae: str = "HOSTILE",
    max_pdu: int = 16384,
) -> bytes:
    """A valid A-ASSOCIATE-RQ PDU proposing ``contexts``."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    proposed = []
    for context_id, abstract_syntax, transfer_syntax in contexts:
        context = build_context(abstract_syntax, [transfer_syntax])
        context.context_id = context_id
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def proxy_v2(source: str | None = None, destination: str = "127.0.0.1", tlvs: bytes = b"") -> bytes:
    """A PROXY protocol v2 header: PROXY TCP4/TCP6 from ``source`` (port 40000), LOCAL when ``None``."""
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    if source is None:
        return signature + bytes([0x20, 0x00]) + struct.pack(">H", len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x11 if src.version == 4 else 0x21
    block = src.packed + dst.packed + struct.pack(">HH", 40000, 11112) + tlvs
    return signature + bytes([0x21, family]) + struct.pack(">H", len(block)) + block


def pdu(pdu_type: int, body: bytes) -> bytes:
    """A PDU of ``pdu_type`` around ``body`` (its length field tells the truth)."""
    return bytes([pdu_type, 0]) + struct.pack(">I", len(body)) + body


def p_data(context_id: int, data: bytes, command: bool, last: bool = True) -> bytes:
    """A P-DATA-TF PDU holding one PDV."""
    control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    return pdu(P_DATA, struct.pack(">IBB", len(data) + 2, context_id, control) + data)


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(uid: str) -> bytes:
    raw = uid.encode("latin-1")
    return raw + b"\x00" if len(raw) % 2 else raw


def command_set(*elements: bytes) -> bytes:
    """A command set with its group length."""
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def c_echo_rq(message_id: int = 1) -> bytes:
    return command_set(
        _element(0x0002, _uid(VERIFICATION)),
        _element(0x0100, struct.pack("<H", 0x0030)),
        _element(0x0110, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", 0x0101)),
    )


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    return command_set(
        _element(0x0002, _uid(sop_class)),
        _element(0x0100, struct.pack("<H", 0x0001)),
        _element(0x0110, struct.pack("<H", message_id)),
        _element(0x0700, struct.pack("<H", 0)),
        _element(0x0800, struct.pack("<H", 0x0000)),
        _element(0x1000, _uid(sop_instance)),
    )


def encode_dataset(ds: Dataset, implicit: bool = False, little: bool = True) -> bytes:
    """``ds`` encoded as on the wire (no File Meta Information)."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_dataset(buffer, ds)
    return buffer.getvalue()


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """The next PDU (type, body); :class:`ConnectionError` when the peer closed first."""
    header = _read_exact(sock, 6)
    pdu_type, _, length = struct.unpack(">BBI", header)
    return pdu_type, _read_exact(sock, length)


def _read_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        data += chunk
    return data


def response_status(p_data_body: bytes) -> int:
    """The Status (0000,0900) of a response command set carried in one PDV."""
    (item_length,) = struct.unpack_from(">I", p_data_body, 0)
    command = p_data_body[6 : 4 + item_length]
    offset = 0
    while offset + 8 <= len(command):
        _, element, length = struct.unpack_from("<HHI", command, offset)
        if element == 0x0900:
            return struct.unpack_from("<H", command, offset + 8)[0]
        offset += 8 + length
    raise AssertionError("response has no Status")


def send_and_collect(address: tuple[str, int], data: bytes, timeout: float = 10.0,
                     half_close: bool = False) -> tuple[list[tuple[int, bytes]], str, float]:
    """Send ``data`` on a new connection and read PDUs until the node closes it.

    Returns the PDUs received, how the connection ended ("closed", "reset" or "timeout")
    and the seconds that took.  ``half_close`` shuts our sending side after ``data``, so the
    node sees the end of the stream instead of waiting for more.
    """
    started = time.monotonic()
    received: list[tuple[int, bytes]] = []
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the node may abort and close before it has read everything we send
        while True:
            try:
                received.append(read_pdu(sock))
            except TimeoutError:
                return received, "timeout", time.monotonic() - started
            except ConnectionResetError:
                return received, "reset", time.monotonic() - started
            except ConnectionError:
                return received, "closed", time.monotonic() - started


@dataclass
class RawAssociation:
    """An accepted association over a plain socket: send exactly the PDUs a test builds."""

    sock: socket.socket
    #: Accepted context ID -> (abstract syntax, transfer syntax).
    accepted: dict[int, tuple[str, str]]

    @classmethod
    def open(cls, port: int, contexts: Sequence[tuple[int, str, str]] = DEFAULT_CONTEXTS,
             timeout: float = 15.0) -> RawAssociation:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.sendall(associate_rq(contexts))
        pdu_type, body = read_pdu(sock)
        if pdu_type != ASSOCIATE_AC:
            sock.close()
            raise AssertionError(f"association not accepted: PDU type {pdu_type}")
        ac = A_ASSOCIATE_AC()
        ac.decode(pdu(ASSOCIATE_AC, body))
        results = ac.to_primitive().presentation_context_definition_results_list
        accepted = {cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                    for cx in results if cx.result == 0}
        return cls(sock, accepted)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_pdu(self) -> tuple[int, bytes]:
        return read_pdu(self.sock)

    def echo(self, message_id: int = 1) -> int:
        self.send(p_data(1, c_echo_rq(message_id), command=True))
        pdu_type, body = self.next_pdu()
        assert pdu_type == P_DATA, f"expected a C-ECHO-RSP, got PDU type {pdu_type}"
        return response_status(body)

    def store(self, dataset: bytes, sop_class: str, sop_instance: str, context_id: int = 3,
              fragment: int = 16000, message_id: int = 1) -> int:
        """C-STORE ``dataset`` (encoded bytes) in fragments; the status the node answered."""
        self.send(p_data(context_id, c_store_rq(sop_class, sop_instance, message_id), command=True))
        for start in range(0, max(len(dataset), 1), fragment):
            chunk = dataset[start : start + fragment]
            self.send(p_data(context_id, chunk, command=False, last=start + fragment >= len(dataset)))
        pdu_type, body = self.next_pdu()
        assert pdu_type == P_DATA, f"expected a C-STORE-RSP, got PDU type {pdu_type}"
        return response_status(body)

    def release(self) -> None:
        self.send(RELEASE_RQ_PDU)
        pdu_type, _ = self.next_pdu()
        assert pdu_type == RELEASE_RP
        self.sock.close()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawAssociation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
