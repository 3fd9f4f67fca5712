"""The DICOM Part 10 header (preamble and File Meta Information) of a received instance.

Encoded by hand: it is a handful of fixed Explicit VR Little Endian elements written
once per received instance, on the hot path.
"""

from __future__ import annotations

import struct

from pacs_node.receive.dimse import Request
from pacs_node.receive.upper_layer import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

PREAMBLE = b"\x00" * 128 + b"DICM"


def _element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_meta(request: Request, transfer_syntax: str, calling_ae: str) -> bytes:
    """Preamble and File Meta Information for the data set that follows it.

    The encoded data set received over the network is written unchanged after it,
    so the file holds exactly what the sender sent.
    """
    elements = [
        _element(0x0001, b"OB", b"\x00\x01", b"\x00"),
        _element(0x0002, b"UI", request.sop_class_uid.encode("ascii"), b"\x00"),
        _element(0x0003, b"UI", request.sop_instance_uid.encode("ascii"), b"\x00"),
        _element(0x0010, b"UI", transfer_syntax.encode("ascii"), b"\x00"),
        _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00"),
        _element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii"), b" "),
    ]
    if calling_ae:
        elements.append(_element(0x0016, b"AE", calling_ae.encode("ascii", "replace")[:16], b" "))
    body = b"".join(elements)
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return PREAMBLE + group_length + body
