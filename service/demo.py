"""``chexcurate demo``: the whole path on the embedded defaults, driven over HTTP and subprocesses.

synthetic CXR set → ``chexcurate serve`` (SQLite, tasks in-process) → dataset, samples, run → ``chexcurate-train
train`` (tiny model, CPU: warm-up → curation → subset epochs) → run statistics, plot and subset export →
``chexcurate-train eval`` on the held-out split → summary tables, and one JSON object as the last stdout line.

The service side never imports the trainer: the trainer and its evaluation run as their own processes, as they
would against a deployed service. :class:`EmbeddedService` and :class:`AdminApi` are also what the curation-value
benchmark (``bench/curation_value.py``) starts and drives its runs with.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np

from .launcher import Child, start_api, wait_http

#: findings of the synthetic set, rarest first, whose enrichment the summary shows (lowest train prevalence)
RARE_SHOWN = 5


@dataclass
class EmbeddedService:
    """``chexcurate serve`` on a fresh SQLite file in ``workdir`` with no broker (curated batches in-process).

    ``start()`` migrates the database, creates an admin token and starts the API on a free loopback port;
    ``stop()`` ends the API process. Use as a context manager. The API's log goes to ``workdir/api.log``.
    """

    workdir: Path
    timeout: float = 60.0
    url: str = ""
    admin_token: str = ""
    database_url: str = ""
    child: Child | None = None
    _log: TextIO | None = None

    def start(self) -> EmbeddedService:
        from .migrate import upgrade

        self.workdir.mkdir(parents=True, exist_ok=True)
        db = self.workdir / "chexcurate.db"
        for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            leftover.unlink(missing_ok=True)
        self.database_url = f"sqlite:///{db.resolve()}"
        upgrade(self.database_url)
        self.admin_token = self.token("admin", "demo-admin")
        # an empty broker URL means eager tasks even when the environment or a .env file names a broker
        env = {"CHEX_DATABASE_URL": self.database_url, "CHEX_BROKER_URL": ""}
        log = self._log = (self.workdir / "api.log").open("w", buffering=1)

        def echo(_name: str, line: str) -> None:
            log.write(line + "\n")

        self.child, self.url = start_api(env, echo=echo)
        wait_http(self.child, self.url + "/readyz", self.timeout)
        return self

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(grace=10)
            self.child = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedService:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def token(self, role: str, name: str, runs: Sequence[int] | None = None) -> str:
        """A new bearer token in the service's database (what ``chexcurate token create`` does)."""
        from .auth import create_token
        from .db import make_engine, session_factory

        engine = make_engine(self.database_url)
        try:
            with session_factory(engine)() as session:
                return create_token(session, name, role, list(runs) if runs else None)
        finally:
            engine.dispose()

    def admin(self) -> AdminApi:
        return AdminApi(self.url, self.admin_token)


