"""``chexcurate demo``: the command, and the tables it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .common import console, fail, subset_table


def demo(
    out_dir: Annotated[Path, typer.Option(help="where the demo writes its files (replaced on each run)")] = Path(
        ".demo"
    ),
    train: Annotated[int, typer.Option(min=50, help="synthetic training studies")] = 2000,
    test: Annotated[int, typer.Option(min=20, help="held-out test studies")] = 500,
    size: Annotated[int, typer.Option(min=16, max=512, help="synthetic image side in pixels")] = 64,
    epochs: Annotated[int, typer.Option(min=2, help="training epochs (1 curation epoch, the rest on the subset)")] = 20,
    batch_size: Annotated[int, typer.Option(min=8, help="super-batch size")] = 128,
    max_central: Annotated[int, typer.Option(min=1, help="central rows kept per prototype and super-batch")] = 2,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    serve: Annotated[
        bool, typer.Option("--serve", help="then keep serving the demo's run in the explorer (/ui) until Ctrl-C")
    ] = False,
    port: Annotated[int, typer.Option(min=1, max=65535, help="the explorer's port with --serve")] = 8000,
) -> None:
    """The whole path on the embedded defaults: synthetic CXR set → service (SQLite) → trainer → subset → eval.

    Generates a long-tailed synthetic image–report set, starts ``chexcurate serve`` on a fresh SQLite database
    with tasks in-process, registers the set, creates a run and trains the tiny CLIP model on CPU with
    ``chexcurate-train`` (warm-up → one curation epoch → the rest on the curated subset), then prints what the
    subset keeps and the zero-shot AUC on the held-out split. Files: OUT_DIR/stats.png (the service's plot),
    subset.jsonl, trainer/latest.pt. The last stdout line is the summary as JSON. With ``--serve`` the service then
    goes on serving the demo's database, and the explorer's URL and a sign-in token are printed.
    """
    from ..demo import DemoOptions, run_demo

    options = DemoOptions(
        out_dir=out_dir,
        train=train,
        test=test,
        size=size,
        epochs=epochs,
        batch_size=batch_size,
        max_central=max_central,
        warmup_samples=min(512, train),
        seed=seed,
        progress=progress,
    )
    try:
        summary = run_demo(options, lambda line: console.print(line, highlight=False))
    except (RuntimeError, TimeoutError, ValueError) as exc:
        raise fail(escape(str(exc))) from exc
    _print_demo(summary)
    typer.echo(json.dumps(summary))
    if serve:
        _serve_explorer(summary["files"]["database"], port)
    else:
        console.print(
            f"explore run {summary['run_id']} in a browser: [bold]chexcurate demo --serve[/] (or make demo SERVE=1), "
            "then open the /ui URL it prints"
        )


def _serve_explorer(database_url: str, port: int) -> None:
    """The demo's database served on ``port`` with tasks in-process, until Ctrl-C; prints the explorer's URL."""
    import uvicorn

    from ..api.app import create_app
    from ..auth import create_token
    from ..config import Settings

    settings = Settings(database_url=database_url, broker_url=None)
    app = create_app(settings)
    with app.state.sessions() as session:
        token = create_token(session, "demo-explorer", "admin")
    console.print(f"explorer: [bold]http://127.0.0.1:{port}/ui[/] (sign in with the admin token {token}); Ctrl-C stops")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _print_demo(summary: dict[str, Any]) -> None:
    out = Console()
    table = subset_table(
        "CheXficient demo: the curated subset", "pairs in the dataset (readable)", summary["pairs"], summary
    )
    auc = summary["zero_shot_macro_auc"]
    table.add_row("zero-shot macro AUC (test split)", "-" if auc is None else f"{auc:.4f}")
    recall = summary.get("retrieval_image_to_text") or {}
    if recall:
        table.add_row("image→report R@1 / R@5 / R@10", " / ".join(f"{v:.3f}" for v in recall.values()))
    out.print(table)
    shares = Table("", "dataset share", "subset share", "subset ÷ dataset", title="what the subset keeps")
    for name, e in summary["label_enrichment"].items():
        ratio = e.get("ratio")
        shares.add_row(
            f"{name} (rare)",
            f"{e['dataset_share']:.4f}",
            f"{e['subset_share']:.4f}",
            "-" if ratio is None else f"{ratio:.2f}",
        )
    for name in ("near_duplicates", "noisy_pairs"):
        e = summary[name]
        ratio = "-" if e["ratio"] is None else f"{e['ratio']:.2f}"
        shares.add_row(
            f"[italic]{name.replace('_', ' ')}", f"{e['dataset_share']:.4f}", f"{e['subset_share']:.4f}", ratio
        )
    out.print(shares)
    files = summary["files"]
    console.print(f"plot {files['plot']}, subset {files['subset']}, checkpoint {files['checkpoint']}")
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in summary["seconds"].items())
    console.print(f"time: {seconds}")
