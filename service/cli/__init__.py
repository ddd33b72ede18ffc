"""The ``chexcurate`` command line (Typer)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.curation import CentralSampler, CurationConfig, OfflineCuration, compute_fraction, curate_offline
from service.offline_files import (
    EmbeddingFileError,
    check_export_path,
    export_subset,
    load_embeddings,
    save_embeddings,
)
from service.synth import SynthFormat

app = typer.Typer(help="CheXficient curation for chest X-ray vision-language pretraining.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
token_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")
console = Console(stderr=True)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP API (settings from CHEX_* environment variables)."""
    import uvicorn

    uvicorn.run("service.api.app:create_app", factory=True, host=host, port=port, workers=workers)


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues: curation (batches), refresh (heavy)")] = (
        "curation,refresh"
    ),
    pool: Annotated[str, typer.Option(help="solo (one process per GPU), threads or prefork")] = "solo",
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    loglevel: Annotated[str, typer.Option()] = "info",
    hostname: Annotated[str | None, typer.Option(help="Celery node name, e.g. gpu0@%h (default celery@%h)")] = None,
) -> None:
    """Run a Celery worker (needs CHEX_BROKER_URL). On a GPU node run one solo worker per device."""
    from service.config import get_settings

    if not get_settings().broker_url:
        raise _fail("CHEX_BROKER_URL is not set: without a broker the API runs tasks itself, no worker needed")
    from celery.signals import worker_ready

    from service.launcher import WORKER_READY
    from workers.celery_app import app as celery_app

    @worker_ready.connect(weak=False)
    def announce(**_: Any) -> None:
        os.write(1, f"{WORKER_READY}\n".encode())  # what launchers wait for: fd 1, past Celery's stdout logger

    celery_app.worker_main(
        [
            "worker",
            "-Q",
            queues,
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *(["--hostname", hostname] if hostname else []),
        ]
    )


