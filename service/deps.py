"""FastAPI dependencies: settings, a database session per request, the caller's token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from sqlalchemy.orm import Session

from .auth import authenticate, require_admin, require_run_access
from .config import Settings
from .db import session_scope
from .models import Token


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    yield from session_scope(request.app.state.sessions)


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def current_token(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Token:
    return authenticate(session, authorization)


def admin_token(token: Annotated[Token, Depends(current_token)]) -> Token:
    return require_admin(token)


def run_token(run_id: Annotated[int, Path(ge=1)], token: Annotated[Token, Depends(current_token)]) -> Token:
    return require_run_access(token, run_id)


AdminDep = Annotated[Token, Depends(admin_token)]
RunAccessDep = Annotated[Token, Depends(run_token)]