class AdminApi:
    """The admin side of the HTTP contract that the demo and the benchmark use (httpx, admin token)."""

    def __init__(self, url: str, token: str, timeout: float = 600.0) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AdminApi:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.text[:500]}")
        return response.json()

    def create_dataset(self, name: str, root: Path) -> int:
        body = {"name": name, "root": str(Path(root).resolve())}
        return int(self._json(self.http.post("/v1/datasets", json=body))["id"])

    def upload_csv(self, dataset_id: int, text: str, synthesize_reports: bool = False) -> dict[str, Any]:
        response = self.http.post(
            f"/v1/datasets/{dataset_id}/samples",
            content=text.encode(),
            headers={"Content-Type": "text/csv"},
            params={"synthesize_reports": str(synthesize_reports).lower()},
        )
        result: dict[str, Any] = self._json(response)
        return result

    def samples(self, dataset_id: int, status: str | None = "accepted") -> list[dict[str, Any]]:
        """Every sample of the dataset (of one status), paged."""
        out: list[dict[str, Any]] = []
        while True:
            params: dict[str, Any] = {"limit": 1000, "offset": len(out)}
            if status:
                params["status"] = status
            page = self._json(self.http.get(f"/v1/datasets/{dataset_id}/samples", params=params))
            out += page["items"]
            if not page["items"] or len(out) >= page["total"]:
                return out

    def run_pool(self, dataset_id: int, run_id: int) -> list[dict[str, Any]]:
        """The accepted samples of the dataset less those left out of the run (e.g. reported unreadable by its
        trainer): the pairs the run could use."""
        left_out = {e["sample_id"] for e in self._json(self.http.get(f"/v1/runs/{run_id}/exclusions"))}
        return [s for s in self.samples(dataset_id) if s["id"] not in left_out]

    def create_run(self, dataset_id: int, config: dict[str, Any]) -> int:
        return int(self._json(self.http.post("/v1/runs", json={"dataset_id": dataset_id, "config": config}))["id"])

    def run(self, run_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self.http.get(f"/v1/runs/{run_id}"))
        return result

    def stats(self, run_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self.http.get(f"/v1/runs/{run_id}/stats"))
        return result

    def stats_png(self, run_id: int) -> bytes:
        response = self.http.get(f"/v1/runs/{run_id}/stats.png")
        if response.status_code != 200 or not response.content.startswith(b"\x89PNG"):
            raise RuntimeError(f"GET /v1/runs/{run_id}/stats.png: {response.status_code} {response.text[:200]}")
        return response.content

    def subset(self, run_id: int) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
        """The curated subset export: (provenance, rows, the JSONL text as served)."""
        response = self.http.get(f"/v1/runs/{run_id}/subset", params={"format": "jsonl"})
        if response.status_code != 200:
            raise RuntimeError(f"GET /v1/runs/{run_id}/subset: {response.status_code} {response.text[:200]}")
        lines = response.text.splitlines()
        return json.loads(lines[0])["provenance"], [json.loads(line) for line in lines[1:]], response.text

    def step(self, run_id: int, step: int) -> dict[str, Any] | None:
        """The replay of the manifest issued as ``step`` (items, and the stored answer once posted); None past the
        last step."""
        response = self.http.get(f"/v1/runs/{run_id}/steps/{step}")
        if response.status_code == 404:
            return None
        result: dict[str, Any] = self._json(response)
        return result

    def bulk_embeddings(self, run_id: int, sample_ids: np.ndarray, embeddings: np.ndarray) -> dict[str, Any]:
        buffer = io.BytesIO()
        np.savez(buffer, sample_id=np.asarray(sample_ids, dtype=np.int64), embedding=embeddings)
        response = self.http.post(
            f"/v1/runs/{run_id}/embeddings",
            content=buffer.getvalue(),
            headers={"Content-Type": "application/octet-stream"},
        )
        result: dict[str, Any] = self._json(response)
        return result

    def offline(self, run_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json(self.http.post(f"/v1/runs/{run_id}/offline"))
        return result


# -- CSV helpers ---------------------------------------------------------------------------------------------------
def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def csv_text(columns: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def flagged_shares(samples: Sequence[dict[str, Any]], kept_external_ids: set[str]) -> dict[str, dict[str, Any]]:
    """Share of near-duplicate follow-ups and of noisy pairs (synthetic ``meta``) in the dataset and the subset."""
    subset = [s for s in samples if s["external_id"] in kept_external_ids]
    out: dict[str, dict[str, Any]] = {}
    for name, test in (
        ("near_duplicates", lambda s: _flag(s["meta"].get("near_duplicate"))),
        ("noisy_pairs", lambda s: str(s["meta"].get("noise") or "none").strip().lower() not in ("", "none")),
    ):
        dataset_share = sum(map(test, samples)) / max(1, len(samples))
        subset_share = sum(map(test, subset)) / max(1, len(subset))
        out[name] = {
            "dataset_share": round(dataset_share, 4),
            "subset_share": round(subset_share, 4),
            "ratio": round(subset_share / dataset_share, 3) if dataset_share else None,
        }
    return out


# -- subprocesses -------------------------------------------------------------------------------------------------
def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise ValueError("no JSON line in the output")


def run_child(args: Sequence[str], env: dict[str, str] | None = None) -> str:
    """Run a Python module as a child process; its stderr (progress bars) passes through, stdout is returned."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} exited with {proc.returncode}:\n{proc.stdout[-2000:]}")
    return proc.stdout


# -- the demo -----------------------------------------------------------------------------------------------------
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
    from workers.synth import generate

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
