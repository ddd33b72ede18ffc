"""Per-run curation knobs, with the defaults of the authors' release (SPEC §2)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CentralSampler = Literal["fps", "density", "random"]


class CurationConfig(BaseModel):
    """Validated, immutable CheXficient configuration; invalid values raise ``ValueError``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    k: int = Field(6, ge=1, description="K, number of prototypes p_k")
    outlier_quantile: float = Field(0.95, gt=0.0, lt=1.0, description="d > quantile(d, q_out) is an outlier")
    support_quantile: float = Field(0.85, gt=0.0, lt=1.0, description="d <= quantile(d, q_sup) is central")
    max_central: int = Field(10, ge=1, description="central rows kept per prototype")
    central_sampler: CentralSampler = "fps"
    density_neighbors: int = Field(5, ge=1, description="n of the mean n-NN distance of the density sampler")
    ema_decay: float = Field(0.9, ge=0.0, lt=1.0, description="p_k <- decay * p_k + (1 - decay) * m_k")
    sinkhorn_epsilon: float = Field(0.5, gt=0.0, description="temperature of exp(S / eps)")
    sinkhorn_iterations: int = Field(3, ge=1)
    kmeans_iterations: int = Field(20, ge=1)
    warmup_samples: int = Field(2560, ge=1, description="pairs encoded before k-means")
    batch_size: int = Field(640, ge=1, description="super-batch size (global batch of one step)")
    epochs: int = Field(20, ge=1)
    curation_epochs: int = Field(1, ge=0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check_relations(self) -> CurationConfig:
        if not self.support_quantile < self.outlier_quantile:
            raise ValueError(
                f"support_quantile ({self.support_quantile}) must be below outlier_quantile ({self.outlier_quantile})"
            )
        if self.curation_epochs > self.epochs:
            raise ValueError(f"curation_epochs ({self.curation_epochs}) exceeds epochs ({self.epochs})")
        if self.warmup_samples < self.k:
            raise ValueError(f"warmup_samples ({self.warmup_samples}) must be at least k ({self.k})")
        return self
