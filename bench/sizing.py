"""Postgres bytes per stored row (docs/OPERATIONS.md, sizing): embeddings, decisions and samples.

Run: ``.venv/bin/python -m bench.sizing [--rows 50000 --dim 1024]``. Needs the local Postgres. Creates a scratch
database, writes ``rows`` samples, unit-norm float16 embeddings and one curation decision per sample through
the service's own bulk code (binary COPY), VACUUMs, and prints each table's heap, TOAST and index bytes per row.
"""

from __future__ import annotations

import argparse

import numpy as np
import psycopg

from bench.ingest import ADMIN_URL, setup_database
from service.db import make_engine, session_factory
from service.storage.decisions import insert_decisions
from service.storage.embedding_writer import upsert_embeddings

TABLES = ("embeddings", "decisions", "samples")


def measure(url: str, rows: int, dim: int, run_id: int, sample_ids: np.ndarray) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    engine = make_engine(url)
    with session_factory(engine)() as session:
        for start in range(0, rows, 10_000):
            ids = sample_ids[start : start + 10_000]
            f = rng.standard_normal((len(ids), dim)).astype(np.float32)
            f /= np.linalg.norm(f, axis=1, keepdims=True)
            upsert_embeddings(session, run_id, ids, f.astype(np.float16), step=0)
            n = len(ids)
            insert_decisions(
                session, run_id, ids, 1, np.arange(n) // 640, "m" * 36,
                rng.integers(0, 6, n), rng.random(n), rng.integers(0, 4, n), rng.random(n) < 0.25, 1,
            )  # fmt: skip
        session.commit()
    engine.dispose()
    out: dict[str, dict[str, float]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        for table in TABLES:
            heap, toast, index, total = conn.execute(
                "SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0), "
                "pg_indexes_size(c.oid), pg_total_relation_size(c.oid) FROM pg_class c WHERE relname = %s",
                (table,),
            ).fetchone()
            out[table] = {"heap": heap / rows, "toast": toast / rows, "index": index / rows, "total": total / rows}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=1024)
    args = parser.parse_args()
    url, _, runs = setup_database(args.rows)
    try:
        with psycopg.connect(url) as conn:
            ids = np.array([r[0] for r in conn.execute("SELECT id FROM samples ORDER BY id")], dtype=np.int64)
        sizes = measure(url, args.rows, args.dim, runs[0], ids)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    print(f"{args.rows} rows, D={args.dim} float16 ({2 * args.dim} payload bytes per embedding); bytes per row:")
    print(f"{'table':<12}{'heap':>10}{'toast':>10}{'index':>10}{'total':>10}{'GB per 1M rows':>16}")
    for table, s in sizes.items():
        print(
            f"{table:<12}{s['heap']:>10.0f}{s['toast']:>10.0f}{s['index']:>10.0f}{s['total']:>10.0f}"
            f"{s['total'] * 1e6 / 1e9:>16.2f}"
        )


if __name__ == "__main__":
    main()
