"""prior rechecks: job kinds, and when a study's unavailable prior is looked up again

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 10:00:00

``jobs.kind``: "analysis" (every existing job) or "rereport" (look the prior up again and
re-report the study when it is found).  ``prior_lookups.recheck_at`` (indexed) and
``recheck_until``: when an unavailable prior is looked up again, and until when.  Nullable,
no value for existing rows: nothing is rechecked that was recorded before.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: Union[str, Sequence[str], None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Add ``jobs.kind`` (default "analysis") and the recheck columns of ``prior_lookups``."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.Enum("analysis", "rereport", name="jobkind", native_enum=False,
                                                      length=16), nullable=False, server_default="analysis"))
    with op.batch_alter_table("prior_lookups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recheck_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("recheck_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_prior_lookups_recheck_at"), ["recheck_at"], unique=False)


def _drop_column(table: str, column: str) -> None:
    """``ALTER TABLE ... DROP COLUMN`` (SQLite 3.35+ too): batch mode would copy the table, and
    SQLite refuses to drop ``jobs`` while other tables' rows refer to it."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite" and bind.dialect.server_version_info < (3, 35):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column(column)
    else:
        op.drop_column(table, column)


def downgrade() -> None:
    """Drop the recheck columns and ``jobs.kind``."""
    op.drop_index(op.f("ix_prior_lookups_recheck_at"), table_name="prior_lookups")
    _drop_column("prior_lookups", "recheck_until")
    _drop_column("prior_lookups", "recheck_at")
    _drop_column("jobs", "kind")
