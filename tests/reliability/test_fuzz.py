"""Fuzzing with hypothesis: the header reader, the association handler and the volume builder.

Every run is reproducible (``derandomize=True``, no example database) and bounded: the
whole file takes well under a minute on two cores.  Each property says what the code
may do with any input (return a result or raise its documented error) and nothing else.
"""

from __future__ import annotations

import io
import logging
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs_node.analyze.series import Rejection, SeriesChoice, check_series
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.ingest import InstanceRecorder
from pacs_node.imaging.volume import NotAnalysable, volume_from_datasets
from pacs_node.receive.dimse import Request, Status
from pacs_node.receive.header import TAGS, read_header
from pacs_node.receive.part10 import file_meta
from pacs_node.receive.policy import AssociationPolicy
from pacs_node.receive.server import AssociationSlots, StorageServer, open_listener
from pacs_node.receive.spool import Spool
from pacs_node.receive.store import InvalidInstance, SpoolingSink
from pacs_node.receive.store import read_header as read_instance_header
from tests.conftest import make_series
from tests.reliability import wire

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # pydicom warns about the invalid values it reads
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # numpy, on the NaN and infinite geometry fed in
]

AREA = "Hostile input"


def fuzz(max_examples: int, deadline: int | None) -> settings:
    """Reproducible (derandomized, no example database) and bounded settings; ``deadline`` in ms."""
    return settings(max_examples=max_examples, deadline=deadline, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


#: Mutations of a byte string: (operation, position, bytes); positions wrap around the length.
mutations = st.lists(
    st.tuples(st.sampled_from(["set", "insert", "delete", "length"]), st.integers(0, 1 << 16),
              st.binary(min_size=1, max_size=8)),
    min_size=1, max_size=6,
)


def mutate(data: bytes, edits: list[tuple[str, int, bytes]], start: int = 0) -> bytes:
    """``data`` with ``edits`` applied at or after ``start`` ("length" writes a huge 4-byte number)."""
    out = bytearray(data)
    for operation, position, chunk in edits:
        at = start + position % max(len(out) - start, 1)
        if operation == "set":
            out[at : at + len(chunk)] = chunk
        elif operation == "insert":
            out[at:at] = chunk
        elif operation == "delete":
            del out[at : at + len(chunk)]
        else:
            out[at : at + 4] = struct.pack("<I", 0xFFFFFFFF - chunk[0])
    return bytes(out)


def _header_dataset() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.Modality = "CT"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.9"
    ds.ReferencedImageSequence = [item, item]
    ds.PatientName = "Test^Fuzz"
    ds.PatientID = "ID-7"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.1"
    ds.InstanceNumber = 17
    ds.Rows = 2
    ds.BitsAllocated = 16
    return ds


ENCODINGS = [(True, True), (False, True), (False, False)]  # (implicit VR, little endian)


def _valid_prefixes() -> list[bytes]:
    prefixes = []
    for implicit, little in ENCODINGS:
        for undefined in (True, False):
            ds = _header_dataset()
            ds.ReferencedImageSequence.is_undefined_length = undefined
            for item in ds.ReferencedImageSequence:
                item.is_undefined_length_sequence_item = undefined
            prefixes.append(wire.encode_dataset(ds, implicit=implicit, little=little))
    return prefixes


VALID_PREFIXES = _valid_prefixes()


def _check_header(data: bytes, implicit: bool, little: bool) -> None:
    result = read_header(data, 0, implicit, little)
    assert result is None or (isinstance(result, dict) and set(result) <= set(TAGS.values())
                              and all(isinstance(v, bytes) for v in result.values()))


def test_header_reader_returns_a_header_or_none_for_any_bytes(record_outcome) -> None:
    runs = [0]

    @fuzz(max_examples=300, deadline=1000)
    @given(st.binary(max_size=4096), st.sampled_from(ENCODINGS))
    def random_bytes(data: bytes, encoding: tuple[bool, bool]) -> None:
        runs[0] += 1
        _check_header(data, *encoding)

    @fuzz(max_examples=400, deadline=1000)
    @given(st.integers(0, len(VALID_PREFIXES) - 1), mutations, st.integers(0, 600))
    def mutated_valid(which: int, edits: list, cut: int) -> None:
        runs[0] += 1
        data = VALID_PREFIXES[which]
        implicit, little = ENCODINGS[which // 2]
        _check_header(mutate(data, edits)[: len(data) - cut if cut < len(data) else None], implicit, little)

    random_bytes()
    mutated_valid()
    # deep nesting is bounded too: a thousand undefined-length sequences inside each other
    nested = (struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000,
                                                                                        0xFFFFFFFF)) * 1000
    assert read_header(nested, 0, False, True) is None
    record_outcome(area=AREA, fault="fuzzed data set prefixes (header reader)",
                   tried="hypothesis: random bytes and mutated valid prefixes (3 encodings, defined and undefined "
                         "lengths; set/insert/delete/huge length), 1000-deep nested sequences",
                   cases=runs[0] + 1, outcome="always a header or None, never an exception, each under 1 s")


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spool]:
    spool = Spool(tmp_path_factory.mktemp("fuzz-spool"), node_name="fuzz")
    yield spool
    spool.close()


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


