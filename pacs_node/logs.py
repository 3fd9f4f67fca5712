"""Logging set-up: one event per line on stdout, key=value or JSON.

Messages are written as ``event=... key=value``; patient names, IDs and UIDs are never
logged above DEBUG.  Library loggers that can print data set contents at INFO or
DEBUG are held at WARNING unless the node itself runs at DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import deque
from datetime import UTC, datetime

_NOISY = ("pynetdicom", "apscheduler", "alembic", "sqlalchemy.engine", "highdicom", "pydicom", "httpx", "httpcore")
#: Loggers whose warnings are routine here: the scheduler warns on every tick skipped
#: because the previous run (a long analysis) is still going.
_ROUTINE_WARNINGS = ("apscheduler.scheduler",)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send the node's logs to stdout at ``level`` in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
    for name in _ROUTINE_WARNINGS:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.ERROR)


class RecentEvents(logging.Handler):
    """The newest log records at INFO and above, in memory, for the console's events page.

    The node owns one and attaches it to the root logger while it runs; records are kept
    as (UTC time, level, logger, message) tuples, newest last.
    """

    def __init__(self, capacity: int = 500) -> None:
        super().__init__(logging.INFO)
        self._records: deque[tuple[str, str, str, str]] = deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="seconds")
            self._records.append((when, record.levelname, record.name, record.getMessage()))
        except Exception:  # noqa: BLE001 - a log record that cannot be formatted must not break the caller
            self.handleError(record)

    def newest(self, limit: int = 200, min_level: int = logging.INFO) -> list[tuple[str, str, str, str]]:
        """Up to ``limit`` records at ``min_level`` or above, newest first."""
        with self.lock:
            records = list(self._records)
        kept = [r for r in reversed(records) if logging.getLevelName(r[1]) >= min_level]
        return kept[:limit]
