"""``chexcurate synth``: a synthetic chest-X-ray image-report set on disk (docs/SYNTH.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..synth import SynthFormat
from ..synth.calibration import FOLLOWUP_RATE, MAX_FOLLOWUPS
from .common import fail


def synth(
    out_dir: Annotated[Path, typer.Argument(help="output folder (created; a previous synth output is replaced)")],
    train: Annotated[int, typer.Option(min=1, help="training studies")] = 2000,
    test: Annotated[int, typer.Option(min=0, help="held-out test studies (one per patient, never noisy)")] = 500,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    size: Annotated[int, typer.Option(min=16, max=4096, help="image side in pixels")] = 128,
    noise_rate: Annotated[
        float, typer.Option(min=0, max=1, help="mismatched reports and blank images (kept by ingest)")
    ] = 0.03,
    corrupt_rate: Annotated[
        float, typer.Option(min=0, max=1, help="truncated (rejected by ingest) and undecodable images; 0 for none")
    ] = 0.01,
    followup_rate: Annotated[
        float, typer.Option(min=0, max=1, help="patients with near-duplicate follow-ups")
    ] = FOLLOWUP_RATE,
    max_followups: Annotated[int, typer.Option(min=1, help="follow-ups per such patient, 1..max")] = MAX_FOLLOWUPS,
    image_format: Annotated[SynthFormat, typer.Option("--format", help="png, or 12-bit CR DICOM + sidecars")] = (
        SynthFormat.png
    ),
    workers: Annotated[int, typer.Option(min=0, help="rendering processes (0: one per CPU)")] = 1,
) -> None:
    """Generate a seeded, long-tailed, chest-X-ray-like image-report set (train.csv / test.csv for ingest)."""
    import sys
    from dataclasses import asdict

    from tqdm import tqdm

    from ..synth import generate, survives_ingest

    try:
        with tqdm(total=train + test, unit="pair", desc="synth", file=sys.stderr) as bar:
            summary = generate(
                out_dir,
                n_train=train,
                n_test=test,
                seed=seed,
                image_size=size,
                noise_rate=noise_rate,
                corrupt_rate=corrupt_rate,
                followup_rate=followup_rate,
                max_followups=max_followups,
                dicom=image_format is SynthFormat.dicom,
                workers=workers,
                progress=bar.update,
            )
    except (ValueError, FileExistsError) as exc:
        raise fail(str(exc)) from exc
    table = Table("finding", "train share", "test share", title=f"synthetic CXR set in {out_dir}")
    for label, share in sorted(summary.prevalence.items(), key=lambda item: -item[1]):
        table.add_row(label or "[italic](no finding)", f"{share:.4f}", f"{summary.test_prevalence[label]:.4f}")
    Console().print(table)
    facts = Table("figure", "value")
    facts.add_row("train / test studies", f"{summary.n_train} / {summary.n_test}")
    facts.add_row("train / test patients", f"{summary.patients_train} / {summary.patients_test}")
    facts.add_row("near-duplicate follow-ups (train)", str(summary.near_duplicates))
    for kind, n in summary.noise.items():
        verdict = "kept" if survives_ingest(kind, image_format.value) else "rejected"
        facts.add_row(f"noise: {kind} (ingest: {verdict})", str(n))
    ingest = summary.expected_ingest["train"]
    facts.add_row("train.csv ingest: accepted / rejected", f"{ingest['accepted']} / {ingest['rejected']}")
    facts.add_row("pairs per second", f"{summary.pairs_per_s:.0f}")
    Console().print(facts)
    typer.echo(json.dumps(asdict(summary)))
