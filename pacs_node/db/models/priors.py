"""The prior studies' tables: what the node fetched as a prior, and what each job found."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pacs_node.db.models.core import UID, Base, _enum, utcnow


class RetrievalState(enum.StrEnum):
    """Where the retrieval of a prior study is."""

    RETRIEVING = "retrieving"
    DONE = "done"
    FAILED = "failed"


class PriorStatus(enum.StrEnum):
    """What the prior lookup of a job found."""

    FOUND = "found"
    NONE = "none"
    UNAVAILABLE = "unavailable"


class PriorRetrieval(Base):
    """A study the node fetched as a prior (C-GET or C-MOVE): its instances are kept, never analysed.

    The row is written *before* the retrieval starts, keyed by study UID, so the completion
    sweep already knows the study is a prior when its first instance arrives, whichever way
    it arrives (on our C-GET association, or on the listener after a C-MOVE).
    """

    __tablename__ = "prior_retrievals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    #: Name of the ``[[priors.sources]]`` entry it came from, and how ("get" or "move").
    source: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    state: Mapped[RetrievalState] = mapped_column(_enum(RetrievalState), default=RetrievalState.RETRIEVING)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class PriorLookup(Base):
    """What one job found about its study's prior: the link current study → prior study."""

    __tablename__ = "prior_lookups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    status: Mapped[PriorStatus] = mapped_column(_enum(PriorStatus))
    source: Mapped[str | None] = mapped_column(String(64), default=None)
    prior_study_uid: Mapped[str | None] = mapped_column(UID, default=None, index=True)
    prior_study_date: Mapped[str] = mapped_column(String(8), default="")
    prior_series_uid: Mapped[str | None] = mapped_column(UID, default=None)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    #: Our own earlier SR in the prior study, when the source holds one (later slices read its findings).
    our_sr_uid: Mapped[str | None] = mapped_column(UID, default=None)
    our_sr_series_uid: Mapped[str | None] = mapped_column(UID, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: When to look the prior up again (an ``unavailable`` lookup, ``[priors] recheck_minutes``);
    #: cleared when the recheck is queued, and on older rows of the study.  ``None``: never.
    recheck_at: Mapped[dt.datetime | None] = mapped_column(default=None, index=True)
    #: Rechecks end here: ``[priors] recheck_hours`` after the study completed.
    recheck_until: Mapped[dt.datetime | None] = mapped_column(default=None)
