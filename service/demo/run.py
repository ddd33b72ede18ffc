"""``chexcurate demo``: the whole path on the embedded defaults, driven over HTTP and subprocesses.

synthetic CXR set -> ``chexcurate serve`` (SQLite, tasks in-process) -> dataset, samples, run -> ``chexcurate-train
train`` (tiny model, CPU: warm-up -> curation -> subset epochs) -> run statistics, plot and subset export ->
``chexcurate-train eval`` on the held-out split -> the summary (the command prints it).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..enrichment import flagged_share
from .children import last_json_line, run_child
from .csv_files import csv_text, read_csv
from .embedded import EmbeddedService

#: findings of the synthetic set, rarest first, whose enrichment the summary shows (lowest train prevalence)
RARE_SHOWN = 5


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


#: the synthetic set's flags of a sample (its ``meta``): a near-duplicate follow-up, a noisy pair
FLAGS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "near_duplicates": lambda s: _flag(s["meta"].get("near_duplicate")),
    "noisy_pairs": lambda s: str(s["meta"].get("noise") or "none").strip().lower() not in ("", "none"),
}


def flagged_shares(samples: Sequence[dict[str, Any]], kept_external_ids: set[str]) -> dict[str, dict[str, Any]]:
    """Share of near-duplicate follow-ups and of noisy pairs in the dataset and the subset (``flagged_share``)."""
    keep = np.array([s["external_id"] in kept_external_ids for s in samples], dtype=bool)
    out: dict[str, dict[str, Any]] = {}
    for name, test in FLAGS.items():
        share = flagged_share(np.array([test(s) for s in samples], dtype=bool), keep)
        out[name] = {
            "dataset_share": round(share["dataset_share"], 4),
            "subset_share": round(share["subset_share"], 4),
            "ratio": None if math.isnan(share["ratio"]) else round(share["ratio"], 3),
        }
    return out


@dataclass
class DemoOptions:
    """Sizes and knobs of the demo; the defaults are the curation-value benchmark's (docs/CURATION.md): a 128-pair
    super-batch with 2 central pairs per prototype keeps the paper's share of central rows (6 · 10 / 640 = 6 · 2 /
    128), and 1e-3 is the learning rate the tiny from-scratch model was measured to train best with."""

    out_dir: Path = Path(".demo")
    train: int = 2000
    test: int = 500
    size: int = 64
    epochs: int = 20
    batch_size: int = 128
    max_central: int = 2
    warmup_samples: int = 512
    lr: float = 1e-3
    seed: int = 0
    progress: bool = True
    #: any other CurationConfig fields for the run
    extra: dict[str, Any] = field(default_factory=dict)


def run_demo(options: DemoOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """The whole demo; returns the summary (the caller prints it)."""
    from ..synth import generate

    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    say(f"[1/5] synthetic CXR set: {options.train} train + {options.test} test studies at {options.size} px")
    synth_dir = out / "synth"
    if synth_dir.exists():
        shutil.rmtree(synth_dir)
    with _bar(options.train + options.test, "synth", options.progress) as bar:
        generate(
            synth_dir,
            n_train=options.train,
            n_test=options.test,
            seed=options.seed,
            image_size=options.size,
            progress=bar.update,
        )
    seconds["synth"] = time.perf_counter() - started

    say("[2/5] chexcurate serve on SQLite, tasks in-process")
    t = time.perf_counter()
    with EmbeddedService(out / "service") as service, service.admin() as api:
        seconds["service_start"] = time.perf_counter() - t
        say(f"      API at {service.url}")
        dataset_id = api.create_dataset(f"demo-synth-{options.seed}", synth_dir)
        columns, rows = read_csv(synth_dir / "train.csv")
        upload = api.upload_csv(dataset_id, csv_text(columns, rows))
        say(f"      dataset {dataset_id}: {upload['accepted']} pairs accepted, {len(upload['rejected'])} rejected")
        config = {
            "k": 6,
            "warmup_samples": options.warmup_samples,
            "batch_size": options.batch_size,
            "max_central": options.max_central,
            "epochs": options.epochs,
            "curation_epochs": 1,
            "seed": options.seed,
            **options.extra,
        }
        run_id = api.create_run(dataset_id, config)
        trainer_token = service.token("trainer", "demo-trainer", [run_id])

        say(
            f"[3/5] chexcurate-train: run {run_id}, tiny model on CPU, warm-up → 1 curation epoch → "
            f"{options.epochs - 1} subset epochs"
        )
        t = time.perf_counter()
        train_out = out / "trainer"
        if train_out.exists():
            shutil.rmtree(train_out)
        stdout = run_child(
            [
                "trainer.cli",
                "train",
                "--api",
                service.url,
                "--run",
                str(run_id),
                "--model",
                "tiny",
                "--data-root",
                str(synth_dir),
                "--out",
                str(train_out),
                "--device",
                "cpu",
                "--lr",
                str(options.lr),
                "--seed",
                str(options.seed),
                "--workers",
                "2",
                "--progress" if options.progress else "--no-progress",
            ],  # fmt: skip
            env={"CHEX_TOKEN": trainer_token},
        )
        trained = last_json_line(stdout)
        seconds["train"] = time.perf_counter() - t

        say("[4/5] run statistics, plot and subset export from the service")
        stats = api.stats(run_id)
        (out / "stats.png").write_bytes(api.stats_png(run_id))
        provenance, subset_rows, text = api.subset(run_id)
        (out / "subset.jsonl").write_text(text)
        samples = api.run_pool(dataset_id, run_id)
    kept = {r["external_id"] for r in subset_rows}
    flagged = flagged_shares(samples, kept)

    say("[5/5] chexcurate-train eval: zero-shot findings AUC and retrieval on the held-out split")
    t = time.perf_counter()
    evaluation = json.loads(
        run_child(
            [
                "trainer.cli",
                "eval",
                "--csv",
                str(synth_dir / "test.csv"),
                "--checkpoint",
                str(train_out / "latest.pt"),
                "--json-out",
                "-",
                "--device",
                "cpu",
                "--workers",
                "2",
            ]  # fmt: skip
        )
    )
    seconds["eval"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started

    findings = json.loads((synth_dir / "findings.json").read_text())
    rare = [f["label"] for f in sorted(findings["findings"], key=lambda f: f["prevalence"])][:RARE_SHOWN]
    enrichment = stats["label_enrichment"]
    retrieval = evaluation.get("retrieval") or {}
    return {
        "run_id": run_id,
        "pairs": stats["samples_total"],
        "subset_size": stats["subset_size"],
        "subset_ratio": round(stats["subset_ratio"], 4),
        "compute_fraction": round(stats["compute_fraction"], 4),
        "band_counts": stats["band_counts"],
        "label_enrichment": {
            name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in enrichment[name].items()}
            for name in rare
            if name in enrichment
        },
        "near_duplicates": flagged["near_duplicates"],
        "noisy_pairs": flagged["noisy_pairs"],
        "zero_shot_macro_auc": _round(evaluation["zero_shot"]["macro_auc"]),
        "zero_shot_auc": {k: round(v, 4) for k, v in evaluation["zero_shot"]["auc"].items()},
        "retrieval_image_to_text": retrieval.get("image_to_text"),
        "trainer": {k: trained[k] for k in ("steps", "rows", "kept", "trained_rows", "final_loss", "finished")},
        "config": config,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "files": {
            "plot": str(out / "stats.png"),
            "subset": str(out / "subset.jsonl"),
            "checkpoint": str(train_out / "latest.pt"),
            "synth": str(synth_dir),
            "database": service.database_url,
        },
        "provenance_prototype_version": provenance.get("prototype_version"),
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@contextlib.contextmanager
def _bar(total: int, desc: str, enabled: bool) -> Iterator[Any]:
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit="pair", file=sys.stderr, disable=not enabled) as bar:
        yield bar
