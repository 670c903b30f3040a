"""How ``modfactory serve`` refuses: an ``ApiError`` becomes ``{"error": "<message>"}``
with its status, as does every other failure (Redis away: 503; anything unexpected: 500
with the details in the server log, never in the answer)."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modfactory.redis_replication import NotReplicated

log = logging.getLogger("modfactory.web")


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def field_error(exc: ValidationError, prefix: str = "") -> ApiError:
    """422 naming the first field at fault, e.g. ``body field 'recipe.n_train': ...``."""
    first = exc.errors()[0]
    field = prefix + ".".join(str(part) for part in first["loc"])
    return ApiError(422, f"body field {field!r}: {first['msg']}", field=field)


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": 'Bearer, HMAC realm="modfactory"'} if exc.status == 401 else {}
    if "retry_after" in exc.extra:
        headers["Retry-After"] = str(exc.extra["retry_after"])
    if exc.status == 401:
        log.warning("refused %s %s: %s", request.method, request.url.path, exc.message)
    return JSONResponse({"error": exc.message, **exc.extra}, exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}", 405: f"{request.method} not allowed"}
    return JSONResponse(
        {"error": message.get(exc.status_code, exc.detail)},
        exc.status_code,
        headers=exc.headers,
    )


async def redis_down(request: Request, exc: Exception) -> Response:
    """503, to be tried again: Redis unreachable, or a write it took not yet replicated
    (MODFACTORY_REDIS_MIN_REPLICAS) — either way nothing was acknowledged."""
    if isinstance(exc, NotReplicated):
        log.warning("not acknowledged: %s", exc)
        return JSONResponse({"error": str(exc)}, 503, headers={"Retry-After": "1"})
    log.warning("Redis unreachable: %s", type(exc).__name__)
    return JSONResponse(
        {"error": "Redis is unreachable (MODFACTORY_REDIS_URL)"}, 503, headers={"Retry-After": "1"}
    )


async def unexpected(request: Request, exc: Exception) -> Response:
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": "internal error; the server log has the details"}, 500)
