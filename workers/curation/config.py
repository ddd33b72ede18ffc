"""Per-run curation knobs, with the defaults of the authors' release (SPEC §2) and upper bounds.

The bounds keep every knob within what one step can hold in memory and what the run's columns store
(docs/ERRORS.md, "Run configuration"): a super-batch of ``MAX_BATCH_SIZE`` float32 rows at D=1024 is 400 MB,
warm-up k-means over ``MAX_WARMUP_SAMPLES`` rows the same.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CentralSampler = Literal["fps", "density", "random"]

MAX_K = 1024
MAX_BATCH_SIZE = 100_000
MAX_WARMUP_SAMPLES = 100_000
MAX_EPOCHS = 1000
MAX_ITERATIONS = 1000
MAX_DENSITY_NEIGHBORS = 1000
#: exp(S / eps) over cosine scores in [-1, 1]: below this, whole rows of the Sinkhorn plan underflow to zero
MIN_SINKHORN_EPSILON = 0.01
MAX_SINKHORN_EPSILON = 100.0
MAX_SEED = 2**63 - 1  # stored in a bigint column


class CurationConfig(BaseModel):
    """Validated, immutable CheXficient configuration; invalid values raise ``ValueError``."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    k: int = Field(6, ge=1, le=MAX_K, description="K, number of prototypes p_k")
    outlier_quantile: float = Field(0.95, gt=0.0, lt=1.0, description="d > quantile(d, q_out) is an outlier")
    support_quantile: float = Field(0.85, gt=0.0, lt=1.0, description="d <= quantile(d, q_sup) is central")
    max_central: int = Field(10, ge=1, le=MAX_BATCH_SIZE, description="central rows kept per prototype")
    central_sampler: CentralSampler = "fps"
    density_neighbors: int = Field(
        5, ge=1, le=MAX_DENSITY_NEIGHBORS, description="n of the mean n-NN distance of the density sampler"
    )
    ema_decay: float = Field(0.9, ge=0.0, lt=1.0, description="p_k <- decay * p_k + (1 - decay) * m_k")
    sinkhorn_epsilon: float = Field(
        0.5, ge=MIN_SINKHORN_EPSILON, le=MAX_SINKHORN_EPSILON, description="temperature of exp(S / eps)"
    )
    sinkhorn_iterations: int = Field(3, ge=1, le=MAX_ITERATIONS)
    kmeans_iterations: int = Field(20, ge=1, le=MAX_ITERATIONS)
    warmup_samples: int = Field(2560, ge=1, le=MAX_WARMUP_SAMPLES, description="pairs encoded before k-means")
    batch_size: int = Field(640, ge=1, le=MAX_BATCH_SIZE, description="super-batch size (global batch of one step)")
    epochs: int = Field(20, ge=1, le=MAX_EPOCHS)
    curation_epochs: int = Field(1, ge=0, le=MAX_EPOCHS)
    seed: int = Field(0, ge=0, le=MAX_SEED)

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
