"""PadChest: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (``ImageID``, ``ImageDir``, ``StudyID``,
``PatientID``, ``Projection``, ``Report`` (stemmed Spanish, as published), ``Labels`` (a Python list literal)),
images at ``{ImageDir}/{ImageID}`` under the root. No official split."""

from __future__ import annotations

import ast
from collections.abc import Iterator

from .common import Context, Item, Record, Refusal, Source, image_folder, locate, open_table

TABLE = ("PADCHEST_chest_x_ray_images_labels_160K*.csv.gz", "PADCHEST_chest_x_ray_images_labels_160K*.csv",
         "PADCHEST_chest_x_ray_images_labels*.csv.gz", "PADCHEST_chest_x_ray_images_labels*.csv")  # fmt: skip
REQUIRED = ("ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report", "Labels")
#: frontal projections (the CheXficient authors' list; COSTAL, the rib views, included as they did)
FRONTAL = frozenset({"PA", "AP", "AP_horizontal", "COSTAL"})
META_COLUMNS = ("Projection", "Pediatric", "MethodLabel", "StudyDate_DICOM", "PatientSex_DICOM")
#: labels that say the image is unusable rather than what it shows
NOT_FINDINGS = frozenset({"exclude", "suboptimal study"})


def read(ctx: Context) -> Source:
    table = open_table(ctx, locate(ctx, ctx.options.table, *TABLE, what="PadChest table"), REQUIRED)
    return Source(_items(table.rows, table.source, image_folder(ctx, "")), table.progress)


def parse_labels(text: str) -> list[str]:
    """``"['normal', ' pacemaker']"`` as a list of stripped labels (a literal, never evaluated as code)."""
    if not text or text == "nan":
        return []
    value = ast.literal_eval(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of strings")
    labels: list[str] = []
    for label in (v.strip() for v in value):
        if label and label not in labels:
            labels.append(label)
    return labels


def _items(rows: Iterator[tuple[int, dict[str, str]]], source: str, folder: str) -> Iterator[Item]:
    for line, row in rows:
        image_id, image_dir = row.get("ImageID", ""), row.get("ImageDir", "")
        if "__error__" in row or not image_id:
            yield Refusal(line, source, image_id or None, row.get("__error__", "missing ImageID"))
            continue
        try:
            labels = parse_labels(row.get("Labels", ""))
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            yield Refusal(line, source, image_id, f"Labels is not a list literal of strings ({type(exc).__name__})")
            continue
        view = row.get("Projection") or None
        yield Record(
            line=line,
            source=source,
            external_id=image_id,
            image=f"{folder}{image_dir}/{image_id}" if image_dir else f"{folder}{image_id}",
            text=row.get("Report", ""),
            labels=[label for label in labels if label not in NOT_FINDINGS],
            view=view,
            frontal=view in FRONTAL if view else None,
            patient_id=row.get("PatientID") or None,
            study_id=row.get("StudyID") or None,
            meta={c: row[c] for c in META_COLUMNS if row.get(c) and row[c] != "nan"},
        )
