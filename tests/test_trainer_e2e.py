"""The real trainer against the production topology, as separate processes (SPEC §3, §6).

uvicorn + one Celery worker (both queues) on a scratch Postgres database and Redis db 12, 48 real chest X-ray
PNGs, and ``chexcurate-train train`` (tiny model, CPU) as a subprocess. One test trains a run to the end; the
other SIGKILLs the trainer mid-curation and again in the subset phase and resumes it from its checkpoint each
time. Both check the exactly-once contract in Postgres itself (epoch rows, acknowledged manifests, decisions,
prototype versions) and the run statistics against bounds derived from the run's configuration.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.auth import create_token
from service.db import make_engine, session_factory
from service.models import Decision, EpochItem, Manifest, PrototypeVersion, Run
from tests.conftest import scratch_database
from tests.runs_helpers import labelled_run
from tests.servers import celery_worker, private_redis, uvicorn_server
from tests.test_ingest_api import COVID, _labelled_images

PER_LABEL = 24
#: 48 pairs: warm-up 16, six curation steps of 8, then the subset epochs
CONFIG = {"k": 2, "warmup_samples": 16, "batch_size": 8, "epochs": 2, "curation_epochs": 1, "max_central": 2}
#: defaults of the two quantiles the config leaves alone (workers.curation.CurationConfig)
SUPPORT_QUANTILE = 0.85
TRAINER = str(Path(sys.executable).parent / "chexcurate-train")
TRAIN_TIMEOUT = 600


@dataclass
class E2E:
    url: str
    sessions: sessionmaker[Session]
    admin: dict[str, str]
    data_dir: Path
    out_dir: Path


@contextlib.contextmanager
def running_stack(tmp_path: Path, **settings: str) -> Iterator[E2E]:
    """Scratch database, a redis-server of its own, API + one worker as real processes, 48 real images copied into
    a dataset root."""
    data = tmp_path / "data"
    for rel, _ in _labelled_images(PER_LABEL):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(COVID / rel, data / rel)
    with private_redis(tmp_path) as broker, scratch_database() as db_url:
        env = {
            "CHEX_DATABASE_URL": db_url,
            "CHEX_BROKER_URL": broker,
            "CHEX_CURATION_WAIT_SECONDS": "10",
            "CHEX_INIT_REDRIVE_SECONDS": "5",
            **settings,
        }
        engine = make_engine(db_url)
        sessions = session_factory(engine)
        try:
            with sessions() as session:
                admin = {"Authorization": f"Bearer {create_token(session, 'e2e', 'admin')}"}
            with celery_worker(env), uvicorn_server(env, ready_path="/readyz") as url:
                yield E2E(url, sessions, admin, data, tmp_path / "out")
        finally:
            engine.dispose()


def new_run(e2e: E2E, config: dict[str, int]) -> tuple[int, str, int]:
    """Dataset of the 48 images (template reports), a run on it; (run id, trainer token, samples)."""
    images = _labelled_images(PER_LABEL)
    with httpx.Client(base_url=e2e.url, headers=e2e.admin, timeout=120) as http:
        run_id = labelled_run(http, str(e2e.data_dir), images, config, prefix="e2e")
    with e2e.sessions() as session:
        token = create_token(session, "e2e-trainer", "trainer", [run_id])
    return run_id, token, len(images)


class TrainerProcess:
    """``chexcurate-train train`` as a subprocess, its stdout and stderr in files under ``out``'s parent."""

    def __init__(self, e2e: E2E, run_id: int, token: str, name: str, *extra: str) -> None:
        self.name = name
        self.stdout = e2e.out_dir.parent / f"{name}.stdout"
        self.stderr = e2e.out_dir.parent / f"{name}.stderr"
        args = ["train", "--api", e2e.url, "--token", token, "--run", str(run_id), "--model", "tiny"]
        args += ["--data-root", str(e2e.data_dir), "--out", str(e2e.out_dir), "--device", "cpu", "--no-progress"]
        with self.stdout.open("w") as out, self.stderr.open("w") as err:
            self.proc = subprocess.Popen([TRAINER, *args, *extra], stdout=out, stderr=err, env=dict(os.environ))

    def output(self) -> str:
        return f"{self.name} stdout:\n{self.stdout.read_text()[-3000:]}\nstderr:\n{self.stderr.read_text()[-5000:]}"

    def summary(self, timeout: float = TRAIN_TIMEOUT) -> dict[str, Any]:
        """Wait for a clean exit; the JSON summary on its last stdout line."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not finish in {timeout} s\n{self.output()}") from None
        assert rc == 0, f"{self.name} exited with {rc}\n{self.output()}"
        lines = self.stdout.read_text().strip().splitlines()
        assert lines, self.output()
        return json.loads(lines[-1])

    def kill(self) -> None:
        """SIGKILL, as a crash would end it: no checkpoint on the way out, leases left behind."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def metrics(path: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The complete JSON lines of the trainer's metrics file from byte ``offset`` on."""
    if not path.exists():
        return []
    records = []
    for line in path.read_bytes()[offset:].decode().splitlines(keepends=True):
        if line.endswith("\n"):  # a line still being written is left for the next read
            records.append(json.loads(line))
    return records


