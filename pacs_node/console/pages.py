"""The console's HTML pages: server-rendered Jinja templates and plain forms, no JavaScript.

Every page needs a session (else a redirect to ``/login``); every form that changes
something carries the session's CSRF token, and actions go through a confirmation page.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from pacs_node.console import actions, queries
from pacs_node.console.auth import (
    CSRF_FIELD, LOGIN_COOKIE, SESSION_COOKIE, Principal, audit_denied, client_address, csrf_ok, principal, set_cookie,
    set_session_cookie,
)
from pacs_node.console.formatting import FILTERS
from pacs_node.db import audit, users

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(files("pacs_node.console") / "templates"))
templates.env.filters.update(FILTERS)


class LoginRequired(Exception):
    """No session: the page redirects to the login form, coming back to ``next_path`` after."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PageError(Exception):
    """A page answers with an error page (403, 404, 400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def page_user(request: Request) -> Principal:
    """Dependency of every page: the signed-in user (session only), else off to /login."""
    user = principal(request)
    if user is None or user.via != "session":
        query = f"?{request.url.query}" if request.url.query else ""
        raise LoginRequired(request.url.path + query)
    return user


User = Annotated[Principal, Depends(page_user)]


def render(request: Request, template: str, user: Principal | None, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from ``templates/`` with the user and their CSRF token."""
    return templates.TemplateResponse(request, template, {"user": user, "csrf_field": CSRF_FIELD, **context},
                                      status_code=status)


def _local(path: str | None) -> str:
    """``path`` if it stays on this site, else ``/`` (no open redirect after login)."""
    return path if path and path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


@router.get("/static/console.css")
def stylesheet() -> Response:
    return Response((files("pacs_node.console") / "static" / "console.css").read_text(), media_type="text/css",
                    headers={"Cache-Control": "max-age=3600"})


def _login_page(request: Request, status: int = 200, token: str | None = None, **context: Any) -> HTMLResponse:
    """The login form with its CSRF token (kept in a cookie the POST must send back)."""
    token = token or secrets.token_urlsafe(24)
    response = render(request, "login.html", None, status, login_csrf=token, **context)
    set_cookie(request, response, LOGIN_COOKIE, token, 3600, path="/login")
    return response


@router.get("/login")
def login_form(request: Request, next: str = "/") -> Response:  # noqa: A002 - the query parameter's name
    if principal(request) is not None:
        return RedirectResponse(_local(next), 303)
    return _login_page(request, next=_local(next))


@router.post("/login")
def login(request: Request, name: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
          next: Annotated[str, Form()] = "/", csrf_token: Annotated[str, Form()] = "") -> Response:  # noqa: A002
    view = request.app.state.view
    address = client_address(request)
    token = request.cookies.get(LOGIN_COOKIE, "")
    if not token or not hmac.compare_digest(token, csrf_token):
        return _login_page(request, 403, next=_local(next), name=name,
                           error="The sign-in form had expired; please sign in again.")
    key = (name.strip().lower()[:64], address)
    limiter = request.app.state.limiter
    wait = limiter.retry_after(key)
    if wait:
        audit.record(view.engine, name[:64] or "-", "login", "", "rate-limited", f"from {address}")
        response = _login_page(request, 429, token, next=_local(next), name=name,
                               error=f"Too many failed attempts; try again in {wait} s.")
        response.headers["Retry-After"] = str(wait)
        return response
    account = users.authenticate(view.engine, name, password)
    if account is None:
        limiter.failed(key)
        audit.record(view.engine, name[:64] or "-", "login", "", "refused", f"from {address}")
        return _login_page(request, 401, token, next=_local(next), name=name,
                           error="Wrong user name or password, or the account is disabled.")
    limiter.succeeded(key)
    audit.record(view.engine, account.name, "login", "", "ok", f"from {address}")
    cookie, _ = request.app.state.sessions.issue(account.id)
    response = RedirectResponse(_local(next), 303)
    set_session_cookie(request, response, cookie)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, user: User, csrf_token: Annotated[str, Form()] = "") -> Response:
    if not csrf_ok(user, csrf_token):
        audit_denied(request, user, "logout without the CSRF token")
        raise PageError(403, "The form was missing its security token; reload the page and try again.")
    audit.record(request.app.state.view.engine, user.name, "logout", "", "ok")
    request.state.renew_session = None
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
def overview(request: Request, user: User) -> Response:
    view = request.app.state.view
    return render(request, "overview.html", user, overview=queries.overview(view), page="overview")


