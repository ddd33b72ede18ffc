"""Vectorised per-prototype (grouped) primitives: layouts and quantiles without a Python loop over K."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


def stable_label_order(labels: NDArray[np.intp], n_groups: int) -> NDArray[np.intp]:
    """Stable argsort of small non-negative labels; 16-bit keys let numpy use its radix sort."""
    keys = labels.astype(np.uint16) if n_groups <= np.iinfo(np.uint16).max else labels
    return np.argsort(keys, kind="stable")


@dataclass(frozen=True)
class GroupLayout:
    """Rows of some groups packed into a padded ``[G, n_max]`` table, in ascending row order."""

    groups: NDArray[np.intp]  # group id of each table row
    rows: NDArray[np.intp]  # [G, n_max] row index; padding repeats a valid row and is masked by ``valid``
    valid: NDArray[np.bool_]  # [G, n_max]
    counts: NDArray[np.intp]  # [G]

    @property
    def flat_rows(self) -> NDArray[np.intp]:
        """The rows of all groups back to back (group after group, ascending inside each)."""
        return self.rows[self.valid]

    @property
    def starts(self) -> NDArray[np.intp]:
        """Where each group begins in ``flat_rows``."""
        return np.cumsum(self.counts) - self.counts


@dataclass(frozen=True)
class GroupIndex:
    """Rows sorted by group once, so any set of groups can be laid out with a few gathers."""

    rows: NDArray[np.intp]  # ascending within each group
    counts: NDArray[np.intp]  # members per group id
    starts: NDArray[np.intp]

    @classmethod
    def build(cls, rows: NDArray[np.intp], labels: NDArray[np.intp], n_groups: int) -> GroupIndex:
        order = stable_label_order(labels, n_groups)  # rows stay ascending inside a group
        counts = np.bincount(labels, minlength=n_groups)
        return cls(rows=rows[order], counts=counts, starts=np.cumsum(counts) - counts)

    def layout(self, groups: NDArray[np.intp]) -> GroupLayout:
        counts = self.counts[groups]
        offsets = np.arange(int(counts.max()))
        valid = offsets[None, :] < counts[:, None]
        slots = self.starts[groups][:, None] + np.where(valid, offsets[None, :], 0)
        return GroupLayout(groups=groups, rows=self.rows[slots], valid=valid, counts=counts)


def padded_buckets(counts: NDArray[np.intp], max_padding: int) -> list[NDArray[np.intp]]:
    """Split groups (by index into ``counts``) into buckets padded to their largest member count.

    Greedy from the largest group down: a group joins the current bucket while the bucket's padding stays
    within ``max_padding`` rows. Each bucket is one batched pass, so this trades padding against passes.
    """
    order = np.argsort(-counts, kind="stable")
    buckets: list[list[int]] = []
    width, padding = -1, 0
    for g in order.tolist():
        extra = width - int(counts[g])
        if buckets and padding + extra <= max_padding:
            buckets[-1].append(g)
            padding += extra
        else:
            buckets.append([g])
            width, padding = int(counts[g]), 0
    return [np.sort(np.asarray(b, dtype=np.intp)) for b in buckets]


def grouped_quantiles(
    values: NDArray[np.float64], labels: NDArray[np.intp], n_groups: int, quantiles: tuple[float, ...]
) -> NDArray[np.float64]:
    """``quantile(values[labels == k], q)`` for every k and q, bit-identical to ``np.quantile`` (linear).

    Returns ``[len(quantiles), n_groups]``; groups without members get NaN.
    """
    by_value = np.argsort(values, kind="stable")
    order = by_value[stable_label_order(labels[by_value], n_groups)]  # by label, then value: a lexsort
    ordered = values[order]
    counts = np.bincount(labels, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    present = counts > 0
    n = counts[present].astype(np.float64)
    q = np.asarray(quantiles, dtype=np.float64)[:, None]
    virtual = (n - 1) * q  # numpy's 'linear' virtual index, same operation order
    previous = np.floor(virtual)
    gamma = virtual - previous
    lo = starts[present] + previous.astype(np.intp)
    hi = starts[present] + np.minimum(previous + 1, n - 1).astype(np.intp)
    a, b = ordered[lo], ordered[hi]
    diff = b - a
    # numpy's _lerp: a + diff*g, but b - diff*(1-g) from g >= 0.5 on, so results match bit for bit
    interpolated = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    out = np.full((len(quantiles), n_groups), np.nan)
    out[:, present] = interpolated
    return out
