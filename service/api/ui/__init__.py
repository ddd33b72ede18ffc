"""The curation explorer under /ui: server-rendered pages, their JSON feeds and thumbnails (docs/EXPLORER.md)."""

from fastapi import APIRouter, FastAPI

from . import data, login, pages
from .session import install_login_redirect, static_files

router = APIRouter()
router.include_router(login.router)
router.include_router(pages.router)
router.include_router(data.router)


def install_ui(app: FastAPI) -> None:
    """The pages' routes, their assets (served from the package: nothing comes from a CDN) and the redirect of a
    browser that is not signed in to the login form."""
    app.include_router(router)
    app.mount("/ui/static", static_files(), name="ui-static")
    install_login_redirect(app)
