"""Offline curation of embedding files, and a synthetic embedding set to try it on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..curation import (
    CentralSampler,
    CurationConfig,
    OfflineCuration,
    compute_fraction,
    curate_offline,
    stored_unit_rows,
)
from ..exports import FORMATS
from ..exports.source import ArraySubset
from ..offline_files import EmbeddingFileError, check_export_path, file_sha256, load_embeddings, save_embeddings
from ..uploads import float16_problems
from .common import console, fail, subset_table

K = Annotated[int | None, typer.Option(help="prototypes K (default 6)")]
MAX_CENTRAL = Annotated[int | None, typer.Option(help="central rows kept per prototype (default 10)")]
SAMPLER = Annotated[CentralSampler | None, typer.Option(help="central sampler: fps, density or random")]
BATCH = Annotated[int | None, typer.Option(help="super-batch size (default 640)")]
SEED = Annotated[int | None, typer.Option(help="seed (default 0)")]
WARMUP = Annotated[int | None, typer.Option(help="rows sampled for k-means (default 2560)")]


def _config(**knobs: Any) -> CurationConfig:
    try:
        return CurationConfig(**{k: v for k, v in knobs.items() if v is not None})
    except ValueError as exc:
        raise fail(f"invalid curation config: {exc}") from exc


def _curate(features: np.ndarray, config: CurationConfig, order: np.ndarray) -> OfflineCuration:
    with Progress(
        TextColumn("curating super-batches"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("curate", total=None)
        return curate_offline(
            features, config, progress=lambda done, total: bar.update(task, completed=done, total=total), order=order
        )


def synth_embeddings(
    out: Annotated[Path, typer.Argument(help="output .npz (sample_id, embedding, finding, duplicate_of, noisy)")],
    rows: Annotated[int, typer.Option(min=1, help="number of pairs")] = 20000,
    dim: Annotated[int, typer.Option(min=2, help="curation feature width D (even)")] = 1024,
    seed: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Generate a long-tailed, redundant, slightly noisy embedding set for trying curation."""
    from ..synth.embeddings import long_tailed_embeddings

    if out.suffix != ".npz":
        raise fail(f"output must be a .npz file, got {out.name!r}")
    try:
        synth = long_tailed_embeddings(rows, dim, seed)
    except ValueError as exc:
        raise fail(str(exc)) from exc
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
        key, keys, emb = load_embeddings(embeddings)
    except (EmbeddingFileError, ValueError) as exc:
        raise fail(str(exc)) from exc
    if len(keys) < config.k:
        raise fail(f"{embeddings}: {len(keys)} rows cannot make k={config.k} prototypes")
    nonfinite, zero = float16_problems(emb)
    if len(nonfinite) or len(zero):
        bad, what = (nonfinite, "contain NaN or Inf, or |x| > 65504") if len(nonfinite) else (zero, "are all zeros")
        raise fail(f"{embeddings}: embedding rows {bad[:10].tolist()} {what} as float16 (the storage type)")
    # what the service would store and read: float16, then unit rows; rows taken in the order of their key
    features = stored_unit_rows(emb)
    try:
        result = _curate(features, config, np.argsort(keys, kind="stable"))
    except ValueError as exc:
        raise fail(f"{embeddings}: {exc}") from exc
    provenance = _provenance(embeddings, key, result, config) | {"format": out.suffix.lstrip(".")}
    subset = ArraySubset(key, keys, result.prototype, result.distance, result.band, result.keep, result.batch + 1,
                         provenance)  # fmt: skip
    with out.open("wb") as fh:
        for chunk in FORMATS["csv" if out.suffix == ".csv" else "jsonl"].write(subset):  # type: ignore[arg-type]
            fh.write(chunk)
    out.with_name(out.name + ".provenance.json").write_text(json.dumps(provenance, indent=2))
    summary = _summary(result, config)
    _print_summary(summary)
    console.print(f"subset of {summary['subset_size']} rows written to {out} (+ {out.name}.provenance.json)")
    typer.echo(json.dumps(summary))


def _provenance(source: Path, key: str, result: OfflineCuration, config: CurationConfig) -> dict[str, Any]:
    """The export convention's provenance of a file's curation (docs/DATA.md, "Exports")."""
    from ..stats import EXPORT_COLUMNS

    return {
        "mode": "offline",
        "source": str(source),
        "source_sha256": file_sha256(source),
        "key": key,
        "config": config.model_dump(),
        "seed": config.seed,
        "model_id": None,
        "prototype_version": 1,
        "prototypes": result.prototypes.tolist(),
        "rows": int(len(result.keep)),
        "subset_size": int(result.keep.sum()),
        "subset_ratio": result.subset_ratio,
        "band_counts": result.band_counts(),
        "columns": list(EXPORT_COLUMNS),
        "steps_from": 1,
        "storage": "float16",
    }


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
    Console().print(subset_table("curated subset", "rows", summary["rows"], summary))
