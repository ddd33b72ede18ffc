"""One typed settings object for the service, workers and CLI (environment variables ``CHEX_*``)."""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .limits import ArrayLimits, BodyLimits, PathLimits, TextLimits


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
    #: a run step (warm-up k-means, curated batch) failing this many times in a row stops the run with its error
    step_failure_limit: int = Field(3, ge=1, le=100)
    #: largest accepted streamed upload (embeddings, bulk .npz, ingest files), bytes
    max_body_bytes: int = Field(BodyLimits.upload_bytes, ge=1024)
    #: largest accepted body of every other route (JSON), bytes; refused with 413 before it is parsed
    max_json_body_bytes: int = Field(BodyLimits.json_bytes, ge=1024)
    #: largest total inflated size of the members read from a bulk .npz, bytes (from the zip and .npy headers)
    max_inflated_bytes: int = Field(ArrayLimits.inflated_bytes, ge=1024)
    #: most members a bulk .npz may list (its central directory is parsed whole)
    max_npz_members: int = Field(ArrayLimits.npz_members, ge=2, le=65535)
    #: longest path (dataset root, root + image path, scan folder), UTF-8 bytes
    max_path_bytes: int = Field(PathLimits.path_bytes, ge=16)
    #: longest path component (file or directory name), UTF-8 bytes
    max_name_bytes: int = Field(PathLimits.name_bytes, ge=1)
    #: longest physical line of a CSV / JSONL upload or reports sidecar, bytes
    max_line_bytes: int = Field(TextLimits.line_bytes, ge=1024)
    #: deepest nesting of a JSONL row (objects and arrays)
    max_json_depth: int = Field(TextLimits.json_depth, ge=2, le=500)
    #: most digits of an integer in a JSONL row
    max_json_int_digits: int = Field(TextLimits.json_int_digits, ge=1, le=4300)
    #: directories dataset roots must lie under (a JSON list, or paths separated by ':'); empty: see allowed_root_dirs
    allowed_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    #: how long a leased manifest stays with its trainer before it is handed out again
    lease_seconds: int = Field(600, ge=1)
    #: Retry-After sent with 503 answers, seconds
    retry_after_seconds: int = Field(5, ge=1)
    #: rows per COPY / insert chunk when storing embeddings and decisions
    write_chunk_rows: int = Field(50_000, ge=1)
    #: where per-run FAISS neighbour indexes are kept; shared by the API and the workers (a volume in compose)
    neighbour_index_dir: Path = Path(tempfile.gettempdir()) / "chexcurate-neighbours"
    #: the explorer's thumbnails and embedding maps; shared by the API and the workers like the neighbour indexes
    explorer_cache_dir: Path = Path(tempfile.gettempdir()) / "chexcurate-explorer"

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part.strip()]
        return value

    @field_validator("allowed_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        relative = [str(r) for r in roots if not r.is_absolute()]
        if relative:
            raise ValueError(f"allowed roots must be absolute paths: {relative}")
        return roots

    @property
    def handover_ttl_seconds(self) -> int:
        """How long a handed-over batch and its reply stay in Redis: well past the API's wait, so a worker that picks
        the batch up late still finds it, and an answer nobody waited for still expires."""
        return max(600, int(self.curation_wait_seconds * 4))

    @property
    def embedded(self) -> bool:
        """The embedded default: no broker and a SQLite database (one process on one machine, e.g. ``make demo``)."""
        return not self.broker_url and self.database_url.startswith("sqlite")

    def allowed_root_dirs(self) -> list[Path] | None:
        """Where dataset roots may lie: the configured directories; None (anywhere) only for the embedded default
        with none configured; an empty list (nowhere) for any other deployment with none configured."""
        if self.allowed_roots:
            return list(self.allowed_roots)
        return None if self.embedded else []

    def body_limits(self) -> BodyLimits:
        return BodyLimits(self.max_body_bytes, self.max_json_body_bytes)

    def array_limits(self) -> ArrayLimits:
        return ArrayLimits(self.max_inflated_bytes, self.max_npz_members)

    def path_limits(self) -> PathLimits:
        return PathLimits(self.max_path_bytes, self.max_name_bytes)

    def text_limits(self) -> TextLimits:
        return TextLimits(self.max_line_bytes, self.max_json_depth, self.max_json_int_digits)


@lru_cache
def get_settings() -> Settings:
    return Settings()
