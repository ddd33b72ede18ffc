"""Per-run curation knobs, with the defaults of the authors' release and upper bounds.

The bounds keep every knob within what one step can hold in memory and what the run's columns store
(docs/ERRORS.md, "Run configuration"): a super-batch of ``MAX_BATCH_SIZE`` float32 rows at D=1024 is 400 MB,
warm-up k-means over ``MAX_WARMUP_SAMPLES`` rows the same.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CentralSampler = Literal["fps", "density", "random"]
PrototypeMode = Literal["flat", "hierarchical"]

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
#: requested subset shares |S| / N outside this range are refused (docs/MODES.md)
MIN_TARGET_RATIO = 0.01
MAX_TARGET_RATIO = 0.9
#: cos >= 1 - eps: above this, rows at right angles would count as duplicates
MAX_DEDUP_EPSILON = 0.5
MAX_DEDUP_MEMORY = 100_000
MAX_HIERARCHY_LEVELS = 4


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
    # Modes beyond the paper (docs/MODES.md); each off by default, so the defaults run the paper's algorithm.
    target_ratio: float | None = Field(
        None, ge=MIN_TARGET_RATIO, le=MAX_TARGET_RATIO, description="requested |S| / N; None: the bands decide"
    )
    dedup_epsilon: float | None = Field(
        None, gt=0.0, le=MAX_DEDUP_EPSILON, description="f_i.f_j >= 1 - eps in one prototype: duplicates"
    )
    dedup_same_patient: bool = Field(False, description="only pairs of the same patient count as duplicates")
    dedup_memory: int = Field(
        4096, ge=1, le=MAX_DEDUP_MEMORY, description="latest kept rows online dedup compares a batch against"
    )
    prototype_mode: PrototypeMode = Field("flat", description="hierarchical: balanced k-means sampling (offline)")
    hierarchy: tuple[int, ...] | None = Field(
        None, min_length=1, max_length=MAX_HIERARCHY_LEVELS, description="clusters per level, finest first"
    )

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
        self._check_modes()
        return self

    def _check_modes(self) -> None:
        if self.target_ratio is not None and not self.target_ratio < self.outlier_quantile:
            raise ValueError(
                f"target_ratio ({self.target_ratio}) must be below outlier_quantile ({self.outlier_quantile}):"
                " outliers are never kept"
            )
        if self.dedup_same_patient and self.dedup_epsilon is None:
            raise ValueError("dedup_same_patient needs dedup_epsilon")
        if self.hierarchy is not None:
            if self.prototype_mode != "hierarchical":
                raise ValueError("hierarchy needs prototype_mode 'hierarchical'")
            levels = self.hierarchy
            if any(c < 1 or c > MAX_K * MAX_K for c in levels):
                raise ValueError(f"hierarchy levels must be in [1, {MAX_K * MAX_K}], got {list(levels)}")
            if any(a <= b for a, b in zip(levels, levels[1:], strict=False)):
                raise ValueError(f"hierarchy must shrink from the finest level up, got {list(levels)}")
            if levels[0] > self.warmup_samples:
                raise ValueError(
                    f"hierarchy's finest level ({levels[0]}) exceeds warmup_samples ({self.warmup_samples})"
                )

    @property
    def levels(self) -> tuple[int, ...]:
        """Clusters per level, finest first: as given, else (n_w/5, n_w/50, K) less levels not above K."""
        if self.hierarchy is not None:
            return self.hierarchy
        wanted = (self.warmup_samples // 5, self.warmup_samples // 50, self.k)
        return tuple(c for c in wanted[:-1] if c > self.k) + (self.k,)

    def modes(self) -> dict[str, dict[str, Any]]:
        """The modes beyond the paper this config turns on, with their parameters; {} for the faithful algorithm."""
        out: dict[str, dict[str, Any]] = {}
        if self.target_ratio is not None:
            out["target_ratio"] = {"target_ratio": self.target_ratio}
        if self.dedup_epsilon is not None:
            out["dedup"] = {
                "epsilon": self.dedup_epsilon,
                "same_patient": self.dedup_same_patient,
                "memory": self.dedup_memory,
            }
        if self.prototype_mode == "hierarchical":
            out["hierarchical"] = {"levels": list(self.levels)}
        return out
