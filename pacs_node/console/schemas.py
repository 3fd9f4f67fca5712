"""What the console's pages and REST API show: one model per view, shared by both.

None of these carries a patient name or ID except :class:`PatientBlock`, which only an
admin gets, and only for one study.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from pacs_node.db.audit import Audited


class Me(BaseModel):
    name: str
    role: str
    #: Send it as ``X-CSRF-Token`` on state-changing calls made with the session cookie.
    csrf_token: str | None = None


class Overview(BaseModel):
    version: str
    node_name: str
    started_at: dt.datetime
    uptime_s: float
    #: ``None``: this process does not receive (``[node] roles``).
    listener_up: bool | None
    model: str
    model_loaded: bool
    studies_receiving: int
    studies_today: int
    queue_depth: int
    jobs_running: int
    jobs_failed_24h: int
    deliveries_retrying: int
    deliveries_failed: int
    paused_destinations: list[str]
    spool_free_bytes: int | None
    spool_min_free_bytes: int
    spool_warn_free_bytes: int


class DeliveryStatus(BaseModel):
    id: int
    job: int
    destination: str
    kinds: str
    state: str
    attempts: int
    next_attempt_at: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    last_error: str | None = None


class JobSummary(BaseModel):
    id: int
    state: str
    attempts: int
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    duration_s: float | None = None
    #: "analysed", "not analysable", "pass-through" (analysis off), "prior recheck" (the prior looked
    #: up again, nothing made), "analysed (re-report)" (new versions with the prior), or None while not done.
    outcome: str | None = None
    findings: int | None = None
    lung_rads: str | None = None
    model: str | None = None
    reason: str | None = None
    error: str | None = None
    timings_s: dict[str, float] = {}
    #: The prior lookup (``[priors]``): "found 2025-11-30 at pacs (240 images)", "none: ...",
    #: "unavailable: ..."; ``None`` when priors were not looked up.
    prior: str | None = None


class StudyRow(BaseModel):
    """A study in a list: internal id and numbers only."""

    id: int
    state: str
    series: int
    instances: int
    first_received_at: dt.datetime
    last_received_at: dt.datetime
    completed_at: dt.datetime | None = None
    receive_s: float
    job: JobSummary | None = None
    deliveries: dict[str, str]


class StudyList(BaseModel):
    items: list[StudyRow]
    total: int
    page: int
    per_page: int


class SeriesInfo(BaseModel):
    id: int
    modality: str
    series_number: int | None
    description: str
    instances: int
    purged_instances: int
    #: What the latest analysis did with this series: "chosen", "rejected" or None.
    analysis: str | None = None
    analysis_detail: str | None = None


class ReportObjectInfo(BaseModel):
    id: int
    job: int
    kind: str
    created_at: dt.datetime
    purged: bool


class PatientBlock(BaseModel):
    """Patient and study identifiers: admins only, one study at a time."""

    patient_name: str
    patient_id: str
    birth_date: str
    study_uid: str
    accession_number: str
    study_date: str
    description: str


class StudyDetail(BaseModel):
    study: StudyRow
    purged_at: dt.datetime | None = None
    series: list[SeriesInfo]
    jobs: list[JobSummary]
    objects: list[ReportObjectInfo]
    deliveries: list[DeliveryStatus]
    patient: PatientBlock | None = None


class DestinationInfo(BaseModel):
    name: str
    protocol: str
    address: str
    objects: list[str]
    #: "ok", "breaker open" (failing; probed until it answers) or "paused" (by hand).
    state: str
    paused_at: dt.datetime | None = None
    paused_by: str | None = None
    breaker_open_since: dt.datetime | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    pending: int = 0
    failed: int = 0
    last_sent_at: dt.datetime | None = None


class AuditList(BaseModel):
    items: list[Audited]
    total: int
    page: int
    per_page: int


class Event(BaseModel):
    at: str
    level: str
    logger: str
    message: str


class ActionResult(BaseModel):
    action: str
    target: str
    #: "ok", "refused" (nothing done, see message) or "failed".
    outcome: str
    message: str
