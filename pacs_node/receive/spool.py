"""Durable file store for received instances.

Files are written under ``incoming/`` with a random name and renamed to
``studies/<study>/<series>/<sop>.dcm`` once complete, so a file under ``studies/`` never
lacks bytes its writer had written.  :meth:`Spool.commit` makes one file durable on its
own (fsync, rename, fsync of the folder); the receive path instead places files with
:meth:`Spool.place` and fsyncs a whole batch of them and their folders at once
(``group_commit.py``).  Paths are built from validated UIDs only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _sync_file_range() -> Callable[[int, int, int], None]:
    """Start write-back of a byte range now (Linux ``sync_file_range``), else do nothing.

    Kicking write-back while the rest of a data set is still on the wire leaves the
    final fsync, which the C-STORE response waits for, little left to do.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    write = 2  # SYNC_FILE_RANGE_WRITE

    def start_writeback(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, write)

    return start_writeback


_start_writeback = _sync_file_range()


class InvalidUID(ValueError):
    """A UID that is not digits and dots of at most 64 characters."""


def validate_uid(value: str, name: str) -> str:
    """Return ``value`` stripped of DICOM padding, or raise :class:`InvalidUID` naming ``name``."""
    uid = value.rstrip("\x00 ")
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise InvalidUID(f"{name} is not a valid UID")
    return uid


def validate_name(name: str) -> str:
    """A node name usable as a folder name."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name in {".", ".."}:
        raise ValueError(f"node name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    return name


class SpoolFull(OSError):
    """Less free space than the configured minimum."""


@dataclass(frozen=True)
class StoredFile:
    """A file moved into its final place."""

    relative_path: str
    size_bytes: int


class PartialFile:
    """A file being received; invisible under ``studies/`` until :meth:`Spool.commit`.

    The first :data:`HEAD_BYTES` written are also kept in memory, so the header can
    be parsed without reading the file back.
    """

    HEAD_BYTES = 64 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        self._size = 0
        self.head = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        if self._fd is None:
            raise ValueError("partial file is closed")
        if len(self.head) < self.HEAD_BYTES:
            self.head += data[: self.HEAD_BYTES - len(self.head)]
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        _start_writeback(self._fd, self._size, len(data))
        self._size += len(data)

    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def sync(self) -> int:
        """fsync and close the file (idempotent); returns its size in bytes."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        return self._size

    def close(self) -> int:
        """Close the file without fsync (its bytes go elsewhere to be durable); returns its size."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return self._size

    def discard(self) -> None:
        """Close and delete the partial file (nothing was acknowledged)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


class Spool:
    """The spool directory: ``incoming/<node>/`` for partial files, ``studies/`` for stored ones.

    Each node has its own incoming folder, so nodes sharing a spool never remove each
    other's files in flight.
    """

    def __init__(self, root: Path, min_free_bytes: int = 0, node_name: str = "local") -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.incoming = root / "incoming" / validate_name(node_name)
        self.studies = root / "studies"
        for folder in (self.incoming, self.studies):
            folder.mkdir(parents=True, exist_ok=True)
        #: Folders whose entry, and their parents' entries, this process has fsynced.
        self._durable_dirs: set[Path] = set()
        # Creating a file costs a journal write; one spare is made ahead, off the hot path.
        self._spares: list[PartialFile] = []
        self._spare_lock = threading.Lock()
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-spare")

    def close(self) -> None:
        """Stop making spare files and delete the unused ones."""
        self._maker.shutdown(wait=True)
        with self._spare_lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            spare.discard()

    def _make_spare(self) -> None:
        spare = PartialFile(self.incoming / f"{secrets.token_hex(12)}.part")
        with self._spare_lock:
            self._spares.append(spare)

    def free_bytes(self) -> int:
        """Bytes available to us on the spool's filesystem."""
        return shutil.disk_usage(self.root).free

    def begin(self) -> PartialFile:
        """Start a new partial file; :class:`SpoolFull` when below the free-space minimum."""
        if self.min_free_bytes and self.free_bytes() < self.min_free_bytes:
            raise SpoolFull("spool below its free-space minimum")
        with self._spare_lock:
            partial = self._spares.pop() if self._spares else None
        if partial is None:
            partial = PartialFile(self.incoming / f"{secrets.token_hex(12)}.part")
        try:
            self._maker.submit(self._make_spare)
        except RuntimeError:  # closed: the node is stopping
            pass
        return partial

    def relative_path(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """Where an instance lives, relative to the spool root; UIDs are validated."""
        parts = (
            validate_uid(study_uid, "StudyInstanceUID"),
            validate_uid(series_uid, "SeriesInstanceUID"),
            validate_uid(sop_uid, "SOPInstanceUID") + ".dcm",
        )
        return "/".join(("studies", *parts))

    def commit(self, partial: PartialFile, relative_path: str) -> StoredFile:
        """fsync ``partial`` and move it to ``relative_path`` atomically and durably."""
        size = partial.sync()
        folders = self.place(partial, relative_path)
        for folder in folders:
            fsync_dir(folder)
        self.folders_durable(folders)
        return StoredFile(relative_path, size)

    def place(self, partial: PartialFile, relative_path: str) -> set[Path]:
        """Rename the complete ``partial`` to ``relative_path``; nothing is fsynced.

        Returns the folders to fsync, after the file, to make its name durable: its own,
        and the ones above it up to the spool root when this process has not yet made
        them durable (see :meth:`folders_durable`).  ``partial.path`` follows the file, so
        :meth:`PartialFile.discard` removes it from there.
        """
        target = self.root / relative_path
        folder = target.parent
        folders = {folder}
        if folder not in self._durable_dirs:
            folder.mkdir(parents=True, exist_ok=True)
            folders |= self._ancestors(folder)
        try:
            os.replace(partial.path, target)
        except FileNotFoundError:  # the folder was removed by retention meanwhile
            self._durable_dirs.discard(folder)
            folder.mkdir(parents=True, exist_ok=True)
            folders |= self._ancestors(folder)
            os.replace(partial.path, target)
        partial.path = target
        return folders

    def folders_durable(self, folders: set[Path]) -> None:
        """Note that ``folders``, returned by :meth:`place`, were fsynced: a file placed in
        one of them later needs only that folder fsynced."""
        if len(self._durable_dirs) > 10_000:
            self._durable_dirs.clear()
        self._durable_dirs.update(folders)

    def _ancestors(self, folder: Path) -> set[Path]:
        return {parent for parent in folder.parents if parent == self.root or self.root in parent.parents}

    def write_dataset(self, dataset: Dataset, relative_path: str) -> StoredFile:
        """Write a DICOM object we made (a report) durably at ``relative_path``."""
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        partial = self.begin()
        try:
            partial.write(buffer.getbuffer())
            return self.commit(partial, relative_path)
        except BaseException:
            partial.discard()
            raise

    def report_path(self, study_uid: str, sop_uid: str) -> str:
        """Where an object we made lives, relative to the spool root; UIDs are validated."""
        return "/".join(("reports", validate_uid(study_uid, "StudyInstanceUID"), validate_uid(sop_uid, "SOPInstanceUID") + ".dcm"))

    def path_of(self, relative_path: str) -> Path:
        """Absolute path of a stored file."""
        return self.root / relative_path

    def clean_incoming(self) -> int:
        """Delete partial files left by a crash (never acknowledged); returns how many."""
        removed = 0
        for leftover in self.incoming.glob("*.part"):
            leftover.unlink(missing_ok=True)
            removed += 1
        return removed


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (created, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
