"""Socket options for our pynetdicom associations."""

from __future__ import annotations

import socket

from pynetdicom import evt


def no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: turn Nagle's algorithm off (PDUs are sent whole)."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: Handlers to pass to ``AE.associate(..., evt_handlers=NO_DELAY)``.
NO_DELAY = [(evt.EVT_CONN_OPEN, no_delay)]
