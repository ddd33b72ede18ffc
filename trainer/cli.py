"""``chexcurate-train``: the trainer's command line. Commands stay thin; the logic lives in the modules they call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(help="CheXficient trainer: CLIP pretraining driven by the curation service.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """CheXficient trainer: CLIP pretraining driven by the curation service, and its evaluation."""


def _render(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    zs = result["zero_shot"]
    table = Table(title=f"Zero-shot findings ({result['n_images']} images)")
    for name, justify in (("finding", "left"), ("AUC", "right"), ("pos", "right"), ("neg", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for finding, counts in zs["counts"].items():
        auc = zs["auc"].get(finding)
        shown = f"{auc:.4f}" if auc is not None else "[dim]skipped[/dim]"
        table.add_row(finding, shown, str(counts["positive"]), str(counts["negative"]))
    macro = zs["macro_auc"]
    table.add_row("[bold]macro[/bold]", f"[bold]{macro:.4f}[/bold]" if macro is not None else "-", "", "")
    console.print(table)
    retrieval = result["retrieval"]
    if retrieval is None:
        console.print(f"retrieval skipped: {result['retrieval_skipped']}")
    else:
        rt = Table(title=f"Retrieval ({retrieval['n']} pairs)")
        rt.add_column("direction")
        for k in retrieval["image_to_text"]:
            rt.add_column(k, justify="right")
        for direction in ("image_to_text", "text_to_image"):
            rt.add_row(direction.replace("_", " "), *(f"{v:.4f}" for v in retrieval[direction].values()))
        console.print(rt)
    if result["unreadable"]:
        console.print(f"[yellow]{len(result['unreadable'])} unreadable image(s) left out[/yellow]")


@app.command("eval")
def eval_command(
    csv: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="labelled CSV (path + label columns)")],
    image_root: Annotated[
        Path | None, typer.Option(file_okay=False, help="root of the CSV's image paths (default: the CSV's folder)")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="trainer checkpoint (.pt) to evaluate")
    ] = None,
    model: Annotated[str, typer.Option(help="preset for an untrained model when no --checkpoint")] = "default",
    findings: Annotated[str | None, typer.Option(help="comma-separated findings to evaluate (default: all)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="evaluate a seeded random subset of this many rows")] = None,
    seed: Annotated[int, typer.Option(help="seed of the --limit subset")] = 0,
    json_out: Annotated[Path | None, typer.Option(help="JSON results file ('-': stdout, no table)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    workers: Annotated[int, typer.Option(min=1, help="image loading threads")] = 4,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda when available, else cpu)")] = None,
) -> None:
    """Zero-shot findings AUC (per finding and macro) and image/report retrieval R@1/5/10 on a labelled CSV."""
    import torch

    from trainer.eval import evaluate, read_labelled_csv, sample_rows
    from trainer.model import build_model, load_checkpoint_model

    try:
        rows, found = read_labelled_csv(csv, findings.split(",") if findings else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--csv") from exc
    rows = sample_rows(rows, limit, seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta: dict[str, Any] = {}
    if checkpoint is not None:
        net, meta = load_checkpoint_model(checkpoint)
    else:
        try:
            net = build_model(model)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--model") from exc
    result = evaluate(net, rows, image_root or csv.parent, found, batch_size=batch_size, device=device, workers=workers)
    result["model"] = {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "preset": None if checkpoint else model,
        "step": int(meta["step"]) if meta.get("step") is not None else None,
        "run_id": str(meta["run_id"]) if meta.get("run_id") is not None else None,
    }
    result["csv"] = str(csv)
    text = json.dumps(result, indent=2)
    if json_out is not None and str(json_out) == "-":
        typer.echo(text)
        return
    _render(result)
    if json_out is not None:
        json_out.write_text(text + "\n")


if __name__ == "__main__":
    app()
