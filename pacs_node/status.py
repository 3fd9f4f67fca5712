"""What ``pacs-node status`` prints: recent studies and their newest job."""

from __future__ import annotations

import json
import shutil

from sqlalchemy import Engine, Row, func, select

from pacs_node.config import StorageConfig
from pacs_node.db.models import (
    Delivery, DeliveryState, DestinationHealth, Instance, Job, JobState, PriorRetrieval, Series, Study,
)
from pacs_node.db.priors import prior_counts
from pacs_node.db.retention import spool_usage


def _job_summary(job: Row | None) -> str:
    if job is None:
        return "-"
    summary = f"#{job.id} {job.state.value}"
    if job.state == JobState.DONE and job.result:
        result = json.loads(job.result)
        if result.get("step") == "pass-through":
            summary += " (pass-through: no analysis performed)"
        elif result.get("step") == "prior-recheck":
            summary += f": prior looked up again, not re-reported ({str(result.get('reason', ''))[:60]})"
        elif result.get("analysis_performed"):
            summary += f": {result.get('findings', 0)} nodule(s), Lung-RADS {result.get('lung_rads', '?')}"
            if result.get("rereport"):
                summary += " (re-report with the prior)"
        else:
            summary += f": not analysable ({str(result.get('reason', ''))[:60]})"
    if job.error:
        summary += f": {job.error[:80]}"
    return summary


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TB"


def _spool_lines(engine: Engine, storage: StorageConfig | None) -> list[str]:
    usage = spool_usage(engine)
    lines = []
    if storage is not None:
        try:
            free = _size(shutil.disk_usage(storage.spool_dir).free)
        except OSError:
            free = "unknown (spool folder missing)"
        warn = f"warn below {storage.warn_free_mb} MB" if storage.warn_free_mb else "no warning level"
        refuse = (f"C-STORE refused and jobs wait below {storage.min_free_mb} MB" if storage.min_free_mb
                  else "no free-space minimum")
        lines.append(f"spool: {free} free ({warn}, {refuse})")
    lines.append(f"received files: {usage.instances} instances, {_size(usage.instance_bytes)} used; "
                 f"retention purged {usage.purged_studies} studies ({usage.purged_instances} files, "
                 f"{_size(usage.purged_bytes)})")
    return lines


def _prior_lines(engine: Engine) -> list[str]:
    """How many studies had a prior (none before the first prior lookup, e.g. with ``[priors]`` off)."""
    counts = prior_counts(engine)
    if not any(counts.values()):
        return []
    again = f" ({counts['rechecking']} to be looked up again)" if counts["rechecking"] else ""
    return [f"priors: {counts['found']} studies had a prior, {counts['none']} had none, "
            f"{counts['unavailable']} could not be looked up{again}; {counts['retrieved']} studies fetched as priors "
            "(kept, not analysed)"]


def render_status(engine: Engine, limit: int = 20, storage: StorageConfig | None = None) -> str:
    """A table of the ``limit`` most recently received studies (no patient data), after the
    spool's free space (with ``storage``) and what it holds."""
    with engine.connect() as connection:
        studies = connection.execute(
            select(
                Study.id,
                Study.state,
                Study.purged_at,
                Study.last_received_at,
                Study.study_uid.in_(select(PriorRetrieval.study_uid)).label("prior"),
                func.count(func.distinct(Series.id)).label("series"),
                func.count(Instance.id).label("instances"),
            )
            .outerjoin(Series, Series.study_pk == Study.id)
            .outerjoin(Instance, Instance.series_pk == Series.id)
            .group_by(Study.id)
            .order_by(Study.last_received_at.desc())
            .limit(limit)
        ).all()
        jobs = {
            job.study_pk: job
            for job in connection.execute(
                select(Job).where(Job.study_pk.in_([s.id for s in studies])).order_by(Job.id)
            ).all()
        }
        counts = dict(connection.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    lines = [
        *_spool_lines(engine, storage),
        "jobs: " + (", ".join(f"{state.value}={count}" for state, count in sorted(counts.items())) or "none"),
        *_prior_lines(engine),
        "",
        f"{'study':>6}  {'state':<10} {'series':>6} {'instances':>9}  {'last received (UTC)':<19}  latest job",
    ]
    for study in studies:
        received = study.last_received_at.strftime("%Y-%m-%d %H:%M:%S") if study.last_received_at else "-"
        lines.append(
            f"{study.id:>6}  {'purged' if study.purged_at else study.state.value:<10} {study.series:>6} {study.instances:>9}  {received:<19}  "
            f"{'prior (fetched; not analysed)' if study.prior and study.id not in jobs else _job_summary(jobs.get(study.id))}"
        )
    if not studies:
        lines.append("(no studies received yet)")
    lines.extend(_delivery_lines(engine, limit))
    return "\n".join(lines)


def _delivery_lines(engine: Engine, limit: int) -> list[str]:
    with engine.connect() as connection:
        troubled = connection.execute(
            select(Delivery.id, Delivery.job_pk, Job.study_pk, Delivery.destination, Delivery.state,
                   Delivery.attempts, Delivery.next_attempt_at, Delivery.last_error)
            .join(Job, Job.id == Delivery.job_pk)
            .where(
                (Delivery.state == DeliveryState.FAILED)
                | ((Delivery.state == DeliveryState.PENDING) & (Delivery.attempts > 0))
            )
            .order_by(Delivery.id.desc())
            .limit(limit)
        ).all()
        paused = connection.execute(
            select(DestinationHealth.name, DestinationHealth.open_since, DestinationHealth.last_error,
                   DestinationHealth.paused_at, DestinationHealth.paused_by)
            .where(DestinationHealth.open_since.is_not(None) | DestinationHealth.paused_at.is_not(None))
        ).all()
    lines = []
    for destination in paused:
        if destination.paused_at is not None:
            lines.append(f"destination {destination.name} PAUSED by {destination.paused_by} at "
                         f"{destination.paused_at:%Y-%m-%d %H:%M:%S} (by hand: resume it in the console)")
            continue
        lines.append(f"destination {destination.name} PAUSED since {destination.open_since:%Y-%m-%d %H:%M:%S}: "
                     f"{(destination.last_error or '')[:80]} (probed with C-ECHO, or QIDO-RS for DICOMweb, until it answers)")
    if troubled:
        lines += ["", "deliveries failed or retrying:",
                  f"{'delivery':>8}  {'study':>6}  {'destination':<16} {'state':<8} {'tries':>5}  reason"]
        for row in troubled:
            when = f" (next {row.next_attempt_at:%H:%M:%S})" if row.state == DeliveryState.PENDING else ""
            lines.append(f"{row.id:>8}  {row.study_pk:>6}  {row.destination:<16} {row.state.value:<8} "
                         f"{row.attempts:>5}  {(row.last_error or '')[:70]}{when}")
    return lines
