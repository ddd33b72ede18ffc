"""CheXpert Plus: ``df_chexpert_plus_*.csv``, one row per image (``path_to_image``, ``frontal_lateral``,
``section_findings``, ``section_impression``, ``deid_patient_id``, ``split``, ...), images at ``path_to_image``
under the root. Its labels ship apart: a CheXpert-style table (``path_to_image`` or ``Path``, the 14 observations)
given as ``labels_file``."""

from __future__ import annotations

from collections.abc import Iterator

from .common import (
    CHEXPERT_LABELS,
    Context,
    Item,
    LayoutError,
    Record,
    Refusal,
    Source,
    chexpert_labels,
    locate,
    open_table,
)

TABLE = ("df_chexpert_plus_*.csv.gz", "df_chexpert_plus_*.csv")
REQUIRED = ("path_to_image", "frontal_lateral", "section_findings", "section_impression")
META_COLUMNS = ("ap_pa", "patient_report_date_order", "age", "sex")


def read(ctx: Context) -> Source:
    table = open_table(ctx, locate(ctx, ctx.options.table, *TABLE, what="CheXpert Plus table"), REQUIRED)
    labels: dict[str, dict[str, str]] | None = None
    if ctx.options.labels and ctx.options.labels_file is not None:
        path = locate(ctx, ctx.options.labels_file, what="CheXpert Plus labels table")
        lookup = open_table(ctx, path, ())
        key = next((k for k in ("path_to_image", "Path") if k in lookup.header), None)
        if key is None:
            raise LayoutError(f"{path.name} has neither a path_to_image nor a Path column")
        labels = {_image_key(row.get(key, "")): row for _, row in lookup.rows}
    return Source(_items(table.rows, table.source, labels), table.progress)


def _image_key(path: str) -> str:
    """``train/patient00001/study1/view1_frontal.jpg`` whether written with the ``CheXpert-v1.0/`` prefix or not."""
    return path.split("CheXpert-v1.0/", 1)[-1].removeprefix("CheXpert-v1.0-small/")


def _items(rows: Iterator[tuple[int, dict[str, str]]], source: str, labels: dict | None) -> Iterator[Item]:
    for line, row in rows:
        path = row.get("path_to_image", "")
        if "__error__" in row or not path:
            yield Refusal(line, source, path or None, row.get("__error__", "missing path_to_image"))
            continue
        parts = _image_key(path).split("/")
        view = row.get("frontal_lateral") or None
        label_row = labels.get(_image_key(path)) if labels is not None else None
        positive, uncertain = chexpert_labels(label_row, CHEXPERT_LABELS) if label_row else ([], [])
        yield Record(
            line=line,
            source=source,
            external_id=path,
            image=path,
            findings=row.get("section_findings", ""),
            impression=row.get("section_impression", ""),
            labels=positive if label_row else None,
            uncertain=uncertain,
            view=view,
            frontal=view.lower() == "frontal" if view else None,
            patient_id=row.get("deid_patient_id") or (parts[1] if len(parts) > 2 else None),
            study_id="/".join(parts[1:3]) if len(parts) > 3 else None,
            split=row.get("split") or None,
            meta={c: row[c] for c in META_COLUMNS if row.get(c)},
        )
