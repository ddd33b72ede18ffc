"""Running the service: the API, a Celery worker, or the whole compose topology as local processes."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from rich.markup import escape

from .admin import new_token
from .common import console, fail


def serve(
    host: Annotated[str, typer.Option(help="interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP API (settings from CHEX_* environment variables)."""
    import uvicorn

    uvicorn.run("service.api.app:create_app", factory=True, host=host, port=port, workers=workers)


def worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues: curation (batches), refresh (heavy)")] = (
        "curation,refresh"
    ),
    pool: Annotated[str, typer.Option(help="solo (one process per GPU), threads or prefork")] = "solo",
    concurrency: Annotated[int, typer.Option(min=1)] = 1,
    loglevel: Annotated[str, typer.Option()] = "info",
    hostname: Annotated[str | None, typer.Option(help="Celery node name, e.g. gpu0@%h (default celery@%h)")] = None,
) -> None:
    """Run a Celery worker (needs CHEX_BROKER_URL). On a GPU node run one solo worker per device."""
    from ..config import get_settings

    if not get_settings().broker_url:
        raise fail("CHEX_BROKER_URL is not set: without a broker the API runs tasks itself, no worker needed")
    from celery.signals import worker_ready

    from workers.celery_app import app as celery_app

    from ..launcher import WORKER_READY

    @worker_ready.connect(weak=False)
    def announce(**_: Any) -> None:
        os.write(1, f"{WORKER_READY}\n".encode())  # what launchers wait for: fd 1, past Celery's stdout logger

    celery_app.worker_main(
        [
            "worker",
            "-Q",
            queues,
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            *(["--hostname", hostname] if hostname else []),
        ]
    )


def up(
    host: Annotated[str, typer.Option(help="interface the API binds")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    api_workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes")] = 1,
    workers: Annotated[int, typer.Option(min=0, help="Celery workers on the curation and refresh queues")] = 1,
    refresh_workers: Annotated[int, typer.Option(min=0, help="extra Celery workers on the refresh queue only")] = 0,
    migrate: Annotated[bool, typer.Option(help="apply the Alembic migrations first")] = True,
    admin_token: Annotated[bool, typer.Option(help="create an admin token and print it once")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="seconds to wait for /readyz and the workers")] = 90.0,
    loglevel: Annotated[str, typer.Option()] = "info",
) -> None:
    """The docker-compose topology as local processes: migrate, API, Celery workers; Ctrl-C stops them all.

    Configuration comes from the CHEX_* environment (or .env), as for every other command: CHEX_DATABASE_URL
    (Postgres for more than one process) and CHEX_BROKER_URL (Redis) for the workers.
    """
    from ..launcher import StackSpec, run_forever, stack

    spec = StackSpec(
        host=host,
        port=port,
        api_workers=api_workers,
        workers=("curation,refresh",) * workers + ("refresh",) * refresh_workers,
        migrate=migrate,
        loglevel=loglevel,
    )

    def echo(name: str, line: str) -> None:
        console.print(f"[dim]{name:>8} |[/] {escape(line)}", highlight=False, soft_wrap=True)

    try:
        with stack(spec, {}, timeout=timeout, echo=echo) as running:
            console.print(f"API      {running.url}  (OpenAPI {running.url}/docs, metrics {running.url}/metrics)")
            for child in running.children[1:]:
                console.print(f"{child.name:<8} pid {child.pid}")
            if admin_token:
                typer.echo(new_token("admin", "chexcurate up", None))
            console.print("ready; Ctrl-C stops the stack")
            code = run_forever(running)
    except (ValueError, RuntimeError, TimeoutError) as exc:
        raise fail(escape(str(exc))) from exc
    raise typer.Exit(code)
