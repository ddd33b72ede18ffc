"""A dataset's DICOM folder scanned in the background (a worker task), answered as the API answers a scan."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from ..config import Settings
from ..ingest import load_dataset, run_dicom_scan
from ..schemas.datasets import DicomScanRequest


def scan_dataset(
    sessions: sessionmaker[Session],
    dataset_id: int,
    request: dict[str, Any],
    settings: Settings,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The scan's result; ApiError for an unknown dataset or a bad path or sidecar (nothing written)."""
    with sessions() as session:
        dataset = load_dataset(session, dataset_id)
        try:
            result = run_dicom_scan(
                session,
                dataset_id,
                Path(dataset.root),
                DicomScanRequest(**request),
                progress,
                settings.path_limits(),
                settings.text_limits(),
            )
        except BaseException:
            session.rollback()
            raise
    return result.model_dump()
