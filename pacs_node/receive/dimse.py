"""DIMSE command sets: decode requests, encode responses, named status codes.

Command sets are always Implicit VR Little Endian group 0000 elements (PS3.7 E.1);
they are small and fixed, so they are parsed here directly with bounds checks
instead of through a general dataset decoder.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
NO_DATASET = 0x0101


class Command(enum.IntEnum):
    """Command Field (0000,0100) values we serve or answer."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030


class Status(enum.IntEnum):
    """DIMSE status codes used by the storage SCP (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    #: Refused: out of resources (disk below its minimum, database unavailable).
    OUT_OF_RESOURCES = 0xA700
    #: Error: data set does not match SOP class (or the UIDs in the command).
    DATASET_MISMATCH = 0xA900
    #: Error: cannot understand (malformed data set, invalid UIDs).
    CANNOT_UNDERSTAND = 0xC000
    #: Failure: processing failure (an unexpected error, logged with its cause).
    PROCESSING_FAILURE = 0x0110


class MalformedCommand(ValueError):
    """A command set that cannot be parsed."""


@dataclass(frozen=True)
class Request:
    """The fields of a C-STORE-RQ or C-ECHO-RQ that the SCP needs."""

    command: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_dataset: bool


def _elements(data: bytes) -> dict[int, bytes]:
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            raise MalformedCommand("truncated element header")
        group, element, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        if group != 0x0000:
            raise MalformedCommand(f"command set holds group {group:04X}")
        if length > end - offset:
            raise MalformedCommand("element length beyond the command set")
        elements[element] = data[offset : offset + length]
        offset += length
    return elements


def _us(elements: dict[int, bytes], element: int, name: str) -> int:
    value = elements.get(element)
    if value is None or len(value) != 2:
        raise MalformedCommand(f"missing or bad {name}")
    return struct.unpack("<H", value)[0]


def _ui(elements: dict[int, bytes], element: int) -> str:
    raw = elements.get(element, b"")
    try:
        return raw.decode("ascii").rstrip("\x00 ")
    except UnicodeDecodeError as exc:
        raise MalformedCommand("UID is not ASCII") from exc


def decode_request(data: bytes) -> Request:
    """Parse a request command set; :class:`MalformedCommand` when it cannot be used."""
    elements = _elements(data)
    command = _us(elements, 0x0100, "Command Field")
    if command == Command.C_STORE_RQ:
        sop_class, sop_instance = _ui(elements, 0x0002), _ui(elements, 0x1000)
    elif command == Command.C_ECHO_RQ:
        sop_class, sop_instance = _ui(elements, 0x0002) or VERIFICATION_SOP_CLASS, ""
    else:
        return Request(command, _us(elements, 0x0110, "Message ID"), "", "", False)
    return Request(
        command=command,
        message_id=_us(elements, 0x0110, "Message ID"),
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        has_dataset=_us(elements, 0x0800, "Command Data Set Type") != NO_DATASET,
    )


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text_value(text: str) -> bytes:
    raw = text.encode("ascii", "replace")[:64]
    return raw + b" " if len(raw) % 2 else raw


def encode_response(request: Request, status: int, error_comment: str = "") -> bytes:
    """The response command set to ``request`` with ``status``."""
    response = Command.C_STORE_RSP if request.command == Command.C_STORE_RQ else Command.C_ECHO_RSP
    body = [
        _element(0x0002, _uid_value(request.sop_class_uid or VERIFICATION_SOP_CLASS)),
        _element(0x0100, struct.pack("<H", response)),
        _element(0x0120, struct.pack("<H", request.message_id)),
        _element(0x0800, struct.pack("<H", NO_DATASET)),
        _element(0x0900, struct.pack("<H", status)),
    ]
    if error_comment and status != Status.SUCCESS:
        body.append(_element(0x0902, _text_value(error_comment)))
    if request.command == Command.C_STORE_RQ:
        body.append(_element(0x1000, _uid_value(request.sop_instance_uid)))
    payload = b"".join(body)
    return _element(0x0000, struct.pack("<I", len(payload))) + payload
