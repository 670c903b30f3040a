"""Who is calling ``modfactory serve``, and whether their role allows what they ask.

A caller is an account (its token as a bearer, or its name in the sign-on proxy's header
from the proxy's own address) or a service identity: the settings' tokens — the webhook
token (or a request signed with the webhook secret) is the admin ``webhook``, the review
token the reviewer ``review``, the serve token ``serve``, which may only score. Every route
asks ``require`` (or ``scoring_caller``); none checks a token by hand.

Accounts are read from Redis into memory and read again every
MODFACTORY_SERVE_REFRESH_INTERVAL, so a revoked token is refused by every replica within
that interval, and a sign-in survives Redis being away; a token not known yet (an account
just added) is looked up by its hash at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from redis.exceptions import RedisError
from starlette.requests import Request

from modfactory.roles import NEEDS, Action, Role, refusal
from modfactory.settings import Settings
from modfactory.store.accounts import Account, AccountStore, token_digest
from modfactory.store.audit import Actor
from modfactory.web.auth import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthError,
    check_signature,
)
from modfactory.web.errors import ApiError

log = logging.getLogger("modfactory.web")
SEEN_EVERY = 60.0  # s: how fine an account's "last seen" is


@dataclass(frozen=True)
class Caller:
    """Who sent a request: an account's name or a service's, and their role (None: the
    serve token, which may only score)."""

    name: str
    role: Role | None
    via: Literal["token", "signature", "proxy", "session"]
    account: bool = False  # a person's account (else a service identity)
    setting: str = ""  # a service identity's token setting

    @property
    def described(self) -> str:
        """How a message names the caller."""
        return f"the {self.name} token ({self.setting})" if self.setting else self.name

    def may(self, action: Action) -> bool:
        return self.role is not None and self.role.may(action)


def service_tokens(settings: Settings) -> list[tuple[str, str, Role | None]]:
    """(setting, token, role) of each service token set; the name is the setting's."""
    found: list[tuple[str, str, Role | None]] = []
    for setting, token, role in (
        ("MODFACTORY_WEBHOOK_TOKEN", settings.webhook_token, Role.ADMIN),
        ("MODFACTORY_REVIEW_TOKEN", settings.review_token, Role.REVIEWER),
        ("MODFACTORY_SERVE_TOKEN", settings.serve_token, None),
    ):
        if token is not None:
            found.append((setting, token.get_secret_value(), role))
    return found


SERVICE_NAMES = {
    "MODFACTORY_WEBHOOK_TOKEN": "webhook",
    "MODFACTORY_REVIEW_TOKEN": "review",
    "MODFACTORY_SERVE_TOKEN": "serve",
}


class Accounts:
    """The accounts as last read from Redis, by token digest and by name."""

    def __init__(self, store: AccountStore) -> None:
        self.store = store
        self._by_digest: dict[str, Account] = {}
        self._by_name: dict[str, Account] = {}
        self._lock = asyncio.Lock()
        self._seen: dict[str, datetime] = {}

    async def reload(self) -> None:
        """Read every account again (Redis away: keep the last read, say so)."""
        async with self._lock:
            try:
                accounts = await self.store.all()
            except (RedisError, OSError) as exc:
                log.warning("accounts not read again (Redis: %s); the last read holds", exc)
                return
            active = [a for a in accounts if a.active]
            self._by_digest = {a.token_sha256: a for a in active}
            self._by_name = {a.name: a for a in active}

    async def by_token(self, token: str) -> Account | None:
        """The active account holding ``token``: from memory, else looked up by its hash
        (an account just added works at once)."""
        digest = token_digest(token)
        found = self._by_digest.get(digest)
        if found is None:
            try:
                found = await self.store.by_digest(digest)
            except (RedisError, OSError):
                return None  # Redis away: only the accounts read before are known
            if found is not None:
                self._by_digest[digest], self._by_name[found.name] = found, found
        return found if found is not None and found.holds(token) else None

    async def by_name(self, name: str) -> Account | None:
        """The active account named ``name`` (a proxy's header): from memory, else Redis."""
        key = name.strip().lower()
        found = self._by_name.get(key)
        if found is None:
            try:
                found = await self.store.get(key)
            except (RedisError, OSError):
                return None
            if found is None or not found.active:
                return None
            self._by_digest[found.token_sha256], self._by_name[key] = found, found
        return found

    def saw(self, name: str) -> None:
        self._seen[name] = datetime.now(UTC)

    async def write_seen(self) -> None:
        """Record when each account was last seen, at most once a SEEN_EVERY each."""
        due, self._seen = self._seen, {}
        for name, when in due.items():
            last = self._by_name.get(name)
            if last and last.last_seen and (when - last.last_seen).total_seconds() < SEEN_EVERY:
                continue
            try:
                await self.store.seen(name, when)
                if last is not None:
                    last.last_seen = when
            except (RedisError, OSError):
                return  # Redis away: next time

    async def refresh_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.reload()
            await self.write_seen()


def _accounts(request: Request) -> Accounts:
    return request.app.state.accounts


def from_proxy(request: Request, settings: Settings) -> bool:
    if not settings.auth_proxy_header or request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(each, strict=False) for each in settings.auth_proxy_from
    )


