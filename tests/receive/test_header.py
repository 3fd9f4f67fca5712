"""The hot-path header reader agrees with pydicom and never crashes on junk."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from pacs_node.receive.header import TAGS, read_header


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyDate = "20260101"
    ds.AccessionNumber = "ACC1"
    ds.Modality = "CT"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.9"
    nested = Dataset()
    nested.CodeValue = "113100"
    item.PurposeOfReferenceCodeSequence = Sequence([nested])
    ds.ReferencedImageSequence = Sequence([item, item])
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "ID-7"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 17
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 16
    ds.PixelData = b"\x00" * 8
    return ds


def _encode(ds: Dataset, implicit: bool, little: bool, undefined_lengths: bool) -> bytes:
    for element in ds.iterall():
        if element.VR == "SQ":
            element.value.is_undefined_length = undefined_lengths
            for item in element.value:
                item.is_undefined_length_sequence_item = undefined_lengths
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, little
    write_dataset(buffer, ds)
    return buffer.getvalue()


@pytest.mark.parametrize("implicit,little", [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("undefined_lengths", [True, False])
def test_values_match_what_was_written(implicit: bool, little: bool, undefined_lengths: bool) -> None:
    data = b"JUNKPREFIX" + _encode(_dataset(), implicit, little, undefined_lengths)
    raw = read_header(data, 10, implicit, little)
    assert raw is not None
    assert raw["SOPInstanceUID"].rstrip(b"\x00") == b"1.2.3.4.5.6"
    assert raw["StudyInstanceUID"].rstrip(b"\x00") == b"1.2.3"
    assert raw["SeriesInstanceUID"].rstrip(b"\x00") == b"1.2.3.1"
    assert raw["PatientName"].decode("latin-1").strip() == "Müller^Jörg"
    assert raw["InstanceNumber"].strip() == b"17"
    assert set(raw) <= set(TAGS.values())


def test_truncated_head_asks_for_the_file() -> None:
    data = _encode(_dataset(), False, True, True)
    assert read_header(data[: len(data) // 3], 0, False, True) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.booleans(), st.booleans())
def test_junk_never_raises(data: bytes, implicit: bool, little: bool) -> None:
    result = read_header(data, 0, implicit, little)
    assert result is None or isinstance(result, dict)
