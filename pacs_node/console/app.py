"""The console's ASGI application: every route the console port serves."""

from __future__ import annotations

from fastapi import FastAPI

from pacs_node import __version__
from pacs_node.console.context import NodeView
from pacs_node.console.monitoring import monitoring_router
from pacs_node.console.web import install as install_console


def create_app(view: NodeView) -> FastAPI:
    """The console for ``view``: health checks, metrics, REST API and pages."""
    app = FastAPI(title="pacs-node console", version=__version__, openapi_url="/api/openapi.json",
                  docs_url=None, redoc_url=None)
    app.state.view = view
    install_console(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    app.include_router(monitoring_router(view))  # /metrics, /readyz

    return app
