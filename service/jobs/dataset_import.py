"""A public CXR set imported in the background (a worker task), answered as the API answers an import."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ..config import Settings
from ..ingest import load_dataset
from ..ingest.importer import run_import
from ..schemas.imports import ImportRequest


def import_dataset(
    sessions: sessionmaker[Session],
    dataset_id: int,
    request: dict[str, Any],
    settings: Settings,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The import's result; ApiError for an unknown dataset, a wrong layout or an unreadable file (nothing
    written)."""
    with sessions() as session:
        dataset = load_dataset(session, dataset_id)
        result = run_import(
            session,
            dataset_id,
            Path(dataset.root),
            ImportRequest.model_validate(request),
            progress,
            settings.path_limits(),
            settings.text_limits(),
        )
    return result.model_dump()
