"""What the console may read of the running node."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from pacs_node.config import Settings
from pacs_node.housekeeping import DiskGuard
from pacs_node.logs import RecentEvents

if TYPE_CHECKING:
    from pacs_node.monitoring.health import NodeHealth
    from pacs_node.monitoring.metrics import NodeMetrics


@dataclass(frozen=True)
class NodeView:
    """The running node as the console sees it: its settings, database and probes of its parts.

    ``listener_up`` says whether the DICOM listener accepts associations (``None``: this process does not receive); ``model_loaded``
    whether the analysis model is in memory (``True`` too when analysis is off by configuration).
    ``events`` holds the node's recent log records (``None``: not collected).
    ``metrics`` and ``health`` back ``/metrics`` and ``/readyz`` (``console/monitoring.py``).
    """

    settings: Settings
    engine: Engine
    guard: DiskGuard
    started_at: datetime
    listener_up: Callable[[], bool] | None
    model_loaded: Callable[[], bool]
    events: RecentEvents | None = None
    metrics: NodeMetrics | None = None
    health: NodeHealth | None = None
