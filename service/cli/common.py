"""What every command shares: the stderr console, the exit-2 failure, and the table of a curated subset."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from rich.table import Table

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
    return table
