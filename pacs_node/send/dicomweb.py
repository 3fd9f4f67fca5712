"""DICOMweb over HTTP (httpx): a destination's client, failure classes, and the QIDO-RS reachability check.

The classes match the DIMSE side: what a later try may fix (connection refused, time-outs,
TLS failures, HTTP 408, 429 and 5xx) is *transient*; what it will not (other 4xx: bad
credentials, no such service, a request the server refuses) is *permanent*.
"""

from __future__ import annotations

import ssl
import time
from http import HTTPStatus
from typing import TYPE_CHECKING

import httpx

from pacs_node.config import DestinationTLS
from pacs_node.db.models import FailureKind
from pacs_node.send.echo import EchoError
from pacs_node.tls import client_context, describe_failure

if TYPE_CHECKING:
    from pacs_node.config import Destination

#: 4xx statuses a later try may get past: request time-out, too many requests.
_TRANSIENT_4XX = {HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.TOO_MANY_REQUESTS}


def open_client(destination: Destination, timeout_s: float) -> httpx.Client:
    """An HTTP client for a DICOMweb destination: its auth, TLS settings and time-out.

    Environment proxies and ``.netrc`` are not used (``trust_env=False``): what is sent where
    is what the config says.  Raises ``ValueError`` when a secret cannot be read now.
    """
    headers = {"User-Agent": "pacs-node"}
    auth: httpx.Auth | None = None
    if destination.auth is not None and destination.auth.type == "bearer":
        headers["Authorization"] = f"Bearer {destination.auth.secret('token')}"
    elif destination.auth is not None:
        auth = httpx.BasicAuth(destination.auth.username, destination.auth.secret("password"))
    verify: ssl.SSLContext | bool = False  # plain http://: no TLS to verify (redirects are not followed)
    if destination.url is not None and destination.url.startswith("https://"):
        verify = client_context(destination.tls or DestinationTLS())
    return httpx.Client(headers=headers, auth=auth, verify=verify, timeout=httpx.Timeout(timeout_s),
                        trust_env=False, follow_redirects=False)


def request_extensions(destination: Destination) -> dict[str, str]:
    """Per-request options: the TLS server name to verify when ``tls.server_hostname`` is set."""
    if destination.tls is not None and destination.tls.server_hostname:
        return {"sni_hostname": destination.tls.server_hostname}
    return {}


def classify_http(status: int) -> FailureKind | None:
    """``None`` for 2xx; else whether an HTTP status is worth retrying."""
    if 200 <= status < 300:
        return None
    if status >= 500 or status in _TRANSIENT_4XX:
        return FailureKind.TRANSIENT
    return FailureKind.PERMANENT


def describe_http(response: httpx.Response) -> str:
    """``HTTP 401 Unauthorized: …`` with a hint for the statuses an admin can act on; no body text."""
    status = response.status_code
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "unknown status"
    text = f"HTTP {status} {phrase}"
    if status == 401:
        return f"{text}: the server refused our credentials (check the destination's auth)"
    if status == 403:
        return f"{text}: our credentials are not allowed to do this"
    if status == 404:
        return f"{text}: no DICOMweb service at this url (check the destination's url)"
    if 300 <= status < 400:
        return f"{text}: redirected to {response.headers.get('location', '?')} (set url to the final address)"
    if retry_after := response.headers.get("retry-after"):
        return f"{text} (retry after {retry_after})"
    return text


def describe_transport(exc: httpx.TransportError) -> str:
    """A short reason for a request that got no HTTP answer (refused, timed out, TLS failed)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed: {describe_failure(cause)}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    return f"{type(exc).__name__}: connection failed or closed"


def classify_transport(exc: httpx.TransportError) -> FailureKind:
    """No answer is transient, except a URL this client cannot speak at all."""
    return FailureKind.PERMANENT if isinstance(exc, httpx.UnsupportedProtocol) else FailureKind.TRANSIENT


def qido_ping(destination: Destination, timeout_s: float) -> tuple[httpx.Response, float]:
    """QIDO-RS ``GET {url}/studies?limit=1``: the HTTP response (read) and the round-trip seconds.

    Raises :class:`EchoError` when no HTTP answer came (refused, timed out, TLS failed) or
    a secret cannot be read.
    """
    try:
        client = open_client(destination, timeout_s)
    except ValueError as exc:
        raise EchoError(str(exc)) from exc
    started = time.monotonic()
    with client:
        try:
            response = client.get(f"{destination.url}/studies", params={"limit": "1"},
                                  headers={"Accept": "application/dicom+json"},
                                  extensions=request_extensions(destination))
        except httpx.TransportError as exc:
            raise EchoError(describe_transport(exc)) from exc
    return response, time.monotonic() - started


def dicomweb_echo(destination: Destination, timeout_s: float) -> float:
    """The QIDO-RS check as ``pacs-node echo`` uses it: the seconds on a 2xx, else :class:`EchoError`."""
    response, seconds = qido_ping(destination, timeout_s)
    if classify_http(response.status_code) is not None:
        raise EchoError(describe_http(response))
    return seconds


def dicomweb_answers(destination: Destination, timeout_s: float) -> bool:
    """Whether a paused destination is back: any HTTP answer but 5xx and 429.

    A 401 or 404 counts as an answer: the server is up, and the deliveries that follow
    fail permanently with that reason instead of waiting behind the breaker.
    """
    try:
        response, _ = qido_ping(destination, timeout_s)
    except EchoError:
        return False
    return classify_http(response.status_code) != FailureKind.TRANSIENT
