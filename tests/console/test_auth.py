"""Console logins: pages need a session, the API needs credentials, CSRF, rate limits, expiry."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from pacs_node.console.auth import SESSION_COOKIE, LoginLimiter
from pacs_node.db import users
from pacs_node.db.models import AuditEntry
from tests.console.conftest import ADMIN, VIEWER, Console, post_login

PAGES = ["/", "/studies", "/studies/1", "/destinations", "/audit", "/events", "/config"]
API_GETS = ["/api/me", "/api/overview", "/api/studies", "/api/studies/1", "/api/destinations", "/api/audit",
            "/api/config", "/api/events"]
API_POSTS = ["/api/studies/1/resend", "/api/studies/1/reanalyse", "/api/deliveries/2/retry",
             "/api/destinations/pacs/pause", "/api/destinations/pacs/resume", "/api/destinations/pacs/echo"]


def _audit(console: Console) -> list[tuple[str, str, str, str]]:
    with console.engine.connect() as connection:
        return [(r.actor, r.action, r.target, r.outcome)
                for r in connection.execute(select(AuditEntry).order_by(AuditEntry.id)).all()]


@pytest.mark.parametrize("path", PAGES)
def test_no_page_without_login(console: Console, path: str) -> None:
    response = console.client.get(path, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/login?next={path}"


def test_page_actions_without_login_go_to_the_login(console: Console) -> None:
    response = console.client.post("/actions/resend", data={"target": "1"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


@pytest.mark.parametrize("path", API_GETS)
def test_api_without_credentials_is_401(console: Console, path: str) -> None:
    response = console.client.get(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", API_POSTS)
def test_api_actions_without_credentials_are_401(console: Console, path: str) -> None:
    assert console.client.post(path).status_code == 401
    assert console.client.post(path, headers={"Authorization": "Bearer pnt_not-a-token"}).status_code == 401


def test_login_sets_a_strict_http_only_cookie_and_returns_to_the_page(console: Console) -> None:
    response = post_login(console.client, {"name": ADMIN[0], "password": ADMIN[1], "next": "/studies"},
                                   follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/studies"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert "Max-Age=28800" in cookie
    assert console.client.get("/studies").status_code == 200
    assert ("ada", "login", "", "ok") in _audit(console)


def test_login_form_needs_its_csrf_token(console: Console) -> None:
    refused = console.client.post("/login", data={"name": ADMIN[0], "password": ADMIN[1]}, follow_redirects=False)
    assert refused.status_code == 403 and SESSION_COOKIE not in refused.headers.get("set-cookie", "")
    console.client.get("/login")  # the cookie is set, but the field must match it
    wrong = console.client.post("/login", data={"name": ADMIN[0], "password": ADMIN[1], "csrf_token": "forged"},
                                follow_redirects=False)
    assert wrong.status_code == 403
    login_cookie = console.client.get("/login").headers["set-cookie"]
    assert "HttpOnly" in login_cookie and "SameSite=strict" in login_cookie and "Path=/login" in login_cookie
    assert console.client.get("/api/me").status_code == 401


def test_login_never_redirects_off_site(console: Console) -> None:
    response = post_login(console.client, {"name": ADMIN[0], "password": ADMIN[1],
                                                    "next": "//evil.example/"}, follow_redirects=False)
    assert response.headers["location"] == "/"


def test_wrong_password_and_unknown_user_are_refused_and_audited(console: Console) -> None:
    assert post_login(console.client, {"name": ADMIN[0], "password": "wrong-password"}).status_code == 401
    assert post_login(console.client, {"name": "nobody", "password": "whatever-pw"}).status_code == 401
    assert console.client.get("/api/me").status_code == 401
    assert [a for a in _audit(console) if a[1] == "login"] == [("ada", "login", "", "refused"),
                                                              ("nobody", "login", "", "refused")]


def test_logins_are_rate_limited_per_name_and_address(console: Console) -> None:
    for _ in range(3):  # login_attempts = 3
        assert post_login(console.client, {"name": ADMIN[0], "password": "wrong-password"}).status_code == 401
    blocked = post_login(console.client, {"name": ADMIN[0], "password": ADMIN[1]}, follow_redirects=False)
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert SESSION_COOKIE not in blocked.headers.get("set-cookie", "")
    assert ("ada", "login", "", "rate-limited") in _audit(console)
    # another name from the same address is not held up
    console.login(VIEWER)


def test_limiter_window_slides() -> None:
    now = [0.0]
    limiter = LoginLimiter(2, 60, clock=lambda: now[0])
    key = ("ada", "10.0.0.1")
    limiter.failed(key)
    limiter.failed(key)
    assert limiter.retry_after(key) == 61
    now[0] = 60.5
    assert limiter.retry_after(key) == 0
    limiter.failed(key)
    limiter.succeeded(key)
    assert limiter.retry_after(key) == 0


def test_logout_needs_the_csrf_token_and_ends_the_session(console: Console) -> None:
    csrf = console.login(ADMIN)
    assert console.client.post("/logout", follow_redirects=False).status_code == 403
    assert console.client.get("/api/me").status_code == 200
    response = console.client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert console.client.get("/", follow_redirects=False).status_code == 303
    assert console.client.get("/api/me").status_code == 401


def test_session_expires_after_idle_time(console: Console, monkeypatch: pytest.MonkeyPatch) -> None:
    import itsdangerous.timed

    console.login(VIEWER)
    assert console.client.get("/api/me").status_code == 200
    later = itsdangerous.timed.time.time() + console.view.settings.console.session_max_age_s + 5

    class Clock:
        @staticmethod
        def time() -> float:
            return later

    monkeypatch.setattr(itsdangerous.timed, "time", Clock)
    assert console.client.get("/api/me").status_code == 401
    assert console.client.get("/", follow_redirects=False).status_code == 303


def test_forged_cookie_is_ignored(console: Console) -> None:
    console.client.cookies.set(SESSION_COOKIE, "eyJ1IjoxLCJjIjoieCJ9.forged.signature")
    assert console.client.get("/api/me").status_code == 401


def test_csrf_token_required_for_session_api_calls_not_for_tokens(console: Console) -> None:
    csrf = console.login(ADMIN)
    missing = console.client.post("/api/destinations/pacs/pause")
    assert missing.status_code == 403 and "X-CSRF-Token" in missing.json()["detail"]
    assert console.client.post("/api/destinations/pacs/pause", headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert console.client.post("/api/destinations/pacs/pause", headers={"X-CSRF-Token": csrf}).status_code == 200
    fresh = console.fresh_client()
    bearer = {"Authorization": f"Bearer {console.tokens['admin']}"}
    assert fresh.post("/api/destinations/pacs/resume", headers=bearer).status_code == 200
    assert ("ada", "forbidden", "POST /api/destinations/pacs/pause", "denied") in _audit(console)


def test_form_actions_need_the_csrf_token(console: Console) -> None:
    console.login(ADMIN)
    response = console.client.post("/actions/pause", data={"target": "pacs", "confirmed": "yes"})
    assert response.status_code == 403
    assert "security token" in response.text
    assert not [a for a in _audit(console) if a[1] == "pause"]


def test_disabling_a_user_ends_sessions_and_tokens(console: Console) -> None:
    console.login(ADMIN)
    users.disable_user(console.engine, ADMIN[0])
    assert console.client.get("/api/me").status_code == 401
    bearer = {"Authorization": f"Bearer {console.tokens['admin']}"}
    assert console.fresh_client().get("/api/me", headers=bearer).status_code == 401
    assert post_login(console.fresh_client(), {"name": ADMIN[0], "password": ADMIN[1]}).status_code == 401


def test_token_gives_api_access_but_no_pages(console: Console) -> None:
    bearer = {"Authorization": f"Bearer {console.tokens['viewer']}"}
    assert console.client.get("/api/me", headers=bearer).json() == {"name": "vic", "role": "viewer", "csrf_token": None}
    assert console.client.get("/", headers=bearer, follow_redirects=False).status_code == 303
