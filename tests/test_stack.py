"""The deployed topology end to end, one body over two launchers.

``processes``: ``service.launcher`` (what ``chexcurate up`` runs) on the local Postgres (a fresh database) and
Redis: migrations, uvicorn, one Celery worker on both queues. ``compose``: ``docker compose`` (or Debian's
``docker-compose``) with the images of the Dockerfile: postgres, redis, migrate, api and a worker, each waited
for by its own healthcheck; the files come from ``COMPOSE_FILE`` (``.ci/run`` adds ``compose.local.yml``, whose
base images ``deploy/local-images.sh`` builds). Skipped with the reason when no Docker engine is reachable.

The body ingests 48 real chest X-ray PNGs with template reports, creates a small run and trains it to the end with
the real trainer client (``chexcurate-train train``, tiny model) as a subprocess; the worker is SIGKILLed in the
middle of the curation epoch and started again. Then the exactly-once contract is checked in Postgres itself
(every epoch's rows, acknowledged manifests, one decision per sample, prototype versions), the statistics against
the bounds the run's configuration allows, and the subset export.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
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
import yaml
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, session_factory
from service.launcher import StackSpec, free_port, stack, start_worker
from tests.conftest import scratch_database
from tests.runs_helpers import labelled_run
from tests.servers import private_redis
from tests.test_ingest_api import COVID, _labelled_images
from tests.test_trainer_e2e import CONFIG, E2E, PER_LABEL, check_exactly_once, check_stats

ROOT = Path(__file__).resolve().parent.parent
TRAIN_TIMEOUT = 900
#: the long-running compose services of the CPU topology; each must turn healthy by its own healthcheck
COMPOSE_SERVICES = ["postgres", "redis", "api", "worker-cpu"]
#: what may sit in /app of the image: the Dockerfile's `source` stage plus the editable install's metadata
IMAGE_APP_FILES = {"pyproject.toml", "README.md", "alembic.ini", "migrations", "service", "workers", "trainer"}
SECRET = re.compile(
    r"(?i)(password|passwd|secret|token|api[_-]?key|credential)[a-z_]*\s*[=:]\s*\S|-----BEGIN [A-Z ]*PRIVATE KEY"
)


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
    #: the stack's database, for the exactly-once checks
    sessions: sessionmaker[Session]
    #: SIGKILL the (only) worker, as a crash or an OOM kill would end it
    kill_worker: Callable[[], None]
    #: start it again and wait until it is up
    restart_worker: Callable[[], None]


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
        engine = make_engine(db_url)
        try:
            with stack(spec, env, timeout=120) as running:
                bin_dir = Path(sys.executable).parent

                def kill_worker() -> None:
                    worker = running.children[-1]
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.proc.wait(timeout=30)

                def restart_worker() -> None:
                    worker = start_worker(env, name=f"worker{len(running.children)}")
                    running.children.append(worker)  # stopped with the stack
                    worker.wait_ready(120)

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
                    sessions=session_factory(engine),
                    kill_worker=kill_worker,
                    restart_worker=restart_worker,
                )
        finally:
            engine.dispose()


# ------------------------------------------------------------------------------------------------------ compose


def compose_cli() -> list[str] | None:
    """The compose command: the v2 plugin where installed, else the standalone ``docker-compose``."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def docker_unavailable() -> str | None:
    """Why the compose launcher cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        lines = [ln for ln in (info.stderr or info.stdout).splitlines() if ln.strip()]
        return f"no Docker engine reachable ({lines[-1].strip() if lines else 'docker info failed'})"
    if compose_cli() is None:
        return "neither the docker compose plugin nor docker-compose is installed"
    return None


def has_gpu_runtime() -> bool:
    out = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    return "nvidia" in out.stdout and shutil.which("nvidia-smi") is not None


def docker(*args: str, timeout: float = 120) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"docker {' '.join(args)}: {out.stderr}"
    return out.stdout.strip()


@dataclass
class ComposeImages:
    """The compose command over the files in use, with its images built."""

    command: list[str]
    gpu: bool
    #: the images the stack's services run
    images: list[str]
    #: the app image tags (this checkout's own: test runs of other checkouts on one engine keep theirs)
    env: dict[str, str]

    @property
    def worker(self) -> str:
        return "worker-gpu" if self.gpu else "worker-cpu"


def compose_files() -> list[Path]:
    names = os.environ.get("COMPOSE_FILE", "docker-compose.yml")
    return [ROOT / name for name in names.split(os.environ.get("COMPOSE_PATH_SEPARATOR", os.pathsep)) if name]


@pytest.fixture(scope="module")
def compose_images() -> ComposeImages:
    reason = docker_unavailable()
    if reason:
        pytest.skip(f"compose launcher: {reason}")
    files = compose_files()
    if any(f.name == "compose.local.yml" for f in files):
        # the local stand-ins for the public base images (cached by tag: seconds when nothing changed)
        built = subprocess.run([str(ROOT / "deploy" / "local-images.sh")], cwd=ROOT, timeout=1800)
        assert built.returncode == 0, "deploy/local-images.sh failed"
    command = [*(compose_cli() or []), *[a for f in files for a in ("-f", str(f))], "--profile", "cpu"]
    gpu = has_gpu_runtime()
    worker = "worker-gpu" if gpu else "worker-cpu"
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]
    tags = {"CHEX_IMAGE_CPU": f"chexcurate-test/{checkout}:cpu", "CHEX_IMAGE_GPU": f"chexcurate-test/{checkout}:gpu"}
    env = {**os.environ, **tags, "POSTGRES_PASSWORD": "build-only"}  # the file does not interpolate without one
    config = subprocess.run([*command, "config"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert config.returncode == 0, config.stderr
    specs = yaml.safe_load(config.stdout)["services"]
    bases = ["PYTHON_IMAGE", "CUDA_IMAGE"] if gpu else ["PYTHON_IMAGE"]
    pulled = [specs["postgres"]["image"], specs["redis"]["image"], *build_bases(specs["migrate"]["build"], bases)]
    for image in pulled:
        if docker_ok("image", "inspect", image) or docker_ok("pull", "--quiet", image):
            continue
        pytest.skip(f"compose launcher: {image} cannot be pulled here; compose.local.yml selects local stand-ins")
    # migrate, api and worker-cpu share the CPU image: building one builds it
    services = ["migrate", "worker-gpu"] if gpu else ["migrate"]
    built = subprocess.run([*command, "build", *services], env=env, cwd=ROOT, timeout=3600)
    assert built.returncode == 0, "docker compose build failed"
    images = sorted({specs[s]["image"] for s in ("postgres", "redis", "migrate", "api", worker)})
    return ComposeImages(command, gpu, images, tags)


def build_bases(build: dict, names: list[str]) -> list[str]:
    """The images a build starts FROM: the Dockerfile's base-image ARGs ``names``, as the compose build sets them."""
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    return [str((build.get("args") or {}).get(name, defaults[name])) for name in names]


