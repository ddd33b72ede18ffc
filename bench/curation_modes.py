"""The modes beyond the paper against the faithful default, at the faithful subset size, on synthetic embeddings.

Run: ``.venv/bin/python -m bench.curation_modes [--rows 20000 --dim 256 --seeds 0 1 2 --out .bench/curation_modes]``.

Data: ``service.synth.embeddings.long_tailed_embeddings`` (12 findings, 40 % down to 0.18 %; 30 % follow-up
studies; 3 % mismatched reports) with its ground truth. Each arm runs the engine's ``curate_offline`` (what the
offline job and ``chexcurate curate`` run) on the same float16 unit rows; every arm but the faithful one is asked
for the faithful arm's subset size (``target_ratio`` = its ratio, settled exactly), so the figures compare
compositions, not sizes. Figures per arm, mean and range over seeds:

- rare-third enrichment: share of the rarest third of the findings (4 of 12) in the subset over their share in
  the whole set;
- near-duplicate share: share of subset rows with another member of their true follow-up family in the subset
  (a family: an original study and its follow-ups that are copies of it), and the same over the whole set;
- noisy-pair share: share of mismatched pairs in the subset, and over the whole set.

- zero-shot macro and rare-third AUC of linear image / report adapters trained on the subset's pairs
  (``bench.zero_shot_probe``: the same steps for every arm, scored on a held-out set of 6,000 clean rows with the
  same finding centres); the tiny model of bench.curation_value cannot be trained here, as these are embeddings
  without images or reports.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.curation import CurationConfig, curate_offline, stored_unit_rows
from service.synth.embeddings import SyntheticEmbeddings, long_tailed_embeddings

from .zero_shot_probe import zero_shot_auc

#: the rarest third of the 12 synthetic findings
RARE = 4
#: arm -> config knobs over the default (``target_ratio`` is set to the faithful ratio for every arm but these)
ARMS: dict[str, dict[str, Any]] = {
    "full data": {},
    "faithful": {},
    "random": {},
    "target_ratio": {},
    "dedup eps 0.01": {"dedup_epsilon": 0.01},
    "dedup eps 0.01 same patient": {"dedup_epsilon": 0.01, "dedup_same_patient": True},
    "hierarchical": {"prototype_mode": "hierarchical"},
    "hierarchical + dedup": {"prototype_mode": "hierarchical", "dedup_epsilon": 0.01},
}
#: requested ratios for the accuracy of budget targeting
TARGETS = (0.10, 0.19, 0.30, 0.50)
#: finding centres of seed s are drawn from CENTRES + s, shared by the training, test and prompt sets
CENTRES = 100
TEST_ROWS = 6000
PROMPT_ROWS = 20000


def families(data: SyntheticEmbeddings) -> tuple[np.ndarray, np.ndarray]:
    """Follow-up family of each row (an original and its true copies) and the patient each row belongs to."""
    base = data.duplicate_of
    n = len(base)
    family = np.arange(n)
    copy = np.flatnonzero(base >= 0)
    # the generator also marks follow-ups of follow-ups; their base is redrawn after the copy: no copy of anything
    true_copy = copy[(base[base[copy]] < 0) & ~data.noisy[copy] & ~data.noisy[base[copy]]]
    family[true_copy] = base[true_copy]
    patient = np.where(base >= 0, base, np.arange(n))  # a follow-up is a study of its base's patient
    return family, patient


def composition(keep: np.ndarray, data: SyntheticEmbeddings, family: np.ndarray) -> dict[str, float]:
    rare = data.finding >= len(data.names) - RARE
    in_subset = np.bincount(family[keep], minlength=len(family))
    redundant_subset = float((in_subset[family[keep]] > 1).mean())
    in_all = np.bincount(family, minlength=len(family))
    return {
        "size": int(keep.sum()),
        "ratio": float(keep.mean()),
        "rare_enrichment": float(rare[keep].mean() / rare.mean()),
        "dup_share": redundant_subset,
        "dup_share_all": float((in_all[family] > 1).mean()),
        "noisy_share": float(data.noisy[keep].mean()),
        "noisy_share_all": float(data.noisy.mean()),
    }


def run_seed(rows: int, dim: int, seed: int, auc: bool) -> dict[str, Any]:
    data = long_tailed_embeddings(rows, dim, seed=seed, centre_seed=CENTRES + seed)
    test, prompts = (
        long_tailed_embeddings(n, dim, seed=s, duplicate_rate=0.0, noise_rate=0.0, centre_seed=CENTRES + seed)
        for n, s in ((TEST_ROWS, 1000 + seed), (PROMPT_ROWS, 2000 + seed))
    )
    features = stored_unit_rows(data.features)
    family, patient = families(data)
    out: dict[str, Any] = {"arms": {}, "targets": {}}
    faithful_ratio = 0.0
    for arm, knobs in ARMS.items():
        start = time.perf_counter()
        if arm == "full data":
            keep, modes = np.ones(rows, dtype=bool), {}
        elif arm == "random":
            keep = np.zeros(rows, dtype=bool)
            keep[np.random.default_rng(seed).choice(rows, size=round(faithful_ratio * rows), replace=False)] = True
            modes: dict[str, Any] = {}
        else:
            extra = {} if arm == "faithful" else {"target_ratio": faithful_ratio}
            config = CurationConfig(seed=seed, **knobs, **extra)
            result = curate_offline(features, config, patient=patient)
            keep, modes = result.keep, result.modes
        seconds = time.perf_counter() - start
        if arm == "faithful":
            faithful_ratio = round(float(keep.mean()), 4)
        out["arms"][arm] = composition(keep, data, family) | {"seconds": seconds, "modes": modes}
        if auc:
            out["arms"][arm] |= zero_shot_auc(data, keep, test, prompts, RARE, seed)
    for target in TARGETS:
        result = curate_offline(features, CurationConfig(seed=seed, target_ratio=target))
        out["targets"][str(target)] = result.modes["target_ratio"]
    return out


def summarise(per_seed: list[dict[str, Any]]) -> str:
    lines = [
        "| arm | subset | rare-third enrichment | near-duplicate share (all: {dup}) | noisy-pair share (all: {noisy}) "
        "| macro AUC | rare-third AUC | s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dup_all = np.mean([s["arms"]["faithful"]["dup_share_all"] for s in per_seed])
    noisy_all = np.mean([s["arms"]["faithful"]["noisy_share_all"] for s in per_seed])
    lines[0] = lines[0].format(dup=f"{dup_all:.1%}", noisy=f"{noisy_all:.2%}")
    for arm in ARMS:
        figures = [s["arms"][arm] for s in per_seed]

        def cell(key: str, fmt: str, figures: list[dict[str, Any]] = figures) -> str:
            values = np.array([f[key] for f in figures])
            return f"{format(values.mean(), fmt)} ({format(values.min(), fmt)}–{format(values.max(), fmt)})"

        size = np.mean([f["ratio"] for f in figures])
        aucs = [cell(key, ".3f") if key in figures[0] else "—" for key in ("macro_auc", "rare_auc")]
        lines.append(
            f"| {arm} | {size:.1%} | {cell('rare_enrichment', '.2f')}× | {cell('dup_share', '.1%')} "
            f"| {cell('noisy_share', '.2%')} | {aucs[0]} | {aucs[1]} | {np.mean([f['seconds'] for f in figures]):.1f} |"
        )
    lines += ["", "| requested ratio | achieved (offline, exact) | steps | bound hits | rows settled at the end |"]
    lines.append("|---|---|---|---|---|")
    for target in TARGETS:
        reports = [s["targets"][str(target)] for s in per_seed]
        achieved = ", ".join(f"{r['achieved_ratio']:.4f}" for r in reports)
        lines.append(
            f"| {target} | {achieved} | {reports[0]['steps']} | {sum(r['bound_hits'] for r in reports)} "
            f"| {', '.join(str(r['settled_rows']) for r in reports)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(".bench/curation_modes"))
    parser.add_argument("--no-auc", action="store_true", help="skip the zero-shot probe")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    per_seed = []
    for seed in args.seeds:
        start = time.perf_counter()
        per_seed.append(run_seed(args.rows, args.dim, seed, not args.no_auc))
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    (args.out / "results.json").write_text(json.dumps(per_seed, indent=2))
    table = summarise(per_seed)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
