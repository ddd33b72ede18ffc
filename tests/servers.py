"""Real processes for integration tests: the launcher's building blocks under the names the tests use, and a
redis-server of a test's own."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from service.launcher import api_server as uvicorn_server
from service.launcher import celery_worker, free_port

__all__ = ["PrivateRedis", "celery_worker", "free_port", "uvicorn_server", "wait_for"]


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


class PrivateRedis:
    """A redis-server of the test's own on a free port, so restarting it leaves the shared server (and any
    other test run using it) alone."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*args, "--dir", str(self.dir)], stdout=subprocess.DEVNULL)
        wait_for(self._answers, timeout=20)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url).ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
