"""When an unavailable prior is looked up again (``[priors] recheck_minutes``, ``recheck_hours``).

A lookup that ends ``unavailable`` (a source down, the prior not retrieved, ``max_wait_s``
passed) is tried again ``recheck_minutes`` later, for as long as that falls within
``recheck_hours`` of the study's completion.  The times go on the lookup's
``prior_lookups`` row; :func:`pacs_node.db.queue.queue_rechecks` turns a due one into a
re-report job (:mod:`pacs_node.priors.job`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pacs_node.config import PriorsConfig


@dataclass(frozen=True)
class RecheckPolicy:
    """How often and for how long an unavailable prior is looked up again."""

    interval: dt.timedelta
    window: dt.timedelta

    def __post_init__(self) -> None:
        if self.interval <= dt.timedelta(0):
            raise ValueError(f"interval must be positive, got {self.interval}")
        if self.window < self.interval:
            raise ValueError(f"window ({self.window}) must be at least the interval ({self.interval})")

    @classmethod
    def from_config(cls, config: PriorsConfig) -> RecheckPolicy | None:
        """The policy of ``[priors]``; ``None`` when unavailable priors are not looked up again."""
        if not config.rechecking:
            return None
        return cls(dt.timedelta(minutes=config.recheck_minutes), dt.timedelta(hours=config.recheck_hours))

    def next_recheck(self, completed_at: dt.datetime, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime]:
        """``(when to look again, or None once past the window; the end of the window)`` for a
        study that completed at ``completed_at`` and whose prior was unavailable ``now``."""
        until = completed_at + self.window
        due = now + self.interval
        return (due if due <= until else None), until
