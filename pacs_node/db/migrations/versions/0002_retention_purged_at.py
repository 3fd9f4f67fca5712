"""retention: purged_at on studies, instances and report objects

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00

Rows are kept when retention deletes files; these columns say which files are gone.
Nullable, no default: every existing row keeps its files (NULL).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_TABLES = ("studies", "instances", "report_objects")


def upgrade() -> None:
    """Add ``purged_at`` (nullable) to each table whose rows point at spool files."""
    for table in _TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Drop the ``purged_at`` columns."""
    for table in reversed(_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("purged_at")
