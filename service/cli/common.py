"""What every command shares: the stderr console, the exit-2 failure, the table of a curated subset, the database of
the commands that work on the service's data, a progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.orm import Session, sessionmaker

console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code=2)


def subset_table(title: str, rows_label: str, rows: int, summary: dict[str, Any]) -> Table:
    """Size, ratio, compute fraction and band counts of a curated subset (offline ``curate`` and the demo)."""
    table = Table("figure", "value", title=title)
    table.add_row(rows_label, str(rows))
    table.add_row("subset size", str(summary["subset_size"]))
    table.add_row("subset ratio", f"{summary['subset_ratio']:.2%}")
    table.add_row("compute fraction (vs full data)", f"{summary['compute_fraction']:.2%}")
    for band, count in summary["band_counts"].items():
        table.add_row(f"band {band}", str(count))
    for mode, figures in summary.get("modes", {}).items():
        table.add_row(f"mode {mode}", ", ".join(f"{k}={v}" for k, v in figures.items()))
    return table


@contextmanager
def database() -> Iterator[sessionmaker[Session]]:
    """Sessions on ``CHEX_DATABASE_URL`` (the commands that work on the service's data directly, as an admin)."""
    from ..config import get_settings
    from ..db import make_engine, session_factory

    engine = make_engine(get_settings().database_url)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def progress_bar(what: str) -> Progress:
    """A rich progress bar on stderr (stdout keeps the command's JSON answer)."""
    return Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), TimeElapsedColumn(), console=console
    )