#: Transfer syntax -> how a data set is encoded for it.
SYNTAXES = {
    "1.2.840.10008.1.2": lambda ds: wire.encode_dataset(ds, implicit=True),
    "1.2.840.10008.1.2.1": lambda ds: wire.encode_dataset(ds),
    "1.2.840.10008.1.2.2": lambda ds: wire.encode_dataset(ds, little=False),
    "1.2.840.10008.1.2.1.99": lambda ds: _deflate(wire.encode_dataset(ds)),
}


def test_received_data_sets_are_stored_or_refused_with_a_status(spool: Spool, record_outcome) -> None:
    """What the sink makes of any data set: its header, or C000/A900 (never a 0110 crash)."""
    ds = _header_dataset()
    ds.PixelData = bytes(8)
    request = Request(1, 1, str(ds.SOPClassUID), str(ds.SOPInstanceUID), True)
    runs, refused = [0], [0]

    @fuzz(max_examples=250, deadline=2000)
    @given(st.sampled_from(sorted(SYNTAXES)), mutations)
    def parse(syntax: str, edits: list) -> None:
        runs[0] += 1
        partial = spool.begin()
        try:
            partial.write(file_meta(request, syntax, "FUZZ") + mutate(SYNTAXES[syntax](ds), edits))
            partial.sync()
            read_instance_header(partial, request, syntax, "FUZZ")
        except InvalidInstance as exc:
            assert exc.status in (Status.CANNOT_UNDERSTAND, Status.DATASET_MISMATCH)
            refused[0] += 1
        finally:
            partial.discard()

    parse()
    assert 0 < refused[0] < runs[0]
    record_outcome(area=AREA, fault="fuzzed data sets (sink's header parse, pydicom fallback)",
                   tried="hypothesis: a header data set in 4 transfer syntaxes (deflated included), mutated",
                   cases=runs[0], outcome=f"stored or refused with C000/A900 ({refused[0]} refused); before the "
                                          "fix unknown VRs and corrupt deflate streams answered 0110")


# --- the association handler over loopback ----------------------------------------------------

class _Errors(logging.Handler):
    """Collects ERROR records: an exception that escaped an association, a store that crashed."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@dataclass
class Server:
    server: StorageServer
    errors: _Errors

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.port)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The storage SCP in this process, on a loopback port, storing into SQLite."""
    root = tmp_path_factory.mktemp("fuzz-node")
    engine = make_engine(f"sqlite:///{root / 'node.db'}")
    upgrade(engine)
    spool = Spool(root / "spool", node_name="fuzz")
    sink = SpoolingSink(spool, InstanceRecorder(engine))
    scp = StorageServer(open_listener("127.0.0.1", 0), AssociationPolicy("PACS_NODE"), sink, AssociationSlots(8),
                        max_pdu=16384, acse_timeout_s=2, network_timeout_s=2)
    errors = _Errors()
    logger = logging.getLogger("pacs_node.receive")
    logger.addHandler(errors)
    scp.start()
    yield Server(scp, errors)
    scp.stop(grace_s=1)
    logger.removeHandler(errors)
    sink.close()
    spool.close()
    engine.dispose()


