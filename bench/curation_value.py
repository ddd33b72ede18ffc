"""Curation value: is curating worth it? CheXficient against full data, random and compute-matched baselines.

Run: ``.venv/bin/python -m bench.curation_value`` (``--quick`` for a smoke check of every path at tiny sizes).
Results: ``--work`` (default ``.bench/curation_value``) gets ``results.json`` and the plots; ``--docs`` also copies
the plots into ``docs/`` for ``docs/CURATION.md``.

One synthetic CXR set (``chexcurate synth``, calibrated to real statistics, generator seed 0, defaults apart from
the sizes) and one embedded service (``chexcurate serve`` on SQLite, tasks in-process); the ``minilm-cnn`` model
(locked pretrained MiniLM text tower, small conv net) on CPU, and for every training seed six arms, each a run of
the service trained by the real trainer (``trainer.train``), all with the same hyperparameters:

(a)  full        the whole training set every epoch (``curation_epochs=0``; the service still asks for a small
                 warm-up before its first epoch, counted below);
(b)  online      CheXficient, faithful defaults: warm-up → one curation epoch (selection on each super-batch,
                 InfoNCE on the kept rows) → the other epochs on the curated subset;
(b′) online_density  (b) with the ``density`` central sampler;
(c)  random      a seeded random subset of (b)'s size, trained for the same epochs (as many trained pairs as (b));
(e)  full_equal  every pair, for as many pair-passes as (b) spent: the compute-matched baseline (the cosine
                 schedule runs over that shorter horizon);
(d)  offline     curated before training over the pretrained text tower's report embeddings (one forward per
                 report), the subset exported and trained like (c).

Compute is counted in pair-passes: a forward pass of one pair costs 1, a backward pass 2, so a trained pair costs 3.
The trainer's summary gives the real counts: warm-up rows (forward only), curation rows (forward with gradient on
the whole super-batch and backward: 3 per row, as the selection sees every row), subset rows (3); (d) adds the
encoding pass (1 per report). The compute fraction of an arm is its pair-passes over (a)'s in the same seed.

Evaluation on the held-out split (by patient; ``trainer.eval.evaluate``): zero-shot AUC per finding and macro, with
the set's report-phrased prompt ensembles (the generic "Findings consistent with X." / "No X." macro AUC beside it);
the mean AUC of the rarest third of the findings (by training prevalence, among the findings with both classes on
the test split); retrieval R@5 (mean of image→report and report→image). Paired differences against (a) per seed,
with a 95 % t interval. Subset composition: per finding share in the subset ÷ share in the dataset (the accepted
pairs the run saw), the same for near-duplicate follow-ups and noisy pairs.

Also (a) and (b) (and (c) when asked) on the real images of ``../shared/data/covid19_radiography`` (1,000 COVID +
1,000 Normal), with the same pretrained text tower: a seeded stratified hold-out, reports synthesised from the
labels by the service (``synthesize_reports=true``).
"""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime: by default its threads spin after every parallel region, and on two cores
# that spinning starves the service process and the loader threads beside the training (one full-data arm at 2,000
# pairs: 339 s spinning, 31 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import csv
import json
import math
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.report import machine
from service.curation import BAND_LABELS, CurationConfig, curate_offline, unit_rows
from service.demo import AdminApi, EmbeddedService, csv_text, flagged_shares, read_csv
from service.ingest.reports import synthesize_report
from trainer.data import tokenize
from trainer.eval import EvalRow, evaluate, read_labelled_csv, read_prompt_sets
from trainer.image_cache import ImageCache
from trainer.model import ClipModel, build_model, load_checkpoint_model
from trainer.text_cache import TextFeatureCache
from trainer.train import Summary, TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent
COVID = ROOT.parent / "shared" / "data" / "covid19_radiography"
DOCS = ROOT / "docs"
ARMS = ("full", "online", "online_density", "random", "full_equal", "offline")
ARM_LABEL = {
    "full": "(a) full data",
    "online": "(b) CheXficient online",
    "online_density": "(b′) online, density central sampler",
    "random": "(c) random subset, same size",
    "full_equal": "(e) full data at equal compute",
    "offline": "(d) offline, pretrained text embeddings",
}
SHORT_LABEL = {
    "full": "(a) full",
    "online": "(b) online",
    "online_density": "(b′) online\ndensity",
    "random": "(c) random",
    "full_equal": "(e) full,\nequal compute",
    "offline": "(d) offline\ntext emb.",
}
#: the order arms run in within a seed: (c) needs (b)'s subset size, (e) (b)'s pair-passes
RUN_ORDER = ("online", "full", "online_density", "random", "full_equal", "offline")
#: two-sided 95 % t quantiles by degrees of freedom (seeds - 1), for paired intervals
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass
class Settings:
    train: int = 20000
    test: int = 10000
    size: int = 32
    data_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 20
    batch_size: int = 128
    max_central: int = 2
    k: int = 6
    warmup_samples: int = 512
    lr: float = 2e-3
    model: str = "minilm-cnn32"
    #: decoded images shared by every arm (0: decode every time)
    image_cache_mb: int = 2048
    arms: tuple[str, ...] = ARMS
    covid: bool = True
    covid_arms: tuple[str, ...] = ("full", "online", "random")
    covid_train: int = 1600
    covid_test: int = 400
    work: Path = Path(".bench/curation_value")
    docs: bool = False
    progress: bool = True
    #: with ``--replot``: work folders of runs of other seeds (same data and settings) to report together
    merge: tuple[Path, ...] = ()

    def run_config(self, seed: int, curate: bool, central_sampler: str = "fps") -> dict[str, Any]:
        return {
            "central_sampler": central_sampler,
            "k": self.k,
            "batch_size": self.batch_size,
            "max_central": self.max_central,
            "epochs": self.epochs,
            "curation_epochs": 1 if curate else 0,
            # without curation the warm-up is only the service's schedule (it always runs one): a few rows, enough
            # that k remain when some of them turn out unreadable (k-means needs k embeddings)
            "warmup_samples": self.warmup_samples if curate else min(self.warmup_samples, max(64, self.k)),
            "seed": seed,
        }


