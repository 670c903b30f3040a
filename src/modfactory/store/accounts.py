"""People with names: one document per account in Redis (``<prefix>:account:<name>``), the
set of names beside it (``<prefix>:accounts``) and, per active token, its hash's pointer to
the name (``<prefix>:account-token:<sha256>``). A token is shown once, when it is made, and
kept only as its SHA-256 (a random 256-bit token needs no slow hash: nothing to guess). A
revoked account stays, for the record, with no token that works; its name may be given
again, with a new token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from modfactory.redis_json import update_document
from modfactory.roles import Role

TOKEN_PREFIX = "mf_"  # an account's token: mf_ and 43 URL-safe characters (256 bits)
SERVICE_NAMES = ("webhook", "review", "serve")  # the settings' tokens: no account's names
_NAME = re.compile(r"[a-z0-9][a-z0-9._@+-]{0,99}")


class AccountError(ValueError):
    """An account cannot be made or changed as asked; the message says why."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    """``name`` as an account's name (lowercase: an e-mail address's case does not count);
    AccountError naming the rule otherwise."""
    folded = name.strip().lower()
    if not _NAME.fullmatch(folded):
        raise AccountError(
            f"account name {name!r}: 1-100 characters, letters, digits and . _ @ + - "
            "(starting with a letter or digit)"
        )
    if folded in SERVICE_NAMES:
        raise AccountError(
            f"account name {folded!r} is the settings' {folded} token's: choose another"
        )
    return folded


class Account(BaseModel):
    """A person (or a named client) and their role; the rules for changing it."""

    name: str
    role: Role = Role.VIEWER
    token_sha256: str = ""
    created_at: datetime | None = None
    last_seen: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.created_at is not None and self.revoked_at is None

    def holds(self, token: str) -> bool:
        """Whether ``token`` is this active account's (constant-time)."""
        given = token_digest(token).encode()
        return self.active and hmac.compare_digest(given, self.token_sha256.encode())

    def begin(self, role: Role, digest: str, now: datetime) -> bool:
        if self.active:
            raise AccountError(f"account {self.name!r} exists: `modfactory users list`")
        self.role, self.token_sha256, self.created_at = role, digest, now
        self.last_seen = self.revoked_at = None
        return True

    def set_role(self, role: Role) -> bool:
        self._must_be_active()
        changed, self.role = self.role != role, role
        return changed

    def revoke(self, now: datetime) -> bool:
        self._must_be_active()
        self.revoked_at, self.token_sha256 = now, ""
        return True

    def seen(self, when: datetime) -> bool:
        if not self.active or (self.last_seen is not None and self.last_seen >= when):
            return False
        self.last_seen = when
        return True

    def _must_be_active(self) -> None:
        if not self.active:
            state = "was revoked" if self.revoked_at else "does not exist"
            raise AccountError(f"account {self.name!r} {state}: `modfactory users list`")


class AccountStore:
    """The accounts, in Redis; writes are acknowledged once replicated."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._names = f"{prefix}:accounts"

    def _key(self, name: str) -> str:
        return f"{self.prefix}:account:{name}"

    def _token_key(self, digest: str) -> str:
        return f"{self.prefix}:account-token:{digest}"

    async def _change(self, name: str, change: Any, also: Any = None) -> Account:
        def write(pipe: Any, account: Account) -> None:
            pipe.sadd(self._names, account.name)
            if also is not None:
                also(pipe, account)

        account, _ = await update_document(
            self.redis,
            self._key(name),
            lambda raw: Account.model_validate_json(raw) if raw else Account(name=name),
            change,
            also=write,
        )
        return account

    async def add(self, name: str, role: Role) -> tuple[Account, str]:
        """A new account and its token (shown once; kept only as a hash)."""
        name, token = check_name(name), new_token()
        digest = token_digest(token)
        account = await self._change(
            name,
            lambda a: a.begin(role, digest, datetime.now(UTC)),
            lambda pipe, a: pipe.set(self._token_key(digest), a.name),
        )
        return account, token

    async def set_role(self, name: str, role: Role) -> Account:
        return await self._change(check_name(name), lambda a: a.set_role(role))

    async def revoke(self, name: str) -> Account:
        held: list[str] = []

        def revoke(account: Account) -> bool:
            held[:] = [account.token_sha256]
            return account.revoke(datetime.now(UTC))

        return await self._change(
            check_name(name), revoke, lambda pipe, a: pipe.delete(self._token_key(held[0]))
        )

    async def seen(self, name: str, when: datetime) -> None:
        await self._change(name, lambda a: a.seen(when))

    async def by_digest(self, digest: str) -> Account | None:
        """The active account whose token has this SHA-256 (None: no such token)."""
        name = await self.redis.get(self._token_key(digest))
        account = await self.get(name.decode()) if name else None
        return account if account and account.active and account.token_sha256 == digest else None

    async def get(self, name: str) -> Account | None:
        raw = await self.redis.get(self._key(name))
        return Account.model_validate_json(raw) if raw else None

    async def all(self) -> list[Account]:
        """Every account, revoked ones too, by name."""
        names = sorted(n.decode() for n in await self.redis.smembers(self._names))
        if not names:
            return []
        raws = await self.redis.mget([self._key(n) for n in names])
        return [Account.model_validate_json(raw) for raw in raws if raw]
