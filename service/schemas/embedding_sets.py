"""Named embedding sets: one encoder's embeddings of a dataset's samples, reused by many offline runs."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingSetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model_id: str = Field(min_length=1, max_length=500, description="the encoder that made the embeddings")


class EmbeddingSetOut(BaseModel):
    id: int
    dataset_id: int
    name: str
    model_id: str
    id_key: Literal["sample_id", "external_id"] | None = Field(description="the key its uploads use")
    rows: int = Field(description="samples with a stored embedding")
    dim: int | None = Field(description="their width; null while there are none")
    created_at: datetime


class SetUploadOut(BaseModel):
    set_id: int
    rows: int = Field(description="rows in this upload (stored, or replaced)")
    stored: int = Field(description="rows of the set after it")
    dim: int
    key: Literal["sample_id", "external_id"]
