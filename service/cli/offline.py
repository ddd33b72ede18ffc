"""Offline curation of embedding files, and a synthetic embedding set to try it on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..curation import (
    CentralSampler,
    CurationConfig,
    OfflineCuration,
    PrototypeMode,
    compute_fraction,
    curate_offline,
    epsilon_sweep,
    offline_assignment,
    patient_codes,
    stored_unit_rows,
)
from ..curation.config import MAX_DEDUP_EPSILON
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
TARGET = Annotated[float | None, typer.Option(help="subset share |S|/N to hit exactly (off: the bands decide)")]
DEDUP = Annotated[float | None, typer.Option(help="drop near-duplicates: cosine >= 1 - eps within a prototype")]
SAME_PATIENT = Annotated[
    bool, typer.Option(help="only same-patient pairs are duplicates (the .npz needs a patient_id array)")
]
PROTOTYPE_MODE = Annotated[
    PrototypeMode | None, typer.Option(help="flat (the paper) or hierarchical (balanced k-means sampling)")
]
HIERARCHY = Annotated[str | None, typer.Option(help="hierarchical clusters per level, finest first, e.g. 512,51,6")]


def _config(**knobs: Any) -> CurationConfig:
    try:
        return CurationConfig(**{k: v for k, v in knobs.items() if v is not None})
    except ValueError as exc:
        raise fail(f"invalid curation config: {exc}") from exc


def _levels(hierarchy: str | None) -> tuple[int, ...] | None:
    if hierarchy is None:
        return None
    try:
        return tuple(int(c) for c in hierarchy.split(","))
    except ValueError as exc:
        raise fail(f"--hierarchy must be comma-separated integers, got {hierarchy!r}") from exc


def _patients(path: Path, needed: bool) -> np.ndarray | None:
    """Integer patient codes (-1 unknown) from the file's ``patient_id`` array, when same-patient dedup asks."""
    if not needed:
        return None
    with np.load(path, allow_pickle=False) as data:
        if "patient_id" not in data.files:
            raise fail(f"{path}: --dedup-same-patient needs a patient_id array in the file")
        return patient_codes(data["patient_id"].astype(str).tolist())


def _curate(
    features: np.ndarray, config: CurationConfig, order: np.ndarray, patient: np.ndarray | None = None
) -> OfflineCuration:
    with Progress(
        TextColumn("curating super-batches"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("curate", total=None)
        return curate_offline(
            features,
            config,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            order=order,
            patient=patient,
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
    target_ratio: TARGET = None,
    dedup_epsilon: DEDUP = None,
    dedup_same_patient: SAME_PATIENT = False,
    prototype_mode: PROTOTYPE_MODE = None,
    hierarchy: HIERARCHY = None,
) -> None:
    """Offline curation of stored embeddings: k-means, per-prototype band selection, subset export.

    Modes beyond the paper (docs/MODES.md), each off unless asked for: --target-ratio, --dedup-epsilon
    (--dedup-same-patient), --prototype-mode hierarchical (--hierarchy).
    """
    config = _config(
        k=k,
        max_central=max_central,
        central_sampler=sampler,
        batch_size=batch_size,
        seed=seed,
        warmup_samples=warmup_samples,
        epochs=epochs,
        target_ratio=target_ratio,
        dedup_epsilon=dedup_epsilon,
        dedup_same_patient=dedup_same_patient or None,
        prototype_mode=prototype_mode,
        hierarchy=_levels(hierarchy),
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
        result = _curate(
            features, config, np.argsort(keys, kind="stable"), _patients(embeddings, config.dedup_same_patient)
        )
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
        "modes": result.modes,
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
        "modes": result.modes,
    }


def _print_summary(summary: dict[str, Any]) -> None:
    Console().print(subset_table("curated subset", "rows", summary["rows"], summary))


def dedup_sweep(
    embeddings: Annotated[Path, typer.Argument(help=".npz with sample_id (int64) and embedding ([n, D]) arrays")],
    eps: Annotated[list[float], typer.Option("--eps", help="epsilons to try (repeat the option)")] = [  # noqa: B006
        0.001,
        0.005,
        0.01,
        0.02,
        0.05,
    ],
    same_patient: SAME_PATIENT = False,
    examples: Annotated[int, typer.Option(min=0, max=20, help="borderline pairs shown per eps")] = 3,
    k: K = None,
    seed: SEED = None,
    warmup_samples: WARMUP = None,
) -> None:
    """Before committing to an eps: per eps, the near-duplicate pairs and rows the dedup rule would remove."""
    if not eps or any(not 0 < e <= MAX_DEDUP_EPSILON for e in eps):
        raise fail(f"--eps values must be in (0, {MAX_DEDUP_EPSILON}], got {eps}")
    config = _config(k=k, seed=seed, warmup_samples=warmup_samples)
    try:
        key, keys, emb = load_embeddings(embeddings)
    except (EmbeddingFileError, ValueError) as exc:
        raise fail(str(exc)) from exc
    if len(keys) < config.k:
        raise fail(f"{embeddings}: {len(keys)} rows cannot make k={config.k} prototypes")
    features = stored_unit_rows(emb)
    assigned = offline_assignment(features, config, np.argsort(keys, kind="stable"))[1]
    points = epsilon_sweep(features, assigned, eps, _patients(embeddings, same_patient), examples)
    table = Table("eps", "pairs", "rows removed", "groups", "least similar pairs that count", title="dedup sweep")
    out = []
    for p in points:
        shown = [{key: int(keys[i]), "with": int(keys[j]), "cosine": round(s, 5)} for i, j, s in p.examples]
        out.append(
            {"epsilon": p.epsilon, "pairs": p.pairs, "removed": p.removed, "groups": p.groups, "examples": shown}
        )
        pairs = "; ".join(f"{int(keys[i])}~{int(keys[j])} ({s:.4f})" for i, j, s in p.examples)
        table.add_row(str(p.epsilon), str(p.pairs), f"{p.removed} of {len(keys)}", str(p.groups), pairs)
    console.print(table)
    typer.echo(json.dumps({"rows": len(keys), "same_patient": same_patient, "sweep": out}))