QUICK = {
    "train": 200,
    "test": 60,
    "size": 32,
    "seeds": (0,),
    "epochs": 2,
    "batch_size": 50,
    "warmup_samples": 50,
    "covid_arms": ("online",),
    "covid_train": 60,
    "covid_test": 30,
}


@dataclass
class ArmResult:
    data: str
    arm: str
    seed: int
    run_id: int
    pairs: int  # accepted pairs of the arm's training dataset
    subset_size: int | None
    pair_passes: float
    wall_s: float
    summary: dict[str, Any]
    evaluation: dict[str, Any]
    composition: dict[str, Any] = field(default_factory=dict)
    service_stats: dict[str, Any] = field(default_factory=dict)
    compute_fraction: float | None = None
    #: per group of pairs (all, rare findings, near-duplicates, noisy, ...): the share of each curation band
    band_rates: dict[str, dict[str, float]] = field(default_factory=dict)


# -- data ---------------------------------------------------------------------------------------------------------
@dataclass
class DataSet:
    """A training CSV (service ingest format), an evaluation CSV, and the facts the report needs."""

    name: str
    root: Path
    columns: list[str]
    rows: list[dict[str, str]]
    test_rows: list[EvalRow]
    findings: list[str]
    train_prevalence: dict[str, float]
    synthesize_reports: bool = False
    #: a long-tailed label set: the rarest third of its findings is reported apart
    long_tailed: bool = True
    #: a second zero-shot evaluation with report-style prompts: (findings, positive template, negative template)
    report_prompts: tuple[list[str], str, str] | None = None
    #: prompt ensembles in the phrasing of the set's reports (the synthetic set's prompts.json)
    prompt_sets: dict[str, dict[str, list[str]]] | None = None

    @property
    def rare_labels(self) -> set[str]:
        """The rarest third of the training labels (by training prevalence)."""
        labels = [f for f in self.labels if self.train_prevalence[f] > 0]
        return set(labels[len(labels) - math.ceil(len(labels) / 3) :]) if self.long_tailed else set()

    @property
    def labels(self) -> list[str]:
        """Every label of the training set, most frequent first."""
        return sorted(self.train_prevalence, key=lambda f: (-self.train_prevalence[f], f))


def synthetic(settings: Settings, log: Callable[[str], None]) -> DataSet:
    from service.synth import generate

    out = settings.work / "synth"
    if out.exists():
        shutil.rmtree(out)
    log(f"synthetic set: {settings.train} train + {settings.test} test studies, {settings.size} px")
    generate(out, n_train=settings.train, n_test=settings.test, seed=settings.data_seed, image_size=settings.size)
    return load_synthetic(out)


def load_synthetic(out: Path) -> DataSet:
    """The synthetic set already written to ``out``."""
    columns, rows = read_csv(out / "train.csv")
    test_rows, findings = read_labelled_csv(out / "test.csv")
    catalogue = json.loads((out / "findings.json").read_text())["findings"]
    prevalence = {f["label"]: float(f["train_share"]) for f in catalogue}
    return DataSet(
        "synthetic", out, columns, rows, test_rows, findings, prevalence, long_tailed=True,
        prompt_sets=read_prompt_sets(out / "prompts.json"),
    )  # fmt: skip


def covid(settings: Settings, log: Callable[[str], None]) -> DataSet:
    """The real COVID/Normal radiographs: a seeded stratified split, the images read in place (never written)."""
    with (COVID / "labels.csv").open(newline="") as fh:
        records = list(csv.DictReader(fh))
    rng = random.Random(settings.data_seed)
    train_rows: list[dict[str, str]] = []
    test_rows: list[EvalRow] = []
    labels = sorted({r["label"] for r in records})
    for label in labels:
        group = sorted((r for r in records if r["label"] == label), key=lambda r: r["path"])
        rng.shuffle(group)
        n_test = round(settings.covid_test / len(labels))
        n_train = round(settings.covid_train / len(labels))
        for r in group[:n_test]:
            test_rows.append(EvalRow(r["path"], {c: int(c == label) for c in labels}))
        for r in group[n_test : n_test + n_train]:
            train_rows.append({"external_id": Path(r["path"]).stem, "image": r["path"], "labels": label})
    log(f"covid19_radiography: {len(train_rows)} train + {len(test_rows)} test images (reports from labels)")
    prevalence = {label: sum(r["labels"] == label for r in train_rows) / len(train_rows) for label in labels}
    return DataSet(
        "covid19_radiography", COVID, ["external_id", "image", "labels"], train_rows, test_rows, labels, prevalence,
        synthesize_reports=True, long_tailed=False,
        # the service's own report templates for label-only sets, as the two class prompts
        report_prompts=(["COVID"], synthesize_report(["{0}"]), synthesize_report(["Normal"])),
    )  # fmt: skip


