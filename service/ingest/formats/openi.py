"""Open-i (Indiana University chest X-rays): ``ecgen-radiology/*.xml``, one report each (sections in
``MedlineCitation/Article/Abstract/AbstractText[@Label]``, MeSH terms under ``MeSH/major``), linked to its images by
``parentImage/@id`` (``CXR2_IM-0652-1001`` -> ``CXR2_IM-0652-1001.png``). The XML names no projection: give one as
``projections`` (Kaggle's ``indiana_projections.csv``: ``filename``, ``projection``), or every view is "unknown"."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from ..rows import MalformedBody
from .common import Context, Item, LayoutError, Record, Refusal, Source, image_folder, locate, open_table

REPORTS = "ecgen-radiology"
#: largest report file read (the published ones are a few KB)
MAX_XML_BYTES = 1 << 20
_NUMBER = re.compile(r"(\d+)")


def read(ctx: Context) -> Source:
    folder = locate(ctx, ctx.options.table, REPORTS, what="Open-i reports folder (ecgen-radiology)")
    if not folder.is_dir():
        raise LayoutError(f"{folder.name} is not a folder of report XML files")
    files = sorted(folder.glob("*.xml"), key=_natural)
    if not files:
        raise LayoutError(f"{folder.name} holds no .xml reports")
    projections = _projections(ctx)
    done = [0]
    return Source(_items(files, image_folder(ctx, ""), projections, done), lambda: (done[0], len(files)))


def _natural(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in _NUMBER.split(path.name))


def image_key(name: str) -> str:
    """An image's Open-i id from a projections file name: ``1_IM-0001-4001.dcm.png`` -> ``CXR1_IM-0001-4001``."""
    stem = name.split("/")[-1].removesuffix(".png").removesuffix(".dcm").removesuffix(".jpg")
    return stem if stem.startswith("CXR") else "CXR" + stem


def _projections(ctx: Context) -> dict[str, str] | None:
    if ctx.options.projections is None:
        return None
    path = locate(ctx, ctx.options.projections, what="Open-i projections table")
    table = open_table(ctx, path, ("filename", "projection"))
    return {image_key(row["filename"]): row["projection"] for _, row in table.rows if row.get("filename")}


def parse_report(data: bytes, name: str) -> ET.Element:
    """The report's XML tree; a document type declaration (entity expansion) is refused before parsing."""
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise MalformedBody(f"{name}: XML with a document type declaration is not read")
    try:
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise MalformedBody(f"{name}: not well-formed XML ({exc})") from exc


def _text(element: ET.Element | None) -> str:
    return "" if element is None else " ".join("".join(element.itertext()).split())


def _items(files: list[Path], folder: str, projections: dict[str, str] | None, done: list[int]) -> Iterator[Item]:
    for number, path in enumerate(files, start=1):
        done[0] = number
        if path.stat().st_size > MAX_XML_BYTES:
            yield Refusal(number, path.name, None, f"report file over {MAX_XML_BYTES} bytes")
            continue
        root = parse_report(path.read_bytes(), path.name)
        report = root.find("uId")
        study = report.get("id") if report is not None else None
        if not study:
            yield Refusal(number, path.name, None, "no uId: the report has no id")
            continue
        sections = {
            (node.get("Label") or "").upper(): _text(node) for node in root.iterfind(".//Abstract/AbstractText")
        }
        labels: list[str] = []
        for term in (_text(node) for node in root.iterfind("MeSH/major")):
            head = term.split("/")[0].strip()
            if head and head not in labels:
                labels.append(head)
        images = [node.get("id") or "" for node in root.iterfind("parentImage")]
        if not images:
            yield Refusal(number, path.name, None, f"no image: report {study} links none (no parentImage)")
        for image in images:
            if not image:
                yield Refusal(number, path.name, None, "a parentImage without an id")
                continue
            view = projections.get(image) if projections is not None else None
            yield Record(
                line=number,
                source=path.name,
                external_id=image,
                image=f"{folder}{image}.png",
                findings=sections.get("FINDINGS", ""),
                impression=sections.get("IMPRESSION", ""),
                labels=labels,
                view=view,
                frontal=view.lower() == "frontal" if view else None,
                # the collection holds one study per patient and names no patient: the report id stands for both
                patient_id=study,
                study_id=study,
                meta={"indication": sections["INDICATION"]} if sections.get("INDICATION") else {},
            )
