"""Request bodies read in chunks with a hard size limit: an oversized body is refused before it is stored."""

from __future__ import annotations

import tempfile
from typing import IO

from fastapi import Request

from .errors import ApiError


async def spool_limited(request: Request, limit: int) -> IO[bytes]:
    """The body in a temporary file (memory up to 256 MiB, then disk), rewound."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"body of {declared} bytes exceeds the limit of {limit} bytes")
    spool = tempfile.SpooledTemporaryFile(max_size=256 << 20)  # noqa: SIM115 - handed to the caller, who closes it
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "body_too_large", f"body exceeds the limit of {limit} bytes")
            spool.write(chunk)
        if not size:
            raise ApiError(400, "empty_body", "the request body is empty")
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return spool


async def read_limited(request: Request, limit: int) -> bytes:
    spool = await spool_limited(request, limit)
    with spool:
        return spool.read()
