"""Alembic environment: the URL comes from the service Settings (or the caller's config), models give metadata."""

from __future__ import annotations

from alembic import context

from service.config import get_settings
from service.db import make_engine, normalise_url
from service.models import Base

config = context.config
target_metadata = Base.metadata
url = normalise_url(config.get_main_option("sqlalchemy.url") or get_settings().database_url)


def run_offline() -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        # batch mode lets ALTERs work on SQLite (the embedded default) as well as Postgres
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
