"""A sample's neighbours in a run, with the decisions that explain its curation."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DecisionOut(BaseModel):
    """The sample's latest decision in the run (highest epoch, then step)."""

    epoch: int
    step: int
    band: str = Field(description="outlier | support | central_kept | central_dropped")
    prototype: int
    distance: float
    kept: bool
    prototype_version: int


class NeighbourOut(BaseModel):
    sample_id: int
    external_id: str
    image_uri: str
    similarity: float = Field(description="cosine similarity of the stored embeddings, 1 = same direction")
    decision: DecisionOut | None


class IndexOut(BaseModel):
    kind: str = Field(description="flat (exact) or ivf (approximate)")
    rows: int
    dim: int
    max_step: int


class NeighboursOut(BaseModel):
    run_id: int
    sample_id: int
    external_id: str
    image_uri: str
    decision: DecisionOut | None
    k: int
    index: IndexOut
    neighbours: list[NeighbourOut]
