"""``chexcurate import``: a public CXR set from its published layout into a dataset of the service's database."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from .common import console, database, fail, progress_bar

FORMAT_HELP = "mimic-cxr, chexpert-plus, padchest, openi or nih"


def import_set(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help=FORMAT_HELP)],
    root: Annotated[Path, typer.Argument(help="the set's folder, as published (becomes the dataset's root)")],
    name: Annotated[str, typer.Option(help="the dataset's name (created, or the existing one with this root)")],
    all_views: Annotated[bool, typer.Option("--all-views", help="keep lateral views too")] = False,
    sections: Annotated[str, typer.Option(help="findings+impression, impression or findings")] = "findings+impression",
    keep_empty_reports: Annotated[bool, typer.Option(help="keep rows with empty or placeholder reports")] = False,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="do not store the set's labels")] = False,
    uncertain_labels: Annotated[str, typer.Option(help="CheXpert -1 labels: negative (U-Zeros) or positive")] = (
        "negative"
    ),
    no_image_check: Annotated[bool, typer.Option("--no-image-check", help="do not read the images")] = False,
    table: Annotated[str | None, typer.Option(help="the main table, if not its published name")] = None,
    split_file: Annotated[str | None, typer.Option(help="mimic-cxr: the split table")] = None,
    labels_file: Annotated[str | None, typer.Option(help="mimic-cxr / chexpert-plus: the labels table")] = None,
    reports: Annotated[str | None, typer.Option(help="mimic-cxr: reports folder or sectioned CSV")] = None,
    projections: Annotated[
        str | None, typer.Option(help="openi: each image's projection (indiana_projections.csv)")
    ] = None,
    images: Annotated[str | None, typer.Option(help="the images' folder under the root")] = None,
    rejections: Annotated[Path | None, typer.Option(help="write every skipped and refused row to this CSV")] = None,
) -> None:
    """Import a public chest X-ray set from its published layout (docs/DATA.md), with the paper's preprocessing:
    frontal views, findings + impression, no empty reports, the set's labels. Idempotent: importing again updates
    what changed. Prints the counts as JSON on stdout."""
    from pydantic import ValidationError

    from ..errors import ApiError
    from ..ingest.importer import run_import
    from ..schemas.imports import FORMATS, ImportOptions, ImportRequest

    if fmt not in FORMATS:
        raise fail(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    try:
        options = ImportOptions(
            frontal_only=not all_views,
            sections=sections,
            reject_empty_reports=not keep_empty_reports,
            labels=not no_labels,
            uncertain_labels=uncertain_labels,
            check_images=not no_image_check,
            table=table,
            split_file=split_file,
            labels_file=labels_file,
            reports=reports,
            projections=projections,
            images=images,
        )
    except ValidationError as exc:
        raise fail(f"invalid options: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    request = ImportRequest(format=fmt, options=options)
    with database() as sessions, sessions() as session:
        dataset_id, dataset_root = _dataset(session, name, root)
        log = rejections.open("w", newline="") if rejections else None
        writer = csv.writer(log) if log else None
        if writer:
            writer.writerow(["kind", "source", "line", "external_id", "reason"])
        try:
            with progress_bar(f"importing {fmt}") as bar:
                task = bar.add_task("import", total=None)
                result = run_import(
                    session,
                    dataset_id,
                    dataset_root,
                    request,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                    on_issue=(lambda kind, i: writer.writerow([kind, i.source, i.line, i.external_id, i.reason]))
                    if writer
                    else None,
                )
        except ApiError as exc:
            raise fail(f"{exc.code}: {exc.detail}") from exc
        finally:
            if log:
                log.close()
    _print(result.model_dump(), name)
    summary = result.model_dump(exclude={"skipped_rows", "rejected_rows"}) | {"dataset_id": dataset_id}
    typer.echo(json.dumps(summary))


def _dataset(session: Session, name: str, root: Path) -> tuple[int, Path]:
    """The dataset ``name`` (created with ``root``, or found with that root), checked as the API checks a root."""
    from sqlalchemy import select

    from ..config import get_settings
    from ..ingest.paths import PathRejected, check_root
    from ..models import Dataset
    from ..schemas.datasets import DatasetCreate

    settings = get_settings()
    try:
        DatasetCreate(name=name, root=str(root))
        normal = check_root(str(root.absolute()), settings.allowed_root_dirs(), settings.path_limits())
    except PathRejected as exc:
        raise fail(f"root {root}: {exc.reason}") from exc
    except ValueError as exc:
        raise fail(f"invalid dataset name {name!r} (letters, digits, '.', '_', '-')") from exc
    dataset = session.scalar(select(Dataset).where(Dataset.name == name))
    if dataset is None:
        dataset = Dataset(name=name, root=normal)
        session.add(dataset)
        session.commit()
    elif dataset.root != normal:
        raise fail(f"dataset {name!r} exists with another root ({dataset.root}); choose another name")
    return dataset.id, Path(dataset.root)


def _print(result: dict[str, Any], name: str) -> None:
    table = Table("figure", "value", title=f"{result['format']} into dataset {name}")
    for key in ("rows", "accepted", "updated", "unchanged", "skipped", "rejected"):
        table.add_row(key, str(result[key]))
    for kind in ("skipped_by_reason", "rejected_by_reason"):
        for reason, count in sorted(result[kind].items(), key=lambda kv: -kv[1])[:10]:
            table.add_row(f"  {kind.split('_')[0]}: {reason}", str(count))
    console.print(table)
