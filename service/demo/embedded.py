"""``chexcurate serve`` on a fresh SQLite file with tasks in-process, as its own process (the embedded default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..launcher import Child, start_api, wait_http
from .admin_client import AdminApi


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
        from ..migrate import upgrade

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
        from ..auth import create_token
        from ..db import make_engine, session_factory

        engine = make_engine(self.database_url)
        try:
            with session_factory(engine)() as session:
                return create_token(session, name, role, list(runs) if runs else None)
        finally:
            engine.dispose()

    def admin(self) -> AdminApi:
        return AdminApi(self.url, self.admin_token)
