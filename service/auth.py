"""Bearer tokens: random secrets handed out once, stored as SHA-256; roles ``admin`` and ``trainer``."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import ApiError
from .models import Token

ROLES = ("admin", "trainer")


def hash_token(token: str) -> str:
    # Tokens are 256-bit random strings, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, role: str, run_ids: list[int] | None = None) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if role == "trainer" and not run_ids:
        raise ValueError("a trainer token needs at least one run id in its scope")
    token = "chx_" + secrets.token_urlsafe(32)
    session.add(Token(name=name, token_hash=hash_token(token), role=role, run_ids=list(run_ids or [])))
    session.commit()
    return token


def authenticate(session: Session, authorization: str | None) -> Token:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise ApiError(401, "unauthenticated", "missing bearer token (Authorization: Bearer <token>)")
    token = session.scalar(select(Token).where(Token.token_hash == hash_token(authorization[7:].strip())))
    if token is None or token.revoked:
        raise ApiError(401, "unauthenticated", "unknown or revoked token")
    return token


def require_admin(token: Token) -> Token:
    if token.role != "admin":
        raise ApiError(403, "forbidden", f"this needs an admin token; this token's role is {token.role}")
    return token


def require_run_access(token: Token, run_id: int) -> Token:
    if token.role == "admin" or run_id in token.run_ids:
        return token
    raise ApiError(403, "forbidden", f"this token is not scoped to run {run_id}")
