"""Browser sessions of the explorer: opened with an admin token, kept server-side, closed by logout or expiry."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..auth import hash_token
from ..errors import ApiError
from ..models import Token, UiSession

#: how long a browser stays signed in without signing in again
SESSION_HOURS = 12


def open_session(session: Session, token: str) -> tuple[str, str]:
    """``(cookie secret, csrf token)`` for a browser signing in with ``token``; 401/403 unless it is a live admin
    token. Expired sessions of every browser are purged on the way."""
    row = session.scalar(select(Token).where(Token.token_hash == hash_token(token.strip())))
    if row is None or row.revoked:
        raise ApiError(401, "unauthenticated", "unknown or revoked token")
    if row.role != "admin":
        raise ApiError(403, "forbidden", f"the explorer needs an admin token; this token's role is {row.role}")
    now = datetime.now(UTC)
    session.execute(delete(UiSession).where(UiSession.expires_at < now))
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        UiSession(
            id=hash_token(secret),
            token_id=row.id,
            csrf=csrf,
            created_at=now,
            expires_at=now + timedelta(hours=SESSION_HOURS),
        )
    )
    session.commit()
    return secret, csrf


def find_session(session: Session, secret: str | None) -> UiSession | None:
    """The live session of this cookie secret: not expired, and its token still an unrevoked admin token."""
    if not secret:
        return None
    found = session.execute(
        select(UiSession, Token).join(Token, Token.id == UiSession.token_id).where(UiSession.id == hash_token(secret))
    ).first()
    if found is None:
        return None
    ui, token = found
    expires = ui.expires_at if ui.expires_at.tzinfo else ui.expires_at.replace(tzinfo=UTC)  # SQLite drops the zone
    if token.revoked or token.role != "admin" or expires < datetime.now(UTC):
        return None
    return ui


def close_session(session: Session, secret: str) -> None:
    session.execute(delete(UiSession).where(UiSession.id == hash_token(secret)))
    session.commit()


def csrf_matches(ui: UiSession, sent: str | None) -> bool:
    return bool(sent) and secrets.compare_digest(ui.csrf, sent or "")
