"""Signed-in browsers: the session cookie, the dependencies that require it, CSRF, templates and headers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from ...errors import ApiError
from ...explorer.sessions import csrf_matches, find_session
from ...models import UiSession
from ..deps import SessionDep

HERE = Path(__file__).parent
COOKIE = "chexui"
#: the login form's CSRF token (double submit: the form's hidden field must equal this cookie)
LOGIN_COOKIE = "chexui_login"
#: every asset comes from this service; style attributes are not used, so no inline style or script is allowed
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)

# autoescape on for every template: report text and labels are data, never markup
templates = Jinja2Templates(env=jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True))


class LoginRequired(Exception):
    """A page asked for without a live session: the browser is sent to the login form."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def install_login_redirect(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def _to_login(_: Request, exc: LoginRequired) -> RedirectResponse:
        return RedirectResponse(f"/ui/login?next={quote(exc.next_url, safe='/')}", status_code=303)


def _live(request: Request, session: SessionDep) -> UiSession | None:
    return find_session(session, request.cookies.get(COOKIE))


def page_session(request: Request, session: SessionDep) -> UiSession:
    """The browser's session for a page; without one, a redirect to the login form."""
    ui = _live(request, session)
    if ui is None:
        raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return ui


def data_session(request: Request, session: SessionDep) -> UiSession:
    """The browser's session for a JSON feed or an image; without one, 401."""
    ui = _live(request, session)
    if ui is None:
        raise ApiError(401, "unauthenticated", "sign in at /ui/login with an admin token first")
    return ui


PageSession = Annotated[UiSession, Depends(page_session)]
DataSession = Annotated[UiSession, Depends(data_session)]


def checked_form(ui: PageSession, csrf: Annotated[str, Form()] = "") -> UiSession:
    """A state-changing form of a signed-in browser: its CSRF field must be the session's token (403 if not)."""
    if not csrf_matches(ui, csrf):
        raise ApiError(403, "csrf", "the form's CSRF token is missing or wrong: reload the page and try again")
    return ui


CheckedForm = Annotated[UiSession, Depends(checked_form)]


def secured(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def page(request: Request, name: str, ui: UiSession | None, status_code: int = 200, **context: Any) -> Response:
    """A rendered page with the security headers; ``ui`` gives the logout form its CSRF token."""
    html: HTMLResponse = templates.TemplateResponse(
        request,
        name,
        {"csrf": ui.csrf if ui is not None else "", "signed_in": ui is not None, **context},
        status_code=status_code,
    )
    return secured(html)
