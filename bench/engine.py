"""Budget P1: engine selection (and the prototype update) vs the straightforward per-prototype loop.

Run: ``make bench`` or ``.venv/bin/python -m bench.engine``. Writes the P1 section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.baseline import loop_select, loop_update
from bench.report import interleaved_medians, write_section
from workers.curation import CurationConfig, init_prototypes, select_batch, update_prototypes
from workers.synthetic import long_tailed_embeddings

BUDGET = 0.25
SIZES = ((640, 1024, 6), (2560, 1024, 64))


def measure(batch: int, dim: int, k: int, batches: int, repeats: int) -> dict[str, float]:
    synth = long_tailed_embeddings(batch * batches + 4096, dim, seed=1)
    feats = synth.features
    config = CurationConfig(k=k, warmup_samples=4096)
    protos = init_prototypes(feats[:4096], k, seed=0)
    pool = feats[4096:]
    sel_engine, sel_loop, upd_engine, upd_loop, agree = [], [], [], [], []
    for b in range(batches):
        f = np.ascontiguousarray(pool[b * batch : (b + 1) * batch])
        tf, tp = torch.from_numpy(f), torch.from_numpy(protos)
        starts = np.random.default_rng((0, b)).random(k)
        engine_keep = select_batch(f, protos, config, seed=(0, b)).keep
        agree.append(float((engine_keep == loop_select(tf, tp, starts).numpy()).mean()))
        kept = f[engine_keep]
        tk = torch.from_numpy(kept)
        t = interleaved_medians(
            {
                "engine": lambda f=f, b=b: select_batch(f, protos, config, seed=(0, b)),
                "loop": lambda tf=tf, tp=tp, s=starts: loop_select(tf, tp, s),
                "engine_update": lambda kept=kept: update_prototypes(protos, kept, config),
                "loop_update": lambda tk=tk, tp=tp: loop_update(tp, tk),
            },
            repeats,
        )
        sel_engine.append(t["engine"])
        sel_loop.append(t["loop"])
        upd_engine.append(t["engine_update"])
        upd_loop.append(t["loop_update"])
    return {
        "engine_ms": 1e3 * float(np.median(sel_engine)),
        "loop_ms": 1e3 * float(np.median(sel_loop)),
        "engine_update_ms": 1e3 * float(np.median(upd_engine)),
        "loop_update_ms": 1e3 * float(np.median(upd_loop)),
        "agreement": float(np.mean(agree)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=10, help="distinct super-batches per size")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per batch and method")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows, ok = [], True
    for batch, dim, k in SIZES:
        r = measure(batch, dim, k, args.batches, args.repeats)
        ratio = r["engine_ms"] / r["loop_ms"]
        ok &= ratio <= BUDGET
        rows.append(
            f"| B={batch}, D={dim}, K={k} | {r['engine_ms']:.2f} | {r['loop_ms']:.2f} | **{ratio:.3f}** "
            f"| {'met' if ratio <= BUDGET else 'MISSED'} | {r['agreement']:.4%} "
            f"| {r['engine_update_ms']:.3f} | {r['loop_update_ms']:.3f} "
            f"| {r['engine_update_ms'] / r['loop_update_ms']:.2f} |"
        )
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            "## P1: curation engine vs the per-prototype loop",
            "",
            f"Budget: engine selection <= {BUDGET}x the straightforward loop (torch.cdist + torch.quantile + Python "
            "FPS loop per prototype, structured like the authors' `_select_samples`; `bench/baseline.py`) on "
            "identical arrays: long-tailed synthetic curation features "
            "(`workers/synthetic.py`), k-means prototypes from 4,096 warm-up rows; median over "
            f"{args.batches} super-batches x {args.repeats} interleaved calls; both on 2 threads.",
            "",
            "| size | engine select (ms) | loop select (ms) | ratio | P1 | keep-mask agreement | engine update (ms) "
            "| loop update (ms) | update ratio |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Reproduce: `make bench` (or `.venv/bin/python -m bench.engine`).",
        ]
    )
    write_section("P1", body)
    print("P1", "met" if ok else "MISSED")


if __name__ == "__main__":
    main()