def wait_for_record(
    trainer: TrainerProcess, path: Path, offset: int, wanted: Callable[[dict[str, Any]], bool], timeout: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for record in metrics(path, offset):
            if wanted(record):
                return record
        assert trainer.proc.poll() is None, f"{trainer.name} exited before the awaited step\n{trainer.output()}"
        assert time.monotonic() < deadline, f"no such step from {trainer.name} in {timeout} s\n{trainer.output()}"
        time.sleep(0.02)


def checkpoint_step(out_dir: Path) -> int:
    return int(torch.load(out_dir / "latest.pt", map_location="cpu", weights_only=True)["step"])


# --------------------------------------------------------------------------------------------- bounds and checks


def group_kept_range(n: int, max_central: int, support_quantile: float = SUPPORT_QUANTILE) -> tuple[int, int]:
    """Fewest and most rows one prototype's group of ``n`` batch members can keep.

    ``t_sup`` is the linear-interpolation quantile at virtual index ``h = (n - 1) q``: it lies at or above the
    member of rank ``floor(h)``, so at least ``floor(h) + 1`` members are central (``d <= t_sup``) and at most
    ``n - 1 - floor(h)`` are above it (support or outlier). Kept = support plus at most ``max_central`` central
    members, and at least ``min(max_central, central)`` of them.
    """
    central_min = math.floor((n - 1) * support_quantile) + 1
    return min(max_central, central_min), min(n, n - central_min + max_central)


def partitions(n: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Non-increasing splits of ``n`` into 1..``parts`` positive parts."""
    for count in range(1, parts + 1):
        for cut in itertools.combinations_with_replacement(range(1, n + 1), count):
            if sum(cut) == n:
                yield cut


def batch_kept_range(n: int, k: int, max_central: int) -> tuple[int, int]:
    """Fewest and most kept rows of a super-batch of ``n`` over every way its rows can fall to the k prototypes."""
    ranges = [[group_kept_range(g, max_central) for g in split] for split in partitions(n, k)]
    return min(sum(lo for lo, _ in r) for r in ranges), max(sum(hi for _, hi in r) for r in ranges)


def answer(manifest: Manifest) -> dict[str, Any]:
    """The stored answer of an acknowledged manifest."""
    assert manifest.result is not None, f"manifest {manifest.id} has no stored answer"
    return manifest.result


def check_exactly_once(
    sessions: sessionmaker[Session], run_id: int, n_samples: int, config: dict[str, int]
) -> dict[str, Any]:
    """Every epoch's rows done, each sample once per epoch, acknowledged manifests partitioning each epoch,
    one decision per sample, prototype versions one per applied step; returns what later checks need."""
    with sessions() as session:
        run = session.get(Run, run_id)
        assert run is not None and run.phase == "done", run and run.phase
        items = session.execute(
            select(EpochItem.epoch, EpochItem.sample_id, EpochItem.state, EpochItem.manifest_id).where(
                EpochItem.run_id == run_id
            )
        ).all()
        manifests = session.scalars(select(Manifest).where(Manifest.run_id == run_id)).all()
        decisions = session.execute(
            select(
                Decision.sample_id,
                Decision.epoch,
                Decision.kept,
                Decision.manifest_id,
                Decision.prototype_version,
                Decision.step,
            ).where(Decision.run_id == run_id)
        ).all()
        versions = session.execute(
            select(PrototypeVersion.version, PrototypeVersion.step)
            .where(PrototypeVersion.run_id == run_id)
            .order_by(PrototypeVersion.version)
        ).all()
        run_step = run.step

    # epoch rows: 0 warm-up, 1..curation_epochs curation, the rest subset; each sample once per epoch, all done
    per_epoch: dict[int, list[int]] = {}
    for epoch, sample_id, state, _ in items:
        assert state == "done", f"epoch {epoch} sample {sample_id} left {state}"
        per_epoch.setdefault(epoch, []).append(sample_id)
    assert sorted(per_epoch) == list(range(config["epochs"] + 1))
    for epoch, ids in per_epoch.items():
        assert len(ids) == len(set(ids)), f"epoch {epoch} holds a sample twice"
    assert len(per_epoch[0]) == config["warmup_samples"]
    assert len(per_epoch[1]) == n_samples

    # acknowledged manifests: per epoch, disjoint and together exactly the epoch's samples
    acked = {m.id: m for m in manifests if m.acked_at is not None}
    for epoch, ids in per_epoch.items():
        handed = [s for m in acked.values() if m.epoch == epoch for s in m.sample_ids]
        assert len(handed) == len(set(handed)), f"epoch {epoch}: a sample in two acknowledged manifests"
        assert set(handed) == set(ids), f"epoch {epoch}: acknowledged manifests do not cover the epoch"
    for epoch, sample_id, _, manifest_id in items:  # and the row was closed by the manifest that lists it
        assert manifest_id in acked and acked[manifest_id].epoch == epoch
        assert sample_id in acked[manifest_id].sample_ids
    phases = {m.epoch: m.phase for m in manifests}
    assert phases[0] == "warmup" and phases[1] == "curation"
    assert all(phases[e] == "subset" for e in range(2, config["epochs"] + 1))

    # one decision per sample of the curation epoch, each by an acknowledged manifest; the subset is the kept set
    assert len(decisions) == n_samples
    assert {d.sample_id for d in decisions} == set(per_epoch[1]) and {d.epoch for d in decisions} == {1}
    assert all(d.manifest_id in acked for d in decisions)
    kept = {d.sample_id for d in decisions if d.kept}
    for epoch in range(2, config["epochs"] + 1):
        assert set(per_epoch[epoch]) == kept, f"subset epoch {epoch} is not the curated subset"

    # prototype versions: k-means made 1, then exactly one per applied curation step, strictly in order
    assert [v for v, _ in versions] == list(range(1, run_step + 2))
    assert [s for _, s in versions] == list(range(run_step + 1))
    # each acknowledged curation manifest was applied as one step (its decisions share it), steps 1, 2, ... in
    # the order applied under the run lock; step s selected with version s and made version s + 1
    applied: dict[str, set[int]] = {}
    for d in decisions:
        applied.setdefault(d.manifest_id, set()).add(d.step)
    curated = [m for m in acked.values() if m.phase == "curation"]
    assert all(len(applied[m.id]) == 1 for m in curated)
    curated.sort(key=lambda m: min(applied[m.id]))
    assert [min(applied[m.id]) for m in curated] == list(range(1, run_step + 1))
    for step, m in enumerate(curated, start=1):
        assert (answer(m)["prototype_version"], answer(m)["new_prototype_version"]) == (step, step + 1)
        assert {d.prototype_version for d in decisions if d.manifest_id == m.id} == {step}
    return {"kept": kept, "curated": curated, "manifests": manifests, "acked": acked}


def check_stats(e2e: E2E, run_id: int, n_samples: int, config: dict[str, int], facts: dict[str, Any]) -> None:
    """The admin statistics agree with Postgres and the subset ratio lies within what the config allows."""
    with httpx.Client(base_url=e2e.url, headers=e2e.admin, timeout=60) as http:
        response = http.get(f"/v1/runs/{run_id}/stats")
    assert response.status_code == 200, response.text
    stats = response.json()
    assert stats["phase"] == "done" and stats["subset_complete"] is True
    assert stats["samples_total"] == stats["samples_seen"] == n_samples
    bands = stats["band_counts"]
    assert sum(bands.values()) == stats["samples_seen"]
    assert stats["subset_size"] == len(facts["kept"]) == bands["support"] + bands["central_kept"]
    assert math.isclose(stats["subset_ratio"], len(facts["kept"]) / n_samples)

    k, m = config["k"], config["max_central"]
    # per step: every prototype's group keeps what its size allows (support above t_sup, at most m central)
    for manifest in facts["curated"]:
        result = answer(manifest)
        for proto in set(result["prototypes"]):
            members = [i for i, p in enumerate(result["prototypes"]) if p == proto]
            lo, hi = group_kept_range(len(members), m)
            kept = sum(result["keep"][i] for i in members)
            assert lo <= kept <= hi, f"step {manifest.step} prototype {proto}: kept {kept} of {len(members)}"
        assert result["kept"] == sum(result["keep"])
    # the run: with B rows in <= k groups a step keeps between batch_kept_range's ends (B=8, k=2, m=2: 2..6)
    sizes = [len(m_.sample_ids) for m_ in facts["curated"]]
    assert sum(sizes) == n_samples
    lo = sum(batch_kept_range(n, k, m)[0] for n in sizes)
    hi = sum(batch_kept_range(n, k, m)[1] for n in sizes)
    assert lo > 0 and hi < n_samples, "the bounds must constrain the ratio"
    assert lo / n_samples <= stats["subset_ratio"] <= hi / n_samples, (lo, hi, stats["subset_ratio"])
    print(f"run {run_id}: subset {stats['subset_size']}/{n_samples} in [{lo}, {hi}], bands {bands}")
    expected_fraction = (
        config["curation_epochs"] + (config["epochs"] - config["curation_epochs"]) * stats["subset_ratio"]
    ) / config["epochs"]
    assert math.isclose(stats["compute_fraction"], expected_fraction)
    assert stats["prototype_version"] == len(facts["curated"]) + 1


# --------------------------------------------------------------------------------------------------- the tests


def test_trainer_drives_a_run_to_done(tmp_path: Path) -> None:
    with running_stack(tmp_path) as e2e:
        run_id, token, n = new_run(e2e, CONFIG)
        trainer = TrainerProcess(e2e, run_id, token, "trainer", "--checkpoint-every", "4")
        summary = trainer.summary()
        assert summary["finished"] is True and summary["run_id"] == run_id, summary
        assert summary["resumed_from_step"] is None
        facts = check_exactly_once(e2e.sessions, run_id, n, CONFIG)
        check_stats(e2e, run_id, n, CONFIG, facts)

        # the trainer's own account matches the service's: it trained every manifest it was handed
        assert summary["rows"]["warmup"] == CONFIG["warmup_samples"] and summary["rows"]["curation"] == n
        assert summary["kept"] == len(facts["kept"])
        assert summary["rows"]["subset"] == (CONFIG["epochs"] - CONFIG["curation_epochs"]) * len(facts["kept"])
        assert summary["steps"] == len(facts["manifests"]) == len(facts["acked"])
        assert summary["lease_expired"] == 0 and summary["unreadable"] == 0
        records = metrics(e2e.out_dir / "metrics.jsonl")
        assert [r["step"] for r in records] == list(range(1, summary["steps"] + 1))
        versions = [r["prototype_version"] for r in records if r["phase"] == "curation"]
        assert versions == list(range(2, len(facts["curated"]) + 2))
        assert checkpoint_step(e2e.out_dir) == summary["steps"]


#: three subset epochs, so the subset phase lasts long enough to kill the trainer in it
RESUME_CONFIG = {**CONFIG, "epochs": 4}
LEASE_SECONDS = 8


def test_killed_trainer_resumes(tmp_path: Path) -> None:
    with running_stack(tmp_path, CHEX_LEASE_SECONDS=str(LEASE_SECONDS)) as e2e:
        run_id, token, n = new_run(e2e, RESUME_CONFIG)
        log = e2e.out_dir / "metrics.jsonl"
        every = ("--checkpoint-every", "1")

        # 1. killed mid-curation, right after its first curated step
        first = TrainerProcess(e2e, run_id, token, "first", *every)
        wait_for_record(first, log, 0, lambda r: r["phase"] == "curation")
        first.kill()
        with e2e.sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None and run.phase == "curation" and run.step < n // CONFIG["batch_size"]
        seen = metrics(log)
        saved = checkpoint_step(e2e.out_dir)
        # the checkpoint follows the metrics line of its step; a kill between the two leaves the one before
        assert seen[-1]["step"] - 1 <= saved <= seen[-1]["step"] and saved >= 1

        # 2. resumed; killed again in the subset phase
        offset = log.stat().st_size
        second = TrainerProcess(e2e, run_id, token, "second", "--resume", *every)
        wait_for_record(second, log, offset, lambda r: r["phase"] == "subset")
        second.kill()
        resumed = metrics(log, offset)
        assert resumed[0]["step"] == saved + 1, "the resumed trainer did not continue from its checkpoint"
        with e2e.sessions() as session:
            run = session.get(Run, run_id)
            assert run is not None and run.phase == "subset", "the second kill came too late to test the subset"
        saved_again = checkpoint_step(e2e.out_dir)
        assert resumed[-1]["step"] - 1 <= saved_again <= resumed[-1]["step"] and saved_again > saved

        # 3. resumed again; finishes the run
        offset = log.stat().st_size
        third = TrainerProcess(e2e, run_id, token, "third", "--resume", *every)
        summary = third.summary()
        assert summary["finished"] is True and summary["resumed_from_step"] == saved_again, summary
        last = metrics(log, offset)
        assert [r["step"] for r in last] == list(range(saved_again + 1, saved_again + len(last) + 1))
        assert checkpoint_step(e2e.out_dir) == saved_again + summary["steps"]

        facts = check_exactly_once(e2e.sessions, run_id, n, RESUME_CONFIG)
        check_stats(e2e, run_id, n, RESUME_CONFIG, facts)
        # the killed trainers' leases lapsed and their samples were handed out again, once each
        lapsed = [m for m in facts["manifests"] if m.acked_at is None]
        assert any(m.phase == "curation" for m in lapsed), "no curation lease was left behind by the kill"
        # every curated step's version reached the trainers in order, across the restarts
        versions = [r["prototype_version"] for r in metrics(log) if r["phase"] == "curation" and "kept" in r]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_feed_wakes_when_the_trainer_finishes_a_manifest() -> None:
    """At an epoch's end the service answers "nothing free, wait until the leases lapse" while this trainer's
    own last manifests are in flight; finishing one must end the feed's pause at once, not after max_wait."""
    from trainer.prefetch import ManifestFeed

    class Service:
        calls = 0

        def next_manifest(self, *_: Any) -> dict[str, Any]:
            Service.calls += 1
            if Service.calls == 1:
                return {"phase": "subset", "items": [], "wait_seconds": 600.0}
            return {"phase": "done", "items": []}

    feed = ManifestFeed(Service(), 1, lambda: (None, None), max_wait=30.0)  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + 5
        while Service.calls < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)  # the feed is in its pause now
        started = time.monotonic()
        feed.nudge()
        assert feed.get(block=True) == {"done": True}
        assert time.monotonic() - started < 2.0
    finally:
        feed.close()
