"""Reads of the database and the running node for the console; pages and API both use these."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence

from sqlalchemy import Connection, Select, func, select

from pacs_node import __version__
from pacs_node.console.context import NodeView
from pacs_node.config import redacted_database_url
from pacs_node.console.schemas import (
    DeliveryStatus, Event, DestinationInfo, JobSummary, Overview, PatientBlock, ReportObjectInfo, SeriesInfo, StudyDetail,
    StudyList, StudyRow,
)
from pacs_node.db.models import (
    Delivery, DeliveryState, DestinationHealth, Instance, Job, JobState, Patient, ReportObject, Series, Study,
    StudyState, utcnow,
)

#: Study states the list filters by: the two of the study, and "purged" (retention deleted its images).
STUDY_STATES = ("receiving", "complete", "purged")


def overview(view: NodeView) -> Overview:
    """The numbers on the overview page."""
    now = utcnow()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    with view.engine.connect() as c:
        count = lambda query: c.scalar(query) or 0  # noqa: E731
        receiving = count(select(func.count()).select_from(Study).where(Study.state == StudyState.RECEIVING))
        today = count(select(func.count()).select_from(Study).where(Study.first_received_at >= midnight))
        jobs = dict(c.execute(select(Job.state, func.count()).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
                              .group_by(Job.state)).all())
        failed = count(select(func.count()).select_from(Job).where(
            Job.state == JobState.FAILED, Job.finished_at >= now - dt.timedelta(days=1)))
        retrying = count(select(func.count()).select_from(Delivery).where(
            Delivery.state == DeliveryState.PENDING, Delivery.attempts > 0))
        undelivered = count(select(func.count()).select_from(Delivery).where(Delivery.state == DeliveryState.FAILED))
        paused = sorted(c.scalars(select(DestinationHealth.name).where(
            DestinationHealth.open_since.is_not(None) | DestinationHealth.paused_at.is_not(None))))
    try:
        free: int | None = view.guard.free_bytes()
    except OSError:
        free = None
    analysis = view.settings.analysis
    return Overview(
        version=__version__, node_name=view.settings.node.name, started_at=view.started_at,
        uptime_s=round((now - view.started_at).total_seconds(), 1), listener_up=None if view.listener_up is None else view.listener_up(),
        model=analysis.model if analysis.enabled else "none (analysis off: pass-through)",
        model_loaded=view.model_loaded(), studies_receiving=receiving, studies_today=today,
        queue_depth=jobs.get(JobState.QUEUED, 0), jobs_running=jobs.get(JobState.RUNNING, 0), jobs_failed_24h=failed,
        deliveries_retrying=retrying, deliveries_failed=undelivered, paused_destinations=paused,
        spool_free_bytes=free, spool_min_free_bytes=view.guard.min_free_bytes,
        spool_warn_free_bytes=view.guard.warn_free_bytes,
    )


def _prior(result: dict) -> str | None:
    """One line on the job's prior lookup, or ``None`` when there was none."""
    prior = result.get("prior")
    if not isinstance(prior, dict):
        return None
    if prior.get("status") == "found":
        date = prior.get("study_date") or "undated"
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 and date.isdigit() else date
        return f"found {date} at {prior.get('source') or '?'} ({prior.get('instances') or 0} images)"
    again = f"; looked up again at {prior['recheck_at']}" if prior.get("recheck_at") else ""
    return f"{prior.get('status', '?')}: {prior.get('reason') or 'no reason given'}{again}"


def job_summary(job) -> JobSummary:  # noqa: ANN001 - a Row of jobs
    """A job row with what its result document says (findings, Lung-RADS, model, timings)."""
    result = json.loads(job.result) if job.result else {}
    if result.get("step") == "pass-through":
        outcome = "pass-through"
    elif result.get("step") == "prior-recheck":
        outcome = "prior recheck"
    elif result:
        outcome = "analysed" if result.get("analysis_performed") else "not analysable"
        outcome += " (re-report)" if result.get("rereport") else ""
    else:
        outcome = None
    duration = ((job.finished_at - job.started_at).total_seconds()
                if job.finished_at and job.started_at else None)
    return JobSummary(
        id=job.id, state=job.state.value, attempts=job.attempts, created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, duration_s=duration, outcome=outcome,
        findings=result.get("findings") if result.get("analysis_performed") else None,
        lung_rads=result.get("lung_rads"), model=result.get("model"), reason=result.get("reason"), error=job.error,
        timings_s=result.get("timings_s") or {}, prior=_prior(result),
    )