def _valid_stream() -> tuple[bytes, int]:
    """A whole association: RQ, C-ECHO, C-STORE in two fragments, A-RELEASE-RQ; and where the RQ ends."""
    ds = _header_dataset()
    ds.PixelData = bytes(64)
    data = wire.encode_dataset(ds)
    rq = wire.associate_rq()
    stream = (rq + wire.p_data(1, wire.c_echo_rq(), command=True)
              + wire.p_data(3, wire.c_store_rq(ds.SOPClassUID, ds.SOPInstanceUID, 2), command=True)
              + wire.p_data(3, data[:100], command=False, last=False)
              + wire.p_data(3, data[100:], command=False) + wire.RELEASE_RQ_PDU)
    return stream, len(rq)


def _good_association_works(server: Server) -> None:
    with wire.RawAssociation.open(server.server.port, timeout=10) as association:
        assert association.echo() == Status.SUCCESS
        association.release()


def test_mutated_pdu_streams_end_cleanly_and_the_server_keeps_serving(server: Server, record_outcome) -> None:
    stream, rq_length = _valid_stream()
    replies, ended, _ = wire.send_and_collect(server.address, stream)
    assert [t for t, _ in replies] == [wire.ASSOCIATE_AC, wire.P_DATA, wire.P_DATA, wire.RELEASE_RP]
    assert [wire.response_status(body) for t, body in replies if t == wire.P_DATA] == [0, 0]
    runs, endings = [0], {"A-ABORT": 0, "A-RELEASE-RP": 0, "A-ASSOCIATE-RJ": 0, "other reply, then close": 0,
                          "close without reply": 0}
    names = {wire.ABORT: "A-ABORT", wire.RELEASE_RP: "A-RELEASE-RP", wire.ASSOCIATE_RJ: "A-ASSOCIATE-RJ"}

    @fuzz(max_examples=300, deadline=None)  # a hang is caught by the socket timeout below
    @given(mutations, st.booleans())
    def association(edits: list, in_request: bool) -> None:
        runs[0] += 1
        data = mutate(stream[:rq_length], edits) + stream[rq_length:] if in_request else mutate(stream, edits)
        replies, ended, seconds = wire.send_and_collect(server.address, data, timeout=5, half_close=True)
        assert ended in ("closed", "reset"), f"no end after {seconds:.1f} s"
        kinds = [t for t, _ in replies]
        assert set(kinds) <= {wire.ASSOCIATE_AC, wire.ASSOCIATE_RJ, wire.P_DATA, wire.RELEASE_RP, wire.ABORT}
        endings[names.get(kinds[-1], "other reply, then close") if kinds else "close without reply"] += 1
        assert server.errors.records == [], server.errors.records[-1]
        _good_association_works(server)

    association()
    assert server.errors.records == []
    record_outcome(area=AREA, fault="fuzzed PDU streams (association handler)",
                   tried="hypothesis: a valid RQ + C-ECHO + C-STORE + release stream, bytes set/inserted/deleted "
                         "in the RQ or anywhere, against the SCP on loopback",
                   cases=runs[0],
                   outcome="every stream ended within 5 s (" + ", ".join(f"{k} {v}" for k, v in endings.items())
                           + "), no exception in a handler thread, a good association worked after each")


_VALID_UIDS = [wire.CT_IMAGE_STORAGE, wire.MR_IMAGE_STORAGE, wire.VERIFICATION, wire.IMPLICIT_LE, wire.EXPLICIT_LE]
UIDS = st.sampled_from(_VALID_UIDS * 4 + ["", "1.2.abc", "1." + "9" * 70, "\x00", "1..2"])  # mostly valid


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value) & 0xFFFF) + value


