"""keep embedding vectors inline (storage MAIN, toast_tuple_target 4080)

A 1024-d float16 embedding is 2 KB, above Postgres' default TOAST threshold (~2 KB a row), so by default the
vector is TOASTed: compressed and moved out of line. float16 noise barely compresses, so it simply moves to the
TOAST table, and every k-means refresh or offline read pays a second index lookup per row to fetch it back. Storage
MAIN with a tuple target above the row size keeps it in the heap row: the server side of a binary COPY read took
about half the time, writes were unchanged, and a row is a little smaller (docs/BENCHMARKS.md, P4). The price:
the heap itself is now ~2.7 KB a row, not ~80 B, so a plan that scans a run's heap instead of probing the primary
key (as the planner picks on a table never analyzed) reads ~35x more pages.

Both settings apply to rows written afterwards; rows already stored stay out of line until rewritten (an
``UPDATE`` of the vector, or ``VACUUM FULL embeddings``). PostgreSQL only: SQLite has no TOAST, so a no-op there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 10:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _postgres():
        op.execute("ALTER TABLE embeddings ALTER COLUMN vector SET STORAGE MAIN")
        op.execute("ALTER TABLE embeddings SET (toast_tuple_target = 4080)")


def downgrade() -> None:
    if _postgres():
        op.execute("ALTER TABLE embeddings RESET (toast_tuple_target)")
        op.execute("ALTER TABLE embeddings ALTER COLUMN vector SET STORAGE EXTENDED")
