"""How ``modfactory serve`` checks what callers prove: HMAC-signed requests (who a caller
is, and what its role may do, is ``identity``'s), and the secrets and proxy settings at
start.

A signed request carries ``X-Modfactory-Timestamp: <Unix seconds>`` and
``X-Modfactory-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`` keyed with
MODFACTORY_WEBHOOK_SECRET. It is accepted once: within MODFACTORY_WEBHOOK_TOLERANCE seconds
of the server's clock, and never again (the signature is remembered in Redis as a hash for
twice that window). Comparisons are constant-time. Messages never contain a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from pydantic import SecretStr
from redis.asyncio import Redis

TIMESTAMP_HEADER = "X-Modfactory-Timestamp"
SIGNATURE_HEADER = "X-Modfactory-Signature"
MIN_SECRET_LENGTH = 32
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")  # ASCII digits only: "²" is a digit to str.isdigit


def check_secrets(
    secret: SecretStr | None,
    token: SecretStr | None,
    serve_token: SecretStr | None = None,
    review_token: SecretStr | None = None,
) -> None:
    """Raise ValueError (one line, naming the setting, never the value) unless each secret
    set is at least MIN_SECRET_LENGTH characters, at least one is set, and no two are the
    same (a token would then also sign, or a scoring client also write training data)."""
    named = (
        ("MODFACTORY_WEBHOOK_SECRET", secret),
        ("MODFACTORY_WEBHOOK_TOKEN", token),
        ("MODFACTORY_SERVE_TOKEN", serve_token),
        ("MODFACTORY_REVIEW_TOKEN", review_token),
    )
    for name, value in named:
        if value is None:
            continue
        length = len(value.get_secret_value())
        if length < MIN_SECRET_LENGTH:
            what = "is empty" if length == 0 else f"has {length} characters"
            raise ValueError(
                f"{name} {what}: it needs at least {MIN_SECRET_LENGTH} "
                "(e.g. `openssl rand -hex 32`), or leave it unset"
            )
    if secret is None and token is None and serve_token is None:
        raise ValueError(
            "set MODFACTORY_WEBHOOK_SECRET (signed requests) or MODFACTORY_WEBHOOK_TOKEN "
            "(bearer), or MODFACTORY_SERVE_TOKEN to serve only: modfactory serve takes no "
            "unauthenticated request"
        )
    given = [(name, value.get_secret_value()) for name, value in named if value is not None]
    for i, (first, one) in enumerate(given):
        for second, other in given[i + 1 :]:
            if hmac.compare_digest(one.encode(), other.encode()):
                raise ValueError(
                    f"{first} and {second} are the same value: each must be its own (a "
                    "token would then also sign requests, or a scoring client retrain)"
                )


def check_proxy(header: str | None, proxies: tuple[str, ...]) -> None:
    """Raise ValueError (one line, naming the setting) for a sign-on header honoured from
    nowhere: anyone could then send it."""
    if header and not proxies:
        raise ValueError(
            "MODFACTORY_AUTH_PROXY_HEADER is set but MODFACTORY_AUTH_PROXY_FROM is empty: "
            "name the proxy's addresses, or anyone could send the header"
        )


class AuthError(Exception):
    """The request is not authenticated; the message says why (safe to send back)."""


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Modfactory-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def check_signature(
    secret: SecretStr,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float,
    tolerance: int,
) -> None:
    """Raise AuthError unless ``signature`` signs ``body`` at a fresh ``timestamp``."""
    if not timestamp or not signature:
        missing = TIMESTAMP_HEADER if not timestamp else SIGNATURE_HEADER
        raise AuthError(f"missing {missing} header")
    if not _UNIX_SECONDS.fullmatch(timestamp):
        raise AuthError(f"{TIMESTAMP_HEADER} must be Unix seconds (1 to 12 digits 0-9)")
    age = now - int(timestamp)
    if abs(age) > tolerance:
        when = f"{age:.0f} s old" if age > 0 else f"{-age:.0f} s in the future"
        raise AuthError(
            f"{TIMESTAMP_HEADER} is {when}; at most {tolerance} s allowed "
            "(MODFACTORY_WEBHOOK_TOLERANCE; are both clocks right?)"
        )
    expected = sign(secret.get_secret_value(), timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise AuthError(
            f"{SIGNATURE_HEADER} does not match: expected sha256=<hex HMAC-SHA256 of "
            '"<timestamp>.<raw body>"> keyed with MODFACTORY_WEBHOOK_SECRET'
        )


class ReplayGuard:
    """Remembers accepted signatures, so each is accepted only once."""

    def __init__(self, redis: Redis, prefix: str, tolerance: int) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:webhook-seen:"
        self.ttl = 2 * tolerance + 1  # a timestamp is accepted for ±tolerance

    async def first_use(self, signature: str) -> bool:
        digest = hashlib.sha256(signature.strip().encode()).hexdigest()
        return bool(await self.redis.set(self.prefix + digest, 1, nx=True, ex=self.ttl))
