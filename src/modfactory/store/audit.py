"""The audit trail: who changed what, when, from where — one log every change writes to.

An entry is appended to a Redis stream (``<prefix>:audit``) and compacted, by the
reconciler, into the artifact store as one JSONL object per UTC day (``audit/<day>.jsonl``,
written whole, merged by entry id: a compaction cut short is done again, never twice), so
the trail outlives Redis; day objects older than MODFACTORY_AUDIT_RETENTION days are
deleted. Nothing outside this module edits or deletes an entry: the API and the CLI only
read it. Reads merge the objects and the stream.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import secrets
import socket
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from modfactory.artifacts import ArtifactError, ArtifactNotFound, ArtifactStore, audit_key
from modfactory.redis_replication import NotReplicated, note_history, replicated

log = logging.getLogger("modfactory.audit")
LOCK_SECONDS = 300


class AuditAction(StrEnum):
    RUN_START = "run.start"
    RUN_CANCEL = "run.cancel"
    RUN_RETRY = "run.retry"  # a stage queued again
    RUN_APPROVE = "run.approve"  # a quoted cost approved
    SCORE_START = "score.start"  # a scoring job over an archive
    SCORE_CANCEL = "score.cancel"
    SCORE_APPROVE = "score.approve"  # a scoring job's quoted cost approved
    MODEL_PROMOTE = "model.promote"
    MODEL_ROLLBACK = "model.rollback"
    CORRECTION = "correction.add"
    CORRECTIONS_IMPORT = "correction.import"
    REVIEW_ANSWER = "review.answer"
    ADJUDICATION = "review.adjudicate"
    USER_ADD = "user.add"
    USER_ROLE = "user.set-role"
    USER_REVOKE = "user.revoke"
    SIGN_IN = "sign-in"
    SIGN_IN_REFUSED = "sign-in.refused"


class Actor(BaseModel):
    """Who does something: an account, a service identity, a named trigger, the CLI's
    ``cli:<user>@<host>``; with the role, client address and request id when known."""

    model_config = ConfigDict(frozen=True)

    name: str
    role: str | None = None
    client: str | None = None
    request_id: str | None = None


def process_actor(kind: str = "cli") -> Actor:
    """This process's user: ``cli:<user>@<host>`` (a command run by hand)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = "unknown"
    return Actor(name=f"{kind}:{user}@{socket.gethostname()}")


def trigger(name: str) -> Actor:
    """A named trigger as actor: ``trigger:cron``, ``trigger:corrections``."""
    return Actor(name=f"trigger:{name}")


class AuditEntry(BaseModel):
    id: str = Field(default_factory=lambda: secrets.token_hex(8))
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    actor: str
    role: str | None = None
    action: str
    target: str = ""
    client: str | None = None
    request_id: str | None = None
    detail: str = ""

    @property
    def day(self) -> str:
        return f"{self.at.astimezone(UTC):%Y-%m-%d}"


def _ordered(entries: Iterable[AuditEntry]) -> list[AuditEntry]:
    unique = {e.id: e for e in entries}
    return sorted(unique.values(), key=lambda e: (e.at, e.id))


