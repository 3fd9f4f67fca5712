"""Adds the logins, pages and REST API to the console's FastAPI app."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.middleware.base import RequestResponseEndpoint

from pacs_node.console import api, pages
from pacs_node.console.auth import LoginLimiter, Sessions, set_session_cookie


def install(app: FastAPI) -> None:
    """Route ``/api/*`` and the pages on ``app`` (whose ``state.view`` is the running node)."""
    console = app.state.view.settings.console
    app.state.sessions = Sessions(app.state.view.engine, console.session_max_age_s)
    app.state.limiter = LoginLimiter(console.login_attempts, console.login_window_s)
    app.include_router(api.router)
    app.include_router(pages.router)

    @app.exception_handler(pages.LoginRequired)
    def _to_login(request: Request, exc: pages.LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='/')}", 303)

    @app.exception_handler(pages.PageError)
    def _error_page(request: Request, exc: pages.PageError) -> Response:
        return pages.render(request, "error.html", pages.principal(request), exc.status, message=exc.message)

    @app.middleware("http")
    async def _renew_session(request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Re-issue the session cookie on each signed-in request, so it expires after idle time only."""
        response = await call_next(request)
        session = getattr(request.state, "renew_session", None)
        if session is not None:
            cookie, _ = app.state.sessions.issue(*session)
            set_session_cookie(request, response, cookie)
        return response
