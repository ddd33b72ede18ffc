"""``chexcurate-train``: the trainer's command line. Commands stay thin; the logic lives in the modules they call."""

from __future__ import annotations

import json
import os
import sys
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
    ens = result.get("zero_shot_ensemble") or {}
    table = Table(title=f"Zero-shot findings ({result['n_images']} images)")
    columns = [("finding", "left"), ("AUC", "right")] + ([("AUC, ensemble", "right")] if ens else [])
    for name, justify in (*columns, ("pos", "right"), ("neg", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]

    def cell(value: float | None, bold: bool = False) -> str:
        text = f"{value:.4f}" if value is not None else "[dim]skipped[/dim]"
        return f"[bold]{text}[/bold]" if bold else text

    for finding, counts in zs["counts"].items():
        shown = [cell(zs["auc"].get(finding))] + ([cell(ens["auc"].get(finding))] if ens else [])
        table.add_row(finding, *shown, str(counts["positive"]), str(counts["negative"]))
    macro = [cell(zs["macro_auc"], True)] + ([cell(ens["macro_auc"], True)] if ens else [])
    table.add_row("[bold]macro[/bold]", *macro, "", "")
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
    prompts: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="JSON of finding -> {positive: [...], negative: [...]}: also score with these prompt ensembles",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="evaluate a seeded random subset of this many rows")] = None,
    seed: Annotated[int, typer.Option(help="seed of the --limit subset")] = 0,
    json_out: Annotated[Path | None, typer.Option(help="JSON results file ('-': stdout, no table)")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    workers: Annotated[int, typer.Option(min=1, help="image loading threads")] = 4,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda when available, else cpu)")] = None,
) -> None:
    """Zero-shot findings AUC (per finding and macro) and image/report retrieval R@1/5/10 on a labelled CSV."""
    import torch

    from trainer.eval import evaluate, read_labelled_csv, read_prompt_sets, sample_rows
    from trainer.model import build_model, load_checkpoint_model

    try:
        rows, found = read_labelled_csv(csv, findings.split(",") if findings else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--csv") from exc
    rows = sample_rows(rows, limit, seed)
    try:
        prompt_sets = read_prompt_sets(prompts) if prompts is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--prompts") from exc
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    meta: dict[str, Any] = {}
    if checkpoint is not None:
        net, meta = load_checkpoint_model(checkpoint)
    else:
        try:
            net = build_model(model)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--model") from exc
    result = evaluate(
        net, rows, image_root or csv.parent, found, batch_size=batch_size, device=device, workers=workers,
        prompt_sets=prompt_sets,
    )  # fmt: skip
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


@app.command("train")
def train_command(
    api: Annotated[str, typer.Option(envvar="CHEX_API", help="base URL of the curation service")],
    # --run-id too: torchrun's argparse refuses a bare --run among the script's arguments (ambiguous with its
    # --run-path), so `torchrun ... chexcurate-train train --run 42` never reaches the trainer
    run: Annotated[
        int, typer.Option("--run", "--run-id", envvar="CHEX_RUN", min=1, help="run id to train (alias --run-id)")
    ],
    token: Annotated[str | None, typer.Option(envvar="CHEX_TOKEN", help="trainer token scoped to the run")] = None,
    model: Annotated[
        str, typer.Option(help="model preset: default (DINOv2 + Bio_ClinicalBERT), minilm, minilm-cnn, tiny")
    ] = "default",
    lock_text: Annotated[
        bool | None, typer.Option("--lock-text/--no-lock-text", help="freeze the text tower (default: the preset's)")
    ] = None,
    lock_text_unlocked_layers: Annotated[
        int | None, typer.Option(min=0, help="with --lock-text: leave the last N text layers training")
    ] = None,
    lock_image: Annotated[
        bool | None,
        typer.Option("--lock-image/--no-lock-image", help="freeze the image tower (default: the preset's)"),
    ] = None,
    lock_image_unlocked_groups: Annotated[
        int | None, typer.Option(min=0, help="with --lock-image: leave the last N image layer groups training")
    ] = None,
    data_root: Annotated[
        Path, typer.Option(file_okay=False, help="where the dataset's image URIs resolve (the dataset root)")
    ] = Path("."),
    out: Annotated[Path, typer.Option(file_okay=False, help="checkpoints and metrics")] = Path("runs/trainer"),
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda when available, else cpu)")] = None,
    amp: Annotated[str, typer.Option(help="mixed precision: off, bf16 or fp16 (CUDA only)")] = "off",
    select_mode: Annotated[
        str, typer.Option(help="grad: select from the training forward; nograd: no-grad pass, train kept rows only")
    ] = "grad",
    lr: Annotated[float, typer.Option(min=0)] = 5e-5,
    weight_decay: Annotated[float, typer.Option(min=0)] = 0.2,
    lr_warmup_steps: Annotated[int | None, typer.Option(min=0, help="default: 5% of the horizon")] = None,
    total_steps: Annotated[
        int | None, typer.Option(min=1, help="cosine horizon (default: estimated from the run's epochs)")
    ] = None,
    grad_clip: Annotated[float, typer.Option(min=0, help="max gradient norm; 0 disables")] = 1.0,
    accumulate: Annotated[int, typer.Option(min=1, help="manifests per optimiser step")] = 1,
    max_steps: Annotated[int | None, typer.Option(min=1, help="stop after this many manifests")] = None,
    checkpoint_every: Annotated[int, typer.Option(min=1)] = 50,
    resume: Annotated[bool, typer.Option(help="continue from OUT/latest.pt when it exists")] = False,
    prefetch: Annotated[int, typer.Option(min=1, help="manifests leased and loaded ahead")] = 2,
    workers: Annotated[int, typer.Option(min=1, help="image loading threads")] = 4,
    image_cache_mb: Annotated[
        int, typer.Option(min=0, help="keep decoded images in memory between epochs, up to this many MiB (0: off)")
    ] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    metrics: Annotated[Path | None, typer.Option(help="JSONL metrics (default: OUT/metrics.jsonl)")] = None,
    tensorboard: Annotated[Path | None, typer.Option(help="TensorBoard log dir (needs tensorboard)")] = None,
    progress: Annotated[bool, typer.Option(help="progress bar")] = True,
) -> None:
    """Train a CLIP model on a run, driven by the service: warm-up → curation → subset epochs. The last line on
    stdout is a JSON summary. Under torchrun, rank 0 talks to the service and every rank trains."""
    from trainer.client import ServiceError
    from trainer.train import TrainConfig, train

    try:
        config = TrainConfig(
            api=api, run_id=run, token=token, model=model, data_root=data_root, out=out, device=device,
            lock_text=lock_text, lock_text_unlocked_layers=lock_text_unlocked_layers, lock_image=lock_image,
            lock_image_unlocked_groups=lock_image_unlocked_groups,
            amp=amp,  # type: ignore[arg-type]
            select_mode=select_mode,  # type: ignore[arg-type]
            lr=lr, weight_decay=weight_decay, lr_warmup_steps=lr_warmup_steps, total_steps=total_steps,
            grad_clip=grad_clip or None, accumulate=accumulate, max_steps=max_steps,
            checkpoint_every=checkpoint_every, resume=resume, prefetch=prefetch, workers=workers,
            image_cache_mb=image_cache_mb, seed=seed, metrics=metrics or out / "metrics.jsonl", tensorboard=tensorboard,
            progress=progress,
        )  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    try:
        summary = train(config)
    except ServiceError as exc:
        typer.echo(f"error: the service refused: {exc}", err=True)
        raise typer.Exit(2) from exc
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns a summary; rank 0 reports
        typer.echo(json.dumps(summary.to_dict()))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The work is done, saved and the process group destroyed. A torchrun worker skips interpreter teardown:
        # there a C++ thread of the gloo backend taking the GIL can abort the process ("terminate called without
        # an active exception", seen once in CI on a run that had finished), and torchrun reports a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    app()
