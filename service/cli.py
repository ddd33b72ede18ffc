"""The ``chexcurate`` command line (Typer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from workers.curation import CentralSampler, CurationConfig, OfflineCuration, compute_fraction, curate_offline
from workers.offline_io import (
    EmbeddingFileError,
    check_export_path,
    export_subset,
    load_embeddings,
    save_embeddings,
)

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

    uvicorn.run("service.main:create_app", factory=True, host=host, port=port, workers=workers)


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues: curation (batches), refresh (heavy)")] = (
        "curation,refresh"
    ),
    pool: Annotated[str, typer.Option(help="solo (one process per GPU), threads or prefork")] = "solo",
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    loglevel: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run a Celery worker (needs CHEX_BROKER_URL). On a GPU node run one solo worker per device."""
    from service.config import get_settings

    if not get_settings().broker_url:
        raise _fail("CHEX_BROKER_URL is not set: without a broker the API runs tasks itself, no worker needed")
    from workers.celery_app import app as celery_app

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
        ]
    )


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
    from service.auth import create_token
    from service.config import get_settings
    from service.db import make_engine, session_factory

    engine = make_engine(get_settings().database_url)
    try:
        with session_factory(engine)() as session:
            token = create_token(session, name, role, run)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    finally:
        engine.dispose()
    typer.echo(token)


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
    from workers.synthetic import long_tailed_embeddings

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
    out_dir: Annotated[Path, typer.Option(help="where the demo writes its files")] = Path(".demo"),
    rows: Annotated[int, typer.Option(min=100)] = 20000,
    seed: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Generate a long-tailed embedding set, curate it offline, print what the subset keeps."""
    from workers.plots import curation_figure_png
    from workers.report import flagged_share, label_enrichment
    from workers.synthetic import long_tailed_embeddings

    out_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"generating {rows} long-tailed pairs (D=1024) ...")
    synth = long_tailed_embeddings(rows, 1024, seed)
    source = out_dir / "embeddings.npz"
    save_embeddings(source, np.arange(rows, dtype=np.int64), synth.features.astype(np.float16))
    config = CurationConfig(seed=seed)
    ids, emb = load_embeddings(source)
    result = _curate(emb, config)
    export_subset(out_dir / "subset.jsonl", ids, result, config, source)

    summary = _summary(result, config)
    enrichment = label_enrichment(synth.finding, result.keep, synth.names)
    summary["label_enrichment"] = {n: round(e["ratio"], 3) for n, e in enrichment.items()}
    summary["near_duplicates"] = flagged_share(synth.duplicate_of >= 0, result.keep)
    summary["noisy_pairs"] = flagged_share(synth.noisy, result.keep)
    plot = out_dir / "curation.png"
    plot.write_bytes(curation_figure_png(result.band, result.distance, enrichment, f"offline curation, {rows} pairs"))
    _print_summary(summary)
    table = Table("finding", "dataset share", "subset share", "enrichment", title="label enrichment")
    for name, e in enrichment.items():
        table.add_row(name, f"{e['dataset_share']:.4f}", f"{e['subset_share']:.4f}", f"{e['ratio']:.2f}")
    for name in ("near_duplicates", "noisy_pairs"):
        e = summary[name]
        table.add_row(f"[italic]{name}", f"{e['dataset_share']:.4f}", f"{e['subset_share']:.4f}", f"{e['ratio']:.2f}")
    Console().print(table)
    console.print(f"files in {out_dir}/: embeddings.npz, subset.jsonl, subset.jsonl.provenance.json, curation.png")
    typer.echo(json.dumps(summary))


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


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table("figure", "value", title="curated subset")
    table.add_row("rows", str(summary["rows"]))
    table.add_row("subset size", str(summary["subset_size"]))
    table.add_row("subset ratio", f"{summary['subset_ratio']:.2%}")
    table.add_row("compute fraction (vs full data)", f"{summary['compute_fraction']:.2%}")
    for band, count in summary["band_counts"].items():
        table.add_row(f"band {band}", str(count))
    Console().print(table)


if __name__ == "__main__":
    app()
