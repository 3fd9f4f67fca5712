"""The core tables: what was received, and the work queued on it (jobs, objects, deliveries).

Also the declarative ``Base`` and the column types every table module shares.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import BigInteger, DateTime, Enum, ForeignKey, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:  # noqa: ANN001
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC")
        return value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:  # noqa: ANN001
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UtcDateTime()}


class StudyState(enum.StrEnum):
    """Where a study is in its life: receiving until quiet, then complete."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class JobState(enum.StrEnum):
    """States of an analysis job."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    #: New instances arrived after the job was queued; a fresh job replaces it.
    SUPERSEDED = "superseded"


class JobKind(enum.StrEnum):
    """What a job does."""

    #: Analyse a completed study (and, with ``[priors]``, look up its prior).
    ANALYSIS = "analysis"
    #: Look up again the prior that was unavailable; re-report the study once it is found.
    REREPORT = "rereport"


class DeliveryState(enum.StrEnum):
    """States of one object set's delivery to one destination."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class FailureKind(enum.StrEnum):
    """Why a send failed: worth retrying, or not."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


class ObjectKind(enum.StrEnum):
    """What an object produced by an analysis is."""

    SR = "sr"
    KEY_IMAGE = "key_image"
    KOS = "kos"
    GSPS = "gsps"
    SEG = "seg"


def _enum(cls: type[enum.StrEnum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("patient_key", name="uq_patients_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Patient ID and issuer joined, the identity used to group studies.
    patient_key: Mapped[str] = mapped_column(String(130))
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")

    studies: Mapped[list[Study]] = relationship(back_populates="patient")


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.id"))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), default=StudyState.RECEIVING)
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    #: When retention deleted the study's received files; cleared when an instance arrives again.
    purged_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    patient: Mapped[Patient] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")

    __table_args__ = (Index("ix_studies_state_last", "state", "last_received_at"),)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, default=None)
    description: Mapped[str] = mapped_column(String(64), default="")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, default=None)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    #: Path relative to the spool directory, or the object's key in an object store (``storage/``).
    path: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: When retention deleted the file (the row stays); ``None`` while the file is kept.
    purged_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    """One analysis (or re-report) of one study, claimed by at most one worker at a time."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind), default=JobKind.ANALYSIS,
                                          server_default=JobKind.ANALYSIS.value)
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    #: Node name of the worker holding the job, and until when its claim holds.
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    #: What the job did, as JSON (the step that ran and its outputs).
    result: Mapped[str | None] = mapped_column(Text, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)

    study: Mapped[Study] = relationship(back_populates="jobs")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job")

    __table_args__ = (Index("ix_jobs_state_id", "state", "id"),)


class Delivery(Base):
    """The objects of one job, to be sent to one destination."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    #: Comma-separated object kinds this destination receives (its output profile).
    kinds: Mapped[str] = mapped_column(String(64), default="sr,key_image")
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    failure: Mapped[FailureKind | None] = mapped_column(_enum(FailureKind), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    job: Mapped[Job] = relationship(back_populates="deliveries")

    __table_args__ = (Index("ix_deliveries_state_next", "state", "next_attempt_at"),)


class ReportObject(Base):
    """A DICOM object an analysis produced, stored once so every send is identical."""

    __tablename__ = "report_objects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[ObjectKind] = mapped_column(_enum(ObjectKind))
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    #: Path relative to the spool directory.
    path: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: When retention deleted the file (``[retention] keep_reports = false``).
    purged_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class DestinationHealth(Base):
    """Circuit-breaker state of one destination, shared by all node processes."""

    __tablename__ = "destination_health"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    #: Set while the breaker is open: deliveries wait, C-ECHO probes run instead.
    open_since: Mapped[dt.datetime | None] = mapped_column(default=None)
    next_probe_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    #: Set while an operator paused the destination by hand (the console): deliveries wait, nothing probes.
    paused_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    paused_by: Mapped[str | None] = mapped_column(String(64), default=None)
