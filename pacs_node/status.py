"""What ``pacs-node status`` prints: recent studies and their newest job."""

from __future__ import annotations

import json

from sqlalchemy import Engine, Row, func, select

from pacs_node.db.models import Instance, Job, JobState, Series, Study


def _job_summary(job: Row | None) -> str:
    if job is None:
        return "-"
    summary = f"#{job.id} {job.state.value}"
    if job.state == JobState.DONE and job.result:
        result = json.loads(job.result)
        if result.get("analysis_performed") is False:
            summary += " (pass-through: no analysis performed)"
    if job.error:
        summary += f": {job.error[:80]}"
    return summary


def render_status(engine: Engine, limit: int = 20) -> str:
    """A table of the ``limit`` most recently received studies (no patient data)."""
    with engine.connect() as connection:
        studies = connection.execute(
            select(
                Study.id,
                Study.state,
                Study.last_received_at,
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
        "jobs: " + (", ".join(f"{state.value}={count}" for state, count in sorted(counts.items())) or "none"),
        "",
        f"{'study':>6}  {'state':<10} {'series':>6} {'instances':>9}  {'last received (UTC)':<19}  latest job",
    ]
    for study in studies:
        received = study.last_received_at.strftime("%Y-%m-%d %H:%M:%S") if study.last_received_at else "-"
        lines.append(
            f"{study.id:>6}  {study.state.value:<10} {study.series:>6} {study.instances:>9}  {received:<19}  "
            f"{_job_summary(jobs.get(study.id))}"
        )
    if not studies:
        lines.append("(no studies received yet)")
    return "\n".join(lines)