def docker_ok(*args: str) -> bool:
    return subprocess.run(["docker", *args], capture_output=True, timeout=600).returncode == 0


def container(project: str, service: str) -> str:
    ids = docker(
        "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project}",
        "--filter", f"label=com.docker.compose.service={service}", "--filter", "label=com.docker.compose.oneoff=False",
    ).split()  # fmt: skip
    assert len(ids) == 1, f"{service}: containers {ids}"
    return ids[0]


def wait_healthy(project: str, services: list[str], timeout: float = 240) -> None:
    """Until every service's container reports healthy by its own healthcheck."""
    deadline = time.monotonic() + timeout
    pending = list(services)
    while pending:
        service = pending[0]
        state = json.loads(docker("inspect", "--format", "{{json .State}}", container(project, service)))
        assert "Health" in state, f"{service} has no healthcheck"
        assert state["Status"] == "running", f"{service} is {state['Status']} (exit {state['ExitCode']})"
        if state["Health"]["Status"] == "healthy":
            pending.pop(0)
            continue
        assert time.monotonic() < deadline, f"{service} not healthy in {timeout:.0f} s: {state['Health']}"
        time.sleep(1)


def leftovers(project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    return {
        "containers": docker("ps", "-a", "-q", "--filter", label).split(),
        "volumes": docker("volume", "ls", "-q", "--filter", label).split(),
        "networks": docker("network", "ls", "-q", "--filter", label).split(),
    }


@contextlib.contextmanager
def compose(tmp_path: Path, images: ComposeImages) -> Iterator[Deployment]:
    port = free_port()
    data, out = tmp_path / "data", tmp_path / "out"
    for folder in (data, out):
        folder.mkdir()
        folder.chmod(0o777)  # the containers run as uid 10001
    project = f"chextest{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(18)
    env = {
        **os.environ,
        **images.env,
        "COMPOSE_PROJECT_NAME": project,
        "POSTGRES_PASSWORD": password,
        "CHEX_API_PORT": str(port),
        "CHEX_DATA_DIR": str(data),
        "CHEX_DATA_MOUNT": "/data",
        "CHEX_RUNS_DIR": str(out),
        "CHEX_CURATION_WAIT_SECONDS": "10",
        "CHEX_INIT_REDRIVE_SECONDS": "5",
    }
    dc = [*images.command, "--profile", "trainer"]
    # the GPU trainer service where there is a GPU; the CPU image (which has the trainer too) otherwise
    if images.gpu:
        trainer = ["run", "--rm", "-T", "trainer"]
    else:
        trainer = ["run", "--rm", "-T", "--no-deps", "-v", f"{out}:/runs", "--entrypoint", "chexcurate-train", "api"]
    engine = None
    try:
        # depends_on makes up wait for postgres and redis to be healthy and for migrate to finish
        up = subprocess.run([*dc, "up", "-d", "--no-build", "api", images.worker], env=env, cwd=ROOT, timeout=900)
        assert up.returncode == 0, "docker compose up failed"
        migrate = json.loads(docker("inspect", "--format", "{{json .State}}", container(project, "migrate")))
        assert (migrate["Status"], migrate["ExitCode"]) == ("exited", 0), migrate
        wait_healthy(project, ["postgres", "redis", "api", images.worker])
        # Postgres is published nowhere: the test reaches it at its address on the compose network
        pg_ip = docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                       container(project, "postgres"))  # fmt: skip
        engine = make_engine(f"postgresql+psycopg://chex:{password}@{pg_ip}:5432/chexcurate")
        worker = container(project, images.worker)

        def kill_worker() -> None:
            docker("kill", worker)
            state = json.loads(docker("inspect", "--format", "{{json .State}}", worker))
            assert not state["Running"], state

        def restart_worker() -> None:
            docker("start", worker)
            wait_healthy(project, [images.worker])

        yield Deployment(
            url=f"http://127.0.0.1:{port}",
            trainer_api="http://api:8000",
            data_dir=data,
            dataset_root="/data",
            out_dir=out,
            trainer_out="/runs",
            token=lambda role, runs: cli_token([*dc, "exec", "-T", "api", "chexcurate"], env, role, runs),
            trainer_command=lambda args: [*dc, *trainer, *args],
            env=env,
            sessions=session_factory(engine),
            kill_worker=kill_worker,
            restart_worker=restart_worker,
        )
    finally:
        if engine is not None:
            engine.dispose()
        subprocess.run([*dc, "logs", "--tail", "40"], env=env, cwd=ROOT, timeout=120)
        down = subprocess.run([*dc, "down", "-v", "--remove-orphans"], env=env, cwd=ROOT, timeout=600)
    assert down.returncode == 0, "docker compose down failed"
    assert leftovers(project) == {"containers": [], "volumes": [], "networks": []}


