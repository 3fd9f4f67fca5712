"""A minimal reader of the attributes the receiver records, for the hot path.

It walks the top-level elements of an encoded data set (Implicit or Explicit VR,
either byte order) up to (0020,0013), skipping values and nested sequences by their
lengths and delimiters.  Anything it cannot read it reports as ``None`` so the caller
falls back to pydicom; it never guesses.
"""

from __future__ import annotations

import struct

#: (group, element) of the attributes we keep, by keyword.
TAGS: dict[int, str] = {
    0x00080005: "SpecificCharacterSet",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080020: "StudyDate",
    0x00080050: "AccessionNumber",
    0x00080060: "Modality",
    0x00081030: "StudyDescription",
    0x0008103E: "SeriesDescription",
    0x00100010: "PatientName",
    0x00100020: "PatientID",
    0x00100021: "IssuerOfPatientID",
    0x00100030: "PatientBirthDate",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
}
LAST_TAG = 0x00200013
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_SHORT_VRS = {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH",
              b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class _Truncated(Exception):
    """The data ends inside an element, or an element cannot be read without guessing."""


class _Reader:
    def __init__(self, data: bytes | bytearray, implicit: bool, little: bool) -> None:
        self.data = data
        self.implicit = implicit
        self.order = "<" if little else ">"

    def element(self, offset: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, value offset) of the element at ``offset``."""
        data, order = self.data, self.order
        if offset + 8 > len(data):
            raise _Truncated
        group, element = struct.unpack_from(order + "HH", data, offset)
        tag = group << 16 | element
        if self.implicit or group == 0xFFFE:
            (length,) = struct.unpack_from(order + "I", data, offset + 4)
            return tag, None, length, offset + 8
        vr = bytes(data[offset + 4 : offset + 6])
        if vr in _LONG_VRS:
            if offset + 12 > len(data):
                raise _Truncated
            (length,) = struct.unpack_from(order + "I", data, offset + 8)
            return tag, vr, length, offset + 12
        if vr not in _SHORT_VRS:
            raise _Truncated  # an unknown VR: whether its length has 2 or 4 bytes is a guess
        (length,) = struct.unpack_from(order + "H", data, offset + 6)
        return tag, vr, length, offset + 8

    def skip_undefined(self, offset: int, end_tag: int) -> int:
        """Offset after the delimiter ``end_tag``, skipping nested items and sequences."""
        while True:
            tag, _, length, value = self.element(offset)
            if tag == end_tag:
                return value
            if length == _UNDEFINED:
                offset = self.skip_undefined(value, _ITEM_END if tag == _ITEM else _SEQUENCE_END)
            else:
                offset = value + length


def read_header(data: bytes | bytearray, offset: int, implicit: bool, little: bool) -> dict[str, bytes] | None:
    """Raw values of :data:`TAGS` from the data set starting at ``offset``.

    Returns ``None`` when ``data`` ends before (0020,0013) is passed, or the encoding
    does not parse (an unknown explicit VR included); it raises nothing else.
    """
    reader = _Reader(data, implicit, little)
    found: dict[str, bytes] = {}
    try:
        while offset < len(data):
            tag, _, length, value = reader.element(offset)
            if tag > LAST_TAG:
                return found
            if length == _UNDEFINED:
                offset = reader.skip_undefined(value, _SEQUENCE_END)
                continue
            if value + length > len(data):
                raise _Truncated
            keyword = TAGS.get(tag)
            if keyword is not None:
                found[keyword] = bytes(data[value : value + length])
            offset = value + length
    except (_Truncated, struct.error, RecursionError):
        return None
    return None