def _study_rows(c: Connection, query: Select) -> list[StudyRow]:
    studies = c.execute(query).all()
    ids = [s.id for s in studies]
    jobs = {j.study_pk: j for j in c.execute(select(Job).where(Job.study_pk.in_(ids)).order_by(Job.id)).all()}
    sent: dict[int, dict[str, str]] = {}
    for d in c.execute(select(Job.study_pk, Delivery.destination, Delivery.state).join(Job, Job.id == Delivery.job_pk)
                       .where(Job.study_pk.in_(ids)).order_by(Delivery.id)).all():
        sent.setdefault(d.study_pk, {})[d.destination] = d.state.value  # the newest per destination
    return [
        StudyRow(
            id=s.id, state="purged" if s.purged_at else s.state.value, series=s.series, instances=s.instances,
            first_received_at=s.first_received_at, last_received_at=s.last_received_at, completed_at=s.completed_at,
            receive_s=round((s.last_received_at - s.first_received_at).total_seconds(), 1),
            job=job_summary(jobs[s.id]) if s.id in jobs else None, deliveries=sent.get(s.id, {}),
        )
        for s in studies
    ]


def _studies_query() -> Select:
    return (
        select(Study.id, Study.state, Study.purged_at, Study.first_received_at, Study.last_received_at,
               Study.completed_at, func.count(func.distinct(Series.id)).label("series"),
               func.count(Instance.id).label("instances"))
        .outerjoin(Series, Series.study_pk == Study.id)
        .outerjoin(Instance, Instance.series_pk == Series.id)
        .group_by(Study.id)
    )


def studies(view: NodeView, state: str | None = None, received_from: dt.date | None = None,
            received_to: dt.date | None = None, page: int = 1, per_page: int = 50) -> StudyList:
    """Studies newest first, filtered by state and by the day (UTC) they were first received."""
    where = []
    if state == "purged":
        where.append(Study.purged_at.is_not(None))
    elif state in ("receiving", "complete"):
        where += [Study.state == StudyState(state), Study.purged_at.is_(None)]
    if received_from is not None:
        where.append(Study.first_received_at >= dt.datetime.combine(received_from, dt.time(), dt.UTC))
    if received_to is not None:
        where.append(Study.first_received_at < dt.datetime.combine(received_to + dt.timedelta(days=1), dt.time(), dt.UTC))
    with view.engine.connect() as c:
        total = c.scalar(select(func.count()).select_from(Study).where(*where)) or 0
        rows = _study_rows(c, _studies_query().where(*where).order_by(Study.last_received_at.desc(), Study.id.desc())
                           .limit(per_page).offset((page - 1) * per_page))
    return StudyList(items=rows, total=total, page=page, per_page=per_page)


def _series(c: Connection, study_pk: int, result: dict) -> list[SeriesInfo]:
    rows = c.execute(
        select(Series.id, Series.series_uid, Series.modality, Series.series_number, Series.description,
               func.count(Instance.id).label("instances"),
               func.count(Instance.purged_at).label("purged"))
        .outerjoin(Instance, Instance.series_pk == Series.id)
        .where(Series.study_pk == study_pk).group_by(Series.id).order_by(Series.series_number, Series.id)
    ).all()
    role: dict[str, tuple[str, str]] = {}
    if result.get("step") == "pass-through" and result.get("series_uid"):
        role[result["series_uid"]] = ("chosen", "the CT series with the most instances (pass-through)")
    for chosen in result.get("series") or []:
        role[chosen["series_uid"]] = ("chosen", f"{chosen.get('outcome')}; {chosen.get('findings', 0)} finding(s)")
    for rejected in result.get("rejected_series") or []:
        role[rejected["series_uid"]] = ("rejected", rejected.get("reason", ""))
    return [SeriesInfo(id=r.id, modality=r.modality, series_number=r.series_number, description=r.description,
                       instances=r.instances, purged_instances=r.purged,
                       analysis=role.get(r.series_uid, (None, None))[0],
                       analysis_detail=role.get(r.series_uid, (None, None))[1]) for r in rows]