@st.composite
def association_requests(draw: st.DrawFn) -> bytes:
    """An A-ASSOCIATE-RQ body built item by item: sub-items may be missing, repeated or odd."""

    def uid() -> bytes:
        return draw(UIDS).encode("latin-1")

    contexts = []
    for _ in range(draw(st.integers(0, 4))):
        sub_items = [_item(0x30, uid()) for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2])))]  # abstract syntax
        sub_items += [_item(0x40, uid()) for _ in range(draw(st.sampled_from([1, 2, 0, 3])))]  # transfer syntaxes
        header = struct.pack(">BBBB", draw(st.sampled_from([1, 3, 5, 0, 2, 255])), 0, draw(st.sampled_from([0, 7])), 0)
        ordered = sub_items if draw(st.booleans()) else draw(st.permutations(sub_items))
        contexts.append(_item(0x20, header + b"".join(ordered)))
    user = []
    if draw(st.booleans()):
        user.append(_item(0x51, struct.pack(">I", draw(st.sampled_from([0, 1, 16384, 0xFFFFFFFF])))))
    for _ in range(draw(st.integers(0, 2))):
        sop = uid()
        roles = draw(st.lists(st.sampled_from([0, 1, 0, 1, 2]), min_size=2, max_size=2))  # SCU, SCP role
        user.append(_item(0x54, struct.pack(">H", len(sop)) + sop + bytes(roles)))
    if draw(st.booleans()):
        user.append(_item(0x52, uid()))
    if draw(st.booleans()):
        user.append(_item(0x55, draw(st.binary(max_size=20))))
    application = [_item(0x10, draw(st.sampled_from([b"1.2.840.10008.3.1.1.1", b"1.2.3", b""])))]
    items = application + contexts + ([_item(0x50, b"".join(user))] if draw(st.booleans()) or user else [])
    fixed = struct.pack(">HH", draw(st.sampled_from([1, 1, 0, 2])), 0) + draw(st.sampled_from(
        [b"PACS_NODE".ljust(16)] * 3 + [b"OTHER".ljust(16), bytes(16), b"\xff" * 16])) + b"FUZZ".ljust(16) + bytes(32)
    return fixed + b"".join(items if draw(st.booleans()) else draw(st.permutations(items)))


def test_association_requests_are_negotiated_or_refused(record_outcome) -> None:
    """Any A-ASSOCIATE-RQ body: an A-ASSOCIATE-AC or -RJ to send, or ProtocolError (answered with A-ABORT)."""
    from pacs_node.receive import upper_layer as ul

    contexts, policy = ul.storage_contexts(), AssociationPolicy("PACS_NODE")
    counts = {"accepted": 0, "rejected": 0, "aborted": 0}

    @fuzz(max_examples=500, deadline=1000)
    @given(association_requests())
    def negotiate(body: bytes) -> None:
        try:
            association, reply, reason, _, _ = ul.negotiate(body, "127.0.0.1", policy, contexts, 16384)
        except ul.ProtocolError:
            counts["aborted"] += 1
            return
        assert reply[0] == (wire.ASSOCIATE_AC if association else wire.ASSOCIATE_RJ)
        assert (association is None) == (reason is not None)
        counts["accepted" if association else "rejected"] += 1

    negotiate()
    assert all(counts.values()), counts
    record_outcome(area=AREA, fault="fuzzed A-ASSOCIATE-RQ structure (negotiation)",
                   tried="hypothesis: RQs built item by item, presentation contexts with 0-2 abstract and 0-3 "
                         "transfer syntaxes, odd UIDs, role selection, maximum length 0 or 4 GiB",
                   cases=sum(counts.values()),
                   outcome=f"A-ASSOCIATE-AC ({counts['accepted']}), -RJ ({counts['rejected']}) or A-ABORT "
                           f"({counts['aborted']}); before the fix a context without a transfer or abstract syntax "
                           "raised IndexError/TypeError in the handler thread")


# --- the volume builder and the series gate ----------------------------------------------------

_ODD = [0.0, -0.0, 1e-30, -1.0, 1e30, math.inf, -math.inf, math.nan]
numbers = st.one_of(st.floats(-500, 500, allow_nan=False), st.sampled_from(_ODD))
ORIENTATIONS = [[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0.866, 0.5, 0, -0.5, 0.866, 0], [1, 0, 0, 0, 0.9, 0.1],
                [0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0]]
