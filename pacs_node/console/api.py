"""The REST API under ``/api/``: JSON for everything the pages show and do.

Authenticate with the session cookie (state-changing calls then need ``X-CSRF-Token``)
or ``Authorization: Bearer <token>`` from ``pacs-node user token NAME``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from pacs_node.console import actions, queries
from pacs_node.console.auth import Principal, api_admin, api_user
from pacs_node.console.context import NodeView
from pacs_node.console.schemas import (
    ActionResult, AuditList, DestinationInfo, Event, Me, Overview, StudyDetail, StudyList,
)
from pacs_node.db import audit

router = APIRouter(prefix="/api", tags=["console"])
User = Annotated[Principal, Depends(api_user)]
Admin = Annotated[Principal, Depends(api_admin)]


def _view(request: Request) -> NodeView:
    return request.app.state.view


@router.get("/me")
def me(user: User) -> Me:
    """Who is signed in, and the CSRF token to send with state-changing calls made with the session."""
    return Me(name=user.name, role=user.role.value, csrf_token=user.csrf or None)


@router.get("/overview")
def overview(request: Request, user: User) -> Overview:
    """Receiving now, studies today, queue, jobs, deliveries, paused destinations, spool space, model, uptime."""
    return queries.overview(_view(request))


@router.get("/studies")
def studies(
    request: Request, user: User,
    state: Annotated[str | None, Query(pattern="^(receiving|complete|purged)$")] = None,
    received_from: Annotated[dt.date | None, Query(alias="from")] = None,
    received_to: Annotated[dt.date | None, Query(alias="to")] = None,
    page: Annotated[int, Query(ge=1)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> StudyList:
    """Studies newest first (internal ids and numbers; no patient data), by state and day first received (UTC)."""
    return queries.studies(_view(request), state, received_from, received_to, page, per_page)


@router.get("/studies/{study_id}")
def study(request: Request, user: User, study_id: int) -> StudyDetail:
    """One study: series, jobs, objects, deliveries; the patient block for admins only."""
    found = queries.study(_view(request), study_id, with_patient=user.is_admin)
    if found is None:
        raise HTTPException(404, f"no study {study_id}")
    return found


@router.get("/destinations")
def destinations(request: Request, user: User) -> list[DestinationInfo]:
    """Configured destinations: breaker, manual pause, deliveries waiting and failed."""
    return queries.destinations(_view(request))


@router.get("/audit")
def audit_log(request: Request, user: User, page: Annotated[int, Query(ge=1)] = 1,
              per_page: Annotated[int, Query(ge=1, le=500)] = 100) -> AuditList:
    """Who did what, newest first."""
    rows, total = audit.recent(_view(request).engine, per_page, (page - 1) * per_page)
    return AuditList(items=rows, total=total, page=page, per_page=per_page)


@router.get("/config")
def config(request: Request, user: User) -> dict[str, Any]:
    """The effective configuration, secrets replaced by ``***``."""
    return queries.effective_config(_view(request))


@router.get("/events")
def events(request: Request, user: User, limit: Annotated[int, Query(ge=1, le=500)] = 200,
           level: Annotated[str, Query(pattern="^(INFO|WARNING|ERROR)$")] = "INFO") -> list[Event]:
    """The node's recent log records (INFO and above, newest first)."""
    return queries.recent_events(_view(request), limit, level)


#: HTTP status of an action's outcome: done, refused (nothing done; see message), failed (e.g. no echo answer).
_STATUS = {"ok": 200, "refused": 409, "failed": 502}


def _act(request: Request, response: Response, user: Principal, name: str, target: object) -> ActionResult:
    function, _ = actions.ACTIONS[name]
    try:
        result = function(_view(request), user.name, target)
    except actions.UnknownTarget as exc:
        raise HTTPException(404, str(exc)) from exc
    response.status_code = _STATUS[result.outcome]
    return result


@router.post("/studies/{study_id}/resend")
def resend(request: Request, response: Response, user: Admin, study_id: int) -> ActionResult:
    """Deliver the study's newest report to every destination again."""
    return _act(request, response, user, "resend", study_id)


@router.post("/studies/{study_id}/reanalyse")
def reanalyse(request: Request, response: Response, user: Admin, study_id: int) -> ActionResult:
    """Queue a new analysis job for the study."""
    return _act(request, response, user, "reanalyse", study_id)


@router.post("/deliveries/{delivery_id}/retry")
def retry(request: Request, response: Response, user: Admin, delivery_id: int) -> ActionResult:
    """Send a failed or retrying delivery now."""
    return _act(request, response, user, "retry", delivery_id)


@router.post("/destinations/{name}/pause")
def pause(request: Request, response: Response, user: Admin, name: str) -> ActionResult:
    """Hold deliveries to the destination until resumed."""
    return _act(request, response, user, "pause", name)


@router.post("/destinations/{name}/resume")
def resume(request: Request, response: Response, user: Admin, name: str) -> ActionResult:
    """Lift a manual pause."""
    return _act(request, response, user, "resume", name)


@router.post("/destinations/{name}/echo")
def echo(request: Request, response: Response, user: Admin, name: str) -> ActionResult:
    """C-ECHO (QIDO-RS for DICOMweb) the destination now."""
    return _act(request, response, user, "echo", name)
