"""Who is asking: signed session cookies with a CSRF token, API bearer tokens, login rate limits.

A session cookie holds the user's id and a CSRF token, signed with a key generated once
and kept in the database (``console_keys``); it is re-issued on every request, so it
expires after ``session_max_age_s`` idle.  The user is looked up on every request, so
disabling a user ends their sessions and tokens at once.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from fastapi import HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Engine

from pacs_node.db import audit, users
from pacs_node.db.models import Role

SESSION_COOKIE = "pacs_node_session"
#: The login form's CSRF token (double submit: this cookie and the form field must match).
LOGIN_COOKIE = "pacs_node_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Principal:
    """A signed-in user, and how they proved it (``session`` cookie or API ``token``)."""

    id: int
    name: str
    role: Role
    via: str
    csrf: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


class Sessions:
    """Issues and reads the signed session cookie."""

    def __init__(self, engine: Engine, max_age_s: float) -> None:
        self.engine = engine
        self.max_age_s = max_age_s

    @cached_property
    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(users.console_key(self.engine), salt="pacs-node console session")

    def issue(self, user_id: int, csrf: str | None = None) -> tuple[str, str]:
        """A cookie value for ``user_id`` and its CSRF token (a new one unless given)."""
        csrf = csrf or secrets.token_urlsafe(24)
        return self._serializer.dumps({"u": user_id, "c": csrf}), csrf

    def read(self, cookie: str) -> tuple[int, str] | None:
        """(user id, CSRF token) of a valid, unexpired cookie, else ``None``."""
        try:
            payload = self._serializer.loads(cookie, max_age=self.max_age_s)
            return int(payload["u"]), str(payload["c"])
        except (BadSignature, KeyError, TypeError, ValueError):
            return None


class LoginLimiter:
    """Failed logins per (user name, client address) in a sliding window; thread-safe."""

    def __init__(self, attempts: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures

    def retry_after(self, key: tuple[str, str]) -> int:
        """Seconds until ``key`` may try again (0: now)."""
        now = self.clock()
        with self._lock:
            failures = self._recent(key, now)
            if len(failures) < self.attempts:
                return 0
            return max(1, int(failures[0] + self.window_s - now + 1))

    def failed(self, key: tuple[str, str]) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) > 10_000:  # forget quiet keys rather than grow without bound
                for stale in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window_s]:
                    del self._failures[stale]
            self._recent(key, now).append(now)

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int, path: str = "/") -> None:
    """Set a console cookie: HttpOnly, SameSite=Strict, Secure under HTTPS (the console's TLS, or a proxy's)."""
    secure = request.app.state.view.settings.console.tls is not None or request.url.scheme == "https"
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="strict", secure=secure)


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    """Set the session cookie; it lives ``session_max_age_s`` from the last request."""
    set_cookie(request, response, SESSION_COOKIE, value, int(request.app.state.view.settings.console.session_max_age_s))


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def principal(request: Request) -> Principal | None:
    """The user behind ``Authorization: Bearer`` or the session cookie, else ``None``."""
    state = request.app.state
    engine: Engine = state.view.engine
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        account = users.user_for_token(engine, header[7:].strip())
        return None if account is None else Principal(account.id, account.name, account.role, "token")
    cookie = request.cookies.get(SESSION_COOKIE)
    session = state.sessions.read(cookie) if cookie else None
    if session is None:
        return None
    account = users.user_by_id(engine, session[0])
    if account is None:
        return None
    request.state.renew_session = session  # slide the idle expiry (see web.renew_session)
    return Principal(account.id, account.name, account.role, "session", session[1])


def csrf_ok(user: Principal, sent: str | None) -> bool:
    """Token requests need no CSRF token; session requests must send the session's."""
    return user.via == "token" or (bool(sent) and hmac.compare_digest(str(sent), user.csrf))


def audit_denied(request: Request, user: Principal, why: str) -> None:
    """Write a refused request to the audit log."""
    audit.record(request.app.state.view.engine, user.name, "forbidden", f"{request.method} {request.url.path}",
                 "denied", why)


def deny(request: Request, user: Principal, why: str) -> HTTPException:
    """Audit a refused API call and return the 403 to raise."""
    audit_denied(request, user, why)
    return HTTPException(403, why)


def api_user(request: Request) -> Principal:
    """Dependency: any signed-in user, else 401."""
    user = principal(request)
    if user is None:
        raise HTTPException(401, "sign in, or send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    return user


def api_admin(request: Request) -> Principal:
    """Dependency of every state-changing API call: an admin, with the CSRF header when using the session."""
    user = api_user(request)
    if not csrf_ok(user, request.headers.get(CSRF_HEADER)):
        raise deny(request, user, f"missing or wrong {CSRF_HEADER} header")
    if not user.is_admin:
        raise deny(request, user, "admins only")
    return user
