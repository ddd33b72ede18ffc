"""Real processes for integration tests: the launcher's building blocks under the names the tests use, and a
redis-server of a test's own."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from service.launcher import api_server as uvicorn_server
from service.launcher import celery_worker, free_port

__all__ = ["PrivateRedis", "celery_worker", "free_port", "private_redis", "uvicorn_server"]


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
