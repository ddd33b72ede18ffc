"""Budget P2: one curated-batch round trip on the real stack vs the in-process per-prototype loop.

Run: ``.venv/bin/python -m bench.roundtrip``. Needs the local Postgres and Redis. Starts uvicorn and a Celery
worker as real processes on loopback, drives a run through warm-up, then times ``--steps`` curation posts of
640 x 1024 float16 embeddings (upload -> worker -> curated batch back). In the same run it times the loop
selection (bench/baseline.loop_select) on the same batches. Writes the P2 section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import psycopg
import torch

from bench.baseline import loop_select
from bench.report import write_section
from service.auth import create_token
from service.config import Settings
from service.curation import default_backend
from service.db import make_engine, session_factory
from service.migrate import upgrade
from service.runs.posts import apply_embeddings
from service.runs.prototypes import PrototypeCache
from service.runs.schedule import init_or_record
from service.stages import collecting, parse_server_timing
from service.synth.embeddings import long_tailed_embeddings
from tests.servers import celery_worker, private_redis, uvicorn_server
from workers.state import warm_up

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH, DIM = 640, 1024


def make_database(rows: int) -> tuple[str, int]:
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
            "COPY samples (dataset_id, external_id, image_uri, report, report_synthetic, labels, meta, content_hash, "
            "status, created_at, updated_at) FROM STDIN"
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
        conn.commit()
    return url, dataset_id


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def in_process_applies(
    http: httpx.Client, url: str, run_id: int, features: np.ndarray, sample_index: dict[int, int], count: int = 8
) -> tuple[list[float], list[dict[str, float]]]:
    """Time ``apply_embeddings`` called directly on the same database, as the worker calls it (warm kernels, a
    prototype cache, its backend, a session per step), for the next ``count`` curation manifests: the round
    trip minus this is the transport and dispatch overhead."""
    warm_up(cuda=True)
    # This young database has no planner statistics yet (autovacuum has not analyzed it): a fresh connection would
    # plan the step's DELETE of stored embeddings as a scan of the run's whole heap, where the worker's long-lived
    # connection still holds its index-scan plan. Analyze first, as autovacuum would.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    engine = make_engine(url)
    sessions, backend = session_factory(engine), default_backend()
    cache: PrototypeCache = {}
    limit = Settings().step_failure_limit
    init = partial(init_or_record, limit=limit)  # as the worker's curate task passes them
    times: list[float] = []
    stages: list[dict[str, float]] = []
    while len(times) < count:
        m = http.post(f"/v1/runs/{run_id}/manifests").raise_for_status().json()
        if m["manifest_id"] is None or m["phase"] != "curation" or len(m["items"]) != BATCH:
            break
        ids = [item["sample_id"] for item in m["items"]]
        for sid in ids:
            sample_index.setdefault(sid, len(sample_index))
        batch = features[[sample_index[s] for s in ids]]
        with sessions() as session, collecting() as found:
            start = time.perf_counter()
            apply_embeddings(session, run_id, m["manifest_id"], batch, init, limit, cache=cache, backend=backend)
            times.append(time.perf_counter() - start)
        stages.append(found)
    engine.dispose()
    return times, stages


def stage_table(rows: list[dict[str, float]]) -> list[str]:
    """Median ms per stage over the trips (stages in the order they first ran), as markdown table rows."""
    names: list[str] = []
    for row in rows:
        names += [name for name in row if name not in names]
    return [f"| {name} | {np.median([row.get(name, 0.0) for row in rows]):.2f} |" for name in names]


def main() -> None:
    global BATCH, DIM  # the functions above read the sizes of this run
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100, help="timed curation round trips")
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per curated batch (the run's batch_size)")
    parser.add_argument("--dim", type=int, default=DIM, help="embedding width")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    parser.add_argument("--eager", action="store_true", help="no broker or worker: the API computes (diagnosis)")
    args = parser.parse_args()
    BATCH, DIM = args.batch, args.dim
    torch.set_num_threads(2)
    warmup = 4 * BATCH
    rows = warmup + (args.steps + 12) * BATCH
    url, dataset_id = make_database(rows)
    synth = long_tailed_embeddings(rows, DIM, seed=7)
    features = synth.features.astype(np.float16)
    engine = make_engine(url)
    with session_factory(engine)() as session:
        admin = create_token(session, "bench", "admin")
    engine.dispose()
    trips: list[float] = []
    loops: list[float] = []
    served: list[dict[str, float]] = []  # the API's Server-Timing per trip
    broker = contextlib.ExitStack()
    env = {"CHEX_DATABASE_URL": url, "CHEX_CURATION_WAIT_SECONDS": "60"}
    if not args.eager:  # a redis-server of the bench's own: no other process's queues or load on it
        env["CHEX_BROKER_URL"] = broker.enter_context(private_redis(Path(tempfile.mkdtemp(prefix="chex-bench-"))))
    worker = contextlib.nullcontext() if args.eager else celery_worker(env)
    with broker, uvicorn_server(env) as base, worker:
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=120)
        config = {"warmup_samples": warmup, "epochs": 2, "curation_epochs": 1, "batch_size": BATCH}
        run_id = (
            http.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}).raise_for_status().json()["id"]
        )
        sample_index: dict[int, int] = {}
        while len(trips) < args.steps:
            m = http.post(f"/v1/runs/{run_id}/manifests").raise_for_status().json()
            if m["manifest_id"] is None:
                time.sleep(0.05)
                continue
            ids = [item["sample_id"] for item in m["items"]]
            for sid in ids:
                sample_index.setdefault(sid, len(sample_index))
            batch = features[[sample_index[s] for s in ids]]
            body = npy(batch)
            start = time.perf_counter()
            answer = http.post(
                f"/v1/runs/{run_id}/manifests/{m['manifest_id']}/embeddings",
                content=body,
                headers={"Content-Type": "application/octet-stream"},
            ).raise_for_status()
            elapsed = time.perf_counter() - start
            if m["phase"] != "curation" or len(ids) != BATCH:
                continue
            trips.append(elapsed)
            served.append(parse_server_timing(answer.headers.get("server-timing", "")))
            protos = np.frombuffer(
                psycopg.connect(url)
                .execute(
                    "SELECT vectors FROM prototype_versions WHERE run_id = %s AND version = %s",
                    (run_id, answer.json()["prototype_version"]),
                )
                .fetchone()[0],
                dtype=np.float32,
            ).reshape(6, DIM)
            f32 = batch.astype(np.float32)
            f32 /= np.linalg.norm(f32, axis=1, keepdims=True)
            tf, tp = torch.from_numpy(f32), torch.from_numpy(protos.copy())
            starts = np.random.default_rng(len(trips)).random(6)
            loop_select(tf, tp, starts)
            t0 = time.perf_counter()
            loop_select(tf, tp, starts)
            loops.append(time.perf_counter() - t0)
        applies, applied_stages = in_process_applies(http, url, run_id, features, sample_index)
    p50, p99 = np.percentile(trips, 50) * 1e3, np.percentile(trips, 99) * 1e3
    apply50 = float(np.median(applies)) * 1e3 if applies else float("nan")
    loop50 = float(np.median(loops)) * 1e3
    own = [{k: v for k, v in s.items() if not k.startswith("worker.")} for s in served]  # the API's own stages
    served_total = float(np.median([sum(s.values()) for s in own])) if own else float("nan")
    api_stages = [{k: v for k, v in s.items() if not k.startswith("wait")} for s in own]
    worker_stages = [{k[7:]: v for k, v in s.items() if k.startswith("worker.")} for s in served]
    # the wait minus the worker's own stages: queueing, Celery's message handling, and the answer's way back
    transport = [s.get("wait for worker", 0.0) - sum(w.values()) for s, w in zip(served, worker_stages, strict=True)]
    ok50, ok99 = p50 <= 3 * loop50, p99 <= 3 * p50
    body_md = "\n".join(
        [
            "## P2: curated-batch round trip on the real stack"
            + (" (EAGER: no worker, diagnosis only)" if args.eager else ""),
            "",
            "Budget: p50 <= 3x the in-process per-prototype-loop selection (bench/baseline.loop_select, same batches, "
            "measured in the same run); p99 <= 3x own p50. Stack: uvicorn + Celery worker (solo pool) + Redis + "
            f"Postgres as real processes on loopback; each trip posts {BATCH} x {DIM} float16 embeddings (.npy, "
            f"{BATCH * DIM * 2 / 1e6:.1f} MB) and gets the curated batch back; the worker stores embeddings, selects, "
            f"updates the prototypes and writes {BATCH} decisions before answering. {len(trips)} timed curation steps "
            "(long-tailed synthetic embeddings, K=6).",
            "",
            "| measure | ms | budget | |",
            "|---|---|---|---|",
            f"| loop selection, in-process (median) | {loop50:.2f} | | |",
            f"| round trip p50 | {p50:.2f} | <= {3 * loop50:.2f} | {'met' if ok50 else 'MISSED'} |",
            f"| round trip p99 | {p99:.2f} | <= {3 * p50:.2f} | {'met' if ok99 else 'MISSED'} |",
            f"| of the p50: the worker's step in-process (store, select, EMA, decisions, commit; median of "
            f"{len(applies)}) | {apply50:.2f} | | |",
            f"| of the p50: HTTP upload, Redis hand-over, Celery dispatch and result | {p50 - apply50:.2f} | | |",
            "",
            "Where the time goes (median ms per stage; the API's from its `Server-Timing` header, the worker's step "
            "from the in-process applies, timed with the same stage names):",
            "",
            "| stage | ms |",
            "|---|---|",
            f"| client: round trip (median) | {float(np.median(trips)) * 1e3:.2f} |",
            f"| client: HTTP outside the handler (round trip - handler) | "
            f"{float(np.median(trips)) * 1e3 - served_total:.2f} |",
            *[f"| API: {row[2:]}" for row in stage_table(api_stages)],
            *[
                f"| API: {row[2:]}"
                for row in stage_table([{"wait for worker": s.get("wait for worker", 0.0)} for s in own])
            ],
            *(
                [
                    *[f"| worker (in the round trip): {row[2:]}" for row in stage_table(worker_stages)],
                    f"| queue, Celery and answer hand-back (wait - worker stages) | {np.median(transport):.2f} |",
                ]
                if any(worker_stages)
                else []
            ),
            *[f"| worker step (in-process, {len(applies)} steps): {row[2:]}" for row in stage_table(applied_stages)],
            "",
            "Reproduce: `.venv/bin/python -m bench.roundtrip --steps "
            f"{args.steps}{'' if (BATCH, DIM) == (640, 1024) else f' --batch {BATCH} --dim {DIM}'}`.",
        ]
    )
    if not args.no_write:
        write_section("P2", body_md)
    print(body_md)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    print(
        f"P2 p50 {p50:.1f} ms (budget {3 * loop50:.1f}), p99 {p99:.1f} ms (budget {3 * p50:.1f})",
        "met" if ok50 and ok99 else "MISSED",
    )


if __name__ == "__main__":
    main()
