"""``GET /v1/audit``: the audit trail, newest last (viewer role). Query: ``since`` (an age
such as ``24h`` or an ISO time), ``actor``, ``action`` (``run`` matches every ``run.…``),
``limit`` (1-1000, default 200). There is no route that edits or deletes an entry."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modfactory.roles import Action
from modfactory.store.audit import AuditEntry, parse_since
from modfactory.web.errors import ApiError
from modfactory.web.identity import require


async def read_audit(request: Request, **defaults: str) -> list[AuditEntry]:
    """The entries the query asks for (422 naming a malformed parameter)."""
    query = {**defaults, **request.query_params}
    since = None
    if query.get("since"):
        try:
            since = parse_since(query["since"])
        except ValueError as exc:
            raise ApiError(422, f"query parameter 'since': {exc}") from None
    limit = query.get("limit", "200")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise ApiError(422, f"query parameter 'limit': {limit[:20]!r} is not a number in 1-1000")
    return await request.app.state.producer.audit.read(
        request.app.state.artifacts,
        since=since,
        actor=(query.get("actor") or "").strip().lower() or None,
        action=(query.get("action") or "").strip() or None,
        limit=int(limit),
    )


async def audit(request: Request) -> Response:
    """``GET /v1/audit``."""
    await require(request, Action.READ, signed=True)
    entries = await read_audit(request)
    return JSONResponse([e.model_dump(mode="json") for e in entries])
