"""The deployed topology end to end, one body over two launchers.

``processes``: ``service.launcher`` (what ``chexcurate up`` runs) on the local Postgres (a fresh database) and
Redis: migrations, uvicorn, one Celery worker on both queues. ``compose``: ``docker compose`` with the images of
the Dockerfile, skipped with the reason when no Docker engine is reachable.

The body ingests 48 real chest X-ray PNGs with template reports, creates a small run, trains it to the end with
the real trainer client (``chexcurate-train train``, tiny model) as a subprocess, and checks the statistics and
the subset export.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.launcher import StackSpec, free_port, stack
from tests.conftest import scratch_database
from tests.runs_helpers import labelled_run
from tests.servers import private_redis
from tests.test_ingest_api import COVID, _labelled_images

ROOT = Path(__file__).resolve().parent.parent
PER_LABEL = 24
#: small enough for a 2-core CI box: warm-up 16 pairs, 3 curation steps of 16, then one epoch on the subset
CONFIG = {"k": 2, "warmup_samples": 16, "batch_size": 16, "epochs": 2, "curation_epochs": 1, "max_central": 2}
TRAIN_TIMEOUT = 900


@dataclass
class Deployment:
    """A running stack, as the test (on this host) and the trainer (wherever it runs) see it."""

    url: str
    trainer_api: str
    #: host folder the API sees as ``dataset_root``
    data_dir: Path
    dataset_root: str
    #: host folder the trainer writes to, seen by the trainer as ``trainer_out``
    out_dir: Path
    trainer_out: str
    token: Callable[[str, list[int]], str]
    trainer_command: Callable[[list[str]], list[str]]
    env: dict[str, str]


def cli_token(command: list[str], env: dict[str, str], role: str, runs: list[int]) -> str:
    args = ["token", "create", "--role", role, "--name", "test-stack"] + [f"--run={r}" for r in runs]
    out = subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def processes(tmp_path: Path) -> Iterator[Deployment]:
    # a redis-server of its own: a shared database number would share queues with any other suite on the host
    with private_redis(tmp_path) as broker, scratch_database(migrate=False) as db_url:
        env = {
            "CHEX_DATABASE_URL": db_url,
            "CHEX_BROKER_URL": broker,
            "CHEX_CURATION_WAIT_SECONDS": "10",
            "CHEX_INIT_REDRIVE_SECONDS": "5",
        }
        full_env = {**os.environ, **env}
        spec = StackSpec(port=free_port(), workers=("curation,refresh",))
        with stack(spec, env, timeout=120) as running:
            bin_dir = Path(sys.executable).parent
            yield Deployment(
                url=running.url,
                trainer_api=running.url,
                data_dir=tmp_path / "data",
                dataset_root=str(tmp_path / "data"),
                out_dir=tmp_path / "out",
                trainer_out=str(tmp_path / "out"),
                token=lambda role, runs: cli_token([str(bin_dir / "chexcurate")], full_env, role, runs),
                trainer_command=lambda args: [str(bin_dir / "chexcurate-train"), *args],
                env=full_env,
            )


def docker_unavailable() -> str | None:
    """Why the compose launcher cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        lines = [ln for ln in (info.stderr or info.stdout).splitlines() if ln.strip()]
        return f"no Docker engine reachable ({lines[-1].strip() if lines else 'docker info failed'})"
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode != 0:
        return "the docker compose plugin is not installed"
    return None


def has_gpu_runtime() -> bool:
    out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    return "nvidia" in out.stdout and shutil.which("nvidia-smi") is not None


@contextlib.contextmanager
def compose(tmp_path: Path) -> Iterator[Deployment]:
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"compose launcher: {reason}")
    port = free_port()
    data, out = tmp_path / "data", tmp_path / "out"
    for folder in (data, out):
        folder.mkdir()
        folder.chmod(0o777)  # the containers run as uid 10001
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": f"chextest{uuid.uuid4().hex[:8]}",
        "POSTGRES_PASSWORD": secrets.token_urlsafe(18),
        "CHEX_API_PORT": str(port),
        "CHEX_DATA_DIR": str(data),
        "CHEX_DATA_MOUNT": "/data",
        "CHEX_RUNS_DIR": str(out),
        "CHEX_CURATION_WAIT_SECONDS": "10",
        "CHEX_INIT_REDRIVE_SECONDS": "5",
    }
    dc = ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "--profile", "cpu", "--profile", "trainer"]
    gpu = has_gpu_runtime()
    worker = "worker-gpu" if gpu else "worker-cpu"
    # the GPU trainer service where there is a GPU; the CPU image (which has the trainer too) otherwise
    trainer = ["run", "--rm", "trainer"] if gpu else ["run", "--rm", "--no-deps", "-v", f"{out}:/runs"]
    trainer += [] if gpu else ["--entrypoint", "chexcurate-train", "api"]
    up = subprocess.run(dc + ["up", "-d", "--build", "--wait", "api", worker], env=env, cwd=ROOT, timeout=3600)
    try:
        assert up.returncode == 0, "docker compose up failed"
        yield Deployment(
            url=f"http://127.0.0.1:{port}",
            trainer_api="http://api:8000",
            data_dir=data,
            dataset_root="/data",
            out_dir=out,
            trainer_out="/runs",
            token=lambda role, runs: cli_token(dc + ["exec", "-T", "api", "chexcurate"], env, role, runs),
            trainer_command=lambda args: dc + trainer + args,
            env=env,
        )
    finally:
        subprocess.run(dc + ["logs", "--tail", "50"], env=env, cwd=ROOT, timeout=120)
        subprocess.run(dc + ["down", "-v", "--remove-orphans"], env=env, cwd=ROOT, timeout=600)