LAUNCHERS = ["processes", "compose"]


@pytest.fixture(params=LAUNCHERS)
def deployment(request, tmp_path: Path) -> Iterator[Deployment]:
    if request.param == "compose":
        launched = compose(tmp_path, request.getfixturevalue("compose_images"))
    else:
        launched = processes(tmp_path)
    with launched as deployed:
        yield deployed


def wait_for_phase(http: httpx.Client, run_id: int, wanted: Callable[[dict], bool], trainer, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not wanted(state := http.get(f"/v1/runs/{run_id}").json()):
        assert trainer.poll() is None, f"the trainer exited before the awaited state; last {state}"
        assert time.monotonic() < deadline, f"state not reached in {timeout:.0f} s; last {state}"
        time.sleep(0.05)
    return state


def test_stack_trains_a_run_to_the_end(deployment: Deployment, tmp_path: Path) -> None:
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
            + ["--model", "tiny", "--out", d.trainer_out, "--max-steps", "200", "--no-progress"]
        )
        log = tmp_path / "trainer.log"
        with log.open("w") as output:
            # cwd is the data folder, so a trainer resolving image URIs against its working directory finds them
            trainer = subprocess.Popen(command, cwd=d.data_dir, env=d.env, stdout=output, stderr=subprocess.STDOUT)
            try:
                # the worker dies after the first curated step, with five of the epoch's six still to come
                wait_for_phase(http, run_id, lambda s: s["phase"] == "curation" and s["step"] >= 1, trainer, 600)
                d.kill_worker()
                killed_at = http.get(f"/v1/runs/{run_id}").json()
                assert killed_at["phase"] == "curation", f"the kill came too late to hit the curation: {killed_at}"
                time.sleep(5)  # the trainer's uploads now wait, get 503 + Retry-After and keep retrying
                d.restart_worker()
                rc = trainer.wait(timeout=TRAIN_TIMEOUT)
            finally:
                if trainer.poll() is None:
                    trainer.kill()
                    trainer.wait()
        assert rc == 0, f"trainer failed:\n{log.read_text()[-6000:]}"

        deadline = time.monotonic() + 60
        while (state := http.get(f"/v1/runs/{run_id}").json())["phase"] != "done":
            assert time.monotonic() < deadline, f"run not done after the trainer exited: {state}"
            time.sleep(0.5)

        facts = check_exactly_once(d.sessions, run_id, len(images), CONFIG)
        check_stats(E2E(d.url, d.sessions, admin, d.data_dir, d.out_dir), run_id, len(images), CONFIG, facts)
        stats = http.get(f"/v1/runs/{run_id}/stats").json()
        assert set(stats["label_enrichment"]) == {"COVID", "Normal"}

        export = http.get(f"/v1/runs/{run_id}/subset", params={"format": "jsonl"})
        assert export.status_code == 200
        lines = [json.loads(line) for line in export.text.splitlines() if line.strip()]
        provenance, rows = lines[0]["provenance"], lines[1:]
        assert provenance["run_id"] == run_id and provenance["subset_complete"] is True
        assert 0 < len(rows) == stats["subset_size"] == len({r["sample_id"] for r in rows})
        assert {r["sample_id"] for r in rows} == facts["kept"]
    assert any(p.is_file() for p in d.out_dir.rglob("*")), "the trainer wrote nothing to --out"