def study(view: NodeView, study_pk: int, with_patient: bool) -> StudyDetail | None:
    """One study in full; ``with_patient`` adds the identifiers (admins only)."""
    with view.engine.connect() as c:
        rows = _study_rows(c, _studies_query().where(Study.id == study_pk))
        if not rows:
            return None
        record = c.execute(select(Patient.patient_name, Patient.patient_id, Patient.birth_date, Study.study_uid,
                                  Study.accession_number, Study.study_date, Study.description, Study.purged_at)
                           .join(Patient, Patient.id == Study.patient_pk).where(Study.id == study_pk)).one()
        job_rows = c.execute(select(Job).where(Job.study_pk == study_pk).order_by(Job.id.desc())).all()
        jobs = [job_summary(j) for j in job_rows]
        newest_result = next((json.loads(j.result) for j in job_rows if j.result), {})
        series = _series(c, study_pk, newest_result)
        job_ids = [j.id for j in job_rows]
        objects = [ReportObjectInfo(id=o.id, job=o.job_pk, kind=o.kind.value, created_at=o.created_at,
                                    purged=o.purged_at is not None)
                   for o in c.execute(select(ReportObject).where(ReportObject.job_pk.in_(job_ids))
                                      .order_by(ReportObject.id)).all()]
        sent = deliveries_of(c, [Delivery.job_pk.in_(job_ids)])
    patient = PatientBlock(**{k: v for k, v in record._mapping.items() if k != "purged_at"}) if with_patient else None
    return StudyDetail(study=rows[0], purged_at=record.purged_at, series=series, jobs=jobs, objects=objects,
                       deliveries=sent, patient=patient)


def deliveries_of(c: Connection, where: Sequence) -> list[DeliveryStatus]:
    """Deliveries matching ``where``, newest first."""
    return [
        DeliveryStatus(id=d.id, job=d.job_pk, destination=d.destination, kinds=d.kinds, state=d.state.value,
                       attempts=d.attempts, next_attempt_at=d.next_attempt_at if d.state == DeliveryState.PENDING
                       else None, sent_at=d.sent_at, last_error=d.last_error)
        for d in c.execute(select(Delivery).where(*where).order_by(Delivery.id.desc())).all()
    ]


def destinations(view: NodeView) -> list[DestinationInfo]:
    """Every configured destination with its breaker, pause and delivery counts."""
    with view.engine.connect() as c:
        health = {h.name: h for h in c.execute(select(DestinationHealth)).all()}
        counts = {(r.destination, r.state): r.n for r in c.execute(
            select(Delivery.destination, Delivery.state, func.count().label("n"))
            .group_by(Delivery.destination, Delivery.state)).all()}
        last_sent = dict(c.execute(select(Delivery.destination, func.max(Delivery.sent_at))
                                   .group_by(Delivery.destination)).all())
    shown = []
    for d in view.settings.destinations:
        h = health.get(d.name)
        state = ("paused" if h and h.paused_at else "breaker open" if h and h.open_since else "ok")
        shown.append(DestinationInfo(
            name=d.name, protocol=d.protocol,
            address=d.url if d.protocol == "dicomweb" else f"{d.ae_title}@{d.host}:{d.port}",  # type: ignore[arg-type]
            objects=list(d.objects), state=state, paused_at=h.paused_at if h else None,
            paused_by=h.paused_by if h else None, breaker_open_since=h.open_since if h else None,
            consecutive_failures=h.consecutive_failures if h else 0, last_error=h.last_error if h else None,
            pending=counts.get((d.name, DeliveryState.PENDING), 0) + counts.get((d.name, DeliveryState.SENDING), 0),
            failed=counts.get((d.name, DeliveryState.FAILED), 0), last_sent_at=last_sent.get(d.name),
        ))
    return shown


def effective_config(view: NodeView) -> dict:
    """The running configuration with secrets replaced: the database password, destination credentials."""
    effective = view.settings.model_dump(mode="json")
    effective["storage"]["database_url"] = redacted_database_url(view.settings.storage.database_url)
    s3 = effective["storage"].get("s3")
    if isinstance(s3, dict):
        s3.update({k: "***" for k in ("access_key_id", "secret_access_key") if s3.get(k) is not None})
    for destination in effective.get("destinations", []):
        auth = destination.get("auth")
        if isinstance(auth, dict):
            destination["auth"] = {k: ("***" if k in ("token", "password") and v is not None else v)
                                   for k, v in auth.items()}
    return effective


def recent_events(view: NodeView, limit: int = 200, min_level: str = "INFO") -> list[Event]:
    """The node's newest log records at ``min_level`` or above, newest first."""
    if view.events is None:
        return []
    level = logging.getLevelName(min_level.upper())
    rows = view.events.newest(limit, level if isinstance(level, int) else logging.INFO)
    return [Event(at=at, level=lvl, logger=name, message=message) for at, lvl, name, message in rows]
