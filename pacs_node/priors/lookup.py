"""One job's prior: ask the sources in order, fetch the prior unless the node holds it already.

The first source that answers decides: a prior there is fetched from there; "none" there is
the answer.  A source that cannot be reached is skipped with its reason, and when none
answers the prior is "unavailable" with every reason.  Nothing about the patient is logged
above DEBUG: events carry the source name, counts and the study's row id.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from pathlib import Path

from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine, select

from pacs_node.config import Settings
from pacs_node.db.ingest import InstanceRecorder
from pacs_node.db.models import Instance, PriorStatus, Series, Study
from pacs_node.db.priors import LookupRow, begin_retrieval, finish_retrieval, kept_instances
from pacs_node.priors.association import Cancel, SourceUnavailable
from pacs_node.priors.query import CurrentStudy, PriorStudy, SeriesGate, find_prior
from pacs_node.priors.retrieve import retrieve
from pacs_node.receive.spool import Spool
from pacs_node.receive.service import build_sink
from pacs_node.storage import BlobStore, open_store, read_dataset

log = logging.getLogger(__name__)

_HEADER = ["StudyInstanceUID", "PatientID", "IssuerOfPatientID", "StudyDate", "StudyTime"]


def current_study(engine: Engine, store: BlobStore, study_pk: int) -> CurrentStudy | None:
    """The identifying attributes of a study, from the header of one of its kept instances."""
    with engine.connect() as connection:
        study_uid = connection.scalar(select(Study.study_uid).where(Study.id == study_pk))
        paths = connection.scalars(
            select(Instance.path).join(Series, Series.id == Instance.series_pk)
            .where(Series.study_pk == study_pk, Instance.purged_at.is_(None)).order_by(Instance.id).limit(5)
        ).all()
    for relative in paths:
        try:
            ds = read_dataset(store, relative, stop_before_pixels=True, specific_tags=_HEADER)
        except (OSError, InvalidDicomError, ValueError):
            continue
        text = {keyword: str(ds.get(keyword) or "").strip() for keyword in _HEADER}
        return CurrentStudy(study_uid, text["PatientID"], text["IssuerOfPatientID"], text["StudyDate"],
                            text["StudyTime"])
    return None


def prior_json(row: LookupRow, recheck_at: dt.datetime | None = None) -> dict:
    """The ``prior`` object of a job's result (``recheck_at``: when it is looked up again)."""
    return {"status": row.status.value, "source": row.source, "study_uid": row.study_uid,
            "study_date": row.study_date or None, "series_uid": row.series_uid, "instances": row.instances,
            "our_sr_uid": row.our_sr_uid, "reason": row.reason,
            "recheck_at": recheck_at.isoformat(timespec="seconds") if recheck_at else None}


class PriorFinder:
    """Looks up and fetches the prior of a study with the ``[priors]`` sources."""

    def __init__(self, settings: Settings, store: BlobStore | None = None) -> None:
        self.config = settings.priors
        self.settings = settings
        self.store = store if store is not None else open_store(settings)
        self.calling_ae = settings.node.ae_title
        self.spool_root = Path(settings.storage.spool_dir)
        self.node_name = settings.node.name
        self.gate = SeriesGate(settings.analysis.min_slices, settings.analysis.max_slice_spacing_mm)

    def lookup(self, engine: Engine, study_pk: int, cancel: Cancel) -> LookupRow:
        """What the sources hold as the prior of study ``study_pk``, fetched into the spool."""
        current = current_study(engine, self.store, study_pk)
        if current is None or not current.patient_id:
            return LookupRow(PriorStatus.NONE, reason="the study has no PatientID to look up priors by")
        reasons = []
        for source in self.config.sources:
            try:
                prior = find_prior(source, current, self.config, self.calling_ae, cancel, self.gate)
            except SourceUnavailable as exc:
                log.warning("event=prior_source_unavailable study=%d source=%s reason=%r", study_pk, source.name,
                            str(exc))
                reasons.append(f"{source.name}: {exc}")
                continue
            if prior is None:
                log.info("event=prior_lookup study=%d source=%s status=none", study_pk, source.name)
                return LookupRow(PriorStatus.NONE, source=source.name,
                                 reason=f"no earlier CT study within {self.config.lookback_days} days")
            return self._fetch(engine, study_pk, prior, cancel)
        return LookupRow(PriorStatus.UNAVAILABLE, reason="; ".join(reasons) or "no source configured")

    def _fetch(self, engine: Engine, study_pk: int, prior: PriorStudy, cancel: Cancel) -> LookupRow:
        source = prior.source
        found = LookupRow(PriorStatus.FOUND, source=source.name, study_uid=prior.study_uid, study_date=prior.study_date,
                          series_uid=prior.ct.series_uid, our_sr_uid=prior.our_sr_uid,
                          our_sr_series_uid=prior.our_sr.series_uid if prior.our_sr else None)
        kept = kept_instances(engine, prior.ct.series_uid)
        if kept and kept >= (prior.ct.instances or 0):
            log.info("event=prior_lookup study=%d source=%s status=found retrieved=no instances=%d", study_pk,
                     source.name, kept)
            return replace(found, instances=kept, reason="already held by the node: not fetched again")
        series = [prior.ct.series_uid, *([prior.our_sr.series_uid] if prior.our_sr else [])]
        begin_retrieval(engine, prior.study_uid, source.name, source.retrieve)
        spool = Spool(self.spool_root, node_name=self.node_name)
        sink = build_sink(self.settings, spool, self.store, InstanceRecorder(engine), max_parallel=2)
        try:
            count = retrieve(source, prior.study_uid, series, sink, self.config, self.calling_ae, cancel)
        except SourceUnavailable as exc:
            finish_retrieval(engine, prior.study_uid, kept_instances(engine, prior.ct.series_uid), str(exc))
            log.warning("event=prior_retrieve_failed study=%d source=%s method=%s reason=%r", study_pk, source.name,
                        source.retrieve, str(exc))
            return replace(found, status=PriorStatus.UNAVAILABLE, reason=f"prior found but not retrieved: {exc}")
        finally:
            sink.close()
            spool.close()
        kept = kept_instances(engine, prior.ct.series_uid)
        finish_retrieval(engine, prior.study_uid, count)
        log.info("event=prior_lookup study=%d source=%s status=found retrieved=%s instances=%d", study_pk,
                 source.name, source.retrieve, kept)
        return replace(found, instances=kept)