# -- one arm ------------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, settings: Settings, service: EmbeddedService, api: AdminApi, log: Callable[[str], None]):
        self.settings, self.service, self.api, self.log = settings, service, api, log
        self.counter = 0
        #: (data, seed) -> the readable pairs of the online arm's dataset after its run
        self.pools: dict[tuple[str, int], list[dict[str, Any]]] = {}
        #: every arm's model has the same locked pretrained text tower: its outputs are computed once per report
        self.text_cache = TextFeatureCache()
        #: and every arm reads the same image files: each is decoded once per bench run (about 12 KB at 32 px)
        self.image_cache = ImageCache(settings.image_cache_mb * 2**20)

    def prefill_text(self, datasets: Sequence[DataSet]) -> None:
        """Every report of every set through the locked text tower once, before any arm (shortest first, see
        ``TextFeatureCache.prefill``): the arms then only look their reports up. Nothing to do for a preset whose
        text tower trains (it has no cache)."""
        model = self.model(0).eval()
        if model.text_cache is None:
            return
        reports = [r.get("report") or "" for d in datasets for r in d.rows] + [
            r.report for d in datasets for r in d.test_rows if r.report
        ]
        started = time.perf_counter()
        new = self.text_cache.prefill(
            reports, lambda texts: tokenize(model.tokenizer, texts, model.config.max_tokens), model.locked_text_features
        )
        self.log(f"text tower: {new:,} distinct reports encoded in {time.perf_counter() - started:.0f} s")

    def model(self, seed: int) -> ClipModel:
        """A fresh model of the preset, initialised as the trainer would (seeded), with the shared text cache."""
        torch.manual_seed(seed)
        model = build_model(self.settings.model)
        if model.text_cache is not None:
            model.text_cache = self.text_cache
        return model

    def dataset(self, data: DataSet, rows: Sequence[dict[str, str]], tag: str) -> int:
        self.counter += 1
        dataset_id = self.api.create_dataset(f"{data.name}-{tag}-{self.counter}", data.root)
        upload = self.api.upload_csv(dataset_id, csv_text(data.columns, rows), data.synthesize_reports)
        if upload["accepted"] == 0:
            raise RuntimeError(f"no row of {tag} was accepted: {upload['rejected'][:3]}")
        return dataset_id

    def train(
        self, data: DataSet, dataset_id: int, config: dict[str, Any], seed: int, tag: str, max_steps: int | None = None
    ) -> tuple[int, Summary]:
        """Train a run of the dataset to its end, or (``max_steps``) for that many manifests."""
        run_id = self.api.create_run(dataset_id, config)
        token = self.service.token("trainer", f"bench-{tag}", [run_id])
        out = self.settings.work / "runs" / tag
        if out.exists():
            shutil.rmtree(out)
        summary = train(
            TrainConfig(
                api=self.service.url,
                run_id=run_id,
                token=token,
                model=self.settings.model,
                data_root=data.root,
                out=out,
                device="cpu",
                lr=self.settings.lr,
                seed=seed,
                workers=2,
                max_steps=max_steps,
                progress=self.settings.progress,
                metrics=out / "metrics.jsonl",
            ),  # fmt: skip
            self.model(seed),
            self.image_cache,
        )
        if not summary.finished and (max_steps is None or summary.steps < max_steps):
            raise RuntimeError(f"run {run_id} ({tag}) did not finish: {summary.to_dict()}")
        return run_id, summary

    def evaluate(self, data: DataSet, checkpoint: Path) -> dict[str, Any]:
        model, _ = load_checkpoint_model(checkpoint)
        if model.text_cache is not None:
            model.text_cache = self.text_cache
        result = evaluate(
            model, data.test_rows, data.root, data.findings, device="cpu", workers=2, batch_size=64,
            prompt_sets=data.prompt_sets,
        )  # fmt: skip
        summary = summarise_eval(result, data.train_prevalence if data.long_tailed else None)
        if data.report_prompts is not None:
            findings, positive, negative = data.report_prompts
            again = evaluate(
                model, data.test_rows, data.root, findings, device="cpu", workers=2, batch_size=64,
                positive_template=positive, negative_template=negative,
            )  # fmt: skip
            summary["report_prompt_auc"] = again["zero_shot"]["macro_auc"]
            summary["report_prompts"] = again["zero_shot"]["prompts"]
        return summary

    def kept_rows(self, data: DataSet, run_id: int) -> list[dict[str, str]]:
        _, subset, _ = self.api.subset(run_id)
        kept = {r["external_id"] for r in subset}
        return [r for r in data.rows if r["external_id"] in kept]

    def composition(self, data: DataSet, samples: Sequence[dict[str, Any]], kept: set[str]) -> dict[str, Any]:
        """Per finding (and, on the synthetic set, near-duplicates and noisy pairs): share in the subset ÷ share
        in ``samples``, the readable pairs the selection chose from."""
        per_label: dict[str, dict[str, float | None]] = {}
        subset = [s for s in samples if s["external_id"] in kept]
        for label in data.labels:
            d = sum(label in s["labels"] for s in samples) / max(1, len(samples))
            k = sum(label in s["labels"] for s in subset) / max(1, len(subset))
            per_label[label] = {"dataset_share": d, "subset_share": k, "ratio": k / d if d else None}
        out: dict[str, Any] = {"labels": per_label, "samples": len(samples), "subset": len(subset)}
        rare = [r for label in data.rare_labels if (r := per_label[label]["ratio"]) is not None]
        out["rare_enrichment"] = float(np.mean(rare)) if rare else None
        if data.name == "synthetic":
            out |= flagged_shares(samples, kept)
        return out

    def run_arm(self, data: DataSet, arm: str, seed: int, done: dict[str, ArmResult]) -> ArmResult:
        """One arm of one seed; ``done`` holds the seed's arms run so far: (c) takes (b)'s subset size and pool,
        (e) (b)'s pair-passes."""
        online = done.get("online")
        tag = f"{data.name}-{arm}-s{seed}"
        self.log(f"{tag}: {ARM_LABEL[arm]}")
        started = time.perf_counter()
        extra_passes = 0.0
        subset_size: int | None = None
        composition: dict[str, Any] = {}
        service_stats: dict[str, Any] = {}
        band_rates: dict[str, dict[str, float]] = {}
        if arm in ("full", "online", "online_density"):
            dataset_id = self.dataset(data, data.rows, tag)
            curate = arm != "full"
            config = self.settings.run_config(seed, curate, "density" if arm == "online_density" else "fps")
            run_id, summary = self.train(data, dataset_id, config, seed, tag)
            # after the run: the pairs the trainer could read (it reports blank and undecodable images)
            samples = self.api.run_pool(dataset_id, run_id)
            if curate:
                stats = self.api.stats(run_id)
                service_stats = {
                    k: stats[k] for k in ("subset_size", "subset_ratio", "compute_fraction", "band_counts")
                } | {"label_enrichment": stats["label_enrichment"]}
                kept_rows = self.kept_rows(data, run_id)
                subset_size = len(kept_rows)
                composition = self.composition(data, samples, {r["external_id"] for r in kept_rows})
                band_rates = self.band_rates(data, samples, self.online_bands(run_id))
                (self.settings.work / "runs" / tag / "stats.png").write_bytes(self.api.stats_png(run_id))
            if arm == "online":
                self.pools[(data.name, seed)] = samples
        elif arm == "random":
            if online is None or online.subset_size is None:
                raise RuntimeError("the random arm needs the same seed's online arm (its subset size)")
            pool = self.pools[(data.name, seed)]  # the readable pairs (b) curated from
            chosen = set(random.Random(seed).sample(sorted(s["external_id"] for s in pool), online.subset_size))
            rows = [r for r in data.rows if r["external_id"] in chosen]
            composition = self.composition(data, pool, chosen)
            subset_size = len(rows)
            dataset_id = self.dataset(data, rows, tag)
            run_id, summary = self.train(data, dataset_id, self.settings.run_config(seed, False), seed, tag)
        elif arm == "full_equal":
            if online is None:
                raise RuntimeError("the full_equal arm needs the same seed's online arm (its pair-passes)")
            # every pair, for as many pair-passes as (b) spent: its warm-up rows cost 1 each, the rest 3 per row
            config = self.settings.run_config(seed, False)
            pool_size = len(self.pools[(data.name, seed)])
            warmup = min(config["warmup_samples"], pool_size)
            trained_rows = max(0.0, online.pair_passes - warmup) / 3
            warmup_manifests = math.ceil(warmup / self.settings.batch_size)
            config["epochs"] = max(1, math.ceil(trained_rows / max(1, pool_size)))
            max_steps = warmup_manifests + max(1, round(trained_rows / self.settings.batch_size))
            dataset_id = self.dataset(data, data.rows, tag)
            run_id, summary = self.train(data, dataset_id, config, seed, tag, max_steps=max_steps)
        else:  # offline: curated once over the pretrained text tower's report embeddings, then trained like (c)
            source = self.dataset(data, data.rows, tag + "-all")
            offline_run = self.api.create_run(source, self.settings.run_config(seed, True))
            encoded = self.encode_reports_and_upload(source, offline_run)
            extra_passes += float(encoded["passes"])
            result = self.api.offline(offline_run)
            service_stats = {k: result[k] for k in ("rows", "subset_size", "subset_ratio", "band_counts")}
            rows = self.kept_rows(data, offline_run)
            subset_size = len(rows)
            composition = self.composition(data, encoded["samples"], {r["external_id"] for r in rows})
            band_rates = self.band_rates(data, encoded["samples"], self.offline_bands(encoded, seed, subset_size))
            dataset_id = self.dataset(data, rows, tag)
            run_id, summary = self.train(data, dataset_id, self.settings.run_config(seed, False), seed, tag)
        pairs = len(self.api.run_pool(dataset_id, run_id))
        wall = time.perf_counter() - started
        evaluation = self.evaluate(data, Path(summary.checkpoint or ""))
        passes = pair_passes(summary) + extra_passes
        self.log(
            f"{tag}: macro AUC {fmt(evaluation['macro_auc'])}, rare-third AUC {fmt(evaluation['rare_auc'])}, "
            f"R@5 {fmt(evaluation['r5'])}, {passes:,.0f} pair-passes, {wall:.0f} s"
        )
        return ArmResult(
            data.name, arm, seed, run_id, pairs, subset_size, passes, wall, summary.to_dict(), evaluation,
            composition, service_stats, band_rates=band_rates,
        )  # fmt: skip

    @torch.no_grad()
    def encode_reports_and_upload(self, dataset_id: int, run_id: int) -> dict[str, Any]:
        """Embed every accepted pair's report with the pretrained text tower (its pooled output, L2-normalised;
        the images are not read) and bulk-upload them. Returns the forward passes spent (one per report) and the
        samples embedded."""
        model = self.model(0).eval()
        samples = self.api.samples(dataset_id)
        ids: list[int] = []
        feats: list[np.ndarray] = []
        for start in range(0, len(samples), 256):
            chunk = samples[start : start + 256]
            input_ids, mask = tokenize(model.tokenizer, [s["report"] or "" for s in chunk], model.config.max_tokens)
            feats.append(F.normalize(model.text_features(input_ids, mask), dim=1).numpy())
            ids += [int(s["id"]) for s in chunk]
        embeddings = np.concatenate(feats).astype(np.float16)
        self.api.bulk_embeddings(run_id, np.asarray(ids, dtype=np.int64), embeddings)
        return {
            "passes": len(ids),
            "samples": samples,
            "ids": np.asarray(ids, dtype=np.int64),
            "embeddings": embeddings,
        }

    def online_bands(self, run_id: int) -> dict[str, str]:
        """external id -> band of every curation decision of an online run, from the service's step replays."""
        bands: dict[str, str] = {}
        step = 1
        while (replay := self.api.step(run_id, step)) is not None:
            step += 1
            answer = replay.get("result") or {}
            if replay["phase"] != "curation" or "bands" not in answer:
                continue
            if len(answer["bands"]) != len(replay["items"]):
                raise RuntimeError(f"run {run_id} step {step - 1}: {len(replay['items'])} items, answer for fewer")
            for item, band in zip(replay["items"], answer["bands"], strict=True):
                bands[item["external_id"]] = band
        return bands

    def offline_bands(self, encoded: dict[str, Any], seed: int, subset_size: int) -> dict[str, str]:
        """external id -> band of the offline curation, recomputed in-process by the engine on the uploaded
        features (the job's input: unit rows in float16, sample-id order); checked against the service's subset."""
        order = np.argsort(encoded["ids"])
        features = unit_rows(encoded["embeddings"][order]).astype(np.float16)
        result = curate_offline(features, CurationConfig(**self.settings.run_config(seed, True)))
        if int(result.keep.sum()) != subset_size:
            raise RuntimeError(f"in-process offline curation kept {int(result.keep.sum())}, the service {subset_size}")
        by_id = {s["id"]: s["external_id"] for s in encoded["samples"]}
        return {by_id[int(i)]: BAND_LABELS[b] for i, b in zip(encoded["ids"][order], result.band, strict=True)}

    def band_rates(
        self, data: DataSet, samples: Sequence[dict[str, Any]], bands: dict[str, str]
    ) -> dict[str, dict[str, float]]:
        """Share of each band (and kept) per group of pairs: all, a rare finding, no finding, near-duplicate
        follow-ups, noisy pairs (synthetic only)."""
        rare = data.rare_labels
        groups: dict[str, list[str]] = {"all": [], "rare finding": [], "no finding": []}
        if data.name == "synthetic":
            groups |= {"near-duplicate": [], "noisy": []}
        for s in samples:
            band = bands.get(s["external_id"])
            if band is None:
                continue
            groups["all"].append(band)
            if rare & set(s["labels"]):
                groups["rare finding"].append(band)
            if not s["labels"] or s["labels"] == ["Normal"]:
                groups["no finding"].append(band)
            if data.name == "synthetic":
                meta = s["meta"]
                if str(meta.get("near_duplicate")).lower() == "true":
                    groups["near-duplicate"].append(band)
                if str(meta.get("noise") or "none").lower() not in ("", "none"):
                    groups["noisy"].append(band)
        out: dict[str, dict[str, float]] = {}
        for name, got in groups.items():
            n = len(got)
            rates = {band: got.count(band) / n if n else math.nan for band in BAND_LABELS}
            rates["kept"] = rates["support"] + rates["central_kept"] if n else math.nan
            out[name] = {**rates, "n": float(n)}
        return out


