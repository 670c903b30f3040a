"""The people pages of ``/ui``: the audit trail (viewer and up: filter by actor and
action) and the accounts (admin: add one — its token shown on that page only —, change a
role, revoke). Every change made here is in the audit trail under the signed-in name."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from modfactory.producer import Producer
from modfactory.roles import Action, Role
from modfactory.store.accounts import AccountError, AccountStore
from modfactory.store.audit import AuditAction
from modfactory.web.audit_api import read_audit
from modfactory.web.errors import ApiError
from modfactory.web.identity import actor_of
from modfactory.web.ui.pages import (
    checked_form,
    guarded,
    message,
    page_headers,
    render,
    signed_in,
)
from modfactory.web.ui.session import Session


@guarded
async def audit_page(request: Request) -> Response:
    """``GET /ui/audit?actor=…&action=…&since=…``: the newest entries first."""
    session = await signed_in(request)
    try:
        entries = await read_audit(request)
    except ApiError as exc:
        return message(request, session, exc.status, "Not a filter", exc.message)
    query = request.query_params
    return render(
        request,
        "audit.html",
        session=session,
        title="Audit",
        page="audit",
        entries=list(reversed(entries)),
        actor=query.get("actor", "")[:200],
        action=query.get("action", "")[:100],
        since=query.get("since", "")[:40],
        actions=[a.value for a in AuditAction],
    )


def _accounts(request: Request) -> AccountStore:
    producer: Producer = request.app.state.producer
    return AccountStore(producer.redis, producer.settings.queue_name)


@guarded
async def users_page(request: Request) -> Response:
    """``GET /ui/users``: every account (never a token)."""
    return await _users(request, await signed_in(request, Action.MANAGE_USERS))


async def _users(request: Request, session: Session, token: str = "", added: str = "") -> Response:
    """The accounts page; ``token``: the one just made for ``added``, shown this once."""
    return render(
        request,
        "users.html",
        session=session,
        title="Users",
        page="users",
        accounts=await _accounts(request).all(),
        roles=[r.value for r in Role],
        token=token,
        added=added,
    )


@guarded
async def change_users(request: Request) -> Response:
    """``POST /ui/users`` (add), ``/ui/users/{name}/role`` or ``…/revoke``."""
    session = await signed_in(request, Action.MANAGE_USERS)
    form = await checked_form(request, session, session.csrf)
    producer: Producer = request.app.state.producer
    by, accounts = actor_of(request, session.caller), _accounts(request)
    what = request.path_params.get("what", "add")
    try:
        if what == "add":
            role = Role(form.get("role", ""))
            account, token = await accounts.add(form.get("name", ""), role)
            await producer.record(AuditAction.USER_ADD, account.name, f"role {role}", by=by)
            await request.app.state.accounts.reload()
            return await _users(request, session, token, account.name)
        name = request.path_params["name"]
        if what == "role":
            role = Role(form.get("role", ""))
            account = await accounts.set_role(name, role)
            await producer.record(AuditAction.USER_ROLE, account.name, f"role {role}", by=by)
        elif what == "revoke":
            account = await accounts.revoke(name)
            await producer.record(AuditAction.USER_REVOKE, account.name, by=by)
        else:
            return message(request, session, 404, "No such change", f"{what[:40]!r}")
    except (AccountError, ValueError) as exc:
        return message(request, session, 422, "Not done", str(exc))
    await request.app.state.accounts.reload()
    return RedirectResponse("/ui/users", 303, headers=page_headers())
