"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from ..config import Settings, get_settings
from ..db import make_engine, session_factory
from ..dispatch import make_dispatcher
from . import router
from .body import BodyLimit
from .errors import install_error_handlers
from .metrics import install_metrics
from .ui import install_ui


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="chexcurate",
        version="1",
        description="CheXficient data curation for chest X-ray vision-language pretraining.",
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.database_url)
    app.state.sessions = session_factory(app.state.engine)
    app.state.dispatcher = make_dispatcher(settings, app.state.sessions)
    install_error_handlers(app, settings.retry_after_seconds)
    app.include_router(router)
    install_ui(app)
    # added before the metrics middleware, so it runs inside it and refused bodies are counted too
    app.add_middleware(BodyLimit, limits=settings.body_limits())
    install_metrics(app, app.state.sessions)
    return app