LAUNCHERS = {"processes": processes, "compose": compose}


@pytest.fixture(params=list(LAUNCHERS))
def deployment(request, tmp_path: Path) -> Iterator[Deployment]:
    with LAUNCHERS[request.param](tmp_path) as deployed:
        yield deployed


def test_stack_trains_a_run_to_the_end(deployment: Deployment) -> None:
    d = deployment
    images = _labelled_images(PER_LABEL)
    assert len(images) == 2 * PER_LABEL
    for rel, _ in images:
        (d.data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(COVID / rel, d.data_dir / rel)
    d.out_dir.mkdir(exist_ok=True)
    admin = {"Authorization": f"Bearer {d.token('admin', [])}"}

    with httpx.Client(base_url=d.url, headers=admin, timeout=120) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        run_id = labelled_run(http, d.dataset_root, images, CONFIG, prefix="stack")

        trainer_token = d.token("trainer", [run_id])
        command = d.trainer_command(
            ["train", "--api", d.trainer_api, "--token", trainer_token, "--run", str(run_id)]
            + ["--model", "tiny", "--out", d.trainer_out, "--max-steps", "200"]
        )
        # cwd is the data folder, so a trainer resolving image URIs against its working directory finds them
        trained = subprocess.run(
            command, cwd=d.data_dir, env=d.env, capture_output=True, text=True, timeout=TRAIN_TIMEOUT
        )
        assert trained.returncode == 0, f"trainer failed:\n{trained.stdout[-4000:]}\n{trained.stderr[-4000:]}"

        deadline = time.monotonic() + 60
        while (state := http.get(f"/v1/runs/{run_id}").json())["phase"] != "done":
            assert time.monotonic() < deadline, f"run not done after the trainer exited: {state}"
            time.sleep(0.5)

        stats = http.get(f"/v1/runs/{run_id}/stats").json()
        # every epoch was acknowledged in full (the service only moves on when all its rows are done) and every
        # sample got exactly one curation decision
        assert stats["phase"] == "done" and stats["subset_complete"] is True
        assert stats["samples_total"] == stats["samples_seen"] == len(images)
        assert sum(stats["band_counts"].values()) == len(images)
        assert 0 < stats["subset_size"] <= len(images)
        assert stats["prototype_version"] >= 2  # k-means by the worker, then at least one curated step
        assert set(stats["label_enrichment"]) == {"COVID", "Normal"}

        export = http.get(f"/v1/runs/{run_id}/subset", params={"format": "jsonl"})
        assert export.status_code == 200
        lines = [json.loads(line) for line in export.text.splitlines() if line.strip()]
        provenance, rows = lines[0]["provenance"], lines[1:]
        assert provenance["run_id"] == run_id and provenance["subset_complete"] is True
        assert len(rows) == stats["subset_size"] == len({r["sample_id"] for r in rows})
    assert any(p.is_file() for p in d.out_dir.rglob("*")), "the trainer wrote nothing to --out"


def test_up_command_prints_a_token_and_stops_its_children_on_ctrl_c(tmp_path: Path) -> None:
    with private_redis(tmp_path) as broker, scratch_database(migrate=False) as db_url:
        env = {**os.environ, "CHEX_DATABASE_URL": db_url, "CHEX_BROKER_URL": broker}
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "up", "--port", str(port), "--admin-token", "--loglevel", "warning"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            token = proc.stdout.readline().strip()  # the only thing on stdout, once everything is ready
            assert token, proc.stderr.read() if proc.stderr else ""
            ok = httpx.get(f"http://127.0.0.1:{port}/v1/runs", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200, ok.text
            children = [int(pid) for pid in _child_pids(proc.pid)]
            assert len(children) == 2  # uvicorn and one worker
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 0
            for pid in children:
                assert not _alive(pid), f"child {pid} outlived the launcher"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _child_pids(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