async def account_caller(request: Request, account: Account, via: str) -> Caller:
    _accounts(request).saw(account.name)
    return Caller(account.name, account.role, via, account=True)  # type: ignore[arg-type]


def _what_to_send(settings: Settings, action: Action | None) -> str:
    """The tokens that would do, for a 401: an account's, and the settings' whose role may
    do ``action`` (None: score texts, which any may)."""
    named = [
        setting
        for setting, _, role in service_tokens(settings)
        if action is None or (role is not None and role.may(action))
    ]
    return " or ".join(["an account's token", *named])


async def identify(
    request: Request, body: bytes = b"", *, signed: bool = False, action: Action | None = None
) -> Caller:
    """The caller, or 401 naming what to send (for ``action``). ``signed``: a request signed
    with MODFACTORY_WEBHOOK_SECRET is accepted too (once; it is the admin ``webhook``)."""
    settings: Settings = request.app.state.settings
    if from_proxy(request, settings):
        name = request.headers.get(settings.auth_proxy_header or "")
        if name:
            account = await _accounts(request).by_name(name)
            if account is None:
                raise ApiError(
                    403,
                    f"no account named {name.strip().lower()!r} "
                    f"(signed in by the proxy's {settings.auth_proxy_header}): an admin adds "
                    "it with `modfactory users add`",
                )
            return await account_caller(request, account, "proxy")
    authorization = request.headers.get("authorization", "")
    if authorization:
        scheme, _, offered = authorization.partition(" ")
        offered = offered.strip()
        if scheme.lower() == "bearer" and offered:
            caller = await _by_token(request, settings, offered)
            if caller is not None:
                return caller
        raise ApiError(
            401, f"the bearer token is not {_what_to_send(settings, action)}: unknown or revoked"
        )
    headers = request.headers
    if (
        signed
        and settings.webhook_secret is not None
        and (headers.get(SIGNATURE_HEADER) or headers.get(TIMESTAMP_HEADER))
    ):
        await _check_signed(request, settings, body)
        return Caller("webhook", Role.ADMIN, "signature", setting="MODFACTORY_WEBHOOK_SECRET")
    also = f" (or {TIMESTAMP_HEADER} and {SIGNATURE_HEADER})" if signed else ""
    raise ApiError(
        401,
        f"unauthenticated: send Authorization: Bearer <{_what_to_send(settings, action)}>{also}",
    )


async def _by_token(request: Request, settings: Settings, offered: str) -> Caller | None:
    given = offered.encode()
    found = None
    for setting, token, role in service_tokens(settings):  # each compared, in constant time
        if hmac.compare_digest(given, token.encode()):
            found = Caller(SERVICE_NAMES[setting], role, "token", setting=setting)
    if found is not None:
        return found
    account = await _accounts(request).by_token(offered)
    return await account_caller(request, account, "token") if account else None


async def _check_signed(request: Request, settings: Settings, body: bytes) -> None:
    signature = request.headers.get(SIGNATURE_HEADER, "")
    try:
        check_signature(
            settings.webhook_secret,  # type: ignore[arg-type]
            request.headers.get(TIMESTAMP_HEADER),
            signature,
            body,
            time.time(),
            settings.webhook_tolerance,
        )
        if not await request.app.state.replays.first_use(signature):
            raise AuthError("this signature was accepted before: a replayed request")
    except AuthError as exc:
        raise ApiError(401, str(exc)) from None


async def require(
    request: Request, action: Action, body: bytes = b"", *, signed: bool = False
) -> Caller:
    """The caller, if their role may do ``action``; else 401 (unknown) or 403 (naming the
    role it needs)."""
    caller = await identify(request, body, signed=signed, action=action)
    if not caller.may(action):
        raise ApiError(
            403, refusal(caller.described, caller.role, action), needs=NEEDS[action].value
        )
    return caller


async def scoring_caller(request: Request) -> Caller:
    """Any caller at all may score texts: the serve token, a service, any account."""
    return await identify(request)


REQUEST_ID_HEADER = "X-Request-ID"


def request_id(request: Request) -> str:
    """The request's id: the sender's ``X-Request-ID`` (printable, at most 100 characters),
    else one made up here; kept for the request's lifetime."""
    found = request.scope.setdefault("state", {}).get("request_id")
    if found is None:
        given = request.headers.get(REQUEST_ID_HEADER, "")
        ok = given and len(given) <= 100 and given.isprintable()
        found = given if ok else f"req-{secrets.token_hex(8)}"
        request.scope["state"]["request_id"] = found
    return found


def actor_of(request: Request, caller: Caller) -> Actor:
    """The caller as the audit trail names them, with their address and the request id."""
    role = caller.role.value if caller.role is not None else "scoring"
    client = request.client.host if request.client else None
    return Actor(name=caller.name, role=role, client=client, request_id=request_id(request))


def rate_key(caller: Caller) -> str:
    """The caller's key for rate limits (a digest: names are not spread into Redis keys)."""
    return hashlib.sha256(f"{caller.name}:{caller.account}".encode()).hexdigest()[:16]
