"""NIH ChestX-ray14: ``Data_Entry_2017*.csv`` (``Image Index``, ``Finding Labels`` joined by ``|``, ``Follow-up #``,
``Patient ID``, ``View Position``), images in ``images/``. Label-only: each report is made from the labels (the
paper's choice for such sets) and flagged synthetic. The official split comes from ``train_val_list.txt`` and
``test_list.txt`` when they are there."""

from __future__ import annotations

from collections.abc import Iterator

from .common import Context, Item, Record, Refusal, Source, image_folder, locate, open_table

TABLE = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017*.csv")
REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "View Position")
SPLITS = (("train_val_list.txt", "train"), ("test_list.txt", "test"))
META_COLUMNS = ("Follow-up #", "Patient Age", "Patient Gender", "View Position")


def read(ctx: Context) -> Source:
    table = open_table(ctx, locate(ctx, ctx.options.table, *TABLE, what="NIH Data_Entry table"), REQUIRED)
    return Source(_items(table.rows, table.source, image_folder(ctx, "images"), _splits(ctx)), table.progress)


def _splits(ctx: Context) -> dict[str, str]:
    split: dict[str, str] = {}
    for name, label in SPLITS:
        path = ctx.root / name
        if path.is_file():
            split.update((line.strip(), label) for line in path.read_text().splitlines() if line.strip())
    return split


def _items(
    rows: Iterator[tuple[int, dict[str, str]]], source: str, folder: str, splits: dict[str, str]
) -> Iterator[Item]:
    for line, row in rows:
        image = row.get("Image Index", "")
        if "__error__" in row or not image:
            yield Refusal(line, source, image or None, row.get("__error__", "missing Image Index"))
            continue
        labels = [label.strip() for label in row.get("Finding Labels", "").split("|") if label.strip()]
        view = row.get("View Position") or None
        patient = row.get("Patient ID") or None
        yield Record(
            line=line,
            source=source,
            external_id=image,
            image=f"{folder}{image}",
            labels=labels,
            view=view,
            frontal=view.upper() in ("PA", "AP") if view else None,
            patient_id=patient,
            # one study per image: NIH numbers a patient's follow-up studies in the file name (00000013_016.png)
            study_id=image.rsplit(".", 1)[0],
            split=splits.get(image),
            synthesize=True,
            meta={c: row[c] for c in META_COLUMNS if row.get(c)},
        )