def pair_passes(summary: Summary) -> float:
    """Forward = 1, backward = 2 per pair: warm-up forwards, the curation steps as the trainer counted them, and
    the trained subset rows."""
    return float(summary.rows["warmup"] + summary.curation_compute + 3 * summary.rows["subset"])


def summarise_eval(result: dict[str, Any], prevalence: dict[str, float] | None) -> dict[str, Any]:
    """The figures of one evaluation; ``prevalence`` (training shares) ranks the findings for the rare-third AUC,
    None for a set without a long tail. With prompt ensembles, AUCs are theirs and the generic-prompt macro AUC is
    kept beside them."""
    scored = result.get("zero_shot_ensemble") or result["zero_shot"]
    auc: dict[str, float] = scored["auc"]
    rare: list[str] = []
    if prevalence is not None and auc:
        evaluable = sorted(auc, key=lambda f: (prevalence.get(f, 0.0), f))
        rare = evaluable[: math.ceil(len(evaluable) / 3)]
    retrieval = result.get("retrieval")
    r5 = None
    if retrieval:
        r5 = (retrieval["image_to_text"]["R@5"] + retrieval["text_to_image"]["R@5"]) / 2
    return {
        "macro_auc": scored["macro_auc"],
        "generic_macro_auc": result["zero_shot"]["macro_auc"],
        "r5_image_to_text": retrieval["image_to_text"]["R@5"] if retrieval else None,
        "rare_auc": float(np.mean([auc[f] for f in rare])) if rare else None,
        "rare_findings": rare,
        "r5": r5,
        "auc": auc,
        "counts": result["zero_shot"]["counts"],
        "retrieval": retrieval,
        "n_images": result["n_images"],
    }


