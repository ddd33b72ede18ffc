"""Engine and sessions. Postgres through psycopg 3 in production and tests, SQLite for the embedded default."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

#: ids bound per statement when a list of ids is sent in chunks (SQLite bounds the parameters of one statement)
IDS_PER_STATEMENT = 500


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here, not the psycopg2 SQLAlchemy would pick."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    # connect_timeout: a host that drops packets must give a 503 in seconds, not hang the request
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args={"connect_timeout": 5})


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def engine_of(sessions: sessionmaker[Session]) -> Engine:
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the session factory must be bound to an Engine")
    return bind


def is_postgres(bind: Session | Connection | Engine) -> bool:
    """Postgres (binary COPY, row and advisory locks, JSONB), or else SQLite, the embedded default."""
    if isinstance(bind, Session):
        return is_postgres(bind.get_bind())
    return bind.dialect.name == "postgresql"


def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session per request: committed by the handler, rolled back on any error."""
    with factory() as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
