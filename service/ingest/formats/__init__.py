"""Importers of the public CXR sets, one module per published layout; each yields ``Record``s (or a ``Refusal``
per row it cannot read) and knows how far through the set it is. ``service.ingest.importer`` applies the
preprocessing options and stores the samples. docs/DATA.md describes each layout and the choices made."""

from __future__ import annotations

from collections.abc import Callable

from ...schemas.imports import ImportFormat
from . import chexpert_plus, mimic, nih, openi, padchest
from .common import Context, Item, LayoutError, Record, Refusal, Source

READERS: dict[ImportFormat, Callable[[Context], Source]] = {
    "mimic-cxr": mimic.read,
    "chexpert-plus": chexpert_plus.read,
    "padchest": padchest.read,
    "openi": openi.read,
    "nih": nih.read,
}

__all__ = ["READERS", "Context", "Item", "LayoutError", "Record", "Refusal", "Source"]