# -- reporting ----------------------------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def mean_sd(values: Sequence[float | None]) -> tuple[float, float] | None:
    got = [v for v in values if v is not None and not math.isnan(v)]
    if not got:
        return None
    return float(np.mean(got)), float(np.std(got, ddof=1)) if len(got) > 1 else 0.0


def pm(values: Sequence[float | None], digits: int = 3, scale: float = 1.0, suffix: str = "") -> str:
    got = mean_sd(values)
    if got is None:
        return "-"
    return f"{got[0] * scale:.{digits}f} ± {got[1] * scale:.{digits}f}{suffix}"


def table(results: list[ArmResult], data: str) -> str:
    rows = [r for r in results if r.data == data]
    prompts = any("report_prompt_auc" in r.evaluation for r in rows)
    head = "| arm | pairs kept | macro AUC | rare-third AUC | generic-prompt macro AUC | R@5 |"
    head += " COVID AUC, report prompts |" if prompts else ""
    lines = [head + " compute fraction | wall (s) |", "|---" * (head.count("|") + 1) + "|"]
    for arm in ARMS:
        got = [r for r in rows if r.arm == arm]
        if not got:
            continue
        cells = [
            pm([float(r.subset_size or r.pairs) for r in got], 0),
            pm([r.evaluation["macro_auc"] for r in got]),
            pm([r.evaluation["rare_auc"] for r in got]),
            pm([r.evaluation.get("generic_macro_auc") for r in got]),
            pm([r.evaluation["r5"] for r in got]),
            *([pm([r.evaluation.get("report_prompt_auc") for r in got])] if prompts else []),
            pm([r.compute_fraction for r in got], 1, 100, " %"),
            pm([r.wall_s for r in got], 0),
        ]
        lines.append(f"| {ARM_LABEL[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(
    results: list[ArmResult], data: str, arm: str, base: str, value: Callable[[ArmResult], Any]
) -> dict[str, Any]:
    """``arm`` − ``base`` per seed (seeds both ran), their mean and a two-sided 95 % t interval."""
    by_seed = {(r.arm, r.seed): r for r in results if r.data == data}
    diffs = [
        float(value(by_seed[(arm, seed)])) - float(value(by_seed[(base, seed)]))
        for seed in sorted({r.seed for r in results if r.data == data})
        if (arm, seed) in by_seed and (base, seed) in by_seed
        and value(by_seed[(arm, seed)]) is not None and value(by_seed[(base, seed)]) is not None
    ]  # fmt: skip
    if not diffs:
        return {"n": 0, "mean": None, "low": None, "high": None, "diffs": []}
    mean = float(np.mean(diffs))
    half = T975[len(diffs) - 1] * float(np.std(diffs, ddof=1)) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return {"n": len(diffs), "mean": mean, "low": mean - half, "high": mean + half, "diffs": diffs}


def interval(d: dict[str, Any], digits: int = 3) -> str:
    if d["mean"] is None:
        return "-"
    if math.isnan(d["low"]):
        return f"{d['mean']:+.{digits}f} (1 seed)"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"


