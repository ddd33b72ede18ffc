"""Budget P3: bulk embedding ingest over HTTP into Postgres vs a raw binary COPY of the same rows.

Run: ``.venv/bin/python -m bench.ingest [--rows 100000 --dim 1024]``. Needs the local Postgres. Starts a
real uvicorn process on loopback, uploads one ``.npz`` per repeat, and alternates with the raw COPY.
Writes the P3 section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import http.client
import io
import time
import uuid

import numpy as np
import psycopg

from bench.report import write_section
from service.auth import create_token
from service.db import make_engine, session_factory
from service.migrate import upgrade
from service.storage.embedding_writer import embedding_copy_payload
from tests.servers import uvicorn_server

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BUDGET = 0.5


def setup_database(rows: int) -> tuple[str, int, list[int]]:
    name = f"chex_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    with psycopg.connect(url) as conn:
        dataset_id = conn.execute(
            "INSERT INTO datasets (name, root, created_at) VALUES ('bench', '/tmp', now()) RETURNING id"
        ).fetchone()[0]
        with conn.cursor().copy(
            "COPY samples (dataset_id, external_id, image_uri, report, report_synthetic, labels, "
            "meta, content_hash, status, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i in range(rows):
                copy.write_row(
                    (
                        dataset_id,
                        f"s{i}",
                        f"{i}.png",
                        "r",
                        False,
                        "[]",
                        "{}",
                        "0" * 64,
                        "accepted",
                        "2026-01-01",
                        "2026-01-01",
                    )
                )
        runs = [
            conn.execute(
                "INSERT INTO runs (dataset_id, config, seed, phase, epoch, step, prototype_version, progress, "
                "created_at) VALUES (%s, '{}', 0, 'warmup', 0, 0, 0, '{}', now()) RETURNING id",
                (dataset_id,),
            ).fetchone()[0]
            for _ in range(2)
        ]
        conn.commit()
    return url, dataset_id, runs


def sample_ids(url: str, dataset_id: int) -> np.ndarray:
    with psycopg.connect(url) as conn:
        return np.array(
            [r[0] for r in conn.execute("SELECT id FROM samples WHERE dataset_id = %s ORDER BY id", (dataset_id,))],
            dtype=np.int64,
        )


def raw_copy(url: str, run_id: int, ids: np.ndarray, emb: np.ndarray) -> float:
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM embeddings WHERE run_id = %s", (run_id,))
        conn.commit()
        start = time.perf_counter()
        payload = embedding_copy_payload(run_id, ids, emb, 0)
        with conn.cursor().copy(
            "COPY embeddings (run_id, sample_id, dim, vector, step) FROM STDIN (FORMAT binary)"
        ) as copy:
            view = memoryview(payload)
            for offset in range(0, len(view), 8 << 20):
                copy.write(view[offset : offset + (8 << 20)])
        conn.commit()
        return time.perf_counter() - start


def http_upload(base: str, token: str, run_id: int, body: bytes, url: str) -> float:
    """POST the archive with the stdlib client: httpx pushes large bodies through pure-Python h11, several times
    slower than curl or http.client, which would measure the client, not the service."""
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM embeddings WHERE run_id = %s", (run_id,))
        conn.commit()
    host, port = base.removeprefix("http://").split(":")
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    conn.request(
        "POST",
        f"/v1/runs/{run_id}/embeddings",
        body=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
    )
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"upload failed: {response.status} {answer[:300]!r}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    url, dataset_id, (run_http, run_copy) = setup_database(args.rows)
    ids = sample_ids(url, dataset_id)
    emb = np.random.default_rng(0).standard_normal((args.rows, args.dim)).astype(np.float16)
    buf = io.BytesIO()
    np.savez(buf, sample_id=ids, embedding=emb)
    body = buf.getvalue()
    engine = make_engine(url)
    with session_factory(engine)() as session:
        token = create_token(session, "bench", "admin")
    engine.dispose()
    copy_t, http_t = [], []
    with uvicorn_server({"CHEX_DATABASE_URL": url, "CHEX_MAX_BODY_BYTES": str(4 * len(body))}) as base:
        for _ in range(args.repeats):
            copy_t.append(raw_copy(url, run_copy, ids, emb))
            http_t.append(http_upload(base, token, run_http, body, url))
            print(f"copy {copy_t[-1]:.2f} s   http {http_t[-1]:.2f} s", flush=True)
    copy_s, http_s = float(np.median(copy_t)), float(np.median(http_t))
    ratio = copy_s / http_s
    mb = len(body) / 1e6
    body_md = "\n".join(
        [
            "## P3: bulk embedding ingest over HTTP vs raw COPY",
            "",
            f"Budget: HTTP ingest rate >= {BUDGET}x a raw `COPY embeddings ... (FORMAT binary)` of the same rows "
            "(psycopg, one connection, the binary payload prebuilt with numpy so only the database is timed), "
            f"same run. {args.rows:,} x {args.dim} float16 rows ({mb:.0f} MB .npz); the HTTP "
            "path is a real uvicorn process on loopback: upload, spool, validation (shape, finiteness, duplicate and "
            "foreign ids), binary COPY (straight into the table on a first upload; through a staging table and an "
            "upsert when rows already exist, so re-posting is idempotent). Medians of "
            f"{args.repeats} alternating repeats.",
            "",
            "| path | seconds | rows/s | ratio to COPY | P3 |",
            "|---|---|---|---|---|",
            f"| raw COPY (binary) | {copy_s:.2f} | {args.rows / copy_s:,.0f} | 1.00 | |",
            f"| HTTP bulk upload | {http_s:.2f} | {args.rows / http_s:,.0f} | **{ratio:.2f}** | "
            f"{'met' if ratio >= BUDGET else 'MISSED'} |",
            "",
            f"Reproduce: `.venv/bin/python -m bench.ingest --rows {args.rows} --dim {args.dim}`.",
        ]
    )
    write_section("P3", body_md)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    print("P3", "met" if ratio >= BUDGET else "MISSED", f"{ratio:.2f}")


if __name__ == "__main__":
    main()
