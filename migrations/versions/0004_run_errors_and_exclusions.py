"""a run's error, and samples left out of one run

``runs.error``: the failure that stops a run (or counts towards stopping it): the step, its error code and
detail, how many times in a row it failed, whether the run is stopped. NULL while the run is healthy.

``run_exclusions``: samples left out of one run only, by a trainer that could not read one it held a lease on or
by an admin repairing the run. A dataset-wide exclusion stays ``samples.status = 'unreadable'``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column(
        "runs",
        sa.Column(
            "error", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
    )
    op.create_table(
        "run_exclusions",
        sa.Column("run_id", BIG_ID, nullable=False),
        sa.Column("sample_id", BIG_ID, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "sample_id"),
    )


def downgrade() -> None:
    op.drop_table("run_exclusions")
    op.drop_column("runs", "error")
