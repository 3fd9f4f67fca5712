"""The on-disk form of a case's training patches, and a reader that streams them.

One folder per case in the cache, ``<case_id>-<fingerprint>/``, written whole (to a
temporary folder, then renamed, so a folder that exists is complete):

``fine.npy``, ``context.npy`` (and ``wide.npy`` for three-channel samples)
    ``N x P x P x P`` ``int16`` HU patches, uncompressed ``.npy`` so that one patch
    is one contiguous run of bytes at a known offset.
``targets.npz``
    The per-sample targets (``label``, ``type``, ``diameter``, ``offset``, ``kind``,
    see :func:`pacs_node.ml.samples.build_case`) and the case statistics
    (``n_candidates``, ``n_nodules``, ``n_found``, ``scale``).

:class:`PatchStore` keeps only the targets of its cases in memory (27 bytes per
sample) and reads the patches a batch asks for from the files (``os.preadv`` into
the batch's own buffer), holding at most ``max_open_cases`` cases' files open.  Its
memory does not grow with the number of cases beyond those targets: for LUNA16
(888 scans, about 200 samples each, ``P = 32``) about 5 MB of targets against 23 GB
of patches.  The operating system's page cache keeps recently read patches, outside
the process.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pacs_node.ml.patches import CHANNEL_NAMES

#: The patch files of a case, finest first; ``wide`` only for three-channel samples.
PATCH_FILES = CHANNEL_NAMES
TARGET_FIELDS = ("label", "type", "diameter", "offset", "kind")
STAT_FIELDS = ("n_candidates", "n_nodules", "n_found", "scale")
TARGETS_FILE = "targets.npz"
#: Bytes each sample costs in a :class:`PatchStore`'s memory (targets + case index + row).
INDEX_BYTES_PER_SAMPLE = 1 + 1 + 4 + 12 + 1 + 4 + 4


def write_case(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write one case's samples (as :func:`~pacs_node.ml.samples.build_case` returns them) to ``path``.

    The folder appears complete or not at all.  If another process wrote it first,
    its copy is kept.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in PATCH_FILES:
            if name in arrays:
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(arrays[name]))
        np.savez(tmp / TARGETS_FILE, **{k: arrays[k] for k in TARGET_FIELDS + STAT_FIELDS})
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / TARGETS_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(cache_dir: Path) -> list[Path]:
    """Delete the temporary case folders of processes that no longer run (an interrupted build)."""
    removed = []
    for tmp in Path(cache_dir).glob("*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1])
            os.kill(pid, 0)
            continue  # still being written
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def read_case(path: Path) -> dict[str, np.ndarray]:
    """All arrays of one cached case, in memory (patches included)."""
    path = Path(path)
    with np.load(path / TARGETS_FILE) as z:
        out = {k: z[k] for k in z.files}
    for name in PATCH_FILES:
        if (path / f"{name}.npy").is_file():
            out[name] = np.load(path / f"{name}.npy")
    return out


def _npy_layout(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """Data offset (bytes), shape and dtype of a C-ordered ``.npy`` file."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not streamed")
        return f.tell(), tuple(shape), dtype


