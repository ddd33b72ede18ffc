"""Administration: the database schema, and API bearer tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import console, fail


def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply the migrations to CHEX_DATABASE_URL."""
    from ..config import get_settings
    from ..migrate import upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    console.print(f"database at {url.split('@')[-1]} is at revision {revision}")


def token_create(
    role: Annotated[str, typer.Option(help="admin or trainer")],
    name: Annotated[str, typer.Option(help="who or what holds it")] = "cli",
    run: Annotated[list[int] | None, typer.Option(help="run id a trainer token may use (repeatable)")] = None,
) -> None:
    """Create a token and print it once; only its hash is stored."""
    typer.echo(new_token(role, name, run))


def new_token(role: str, name: str, runs: list[int] | None) -> str:
    from ..auth import create_token
    from ..config import get_settings
    from ..db import make_engine, session_factory

    engine = make_engine(get_settings().database_url)
    try:
        with session_factory(engine)() as session:
            return create_token(session, name, role, runs)
    except ValueError as exc:
        raise fail(str(exc)) from exc
    finally:
        engine.dispose()
