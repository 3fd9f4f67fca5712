"""systemd's notify protocol (``Type=notify``) and watchdog, for ``pacs-node serve``.

sd_notify is one datagram to the unix socket in ``$NOTIFY_SOCKET`` (a path, or an
abstract-namespace name written with a leading ``@``); without the variable nothing is
sent.  The watchdog wants ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC``; we send it at
half that, from the main loop, only while the node is alive enough (its scheduler runs
and its database answers), so systemd restarts a node that is stuck.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

from pacs_node.monitoring.health import Problem, failing

log = logging.getLogger(__name__)


class Notifier:
    """Sends state lines to systemd (no-op when not started by it)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_pid = environ.get("WATCHDOG_PID")
        usec = environ.get("WATCHDOG_USEC", "")
        mine = watchdog_pid is None or watchdog_pid == str(os.getpid())
        #: Seconds between watchdog pings (half of ``WATCHDOG_USEC``), ``None`` when no watchdog is armed.
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None

    def send(self, *assignments: str) -> bool:
        """Send ``assignments`` (``READY=1``, ``STATUS=...``) in one datagram; ``False`` when not sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(assignments).encode())
        except OSError as exc:
            log.warning("event=sd_notify_failed error=%s", type(exc).__name__)
            return False
        return True


def serve_until(stop: threading.Event, liveness: Callable[[], dict[str, Problem]], status: str,
                notifier: Notifier | None = None) -> None:
    """The main loop of ``serve``: tell systemd the node is ready, ping its watchdog while
    ``liveness`` finds no problem, and return (after ``STOPPING=1``) once ``stop`` is set."""
    notifier = notifier or Notifier()
    notifier.send("READY=1", f"STATUS={status}")
    interval = notifier.watchdog_interval_s
    problems: dict[str, str] = {}
    while not stop.wait(interval):  # no watchdog: wait for the stop alone
        now = failing(liveness())
        if not now:
            notifier.send("WATCHDOG=1", *([f"STATUS={status}"] if problems else []))
        elif now != problems:
            reasons = "; ".join(f"{name}: {why}" for name, why in now.items())
            log.error("event=watchdog_withheld reason=%r", reasons)
            notifier.send(f"STATUS=unhealthy, watchdog withheld: {reasons}")
        if problems and not now:
            log.info("event=watchdog_resumed")
        problems = now
    notifier.send("STOPPING=1", "STATUS=stopping")
