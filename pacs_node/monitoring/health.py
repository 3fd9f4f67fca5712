"""Health of a running node: what ``/readyz`` reports and what the systemd watchdog needs.

Each check returns ``None`` when it passes, else why not, in a few words.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from pacs_node.housekeeping import DiskGuard
from pacs_node.storage.base import BlobStore, StoreUnavailable

T = TypeVar("T")

#: A check's answer: ``None`` when it passes, else the reason it fails.
Problem = str | None


class DatabaseUnavailable(Exception):
    """The database did not answer a probe in time, or answered with an error."""


class DatabaseProbe:
    """Runs short queries on threads of its own, giving up waiting after ``timeout_s``.

    A query that hangs (a peer that stopped answering) is left to finish on its thread;
    until it does, further queries fail at once rather than pile up behind it.
    """

    def __init__(self, engine: Engine, timeout_s: float = 2.0) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-probe")
        self._lock = threading.Lock()
        self._hung: tuple[Future, float] | None = None

    def run(self, query: Callable[[Connection], T]) -> T:
        """``query``'s result on a connection of the engine; raises :class:`DatabaseUnavailable`."""
        with self._lock:
            if self._hung is not None:
                future, since = self._hung
                if not future.done():
                    raise DatabaseUnavailable(f"no answer for {time.monotonic() - since:.0f} s")
                self._hung = None
            future = self._executor.submit(self._query, query)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            with self._lock:
                self._hung = (future, time.monotonic() - self.timeout_s)
            raise DatabaseUnavailable(f"no answer within {self.timeout_s:g} s") from None
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            raise DatabaseUnavailable(f"{type(cause).__name__}: {first_line}"[:200]) from None

    def _query(self, query: Callable[[Connection], T]) -> T:
        with self.engine.connect() as connection:
            return query(connection)

    def check(self) -> Problem:
        """``None`` when ``SELECT 1`` answers in time."""
        try:
            self.run(lambda connection: connection.execute(text("SELECT 1")).scalar())
        except DatabaseUnavailable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def spool_writable(root: Path) -> Problem:
    """``None`` when a file can be created, written and removed in ``root``."""
    path = root / f".readyz-{threading.get_ident()}"
    try:
        with path.open("wb") as handle:
            handle.write(b"ok")
        path.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return f"cannot write to {root}: {exc.strerror or type(exc).__name__}"
    return None


def _store_problem(store: BlobStore) -> Problem:
    try:
        store.check()
    except StoreUnavailable as exc:
        return str(exc)
    return None


class NodeHealth:
    """The checks of one node process.

    :meth:`readiness` is what a load balancer asks (``/readyz``); :meth:`liveness` what
    the watchdog asks: the scheduler still runs its timers (it calls :meth:`heartbeat`
    every second) and the database answers.
    """

    #: The scheduler counts as stuck when its heartbeat is older than this.
    HEARTBEAT_MAX_AGE_S = 30.0

    def __init__(self, probe: DatabaseProbe, spool_root: Path, guard: DiskGuard,
                 listener_up: Callable[[], bool] | None, model_loaded: Callable[[], bool],
                 store: BlobStore | None = None) -> None:
        self.probe = probe
        #: An object store whose bucket must answer (``None``, or the local spool: the spool checks suffice).
        self.store = store if store is not None and store.kind != "local" else None
        self.spool_root = Path(spool_root)
        self.guard = guard
        self.listener_up = listener_up
        self.model_loaded = model_loaded
        self._heartbeat = time.monotonic()

    def heartbeat(self) -> None:
        """Called by the scheduler on a timer."""
        self._heartbeat = time.monotonic()

    def _free_space(self) -> Problem:
        if self.guard.has_room():
            return None
        return (f"{self.guard.free_bytes() // (1024 * 1024)} MB free, "
                f"below storage.min_free_mb = {self.guard.min_free_bytes // (1024 * 1024)}")

    def readiness(self) -> dict[str, Problem]:
        """Every readiness check by name: database, spool_writable, spool_free_space, object_store
        (with an object store), listener (only in a process that receives: ``listener_up`` is
        ``None`` otherwise), model."""
        checks = {
            "database": self.probe.check(),
            "spool_writable": spool_writable(self.spool_root),
            "spool_free_space": self._free_space(),
        }
        if self.store is not None:
            checks["object_store"] = _store_problem(self.store)
        if self.listener_up is not None:
            checks["listener"] = None if self.listener_up() else "the DICOM listener does not accept associations"
        checks["model"] = None if self.model_loaded() else "the analysis model is not loaded"
        return checks

    def liveness(self) -> dict[str, Problem]:
        """What the watchdog needs: the scheduler's timers run (the node is not hung).

        A database outage is not a hang: the node refuses C-STOREs and holds jobs until the
        database is back, and ``/readyz`` says so; a restart would only fail to start.
        """
        age = time.monotonic() - self._heartbeat
        return {"scheduler": None if age <= self.HEARTBEAT_MAX_AGE_S else f"no timer ran for {age:.0f} s"}


def failing(checks: dict[str, Problem]) -> dict[str, str]:
    """The checks that failed, with their reasons."""
    return {name: problem for name, problem in checks.items() if problem is not None}
