"""The local spool as a blob store: a key is a path relative to the spool root.

The receive path writes the spool itself (``receive/group_commit.py``, batched fsyncs);
this is how every other stage reads and writes it.  ``fetched`` hands out the spool's
own files, so reading costs nothing more than before.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydicom import Dataset

from pacs_node.receive.spool import Spool, fsync_dir
from pacs_node.storage.base import StoreUnavailable


class LocalStore:
    """Objects as files under ``root`` (the spool directory)."""

    kind = "local"

    def __init__(self, root: Path, node_name: str = "local") -> None:
        self.root = Path(root)
        self.node_name = node_name
        self._spool: Spool | None = None  # writes our reports; made on first use, kept until close
        self._spool_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"key {key!r} is not a relative spool path")
        return self.root / key

    def put_file(self, path: Path, key: str, sha256_hex: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as fp:
            os.fsync(fp.fileno())
        os.replace(path, target)
        fsync_dir(target.parent)

    def write_dataset(self, dataset: Dataset, key: str) -> int:
        with self._spool_lock:
            if self._spool is None:
                self._spool = Spool(self.root, node_name=self.node_name)
            spool = self._spool
        return spool.write_dataset(dataset, key).size_bytes

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    @contextmanager
    def fetched(self, keys: Sequence[str]) -> Iterator[dict[str, Path]]:
        yield {key: self._path(key) for key in keys if self._path(key).is_file()}

    def delete(self, keys: Sequence[str]) -> int:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        return len(keys)

    def older_than(self, prefix: str, age_s: float) -> Iterator[tuple[str, int]]:
        cutoff = time.time() - age_s
        for folder, _, names in os.walk(self._path(prefix)):
            for name in names:
                path = Path(folder) / name
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                if stat.st_mtime < cutoff:
                    yield path.relative_to(self.root).as_posix(), stat.st_size

    def check(self) -> None:
        probe = self.root / f".health-{os.getpid()}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StoreUnavailable(f"spool not writable: {exc.strerror or exc}") from exc

    def close(self) -> None:
        with self._spool_lock:
            spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()