#: Attributes a strategy may delete, or set to an odd value on some slices.
OPTIONAL = ["ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "RescaleSlope", "RescaleIntercept",
            "FrameOfReferenceUID", "PixelData", "SliceThickness", "BitsStored", "PixelRepresentation", "Rows",
            "GantryDetectorTilt", "ImageType", "Modality"]
ODD_VALUES = {
    "ImageOrientationPatient": st.lists(numbers, min_size=5, max_size=7),
    "ImagePositionPatient": st.lists(numbers, min_size=2, max_size=4),
    "PixelSpacing": st.one_of(st.lists(numbers, min_size=1, max_size=3), numbers),
    "RescaleSlope": numbers, "RescaleIntercept": numbers, "SliceThickness": numbers,
    "FrameOfReferenceUID": st.just("1.2.999"), "PixelData": st.binary(max_size=40),
    "BitsStored": st.integers(0, 40), "PixelRepresentation": st.integers(0, 2), "Rows": st.integers(0, 6),
    "GantryDetectorTilt": st.one_of(numbers, st.lists(numbers, min_size=2, max_size=2)),
    "ImageType": st.sampled_from(["LOCALIZER", ["ORIGINAL", "PRIMARY", "LOCALIZER"], ["DERIVED"]]),
    "Modality": st.sampled_from(["MR", "", "ct"]),
}


#: Series parameters the strategy may make odd (the others keep a valid value).
PARAMETERS = ["orientation", "origin", "step", "rescale", "bits", "samples", "spacing", "tilt"]


