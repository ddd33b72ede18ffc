"""The compose topology as plain processes: migrations, the API under uvicorn, Celery workers (``chexcurate up``).

The building blocks (:func:`api_server`, :func:`celery_worker`, :class:`Child`) are what the integration tests
and benchmarks start their real processes with, so a test stack and ``chexcurate up`` are one piece of code.
Children run in their own process groups: a Ctrl-C reaches the launcher only, which then stops the API first
(no new requests) and the workers after it (a warm shutdown finishes the task in hand), each with SIGTERM and,
after a grace period, SIGKILL to its whole group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import httpx

#: what ``chexcurate worker`` prints once Celery is ready to consume (whatever the log level)
WORKER_READY = "chexcurate: worker ready"
#: where a child's output lines go besides its bounded in-memory tail (``chexcurate up`` prints them)
Echo = Callable[[str, str], None]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    """One subprocess of the stack: its output is always drained (a full pipe would stall it) into ``lines``."""

    name: str
    proc: subprocess.Popen[str]
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=400))
    #: set when a line containing ``ready_marker`` appears
    ready: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(
        cls,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        ready_marker: str | None = None,
        echo: Echo | None = None,
    ) -> Child:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        child = cls(name, proc)
        threading.Thread(target=child._pump, args=(ready_marker, echo), daemon=True).start()
        return child

    def _pump(self, ready_marker: str | None, echo: Echo | None) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if echo is not None:
                echo(self.name, line.rstrip("\n"))
            if ready_marker is not None and ready_marker in line:
                self.ready.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 40) -> str:
        return "".join(list(self.lines)[-n:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL to the child's process group after ``grace`` seconds; returns the exit code."""
        if self.alive():
            self.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def wait_ready(self, timeout: float) -> None:
        """Until the ready marker appeared; an early exit or the timeout raise with the output's tail."""
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not become ready in {timeout:.0f} s:\n{self.tail()}")


def wait_http(child: Child, url: str, timeout: float) -> None:
    """Until ``url`` answers 200 (e.g. /healthz or /readyz) while ``child`` is alive."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.tail()}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready in {timeout:.0f} s ({last}):\n{child.tail()}")
        time.sleep(0.2)


def start_api(
    env: Mapping[str, str], host: str = "127.0.0.1", port: int | None = None, workers: int = 1, echo: Echo | None = None
) -> tuple[Child, str]:
    """``chexcurate serve`` as a child; returns it and its base URL (not yet waited for)."""
    port = port or free_port(host)
    child = Child.start(
        "api", ["serve", "--host", host, "--port", str(port), "--workers", str(workers)], env, echo=echo
    )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return child, f"http://{shown}:{port}"


def start_worker(
    env: Mapping[str, str],
    queues: str = "curation,refresh",
    name: str = "worker",
    pool: str = "solo",
    loglevel: str = "info",
    echo: Echo | None = None,
) -> Child:
    """``chexcurate worker`` as a child; its ``ready`` event fires when Celery is ready to consume."""
    args = ["worker", "--queues", queues, "--pool", pool, "--loglevel", loglevel, "--hostname", f"{name}@%h"]
    return Child.start(name, args, env, ready_marker=WORKER_READY, echo=echo)


@contextlib.contextmanager
def api_server(
    env: Mapping[str, str], workers: int = 1, timeout: float = 30.0, ready_path: str = "/healthz"
) -> Iterator[str]:
    """The API with ``env`` added on a free loopback port; yields its base URL once ``ready_path`` answers."""
    child, url = start_api(env, workers=workers)
    try:
        wait_http(child, url + ready_path, timeout)
        yield url
    finally:
        child.stop(grace=10)


@contextlib.contextmanager
def celery_worker(
    env: Mapping[str, str], timeout: float = 60.0, queues: str = "curation,refresh", name: str = "worker"
) -> Iterator[subprocess.Popen[str]]:
    """A Celery worker with ``env`` added; yields its process once it reports ready."""
    child = start_worker(env, queues=queues, name=name)
    try:
        child.wait_ready(timeout)
        yield child.proc
    finally:
        child.stop(grace=15)


@dataclass(frozen=True)
class StackSpec:
    """What ``chexcurate up`` starts: one API and workers on the queues given (one solo worker each)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_workers: int = 1
    #: one entry per worker process: the queues it consumes
    workers: tuple[str, ...] = ("curation,refresh",)
    migrate: bool = True
    loglevel: str = "info"


@dataclass
class Stack:
    url: str
    children: list[Child]

    def stop(self) -> None:
        """The API first (no new requests), then all workers at once (each finishes its task in hand)."""
        api, workers = self.children[:1], self.children[1:]
        for child in api:
            child.stop(grace=10)
        for child in workers:
            child.terminate()
        for child in workers:
            child.stop()


@contextlib.contextmanager
def stack(spec: StackSpec, env: Mapping[str, str], timeout: float = 90.0, echo: Echo | None = None) -> Iterator[Stack]:
    """Migrate, start the API and the workers, wait for /readyz and every worker; stop them all on exit."""
    database_url = env.get("CHEX_DATABASE_URL") or os.environ.get("CHEX_DATABASE_URL")
    if spec.workers and not (env.get("CHEX_BROKER_URL") or os.environ.get("CHEX_BROKER_URL")):
        raise ValueError("workers need CHEX_BROKER_URL (e.g. redis://127.0.0.1:6379/0); or start none")
    if spec.migrate:
        from .config import Settings
        from .migrate import upgrade

        upgrade(database_url or Settings().database_url)
    children: list[Child] = []
    try:
        api, url = start_api(env, spec.host, spec.port, spec.api_workers, echo=echo)
        children.append(api)
        for i, queues in enumerate(spec.workers, start=1):
            children.append(start_worker(env, queues, f"worker{i}", loglevel=spec.loglevel, echo=echo))
        # /readyz wants a live worker when there is a broker: with none started, the API being up is all there is
        wait_http(api, url + ("/readyz" if spec.workers else "/healthz"), timeout)
        for child in children[1:]:
            child.wait_ready(timeout)
        yield Stack(url, children)
    finally:
        Stack("", children).stop()


def run_forever(running: Stack, poll: float = 0.5) -> int:
    """Until SIGINT/SIGTERM/SIGHUP (then 0) or until a child exits by itself (then 1); the caller stops them."""
    stop = threading.Event()
    got: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        got.append(signum)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while not stop.wait(poll):
            for child in running.children:
                if not child.alive():
                    print(f"{child.name} exited with {child.proc.returncode}; stopping the stack", file=sys.stderr)
                    return 1
        print(f"got {signal.Signals(got[0]).name}; stopping the stack", file=sys.stderr)
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
