"""Real processes for integration tests: the launcher's building blocks under the names the tests use, and a
redis-server and a Postgres cluster of a test's own (which a test may kill)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis

from service.launcher import api_server as uvicorn_server
from service.launcher import celery_worker, free_port

__all__ = [
    "PrivatePostgres",
    "PrivateRedis",
    "celery_worker",
    "free_port",
    "private_redis",
    "private_postgres",
    "uvicorn_server",
]


class PrivateRedis:
    """A redis-server of the test's own on a free port: restarting it leaves the shared server alone, and no other
    test run on the same host (another checkout's suite, using the same database numbers) shares its queues."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*args, "--dir", str(self.dir)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self._answers():
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A started ``PrivateRedis`` for the block; yields its URL."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (read from /proc: no psutil in the test environment)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # the command name (2nd field) is in parentheses and may hold spaces: the ppid follows the last ')'
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _exists(pid: int) -> bool:
    """Whether ``pid`` is still in the process table, a zombie included: Postgres refuses to start while the pid
    in its lock file still exists, and the postmaster's orphaned zombie lasts until init reaps it."""
    return Path(f"/proc/{pid}").exists()


class PrivatePostgres:
    """A throwaway Postgres cluster of the test's own (``initdb`` into a temp folder, a free port): a test may
    kill -9 its postmaster and restart it, which the shared server must never see. Run as the ``postgres`` user
    when the tests run as root (initdb refuses root). ``fsync`` is off: the drills crash the server process,
    not the machine, and what a commit wrote to the kernel survives a process crash."""

    def __init__(self, bin_dir: Path = PG_BIN) -> None:
        self.bin = bin_dir
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # not under pytest's tmp_path: its folders are private to root, and the server runs as postgres
        self.dir = Path(tempfile.mkdtemp(prefix="chex-pg-"))
        self.data = self.dir / "data"
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=120)
        if done.returncode:
            log = self.dir / "log"
            raise RuntimeError(f"{args[0]} failed: {done.stderr}{log.read_text()[-2000:] if log.exists() else ''}")

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N", "-E", "UTF8")

    def start(self) -> None:
        """Start (after a crash: recover) the cluster; returns once it accepts connections."""
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=32MB"
        pg_ctl = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60"]
        self._run(*pg_ctl, "-o", options, "start")

    @property
    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def crash(self) -> None:
        """kill -9 the postmaster; its backends notice and exit (any that linger are killed too, as the machine's
        own crash would), so the next ``start`` runs crash recovery."""
        pid = self.postmaster
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_exists(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while _exists(pid) or any(_exists(c) for c in children):
            assert time.monotonic() < deadline, "the killed postmaster or its backends did not go away"
            time.sleep(0.05)

    def database(self, name: str) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.admin_url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started ``PrivatePostgres`` for the block, removed afterwards."""
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
