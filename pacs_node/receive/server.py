"""The storage SCP listener: accepts connections, one thread per association.

With DICOM TLS each connection's handshake runs in its association thread under the ACSE
timeout, so a slow or hostile client never holds up the accept loop; a connection whose
handshake fails is closed and logged (``event=tls_handshake_failed``) without becoming an
association.  Behind a TCP load balancer, a connection from a balancer first gives its PROXY
header (before any TLS, see ``proxy_protocol.py``); the caller it names is the peer from then on.

Extra associations beyond the configured limit are answered with an A-ASSOCIATE-RJ
(transient, local limit exceeded) rather than left hanging.  On stop, the listener
closes first; running associations get a grace period to finish, then are aborted
between messages, never in the middle of an acknowledged store.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import socket
import ssl
import threading
import time
from multiprocessing.sharedctypes import SynchronizedArray
from typing import TYPE_CHECKING

from pacs_node.receive import upper_layer as ul
from pacs_node.receive.policy import AssociationPolicy
from pacs_node.receive.proxy_protocol import ProxyGate
from pacs_node.receive.scp import AssociationHandler, InstanceSink
from pacs_node.tls import TLS_HANDSHAKE_RECORD, describe_failure, peer_subject

if TYPE_CHECKING:
    from pacs_node.monitoring.metrics import NodeMetrics

log = logging.getLogger(__name__)


def _peer_host(address: tuple) -> str:
    host = str(address[0])
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def open_listener(bind_address: str, port: int) -> socket.socket:
    """A listening TCP socket; several receiver processes may accept on it."""
    family = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((bind_address, port))
    listener.listen(128)
    return listener


class AssociationSlots:
    """Counts running associations against the limit, across receiver processes.

    ``counts`` lives in shared memory with one entry per receiver process, so the
    entry of a process that died can be cleared without guessing.
    """

    def __init__(self, limit: int, counts: SynchronizedArray | None = None, index: int = 0) -> None:
        self.limit = limit
        self.counts = counts if counts is not None else multiprocessing.get_context("spawn").Array("i", 1)
        self.index = index

    def acquire(self) -> bool:
        """Take a slot; ``False`` when the limit is reached."""
        with self.counts.get_lock():
            if sum(self.counts.get_obj()) >= self.limit:
                return False
            self.counts.get_obj()[self.index] += 1
            return True

    def release(self) -> None:
        with self.counts.get_lock():
            self.counts.get_obj()[self.index] -= 1


class StorageServer:
    """Accepts on a listening socket and serves associations until :meth:`stop`."""

    def __init__(
        self,
        listener: socket.socket,
        policy: AssociationPolicy,
        sink: InstanceSink,
        slots: AssociationSlots,
        *,
        max_pdu: int = 262144,
        acse_timeout_s: float = 30.0,
        network_timeout_s: float = 120.0,
        tls: ssl.SSLContext | None = None,
        metrics: NodeMetrics | None = None,
        proxy: ProxyGate | None = None,
    ) -> None:
        self.policy = policy
        #: Load balancers whose PROXY headers name the callers (``None``: every peer is itself).
        self.proxy = proxy
        #: Counts associations and C-STOREs (``None``: not counted).
        self.metrics = metrics
        self.tls = tls
        self.sink = sink
        self.slots = slots
        self.max_pdu = max_pdu
        self.acse_timeout_s = acse_timeout_s
        self.network_timeout_s = network_timeout_s
        self.contexts = ul.storage_contexts()
        self._listener = listener
        self._listener.settimeout(0.2)
        self.address = self._listener.getsockname()[:2]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[int, socket.socket] = {}
        self._threads: set[threading.Thread] = set()
        self._acceptor: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.address[1])

    def start(self) -> None:
        """Accept connections in a background thread."""
        self._acceptor = threading.Thread(target=self._accept_loop, name="scp-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        serial = 0
        while not self._stopping.is_set():
            try:
                conn, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                log.exception("event=accept_failed")
                time.sleep(0.1)
                continue
            serial += 1
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(
                target=self._serve, args=(conn, _peer_host(address), serial), name=f"assoc-{serial}", daemon=True
            )
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, conn: socket.socket, peer: str, serial: int) -> None:
        started = time.monotonic()
        with self._lock:
            self._active[serial] = conn
        sock: socket.socket | None
        try:
            conn.settimeout(self.acse_timeout_s)
            caller = peer if self.proxy is None else self.proxy.caller(
                conn, peer, serial, self.acse_timeout_s, self.metrics)
            sock = conn if caller is None or self.tls is None else self._secure(conn, caller, serial)
            if caller is None:
                outcome = "no association: no valid PROXY header"
            elif sock is None:
                outcome = "no association: TLS handshake failed"
                if self.metrics is not None:
                    self.metrics.association_rejected("tls_handshake_failed")
            else:
                outcome = self._associate_and_serve(sock, caller, serial)
        except Exception:  # never let one association take the listener down
            log.exception("event=association_error assoc=%d", serial)
            outcome = "error"
        finally:
            with self._lock:
                sock = self._active.pop(serial, conn)
                self._threads.discard(threading.current_thread())
            for opened in (sock, conn):  # conn is already closed when TLS wrapped it
                try:
                    opened.close()
                except OSError:
                    pass
        log.debug("event=association_closed assoc=%d outcome=%r seconds=%.2f", serial, outcome, time.monotonic() - started)

    def _secure(self, conn: socket.socket, peer: str, serial: int) -> ssl.SSLSocket | None:
        """The TLS handshake, under the ACSE timeout; ``None`` (and a WARNING) when it fails."""
        assert self.tls is not None
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except OSError as exc:
            log.debug("event=connection_lost_before_tls assoc=%d peer=%s error=%s", serial, peer, type(exc).__name__)
            return None
        if not first:  # a port check: connected and closed without a byte
            log.debug("event=connection_closed_before_tls assoc=%d peer=%s", serial, peer)
            return None
        if first[0] != TLS_HANDSHAKE_RECORD:
            reason = "plain DICOM, not TLS" if first[0] == ul.A_ASSOCIATE_RQ_TYPE else "not a TLS handshake"
            log.warning("event=tls_handshake_failed assoc=%d peer=%s reason=%r", serial, peer, reason)
            return None
        try:
            secure = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            with self._lock:
                self._active[serial] = secure
            secure.do_handshake()
        except OSError as exc:  # ssl.SSLError and timeouts included
            log.warning("event=tls_handshake_failed assoc=%d peer=%s reason=%r", serial, peer, describe_failure(exc))
            return None
        log.info(
            "event=tls_established assoc=%d pid=%d peer=%s version=%s cipher=%s client_cert=%r",
            serial, os.getpid(), peer, secure.version(), (secure.cipher() or ("-",))[0], peer_subject(secure),
        )
        return secure

    def _associate_and_serve(self, conn: socket.socket, peer: str, serial: int) -> str:
        """Read the A-ASSOCIATE-RQ, then hold a slot of the association limit until the end."""
        try:
            pdu_type, length = ul.read_pdu_header(conn)
            if pdu_type != ul.A_ASSOCIATE_RQ_TYPE or length > ul.MAX_ASSOCIATE_RQ_BYTES:
                conn.sendall(ul.abort_pdu(source=2, reason=2 if pdu_type != ul.A_ASSOCIATE_RQ_TYPE else 6))
                log.warning("event=association_aborted assoc=%d peer=%s reason=%s", serial, peer, "unexpected first PDU")
                if self.metrics is not None:
                    self.metrics.association_rejected("protocol_error")
                return "aborted before association"
            body = bytearray(length)
            ul.recv_exact(conn, memoryview(body))
        except (ul.PeerClosed, TimeoutError, OSError) as exc:
            return f"connection lost before association: {type(exc).__name__}"
        slot = self.slots.acquire()
        try:
            return self._negotiate_and_serve(conn, peer, serial, bytes(body), over_limit=not slot)
        except OSError as exc:
            return f"connection lost: {type(exc).__name__}"
        finally:
            if slot:
                self.slots.release()

    def _negotiate_and_serve(self, conn: socket.socket, peer: str, serial: int, body: bytes, over_limit: bool) -> str:
        try:
            association, reply, reason, calling, called = ul.negotiate(
                body, peer, self.policy, self.contexts, self.max_pdu, over_limit
            )
        except ul.ProtocolError as exc:
            conn.sendall(ul.abort_pdu(source=2, reason=0))
            log.warning("event=association_aborted assoc=%d peer=%s reason=%r", serial, peer, str(exc))
            if self.metrics is not None:
                self.metrics.association_rejected("protocol_error")
            return "aborted before association"
        conn.sendall(reply)
        if association is None:
            log.warning(
                "event=association_rejected assoc=%d peer=%s calling_ae=%s called_ae=%s reason=%s",
                serial, peer, calling, called, reason.name if reason else "",
            )
            if self.metrics is not None:
                self.metrics.association_rejected(reason.name.lower() if reason else "no_reason")
            return "rejected"
        log.info(
            "event=association_accepted assoc=%d peer=%s calling_ae=%s contexts=%d",
            serial, peer, calling, len(association.contexts),
        )
        if self.metrics is not None:
            self.metrics.associations_accepted.inc()
        conn.settimeout(self.network_timeout_s)
        handler = AssociationHandler(conn, association, self.sink, self.max_pdu, self._stopping, self.metrics)
        outcome = handler.run()
        log.info("event=association_ended assoc=%d calling_ae=%s stored=%d outcome=%r", serial, calling, handler.stored, outcome)
        return outcome

    def accepting(self) -> bool:
        """``True`` while the accept loop runs (the listener is up)."""
        return self._acceptor is not None and self._acceptor.is_alive() and not self._stopping.is_set()

    def active_associations(self) -> int:
        """How many associations are being served now."""
        with self._lock:
            return len(self._active)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let running associations finish for ``grace_s``, then abort them."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=2)
        self._listener.close()
        deadline = time.monotonic() + grace_s
        while self.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            remaining = list(self._active.values())
            threads = list(self._threads)
        for conn in remaining:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout=2)
