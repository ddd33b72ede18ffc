"""patient, study and split of a sample; named embedding sets reused by runs

``samples.patient_id`` / ``study_id`` (indexed per dataset): what evaluation splits and near-duplicate statistics
group by; ``samples.split``: the set's official split, kept as published. The importers fill them.

``embedding_sets``: one encoder's embeddings (``model_id``) of a dataset's samples under a name; ``set_embeddings``
holds their rows (the latest float16 vector per sample, inline like ``embeddings``, migration 0003). A run may
reference a set (``runs.embedding_set_id``): offline curation then reads the set, so a sweep over K or the batch
size uploads the embeddings once. ``id_key`` is the key the set was uploaded with (``sample_id`` or
``external_id``): offline curation takes the rows in that key's order, as ``chexcurate curate`` does for a file.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("patient_id", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("study_id", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("split", sa.String(length=32), nullable=True))
    op.create_index("ix_samples_dataset_patient", "samples", ["dataset_id", "patient_id"])
    op.create_index("ix_samples_dataset_study", "samples", ["dataset_id", "study_id"])
    op.create_table(
        "embedding_sets",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("dataset_id", BIG_ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("model_id", sa.String(length=500), nullable=False),
        sa.Column("id_key", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataset_id", "name", name="uq_embedding_sets_dataset_name"),
    )
    op.create_table(
        "set_embeddings",
        sa.Column("set_id", BIG_ID, nullable=False),
        sa.Column("sample_id", BIG_ID, nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["set_id"], ["embedding_sets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("set_id", "sample_id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE set_embeddings ALTER COLUMN vector SET STORAGE MAIN")
        op.execute("ALTER TABLE set_embeddings SET (toast_tuple_target = 4080)")
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("embedding_set_id", BIG_ID, nullable=True))
        batch.create_foreign_key(
            "fk_runs_embedding_set", "embedding_sets", ["embedding_set_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("fk_runs_embedding_set", type_="foreignkey")
        batch.drop_column("embedding_set_id")
    op.drop_table("set_embeddings")
    op.drop_table("embedding_sets")
    op.drop_index("ix_samples_dataset_study", table_name="samples")
    op.drop_index("ix_samples_dataset_patient", table_name="samples")
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("split")
        batch.drop_column("study_id")
        batch.drop_column("patient_id")