@st.composite
def ct_series(draw: st.DrawFn) -> list[Dataset]:
    """A small CT series: valid, except for the parameters drawn as odd and odd changes on some slices."""
    odd = draw(st.sets(st.sampled_from(PARAMETERS), max_size=3))

    def pick(name: str, valid: st.SearchStrategy, other: st.SearchStrategy) -> object:
        return draw(other if name in odd else valid)

    slices, rows, columns = draw(st.integers(0, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    orientation = pick("orientation", st.sampled_from(ORIENTATIONS[:4]),
                       st.one_of(st.sampled_from(ORIENTATIONS[4:]), st.lists(numbers, min_size=6, max_size=6)))
    origin = pick("origin", st.lists(st.floats(-300, 300), min_size=3, max_size=3),
                  st.lists(numbers, min_size=3, max_size=3))
    step = pick("step", st.sampled_from([0.625, 1.25, 2.5, -2.5]), numbers)
    slope, intercept = pick("rescale", st.tuples(st.sampled_from([1.0, 0.5, 2.0]), st.sampled_from([-1024.0, 0.0])),
                            st.tuples(numbers, numbers))
    bits, signed = pick("bits", st.tuples(st.just(16), st.integers(0, 1)),
                        st.tuples(st.sampled_from([8, 32]), st.integers(0, 1)))
    samples = pick("samples", st.just(1), st.just(3))
    spacing = pick("spacing", st.sampled_from([[0.7, 0.7], [1.0, 0.5]]),
                   st.one_of(st.lists(numbers, min_size=1, max_size=3), numbers))  # one value is a plain number
    tilt = pick("tilt", st.sampled_from([None, 0.0]), st.one_of(numbers, st.lists(numbers, min_size=2, max_size=2)))
    normal = np.cross(np.asarray(orientation[:3], dtype=float), np.asarray(orientation[3:], dtype=float))
    datasets = []
    for index in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.2", generate_uid(), "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "1.2.1", "1.2.2", "1.2.3"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = orientation
        with np.errstate(all="ignore"):
            ds.ImagePositionPatient = [float(v) for v in np.asarray(origin, dtype=float) + index * step * normal]
        ds.PixelSpacing, ds.SliceThickness = spacing, 1.0
        ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
        ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
        if samples == 3:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, signed
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if tilt is not None:
            ds.GantryDetectorTilt = tilt
        size = rows * columns * samples * bits // 8
        ds.PixelData = draw(st.binary(min_size=size, max_size=size)) + b"\x00" * (size % 2)
        datasets.append(ds)
    for keyword, where, delete in draw(st.lists(st.tuples(st.sampled_from(OPTIONAL), st.integers(-1, 5),
                                                          st.booleans()), max_size=2)):
        for ds in datasets if where < 0 else datasets[where : where + 1]:  # every slice, or one
            if delete:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, draw(ODD_VALUES[keyword]))
    return datasets


def _check_volume(datasets: list[Dataset]) -> str:
    try:
        volume = volume_from_datasets(datasets)
    except NotAnalysable as exc:
        assert str(exc), "a NotAnalysable without a reason"
        return "not analysable"
    assert isinstance(volume, hd.Volume) and volume.spatial_shape[0] == len(datasets)
    assert np.isfinite(volume.array).all() and np.isfinite(volume.affine).all()
    return "volume"


def _check_gate(datasets: list[Dataset], paths: list[Path]) -> str:
    if not datasets:
        return "empty"
    outcome = check_series("1.2.2", list(zip(paths, datasets, strict=True)), min_slices=2)
    if isinstance(outcome, Rejection):
        assert outcome.reason
        return "rejected"
    assert isinstance(outcome, SeriesChoice) and sorted(outcome.paths) == sorted(paths)
    assert 0 < outcome.slice_spacing_mm <= 3.0
    return "passed"


def test_volume_builder_and_gate_give_a_volume_or_a_reason(record_outcome) -> None:
    counts: dict[str, int] = {}

    @fuzz(max_examples=250, deadline=2000)
    @given(ct_series())
    def build(datasets: list[Dataset]) -> None:
        paths = [Path(f"{index}.dcm") for index in range(len(datasets))]
        for outcome in (_check_gate(datasets, paths), _check_volume(datasets)):
            counts[outcome] = counts.get(outcome, 0) + 1

    build()
    assert all(counts.get(k) for k in ("volume", "not analysable", "passed", "rejected")), counts
    record_outcome(area=AREA, fault="random CT geometry and encodings (volume builder, series gate)",
                   tried="hypothesis: 0-6 slices, random orientation/position/step/rescale (inf, NaN, 1e30), "
                         "8/16/32 bits, signed or not, RGB, attributes missing or odd on some slices",
                   cases=sum(counts.values()) // 2,
                   outcome=f"a finite volume ({counts.get('volume', 0)}) or NotAnalysable with a reason "
                           f"({counts.get('not analysable', 0)}); gate: pass ({counts.get('passed', 0)}) or a "
                           f"reason ({counts.get('rejected', 0)}); never another exception")


@pytest.fixture(scope="module")
def series_files(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return [path.read_bytes() for path in make_series(tmp_path_factory.mktemp("fuzz-series"), slices=3, size=8)]


def test_gate_and_volume_survive_corrupt_stored_headers(series_files: list[bytes], record_outcome) -> None:
    """Stored files the receiver accepted can hold anything after (0020,0013): the analysis reads them."""
    paths = [Path(f"{index}.dcm") for index in range(len(series_files))]
    runs, read_errors = [0], [0]

    @fuzz(max_examples=200, deadline=2000)
    @given(st.integers(0, len(series_files) - 1), mutations)
    def analyse(which: int, edits: list) -> None:
        runs[0] += 1
        files = list(series_files)
        files[which] = mutate(files[which], edits, start=400)  # past the File Meta Information
        try:  # as the pipeline reads them; it skips what raises these
            headers = [pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True) for data in files]
            datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
        except (OSError, InvalidDicomError, ValueError):
            read_errors[0] += 1
            return
        _check_gate(headers, paths)
        _check_volume(datasets)

    analyse()
    record_outcome(area=AREA, fault="corrupt bytes after the header of stored files (gate, volume builder)",
                   tried="hypothesis: one file of a 3-slice series mutated past its File Meta Information",
                   cases=runs[0], outcome=f"gate passed or rejected with a reason, volume built or NotAnalysable "
                                          f"({read_errors[0]} unreadable files skipped as the pipeline does); before "
                                          "the fix an unknown VR or a 3-byte Rows crashed the gate")
