"""SQLAlchemy 2 models. Alembic (migrations/) owns the schema; these classes describe it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

BigId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY
Json = JSON().with_variant(JSONB(), "postgresql")
#: a nullable JSON column whose Python None is SQL NULL (not the JSON value null), so ``IS NULL`` finds it
NullableJson = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: Json, list[Any]: Json, datetime: DateTime(timezone=True)}


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    root: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (
        UniqueConstraint("dataset_id", "external_id", name="uq_samples_dataset_external"),
        Index("ix_samples_dataset_status", "dataset_id", "status"),
        Index("ix_samples_dataset_patient", "dataset_id", "patient_id"),
        Index("ix_samples_dataset_study", "dataset_id", "study_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(500))
    image_uri: Mapped[str] = mapped_column(Text)
    report: Mapped[str] = mapped_column(Text, default="")
    report_synthetic: Mapped[bool] = mapped_column(Boolean, default=False)
    labels: Mapped[list[Any]] = mapped_column(default=list)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # accepted | rejected | unreadable
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    study_uid: Mapped[str | None] = mapped_column(String(128))
    sop_uid: Mapped[str | None] = mapped_column(String(128))
    #: the patient and the study the image belongs to, as the set names them (evaluation splits and near-duplicate
    #: statistics group by them); ``split`` is the set's official split, as published
    patient_id: Mapped[str | None] = mapped_column(String(128))
    study_id: Mapped[str | None] = mapped_column(String(128))
    split: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    config: Mapped[dict[str, Any]] = mapped_column()
    seed: Mapped[int] = mapped_column(BigInteger)
    phase: Mapped[str] = mapped_column(String(16), default="warmup")  # warmup | curation | subset | done
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)  # curation steps applied
    prototype_version: Mapped[int] = mapped_column(Integer, default=0)
    model_id: Mapped[str | None] = mapped_column(String(500))
    checkpoint_step: Mapped[int | None] = mapped_column(BigInteger)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: the failing step that stops the run, or counts towards stopping it (runs.failures); None when healthy
    error: Mapped[dict[str, Any] | None] = mapped_column(NullableJson, default=None)
    #: the named embedding set offline curation reads (None: the run's own embeddings)
    embedding_set_id: Mapped[int | None] = mapped_column(ForeignKey("embedding_sets.id", ondelete="SET NULL"))


class RunExclusion(Base):
    """A sample left out of one run: unreadable for its trainer, or excluded by an admin repairing the run."""

    __tablename__ = "run_exclusions"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # trainer | admin
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EpochItem(Base):
    """One row per sample of an epoch's seeded permutation: the unit of leasing and acknowledgement."""

    __tablename__ = "epoch_items"
    __table_args__ = (
        UniqueConstraint("run_id", "epoch", "sample_id", name="uq_epoch_items_sample"),
        Index("ix_epoch_items_claim", "run_id", "epoch", "state", "position"),
        # acknowledging a manifest finds its rows by manifest id: without this every step scans the epoch
        Index("ix_epoch_items_manifest", "manifest_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(8), default="pending")  # pending | leased | done
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    manifest_id: Mapped[str | None] = mapped_column(String(36))


class Manifest(Base):
    __tablename__ = "manifests"
    __table_args__ = (UniqueConstraint("run_id", "step", name="uq_manifests_run_step"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    phase: Mapped[str] = mapped_column(String(16))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)  # issue order within the run, for replay
    sample_ids: Mapped[list[Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    acked_at: Mapped[datetime | None] = mapped_column()
    model_id: Mapped[str | None] = mapped_column(String(500))
    checkpoint_step: Mapped[int | None] = mapped_column(BigInteger)
    prototype_version: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[dict[str, Any] | None] = mapped_column(Json)  # the stored answer: retries get it verbatim


class Embedding(Base):
    """The latest embedding of a sample in a run, as float16 bytes."""

    __tablename__ = "embeddings"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    step: Mapped[int] = mapped_column(Integer)


class NamedSet(Base):
    """A named embedding set: one encoder's embeddings of a dataset's samples, stored once and read by many runs."""

    __tablename__ = "embedding_sets"
    __table_args__ = (UniqueConstraint("dataset_id", "name", name="uq_embedding_sets_dataset_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[str] = mapped_column(String(500))  # the encoder
    #: the key of its uploads (sample_id | external_id); offline curation takes the rows in that key's order
    id_key: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SetEmbedding(Base):
    """The latest embedding of a sample in a named set, as float16 bytes."""

    __tablename__ = "set_embeddings"

    set_id: Mapped[int] = mapped_column(ForeignKey("embedding_sets.id", ondelete="CASCADE"), primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class PrototypeVersion(Base):
    __tablename__ = "prototype_versions"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    k: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    vectors: Mapped[bytes] = mapped_column(LargeBinary)  # float32 [k, dim]
    usage: Mapped[list[Any]] = mapped_column()
    step: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Decision(Base):
    __tablename__ = "decisions"
    __table_args__ = (
        UniqueConstraint("run_id", "epoch", "sample_id", name="uq_decisions_sample"),
        Index("ix_decisions_run_kept", "run_id", "kept"),
        # the explorer's gallery: one band and prototype of an epoch, read in sample order (keyset pagination)
        Index("ix_decisions_gallery", "run_id", "epoch", "band", "prototype", "sample_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    manifest_id: Mapped[str] = mapped_column(String(36))
    prototype: Mapped[int] = mapped_column(SmallInteger)
    distance: Mapped[float] = mapped_column(Float)
    band: Mapped[int] = mapped_column(SmallInteger)  # service.curation.Band code
    kept: Mapped[bool] = mapped_column(Boolean)
    prototype_version: Mapped[int] = mapped_column(Integer)


class Token(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # admin | trainer
    run_ids: Mapped[list[Any]] = mapped_column(default=list)  # trainer scope
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class UiSession(Base):
    """A browser signed in to the explorer (/ui) with an admin token: the cookie's secret is stored as SHA-256."""

    __tablename__ = "ui_sessions"
    __table_args__ = (Index("ix_ui_sessions_expires", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))  # echoed by every state-changing form
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
