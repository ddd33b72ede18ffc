"""Signing in with an admin token (a form), and out."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ...errors import ApiError
from ...explorer.sessions import SESSION_HOURS, close_session, open_session
from ..deps import SessionDep
from .session import COOKIE, LOGIN_COOKIE, CheckedForm, page, secured

router = APIRouter(prefix="/ui", include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a path of the explorer itself: never another site (an open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/runs"


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _login_form(request: Request, next_url: str, problem: str | None = None, status_code: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = page(
        request, "login.html", None, status_code=status_code, login_csrf=token, next_url=next_url, problem=problem
    )
    _cookie(response, request, LOGIN_COOKIE, token, 3600)
    return response


@router.get("")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/runs", status_code=303)


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002 - the query's name
    return _login_form(request, _safe_next(next))


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    token: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui/runs",  # noqa: A002
) -> Response:
    sent = request.cookies.get(LOGIN_COOKIE, "")
    if not sent or not secrets.compare_digest(sent, csrf):
        return _login_form(request, _safe_next(next), "The form expired; please sign in again.", 403)
    if not token.strip():
        return _login_form(request, _safe_next(next), "Enter an admin token.", 422)
    try:
        secret, _ = open_session(session, token)
    except ApiError as exc:
        return _login_form(request, _safe_next(next), exc.detail, exc.status)
    response = secured(RedirectResponse(_safe_next(next), status_code=303))
    _cookie(response, request, COOKIE, secret, SESSION_HOURS * 3600)
    response.delete_cookie(LOGIN_COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, _: CheckedForm) -> Response:
    close_session(session, request.cookies.get(COOKIE, ""))
    response = secured(RedirectResponse("/ui/login", status_code=303))
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    return response
