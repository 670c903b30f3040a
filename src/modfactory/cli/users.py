"""``modfactory users``: accounts and their roles (imported only when used). A token is
printed once, by ``users add``; only its hash is kept."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from modfactory.cli.app import DataDirOpt, JsonOpt, out, users_app, with_producer
from modfactory.roles import Role
from modfactory.store.audit import AuditAction

if TYPE_CHECKING:
    from modfactory.producer import Producer
    from modfactory.store.accounts import Account, AccountStore

NameArg = Annotated[str, typer.Argument(help="The account's name (an e-mail address, say).")]
RoleArg = Annotated[Role, typer.Argument(help="viewer, reviewer, operator or admin.")]


def _accounts(producer: Producer) -> AccountStore:
    from modfactory.store.accounts import AccountStore

    return AccountStore(producer.redis, producer.settings.queue_name)


def _shown(account: Account) -> dict:
    """An account as printed: never its token, nor the token's hash."""
    return account.model_dump(mode="json", exclude={"token_sha256"}) | {
        "state": "active" if account.active else "revoked"
    }


@users_app.command("add")
def add(
    name: NameArg,
    role: Annotated[Role, typer.Option("--role", help="viewer, reviewer, operator or admin.")],
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an account; its token is printed this once (keep it: only its hash is kept)."""

    async def act(producer: Producer) -> tuple[Account, str]:
        account, token = await _accounts(producer).add(name, role)
        await producer.record(AuditAction.USER_ADD, account.name, f"role {role}")
        return account, token

    account, token = with_producer(data_dir, act)
    if as_json:
        out.print_json(json.dumps({"name": account.name, "role": account.role, "token": token}))
        return
    out.print(f"added {escape(account.name)} ({account.role}); the token, shown only now:")
    out.print(token, highlight=False)


@users_app.command("list")
def list_users(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Accounts: name, role, created, last seen, active or revoked (never a token)."""

    async def act(producer: Producer) -> list[Account]:
        return await _accounts(producer).all()

    accounts = with_producer(data_dir, act)
    if as_json:
        out.print_json(json.dumps([_shown(a) for a in accounts]))
        return
    if not accounts:
        out.print("no account yet: `modfactory users add NAME --role ROLE`")
        return
    from rich.table import Table

    table = Table("name", "role", "created", "last seen", "state", box=None)
    for account in accounts:
        shown = _shown(account)
        table.add_row(
            escape(account.name),
            account.role,
            (shown["created_at"] or "")[:19].replace("T", " "),
            (shown["last_seen"] or "never")[:19].replace("T", " "),
            shown["state"],
        )
    out.print(table)


@users_app.command("set-role")
def set_role(
    name: NameArg, role: RoleArg, data_dir: DataDirOpt = None, as_json: JsonOpt = False
) -> None:
    """Give an account another role (its token stays)."""

    async def act(producer: Producer) -> Account:
        account = await _accounts(producer).set_role(name, role)
        await producer.record(AuditAction.USER_ROLE, account.name, f"role {role}")
        return account

    account = with_producer(data_dir, act)
    if as_json:
        out.print_json(json.dumps(_shown(account)))
        return
    out.print(f"{escape(account.name)} is now {account.role}")


@users_app.command("revoke")
def revoke(name: NameArg, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Revoke an account: its token is refused by every `serve` within
    MODFACTORY_SERVE_REFRESH_INTERVAL; the account stays listed, for the record."""

    async def act(producer: Producer) -> Account:
        account = await _accounts(producer).revoke(name)
        await producer.record(AuditAction.USER_REVOKE, account.name)
        return account

    account = with_producer(data_dir, act)
    if as_json:
        out.print_json(json.dumps(_shown(account)))
        return
    out.print(f"revoked {escape(account.name)}: its token no longer works")