class AuditLog:
    """Append and read the trail (``compact`` moves it from Redis into the store)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.key = f"{prefix}:audit"

    async def record(
        self, by: Actor, action: AuditAction, target: str = "", detail: str = ""
    ) -> None:
        """Append what ``by`` did. The change it records is done already: if Redis cannot
        take the entry, the entry goes to the log instead of failing the change."""
        entry = AuditEntry(
            actor=by.name,
            role=by.role,
            action=action.value,
            target=target,
            client=by.client,
            request_id=by.request_id,
            detail=detail[:500],
        )
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(self.key, {"entry": entry.model_dump_json()})
                noted = note_history(pipe, self.redis)
                answers = await pipe.execute()
            await replicated(self.redis, "an audit entry", answers[-1] if noted else None)
        except (RedisError, NotReplicated, OSError) as exc:
            log.error("audit entry not stored (%s): %s", exc, entry.model_dump_json())

    async def _stream(self) -> list[tuple[bytes, AuditEntry]]:
        found = await self.redis.xrange(self.key)
        return [(sid, AuditEntry.model_validate_json(f[b"entry"])) for sid, f in found]

    async def read(
        self,
        store: ArtifactStore,
        *,
        since: datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 200,
    ) -> list[AuditEntry]:
        """The newest ``limit`` entries (oldest first) matching every filter given: the
        stream's, then the day objects', newest day first, as far back as needed."""

        def matches(e: AuditEntry) -> bool:
            return (
                (since is None or e.at >= since)
                and (actor is None or e.actor == actor)
                and (action is None or e.action == action or e.action.startswith(action + "."))
            )

        found = [e for _, e in await self._stream() if matches(e)]
        first = f"{since.astimezone(UTC):%Y-%m-%d}" if since else ""
        for day in reversed(await asyncio.to_thread(_days, store)):
            if day < first or (len(found) >= limit and day < min(e.day for e in found)):
                break
            found += [e for e in await asyncio.to_thread(_day_entries, store, day) if matches(e)]
        return _ordered(found)[-limit:]

    async def compact(self, store: ArtifactStore, retention_days: float) -> int:
        """Move the stream's entries into the day objects, then trim the stream up to them;
        delete day objects past retention. One compaction at a time (a lock); returns how
        many entries it moved."""
        lock, token = f"{self.key}-lock", secrets.token_hex(8)
        if not await self.redis.set(lock, token, nx=True, ex=LOCK_SECONDS):
            return 0
        try:
            pending = await self._stream()
            if pending:
                by_day: dict[str, list[AuditEntry]] = {}
                for _, entry in pending:
                    by_day.setdefault(entry.day, []).append(entry)
                for day, entries in by_day.items():
                    await asyncio.to_thread(_merge_day, store, day, entries)
                last = pending[-1][0].decode()
                milliseconds, _, sequence = last.partition("-")
                await self.redis.xtrim(self.key, minid=f"{milliseconds}-{int(sequence) + 1}")
            await asyncio.to_thread(_drop_old_days, store, retention_days)
            return len(pending)
        finally:
            if await self.redis.get(lock) == token.encode():
                await self.redis.delete(lock)


def _day_entries(store: ArtifactStore, day: str) -> list[AuditEntry]:
    try:
        text = store.load_text(audit_key(day))
    except ArtifactNotFound:
        return []
    return [AuditEntry.model_validate_json(line) for line in text.splitlines() if line.strip()]


def _merge_day(store: ArtifactStore, day: str, entries: list[AuditEntry]) -> None:
    merged = _ordered([*_day_entries(store, day), *entries])
    store.save_text(audit_key(day), "".join(e.model_dump_json() + "\n" for e in merged))


def _days(store: ArtifactStore) -> list[str]:
    return [k.rsplit("/", 1)[-1].removesuffix(".jsonl") for k in store.list(audit_key())]


def _drop_old_days(store: ArtifactStore, retention_days: float) -> None:
    oldest = f"{datetime.now(UTC) - timedelta(days=retention_days):%Y-%m-%d}"
    for day in _days(store):
        if day < oldest:
            try:
                store.delete(audit_key(day))
            except ArtifactError as exc:
                log.warning("audit day %s past retention not deleted: %s", day, exc)


_RELATIVE = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``value`` as a moment: an ISO date or time (UTC unless it says), or an age such as
    ``30m``, ``12h``, ``7d``; ValueError naming both forms otherwise."""
    text = value.strip().lower()
    number, unit = text.rstrip("abcdefghijklmnopqrstuvwxyz"), text.lstrip("0123456789.")
    if number and unit in _RELATIVE:
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=float(number) * _RELATIVE[unit])
        except (ValueError, OverflowError):
            pass
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{value[:40]!r} is neither an age (30m, 12h, 7d) nor an ISO date or time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
