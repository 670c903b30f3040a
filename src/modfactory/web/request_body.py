"""A request's body, read with a size limit: refused (413) as soon as it is too large,
whether it says so (Content-Length) or not (a stream that goes on)."""

from __future__ import annotations

from starlette.requests import Request

from modfactory.web.errors import ApiError


async def read_body(request: Request, limit: int, which: str) -> bytes:
    """The raw body, refused (413) beyond ``limit`` bytes (MODFACTORY_<which>_MAX_BODY) as
    soon as it is."""
    too_large = ApiError(413, f"body larger than {limit} bytes (MODFACTORY_{which}_MAX_BODY)")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