METRICS: dict[str, Callable[[ArmResult], Any]] = {
    # on the COVID set the report-prompt AUC: its reports are the service's two label templates, so the generic
    # prompts ask the model about sentences it never saw
    "macro AUC": lambda r: r.evaluation.get("report_prompt_auc") or r.evaluation["macro_auc"],
    "rare-third AUC": lambda r: r.evaluation["rare_auc"],
    "generic-prompt macro AUC": lambda r: r.evaluation.get("generic_macro_auc"),
    "R@5": lambda r: r.evaluation["r5"],
}


def paired_table(results: list[ArmResult], data: str, base: str = "full") -> str:
    """Every arm minus ``base`` in the same seed: mean and 95 % interval per metric."""
    arms = [a for a in ARMS if a != base and any(r.arm == a and r.data == data for r in results)]
    metrics = {k: v for k, v in METRICS.items() if any(v(r) is not None for r in results if r.data == data)}
    lines = [f"| arm − {ARM_LABEL[base]} | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for arm in arms:
        cells = [interval(paired(results, data, arm, base, value)) for value in metrics.values()]
        lines.append(f"| {ARM_LABEL[arm]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: a finding's test AUC is read as reliable from this many positive test studies on
MIN_POSITIVES = 10


def finding_table(results: list[ArmResult], data: DataSet) -> str:
    """Per finding: training prevalence, test positives, each arm's zero-shot AUC (mean ± sd over seeds) and how
    much the online subset enriched it: where curation gains or loses, finding by finding."""
    rows = [r for r in results if r.data == data.name]
    arms = [a for a in ARMS if any(r.arm == a for r in rows)]
    if not rows or not data.long_tailed:
        return ""
    head = "| finding | train prevalence | test positives | " + " | ".join(SHORT_LABEL[a] for a in arms)
    lines = [head.replace("\n", " ") + " | online subset enrichment |", "|---" * (len(arms) + 4) + "|"]
    for name in data.labels:
        aucs = {a: [r.evaluation["auc"].get(name) for r in rows if r.arm == a] for a in arms}
        if all(mean_sd(v) is None for v in aucs.values()):
            continue
        positives = rows[0].evaluation["counts"][name]["positive"]
        enrichment = [(r.composition.get("labels") or {}).get(name, {}).get("ratio") for r in rows if r.arm == "online"]
        cells = [pm(aucs[a]) for a in arms] + [pm(enrichment, 2, suffix="×")]
        lines.append(f"| {name} | {data.train_prevalence[name]:.4f} | {positives} | " + " | ".join(cells) + " |")
    # the macro mean again without the findings whose AUC rests on a handful of test positives
    counted = [name for name, c in rows[0].evaluation["counts"].items() if c["positive"] >= MIN_POSITIVES]
    cells = []
    for arm in arms:
        means = [np.mean([r.evaluation["auc"][n] for n in counted]) for r in rows if r.arm == arm]
        cells.append(pm([float(m) for m in means]))
    lines.append(f"| _macro AUC, the {len(counted)} findings with ≥ {MIN_POSITIVES} test positives_ | | | "
                 + " | ".join(cells) + " | |")  # fmt: skip
    return "\n".join(lines)


def targets(results: list[ArmResult], data: str) -> list[dict[str, Any]]:
    """The issue's targets for the online arm, each with the measured value and met / missed."""
    out: list[dict[str, Any]] = []
    got = [r for r in results if r.data == data and r.arm == "online"]
    if not got:
        return out

    def add(name: str, value: float | None, met: bool | None, shown: str) -> None:
        out.append({"target": name, "value": value, "met": met, "shown": shown})

    auc = paired(results, data, "online", "full", METRICS["macro AUC"])
    compute = mean_sd([r.compute_fraction for r in got])
    if auc["mean"] is not None and compute is not None:
        met = auc["mean"] >= -0.01 and compute[0] <= 0.30
        add("online macro AUC ≥ full − 0.01 at ≤ 30 % of its compute", auc["mean"], met,
            f"{interval(auc)} at {100 * compute[0]:.1f} % compute")  # fmt: skip
    for base in ("random", "full_equal"):
        rare = paired(results, data, "online", base, METRICS["rare-third AUC"])
        if rare["mean"] is not None:
            met = rare["mean"] > 0 and (rare["n"] > 1 and rare["low"] > 0)
            add(f"online − {ARM_LABEL[base]}, rare-third AUC: interval above 0", rare["mean"], met, interval(rare))
    comp = [r.composition for r in got]
    for key, name, ok in (
        ("rare_enrichment", "rare-third enrichment ≥ 1.5×", lambda v: v >= 1.5),
        ("near_duplicates", "near-duplicate share ≤ 0.7×", lambda v: v <= 0.7),
        ("noisy_pairs", "noisy-pair share ≤ 0.7×", lambda v: v <= 0.7),
    ):
        values = [c.get(key) if key == "rare_enrichment" else (c.get(key) or {}).get("ratio") for c in comp]
        ms = mean_sd(values)
        if ms is not None:
            add(name, ms[0], bool(ok(ms[0])), f"{ms[0]:.2f}× ± {ms[1]:.2f}")
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | met? |", "|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['target']} | {row['shown']} | {'met' if row['met'] else 'missed'} |")
    return "\n".join(lines)


def band_table(results: list[ArmResult], data: str) -> str:
    """Kept and outlier rates per group of pairs, for the arms that curate."""
    rows = [r for r in results if r.data == data and r.band_rates]
    arms = [a for a in ARMS if any(r.arm == a for r in rows)]
    if not arms:
        return ""
    groups = list(rows[0].band_rates)
    head = "| group (pairs) | " + " | ".join(f"{ARM_LABEL[a]}: kept / outlier" for a in arms) + " |"
    lines = [head, "|---" * (len(arms) + 1) + "|"]
    for group in groups:
        n = pm([r.band_rates[group]["n"] for r in rows if r.arm == arms[0]], 0)
        cells = []
        for arm in arms:
            got = [r.band_rates[group] for r in rows if r.arm == arm]
            cells.append(f"{pm([g['kept'] for g in got], 2)} / {pm([g['outlier'] for g in got], 2)}")
        lines.append(f"| {group} ({n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def composition_table(results: list[ArmResult], data: DataSet) -> str:
    arms = [a for a in ARMS if any(r.arm == a and r.data == data.name and r.composition for r in results)]
    lines = [
        "| finding / flag | train prevalence | "
        + " | ".join(f"{ARM_LABEL[a]} subset ÷ dataset share" for a in arms)
        + " |",
        "|---|---|" + "---|" * len(arms),
    ]
    for name in data.labels:
        cells = [pm([r.composition["labels"][name]["ratio"] for r in results if r.arm == a and r.data == data.name], 2)
                 for a in arms]  # fmt: skip
        lines.append(f"| {name} | {data.train_prevalence.get(name, 0):.4f} | " + " | ".join(cells) + " |")
    rare_cells = [pm([r.composition.get("rare_enrichment") for r in results if r.arm == a and r.data == data.name], 2)
                  for a in arms]  # fmt: skip
    lines.append("| _rarest third of the findings (mean ratio)_ | | " + " | ".join(rare_cells) + " |")
    if data.name == "synthetic":
        for flag in ("near_duplicates", "noisy_pairs"):
            got = [r for r in results if r.data == data.name and r.arm in arms]
            share = got[0].composition[flag]["dataset_share"] if got else 0.0
            cells = [pm([r.composition[flag]["ratio"] for r in got if r.arm == a], 2) for a in arms]
            lines.append(f"| _{flag.replace('_', ' ')}_ | {share:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(results: list[ArmResult], datasets: list[DataSet], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    shown = (("macro_auc", "macro AUC"), ("rare_auc", "rare-third AUC"), ("report_prompt_auc", "AUC, report prompts"))
    # a set read with its report prompts (COVID) has a meaningless generic-prompt macro AUC: not plotted
    panels = [(d, key, label) for d in datasets for key, label in shown
              if any(r.evaluation.get(key) is not None for r in results if r.data == d.name)
              and not (key == "macro_auc" and d.report_prompts is not None)]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    markers = dict(zip(ARMS, "osD^vP", strict=True))
    for ax, (data, key, label) in zip(axes[0], panels, strict=True):
        for arm in ARMS:
            got = [r for r in results if r.arm == arm and r.data == data.name and r.evaluation.get(key) is not None]
            if not got:
                continue
            x = mean_sd([100 * (r.compute_fraction or 0.0) for r in got])
            y = mean_sd([r.evaluation[key] for r in got])
            assert x is not None and y is not None
            ax.errorbar(x[0], y[0], xerr=x[1], yerr=y[1], fmt=markers[arm], capsize=3, label=ARM_LABEL[arm])
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("compute, % of the full-data arm's pair-passes")
        ax.set_ylabel(f"{label} (test split)")
        ax.set_title(f"{data.name}: {label} vs compute (mean ± sd)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curation_value_auc.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    synth = next((d for d in datasets if d.name == "synthetic"), None)
    if synth is not None:
        arms = [a for a in ARMS if any(r.arm == a and r.data == synth.name and r.composition for r in results)]
        rows = [*synth.labels, "near_duplicates", "noisy_pairs"]
        fig, ax = plt.subplots(figsize=(11, 4.6))
        width = 0.8 / max(1, len(arms))
        for i, arm in enumerate(arms):
            arm_results = [r for r in results if r.arm == arm and r.data == synth.name]
            means, sds = [], []
            for name in rows:
                values = [(r.composition.get(name) or r.composition["labels"][name])["ratio"] for r in arm_results]
                ms = mean_sd(values)
                means.append(ms[0] if ms else 0.0)
                sds.append(ms[1] if ms else 0.0)
            ax.bar(np.arange(len(rows)) + (i - (len(arms) - 1) / 2) * width, means, width, yerr=sds, capsize=2,
                   label=ARM_LABEL[arm])  # fmt: skip
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axhline(1.5, color="tab:red", lw=0.8, ls=":", label="1.5× target (rare third)")
        ax.axhline(0.7, color="tab:purple", lw=0.8, ls=":", label="0.7× target (near-duplicates, noisy)")
        ax.set_xticks(np.arange(len(rows)), [n.replace("_", " ") for n in rows], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("subset share ÷ dataset share")
        ax.set_ylim(bottom=0)
        ax.set_title("synthetic set: what the subsets keep (findings by falling prevalence; mean ± sd over seeds)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "curation_value_enrichment.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _run_arms(
    settings: Settings, datasets: list[DataSet], bench: Bench, results: list[ArmResult], saved: Callable[[], None]
) -> None:
    for seed in settings.seeds:  # seed by seed, so that a run cut short leaves whole seeds of every data set
        for data in datasets:
            arms = settings.arms if data.name == "synthetic" else settings.covid_arms
            by_arm: dict[str, ArmResult] = {}
            for arm in sorted(arms, key=RUN_ORDER.index):
                result = bench.run_arm(data, arm, seed, by_arm)
                by_arm[arm] = result
                results.append(result)
            # against the measured full-data arm of the seed; without one, against its nominal cost: every
            # readable pair trained (3 passes) in every epoch
            full = by_arm.get("full")
            pool = len(bench.pools.get((data.name, seed), [])) or len(data.rows)
            reference = full.pair_passes if full else 3.0 * settings.epochs * pool
            for result in by_arm.values():
                result.compute_fraction = result.pair_passes / reference
            saved()


# -- main ---------------------------------------------------------------------------------------------------------
def run(settings: Settings) -> dict[str, Any]:
    from rich.console import Console

    console = Console(stderr=True)

    def log(message: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}", highlight=False)

    started = time.perf_counter()
    load_before = os.getloadavg()
    settings.work.mkdir(parents=True, exist_ok=True)
    datasets = [synthetic(settings, log)]
    if settings.covid:
        if not (COVID / "labels.csv").exists():
            raise SystemExit(f"{COVID} is missing; run with --no-covid")
        datasets.append(covid(settings, log))
    results: list[ArmResult] = []
    with EmbeddedService(settings.work / "service") as service, service.admin() as api:
        log(f"service at {service.url} (SQLite, tasks in-process)")
        bench = Bench(settings, service, api, log)
        bench.prefill_text(datasets)

        def checkpoint() -> None:
            text = json.dumps(raw_report(settings, results, started, load_before), default=str)
            (settings.work / PARTIAL).write_text(text)

        try:
            _run_arms(settings, datasets, bench, results, checkpoint)
        except BaseException:
            if service.child is not None:
                console.print(f"[red]service output (tail):[/]\n{service.child.tail(120)}", highlight=False)
            raise
    report = raw_report(settings, results, started, load_before)
    (settings.work / PARTIAL).unlink(missing_ok=True)
    return render(report, results, datasets, settings)


#: what a run has measured so far, rewritten after every arm: ``--replot`` renders it when a run was cut short
PARTIAL = "partial.json"


def raw_report(settings: Settings, results: list[ArmResult], started: float, load_before: Any) -> dict[str, Any]:
    """The run's facts and every arm's result, without tables or plots."""
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "machine": machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": time.perf_counter() - started,
        "command": " ".join(["python -m bench.curation_value", *sys.argv[1:]]),
        "results": [asdict(r) for r in results],
    }


def render(
    report: dict[str, Any], results: list[ArmResult], datasets: list[DataSet], settings: Settings
) -> dict[str, Any]:
    """Tables and plots of the results; writes results.json (and the plots into docs/ with ``--docs``)."""
    pictures = plots(results, datasets, settings.work)
    if settings.docs:
        for picture in pictures:
            shutil.copy(picture, DOCS / picture.name)
    report |= {
        "tables": {d.name: table(results, d.name) for d in datasets},
        "composition": {d.name: composition_table(results, d) for d in datasets},
        "bands": {d.name: band_table(results, d.name) for d in datasets},
        "paired": {d.name: paired_table(results, d.name) for d in datasets},
        "findings": {d.name: finding_table(results, d) for d in datasets},
        "targets": {d.name: targets(results, d.name) for d in datasets},
        "plots": [str(p) for p in pictures],
    }
    (settings.work / "results.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def replot(settings: Settings) -> dict[str, Any]:
    """Tables and plots again from an earlier run's results.json (or, of a run cut short, its partial.json: the
    seeds it finished) and data (no training)."""
    report: dict[str, Any] = {}
    results: list[ArmResult] = []
    for work in (settings.work, *settings.merge):
        source = work / "results.json"
        if not source.exists():
            source = work / PARTIAL
        part = json.loads(source.read_text())
        results += [ArmResult(**r) for r in part["results"]]
        if not report:
            report = part
        else:  # runs of other seeds in parallel: their wall time and load are reported beside the first
            report.setdefault("merged", []).append(
                {k: part[k] for k in ("command", "wall_s", "measured_at", "load_average_before", "load_average_after")}
            )
    report["results"] = [asdict(r) for r in results]
    datasets = [load_synthetic(settings.work / "synth")]
    if any(r.data == "covid19_radiography" for r in results):
        datasets.append(covid(settings, lambda _: None))
    return render(report, results, datasets, settings)


def parse(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one seed: a smoke check of every path")
    parser.add_argument("--train", type=int)
    parser.add_argument("--test", type=int)
    parser.add_argument("--size", type=int, help="synthetic image side (px)")
    parser.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")), help="e.g. 0,1,2")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-central", type=int)
    parser.add_argument("--warmup-samples", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--arms", type=lambda s: tuple(s.split(",")), help="subset of " + ",".join(ARMS))
    parser.add_argument("--model", help="trainer model preset (default minilm-cnn)")
    parser.add_argument("--no-covid", dest="covid", action="store_false", default=None)
    parser.add_argument("--covid-arms", type=lambda s: tuple(s.split(",")))
    parser.add_argument("--covid-train", type=int, help="COVID set: training images (half each class)")
    parser.add_argument("--covid-test", type=int, help="COVID set: held-out images (half each class)")
    parser.add_argument("--work", type=Path, help="where data, runs, results.json and plots go")
    parser.add_argument("--docs", action="store_true", help="copy the plots into docs/")
    parser.add_argument("--replot", action="store_true", help="only redo tables and plots from --work/results.json")
    parser.add_argument(
        "--merge", type=lambda s: tuple(Path(p) for p in s.split(",")),
        help="with --replot: also the results of these work folders (other seeds, same settings)",
    )  # fmt: skip
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    args = parser.parse_args(argv)
    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    for key, value in vars(args).items():
        if key not in ("quick", "replot") and value is not None:
            values[key] = value
    if args.quick and args.work is None:
        values["work"] = Path(".bench/curation_value_quick")
    settings = Settings(**values)
    unknown = set(settings.arms) - set(ARMS) | set(settings.covid_arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms: {sorted(unknown)}")
    for arms in (settings.arms, settings.covid_arms):
        if "random" in arms and "online" not in arms:
            parser.error("the random arm needs the online arm (its subset size)")
        if "full_equal" in arms and "online" not in arms:
            parser.error("the full_equal arm needs the online arm (its pair-passes)")
        if "online_density" in arms and "random" in arms and "online" not in arms:
            parser.error("the random arm needs the online arm (its subset size)")
    return settings


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse(argv)
    report = replot(settings) if "--replot" in (sys.argv[1:] if argv is None else argv) else run(settings)
    for name, text in report["tables"].items():
        print(f"\n### {name}\n\n{text}\n\n{report['paired'][name]}\n\n{targets_table(report['targets'][name])}")
        print(f"\n{report['composition'][name]}\n\n{report['bands'][name]}\n\n{report['findings'][name]}")
    print(f"\nwall {report['wall_s']:.0f} s; results in {settings.work / 'results.json'}")
    print(json.dumps({"wall_s": round(report["wall_s"], 1), "results": str(settings.work / "results.json")}))


if __name__ == "__main__":
    main()
