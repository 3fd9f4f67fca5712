"""priors: studies fetched as priors, and each job's prior lookup

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 10:00:00

New tables only: ``prior_retrievals`` (a study fetched as a prior, keyed by study UID, so it
is never queued for analysis) and ``prior_lookups`` (current study → prior study, per job).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: Union[str, Sequence[str], None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Create ``prior_retrievals`` and ``prior_lookups``."""
    op.create_table(
        "prior_retrievals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("state", sa.Enum("retrieving", "done", "failed", name="retrievalstate", native_enum=False,
                                   length=16), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("study_uid"),
    )
    op.create_table(
        "prior_lookups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_pk", sa.Integer(), nullable=False),
        sa.Column("job_pk", sa.Integer(), nullable=False),
        sa.Column("status", sa.Enum("found", "none", "unavailable", name="priorstatus", native_enum=False,
                                    length=16), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("prior_study_uid", sa.String(length=64), nullable=True),
        sa.Column("prior_study_date", sa.String(length=8), nullable=False),
        sa.Column("prior_series_uid", sa.String(length=64), nullable=True),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("our_sr_uid", sa.String(length=64), nullable=True),
        sa.Column("our_sr_series_uid", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_pk"], ["studies.id"]),
        sa.ForeignKeyConstraint(["job_pk"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("prior_lookups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prior_lookups_study_pk"), ["study_pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_prior_lookups_job_pk"), ["job_pk"], unique=False)
        batch_op.create_index(batch_op.f("ix_prior_lookups_prior_study_uid"), ["prior_study_uid"], unique=False)


def downgrade() -> None:
    """Drop the prior tables."""
    with op.batch_alter_table("prior_lookups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prior_lookups_prior_study_uid"))
        batch_op.drop_index(batch_op.f("ix_prior_lookups_job_pk"))
        batch_op.drop_index(batch_op.f("ix_prior_lookups_study_pk"))
    op.drop_table("prior_lookups")
    op.drop_table("prior_retrievals")
