"""Command sets: requests parse, responses are valid DICOM that pydicom reads back."""

from __future__ import annotations

import struct

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset

from pacs_node.receive.dimse import Command, MalformedCommand, Request, Status, decode_request, encode_response


def _command(elements: list[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack("<HHI", 0, tag, len(value)) + value for tag, value in elements)


def _read(data: bytes):  # noqa: ANN202
    return read_dataset(DicomBytesIO(data), is_implicit_VR=True, is_little_endian=True)


def test_store_request_is_decoded() -> None:
    data = _command([
        (0x0002, b"1.2.840.10008.5.1.4.1.1.2\x00"),
        (0x0100, struct.pack("<H", 0x0001)),
        (0x0110, struct.pack("<H", 7)),
        (0x0700, struct.pack("<H", 0)),
        (0x0800, struct.pack("<H", 0x0000)),
        (0x1000, b"1.2.3.4"),
    ])
    request = decode_request(data)
    assert request == Request(Command.C_STORE_RQ, 7, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", True)


def test_store_response_reads_back_with_status_and_comment() -> None:
    request = Request(Command.C_STORE_RQ, 9, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", True)
    ds = _read(encode_response(request, Status.OUT_OF_RESOURCES, "spool disk is full"))
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 9
    assert ds.Status == 0xA700
    assert ds.ErrorComment == "spool disk is full"
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"
    assert ds.CommandDataSetType == 0x0101
    assert ds.CommandGroupLength == len(encode_response(request, Status.OUT_OF_RESOURCES, "spool disk is full")) - 12


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00",  # truncated header
        struct.pack("<HHI", 0, 0x0100, 100) + b"\x01\x00",  # length beyond the end
        struct.pack("<HHI", 8, 0x0100, 2) + b"\x01\x00",  # not group 0000
        _command([(0x0002, b"1.2")]),  # no command field
    ],
)
def test_malformed_commands_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedCommand):
        decode_request(data)
