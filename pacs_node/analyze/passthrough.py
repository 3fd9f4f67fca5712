"""The interim analysis step: choose the series that would be analysed, analyse nothing.

This stands in for the detector until it is wired in.  Its result says plainly that
no analysis was performed, and nothing reports it as analysis.
"""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from pacs_node.db.models import Instance, Series
from pacs_node.db.queue import ClaimedJob
from pacs_node.worker import JobOutcome

STEP = "pass-through"


def record_series_for_analysis(engine: Engine, job: ClaimedJob) -> JobOutcome:
    """The series an analysis would take (the CT series with most instances).

    Returns a result document with ``analysis_performed: False`` and no objects.
    """
    study_pk = job.study_pk
    with engine.connect() as connection:
        rows = connection.execute(
            select(Series.series_uid, Series.modality, func.count(Instance.id).label("instances"))
            .join(Instance, Instance.series_pk == Series.id)
            .where(Series.study_pk == study_pk, Instance.purged_at.is_(None))  # files kept
            .group_by(Series.id)
        ).all()
    ct = [row for row in rows if row.modality == "CT"]
    chosen = max(ct, key=lambda row: row.instances, default=None)
    return JobOutcome({
        "step": STEP,
        "analysis_performed": False,
        "series_uid": chosen.series_uid if chosen else None,
        "instances": chosen.instances if chosen else 0,
        "reason": None if chosen else "no CT series in study",
    })
