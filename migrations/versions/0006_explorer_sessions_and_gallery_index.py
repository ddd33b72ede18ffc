"""explorer (issue 14): browser sessions of the /ui pages, and the gallery's index on decisions

``ui_sessions``: one row per signed-in browser. The cookie carries a random secret; the row keeps only its SHA-256
(``id``), the admin token it was opened with (revoking the token ends the session), the CSRF token every
state-changing form must echo, and when it expires.

``ix_decisions_gallery`` (run, epoch, band, prototype, sample): a gallery page of one band and prototype in one
epoch is a range of this index read in sample order from the last id shown (keyset pagination, no OFFSET).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("token_id", BIG_ID, nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["token_id"], ["tokens.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_ui_sessions_expires", "ui_sessions", ["expires_at"])
    op.create_index("ix_decisions_gallery", "decisions", ["run_id", "epoch", "band", "prototype", "sample_id"])


def downgrade() -> None:
    op.drop_index("ix_decisions_gallery", table_name="decisions")
    op.drop_index("ix_ui_sessions_expires", table_name="ui_sessions")
    op.drop_table("ui_sessions")
