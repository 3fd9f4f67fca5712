"""Hostile and broken input against a running node: malformed PDUs, broken data sets,
path-like UIDs, mismatched SOP classes, and studies that cannot be analysed.

After each case the node must still serve (C-ECHO and a good C-STORE work), every
instance it acknowledged before must still have its row and its file, and no
association may have ended in an unhandled exception.
"""

from __future__ import annotations

import itertools
import json
import signal
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacs_node.db.models import Instance, JobState
from pacs_node.ml.phantom import generate_phantom, write_dicom_study
from pacs_node.receive.scp import PDU_SLACK_BYTES
from tests.conftest import REPO, RunningNode, make_series, start_node, storescu, wait_until
from tests.reliability import wire
from tests.reliability.support import NodeDb, cli, dataset_bytes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # pydicom warns about the invalid values we write
]

MAX_PDU = 16384
ACSE_TIMEOUT_S = 2.0
AREA = "Hostile input"
CANNOT_UNDERSTAND, DATASET_MISMATCH, SUCCESS = 0xC000, 0xA900, 0x0000


@dataclass
class Hostile:
    """The node all receive-level cases share, and what it has acknowledged so far."""

    node: RunningNode
    db: NodeDb
    root: Path
    acknowledged: set[str] = field(default_factory=set)
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def folder(self, name: str) -> Path:
        return self.root / f"{name}-{next(self._serial)}"

    def good_dataset(self, size: int = 16, **changes: object) -> pydicom.Dataset:
        """A fresh one-slice CT data set (``size`` x ``size``), with ``changes`` applied."""
        [path] = make_series(self.folder("data"), slices=1, size=size)
        ds = pydicom.dcmread(path)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        return ds

    def assert_still_serving(self) -> None:
        """C-ECHO and a DCMTK push work, nothing acknowledged is lost, no association crashed."""
        assert self.node.process.poll() is None, "the node exited"
        with wire.RawAssociation.open(self.node.port) as association:
            assert association.echo() == SUCCESS
            association.release()
        [path] = make_series(self.folder("good"), slices=1, size=16)
        pushed = storescu(self.node.port, path)
        assert pushed.returncode == 0 and "Received Store Response (Success)" in pushed.stderr, pushed.stderr
        self.acknowledged.add(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        rows = self.db.instances()
        for uid in self.acknowledged:
            assert uid in rows, f"acknowledged instance {uid} has no row"
            assert (self.node.spool / rows[uid]).is_file(), f"acknowledged instance {uid} has no file"
        log = self.node.output()
        assert "event=association_error" not in log and "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    database_url = f"sqlite:///{root / 'node.db'}"
    node = start_node(root / "node", database_url,
                      node={"max_pdu_bytes": MAX_PDU, "acse_timeout_s": ACSE_TIMEOUT_S, "network_timeout_s": 5})
    state = Hostile(node, NodeDb(database_url), root)
    yield state
    state.db.close()
    if node.process.poll() is None:
        node.process.kill()
        node.process.wait()


def _store_raw(hostile: Hostile, data: bytes, sop_class: str, sop_instance: str, context_id: int = 3,
               contexts: tuple = wire.DEFAULT_CONTEXTS) -> int:
    with wire.RawAssociation.open(hostile.node.port, contexts) as association:
        status = association.store(data, sop_class, sop_instance, context_id=context_id)
        association.release()
    if status == SUCCESS:
        hostile.acknowledged.add(sop_instance)
    return status


# --- malformed PDUs -------------------------------------------------------------------------

_RQ = wire.associate_rq()
_ECHO = wire.p_data(1, wire.c_echo_rq(), command=True)


def _rq_without_transfer_syntax() -> bytes:
    """An A-ASSOCIATE-RQ whose one presentation context lost its transfer syntax sub-item."""
    body = wire.associate_rq(((1, wire.VERIFICATION, wire.IMPLICIT_LE),))[6:]
    context_at = 68  # after version, AE titles and reserved bytes: the application context item
    while body[context_at] != 0x20:  # on to the presentation context item
        context_at += 4 + struct.unpack_from(">H", body, context_at + 2)[0]
    syntax_at = context_at + 8  # past its header, context ID and reserved bytes: the abstract syntax
    while body[syntax_at] != 0x40:  # on to the transfer syntax sub-item
        syntax_at += 4 + struct.unpack_from(">H", body, syntax_at + 2)[0]
    cut = 4 + struct.unpack_from(">H", body, syntax_at + 2)[0]
    (context_length,) = struct.unpack_from(">H", body, context_at + 2)
    shorter = bytearray(body[:syntax_at] + body[syntax_at + cut:])
    struct.pack_into(">H", shorter, context_at + 2, context_length - cut)
    return wire.pdu(wire.ASSOCIATE_RQ, bytes(shorter))


@dataclass(frozen=True)
class PduCase:
    name: str
    data: bytes
    #: PDU types the node answers with, in order (A-ASSOCIATE-AC, A-ABORT...).
    replies: tuple[int, ...]


PDU_CASES = [
    PduCase("wrong PDU type (0x09) first", wire.pdu(0x09, bytes(4)), (wire.ABORT,)),
    PduCase("A-ASSOCIATE-AC sent to the acceptor", wire.pdu(wire.ASSOCIATE_AC, _RQ[6:]), (wire.ABORT,)),
    PduCase("P-DATA-TF before association", _ECHO, (wire.ABORT,)),
    PduCase("A-ASSOCIATE-RQ length field too short", _RQ[:2] + struct.pack(">I", 20) + _RQ[6:26], (wire.ABORT,)),
    PduCase("A-ASSOCIATE-RQ length field huge (4 GiB)", _RQ[:2] + struct.pack(">I", 0xFFFFFFF0) + _RQ[6:],
            (wire.ABORT,)),
    PduCase("A-ASSOCIATE-RQ of zero length", wire.pdu(wire.ASSOCIATE_RQ, b""), (wire.ABORT,)),
    PduCase("presentation context without a transfer syntax", _rq_without_transfer_syntax(), (wire.ABORT,)),
    PduCase("garbage after a valid A-ASSOCIATE-RQ", _RQ + bytes(range(0xD0, 0xF0)), (wire.ASSOCIATE_AC, wire.ABORT)),
    PduCase("truncated PDV (item longer than its PDU)",
            _RQ + wire.pdu(wire.P_DATA, struct.pack(">IBB", 5000, 1, 0x03) + wire.c_echo_rq()),
            (wire.ASSOCIATE_AC, wire.ABORT)),
    PduCase("PDV item shorter than its header", _RQ + wire.pdu(wire.P_DATA, b"\x00\x00\x00"),
            (wire.ASSOCIATE_AC, wire.ABORT)),
    PduCase("PDV on a context that was never accepted", _RQ + wire.p_data(7, wire.c_echo_rq(), command=True),
            (wire.ASSOCIATE_AC, wire.ABORT)),
    PduCase("command set with an element longer than the set", _RQ + wire.p_data(
        1, wire.c_echo_rq()[:-10] + struct.pack("<HHI", 0, 0x0800, 900) + b"\x01\x01", command=True),
            (wire.ASSOCIATE_AC, wire.ABORT)),
    PduCase("data set fragment without a command", _RQ + wire.p_data(3, b"\x08\x00\x16\x00", command=False),
            (wire.ASSOCIATE_AC, wire.ABORT)),
    PduCase("A-RELEASE-RQ with a 4 KiB body", _RQ + wire.pdu(wire.RELEASE_RQ, bytes(4096)),
            (wire.ASSOCIATE_AC, wire.ABORT)),
]


def test_malformed_pdus_are_aborted_and_the_node_keeps_serving(hostile: Hostile, record_outcome) -> None:
    outcomes = []
    for case in PDU_CASES:
        replies, ended, seconds = wire.send_and_collect(("127.0.0.1", hostile.node.port), case.data, timeout=10)
        assert tuple(t for t, _ in replies) == case.replies, f"{case.name}: got {[t for t, _ in replies]}"
        assert ended in ("closed", "reset") and seconds < 5, f"{case.name}: {ended} after {seconds:.1f} s"
        outcomes.append(case.name)
        hostile.assert_still_serving()
    record_outcome(area=AREA, fault="malformed PDUs",
                   tried="raw sockets: " + "; ".join(outcomes), cases=len(PDU_CASES),
                   outcome="each answered with A-ABORT (after the A-ASSOCIATE-AC where one was due) and closed "
                           "within 5 s; C-ECHO and a DCMTK push worked after each; no association error logged")


def test_a_length_field_that_promises_more_is_dropped_at_the_acse_timeout(hostile: Hostile, record_outcome) -> None:
    lying = _RQ[:2] + struct.pack(">I", 100_000) + _RQ[6:]
    replies, ended, seconds = wire.send_and_collect(("127.0.0.1", hostile.node.port), lying, timeout=15)
    assert replies == [] and ended in ("closed", "reset")
    assert ACSE_TIMEOUT_S - 0.5 <= seconds <= ACSE_TIMEOUT_S + 4
    hostile.assert_still_serving()
    record_outcome(area=AREA, fault="A-ASSOCIATE-RQ length field larger than what is sent",
                   tried="RQ header claims 100 kB, 0.3 kB sent, connection held open", cases=1,
                   outcome=f"connection closed after {seconds:.1f} s (ACSE timeout {ACSE_TIMEOUT_S:.0f} s), "
                           "node kept serving")


# --- oversized PDUs and data sets -----------------------------------------------------------

def test_pdu_beyond_max_pdu_is_aborted_but_large_data_sets_are_stored(hostile: Hostile, tmp_path: Path,
                                                                      record_outcome) -> None:
    ds = hostile.good_dataset(size=128)
    data = wire.encode_dataset(ds)  # 33 kB: over the node's maximum PDU, within its tolerance
    command = wire.p_data(3, wire.c_store_rq(ds.SOPClassUID, ds.SOPInstanceUID), command=True)
    # one P-DATA-TF beyond what we advertised plus the tolerance: aborted on its header, nothing kept
    too_big = MAX_PDU + PDU_SLACK_BYTES + 1
    oversized = bytes([wire.P_DATA, 0]) + struct.pack(">IIBB", too_big, too_big - 4, 3, 0x02) + data
    replies, ended, _ = wire.send_and_collect(("127.0.0.1", hostile.node.port), _RQ + command + oversized)
    assert [t for t, _ in replies] == [wire.ASSOCIATE_AC, wire.ABORT] and ended in ("closed", "reset")
    assert hostile.db.count(Instance, Instance.sop_instance_uid == str(ds.SOPInstanceUID)) == 0
    # the whole data set in one PDU a little over the maximum is tolerated (senders miscount headers)
    assert MAX_PDU < len(data) < MAX_PDU + PDU_SLACK_BYTES
    with wire.RawAssociation.open(hostile.node.port) as association:
        association.send(command)
        association.send(wire.p_data(3, data, command=False))
        pdu_type, body = association.next_pdu()
        assert pdu_type == wire.P_DATA and wire.response_status(body) == SUCCESS
        association.release()
    hostile.acknowledged.add(str(ds.SOPInstanceUID))
    # a 2 MB data set (128 PDUs of the node's maximum) is stored whole
    [big] = make_series(tmp_path / "big", slices=1, size=1024)
    pushed = storescu(hostile.node.port, big)
    assert "Received Store Response (Success)" in pushed.stderr, pushed.stderr
    kept = pydicom.dcmread(hostile.node.spool / hostile.db.instances()[pydicom.dcmread(big).SOPInstanceUID])
    assert kept.PixelData == pydicom.dcmread(big).PixelData
    hostile.acknowledged.add(str(kept.SOPInstanceUID))
    hostile.assert_still_serving()
    record_outcome(area=AREA, fault="PDU beyond max_pdu_bytes; data set far larger than a PDU",
                   tried=f"P-DATA-TF of {too_big} B (max {MAX_PDU} + {PDU_SLACK_BYTES} tolerance) mid C-STORE; "
                         f"one of {len(data)} B; a 2 MB instance via storescu", cases=3,
                   outcome="oversized PDU: A-ABORT, no row or file; slightly large PDU: 0000; 2 MB instance: 0000, "
                           "stored byte for byte")


# --- a data set cut off on the wire ---------------------------------------------------------

def test_connection_dropped_mid_data_set_leaves_nothing(node_factory, tmp_path: Path, record_outcome) -> None:
    node = node_factory(folder=tmp_path / "node")
    db = NodeDb(node.database_url)
    cut_uids = []
    try:
        for how in ("between PDUs", "inside a PDU"):
            [path] = make_series(tmp_path / f"cut-{len(cut_uids)}", slices=1, size=64)
            ds = pydicom.dcmread(path)
            data = wire.encode_dataset(ds)
            association = wire.RawAssociation.open(node.port)
            association.send(wire.p_data(3, wire.c_store_rq(ds.SOPClassUID, ds.SOPInstanceUID), command=True))
            association.send(wire.p_data(3, data[: len(data) // 2], command=False, last=False))
            if how == "inside a PDU":
                rest = wire.p_data(3, data[len(data) // 2:], command=False)
                association.send(rest[: len(rest) // 2])
            association.close()
            cut_uids.append(str(ds.SOPInstanceUID))

        def no_partial_data() -> bool:
            return all(p.stat().st_size == 0 for p in (node.spool / "incoming").rglob("*.part"))

        wait_until(no_partial_data, timeout=10)  # only empty spare files remain
        assert db.count(Instance) == 0
        assert [p for p in (node.spool / "studies").rglob("*") if p.is_file()] == []
        assert node.stop(signal.SIGTERM) == 0
        restarted = node_factory(folder=tmp_path / "node", database_url=node.database_url, node={"port": node.port})
        assert list((restarted.spool / "incoming").rglob("*.part")) == [], "a .part file survived the clean"
        assert db.count(Instance) == 0
        [good] = make_series(tmp_path / "good", slices=1, size=16)
        assert storescu(restarted.port, good).returncode == 0
        assert db.count(Instance) == 1
    finally:
        db.close()
    record_outcome(area=AREA, fault="connection dropped mid data set",
                   tried="C-STORE, half the data set, then close (between PDUs and inside a PDU); then restart",
                   cases=2, outcome="no row, no file under studies/, no partial data left; no .part after the "
                                    "restart's clean; the restarted node stored the next instance")


# --- broken data sets -----------------------------------------------------------------------

def _replace_element(data: bytes, tag: tuple[int, int], header_and_value: bytes) -> bytes:
    """Explicit VR LE ``data`` with the element ``tag`` (short-form VR) replaced by raw bytes."""
    at = data.index(struct.pack("<HH", *tag))
    (length,) = struct.unpack_from("<H", data, at + 6)
    return data[:at] + header_and_value + data[at + 8 + length:]


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


def test_absurd_element_lengths_and_broken_encodings_are_refused(hostile: Hostile, record_outcome) -> None:
    cases = {
        "Modality (CS) length 0xFFFF past the end": lambda d: _replace_element(
            d, (0x0008, 0x0060), struct.pack("<HH2sH", 0x0008, 0x0060, b"CS", 0xFFFF) + b"CT"),
        "Patient Name as UN of length 0x7FFFFFF0": lambda d: _replace_element(
            d, (0x0010, 0x0010), struct.pack("<HH2sHI", 0x0010, 0x0010, b"UN", 0, 0x7FFFFFF0) + b"X^Y"),
        "undefined-length sequence never delimited": lambda d: _replace_element(
            d, (0x0008, 0x0060), struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + b"\x08\x00\x50\x11UI\x04\x001.2\x00"),
        "item of length 0xFFFFFFF0 in a sequence": lambda d: _replace_element(
            d, (0x0008, 0x0060), struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFF0) + bytes(16)),
        "unknown VR 'Q@' before the UIDs": lambda d: _replace_element(
            d, (0x0010, 0x0020), struct.pack("<HH2sH", 0x0010, 0x0020, b"Q@", 4) + b"ID-1"),
        "data set ends inside an element header": lambda d: d[: d.index(struct.pack("<HH", 0x0020, 0x000D)) + 5],
    }
    tried = []
    for name, corrupt in cases.items():
        ds = hostile.good_dataset()
        status = _store_raw(hostile, corrupt(wire.encode_dataset(ds)), ds.SOPClassUID, ds.SOPInstanceUID)
        assert status == CANNOT_UNDERSTAND, f"{name}: 0x{status:04X}"
        tried.append(name)
    # a deflated data set whose deflate stream is corrupt
    ds = hostile.good_dataset()
    deflated = bytearray(_deflate(wire.encode_dataset(ds)))
    deflated[len(deflated) // 3: len(deflated) // 3 + 8] = b"\xff" * 8
    contexts = ((1, wire.VERIFICATION, wire.IMPLICIT_LE), (3, wire.CT_IMAGE_STORAGE, wire.DEFLATED_LE))
    status = _store_raw(hostile, bytes(deflated), ds.SOPClassUID, ds.SOPInstanceUID, contexts=contexts)
    assert status == CANNOT_UNDERSTAND, f"corrupt deflate stream: 0x{status:04X}"
    tried.append("Deflated Explicit VR LE with a corrupt deflate stream")
    assert hostile.db.count(Instance, Instance.sop_instance_uid == str(ds.SOPInstanceUID)) == 0
    hostile.assert_still_serving()
    record_outcome(area=AREA, fault="absurd element lengths and broken encodings in the data set",
                   tried="C-STORE of: " + "; ".join(tried), cases=len(tried),
                   outcome="each answered C000 Cannot understand, nothing stored, node kept serving (before the "
                           "fixes an unknown VR was stored or answered 0110, a corrupt deflate stream 0110)")


BAD_UIDS = ["../../etc/passwd", "1.2.3/../4", "1." + "2" * 70, "", "1.2.abc"]


@pytest.mark.parametrize("attribute", ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"])
def test_invalid_and_path_like_uids_are_refused_and_write_nothing(hostile: Hostile, attribute: str,
                                                                   record_outcome) -> None:
    before = {p for p in hostile.root.rglob("*") if p.is_file()}
    for bad in BAD_UIDS:
        ds = hostile.good_dataset(**{attribute: bad})
        status = _store_raw(hostile, wire.encode_dataset(ds), ds.SOPClassUID, ds.SOPInstanceUID)
        assert status == CANNOT_UNDERSTAND, f"{attribute}={bad!r}: 0x{status:04X}"
    written = {p for p in hostile.root.rglob("*") if p.is_file()} - before
    # what may appear: the sender's source files, spare partial files (empty), the node's database journal
    unexpected = [p for p in written if not (p.parent.name.startswith("data-") or p.suffix in (".part", ".db-journal",
                                                                                               ".db-wal", ".db-shm"))]
    assert unexpected == [], unexpected
    assert not [p for p in hostile.root.rglob("*") if "passwd" in p.name or p.name == "4.dcm"]
    assert all(p.stat().st_size == 0 for p in written if p.suffix == ".part")
    hostile.assert_still_serving()
    record_outcome(area=AREA, fault=f"invalid or path-like {attribute}",
                   tried=f"C-STORE with {attribute} = " + ", ".join(repr(u[:20]) for u in BAD_UIDS),
                   cases=len(BAD_UIDS), outcome="C000 Cannot understand, no file written anywhere, node kept serving")


def test_sop_class_or_instance_differing_from_the_command_is_a900(hostile: Hostile, record_outcome) -> None:
    mr_dataset = hostile.good_dataset(SOPClassUID=wire.MR_IMAGE_STORAGE, Modality="MR")
    # an MR data set sent as CT Image Storage: command and context say CT, the data set says MR
    assert _store_raw(hostile, wire.encode_dataset(mr_dataset), wire.CT_IMAGE_STORAGE,
                      mr_dataset.SOPInstanceUID) == DATASET_MISMATCH
    # the command's SOP class differs from the accepted context's abstract syntax
    ds = hostile.good_dataset()
    assert _store_raw(hostile, wire.encode_dataset(ds), wire.MR_IMAGE_STORAGE, ds.SOPInstanceUID,
                      context_id=3) == DATASET_MISMATCH
    # the command's SOP Instance UID differs from the data set's
    ds = hostile.good_dataset()
    assert _store_raw(hostile, wire.encode_dataset(ds), ds.SOPClassUID, generate_uid()) == DATASET_MISMATCH
    assert hostile.db.count(Instance, Instance.sop_instance_uid == str(mr_dataset.SOPInstanceUID)) == 0
    hostile.assert_still_serving()
    record_outcome(area=AREA, fault="SOP class or instance in the command differs from the data set",
                   tried="MR data set under CT Image Storage; CT command on the MR context; "
                         "command SOP Instance UID differs from the data set's", cases=3,
                   outcome="A900 Data set does not match SOP class for each, nothing stored, node kept serving")


# --- studies that cannot be analysed ------------------------------------------------------------

def _mr(index: int, ds: pydicom.Dataset) -> None:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = wire.MR_IMAGE_STORAGE
    ds.Modality = "MR"
    for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType", "KVP", "ConvolutionKernel"):
        delattr(ds, keyword)
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 500, 15, 1, 1.5


def _mr_labelled_ct(index: int, ds: pydicom.Dataset) -> None:
    _mr(index, ds)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = wire.CT_IMAGE_STORAGE


def _cut_pixel_data(data: bytes) -> bytes:
    return data[:-300]  # Pixel Data is the last element: its value ends 300 bytes early


def _unknown_vr_after_header(data: bytes) -> bytes:
    at = data.index(struct.pack("<HH2s", 0x0028, 0x0030, b"DS"))  # Pixel Spacing, after (0020,0013)
    return data[:at + 4] + b"Q@" + data[at + 6:]


@dataclass(frozen=True)
class BadStudy:
    slices: int
    #: Applied to each data set (index, dataset) before it is written.
    edit: object = None
    #: Applied to each encoded data set; such studies are sent over a raw association.
    corrupt: object = None
    #: Slices removed after writing (by index).
    drop: tuple[int, ...] = ()
    #: What the "not analysable" reason says.
    reason: str = ""


BAD_STUDIES = {
    "MR study": BadStudy(12, edit=_mr, reason="modality MR is not CT"),
    "MR data labelled CT Image Storage": BadStudy(12, edit=_mr_labelled_ct, reason="modality MR is not CT"),
    "single-slice CT series": BadStudy(1, reason="only 1 slices; at least 10 needed"),
    "one slice with another orientation": BadStudy(
        12, edit=lambda i, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0.96, 0.28]) if i == 5 else None,
        reason="slices have different orientations"),
    "one slice with another pixel spacing": BadStudy(
        12, edit=lambda i, ds: setattr(ds, "PixelSpacing", [0.8, 0.8]) if i == 5 else None,
        reason="slices have different sizes or pixel spacings"),
    "gantry tilt": BadStudy(12, edit=lambda i, ds: setattr(ds, "GantryDetectorTilt", 15),
                            reason="gantry tilt of 15.0 degrees is not supported"),
    "big gap (3 slices missing)": BadStudy(15, drop=(6, 7, 8), reason="missing slices: a gap of 8.00 mm"),
    "missing pixel data": BadStudy(12, edit=lambda i, ds: delattr(ds, "PixelData"), reason="no 'Pixel Data'"),
    "pixel data cut short": BadStudy(12, corrupt=_cut_pixel_data, reason="pixel data is less than expected"),
    "unknown VR after the header": BadStudy(12, corrupt=_unknown_vr_after_header,
                                            reason="header attributes cannot be decoded"),
}


@pytest.fixture(scope="module")
def chest_phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic chest CT series (40 slices of 128 x 128, 2.5 mm) the detector can analyse."""
    phantom = generate_phantom(424243, shape_zyx=(40, 128, 128), spacing_zyx_mm=(2.5, 2.5, 2.5), n_nodules=1,
                               nodule_types=["solid"], diameter_range_mm=(14.0, 20.0), keep_labels=False)
    return Path(write_dicom_study(phantom, tmp_path_factory.mktemp("phantom") / "study").series_dir)


def _done_job(db: NodeDb, study_uid: str):  # noqa: ANN202 - a row of NodeDb.jobs()
    """The study's done job, or ``None`` while it has none (or the study is not there yet)."""
    study_pks = [s.id for s in db.studies() if s.study_uid == study_uid]
    done = [j for j in db.jobs() if j.study_pk in study_pks and j.state == JobState.DONE]
    return done[0] if done else None


def _write_bad_study(number: int, study: BadStudy, folder: Path) -> list[Path]:
    paths = make_series(folder, slices=study.slices, size=32, seed=number, study_uid=generate_uid(),
                        series_description=f"S{number}")
    for index, path in enumerate(paths):
        if index in study.drop:
            path.unlink()
        elif study.edit is not None:
            ds = pydicom.dcmread(path)
            study.edit(index, ds)
            ds.save_as(path, enforce_file_format=True)
    return [p for i, p in enumerate(paths) if i not in study.drop]


def test_studies_that_cannot_be_analysed_say_why_and_the_worker_goes_on(
    node_factory, tmp_path: Path, chest_phantom: Path, record_outcome,
) -> None:
    node = node_factory(analysis={"enabled": True, "models_dir": str(REPO / "models"), "min_slices": 10})
    db = NodeDb(node.database_url)
    studies: dict[str, str] = {}
    try:
        for number, (name, study) in enumerate(BAD_STUDIES.items()):
            paths = _write_bad_study(number, study, tmp_path / "bad" / f"study-{number}")
            studies[name] = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
            if study.corrupt is None:
                pushed = storescu(node.port, paths)
                assert pushed.stderr.count("Received Store Response (Success)") == len(paths), pushed.stderr[-2000:]
                continue
            with wire.RawAssociation.open(node.port) as association:
                for path in paths:
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                    status = association.store(study.corrupt(dataset_bytes(path)), ds.SOPClassUID, ds.SOPInstanceUID)
                    assert status == SUCCESS, f"{name}: 0x{status:04X}"
                association.release()
        wait_until(lambda: all(_done_job(db, uid) for uid in studies.values()), timeout=90, interval=0.5)
        status = cli("status", "--config", str(node.config))
        assert status.returncode == 0, status.stderr
        for name, study_uid in studies.items():
            job = _done_job(db, study_uid)
            result = json.loads(job.result)
            assert result["analysis_performed"] is False and result["outcome"] == "not analysable", (name, result)
            assert BAD_STUDIES[name].reason in result["reason"], (name, result["reason"])
            [line] = [ln for ln in status.stdout.splitlines() if ln.split()[:1] == [str(job.study_pk)]]
            assert f"not analysable ({result['reason'][:40]}" in line, (name, line)
        assert not [j for j in db.jobs() if j.state == JobState.FAILED]
        # the worker goes on: a good series with a scout in its own series and one inside it is analysed
        good = _with_localizers(chest_phantom, tmp_path / "good")
        assert storescu(node.port, good).returncode == 0
        good_uid = str(pydicom.dcmread(next(chest_phantom.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
        job = wait_until(lambda: _done_job(db, good_uid), timeout=120, interval=0.5)
        result = json.loads(job.result)
        assert result["analysis_performed"] is True, result
        [series] = result["series"]
        assert series["outcome"] == "analysed" and series["slices"] == 40  # the scout inside was left out
        assert [r["reason"] for r in result["rejected_series"]] == ["localizer (scout) images"]
        assert node.process.poll() is None and "Traceback" not in node.output()
    finally:
        db.close()
    record_outcome(area=AREA, fault="studies that cannot be analysed (analysis on)",
                   tried="one study each: " + "; ".join(BAD_STUDIES) + "; then a good series with localizers",
                   cases=len(BAD_STUDIES) + 1,
                   outcome="every broken study stored (0000) and its job done as 'not analysable' with its reason, "
                           "shown by `pacs-node status`; no job failed; the good study after them was analysed "
                           "with the scout series rejected and the scout inside the series left out")


def _with_localizers(series_dir: Path, folder: Path) -> Path:
    """A copy of ``series_dir`` plus a coronal scout in the same series and one in a series of its own."""
    import shutil

    folder.mkdir(parents=True)
    paths = sorted(series_dir.glob("*.dcm"))
    for path in paths:
        shutil.copy(path, folder / path.name)
    for name, series_uid in (("scout-in-series.dcm", None), ("scout-own-series.dcm", generate_uid())):
        scout = pydicom.dcmread(paths[0])
        scout.SOPInstanceUID = scout.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        scout.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        scout.ImagePositionPatient = [float(v) for v in np.array(scout.ImagePositionPatient) + [0, 50, 200]]
        if series_uid:
            scout.SeriesInstanceUID, scout.SeriesDescription, scout.SeriesNumber = series_uid, "Scout", 1
        scout.save_as(folder / name, enforce_file_format=True)
    return folder


