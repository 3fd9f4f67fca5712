"""DICOM TLS (PS3.15 Annex B, BCP 195 profile): SSL contexts for receiving and sending.

Contexts are built from the ``[node.tls]`` section and a destination's ``tls`` table; every
file problem becomes a :class:`TLSConfigError` that names the key and the file, so a bad
certificate stops start-up (and ``check-config``) with a sentence, not a traceback.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pacs_node.config import DestinationTLS, NodeTLS

VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: TLS 1.2 suites of BCP 195 (RFC 9325): forward secrecy and AEAD only.  TLS 1.3 suites are all allowed.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL"
#: First byte of a TLS handshake record; 0x01 is a plain DICOM A-ASSOCIATE-RQ.
TLS_HANDSHAKE_RECORD = 0x16


class TLSConfigError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the key and the file."""


def _readable(key: str, path: Path) -> str:
    if not path.is_file():
        raise TLSConfigError(f"{key} {path}: no such file")
    if not os.access(path, os.R_OK):
        raise TLSConfigError(f"{key} {path}: not readable by this user")
    return str(path)


def _encrypted_key(key_file: Path) -> str:
    raise TLSConfigError(
        f"key_file {key_file}: the private key is encrypted; pacs-node needs an unencrypted PEM key "
        "(protect it with file permissions, e.g. chmod 600)"
    )


def _load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    cert, key = _readable("cert_file", cert_file), _readable("key_file", key_file)
    try:
        context.load_cert_chain(cert, key, password=lambda: _encrypted_key(key_file))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(f"key_file {key_file} is not the private key of cert_file {cert_file}") from exc
        raise TLSConfigError(
            f"cert_file {cert_file} / key_file {key_file}: expected a PEM certificate (chain) and a PEM private key "
            f"({exc.reason or exc})"
        ) from exc


def _load_ca(context: ssl.SSLContext, ca_file: Path) -> None:
    try:
        context.load_verify_locations(cafile=_readable("ca_file", ca_file))
    except ssl.SSLError as exc:
        raise TLSConfigError(f"ca_file {ca_file}: no PEM CA certificate in it ({exc.reason or exc})") from exc


def check_certificate_pair(cert_file: Path, key_file: Path) -> None:
    """Raise :class:`TLSConfigError` naming the file unless it is a readable PEM certificate and its key."""
    _load_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_file, key_file)


def server_context(config: NodeTLS) -> ssl.SSLContext:
    """The listener's context: our certificate, and the CAs whose client certificates we accept."""
    if config.require_client_cert and config.ca_file is None:
        raise TLSConfigError("require_client_cert = true needs ca_file: the CA certificates that sign the callers' certificates")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[config.min_version]
    context.set_ciphers(BCP195_CIPHERS)
    _load_chain(context, config.cert_file, config.key_file)
    if config.ca_file is not None:
        _load_ca(context, config.ca_file)
    if config.require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_OPTIONAL if config.ca_file is not None else ssl.CERT_NONE
    return context


class _ReportingSocket(ssl.SSLSocket):
    """Keeps why TLS failed on its context, since pynetdicom only logs it.

    With TLS 1.3 a server refuses our client certificate after our side of the handshake
    is done, so its alert arrives on the first read: reads and writes are watched too.
    """

    def _record(self, exc: OSError, after_handshake: bool = False) -> None:
        closed = isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError))
        if getattr(self.context, "tls_failure", None) is not None and (closed or not self.context.tls_closed):
            return  # keep the first reason, unless it was only "closed" and this one says why
        reason = describe_failure(exc)
        if after_handshake and closed:
            reason = "the peer closed the connection after the handshake (does it want a client certificate, or not trust ours?)"
        self.context.tls_failure, self.context.tls_closed = reason, closed  # type: ignore[attr-defined]

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as exc:
            self._record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._record(exc, after_handshake=True)
            raise

    def send(self, data: bytes, flags: int = 0) -> int:
        try:
            return super().send(data, flags)
        except ssl.SSLError as exc:
            self._record(exc, after_handshake=True)
            raise


def client_context(config: DestinationTLS) -> ssl.SSLContext:
    """A context for calling a TLS destination; :func:`tls_failure` says why a call failed."""
    if (config.cert_file is None) != (config.key_file is None):
        raise TLSConfigError("cert_file and key_file go together (our client certificate and its key)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the peer and its host name
    context.minimum_version = VERSIONS[config.min_version]
    context.set_ciphers(BCP195_CIPHERS)
    if config.ca_file is not None:
        _load_ca(context, config.ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.cert_file is not None and config.key_file is not None:
        _load_chain(context, config.cert_file, config.key_file)
    context.sslsocket_class = _ReportingSocket
    context.tls_failure, context.tls_closed = None, False  # type: ignore[attr-defined]
    return context


def client_tls_args(config: DestinationTLS | None, host: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for a destination (``None``: plain TCP)."""
    if config is None:
        return None
    return client_context(config), config.server_hostname or host


def tls_failure(tls_args: tuple[ssl.SSLContext, str] | None) -> str | None:
    """Why TLS failed on a connection made with ``tls_args``, if it did."""
    return getattr(tls_args[0], "tls_failure", None) if tls_args else None


def describe_failure(exc: BaseException) -> str:
    """A short reason for a failed handshake, without anything from inside the connection."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "connection closed during the handshake"
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or type(exc).__name__).lower().replace("_", " ")
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__


def peer_subject(sock: ssl.SSLSocket) -> str:
    """The common name of the peer's certificate, or ``-`` when it sent none."""
    certificate = sock.getpeercert() or {}
    for rdn in certificate.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return "-"
