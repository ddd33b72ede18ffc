"""index epoch_items by manifest

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 13:50:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_epoch_items_manifest", "epoch_items", ["manifest_id"])


def downgrade() -> None:
    op.drop_index("ix_epoch_items_manifest", table_name="epoch_items")