def test_images_run_unprivileged_and_carry_no_secrets(compose_images: ComposeImages) -> None:
    """Every image of ours the stack runs (the app image; the local stand-ins for postgres and redis where
    compose.local.yml is in use): a non-root user, nothing secret in its layers' commands or its environment;
    the app image holds only what the Dockerfile copies (the .dockerignore keeps local state out of the context)."""
    app = compose_images.env["CHEX_IMAGE_CPU"]
    ours = [i for i in compose_images.images if i == app or i.startswith("chexcurate-local/")]
    assert app in ours, compose_images.images
    for image in ours:
        config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image))
        user = (config.get("User") or "root").split(":")[0]
        assert user not in ("root", "0"), f"{image} runs as {user}"
        history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).splitlines()
        for text in history + (config.get("Env") or []):
            assert not SECRET.search(text), f"{image}: {text[:300]}"
    listing = docker("run", "--rm", "--entrypoint", "ls", app, "-A", "/app").split()
    assert set(listing) - {"chexcurate.egg-info"} == IMAGE_APP_FILES, listing
    leaked = docker("run", "--rm", "--entrypoint", "find", app, "/app", "/data", "/tmp", "-name", ".venv",
                    "-o", "-name", ".env", "-o", "-name", ".git", "-o", "-name", "*.whl")  # fmt: skip
    assert leaked == "", leaked


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