@app.command()
def up(
    host: Annotated[str, typer.Option(help="interface the API binds")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    api_workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    workers: Annotated[int, typer.Option(min=0, help="Celery workers on the curation and refresh queues")] = 1,
    refresh_workers: Annotated[int, typer.Option(min=0, help="extra Celery workers on the refresh queue only")] = 0,
    migrate: Annotated[bool, typer.Option(help="apply the Alembic migrations first")] = True,
    admin_token: Annotated[bool, typer.Option(help="create an admin token and print it once")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for /readyz and the workers")] = 90.0,
    loglevel: Annotated[str, typer.Option()] = "info",
) -> None:
    """The docker-compose topology as local processes: migrate, API, Celery workers; Ctrl-C stops them all.

    Configuration comes from the CHEX_* environment (or .env), as for every other command: CHEX_DATABASE_URL
    (Postgres for more than one process) and CHEX_BROKER_URL (Redis) for the workers.
    """
    from service.launcher import StackSpec, run_forever, stack

    spec = StackSpec(
        host=host,
        port=port,
        api_workers=api_workers,
        workers=("curation,refresh",) * workers + ("refresh",) * refresh_workers,
        migrate=migrate,
        loglevel=loglevel,
    )

    def echo(name: str, line: str) -> None:
        console.print(f"[dim]{name:>8} |[/] {escape(line)}", highlight=False, soft_wrap=True)

    try:
        with stack(spec, {}, timeout=timeout, echo=echo) as running:
            console.print(f"API      {running.url}  (OpenAPI {running.url}/docs, metrics {running.url}/metrics)")
            for child in running.children[1:]:
                console.print(f"{child.name:<8} pid {child.pid}")
            if admin_token:
                typer.echo(_new_token("admin", "chexcurate up", None))
            console.print("ready; Ctrl-C stops the stack")
            code = run_forever(running)
    except (ValueError, RuntimeError, TimeoutError) as exc:
        raise _fail(escape(str(exc))) from exc
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply the migrations to CHEX_DATABASE_URL."""
    from service.config import get_settings
    from service.migrate import upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    console.print(f"database at {url.split('@')[-1]} is at revision {revision}")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin or trainer")],
    name: Annotated[str, typer.Option(help="who or what holds it")] = "cli",
    run: Annotated[list[int] | None, typer.Option(help="run id a trainer token may use (repeatable)")] = None,
) -> None:
    """Create a token and print it once; only its hash is stored."""
    typer.echo(_new_token(role, name, run))


def _new_token(role: str, name: str, runs: list[int] | None) -> str:
    from service.auth import create_token
    from service.config import get_settings
    from service.db import make_engine, session_factory

    engine = make_engine(get_settings().database_url)
    try:
        with session_factory(engine)() as session:
            return create_token(session, name, role, runs)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    finally:
        engine.dispose()


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code=2)


def _config(**knobs: Any) -> CurationConfig:
    try:
        return CurationConfig(**{k: v for k, v in knobs.items() if v is not None})
    except ValueError as exc:
        raise _fail(f"invalid curation config: {exc}") from exc


def _curate(features: np.ndarray, config: CurationConfig) -> OfflineCuration:
    with Progress(
        TextColumn("curating super-batches"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("curate", total=None)
        return curate_offline(
            features, config, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )


K = Annotated[int | None, typer.Option(help="prototypes K (default 6)")]
MAX_CENTRAL = Annotated[int | None, typer.Option(help="central rows kept per prototype (default 10)")]
SAMPLER = Annotated[CentralSampler | None, typer.Option(help="central sampler: fps, density or random")]
BATCH = Annotated[int | None, typer.Option(help="super-batch size (default 640)")]
SEED = Annotated[int | None, typer.Option(help="seed (default 0)")]
WARMUP = Annotated[int | None, typer.Option(help="rows sampled for k-means (default 2560)")]


@app.command("synth-embeddings")
def synth_embeddings(
    out: Annotated[Path, typer.Argument(help="output .npz (sample_id, embedding, finding, duplicate_of, noisy)")],
    rows: Annotated[int, typer.Option(min=1, help="number of pairs")] = 20000,
    dim: Annotated[int, typer.Option(min=2, help="curation feature width D (even)")] = 1024,
    seed: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Generate a long-tailed, redundant, slightly noisy embedding set for trying curation."""
    from service.synth.embeddings import long_tailed_embeddings

    if out.suffix != ".npz":
        raise _fail(f"output must be a .npz file, got {out.name!r}")
    try:
        synth = long_tailed_embeddings(rows, dim, seed)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    save_embeddings(
        out,
        np.arange(rows, dtype=np.int64),
        synth.features.astype(np.float16),
        finding=synth.finding,
        finding_names=np.asarray(synth.names),
        duplicate_of=synth.duplicate_of,
        noisy=synth.noisy,
    )
    console.print(f"wrote {rows} x {dim} float16 embeddings to {out}")


@app.command()
def synth(
    out_dir: Annotated[Path, typer.Argument(help="output folder (created; a previous synth output is replaced)")],
    train: Annotated[int, typer.Option(min=1, help="training studies")] = 2000,
    test: Annotated[int, typer.Option(min=0, help="held-out test studies (one per patient, never noisy)")] = 500,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    size: Annotated[int, typer.Option(min=16, max=4096, help="image side in pixels")] = 128,
    noise_rate: Annotated[
        float, typer.Option(min=0, max=1, help="mismatched reports and blank images (kept by ingest)")
    ] = 0.03,
    corrupt_rate: Annotated[
        float, typer.Option(min=0, max=1, help="truncated (rejected by ingest) and undecodable images; 0 for none")
    ] = 0.01,
    followup_rate: Annotated[float, typer.Option(min=0, max=1, help="patients with near-duplicate follow-ups")] = 0.2,
    max_followups: Annotated[int, typer.Option(min=1, help="follow-ups per such patient, 1..max")] = 4,
    image_format: Annotated[SynthFormat, typer.Option("--format", help="png, or 12-bit CR DICOM + sidecars")] = (
        SynthFormat.png
    ),
    workers: Annotated[int, typer.Option(min=0, help="rendering processes (0: one per CPU)")] = 1,
) -> None:
    """Generate a seeded, long-tailed, chest-X-ray-like image-report set (train.csv / test.csv for ingest)."""
    import sys
    from dataclasses import asdict

    from tqdm import tqdm

    from service.synth import generate, survives_ingest

    try:
        with tqdm(total=train + test, unit="pair", desc="synth", file=sys.stderr) as bar:
            summary = generate(
                out_dir,
                n_train=train,
                n_test=test,
                seed=seed,
                image_size=size,
                noise_rate=noise_rate,
                corrupt_rate=corrupt_rate,
                followup_rate=followup_rate,
                max_followups=max_followups,
                dicom=image_format is SynthFormat.dicom,
                workers=workers,
                progress=bar.update,
            )
    except (ValueError, FileExistsError) as exc:
        raise _fail(str(exc)) from exc
    table = Table("finding", "train share", "test share", title=f"synthetic CXR set in {out_dir}")
    for label, share in sorted(summary.prevalence.items(), key=lambda item: -item[1]):
        table.add_row(label or "[italic](no finding)", f"{share:.4f}", f"{summary.test_prevalence[label]:.4f}")
    Console().print(table)
    facts = Table("figure", "value")
    facts.add_row("train / test studies", f"{summary.n_train} / {summary.n_test}")
    facts.add_row("train / test patients", f"{summary.patients_train} / {summary.patients_test}")
    facts.add_row("near-duplicate follow-ups (train)", str(summary.near_duplicates))
    for kind, n in summary.noise.items():
        verdict = "kept" if survives_ingest(kind, image_format.value) else "rejected"
        facts.add_row(f"noise: {kind} (ingest: {verdict})", str(n))
    ingest = summary.expected_ingest["train"]
    facts.add_row("train.csv ingest: accepted / rejected", f"{ingest['accepted']} / {ingest['rejected']}")
    facts.add_row("pairs per second", f"{summary.pairs_per_s:.0f}")
    Console().print(facts)
    typer.echo(json.dumps(asdict(summary)))


@app.command()
def curate(
    embeddings: Annotated[Path, typer.Argument(help=".npz with sample_id (int64) and embedding ([n, D]) arrays")],
    out: Annotated[Path, typer.Option("--out", "-o", help="subset export, .jsonl or .csv")] = Path("subset.jsonl"),
    k: K = None,
    max_central: MAX_CENTRAL = None,
    sampler: SAMPLER = None,
    batch_size: BATCH = None,
    seed: SEED = None,
    warmup_samples: WARMUP = None,
    epochs: Annotated[int | None, typer.Option(help="epochs of the planned training (default 20)")] = None,
) -> None:
    """Offline curation of stored embeddings: k-means, per-prototype band selection, subset export."""
    config = _config(
        k=k,
        max_central=max_central,
        central_sampler=sampler,
        batch_size=batch_size,
        seed=seed,
        warmup_samples=warmup_samples,
        epochs=epochs,
    )
    try:
        check_export_path(out)
        ids, emb = load_embeddings(embeddings)
    except (EmbeddingFileError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if len(ids) < config.k:
        raise _fail(f"{embeddings}: {len(ids)} rows cannot make k={config.k} prototypes")
    try:
        result = _curate(emb, config)
    except ValueError as exc:
        raise _fail(f"{embeddings}: {exc}") from exc
    export_subset(out, ids, result, config, embeddings)
    summary = _summary(result, config)
    _print_summary(summary)
    console.print(f"subset of {summary['subset_size']} rows written to {out} (+ {out.name}.provenance.json)")
    typer.echo(json.dumps(summary))


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option(help="where the demo writes its files (replaced on each run)")] = Path(
        ".demo"
    ),
    train: Annotated[int, typer.Option(min=50, help="synthetic training studies")] = 2000,
    test: Annotated[int, typer.Option(min=20, help="held-out test studies")] = 500,
    size: Annotated[int, typer.Option(min=16, max=512, help="synthetic image side in pixels")] = 64,
    epochs: Annotated[int, typer.Option(min=2, help="training epochs (1 curation epoch, the rest on the subset)")] = 20,
    batch_size: Annotated[int, typer.Option(min=8, help="super-batch size")] = 128,
    max_central: Annotated[int, typer.Option(min=1, help="central rows kept per prototype and super-batch")] = 2,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """The whole path on the embedded defaults: synthetic CXR set → service (SQLite) → trainer → subset → eval.

    Generates a long-tailed synthetic image–report set, starts ``chexcurate serve`` on a fresh SQLite database
    with tasks in-process, registers the set, creates a run and trains the tiny CLIP model on CPU with
    ``chexcurate-train`` (warm-up → one curation epoch → the rest on the curated subset), then prints what the
    subset keeps and the zero-shot AUC on the held-out split. Files: OUT_DIR/stats.png (the service's plot),
    subset.jsonl, trainer/latest.pt. The last stdout line is the summary as JSON.
    """
    from service.demo import DemoOptions, run_demo

    options = DemoOptions(
        out_dir=out_dir,
        train=train,
        test=test,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        max_central=max_central,
        warmup_samples=min(512, train),
        seed=seed,
        progress=progress,
    )
    try:
        summary = run_demo(options, lambda line: console.print(line, highlight=False))
    except (RuntimeError, TimeoutError, ValueError) as exc:
        raise _fail(escape(str(exc))) from exc
    _print_demo(summary)
    typer.echo(json.dumps(summary))


def _print_demo(summary: dict[str, Any]) -> None:
    out = Console()
    table = _subset_table(
        "CheXficient demo: the curated subset", "pairs in the dataset (readable)", summary["pairs"], summary
    )
    auc = summary["zero_shot_macro_auc"]
    table.add_row("zero-shot macro AUC (test split)", "-" if auc is None else f"{auc:.4f}")
    recall = summary.get("retrieval_image_to_text") or {}
    if recall:
        table.add_row("image→report R@1 / R@5 / R@10", " / ".join(f"{v:.3f}" for v in recall.values()))
    out.print(table)
    shares = Table("", "dataset share", "subset share", "subset ÷ dataset", title="what the subset keeps")
    for name, e in summary["label_enrichment"].items():
        ratio = e.get("ratio")
        shares.add_row(
            f"{name} (rare)",
            f"{e['dataset_share']:.4f}",
            f"{e['subset_share']:.4f}",
            "-" if ratio is None else f"{ratio:.2f}",
        )
    for name in ("near_duplicates", "noisy_pairs"):
        e = summary[name]
        ratio = "-" if e["ratio"] is None else f"{e['ratio']:.2f}"
        shares.add_row(
            f"[italic]{name.replace('_', ' ')}", f"{e['dataset_share']:.4f}", f"{e['subset_share']:.4f}", ratio
        )
    out.print(shares)
    files = summary["files"]
    console.print(f"plot {files['plot']}, subset {files['subset']}, checkpoint {files['checkpoint']}")
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    console.print(f"time: {seconds}")


def _summary(result: OfflineCuration, config: CurationConfig) -> dict[str, Any]:
    ratio = result.subset_ratio
    return {
        "rows": int(len(result.keep)),
        "subset_size": int(result.keep.sum()),
        "subset_ratio": round(ratio, 4),
        "compute_fraction": round(compute_fraction(ratio, config.epochs, config.curation_epochs), 4),
        "band_counts": result.band_counts(),
        "k": config.k,
        "batch_size": config.batch_size,
        "seed": config.seed,
    }


def _subset_table(title: str, rows_label: str, rows: int, summary: dict[str, Any]) -> Table:
    """Size, ratio, compute fraction and band counts of a curated subset (offline ``curate`` and the demo)."""
    table = Table("figure", "value", title=title)
    table.add_row(rows_label, str(rows))
    table.add_row("subset size", str(summary["subset_size"]))
    table.add_row("subset ratio", f"{summary['subset_ratio']:.2%}")
    table.add_row("compute fraction (vs full data)", f"{summary['compute_fraction']:.2%}")
    for band, count in summary["band_counts"].items():
        table.add_row(f"band {band}", str(count))
    return table


def _print_summary(summary: dict[str, Any]) -> None:
    Console().print(_subset_table("curated subset", "rows", summary["rows"], summary))
