"""Request bodies: every one is bounded before the app reads it (``BodyLimit``), uploads are spooled in chunks.

Streamed upload routes (embeddings, bulk archives, ingest files) are marked with ``streamed_body`` and may take
``max_body_bytes``; every other route parses JSON and may take ``max_json_body_bytes``. The limit is the route's,
known once the request is routed, i.e. when the app first reads the body: a declared Content-Length over it is
refused then, before a byte is read, and a body that streams past it (chunked, or longer than declared) is cut
off there. Either way the answer is 413 ``body_too_large``, whatever the app made of the cut.

Not Starlette's ``RequestBodyLimitMiddleware`` (which FastAPI's ``max_body_size`` uses): its limits are fixed where
routes are declared, while these come from each app's Settings, and its 413 is not this API's JSON error.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import IO, Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ApiError
from ..limits import BodyLimits

F = TypeVar("F", bound=Callable[..., Any])
_STREAMED: set[Callable[..., Any]] = set()


#: OpenAPI for routes whose body is a raw upload (.npy / .npz bytes), which FastAPI cannot infer from the signature
BINARY_BODY: dict[str, Any] = {
    "requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
}


def streamed_body(endpoint: F) -> F:
    """Mark a route that reads a large body itself, chunk by chunk (it gets the upload limit, not the JSON one)."""
    _STREAMED.add(endpoint)
    return endpoint


def too_large(limit: int, declared: int | None = None) -> ApiError:
    size = f"body of {declared} bytes" if declared is not None else "body"
    return ApiError(413, "body_too_large", f"{size} exceeds the limit of {limit} bytes", limit=limit)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """ASGI middleware bounding every request body by the limit of the route it is for."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app, self.limits = app, limits

    def limit_for(self, scope: Scope) -> int:
        endpoint = getattr(scope.get("route"), "endpoint", None) or scope.get("endpoint")
        return self.limits.upload_bytes if endpoint in _STREAMED else self.limits.json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit: int | None = None
        received = 0
        refused: ApiError | None = None
        started = answered = False

        async def counted() -> Message:
            nonlocal limit, received, refused
            if limit is None:  # the first read: the request is routed by now
                limit = self.limit_for(scope)
                declared = _declared_length(scope)
                if declared is not None and declared > limit:
                    refused = too_large(limit, declared)
                    raise refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = too_large(limit)
                    raise refused
            return message

        async def guarded(message: Message) -> None:
            nonlocal started, answered
            if refused is None or started:
                started = started or message["type"] == "http.response.start"
                await send(message)
            elif message["type"] == "http.response.start" and not answered:
                answered = True  # the app answered the cut-off body somehow (e.g. 400 "error parsing the body")
                await self._refuse(refused, scope, receive, send)

        try:
            await self.app(scope, counted, guarded)
        except ApiError:
            if refused is None or started or answered:
                raise
            await self._refuse(refused, scope, receive, send)

    @staticmethod
    async def _refuse(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(error.body(), status_code=error.status, headers={"Connection": "close"})(
            scope, receive, send
        )


async def spool_body(request: Request) -> IO[bytes]:
    """The body in a temporary file (memory up to 256 MiB, then disk), rewound; its size is bounded by BodyLimit."""
    spool = tempfile.SpooledTemporaryFile(max_size=256 << 20)  # noqa: SIM115 - handed to the caller, who closes it
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            spool.write(chunk)
        if not size:
            raise ApiError(400, "empty_body", "the request body is empty")
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


async def read_body(request: Request) -> bytes:
    spool = await spool_body(request)
    with spool:
        return spool.read()
