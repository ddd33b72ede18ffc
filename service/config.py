"""One typed settings object for the service, workers and CLI (environment variables ``CHEX_*``)."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHEX_", env_file=".env", extra="ignore")

    #: SQLite file by default (the embedded mode); production and tests use postgresql+psycopg://
    database_url: str = "sqlite:///./chexcurate.db"
    #: Celery broker; unset means tasks run eagerly in the API process (embedded mode)
    broker_url: str | None = None
    #: where task results go; defaults to the broker (Redis)
    result_backend: str | None = None
    #: how long the API waits for a curated batch before answering 503 + Retry-After (the task goes on)
    curation_wait_seconds: float = Field(30.0, gt=0)
    #: broker redelivery of unacknowledged tasks; above the slowest k-means so no task is run twice while alive
    visibility_timeout_seconds: int = Field(3600, ge=60)
    #: a requested prototype initialisation not done after this long is requested again (re-driven from Postgres)
    init_redrive_seconds: int = Field(120, ge=1)
    #: largest accepted request body (embeddings, ingest files), bytes
    max_body_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    #: how long a leased manifest stays with its trainer before it is handed out again
    lease_seconds: int = Field(600, ge=1)
    #: Retry-After sent with 503 answers, seconds
    retry_after_seconds: int = Field(5, ge=1)
    #: rows per COPY / insert chunk when storing embeddings and decisions
    write_chunk_rows: int = Field(50_000, ge=1)
    #: where per-run FAISS neighbour indexes are kept; shared by the API and the workers (a volume in compose)
    neighbour_index_dir: Path = Path(tempfile.gettempdir()) / "chexcurate-neighbours"


@lru_cache
def get_settings() -> Settings:
    return Settings()
