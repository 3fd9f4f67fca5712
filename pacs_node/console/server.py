"""The console's HTTP(S) server: uvicorn in a background thread on a socket bound up front."""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn
from fastapi import FastAPI

from pacs_node.config import ConsoleConfig

log = logging.getLogger(__name__)


class ConsoleServer:
    """Serves ``app`` on ``config``'s address until :meth:`stop`.

    The socket is bound in the constructor, so a taken port fails when the node starts,
    not later in a thread.  uvicorn installs no signal handlers off the main thread.
    """

    def __init__(self, app: FastAPI, config: ConsoleConfig) -> None:
        family = socket.AF_INET6 if ":" in config.bind_address else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((config.bind_address, config.port))
        except OSError as exc:
            self._socket.close()
            raise OSError(f"console: cannot listen on {config.bind_address}:{config.port}: {exc.strerror}") from exc
        self._socket.listen(128)
        self.tls = config.tls is not None
        self._server = uvicorn.Server(uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=str(config.tls.cert_file) if config.tls else None,
            ssl_keyfile=str(config.tls.key_file) if config.tls else None,
        ))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = self._socket.getsockname()[0]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="console", daemon=True)
        self._thread.start()
        log.info("event=console_started url=%s", self.url)

    def stop(self) -> None:
        """Finish open requests and close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()
