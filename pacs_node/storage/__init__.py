"""Blob storage: where received instances and our reports live (local spool or S3).

Rows are the truth and hold each object's key; :func:`open_store` builds the store the
configuration names, once per process, and hands it down.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pacs_node.config import Settings
from pacs_node.storage.base import BlobStore, StoreUnavailable, instance_key, read_dataset, report_key


def open_store(settings: Settings) -> BlobStore:
    """The blob store of ``[storage]``; S3 needs boto3 (``pip install 'pacs-node[s3]'``)."""
    storage = settings.storage
    if storage.backend == "s3":
        assert storage.s3 is not None  # validated at load
        try:
            from pacs_node.storage.s3 import S3Store
        except ImportError as exc:
            raise RuntimeError("[storage] backend = \"s3\" needs boto3: pip install 'pacs-node[s3]'") from exc

        return S3Store(storage.s3, fetch_folder(settings))
    from pacs_node.storage.local import LocalStore

    return LocalStore(storage.spool_dir, settings.node.name)


def fetch_folder(settings: Settings) -> Path:
    """Where this node keeps the objects it fetched for a job (removed at start: left by a crash)."""
    return settings.storage.spool_dir / "fetched" / settings.node.name


def remove_fetched(settings: Settings) -> None:
    """Delete local copies a crash left behind; call once, when the node starts."""
    shutil.rmtree(fetch_folder(settings), ignore_errors=True)


__all__ = ["BlobStore", "StoreUnavailable", "instance_key", "open_store", "read_dataset", "report_key"]