class PatchStore:
    """The samples of some cached cases: targets in memory, patches streamed from disk.

    Parameters
    ----------
    paths
        Case folders written by :func:`write_case`, in order (``case_index`` counts them).
    max_open_cases
        Most cases whose patch files are open at once (least recently used closed first).
    channels
        Patch files read per sample (the first ``channels`` of :data:`PATCH_FILES`);
        every case must have them.

    Attributes
    ----------
    label, type, diameter, offset, kind
        Per-sample targets of all cases, concatenated.
    case_index, row
        Per sample: which case (index into ``paths``) and which row of its files.
    stats
        ``cases``, ``nodules``, ``found`` (nodules with a candidate) and ``candidates``.
    patch_shape, dtype
        Shape (``P x P x P``) and type of one patch.
    bytes_read
        Patch bytes read so far.
    """

    def __init__(self, paths: Sequence[Path], max_open_cases: int = 64, channels: int = 2) -> None:
        if not 1 <= channels <= len(PATCH_FILES):
            raise ValueError(f"channels must be 1 to {len(PATCH_FILES)}, got {channels}")
        self.files = PATCH_FILES[:channels]
        if not paths:
            raise ValueError("no cached cases to open")
        if max_open_cases < 1:
            raise ValueError(f"max_open_cases must be >= 1, got {max_open_cases}")
        self.paths = [Path(p) for p in paths]
        self.max_open_cases = max_open_cases
        parts: dict[str, list[np.ndarray]] = {k: [] for k in TARGET_FIELDS}
        case_index, rows, offsets = [], [], []
        self.stats = {"cases": 0, "nodules": 0, "found": 0, "candidates": 0}
        layout: tuple[tuple[int, ...], np.dtype] | None = None
        for i, path in enumerate(self.paths):
            with np.load(path / TARGETS_FILE) as z:
                for k in TARGET_FIELDS:
                    parts[k].append(z[k])
                n = len(z["label"])
                self.stats["cases"] += 1
                self.stats["nodules"] += int(z["n_nodules"])
                self.stats["found"] += int(z["n_found"])
                self.stats["candidates"] += int(z["n_candidates"])
            case_offsets = []
            for name in self.files:
                if not (path / f"{name}.npy").is_file():
                    raise ValueError(f"{path.name}: no {name}.npy: the cache holds fewer channels than the network takes")
                off, shape, dtype = _npy_layout(path / f"{name}.npy")
                if shape[0] != n or (layout is not None and (shape[1:], dtype) != layout and n):
                    raise ValueError(f"{path.name}: {name}.npy holds {shape} {dtype}, expected {n} patches like the others")
                if n:
                    layout = (shape[1:], dtype)
                case_offsets.append(off)
            offsets.append(tuple(case_offsets))
            case_index.append(np.full(n, i, dtype=np.int32))
            rows.append(np.arange(n, dtype=np.int32))
        self.label, self.type, self.diameter, self.offset, self.kind = (np.concatenate(parts[k]) for k in TARGET_FIELDS)
        self.case_index = np.concatenate(case_index)
        self.row = np.concatenate(rows)
        self._offsets = offsets
        self.patch_shape, self.dtype = layout if layout else ((0, 0, 0), np.dtype(np.int16))
        self._patch_bytes = int(np.prod(self.patch_shape)) * self.dtype.itemsize
        self._open: OrderedDict[int, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes_read = 0

    def __len__(self) -> int:
        return len(self.label)

    @property
    def open_cases(self) -> int:
        """Cases whose files are open now (at most ``max_open_cases``)."""
        return len(self._open)

    @property
    def index_bytes(self) -> int:
        """Bytes of per-sample bookkeeping held in memory (no patch is held)."""
        return sum(a.nbytes for a in (self.label, self.type, self.diameter, self.offset, self.kind,
                                      self.case_index, self.row))

    def _files(self, case: int) -> tuple[int, ...]:
        fds = self._open.get(case)
        if fds is not None:
            self._open.move_to_end(case)
            return fds
        while len(self._open) >= self.max_open_cases:
            _, old = self._open.popitem(last=False)
            for fd in old:
                os.close(fd)
        fds = tuple(os.open(self.paths[case] / f"{name}.npy", os.O_RDONLY) for name in self.files)
        self._open[case] = fds
        return fds

    def read(self, idx: np.ndarray) -> tuple[np.ndarray, ...]:
        """The patches (one ``len(idx) x P x P x P`` array per channel, finest first) of the samples ``idx``."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        out = tuple(np.empty((len(idx), *self.patch_shape), dtype=self.dtype) for _ in self.files)
        nb = self._patch_bytes
        order = np.lexsort((self.row[idx], self.case_index[idx]))  # file order: fewer seeks
        with self._lock:
            for j in order:
                case, row = int(self.case_index[idx[j]]), int(self.row[idx[j]])
                for fd, base, arr in zip(self._files(case), self._offsets[case], out, strict=True):
                    got = os.preadv(fd, [memoryview(arr[j]).cast("B")], base + row * nb)
                    if got != nb:
                        raise OSError(f"{self.paths[case].name}: patch file truncated at row {row}")
            self.bytes_read += len(self.files) * nb * len(idx)
        return out

    def close(self) -> None:
        """Close every open file."""
        with self._lock:
            while self._open:
                for fd in self._open.popitem()[1]:
                    os.close(fd)

    def __enter__(self) -> PatchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass
