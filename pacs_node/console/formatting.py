"""Jinja filters of the console's pages: times, sizes, durations."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any


def when(value: dt.datetime | None) -> str:
    """A UTC time as ``YYYY-MM-DD HH:MM:SS``, or a dash."""
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def size(count: int | float | None) -> str:
    """Bytes in B, KB, MB, GB or TB."""
    if count is None:
        return "unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def duration(seconds: float | None) -> str:
    """Seconds as ``1 d 2 h``, ``3 h 4 min``, ``5 min 6 s`` or ``7.8 s``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{seconds:.1f} s"


FILTERS: dict[str, Callable[..., Any]] = {"when": when, "size": size, "duration": duration}
