"""``modfactory audit``: the audit trail — who changed what, when, from where — read from
Redis and the artifact store alike (its heavy imports only when used)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from modfactory.cli.app import CliError, DataDirOpt, JsonOpt, app, load_settings, out, with_producer

if TYPE_CHECKING:
    from modfactory.producer import Producer
    from modfactory.store.audit import AuditEntry


@app.command()
def audit(
    since: Annotated[
        str | None, typer.Option(help="An age (30m, 24h, 7d) or an ISO date or time.")
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Only this actor's entries.")] = None,
    action: Annotated[
        str | None,
        typer.Option(help="Only this action (run.cancel…); a prefix such as run matches all run.*"),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Newest entries shown.")] = 50,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Who started, cancelled, approved, promoted, rolled back, labelled, signed in — newest
    last; kept in Redis, then in the artifact store (MODFACTORY_AUDIT_RETENTION days)."""
    from modfactory.artifacts import ArtifactStore
    from modfactory.store.audit import parse_since

    try:
        moment = parse_since(since) if since else None
    except ValueError as exc:
        raise CliError(f"--since: {exc}") from None
    store = ArtifactStore.from_settings(load_settings(data_dir))

    async def read(producer: Producer) -> list[AuditEntry]:
        who = actor.strip().lower() if actor else None
        return await producer.audit.read(store, since=moment, actor=who, action=action, limit=limit)

    entries = with_producer(data_dir, read)
    if as_json:
        out.print_json(json.dumps([e.model_dump(mode="json") for e in entries]))
        return
    if not entries:
        out.print("nothing recorded" + (" that matches" if since or actor or action else ""))
        return
    for e in entries:
        where = f" from {e.client}" if e.client else ""
        detail = f" — {escape(e.detail)}" if e.detail else ""
        out.print(
            f"{e.at:%Y-%m-%d %H:%M:%S} {escape(e.actor)} ({e.role or '-'}) "
            f"{e.action} {escape(e.target)}{detail}{where}",
            highlight=False,
        )