@router.get("/studies")
def studies(request: Request, user: User, state: str = "", received_from: Annotated[str, Query(alias="from")] = "",
            received_to: Annotated[str, Query(alias="to")] = "", page: Annotated[int, Query(ge=1)] = 1) -> Response:
    try:
        start = dt.date.fromisoformat(received_from) if received_from else None
        end = dt.date.fromisoformat(received_to) if received_to else None
    except ValueError as exc:
        raise PageError(400, "Dates are YYYY-MM-DD.") from exc
    chosen = state if state in queries.STUDY_STATES else None
    listing = queries.studies(request.app.state.view, chosen, start, end, page, 50)
    return render(request, "studies.html", user, listing=listing, states=queries.STUDY_STATES, state=chosen or "",
                  received_from=received_from, received_to=received_to, page="studies")


@router.get("/studies/{study_id}")
def study(request: Request, user: User, study_id: int) -> Response:
    found = queries.study(request.app.state.view, study_id, with_patient=user.is_admin)
    if found is None:
        raise PageError(404, f"No study {study_id}.")
    return render(request, "study.html", user, detail=found, page="studies")


@router.get("/destinations")
def destinations(request: Request, user: User) -> Response:
    return render(request, "destinations.html", user, destinations=queries.destinations(request.app.state.view),
                  page="destinations")


@router.get("/audit")
def audit_log(request: Request, user: User, page: Annotated[int, Query(ge=1)] = 1) -> Response:
    rows, total = audit.recent(request.app.state.view.engine, 100, (page - 1) * 100)
    return render(request, "audit.html", user, rows=rows, total=total, number=page, per_page=100, page="audit")


@router.get("/events")
def events(request: Request, user: User, level: str = "INFO") -> Response:
    level = level if level in ("INFO", "WARNING", "ERROR") else "INFO"
    return render(request, "events.html", user, events=queries.recent_events(request.app.state.view, 300, level),
                  level=level, collected=request.app.state.view.events is not None, page="events")


@router.get("/config")
def config(request: Request, user: User) -> Response:
    return render(request, "config.html", user, config=queries.effective_config(request.app.state.view),
                  page="config")


@router.post("/actions/{kind}")
def act(request: Request, user: User, kind: str, target: Annotated[str, Form()],
        csrf_token: Annotated[str, Form()] = "", confirmed: Annotated[str, Form()] = "",
        back: Annotated[str, Form()] = "/") -> Response:
    """An admin action: the first POST shows what will happen, the confirmed one does it."""
    if not csrf_ok(user, csrf_token):
        audit_denied(request, user, f"{kind} without the CSRF token")
        raise PageError(403, "The form was missing its security token; reload the page and try again.")
    if not user.is_admin:
        audit_denied(request, user, f"{kind}: admins only")
        raise PageError(403, "Only admins can do this.")
    if kind not in actions.ACTIONS:
        raise PageError(404, f"No action {kind!r}.")
    function, parse = actions.ACTIONS[kind]
    try:
        parsed = parse(target)
    except ValueError as exc:
        raise PageError(400, f"Bad target {target!r}.") from exc
    if confirmed != "yes":
        return render(request, "confirm.html", user, kind=kind, target=target, back=_local(back))
    try:
        result = function(request.app.state.view, user.name, parsed)
    except actions.UnknownTarget as exc:
        raise PageError(404, str(exc)) from exc
    return render(request, "result.html", user, result=result, back=_local(back))
