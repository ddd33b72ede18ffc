"""Budget targeting: per-step central cap m (and support quantile q_sup) so the subset lands on |S| = r * N.

The rule (docs/MODES.md): before step t the controller asks for w_t = round(r * (n_seen + B_t)) - n_kept rows, and
picks the (q_sup, m) whose band selection keeps the count closest to w_t. Kept rows of one prototype are
support + min(central_k, m), so the count for every m follows from the per-prototype central counts alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from .backend import Backend, CpuBackend
from .config import CurationConfig
from .groups import grouped_quantiles
from .selection import Band, Selection, nearest_prototypes, select_batch
from .validate import check_prototypes, float32_rows

#: support quantiles tried above the configured one when m = 1 still keeps too many (evenly up to q_out)
SUPPORT_STEPS = 8

Bound = Literal["none", "low", "high"]


@dataclass(frozen=True)
class CapPlan:
    """The knobs one step runs with, the count they keep, and which bound (if any) stopped the controller."""

    max_central: int
    support_quantile: float
    expected: int
    bound: Bound


def capped_totals(counts: NDArray[np.integer], caps: NDArray[np.integer]) -> NDArray[np.int64]:
    """sum_k min(n_k, m) for every m in ``caps``, in O((K + M) log K)."""
    c = np.sort(np.asarray(counts, dtype=np.int64))
    m = np.asarray(caps, dtype=np.int64)
    below = np.searchsorted(c, m, side="left")  # prototypes with n_k < m contribute n_k, the rest m
    prefix = np.concatenate([[0], np.cumsum(c)])
    return prefix[below] + m * (len(c) - below)


def water_level(counts: NDArray[np.integer], budget: int) -> int:
    """The largest m >= 0 with sum_k min(n_k, m) <= budget (m = max n_k when everything fits)."""
    c = np.asarray(counts, dtype=np.int64)
    top = int(c.max(initial=0))
    totals = capped_totals(c, np.arange(top + 1))
    return int(np.searchsorted(totals, budget, side="right") - 1)


def wanted_rows(target_ratio: float, seen: int, kept: int, batch: int) -> int:
    """w_t = round(r * (n_seen + B_t)) - n_kept, clipped to [0, B_t]: what keeps the running ratio on r."""
    return int(np.clip(round(target_ratio * (seen + batch)) - kept, 0, batch))


def plan_caps(
    distance: NDArray[np.float64],
    prototype: NDArray[np.int64],
    k: int,
    eligible: NDArray[np.bool_],
    support_quantile: float,
    outlier_quantile: float,
    wanted: int,
) -> CapPlan:
    """(q_sup, m) whose bands keep the count n(m) closest to w_t; q_sup rises only when n(1) > w_t."""
    # bands are the paper's (quantiles over all rows of a prototype); only eligible rows count as kept
    qs = np.linspace(support_quantile, outlier_quantile, SUPPORT_STEPS + 1)[:-1]
    thresholds = grouped_quantiles(distance, prototype, k, (*qs.tolist(), outlier_quantile))
    t_sup, t_out = thresholds[:-1][:, prototype], thresholds[-1][prototype]
    central = (distance[None, :] <= t_sup) & eligible  # [Q, B]
    support = ((distance[None, :] > t_sup) & (distance <= t_out) & eligible).sum(axis=1)
    n_q = len(qs)
    central_counts = np.bincount(
        (np.arange(n_q)[:, None] * k + prototype[None, :])[central], minlength=n_q * k
    ).reshape(n_q, k)
    top = max(int(central_counts.max(initial=0)), 1)
    caps = np.arange(1, top + 1)
    kept = support[:, None] + np.stack([capped_totals(c, caps) for c in central_counts])  # [Q, M]
    bound: Bound = "none"
    if kept[0, 0] <= wanted:
        q_index = 0
        if kept[0, -1] < wanted:
            bound = "high"
    else:
        reach = np.flatnonzero(kept[:, 0] <= wanted)
        q_index = int(reach[0]) if len(reach) else n_q - 1
        if not len(reach):
            bound = "low"
    row = kept[q_index]
    m = int(np.argmin(np.abs(row - wanted)))  # first minimum: the smaller cap on ties
    return CapPlan(int(caps[m]), float(qs[q_index]), int(row[m]), bound)


def settle_exact(
    keep: NDArray[np.bool_],
    adjustable_kept: NDArray[np.bool_],
    adjustable_dropped: NDArray[np.bool_],
    size: int,
    seed: int | Sequence[int] | np.random.SeedSequence,
) -> tuple[NDArray[np.bool_], int]:
    """|S| = ``size`` by seeded random central rows un-kept or kept; also the rows no central row could settle."""
    out = keep.copy()
    residual = size - int(out.sum())
    pool = np.flatnonzero(adjustable_dropped if residual > 0 else adjustable_kept)
    take = min(abs(residual), len(pool))
    chosen = np.random.default_rng(seed).choice(pool, size=take, replace=False) if take else pool[:0]
    out[chosen] = residual > 0
    return out, abs(residual) - take


def select_toward(
    features: NDArray,
    prototypes: NDArray,
    config: CurationConfig,
    seed: int | Sequence[int],
    wanted: int,
    backend: Backend | None = None,
    eligible: NDArray[np.bool_] | None = None,
) -> tuple[Selection, CapPlan]:
    """``select_batch`` at ``plan_caps``' (q_sup, m) for w_t rows, the last |n(m) - w_t| < K settled on central rows."""
    backend_: Backend = backend or CpuBackend()
    f32, sq_norms = float32_rows("features", features)
    p32 = check_prototypes(prototypes, width=f32.shape[1])
    assigned, dist = nearest_prototypes(f32, sq_norms, p32, backend_)
    may_keep = np.ones(len(f32), dtype=bool) if eligible is None else eligible
    plan = plan_caps(dist, assigned, config.k, may_keep, config.support_quantile, config.outlier_quantile, wanted)
    step_config = config.model_copy(update={"max_central": plan.max_central, "support_quantile": plan.support_quantile})
    sel = select_batch(f32, p32, step_config, seed, backend_, eligible=may_keep)
    band = sel.band.copy()
    keep, _ = settle_exact(
        sel.keep,
        sel.keep & (band == Band.CENTRAL_KEPT),
        may_keep & (band == Band.CENTRAL_DROPPED),
        wanted,
        np.random.SeedSequence(seed).spawn(1)[0],
    )
    band[keep & ~sel.keep] = Band.CENTRAL_KEPT
    band[sel.keep & ~keep] = Band.CENTRAL_DROPPED
    return replace(sel, keep=keep, band=band), plan


@dataclass
class TargetTally:
    """The controller's running record over a curation epoch: rows seen and kept, steps, and bound hits."""

    target_ratio: float
    seen: int = 0
    kept: int = 0
    steps: int = 0
    low: int = 0  # steps where m = 1 at the highest q_sup still kept more than wanted
    high: int = 0  # steps where every eligible non-outlier was kept and still fewer than wanted

    def add(self, plan: CapPlan, seen: int, kept: int) -> None:
        self.seen, self.kept, self.steps = self.seen + seen, self.kept + kept, self.steps + 1
        self.low += plan.bound == "low"
        self.high += plan.bound == "high"

    def report(self) -> dict[str, float | int]:
        """Requested and achieved |S| / N and how often the controller hit its bounds."""
        achieved = self.kept / self.seen if self.seen else 0.0
        return {
            "target_ratio": self.target_ratio,
            "achieved_ratio": achieved,
            "steps": self.steps,
            "bound_hits": self.low + self.high,
            "bound_hits_low": self.low,
            "bound_hits_high": self.high,
        }
