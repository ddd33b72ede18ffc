"""``chexcurate export``: a run's curated subset as files training code reads (docs/DATA.md, "Exports")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import console, database, fail, progress_bar


def export(
    run: Annotated[int, typer.Argument(min=1, help="the run whose subset to export")],
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", help="jsonl, csv, openclip-csv, webdataset, parquet, ids or chexficient"),
    ] = "jsonl",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="the file (webdataset: the folder of shards) to write")
    ] = None,
) -> None:
    """Write the subset of RUN in the format given, with its provenance inside the file where the format has a
    place for it and always beside it as OUT.provenance.json; webdataset writes shards of 1,000 samples."""
    from ..errors import ApiError
    from ..exports import FORMATS, export_source

    if fmt not in FORMATS:
        raise fail(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    target = out or Path(spec.filename.format(run=run) if fmt != "webdataset" else f"run-{run}-webdataset")
    if not target.parent.is_dir():
        raise fail(f"folder {str(target.parent)!r} does not exist")
    with database() as sessions, sessions() as session:
        try:
            source = export_source(session, run, fmt)
        except ApiError as exc:
            raise fail(f"{exc.code}: {exc.detail}") from exc
        with progress_bar(f"exporting run {run} as {fmt}") as bar:
            task = bar.add_task("export", total=source.size)
            source.progress = lambda done: bar.update(task, completed=done)
            if fmt == "webdataset":
                written = _shards(source, target)
            else:
                with target.open("wb") as fh:
                    for chunk in spec.write(source):
                        fh.write(chunk)
                written = {"files": [str(target)], "missing_images": []}
        provenance = source.provenance
    sidecar = target.with_name(target.name + ".provenance.json")
    sidecar.write_text(json.dumps(provenance, indent=2))
    for missing in written["missing_images"][:20]:
        console.print(f"[yellow]left out[/] sample {missing['sample_id']}: image {missing['image_uri']} unreadable")
    typer.echo(
        json.dumps({"run_id": run, "format": fmt, "samples": source.size, "provenance": str(sidecar), **written})
    )


def _shards(source: Any, folder: Path) -> dict[str, Any]:
    """The subset as webdataset shards ``shard-000000.tar``, ... of 1,000 samples, written with its ShardWriter."""
    import webdataset as wds

    from ..exports.formats import SHARD_SAMPLES, webdataset_sample

    folder.mkdir(exist_ok=True)
    missing: list[dict[str, Any]] = []
    with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxcount=SHARD_SAMPLES, verbose=0, mtime=0) as sink:
        for row in source.rows():
            sample = webdataset_sample(row, source.root)
            if sample is None:
                missing.append({"sample_id": row["sample_id"], "image_uri": row["image_uri"]})
            else:
                sink.write(sample)
    return {"files": sorted(str(p) for p in folder.glob("shard-*.tar")), "missing_images": missing}
