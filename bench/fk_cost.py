"""What a curation step's per-row foreign-key checks cost: the P2 remainder's largest database share, measured apart.

Run: ``.venv/bin/python -m bench.fk_cost [--rows 640 --repeats 40]``. Needs the local Postgres; creates (and drops)
its own database. A step appends ``--rows`` decision rows and as many embedding rows, each with two foreign keys
(``run_id`` -> runs, ``sample_id`` -> samples): Postgres checks every key of every row with a query of its own.
Here ``--rows`` rows go by COPY into a table with those two keys and into the same table without them, alternating,
one commit each; the difference is what the checks cost per batch. Prints, writes nothing.
"""

from __future__ import annotations

import argparse
import time
import uuid

import numpy as np
import psycopg

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
COLUMNS = (
    "id bigserial primary key, run_id bigint not null{run}, sample_id bigint not null{sample}, epoch int, v float8"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    name = f"chex_fk_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE runs (id bigint primary key)")
            conn.execute("INSERT INTO runs VALUES (1)")
            conn.execute("CREATE TABLE samples (id bigint primary key)")
            conn.execute("INSERT INTO samples SELECT generate_series(1, %s)", (args.rows * args.repeats,))
            keys = COLUMNS.format(run=" references runs (id)", sample=" references samples (id)")
            conn.execute(f"CREATE TABLE with_keys ({keys}, unique (run_id, epoch, sample_id))")
            conn.execute(
                f"CREATE TABLE without_keys ({COLUMNS.format(run='', sample='')}, unique (run_id, epoch, sample_id))"
            )
            conn.execute("ANALYZE")
        times: dict[str, list[float]] = {"with_keys": [], "without_keys": []}
        with psycopg.connect(url) as conn:
            for rep in range(args.repeats):
                ids = range(rep * args.rows + 1, (rep + 1) * args.rows + 1)
                for table, found in times.items():
                    start = time.perf_counter()
                    with conn.cursor().copy(f"COPY {table} (run_id, sample_id, epoch, v) FROM STDIN") as copy:
                        for sample_id in ids:
                            copy.write_row((1, sample_id, 1, 0.5))
                    conn.commit()
                    found.append(time.perf_counter() - start)
        with_keys, without = (1e3 * float(np.median(t[3:])) for t in times.values())
        print(
            f"{args.rows} rows by COPY + commit, median of {args.repeats - 3}: with the two foreign keys "
            f"{with_keys:.2f} ms, without {without:.2f} ms: the checks cost {with_keys - without:.2f} ms a batch"
        )
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
