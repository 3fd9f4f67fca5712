"""A TCP proxy that a test owns, to inject network faults between the node and a peer.

``down()`` drops every forwarded connection and refuses new ones (the port stays
closed, so a connect fails at once, as with a stopped server); ``up()`` listens
again on the same port.  ``stall()`` holds the bytes going towards the target (a peer
that stops answering); ``throttle_bps`` slows them (a peer that accepts slowly).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Self

from tests.conftest import free_port

_CHUNK = 16 * 1024


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port``, one thread pair per connection."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", port: int | None = None,
                 throttle_bps: float | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.throttle_bps = throttle_bps
        self.forwarded = 0  #: bytes forwarded towards the target
        self.accepted = 0  #: connections accepted
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> Self:
        """Listen (again) on :attr:`port`."""
        if self._listener is not None:
            return self
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name=f"proxy-{self.port}", daemon=True).start()
        return self

    def down(self) -> int:
        """Stop listening and drop every open connection; returns how many were dropped."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            _close(sock)
        return len(connections) // 2

    def stall(self) -> None:
        """Hold everything going towards the target until :meth:`flow`."""
        self._flowing.clear()

    def flow(self) -> None:
        """Forward again what :meth:`stall` held."""
        self._flowing.set()

    def close(self) -> None:
        self.flow()
        self.down()

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *_: object) -> None:
        self.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _close(client)
                    _close(server)
                    return
                self._connections.update((client, server))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, towards_target: bool) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                if towards_target:
                    self._flowing.wait()
                    if self.throttle_bps:
                        time.sleep(len(data) / self.throttle_bps)
                    self.forwarded += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections.discard(source)
                self._connections.discard(sink)
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
