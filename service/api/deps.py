"""FastAPI dependencies: settings, a database session per request, the caller's token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from sqlalchemy.orm import Session

from ..auth import authenticate, require_admin, require_run_access
from ..config import Settings
from ..db import session_scope
from ..dispatch import Dispatcher
from ..limits import BIGINT_MAX, INT_MAX
from ..models import Token


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_dispatcher(request: Request) -> Dispatcher:
    return request.app.state.dispatcher


def get_session(request: Request) -> Iterator[Session]:
    yield from session_scope(request.app.state.sessions)


#: path ids are bounded to what the database columns hold, so an absurd id is a 422, not a driver error
DatasetId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="the dataset's id")]
RunId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="the run's id")]
SetId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="the embedding set's id")]
SampleId = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="the sample's id")]
StepNo = Annotated[int, Path(ge=1, le=INT_MAX, description="the manifest's issue number within the run")]

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


def current_token(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Token:
    return authenticate(session, authorization)


def admin_token(token: Annotated[Token, Depends(current_token)]) -> Token:
    return require_admin(token)


def run_token(run_id: RunId, token: Annotated[Token, Depends(current_token)]) -> Token:
    return require_run_access(token, run_id)


AdminDep = Annotated[Token, Depends(admin_token)]
RunAccessDep = Annotated[Token, Depends(run_token)]
