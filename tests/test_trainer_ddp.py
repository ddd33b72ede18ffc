"""The trainer under DDP: two CPU processes (gloo).

``torchrun`` end to end, driven by a real API process on a scratch Postgres database with no broker (the API runs
its tasks eagerly: k-means and the curated batches in the request). The dataset is 48 or 49 real chest X-ray PNGs
with synthesized reports; the run warms up on 16 (17), curates manifests of 16 and trains one epoch on the subset.
Rank 0 leases, posts and acknowledges; both ranks train on their half of every manifest. With 49 samples the last
manifests hold one item, so rank 1 has an empty shard.

Then the gradients of one step under DDP (rows gathered with gradients) against one process on the whole batch,
including a rank that holds no row at all.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import torch.multiprocessing as mp

from service.auth import create_token
from service.db import make_engine, session_factory
from tests.conftest import scratch_database
from tests.runs_helpers import labelled_run
from tests.servers import free_port, uvicorn_server
from tests.test_ingest_api import COVID, _labelled_images
from trainer.checkpoint import load_checkpoint
from trainer.data import Batch, tokenize
from trainer.distributed import World, cleanup, init_distributed
from trainer.train import TrainConfig, Trainer

PER_LABEL = 25
CONFIG = {"k": 2, "warmup_samples": 16, "batch_size": 16, "epochs": 2, "curation_epochs": 1, "max_central": 2}
TRAIN_TIMEOUT = 300


def _tokens(db_url: str, run_id: int | None = None) -> str:
    engine = make_engine(db_url)
    try:
        with session_factory(engine)() as session:
            if run_id is None:
                return create_token(session, "ddp-admin", "admin")
            return create_token(session, "ddp-trainer", "trainer", [run_id])
    finally:
        engine.dispose()


def _torchrun() -> list[str]:
    found = Path(sys.executable).parent / "torchrun"
    return [str(found)] if found.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """API process on a fresh migrated Postgres database, embedded (eager) tasks; yields (url, db_url, data dir)."""
    data = tmp_path_factory.mktemp("data")
    images = _labelled_images(PER_LABEL)
    for rel, _ in images:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(COVID / rel, data / rel)
    saved = os.environ.pop("CHEX_BROKER_URL", None)  # the API child inherits the environment: no broker
    try:
        with scratch_database() as db_url, uvicorn_server({"CHEX_DATABASE_URL": db_url}, timeout=60) as url:
            yield url, db_url, data, images
    finally:
        if saved is not None:
            os.environ["CHEX_BROKER_URL"] = saved


def _new_run(http: httpx.Client, data: Path, images: list[tuple[str, str]], config: dict[str, int]) -> int:
    return labelled_run(http, str(data), images, config, prefix="ddp")


@pytest.mark.parametrize(
    ("select_mode", "n", "warmup"),
    [
        ("grad", 48, 16),
        # ragged: the last warm-up and curation manifests hold one item, so rank 1 gets an empty shard
        ("grad", 49, 17),
        ("nograd", 49, 17),
    ],
)
def test_two_rank_ddp_trains_a_run_to_the_end(
    service: Any, tmp_path: Path, select_mode: str, n: int, warmup: int
) -> None:
    url, db_url, data, all_images = service
    images = all_images[:n]
    config = {**CONFIG, "warmup_samples": warmup}
    admin = {"Authorization": f"Bearer {_tokens(db_url)}"}
    with httpx.Client(base_url=url, headers=admin, timeout=120) as http:
        run_id = _new_run(http, data, images, config)
        out = tmp_path / "out"
        command = _torchrun() + ["--standalone", "--nproc_per_node", "2", "-m", "trainer.cli", "train"]
        command += ["--api", url, "--token", _tokens(db_url, run_id), "--run-id", str(run_id), "--model", "tiny"]
        command += ["--data-root", str(data), "--out", str(out), "--device", "cpu", "--no-progress"]
        command += ["--select-mode", select_mode, "--workers", "2", "--checkpoint-every", "1000"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        started = time.monotonic()
        trained = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TRAIN_TIMEOUT)
        elapsed = time.monotonic() - started
        assert trained.returncode == 0, f"torchrun failed:\n{trained.stdout[-4000:]}\n{trained.stderr[-6000:]}"

        # one JSON summary, from rank 0, and it is the last line on stdout
        lines = [ln for ln in trained.stdout.splitlines() if ln.strip()]
        summaries = [ln for ln in lines if ln.lstrip().startswith("{")]
        assert len(summaries) == 1, trained.stdout[-4000:]
        summary = json.loads(lines[-1])

        assert http.get(f"/v1/runs/{run_id}").json()["phase"] == "done"
        stats = http.get(f"/v1/runs/{run_id}/stats").json()
        export = http.get(f"/v1/runs/{run_id}/subset", params={"format": "jsonl"})
        assert export.status_code == 200, export.text
    rows = [json.loads(line) for line in export.text.splitlines() if line.strip()][1:]

    # the service's view: every sample decided exactly once, the subset is what the export lists
    assert stats["phase"] == "done" and stats["subset_complete"] is True
    assert stats["samples_total"] == stats["samples_seen"] == n
    assert sum(stats["band_counts"].values()) == n
    subset = stats["subset_size"]
    assert 0 < subset <= n and len(rows) == subset == len({r["sample_id"] for r in rows})
    assert stats["prototype_version"] >= 2

    # the trainer's view: manifests per phase, rows and kept rows match what the service handed out and recorded
    batch = CONFIG["batch_size"]
    assert summary["finished"] is True and summary["run_id"] == run_id
    assert summary["manifests"] == {
        "warmup": -(-warmup // batch),
        "curation": -(-n // batch),
        "subset": -(-subset // batch),
    }
    assert summary["rows"] == {"warmup": warmup, "curation": n, "subset": subset}
    assert summary["kept"] == subset  # one curation epoch, every sample decided once: the kept rows are the subset
    assert summary["unreadable"] == 0 and summary["lease_expired"] == 0
    assert summary["steps"] == sum(summary["manifests"].values())
    assert summary["final_loss"] is not None and summary["final_loss"] > 0
    if select_mode == "nograd":
        assert summary["curation_compute"] == n + 3 * subset < summary["curation_compute_grad_mode"] == 3 * n
    else:
        assert summary["curation_compute"] == summary["curation_compute_grad_mode"] == 3 * n

    # rank 0's metrics: one line per manifest, each manifest step once per epoch, epoch sizes add up
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, summary["steps"] + 1))
    per_epoch: dict[tuple[str, int], Counter[int]] = {}
    rows_per_epoch: Counter[tuple[str, int]] = Counter()
    for m in metrics:
        key = (m["phase"], m["epoch"])
        per_epoch.setdefault(key, Counter())[m["manifest_step"]] += 1
        rows_per_epoch[key] += m["rows"]
    assert all(max(steps.values()) == 1 for steps in per_epoch.values()), per_epoch
    assert dict(rows_per_epoch) == {("warmup", 0): warmup, ("curation", 1): n, ("subset", 2): subset}
    curation = [m for m in metrics if m["phase"] == "curation"]
    assert sum(m["kept"] for m in curation) == subset
    assert [m["prototype_version"] for m in curation] == sorted(m["prototype_version"] for m in curation)
    # a step trains (one optimiser step, a finite loss) exactly when it has a pair to contrast: >= 2 kept rows
    trained_steps = [m for m in curation if m["kept"] >= 2] + [
        m for m in metrics if m["phase"] == "subset" and m["rows"] >= 2
    ]
    assert all(math.isfinite(m["loss"]) for m in trained_steps)
    assert (
        summary["optimizer_steps"] == len(trained_steps) == sum(math.isfinite(m.get("loss", math.nan)) for m in metrics)
    )
    assert summary["trained_rows"] == sum(m["kept"] if m["phase"] == "curation" else m["rows"] for m in trained_steps)
    if n % batch == 1:  # the ragged case really had a one-item manifest, hence an empty shard on rank 1
        assert any(m["rows"] == 1 for m in curation)

    # the checkpoint is rank 0's, complete, at the last step
    state = load_checkpoint(out / "latest.pt")
    assert state["step"] == summary["steps"] and state["run_id"] == run_id
    assert not any(k.startswith("module.") for k in state["model"])
    print(f"ddp {select_mode}: trained in {elapsed:.1f} s, subset {subset}/{n}")


# ------------------------------------------------------------------------------------------------ gradients

ROWS = 5
#: which rows of the batch each rank holds: the strided shard of the loop, and everything on rank 0 (rank 1 empty)
SPLITS = {"strided": ([0, 2, 4], [1, 3]), "empty_rank": ([0, 1, 2, 3, 4], [])}


def _grad_trainer(rank: int = 0, size: int = 1) -> Trainer:
    # accumulate=2: the first optimise() leaves the (all-reduced) gradients in place instead of stepping; AdamW's
    # first step is scale-invariant, so comparing parameters after it would hide a gradient scaled by the world size
    config = TrainConfig(api="http://unused", run_id=1, model="tiny", device="cpu", accumulate=2, workers=1)
    world = init_distributed("cpu") if size > 1 else World()
    assert (world.rank, world.size) == (rank, size)
    trainer = Trainer(config, world, client=None)
    trainer.model.eval()  # no dropout, so the ranks and the reference compute the same function
    return trainer


def _grad_batch(trainer: Trainer, rows: list[int]) -> Batch:
    size = trainer.model.config.image_size
    pixels = torch.randn((ROWS, 3, size, size), generator=torch.Generator().manual_seed(1234))
    reports = [f"finding {i}: {'no ' * i}consolidation in the left lower lobe" for i in range(ROWS)]
    ids, mask = tokenize(trainer.model.tokenizer, reports, trainer.model.config.max_tokens)
    return Batch(sample_ids=rows, pixel_values=pixels[rows], input_ids=ids[rows], attention_mask=mask[rows])


def _grads(trainer: Trainer, rows: list[int], path: Path) -> None:
    img, txt, scale = trainer.encode(_grad_batch(trainer, rows))
    loss = trainer.optimise(img, txt, scale)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    missing = [n for n, p in trainer.model.named_parameters() if p.requires_grad and p.grad is None]
    torch.save({"loss": loss, "grads": grads, "missing": missing}, path)


def _ddp_grad_worker(rank: int, port: int, split: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    try:
        _grads(_grad_trainer(rank, 2), SPLITS[split][rank], Path(out) / f"rank{rank}.pt")
    finally:
        cleanup()


@pytest.mark.parametrize("split", list(SPLITS))
def test_ddp_gradients_equal_one_process_on_the_whole_batch(tmp_path: Path, split: str) -> None:
    """InfoNCE over rows gathered with gradients, under DDP, gives every rank the gradient one process computes
    on the whole batch: not scaled by the world size, and also when a rank holds no row (its placeholder forward
    feeds zeros into the all-reduce)."""
    mp.spawn(_ddp_grad_worker, args=(free_port(), split, str(tmp_path)), nprocs=2, join=True)
    _grads(_grad_trainer(), list(range(ROWS)), tmp_path / "reference.pt")
    reference = torch.load(tmp_path / "reference.pt", weights_only=True)
    assert reference["missing"] == [] and math.isfinite(reference["loss"])
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["missing"] == [], f"rank {rank}: no gradient for {got['missing']}"
        assert got["loss"] == pytest.approx(reference["loss"], rel=1e-5)
        assert set(got["grads"]) == set(reference["grads"])
        for name, grad in reference["grads"].items():
            # per tensor, relative to its norm: float32 sums in another order differ in the last bits, and some
            # gradients are zero in exact arithmetic (attention key biases) and only rounding noise here
            error = float((got["grads"][name] - grad).norm())
            assert error <= 1e-4 * float(grad.norm()) + 1e-7, f"rank {rank}: {name} off by {error:.3g}"
