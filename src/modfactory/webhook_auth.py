"""Who may call ``modfactory serve``: HMAC-signed requests, or a bearer token.

A signed request carries ``X-Modfactory-Timestamp: <Unix seconds>`` and
``X-Modfactory-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<raw body>">`` keyed with
MODFACTORY_WEBHOOK_SECRET. It is accepted once: within MODFACTORY_WEBHOOK_TOLERANCE seconds
of the server's clock, and never again (the signature is remembered in Redis as a hash for
twice that window). Comparisons are constant-time. Messages never contain a secret.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr
from redis.asyncio import Redis

TIMESTAMP_HEADER = "X-Modfactory-Timestamp"
SIGNATURE_HEADER = "X-Modfactory-Signature"


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
    if not timestamp.isdigit():
        raise AuthError(f"{TIMESTAMP_HEADER} must be Unix seconds, got {timestamp[:20]!r}")
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


def check_bearer(token: SecretStr, authorization: str) -> None:
    """Raise AuthError unless ``authorization`` is ``Bearer <token>``."""
    scheme, _, offered = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        offered.strip().encode(), token.get_secret_value().encode()
    ):
        raise AuthError("the bearer token is not MODFACTORY_WEBHOOK_TOKEN")


class ReplayGuard:
    """Remembers accepted signatures, so each is accepted only once."""

    def __init__(self, redis: Redis, prefix: str, tolerance: int) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:webhook-seen:"
        self.ttl = 2 * tolerance + 1  # a timestamp is accepted for ±tolerance

    async def first_use(self, signature: str) -> bool:
        digest = hashlib.sha256(signature.strip().encode()).hexdigest()
        return bool(await self.redis.set(self.prefix + digest, 1, nx=True, ex=self.ttl))
