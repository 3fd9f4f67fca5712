"""``/metrics`` and ``/readyz``: for Prometheus and load balancers, so without login.

They reveal counts and the names of failing checks, no patient data.  The console binds
to 127.0.0.1 by default; expose it further only behind a firewall or a proxy that limits
who may scrape (docs/metrics.md).  ``/healthz`` (process alive) is in ``app.py``.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from pacs_node.console.context import NodeView
from pacs_node.monitoring.health import failing


def monitoring_router(view: NodeView) -> APIRouter:
    """The unauthenticated monitoring routes of ``view``'s console."""
    router = APIRouter(include_in_schema=False)

    @router.get("/metrics")
    def metrics() -> Response:
        if view.metrics is None:
            return Response("metrics are off\n", status_code=404, media_type="text/plain")
        return Response(view.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        if view.health is None:
            return JSONResponse({"status": "unknown", "failing": {"health": "no checks configured"}}, status_code=503)
        checks = view.health.readiness()
        problems = failing(checks)
        body = {"status": "not ready" if problems else "ready", "failing": problems,
                "checks": {name: problem or "ok" for name, problem in checks.items()}}
        return JSONResponse(body, status_code=503 if problems else 200)

    return router
